//! [`FleetSettings`]: what a [`RemotePool`](crate::RemotePool) and a
//! [`RemoteWorker`](crate::RemoteWorker) both need to reach the fleet (the broker's
//! URL and TLS files, the queue, the signing key), and the one way both open it.

use std::fmt;

use crate::broker::Broker;
use crate::fingerprint;
use crate::identity;
use crate::keys::Keys;
use crate::security::Security;
use crate::tls::TlsFiles;

/// The queue a pool and its workers use when none is named.
pub const DEFAULT_QUEUE: &str = "default";

/// The settings a pool's and a worker's builders share.
#[derive(Clone)]
pub(crate) struct FleetSettings {
    pub(crate) url: String,
    pub(crate) queue: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) trusted: bool,
    pub(crate) tls: TlsFiles,
}

/// What opening the settings gives: checked, and with the broker's address parsed.
pub(crate) struct OpenFleet {
    pub(crate) security: Security,
    /// The SHA-256 of this executable.
    pub(crate) build: [u8; 32],
    pub(crate) broker: Broker,
    pub(crate) keys: Keys,
}

impl FleetSettings {
    /// The broker at `url`, on the default queue, with the key and TLS files from the
    /// environment.
    pub(crate) fn new(url: &str) -> FleetSettings {
        FleetSettings {
            url: url.to_owned(),
            queue: DEFAULT_QUEUE.to_owned(),
            key: None,
            trusted: false,
            tls: TlsFiles::default(),
        }
    }

    /// Chooses the signing key (or refuses to go on without one), computes the build identity,
    /// and parses the broker's URL with its TLS files. No connection is made yet.
    pub(crate) fn open(&self) -> Result<OpenFleet, String> {
        Ok(OpenFleet {
            security: Security::choose(self.key.clone(), self.trusted)?,
            build: identity::build_identity()?,
            broker: Broker::open(&self.url, &self.tls)?,
            keys: Keys::new(&self.queue),
        })
    }
}

impl OpenFleet {
    /// Records the fleet's key fingerprint on the broker, or checks that this side's key is
    /// the one recorded: see [`fingerprint::join_fleet`].
    pub(crate) fn join(&self, connection: &mut redis::Connection) -> Result<(), String> {
        fingerprint::join_fleet(connection, &self.broker, &self.keys, &self.security)
    }
}

impl fmt::Debug for FleetSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is a secret, and the URL may hold a password: neither is shown.
        f.debug_struct("FleetSettings")
            .field("queue", &self.queue)
            .field("key", &self.key.as_ref().map(|_| ".."))
            .field("trusted", &self.trusted)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use crate::{RemotePool, RemoteWorker};

    #[test]
    fn neither_builder_shows_the_key_or_the_password_in_the_url() {
        let url = "redis://fleet:hunter2-password@127.0.0.1:6379";
        let key = "a-signing-key-of-enough-length";
        let shown = [
            format!("{:?}", RemotePool::builder(url).key(key).queue("jobs")),
            format!("{:?}", RemoteWorker::builder(url).key(key).queue("jobs")),
        ];
        for shown in shown {
            assert!(shown.contains("\"jobs\""), "{shown}");
            assert!(
                !shown.contains("hunter2") && !shown.contains(key),
                "{shown}"
            );
        }
    }
}
