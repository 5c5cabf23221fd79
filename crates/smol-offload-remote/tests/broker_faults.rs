//! `RemotePool` across broker faults: a broker on a Unix socket with an append-only file,
//! restarted with SIGTERM with its data or without it, under each delivery mode. What ran is
//! recorded by the tasks themselves on a second `redis-server` that is never restarted, so the
//! tests judge from that record, not from the pool's word. Every test kills its servers and
//! worker processes when it ends, also when it fails.

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::HashMap;
use std::time::Duration;

use common::{Workers, block_on, in_child};
use redis_server::{RedisServer, record, skip_without_redis_server};
use smol_offload::Executor;
use smol_offload_remote::{Delivery, RemotePool, RemoteWorker};

#[ctor::ctor]
fn init() {
    smol_offload::init();
}

const KEY: &str = "broker-faults-test-key-0123456789";
const WORKER_MARKER: &str = "SMOL_OFFLOAD_TEST_FAULTS_WORKER";
/// The tasks of each restart test.
const TASKS: u32 = 400;

/// Starts `count` workers of two processes each: this test binary again, in worker mode.
fn start_workers(broker: &RedisServer, queue: &str, count: usize) -> Workers {
    let exe = std::env::current_exe().unwrap();
    Workers(
        (0..count)
            .map(|_| {
                common::worker_command(
                    &exe,
                    "faults_worker_main",
                    WORKER_MARKER,
                    &broker.url(),
                    queue,
                )
                .spawn()
                .unwrap()
            })
            .collect(),
    )
}

/// The body of every worker process: serve until killed.
#[test]
#[ignore = "runs as a remote worker in a child process, started by the tests"]
fn faults_worker_main() {
    if !in_child(WORKER_MARKER) {
        return;
    }
    let url = std::env::var(WORKER_MARKER).unwrap();
    let queue = std::env::var("TEST_QUEUE").unwrap();
    RemoteWorker::builder(&url)
        .queue(&queue)
        .workers(2)
        .key(KEY)
        .visibility_timeout(Duration::from_secs(2))
        .serve()
        .unwrap();
}

/// Waits until `count` workers of `queue` have told the broker they serve it: a worker that
/// started while the broker was down would exit.
fn wait_for_workers(broker: &RedisServer, queue: &str, count: usize) {
    let mut connection = broker.connection();
    loop {
        let serving: usize = redis::cmd("HLEN")
            .arg(format!("smol-offload:{queue}:workers"))
            .query(&mut connection)
            .unwrap();
        if serving >= count {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`record`], 5 ms after it started.
fn record_slowly(what: (String, String, u32)) -> u32 {
    std::thread::sleep(Duration::from_millis(5));
    record(what)
}

/// Waits until the list `key` has at least `count` entries.
fn wait_for_records(connection: &mut redis::Connection, key: &str, count: usize) {
    loop {
        let length: usize = redis::cmd("LLEN").arg(key).query(connection).unwrap();
        if length >= count {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What each task gave, and how many times each tag ran, for `TASKS` tasks through a broker
/// restarted (SIGTERM, half a second down) once a tenth of them ran.
fn run_across_a_restart(
    queue: &str,
    keep_data: bool,
    delivery: Delivery,
) -> (Vec<Result<u32, smol_offload::Error>>, HashMap<u32, usize>) {
    let record = RedisServer::start();
    let mut broker = RedisServer::start_durable(queue);
    let _workers = start_workers(&broker, queue, 2);
    wait_for_workers(&broker, queue, 2);
    let pool = RemotePool::builder(&broker.url())
        .queue(queue)
        .key(KEY)
        .delivery(delivery)
        // Not a measure: a task the pool lost fails instead of hanging the test.
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|tag| pool.run(record_slowly, (record.url(), "ran".to_owned(), tag)))
        .collect();
    let mut watch = record.connection();
    wait_for_records(&mut watch, "ran", TASKS as usize / 10);
    broker.restart(keep_data);
    // One wait (and watchdog) per task: each must make progress, however long they all take
    // on a loaded machine.
    let results: Vec<_> = tasks.into_iter().map(block_on).collect();
    let ran: Vec<u32> = redis::cmd("LRANGE")
        .arg("ran")
        .arg(0)
        .arg(-1)
        .query(&mut watch)
        .unwrap();
    let mut runs = HashMap::new();
    for tag in ran {
        *runs.entry(tag).or_insert(0) += 1;
    }
    (results, runs)
}

/// At least once: every task succeeds, and every one ran.
fn assert_none_lost(results: &[Result<u32, smol_offload::Error>], runs: &HashMap<u32, usize>) {
    let failed: Vec<String> = results
        .iter()
        .filter_map(|result| result.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {TASKS} tasks failed, the first: {}",
        failed.len(),
        failed[0]
    );
    for (tag, result) in results.iter().enumerate() {
        assert_eq!(result.as_ref().unwrap(), &(tag as u32));
    }
    let missing: Vec<u32> = (0..TASKS).filter(|tag| !runs.contains_key(tag)).collect();
    assert!(missing.is_empty(), "never ran: {missing:?}");
}

/// At most once: nothing ran twice, every task that succeeded ran, and a task fails only
/// because its job may have run.
fn assert_none_twice(results: &[Result<u32, smol_offload::Error>], runs: &HashMap<u32, usize>) {
    let twice: Vec<(&u32, &usize)> = runs.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    for (tag, result) in results.iter().enumerate() {
        match result {
            Ok(value) => {
                assert_eq!(*value, tag as u32);
                assert!(runs.contains_key(value), "{tag} succeeded but never ran");
            }
            Err(err) => assert!(
                err.is_worker_died() || err.to_string().contains("outcome is unknown"),
                "{tag}: {err}"
            ),
        }
    }
}

#[test]
fn at_least_once_no_task_is_lost_across_a_broker_restart_with_its_append_only_file() {
    if skip_without_redis_server() {
        return;
    }
    let (results, runs) = run_across_a_restart("aof-least", true, Delivery::AtLeastOnce);
    assert_none_lost(&results, &runs);
}

#[test]
fn at_least_once_no_task_is_lost_when_the_broker_comes_back_empty() {
    if skip_without_redis_server() {
        return;
    }
    let (results, runs) = run_across_a_restart("empty-least", false, Delivery::AtLeastOnce);
    assert_none_lost(&results, &runs);
}

#[test]
fn at_most_once_no_task_runs_twice_across_a_broker_restart_with_its_append_only_file() {
    if skip_without_redis_server() {
        return;
    }
    let (results, runs) = run_across_a_restart("aof-most", true, Delivery::AtMostOnce);
    assert_none_twice(&results, &runs);
    // The broker kept every job, so a task whose outcome is unknown is one whose reply was
    // popped by the connection that broke, on its way to this process: its job ran, once. Its
    // job was not lost, and it is not submitted again.
    for (tag, result) in results.iter().enumerate() {
        if let Err(err) = result
            && err.to_string().contains("outcome is unknown")
        {
            assert_eq!(
                runs.get(&(tag as u32)),
                Some(&1),
                "task {tag}: the broker kept its job, so it must have run once: {err}"
            );
        }
    }
}

#[test]
fn at_most_once_no_task_runs_twice_when_the_broker_comes_back_empty() {
    if skip_without_redis_server() {
        return;
    }
    let (results, runs) = run_across_a_restart("empty-most", false, Delivery::AtMostOnce);
    assert_none_twice(&results, &runs);
}

/// Records in the list `key` of the server at `url` that it started, and hangs.
fn report_and_hang((url, key): (String, String)) -> u32 {
    let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
    redis::cmd("RPUSH")
        .arg(&key)
        .arg(std::process::id())
        .query::<()>(&mut connection)
        .unwrap();
    std::thread::sleep(Duration::from_secs(600));
    0
}

fn square(n: u64) -> u64 {
    n * n
}

#[test]
fn a_broker_down_past_the_reconnect_limit_fails_pending_tasks_saying_so_and_run_never_blocks() {
    if skip_without_redis_server() {
        return;
    }
    let record = RedisServer::start();
    let mut broker = RedisServer::start_durable("limit");
    let _workers = start_workers(&broker, "limit", 1);
    wait_for_workers(&broker, "limit", 1);
    let pool = RemotePool::builder(&broker.url())
        .queue("limit")
        .key(KEY)
        .reconnect_limit(Duration::from_secs(1))
        .build()
        .unwrap();
    let pending = pool.run(report_and_hang, (record.url(), "started".to_owned()));
    let mut watch = record.connection();
    wait_for_records(&mut watch, "started", 1);
    broker.stop();
    // `run` returns at once with the broker down (this would hang otherwise), and its task
    // fails past the limit like the pending one.
    let submitted_while_down = pool.run(square, 3);
    for err in [
        block_on(pending).unwrap_err(),
        block_on(submitted_while_down).unwrap_err(),
    ] {
        let err = err.to_string();
        assert!(err.contains("reconnect limit"), "{err}");
        assert!(err.contains("unreachable"), "{err}");
    }
    // Once back, the pool serves again.
    broker.restart(false);
    assert_eq!(block_on(pool.run(square, 9)).unwrap(), 81);
}
