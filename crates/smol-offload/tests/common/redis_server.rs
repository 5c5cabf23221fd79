//! A private `redis-server` on 127.0.0.1 and a free port, for the remote pool's tests and its
//! benchmark, which both include this file with `#[path = "...redis_server.rs"] mod redis_server;`: started with no persistence, its log
//! drained so that it never blocks on a full pipe, and killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A private `redis-server`, killed when dropped.
pub(crate) struct RedisServer {
    child: Child,
    pub(crate) port: u16,
}

impl RedisServer {
    /// Starts one on a free port and returns once it accepts connections.
    pub(crate) fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        RedisServer::start_on(port)
    }

    /// Starts one on `port` (a restart on the port of one that was killed) and returns once it
    /// accepts connections.
    pub(crate) fn start_on(port: u16) -> RedisServer {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            if line.unwrap().contains("Ready to accept connections") {
                break;
            }
        }
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        RedisServer { child, port }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
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
