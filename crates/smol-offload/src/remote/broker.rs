//! Connecting to the Redis broker, with errors that say where and what to do.

use std::time::Duration;

/// How long connecting may take before the broker counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one command may wait for the broker's answer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

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
        let connection = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(|err| self.unreachable(&err))?;
        // A broker that stops answering is an error after this long, never a hang; the
        // blocking reads set their own, longer timeouts.
        let _ = connection.set_read_timeout(Some(IO_TIMEOUT));
        let _ = connection.set_write_timeout(Some(IO_TIMEOUT));
        Ok(connection)
    }

    pub(crate) fn unreachable(&self, err: &redis::RedisError) -> String {
        format!(
            "could not reach the redis broker at {}: {err}; check that it runs and that the \
             url, user and password are right",
            self.address
        )
    }
}
