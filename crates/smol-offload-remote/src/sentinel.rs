//! Redis Sentinel: `redis+sentinel://` URLs, and asking the sentinels which server is the
//! master now, so that every new connection follows a failover.
//!
//! `redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/DB]`, or
//! `rediss+sentinel://` to reach the sentinels and the master with TLS. The user and password
//! are the master's (the sentinels are asked without credentials); a port left out is
//! Sentinel's 26379.

use std::time::Duration;

use crate::tls::{self, TlsFiles};

/// The port of a sentinel whose address names none.
const SENTINEL_PORT: u16 = 26379;

/// What a `redis+sentinel://` URL names.
#[derive(Clone)]
pub(crate) struct Sentinels {
    /// The sentinels' `host:port`, asked in this order.
    sentinels: Vec<String>,
    /// The name the sentinels monitor the master under.
    service: String,
    /// `user:password@`, or nothing, as written in the URL.
    credentials: String,
    /// `/DB`, or nothing.
    db: String,
    tls: bool,
    files: TlsFiles,
}

/// Whether `url` is a `redis+sentinel://` or `rediss+sentinel://` one.
pub(crate) fn is_sentinel_url(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or("");
    scheme.eq_ignore_ascii_case("redis+sentinel") || scheme.eq_ignore_ascii_case("rediss+sentinel")
}

impl Sentinels {
    /// Parses a `redis+sentinel://` URL; nothing is connected yet.
    pub(crate) fn parse(url: &str, files: &TlsFiles) -> Result<Sentinels, String> {
        let invalid = |why: &str| {
            format!(
                "invalid redis sentinel url: {why}; write \
                 redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/DB]"
            )
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("no scheme"))?;
        let tls = scheme.eq_ignore_ascii_case("rediss+sentinel");
        if rest.contains(['?', '#']) {
            return Err(invalid("no query or fragment is taken"));
        }
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("no master service named"))?;
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
            None => (String::new(), authority),
        };
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            let address = match host.rsplit_once(':') {
                Some((name, port)) if !name.is_empty() && !name.ends_with(':') => {
                    let port: u16 = port
                        .parse()
                        .map_err(|_| invalid(&format!("{host:?} has no valid port")))?;
                    format!("{name}:{port}")
                }
                _ if !host.is_empty() => format!("{host}:{SENTINEL_PORT}"),
                _ => return Err(invalid("an empty sentinel address")),
            };
            sentinels.push(address);
        }
        let (service, db) = match path.split_once('/') {
            Some((service, db)) => {
                let db: u32 = db
                    .parse()
                    .map_err(|_| invalid(&format!("{db:?} is not a database number")))?;
                (service, format!("/{db}"))
            }
            None => (path, String::new()),
        };
        if service.is_empty() {
            return Err(invalid("no master service named"));
        }
        let sentinels = Sentinels {
            sentinels,
            service: service.to_owned(),
            credentials,
            db,
            tls,
            files: files.clone(),
        };
        // A bad address, TLS files on a plain url, or no `tls` feature: said now.
        tls::client(&sentinels.sentinel_url(&sentinels.sentinels[0]), files)?;
        Ok(sentinels)
    }

    /// The sentinels and the service, for messages: no credentials.
    pub(crate) fn address(&self) -> String {
        format!(
            "the master of sentinel service {} ({})",
            self.service,
            self.sentinels.join(",")
        )
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "rediss" } else { "redis" }
    }

    fn sentinel_url(&self, address: &str) -> String {
        format!("{}://{address}", self.scheme())
    }

    fn master_url(&self, host: &str, port: u16) -> String {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        format!(
            "{}://{}{host}:{port}{}",
            self.scheme(),
            self.credentials,
            self.db
        )
    }

    /// Asks each sentinel in turn for the master, and connects to it with `open` (which
    /// authenticates); a server that is no master any more (a failover the sentinel has not
    /// seen yet) is left for the next sentinel's answer.
    pub(crate) fn connect_to_master(
        &self,
        timeout: Duration,
        open: impl Fn(&redis::Client) -> redis::RedisResult<redis::Connection>,
    ) -> Result<redis::Connection, String> {
        let mut failures = Vec::new();
        for sentinel in &self.sentinels {
            let asked = tls::client(&self.sentinel_url(sentinel), &self.files).and_then(|client| {
                let mut connection = client
                    .get_connection_with_timeout(timeout)
                    .map_err(|err| err.to_string())?;
                let _ = connection.set_read_timeout(Some(timeout));
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.service)
                    .query::<Option<(String, u16)>>(&mut connection)
                    .map_err(|err| err.to_string())
            });
            let (host, port) = match asked {
                Ok(Some(master)) => master,
                Ok(None) => {
                    failures.push(format!("sentinel {sentinel} knows no such service"));
                    continue;
                }
                Err(err) => {
                    failures.push(format!("sentinel {sentinel}: {err}"));
                    continue;
                }
            };
            let master = format!("{host}:{port}");
            let connected = tls::client(&self.master_url(&host, port), &self.files)
                .and_then(|client| open(&client).map_err(|err| err.to_string()))
                .and_then(|mut connection| {
                    let role: Vec<redis::Value> = redis::cmd("ROLE")
                        .query(&mut connection)
                        .map_err(|err| err.to_string())?;
                    match role.first() {
                        Some(redis::Value::BulkString(role)) if role == b"master" => Ok(connection),
                        _ => Err("it is not the master (any more)".to_owned()),
                    }
                });
            match connected {
                Ok(connection) => return Ok(connection),
                Err(err) => failures.push(format!("master {master}, named by {sentinel}: {err}")),
            }
        }
        Err(failures.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Sentinels, String> {
        Sentinels::parse(url, &TlsFiles::default())
    }

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_service_and_the_masters_credentials() {
        let sentinels = parse("redis+sentinel://fleet:secret@a:1,b,[::1]:3/cache/2").unwrap();
        assert_eq!(sentinels.sentinels, ["a:1", "b:26379", "[::1]:3"]);
        assert_eq!(sentinels.service, "cache");
        assert_eq!(
            sentinels.master_url("10.0.0.1", 6379),
            "redis://fleet:secret@10.0.0.1:6379/2"
        );
        assert_eq!(
            sentinels.master_url("::1", 6379),
            "redis://fleet:secret@[::1]:6379/2"
        );
        assert!(!sentinels.address().contains("secret"));
        assert!(is_sentinel_url("REDIS+SENTINEL://a/b"));
        assert!(is_sentinel_url("rediss+sentinel://a/b"));
        assert!(!is_sentinel_url("redis://a"));
    }

    #[test]
    fn a_sentinel_url_without_a_service_or_with_a_bad_port_is_refused() {
        for url in [
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/",
            "redis+sentinel://a:x/cache",
            "redis+sentinel://a:1,/cache",
            "redis+sentinel://a:1/cache/x",
            "redis+sentinel://a:1/cache?db=1",
        ] {
            let err = parse(url)
                .err()
                .unwrap_or_else(|| panic!("{url} was taken"));
            assert!(err.contains("invalid redis sentinel url"), "{url}: {err}");
        }
    }
}
