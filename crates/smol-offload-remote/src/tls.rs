//! TLS to the broker, for `rediss://` URLs: which certificate authorities to trust, and the
//! client certificate for brokers that require one (mutual TLS).
//!
//! By default the broker's certificate must chain to a root of the system's trust store
//! (`/etc/ssl/certs` on Debian; `SSL_CERT_FILE` and `SSL_CERT_DIR` override it) and name the
//! URL's host. A private certificate authority is trusted instead with [`TLS_CA_VARIABLE`] or
//! the builders' `tls_ca_file`. Certificate checks cannot be turned off.

use std::path::PathBuf;

/// The environment variable naming a PEM file of the certificate authorities that sign the
/// broker's certificate, read when the builder is not given one: with it, only they are
/// trusted, not the system's roots.
pub const TLS_CA_VARIABLE: &str = "SMOL_OFFLOAD_REMOTE_TLS_CA";
/// The environment variable naming a PEM file of this client's certificate chain, for brokers
/// that check client certificates (`tls-auth-clients yes`); goes with [`TLS_KEY_VARIABLE`].
pub const TLS_CERT_VARIABLE: &str = "SMOL_OFFLOAD_REMOTE_TLS_CERT";
/// The environment variable naming a PEM file of the private key of
/// [`TLS_CERT_VARIABLE`]'s certificate.
pub const TLS_KEY_VARIABLE: &str = "SMOL_OFFLOAD_REMOTE_TLS_KEY";

/// The TLS files a builder was given; those not given come from the environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsFiles {
    pub(crate) ca: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

impl TlsFiles {
    /// These files, completed from the environment variables.
    fn with_environment(&self) -> Result<TlsFiles, String> {
        let from = |given: &Option<PathBuf>, variable: &str| match given {
            Some(path) => Ok(Some(path.clone())),
            None => match std::env::var_os(variable) {
                Some(value) if value.is_empty() => Err(format!(
                    "{variable} is set but empty: name a PEM file or unset it"
                )),
                value => Ok(value.map(PathBuf::from)),
            },
        };
        Ok(TlsFiles {
            ca: from(&self.ca, TLS_CA_VARIABLE)?,
            cert: from(&self.cert, TLS_CERT_VARIABLE)?,
            key: from(&self.key, TLS_KEY_VARIABLE)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// Reads the files for a `rediss://` connection: `None` when none is set (trust the
    /// system's roots, no client certificate).
    #[cfg(feature = "tls")]
    fn certificates(&self) -> Result<Option<redis::TlsCertificates>, String> {
        let files = self.with_environment()?;
        if files.is_empty() {
            return Ok(None);
        }
        let client_tls = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem(cert, "client certificate")?,
                client_key: read_pem(key, "client key")?,
            }),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "a TLS client certificate needs both its certificate and its key: set \
                     {TLS_CERT_VARIABLE} and {TLS_KEY_VARIABLE}, or give both to \
                     tls_client_cert(..)"
                ));
            }
        };
        let root_cert = match &files.ca {
            Some(ca) => Some(read_pem(ca, "certificate authority")?),
            None => None,
        };
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

#[cfg(feature = "tls")]
fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|err| {
        format!(
            "could not read the TLS {what} file {}: {err}",
            path.display()
        )
    })?;
    if !bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        return Err(format!(
            "the TLS {what} file {} is not PEM (no -----BEGIN line): convert it with \
             `openssl x509 -inform der` (or `openssl pkey` for a key)",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Whether `url` asks for TLS.
pub(crate) fn is_tls_url(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or("");
    scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
}

/// The client for `url`: with TLS and these files for a `rediss://` URL; a plain `redis://`
/// URL with TLS files set is refused, since the user meant to encrypt.
pub(crate) fn client(url: &str, files: &TlsFiles) -> Result<redis::Client, String> {
    let invalid = |err: redis::RedisError| format!("invalid redis url: {err}");
    if !is_tls_url(url) {
        if !files.with_environment()?.is_empty() {
            return Err(format!(
                "TLS certificate files are set ({TLS_CA_VARIABLE}, {TLS_CERT_VARIABLE}, \
                 {TLS_KEY_VARIABLE} or the builder's tls_* settings) but the url is not a \
                 rediss:// one: use rediss:// to connect with TLS, or unset them"
            ));
        }
        return redis::Client::open(url).map_err(invalid);
    }
    if url.ends_with("#insecure") {
        return Err(format!(
            "rediss:// urls with #insecure (no certificate check) are refused: a broker that \
             is not authenticated can read and answer every job; trust its certificate \
             authority with {TLS_CA_VARIABLE} instead"
        ));
    }
    tls_client(url, files)
}

/// The client for a `rediss://` url.
#[cfg(feature = "tls")]
fn tls_client(url: &str, files: &TlsFiles) -> Result<redis::Client, String> {
    // rustls needs a crypto provider for the process; keep one the program installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match files.certificates()? {
        Some(certificates) => redis::Client::build_with_tls(url, certificates).map_err(|err| {
            format!("could not use the TLS certificates for the redis broker: {err}")
        }),
        None => redis::Client::open(url).map_err(|err| format!("invalid redis url: {err}")),
    }
}

/// Refuses a `rediss://` url: this build has no TLS.
#[cfg(not(feature = "tls"))]
fn tls_client(_: &str, _: &TlsFiles) -> Result<redis::Client, String> {
    Err(
        "rediss:// urls need the `tls` feature of smol-offload-remote (on by default), which \
         this build turned off: enable it, or use a redis:// url on a trusted network"
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_chosen_by_the_url_scheme() {
        assert!(is_tls_url("rediss://host:6380"));
        assert!(is_tls_url("REDISS://host"));
        assert!(!is_tls_url("redis://host"));
        assert!(!is_tls_url("host"));
    }

    #[cfg(feature = "tls")]
    #[test]
    fn half_a_client_certificate_and_unreadable_files_are_refused() {
        let files = TlsFiles {
            ca: None,
            cert: Some("/nonexistent/cert.pem".into()),
            key: Some("/nonexistent/key.pem".into()),
        };
        let err = files.certificates().unwrap_err();
        assert!(
            err.contains("could not read the TLS client certificate file"),
            "{err}"
        );
        if std::env::var_os(TLS_KEY_VARIABLE).is_none() {
            let half = TlsFiles { key: None, ..files };
            let err = half.certificates().unwrap_err();
            assert!(err.contains("needs both"), "{err}");
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_file_that_is_not_pem_is_refused() {
        let path =
            std::env::temp_dir().join(format!("smol-offload-not-pem-{}", std::process::id()));
        std::fs::write(&path, b"\x30\x82 der bytes").unwrap();
        let err = read_pem(&path, "certificate authority").unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(err.contains("is not PEM"), "{err}");
    }

    #[test]
    fn insecure_urls_and_tls_files_on_plain_urls_are_refused() {
        let err = client("rediss://127.0.0.1:1/#insecure", &TlsFiles::default()).unwrap_err();
        assert!(err.contains("#insecure"), "{err}");
        let files = TlsFiles {
            ca: Some("/etc/ssl/certs/ca-certificates.crt".into()),
            ..TlsFiles::default()
        };
        let err = client("redis://127.0.0.1:1", &files).unwrap_err();
        assert!(err.contains("not a rediss:// one"), "{err}");
    }
}
