//! How jobs and replies are authenticated: HMAC-SHA256 under a key shared by the fleet, or
//! nothing on a network the operator declared trusted.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The environment variable that holds the fleet's signing key, read when the builder is not
/// given one. Use a long random string (32 bytes or more), the same on clients and workers.
pub const KEY_VARIABLE: &str = "SMOL_OFFLOAD_REMOTE_KEY";

/// The shortest key accepted, in bytes.
const MIN_KEY: usize = 16;

/// Signs and checks the bytes that cross the broker.
#[derive(Clone)]
pub(crate) enum Security {
    /// HMAC-SHA256 under this key.
    Key(Arc<[u8]>),
    /// No signature: whoever can write to the queue can run code on the workers.
    Trusted,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Security::Key(_) => f.write_str("Key(..)"),
            Security::Trusted => f.write_str("Trusted"),
        }
    }
}

impl Security {
    /// The key given to the builder, or else the one in [`KEY_VARIABLE`]; without either,
    /// refuses unless `trusted` (the operator said the network is trusted).
    pub(crate) fn choose(key: Option<Vec<u8>>, trusted: bool) -> Result<Security, String> {
        let key = match key {
            Some(key) => Some(key),
            None => match std::env::var(KEY_VARIABLE) {
                Ok(value) => Some(value.into_bytes()),
                Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!("{KEY_VARIABLE} is not valid UTF-8"));
                }
            },
        };
        match key {
            Some(key) if key.len() < MIN_KEY => Err(format!(
                "the remote signing key has {} bytes, fewer than {MIN_KEY}: \
                 use a long random string, the same on clients and workers",
                key.len()
            )),
            Some(key) => Ok(Security::Key(key.into())),
            None if trusted => Ok(Security::Trusted),
            None => Err(format!(
                "remote pools and workers need a signing key: set {KEY_VARIABLE} or call \
                 .key(..) on the builder (or, an unsafe call, .trusted_network() if every \
                 writer to the broker may run code on the workers)"
            )),
        }
    }

    /// The signature of `body` (empty on a trusted network).
    pub(crate) fn sign(&self, body: &[u8]) -> Vec<u8> {
        match self {
            Security::Key(key) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac takes any key");
                mac.update(body);
                mac.finalize().into_bytes().to_vec()
            }
            Security::Trusted => Vec::new(),
        }
    }

    /// What the fleet records on the broker to tell its key apart from others, never the key:
    /// `hmac-sha256:` and the first 12 bytes, in hex, of the key's signature of a fixed text;
    /// `unsigned` on a trusted network, so that signed and unsigned members never mix.
    pub(crate) fn fingerprint(&self) -> String {
        match self {
            Security::Key(_) => {
                let signature = self.sign(b"smol-offload fleet fingerprint");
                let hex: String = signature[..12].iter().map(|b| format!("{b:02x}")).collect();
                format!("hmac-sha256:{hex}")
            }
            Security::Trusted => "unsigned".to_owned(),
        }
    }

    /// Checks `signature` over `body`, in constant time.
    pub(crate) fn check(&self, body: &[u8], signature: &[u8]) -> Result<(), &'static str> {
        match self {
            Security::Key(_) if signature.is_empty() => Err("the job is not signed"),
            Security::Key(key) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac takes any key");
                mac.update(body);
                mac.verify_slice(signature)
                    .map_err(|_| "the signature does not match (forged, altered or another key)")
            }
            Security::Trusted => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(key: &str) -> Security {
        Security::choose(Some(key.as_bytes().to_vec()), false).unwrap()
    }

    #[test]
    fn a_signature_checks_under_its_key_only() {
        let a = keyed("0123456789abcdef-a");
        let b = keyed("0123456789abcdef-b");
        let signature = a.sign(b"job");
        assert!(a.check(b"job", &signature).is_ok());
        assert!(a.check(b"jog", &signature).is_err());
        assert!(b.check(b"job", &signature).is_err());
        assert_eq!(a.check(b"job", &[]), Err("the job is not signed"));
    }

    #[test]
    fn a_fingerprint_tells_keys_apart_and_shows_none() {
        let key = "0123456789abcdef-a";
        let a = keyed(key).fingerprint();
        assert_eq!(a, keyed(key).fingerprint());
        assert_ne!(a, keyed("0123456789abcdef-b").fingerprint());
        assert!(a.starts_with("hmac-sha256:") && !a.contains(key), "{a}");
        assert_eq!(Security::Trusted.fingerprint(), "unsigned");
    }

    #[test]
    fn short_or_missing_keys_are_refused() {
        assert!(Security::choose(Some(b"short".to_vec()), false).is_err());
        if std::env::var_os(KEY_VARIABLE).is_none() {
            let err = Security::choose(None, false).unwrap_err();
            assert!(err.contains(KEY_VARIABLE), "{err}");
            assert!(matches!(
                Security::choose(None, true),
                Ok(Security::Trusted)
            ));
        }
    }
}
