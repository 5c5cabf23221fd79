//! A private `redis-server` on 127.0.0.1 and a free port, for the remote pool's tests and its
//! benchmark, which both include this file with `#[path = "...redis_server.rs"] mod
//! redis_server;`: started with no persistence, its log drained so that it never blocks on a
//! full pipe, and killed when dropped. A test that needs one starts with
//! [`skip_without_redis_server`].

// Not every file that includes this one uses every launcher.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Set to `1` to make a missing `redis-server` a failure instead of a skipped test (CI sets it).
pub(crate) const REQUIRE_VARIABLE: &str = "SMOL_OFFLOAD_REQUIRE_REDIS";

/// True when `redis-server` is not on the `PATH`: the calling test then returns at once, after
/// one line saying that it was skipped and how to run it. Panics instead when
/// [`REQUIRE_VARIABLE`] is `1`, so that nothing goes untested where the server should be.
pub(crate) fn skip_without_redis_server() -> bool {
    let version = Command::new("redis-server").arg("--version").output();
    if version.is_ok_and(|output| output.status.success()) {
        return false;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    if std::env::var_os(REQUIRE_VARIABLE).is_some_and(|value| value == "1") {
        panic!("{test}: no redis-server on the PATH, and {REQUIRE_VARIABLE}=1 requires one");
    }
    // Straight to stderr, past the test harness's capture, so that the line shows.
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: needs redis-server on the PATH (apt-get install redis-server); set \
         {REQUIRE_VARIABLE}=1 to make this a failure"
    );
    true
}

/// A private `redis-server`, killed when dropped.
pub(crate) struct RedisServer {
    child: Child,
    /// Its TCP port, or 0 when it listens on a Unix socket only.
    pub(crate) port: u16,
    /// Whether it speaks only TLS (its url is a `rediss://` one).
    tls: bool,
    /// Everything it was started with, to start it again.
    arguments: Vec<String>,
    /// The directory of its socket and append-only file, for a durable one; removed when
    /// dropped.
    durable: Option<PathBuf>,
}

impl RedisServer {
    /// Starts one on a free port and returns once it accepts connections.
    pub(crate) fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts one on `port` (a restart on the port of one that was killed) and returns once it
    /// accepts connections.
    pub(crate) fn start_on(port: u16) -> RedisServer {
        let arguments = vec!["--port".to_owned(), port.to_string()];
        RedisServer::launch(arguments, port, false, None).expect("the port is taken")
    }

    /// Starts one with `--port` on a free port and these further arguments, such as ACL
    /// users (`--user name on >password ~* &* +@all`).
    pub(crate) fn start_with(arguments: &[&str]) -> RedisServer {
        on_a_free_port(|port| {
            let mut all = vec!["--port".to_owned(), port.to_string()];
            all.extend(arguments.iter().map(|argument| (*argument).to_owned()));
            RedisServer::launch(all, port, false, None)
        })
    }

    /// Starts one that speaks only TLS on a free port, with the certificate and key in these
    /// PEM files, and checking client certificates against `ca` when `verify_clients`.
    pub(crate) fn start_tls(
        cert: &Path,
        key: &Path,
        ca: &Path,
        verify_clients: bool,
    ) -> RedisServer {
        let path = |path: &Path| path.to_str().unwrap().to_owned();
        on_a_free_port(|port| {
            let arguments = vec![
                "--port".to_owned(),
                "0".to_owned(),
                "--tls-port".to_owned(),
                port.to_string(),
                "--tls-cert-file".to_owned(),
                path(cert),
                "--tls-key-file".to_owned(),
                path(key),
                "--tls-ca-cert-file".to_owned(),
                path(ca),
                "--tls-auth-clients".to_owned(),
                if verify_clients { "yes" } else { "no" }.to_owned(),
            ];
            RedisServer::launch(arguments, port, true, None)
        })
    }

    /// Starts one on a Unix socket in a directory of its own, with an append-only file written
    /// through at every command, that [`restart`](RedisServer::restart) can stop and start
    /// again with or without its data. No TCP port: nothing to race other tests for.
    pub(crate) fn start_durable(name: &str) -> RedisServer {
        let dir =
            std::env::temp_dir().join(format!("smol-offload-redis-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let dir_text = dir.to_str().unwrap().to_owned();
        let arguments = vec![
            "--port".to_owned(),
            "0".to_owned(),
            "--unixsocket".to_owned(),
            format!("{dir_text}/redis.sock"),
            "--dir".to_owned(),
            dir_text,
            "--appendonly".to_owned(),
            "yes".to_owned(),
            "--appendfsync".to_owned(),
            "always".to_owned(),
        ];
        RedisServer::launch(arguments, 0, false, Some(dir)).expect("no port to take")
    }

    /// Stops a durable one with SIGTERM (it writes its append-only file as it shuts down),
    /// waits for it to exit, then half a second later starts it again on the same socket: with its data when
    /// `keep_data`, else empty.
    pub(crate) fn restart(&mut self, keep_data: bool) {
        let dir = self
            .durable
            .clone()
            .expect("only a durable redis-server restarts");
        self.stop();
        // Down for half a second, as in a quick restart.
        std::thread::sleep(std::time::Duration::from_millis(500));
        if !keep_data {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.file_name().is_some_and(|name| name != "redis.sock") {
                    let _ = std::fs::remove_dir_all(&path);
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let restarted = RedisServer::launch(
            self.arguments.clone(),
            self.port,
            self.tls,
            Some(dir.clone()),
        )
        .expect("no port to take");
        // The old value's directory is the new one's: only the process changes (and the old
        // one, already reaped, is not signalled again).
        let mut old = std::mem::replace(self, restarted);
        old.durable = None;
    }

    /// Stops it with SIGTERM and waits for it to exit.
    pub(crate) fn stop(&mut self) {
        if self.child.try_wait().is_ok_and(|status| status.is_some()) {
            return; // stopped already: its pid may belong to another process now
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }

    /// Starts `redis-server` with `arguments`; `None` if its port was taken meanwhile.
    fn launch(
        arguments: Vec<String>,
        port: u16,
        tls: bool,
        durable: Option<PathBuf>,
    ) -> Option<RedisServer> {
        let persistence: &[&str] = if durable.is_some() {
            &["--save", ""]
        } else {
            &["--save", "", "--appendonly", "no"]
        };
        let mut child = Command::new("redis-server")
            .args(&arguments)
            .args(["--bind", "127.0.0.1"])
            .args(persistence)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut log = Vec::new();
        let mut ready = false;
        for line in lines.by_ref() {
            let line = line.unwrap();
            // "Ready to accept connections" on TCP; "... now ready to accept connections at
            // <socket>" on a Unix socket.
            if line
                .to_ascii_lowercase()
                .contains("ready to accept connections")
            {
                ready = true;
                break;
            }
            log.push(line);
        }
        if !ready {
            let status = child.wait().unwrap();
            if log
                .iter()
                .any(|line| line.contains("Address already in use"))
            {
                return None;
            }
            panic!(
                "redis-server {arguments:?} exited ({status}):\n{}",
                log.join("\n")
            );
        }
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Some(RedisServer {
            child,
            port,
            tls,
            arguments,
            durable,
        })
    }

    pub(crate) fn url(&self) -> String {
        if let Some(dir) = &self.durable {
            return format!("redis+unix://{}/redis.sock", dir.display());
        }
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A connection to this server (a plain one: TLS servers need their test's client).
    pub(crate) fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.durable {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs `launch` on free ports until one was still free when `redis-server` bound it: a
/// port found free may be taken by a parallel test before `redis-server` starts.
fn on_a_free_port(mut launch: impl FnMut(u16) -> Option<RedisServer>) -> RedisServer {
    for _ in 0..20 {
        if let Some(server) = launch(free_port()) {
            return server;
        }
    }
    panic!("redis-server found every free port taken, 20 times in a row");
}

/// A loopback TCP port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A task that records that it ran: appends `tag` to the list `key` of the server at `url`,
/// and returns `tag`. Tests judge what ran from that list, not from the pool's word.
pub(crate) fn record((url, key, tag): (String, String, u32)) -> u32 {
    let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
    redis::cmd("RPUSH")
        .arg(&key)
        .arg(tag)
        .query::<()>(&mut connection)
        .unwrap();
    tag
}
