//! Who is who in a fleet: the identity of the build (which decides whether a worker may run a
//! job), the name of this host and process (which logs show), and fresh client ids.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// The SHA-256 of this process's executable, computed once: two processes run the same build
/// exactly when they run byte-identical executables, and only then are the offsets of a
/// function from the executable's anchor the same in both.
pub(crate) fn build_identity() -> Result<[u8; 32], String> {
    static IDENTITY: OnceLock<Result<[u8; 32], String>> = OnceLock::new();
    IDENTITY
        .get_or_init(|| {
            let mut file = std::fs::File::open("/proc/self/exe").map_err(|err| {
                format!("could not open /proc/self/exe to identify this build: {err}")
            })?;
            let mut hasher = Sha256::new();
            std::io::copy(&mut file, &mut hasher).map_err(|err| {
                format!("could not read /proc/self/exe to identify this build: {err}")
            })?;
            Ok(hasher.finalize().into())
        })
        .clone()
}

/// The first bytes of a build identity in hex, for messages.
pub(crate) fn short_hex(identity: &[u8; 32]) -> String {
    identity[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// This machine's host name, for logs (`/proc/sys/kernel/hostname`, or `localhost`).
pub(crate) fn host_name() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "localhost".to_owned())
    })
}

/// `host:pid`, the name of this process in the fleet.
pub(crate) fn process_name() -> String {
    format!("{}:{}", host_name(), std::process::id())
}

/// A fresh id for a client (a `RemotePool`), unique across hosts and time: the hash of the
/// host, the pid, the clock and a counter.
pub(crate) fn fresh_client_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = Sha256::new();
    hasher.update(host_name().as_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(now_ms().to_le_bytes());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    hasher.update(nanos.to_le_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let digest = hasher.finalize();
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_identity_is_stable_and_client_ids_differ() {
        assert_eq!(build_identity().unwrap(), build_identity().unwrap());
        assert_ne!(fresh_client_id(), fresh_client_id());
        assert_eq!(fresh_client_id().len(), 24);
    }
}
