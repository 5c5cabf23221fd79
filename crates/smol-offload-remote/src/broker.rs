//! Connecting to the Redis broker, with errors that say where and what to do.

use std::time::Duration;

use crate::tls::{self, TlsFiles};

/// How long connecting may take before the broker counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one command may wait for the broker's answer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed broker URL: `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
#[derive(Clone)]
pub(crate) struct Broker {
    client: redis::Client,
    /// `host:port`, without credentials, for messages.
    pub(crate) address: String,
    /// Whether the URL is a `rediss://` one.
    tls: bool,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("address", &self.address)
            .finish()
    }
}

impl Broker {
    pub(crate) fn open(url: &str, tls: &TlsFiles) -> Result<Broker, String> {
        let client = tls::client(url, tls)?;
        let address = client.get_connection_info().addr().to_string();
        Ok(Broker {
            client,
            address,
            tls: tls::is_tls_url(url),
        })
    }

    /// A new blocking connection, or a message that says the broker is unreachable.
    pub(crate) fn connect(&self) -> Result<redis::Connection, String> {
        let mut connection = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(|err| self.unreachable(&err))?;
        // A broker that stops answering is an error after this long, never a hang; the
        // blocking reads set their own, longer timeouts.
        let _ = connection.set_read_timeout(Some(IO_TIMEOUT));
        let _ = connection.set_write_timeout(Some(IO_TIMEOUT));
        // Without credentials in the url nothing was asked yet: a broker that wants some
        // (or a TLS handshake that fails) says so now, not at the first job.
        redis::cmd("PING")
            .query::<()>(&mut connection)
            .map_err(|err| self.unreachable(&err))?;
        Ok(connection)
    }

    pub(crate) fn unreachable(&self, err: &redis::RedisError) -> String {
        let tls = if self.tls {
            format!(
                ", that its TLS certificate is signed by a trusted authority (see {}) and \
                 names the url's host, and that this side has a client certificate (see {}) \
                 if the broker checks them",
                tls::TLS_CA_VARIABLE,
                tls::TLS_CERT_VARIABLE
            )
        } else {
            String::new()
        };
        format!(
            "could not reach the redis broker at {}: {err}; check that it runs and that the \
             url, user and password are right{tls}",
            self.address
        )
    }
}
