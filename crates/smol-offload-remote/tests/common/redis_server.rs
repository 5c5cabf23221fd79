//! A private `redis-server` on 127.0.0.1 and a free port, for the remote pool's tests and its
//! benchmark, which both include this file with `#[path = "...redis_server.rs"] mod
//! redis_server;`: started with no persistence, its log drained so that it never blocks on a
//! full pipe, and killed when dropped. A test that needs one starts with
//! [`skip_without_redis_server`].

// Not every file that includes this one uses every launcher.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
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
    pub(crate) port: u16,
    /// Whether it speaks only TLS (its url is a `rediss://` one).
    tls: bool,
}

impl RedisServer {
    /// Starts one on a free port and returns once it accepts connections.
    pub(crate) fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// Starts one on `port` (a restart on the port of one that was killed) and returns once it
    /// accepts connections.
    pub(crate) fn start_on(port: u16) -> RedisServer {
        RedisServer::launch(&["--port", &port.to_string()], port, false)
    }

    /// Starts one with `--port` on a free port and these further arguments, such as ACL
    /// users (`--user name on >password ~* &* +@all`).
    pub(crate) fn start_with(arguments: &[&str]) -> RedisServer {
        let port = free_port();
        let port_text = port.to_string();
        let mut all = vec!["--port", &port_text];
        all.extend_from_slice(arguments);
        RedisServer::launch(&all, port, false)
    }

    /// Starts one that speaks only TLS on a free port, with the certificate and key in these
    /// PEM files, and checking client certificates against `ca` when `verify_clients`.
    pub(crate) fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
        verify_clients: bool,
    ) -> RedisServer {
        let port = free_port();
        let path = |path: &std::path::Path| path.to_str().unwrap().to_owned();
        let arguments = [
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
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        RedisServer::launch(&arguments, port, true)
    }

    fn launch(arguments: &[&str], port: u16, tls: bool) -> RedisServer {
        let mut child = Command::new("redis-server")
            .args(arguments)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut log = Vec::new();
        let mut ready = false;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains("Ready to accept connections") {
                ready = true;
                break;
            }
            log.push(line);
        }
        if !ready {
            let status = child.wait().unwrap();
            panic!(
                "redis-server {arguments:?} exited ({status}):\n{}",
                log.join("\n")
            );
        }
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        RedisServer { child, port, tls }
    }

    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
