//! Connecting to the Redis broker, with errors that say where and what to do.

use std::time::Duration;

/// How long connecting may take before the broker counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed broker URL: `redis://[user:password@]host:port[/db]`.
#[derive(Clone)]
pub(crate) struct Broker {
    client: redis::Client,
    /// `host:port`, without credentials, for messages.
    pub(crate) address: String,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("address", &self.address)
            .finish()
    }
}

impl Broker {
    pub(crate) fn open(url: &str) -> Result<Broker, String> {
        let client = redis::Client::open(url).map_err(|err| {
            let tls = if url.starts_with("rediss://") {
                " (TLS URLs are not supported by this build: use redis:// through a tunnel)"
            } else {
                ""
            };
            format!("invalid redis url{tls}: {err}")
        })?;
        let address = client.get_connection_info().addr().to_string();
        Ok(Broker { client, address })
    }

    /// A new blocking connection, or a message that says the broker is unreachable.
    pub(crate) fn connect(&self) -> Result<redis::Connection, String> {
        self.client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(|err| self.unreachable(&err))
    }

    pub(crate) fn unreachable(&self, err: &redis::RedisError) -> String {
        format!(
            "could not reach the redis broker at {}: {err}; check that it runs and that the \
             url, user and password are right",
            self.address
        )
    }
}
