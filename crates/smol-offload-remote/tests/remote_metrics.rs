//! The remote pool's metrics (feature `metrics`) against a private `redis-server` on loopback:
//! with no worker serving the queue (what the client alone records), and with a worker run on
//! a thread of this process. Skipped, saying so, where no `redis-server` is installed.

#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use redis_server::{RedisServer, skip_without_redis_server};
use smol_offload::Executor;
use smol_offload_remote::{RemotePool, RemoteWorker};

smol_offload::init_for_tests!();

const KEY: &str = "remote-test-key-0123456789abcdef";

fn square(n: u64) -> u64 {
    n * n
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn fails(_: ()) {
    panic!("remote boom")
}

/// What the recorder holds, by "name label=value,...", labels sorted.
fn snapshot(snapshotter: &Snapshotter) -> HashMap<String, DebugValue> {
    let mut values = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}={}", label.key(), label.value()))
            .collect();
        labels.sort();
        values.insert(format!("{} {}", key.name(), labels.join(",")), value);
    }
    values
}

#[test]
fn a_remote_pool_records_what_its_workers_ran() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (url, stop) = (redis.url(), stop.clone());
        std::thread::spawn(move || {
            RemoteWorker::builder(&url)
                .queue("served")
                .workers(1)
                .key(KEY)
                .stop_flag(stop)
                .serve()
        })
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pool = metrics::with_local_recorder(&recorder, || {
        RemotePool::builder(&redis.url())
            .queue("served")
            .key(KEY)
            .build()
    })
    .unwrap();
    smol::block_on(async {
        assert_eq!(pool.run(square, 5).await.unwrap(), 25);
        assert!(pool.run(fails, ()).await.unwrap_err().is_panic());
        // Long enough for the worker's started notice, which splits the wait from the run.
        assert_eq!(pool.run(sleep_ms, 50).await.unwrap(), 50);
    });
    let values = snapshot(&snapshotter);
    let tasks = |outcome: &str| {
        let name = format!("smol_offload_tasks_total kind=remote,outcome={outcome},pool=unnamed");
        match values.get(&name) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!("{outcome}: {other:?}"),
        }
    };
    assert_eq!((tasks("ok"), tasks("panic"), tasks("error")), (2, 1, 0));
    // A job answered within a millisecond or so comes back without a started notice, and
    // records neither histogram; the long one was announced.
    let samples =
        |histogram: &str| match values.get(&format!("{histogram} kind=remote,pool=unnamed")) {
            Some(DebugValue::Histogram(samples)) => samples.len(),
            other => panic!("{histogram}: {other:?}"),
        };
    let waits = samples("smol_offload_queue_wait_seconds");
    assert!((1..=3).contains(&waits), "{waits}");
    assert_eq!(samples("smol_offload_run_seconds"), waits);
    for gauge in ["smol_offload_queued", "smol_offload_running"] {
        match values.get(&format!("{gauge} kind=remote,pool=unnamed")) {
            Some(DebugValue::Gauge(n)) => assert_eq!(n.into_inner(), 0.0, "{gauge}"),
            other => panic!("{gauge}: {other:?}"),
        }
    }
    drop(pool);
    stop.store(true, Ordering::SeqCst);
    worker.join().unwrap().unwrap();
}

#[test]
fn a_remote_pool_records_timeouts_cancellations_and_idle_gauges() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pool = metrics::with_local_recorder(&recorder, || {
        RemotePool::builder(&redis.url())
            .name("fleet")
            .queue("metrics")
            .key(KEY)
            .timeout(Duration::from_millis(100))
            .build()
    })
    .unwrap();
    assert_eq!(pool.name(), "fleet");
    // Nobody serves the queue: the first task times out, the second is dropped unstarted.
    let err = smol::block_on(pool.run(square, 3)).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    drop(pool.run(square, 4));
    // Dropping the pool fails nothing more: both tasks have ended already.
    drop(pool);

    let values = snapshot(&snapshotter);
    let value = |name: &str| values.get(name);
    let counter = |outcome: &str| match value(&format!(
        "smol_offload_tasks_total kind=remote,outcome={outcome},pool=fleet"
    )) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{outcome}: {other:?} in {values:?}"),
    };
    assert_eq!(counter("timeout"), 1);
    assert_eq!(counter("cancelled"), 1);
    assert_eq!(counter("ok"), 0);
    for gauge in [
        "smol_offload_queued",
        "smol_offload_running",
        "smol_offload_workers",
    ] {
        match value(&format!("{gauge} kind=remote,pool=fleet")) {
            Some(DebugValue::Gauge(n)) => assert_eq!(n.into_inner(), 0.0, "{gauge}"),
            other => panic!("{gauge}: {other:?}"),
        }
    }
    // Neither task started: no worker sent a started notice.
    match value("smol_offload_queue_wait_seconds kind=remote,pool=fleet") {
        Some(DebugValue::Histogram(waits)) => assert!(waits.is_empty(), "{waits:?}"),
        other => panic!("queue wait: {other:?}"),
    }
}
