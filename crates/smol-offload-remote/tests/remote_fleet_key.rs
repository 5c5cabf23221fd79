//! A worker or pool with a key other than the fleet's, against a real `redis-server` on
//! loopback: it refuses to start, and a wrong-key worker that runs anyway leaves the jobs it
//! cannot verify to the fleet's workers. Every process a test starts is killed when it ends,
//! also when it fails.

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::{Workers, block_on, in_child};
use redis_server::{RedisServer, record, skip_without_redis_server};
use smol_offload::{Executor, gather};
use smol_offload_remote::{RemotePool, RemoteWorker};

#[ctor::ctor]
fn init() {
    smol_offload::init();
}

const KEY: &str = "fleet-key-test-key-0123456789abcdef";
const WRONG_KEY: &str = "not-the-fleet-key-0123456789abcdef";
const WORKER_MARKER: &str = "SMOL_OFFLOAD_TEST_FLEET_KEY_WORKER";

/// Starts this test binary again as a worker of `queue` with `key`, two processes holding up
/// to eight jobs each.
fn start_worker(redis: &RedisServer, queue: &str, key: &str) -> Child {
    let exe = std::env::current_exe().unwrap();
    common::worker_command(
        &exe,
        "fleet_key_worker_main",
        WORKER_MARKER,
        &redis.url(),
        queue,
    )
    .env("TEST_KEY", key)
    .stderr(Stdio::null())
    .spawn()
    .unwrap()
}

/// The body of every worker process: serve until killed.
#[test]
#[ignore = "runs as a remote worker in a child process, started by the tests"]
fn fleet_key_worker_main() {
    if !in_child(WORKER_MARKER) {
        return;
    }
    let url = std::env::var(WORKER_MARKER).unwrap();
    RemoteWorker::builder(&url)
        .queue(&std::env::var("TEST_QUEUE").unwrap())
        .key(std::env::var("TEST_KEY").unwrap())
        .workers(2)
        .prefetch(8)
        .visibility_timeout(Duration::from_secs(1))
        .serve()
        .unwrap();
}

/// Waits, up to a minute, until the queue has `count` live workers.
fn wait_for_workers(connection: &mut redis::Connection, queue: &str, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let live: usize = redis::cmd("HLEN")
            .arg(format!("smol-offload:{queue}:workers"))
            .query(connection)
            .unwrap();
        if live >= count {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "waited a minute");
        std::thread::yield_now();
    }
}

#[test]
fn a_worker_or_a_pool_with_another_key_refuses_to_start() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url();
    // The fleet's first member records its key's fingerprint.
    let fleet = RemotePool::builder(&url)
        .queue("keyed")
        .key(KEY)
        .build()
        .unwrap();
    let recorded: String = redis::cmd("GET")
        .arg("smol-offload:keyed:fingerprint")
        .query(&mut redis.connection())
        .unwrap();
    assert!(!recorded.contains(KEY), "{recorded}");
    // A stopped worker returns at once, if it starts at all.
    let stopped = Arc::new(AtomicBool::new(true));
    let err = RemoteWorker::builder(&url)
        .queue("keyed")
        .key(WRONG_KEY)
        .workers(1)
        .stop_flag(stopped.clone())
        .serve()
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("differs from the fleet's"), "{message}");
    assert!(
        !message.contains(WRONG_KEY) && !message.contains(KEY),
        "{message}"
    );
    let err = RemotePool::builder(&url)
        .queue("keyed")
        .key(WRONG_KEY)
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("differs from the fleet's"),
        "{err}"
    );
    // SAFETY: the broker listens on loopback, for this test's processes only.
    let unsigned = unsafe { RemotePool::builder(&url).trusted_network() };
    let err = unsigned.queue("keyed").build().unwrap_err();
    assert!(err.to_string().contains("unsigned"), "{err}");
    // The fleet's key still joins, and another queue is another fleet.
    let same = RemotePool::builder(&url).queue("keyed").key(KEY).build();
    assert!(same.is_ok());
    let other = RemotePool::builder(&url)
        .queue("other")
        .key(WRONG_KEY)
        .build();
    assert!(other.is_ok());
    drop(fleet);
}

#[test]
fn a_wrong_key_worker_leaves_the_jobs_it_cannot_verify_to_the_fleet() {
    if skip_without_redis_server() {
        return;
    }
    const JOBS: u32 = 60;
    let redis = RedisServer::start();
    let url = redis.url();
    let mut connection = redis.connection();
    let mut workers = Workers(vec![start_worker(&redis, "mixed", KEY)]);
    let pool = RemotePool::builder(&url)
        .queue("mixed")
        .key(KEY)
        .build()
        .unwrap();
    wait_for_workers(&mut connection, "mixed", 1);
    // An operator deletes the fleet's fingerprint: a worker with another key gets in.
    redis::cmd("DEL")
        .arg("smol-offload:mixed:fingerprint")
        .query::<()>(&mut connection)
        .unwrap();
    workers.0.push(start_worker(&redis, "mixed", WRONG_KEY));
    wait_for_workers(&mut connection, "mixed", 2);
    let tasks = (0..JOBS).map(|tag| pool.run(record, (url.clone(), "mixed-ran".to_owned(), tag)));
    // A job that a worker dropped leaves its task waiting: the watchdog fails the test.
    let results = block_on(gather(tasks));
    let results: Vec<u32> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(results, (0..JOBS).collect::<Vec<_>>());
    // From the record of what ran: every job, each once.
    let mut ran: Vec<u32> = redis::cmd("LRANGE")
        .arg("mixed-ran")
        .arg(0)
        .arg(-1)
        .query(&mut connection)
        .unwrap();
    ran.sort_unstable();
    assert_eq!(ran, (0..JOBS).collect::<Vec<_>>());
    // The wrong-key worker took jobs, and left them: the broker recorded who failed them.
    let unverified: Vec<String> = redis::cmd("KEYS")
        .arg("smol-offload:mixed:unverified:*")
        .query(&mut connection)
        .unwrap();
    assert!(!unverified.is_empty());
}
