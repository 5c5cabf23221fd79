//! Connecting to the Redis broker, with errors that say where and what to do. Every new
//! connection of a pool or a worker is made here: behind Sentinel, each asks the sentinels for
//! the master anew, so that a reconnect follows a failover.

use std::time::Duration;

use crate::sentinel::{self, Sentinels};
use crate::tls::{self, TlsFiles};

/// How long connecting may take before the broker counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one command may wait for the broker's answer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed broker URL: `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS, or
/// `redis+sentinel://` (see [`sentinel`]).
#[derive(Clone)]
pub(crate) struct Broker {
    target: Target,
    /// `host:port`, or the sentinels and service, without credentials, for messages.
    pub(crate) address: String,
    /// Whether the URL is a `rediss://` one.
    tls: bool,
}

/// Where the broker is.
#[derive(Clone)]
enum Target {
    /// At one address.
    Direct(redis::Client),
    /// Wherever the sentinels say the master is now.
    Sentinel(Sentinels),
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
        if sentinel::is_sentinel_url(url) {
            let sentinels = Sentinels::parse(url, tls)?;
            return Ok(Broker {
                address: sentinels.address(),
                target: Target::Sentinel(sentinels),
                tls: url.to_ascii_lowercase().starts_with("rediss+"),
            });
        }
        let client = tls::client(url, tls)?;
        let address = client.get_connection_info().addr().to_string();
        Ok(Broker {
            target: Target::Direct(client),
            address,
            tls: tls::is_tls_url(url),
        })
    }

    /// A new blocking connection, or a message that says the broker is unreachable. Behind
    /// Sentinel, to the server the sentinels name as the master now, checked to be one.
    pub(crate) fn connect(&self) -> Result<redis::Connection, String> {
        match &self.target {
            Target::Direct(client) => open(client).map_err(|err| self.unreachable(&err)),
            Target::Sentinel(sentinels) => sentinels
                .connect_to_master(CONNECT_TIMEOUT, open)
                .map_err(|err| self.unreachable_because(&err)),
        }
    }

    pub(crate) fn unreachable(&self, err: &redis::RedisError) -> String {
        self.unreachable_because(&err.to_string())
    }

    fn unreachable_because(&self, err: &str) -> String {
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

/// A new connection through `client`, with the timeouts, and authenticated.
fn open(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let mut connection = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    // A broker that stops answering is an error after this long, never a hang; the blocking
    // reads set their own, longer timeouts.
    let _ = connection.set_read_timeout(Some(IO_TIMEOUT));
    let _ = connection.set_write_timeout(Some(IO_TIMEOUT));
    // Without credentials in the url nothing was asked yet: a broker that wants some (or a TLS
    // handshake that fails) says so now, not at the first job.
    redis::cmd("PING").query::<()>(&mut connection)?;
    Ok(connection)
}
