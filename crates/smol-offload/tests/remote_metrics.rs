//! The remote pool's metrics (feature `metrics`) against a private `redis-server` on loopback,
//! with no worker serving the queue: what the client alone records. Skipped, saying so, where
//! no `redis-server` is installed.

#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use redis_server::RedisServer;
use smol_offload::Executor;
use smol_offload::remote::RemotePool;

smol_offload::init_for_tests!();

const KEY: &str = "remote-test-key-0123456789abcdef";

fn square(n: u64) -> u64 {
    n * n
}

#[test]
fn a_remote_pool_records_timeouts_cancellations_and_idle_gauges() {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no redis-server installed");
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

    let mut values = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}={}", label.key(), label.value()))
            .collect();
        labels.sort();
        values.insert(format!("{} {}", key.name(), labels.join(",")), value);
    }
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
