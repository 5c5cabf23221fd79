//! `RemotePool` and `RemoteWorker` on a `redis+sentinel://` URL, against real servers on
//! loopback started by each test: a master, its replica and three sentinels; the master is
//! killed mid-run and the sentinels promote the replica. Every process a test starts is killed
//! when it ends, also when it fails; the tasks record what ran on a separate server.

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Workers, block_on, in_child};
use redis_server::{RedisServer, free_port, record, skip_without_redis_server};
use smol_offload::{Executor, Task, gather};
use smol_offload_remote::{RemotePool, RemoteWorker};

#[ctor::ctor]
fn init() {
    smol_offload::init();
}

const KEY: &str = "sentinel-test-key-0123456789abcdef";
const SERVICE: &str = "fleet";
const WORKER_MARKER: &str = "SMOL_OFFLOAD_TEST_SENTINEL_WORKER";

/// A sentinel on loopback with its own config file (a sentinel rewrites it), killed when
/// dropped.
struct Sentinel {
    child: Child,
    port: u16,
}

impl Sentinel {
    /// Starts one monitoring the master at `master_port` with a quorum of 2, on a free port
    /// (another one if a parallel test took it first), and returns once it monitors.
    fn start(dir: &std::path::Path, master_port: u16) -> Sentinel {
        for _ in 0..10 {
            let port = free_port();
            let config = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {SERVICE} 1000\n\
                     sentinel failover-timeout {SERVICE} 5000\n"
                ),
            )
            .unwrap();
            let mut child = Command::new("redis-server")
                .arg(&config)
                .arg("--sentinel")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let monitoring = lines
                .by_ref()
                .map_while(Result::ok)
                .any(|line| line.contains("+monitor master"));
            if monitoring {
                std::thread::spawn(move || lines.for_each(drop));
                return Sentinel { child, port };
            }
            // Its port was taken: it exited.
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("no sentinel started in ten tries");
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A master, its replica and three sentinels; all killed, and their files removed, when
/// dropped.
struct Cluster {
    master: RedisServer,
    replica: RedisServer,
    sentinels: Vec<Sentinel>,
    dir: PathBuf,
}

impl Cluster {
    /// Starts them all and returns once every sentinel knows the replica and the two others.
    fn start(name: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "smol-offload-sentinel-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // A replica writes what it syncs to its folder: this test's, not the working one.
        let folder = dir.to_str().unwrap();
        let master = RedisServer::start_with(&["--dir", folder]);
        let master_port = master.port.to_string();
        let replica =
            RedisServer::start_with(&["--dir", folder, "--replicaof", "127.0.0.1", &master_port]);
        let sentinels = (0..3).map(|_| Sentinel::start(&dir, master.port)).collect();
        let cluster = Cluster {
            master,
            replica,
            sentinels,
            dir,
        };
        for sentinel in &cluster.sentinels {
            wait_until(|| {
                let master = sentinel_master(sentinel.port);
                master.get("num-other-sentinels").map(String::as_str) == Some("2")
                    && master.get("num-slaves").map(String::as_str) == Some("1")
            });
        }
        cluster
    }

    fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|sentinel| format!("127.0.0.1:{}", sentinel.port))
            .collect();
        format!("redis+sentinel://{}/{SERVICE}", sentinels.join(","))
    }

    /// Kills the master with SIGKILL and waits until the sentinels have promoted the replica.
    fn fail_over(&mut self) {
        self.master.kill();
        let replica = self.replica.port;
        for sentinel in &self.sentinels {
            wait_until(|| {
                let master: Option<(String, u16)> = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(SERVICE)
                    .query(&mut connect(sentinel.port))
                    .unwrap();
                master.is_some_and(|(_, port)| port == replica)
            });
        }
        wait_until(|| {
            let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut connect(replica)).unwrap();
            role.first() == Some(&redis::Value::BulkString(b"master".to_vec()))
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.sentinels.clear();
        self.master.kill();
        self.replica.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn connect(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection()
        .unwrap()
}

/// What `SENTINEL MASTER` says of the service.
fn sentinel_master(port: u16) -> HashMap<String, String> {
    let fields: Vec<String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(SERVICE)
        .query(&mut connect(port))
        .unwrap();
    fields
        .chunks(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect()
}

/// Waits, up to a minute, until `ready` holds.
fn wait_until(mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "waited a minute");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts this test binary again as a worker of `queue` on `url`.
fn start_worker(url: &str, queue: &str) -> Child {
    let exe = std::env::current_exe().unwrap();
    common::worker_command(&exe, "sentinel_worker_main", WORKER_MARKER, url, queue)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The body of every worker process: serve until killed.
#[test]
#[ignore = "runs as a remote worker in a child process, started by the tests"]
fn sentinel_worker_main() {
    if !in_child(WORKER_MARKER) {
        return;
    }
    RemoteWorker::builder(&std::env::var(WORKER_MARKER).unwrap())
        .queue(&std::env::var("TEST_QUEUE").unwrap())
        .key(KEY)
        .workers(2)
        .visibility_timeout(Duration::from_secs(1))
        .serve()
        .unwrap();
}

fn pool(url: &str, queue: &str) -> RemotePool {
    RemotePool::builder(url)
        .queue(queue)
        .key(KEY)
        .build()
        .unwrap()
}

/// [`record`], 20 ms after it started.
fn record_slowly(what: (String, String, u32)) -> u32 {
    std::thread::sleep(Duration::from_millis(20));
    record(what)
}

fn submit(pool: &RemotePool, witness: &RedisServer, tags: std::ops::Range<u32>) -> Vec<Task<u32>> {
    tags.map(|tag| pool.run(record_slowly, (witness.url(), "ran".to_owned(), tag)))
        .collect()
}

/// How many times each tag ran, from the witness's record.
fn runs(witness: &RedisServer) -> HashMap<u32, usize> {
    let ran: Vec<u32> = redis::cmd("LRANGE")
        .arg("ran")
        .arg(0)
        .arg(-1)
        .query(&mut connect(witness.port))
        .unwrap();
    let mut runs = HashMap::new();
    for tag in ran {
        *runs.entry(tag).or_default() += 1;
    }
    runs
}

/// Starts a cluster, a worker and a pool on its sentinel url, runs tasks, and kills the
/// master while a burst of tasks is in flight; returns the burst's tasks.
fn fail_over_mid_run(name: &str) -> (Cluster, RedisServer, Workers, RemotePool, Vec<Task<u32>>) {
    let witness = RedisServer::start();
    let mut cluster = Cluster::start(name);
    let url = cluster.url();
    let workers = Workers(vec![start_worker(&url, name)]);
    let remote = pool(&url, name);
    let before = block_on(gather(submit(&remote, &witness, 0..10)));
    assert!(before.iter().all(Result::is_ok), "{before:?}");
    let in_flight = submit(&remote, &witness, 10..60);
    wait_until(|| runs(&witness).len() >= 15);
    cluster.fail_over();
    (cluster, witness, workers, remote, in_flight)
}

#[test]
fn workers_follow_a_sentinel_failover_and_new_pools_reach_the_new_master() {
    if skip_without_redis_server() {
        return;
    }
    let (cluster, witness, _workers, _remote, in_flight) = fail_over_mid_run("follow");
    // A pool built now asks the sentinels and reaches the new master; the worker started
    // before the failover has followed it there, and runs the pool's tasks, each once.
    let late = pool(&cluster.url(), "follow");
    let results = block_on(gather(submit(&late, &witness, 200..220)));
    let results: Vec<u32> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(results, (200..220).collect::<Vec<_>>());
    let runs = runs(&witness);
    for tag in 200..220 {
        assert_eq!(runs.get(&tag), Some(&1), "tag {tag}: {runs:?}");
    }
    drop(in_flight);
}

#[test]
fn no_task_is_lost_when_the_master_dies_mid_run() {
    if skip_without_redis_server() {
        return;
    }
    let (_cluster, witness, _workers, remote, in_flight) = fail_over_mid_run("lossless");
    // At least once: every task in flight when the master died completes, and ran; and the
    // same pool runs the tasks submitted after the failover, each once.
    let results = block_on(gather(in_flight));
    let results: Vec<u32> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(results, (10..60).collect::<Vec<_>>());
    let after = block_on(gather(submit(&remote, &witness, 100..120)));
    let after: Vec<u32> = after.into_iter().map(Result::unwrap).collect();
    assert_eq!(after, (100..120).collect::<Vec<_>>());
    let runs = runs(&witness);
    for tag in 10..60 {
        assert!(
            runs.get(&tag).is_some_and(|&n| n >= 1),
            "tag {tag}: {runs:?}"
        );
    }
    for tag in 100..120 {
        assert_eq!(runs.get(&tag), Some(&1), "tag {tag}: {runs:?}");
    }
}
