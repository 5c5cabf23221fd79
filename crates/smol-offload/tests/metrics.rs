//! The pools' metrics (feature `metrics`), read with `metrics-util`'s `DebuggingRecorder`: each
//! test builds its pool under a recorder of its own, so that tests do not see each other's
//! values, and checks every metric and outcome on threads and on processes.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde::{Deserialize, Deserializer, Serialize};
use smol_offload::{Executor, ProcessPool, ThreadPool};

smol_offload::init_for_tests!();

/// What a recorder holds, summed over snapshots: a snapshot takes the values out (counters
/// and gauges start again from zero, histograms empty), and every value the pools record is
/// an increment or a decrement, so the sums are the totals.
#[derive(Default)]
struct Recorded {
    sums: HashMap<MetricId, f64>,
    samples: HashMap<MetricId, Vec<f64>>,
}

/// A metric's name and its labels, sorted.
type MetricId = (String, Vec<(String, String)>);

impl Recorded {
    fn take(&mut self, snapshotter: &Snapshotter) {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect();
            labels.sort();
            let id = (key.name().to_owned(), labels);
            match value {
                DebugValue::Counter(n) => *self.sums.entry(id).or_default() += n as f64,
                DebugValue::Gauge(n) => *self.sums.entry(id).or_default() += n.into_inner(),
                DebugValue::Histogram(values) => self
                    .samples
                    .entry(id)
                    .or_default()
                    .extend(values.into_iter().map(|v| v.into_inner())),
            }
        }
    }

    fn id(name: &str, labels: &[(&str, &str)]) -> MetricId {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        labels.sort();
        (name.to_owned(), labels)
    }

    /// `smol_offload_tasks_total` of `outcome` in the pool.
    fn tasks(&self, pool: (&str, &str), outcome: &str) -> u64 {
        let labels = [("pool", pool.0), ("kind", pool.1), ("outcome", outcome)];
        let id = Recorded::id("smol_offload_tasks_total", &labels);
        self.sums.get(&id).copied().unwrap_or(0.0) as u64
    }

    fn gauge(&self, pool: (&str, &str), name: &str) -> f64 {
        let id = Recorded::id(name, &[("pool", pool.0), ("kind", pool.1)]);
        self.sums.get(&id).copied().unwrap_or(0.0)
    }

    fn histogram(&self, pool: (&str, &str), name: &str) -> &[f64] {
        let id = Recorded::id(name, &[("pool", pool.0), ("kind", pool.1)]);
        self.samples.get(&id).map_or(&[], Vec::as_slice)
    }
}

/// Takes snapshots until `done` holds, for values recorded by a pool's own thread after the
/// awaiting side has moved on (a killed worker's task, a cancelled one); fails after a minute.
fn recorded_when(snapshotter: &Snapshotter, done: impl Fn(&Recorded) -> bool) -> Recorded {
    let mut recorded = Recorded::default();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        recorded.take(snapshotter);
        if done(&recorded) {
            return recorded;
        }
        assert!(
            Instant::now() < give_up,
            "still not recorded: {:?}",
            recorded.sums
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_thread_pool_records_each_outcome_its_waits_run_times_and_gauges() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pool = metrics::with_local_recorder(&recorder, || {
        ThreadPool::builder().name("resize").workers(1).build()
    })
    .unwrap();
    let labels = ("resize", "thread");
    smol::block_on(async {
        assert_eq!(pool.spawn(|| 2 + 2).await.unwrap(), 4);
        assert!(pool.spawn(|| panic!("boom")).await.unwrap_err().is_panic());

        // The one thread waits on a gate, so the next task waits in the queue and is dropped
        // there: cancelled. The gated task itself outlives its time limit: timed out.
        let (open, gate) = mpsc::channel::<()>();
        let (started, is_started) = mpsc::channel();
        let gated = pool.spawn(move || {
            started.send(()).unwrap();
            gate.recv().unwrap();
        });
        is_started.recv().unwrap();
        drop(pool.spawn(|| ()));
        let err = gated.timeout(Duration::from_millis(20)).await.unwrap_err();
        assert!(err.is_timeout());
        open.send(()).unwrap();
        // Behind everything on the one thread: once it ran, the others have ended.
        pool.spawn(|| ()).await.unwrap();
    });
    let recorded = recorded_when(&snapshotter, |recorded| {
        recorded.tasks(labels, "ok") == 2 && recorded.tasks(labels, "timeout") == 1
    });
    assert_eq!(recorded.tasks(labels, "panic"), 1);
    assert_eq!(recorded.tasks(labels, "cancelled"), 1);
    assert_eq!(recorded.tasks(labels, "worker_died"), 0);
    assert_eq!(recorded.tasks(labels, "error"), 0);
    // Four tasks started (the cancelled one never did): one wait and one run time each.
    let waits = recorded.histogram(labels, "smol_offload_queue_wait_seconds");
    let runs = recorded.histogram(labels, "smol_offload_run_seconds");
    assert_eq!((waits.len(), runs.len()), (4, 4));
    assert!(
        runs.iter().any(|&seconds| seconds >= 0.02),
        "the gated task ran past its time limit: {runs:?}"
    );
    assert!(waits.iter().chain(runs).all(|&seconds| seconds >= 0.0));
    assert_eq!(recorded.gauge(labels, "smol_offload_workers"), 1.0);
    assert_eq!(recorded.gauge(labels, "smol_offload_queued"), 0.0);
    assert_eq!(recorded.gauge(labels, "smol_offload_running"), 0.0);
}

#[test]
fn the_gauges_follow_the_queue_while_work_waits() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pool = metrics::with_local_recorder(&recorder, || ThreadPool::new(1)).unwrap();
    let labels = ("unnamed", "thread");
    let (started, is_started) = mpsc::channel();
    let (open, gate) = mpsc::channel::<()>();
    let gated = pool.spawn(move || {
        started.send(()).unwrap();
        gate.recv().unwrap();
    });
    let queued: Vec<_> = (0..3).map(|n| pool.spawn(move || n)).collect();
    is_started.recv().unwrap();
    let mut recorded = Recorded::default();
    recorded.take(&snapshotter);
    assert_eq!(recorded.gauge(labels, "smol_offload_running"), 1.0);
    assert_eq!(recorded.gauge(labels, "smol_offload_queued"), 3.0);
    open.send(()).unwrap();
    smol::block_on(gated).unwrap();
    for task in queued {
        smol::block_on(task).unwrap();
    }
    recorded.take(&snapshotter);
    assert_eq!(recorded.gauge(labels, "smol_offload_running"), 0.0);
    assert_eq!(recorded.gauge(labels, "smol_offload_queued"), 0.0);
    assert_eq!(recorded.tasks(labels, "ok"), 4);
    drop(pool);
    recorded.take(&snapshotter);
    assert_eq!(
        recorded.gauge(labels, "smol_offload_workers"),
        0.0,
        "a pool gone has no workers"
    );
}

#[test]
fn the_default_pool_is_named_default() {
    assert_eq!(smol_offload::default_pool().unwrap().name(), "default");
}

fn square(n: u64) -> u64 {
    n * n
}

fn panics(_: ()) {
    panic!("boom")
}

fn exits(_: ()) {
    std::process::exit(3)
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// A result that a worker can send but the pool cannot read: a codec error.
#[derive(Debug, Serialize)]
struct Unreadable;

impl<'de> Deserialize<'de> for Unreadable {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Unreadable, D::Error> {
        Err(serde::de::Error::custom("not today"))
    }
}

fn unreadable(_: ()) -> Unreadable {
    Unreadable
}

#[test]
fn a_process_pool_records_each_outcome_and_its_replaced_workers() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pool = metrics::with_local_recorder(&recorder, || {
        ProcessPool::builder().name("crunch").workers(1).build()
    })
    .unwrap();
    let labels = ("crunch", "process");
    smol::block_on(async {
        assert_eq!(pool.run(square, 7).await.unwrap(), 49);
        assert!(pool.run(panics, ()).await.unwrap_err().is_panic());
        assert!(pool.run(unreadable, ()).await.unwrap_err().is_codec());

        let pid = pool.pids()[0];
        assert!(pool.run(exits, ()).await.unwrap_err().is_worker_died());
        let err = pool
            .run(sleep_ms, 60_000)
            .timeout(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.is_timeout());

        // A long task and one behind it, both cancelled: if a worker started the first one
        // already, it is killed.
        let long = pool.run(sleep_ms, 60_000);
        let behind = pool.run(square, 3);
        assert!(behind.cancel().await.unwrap_err().is_cancelled());
        assert!(long.cancel().await.unwrap_err().is_cancelled());

        assert_eq!(pool.run(square, 8).await.unwrap(), 64);
        assert!(
            !pool.pids().contains(&pid),
            "the worker that exited is gone"
        );
    });
    let mut recorded = recorded_when(&snapshotter, |recorded| {
        recorded.tasks(labels, "timeout") == 1 && recorded.tasks(labels, "cancelled") == 2
    });
    assert_eq!(recorded.tasks(labels, "ok"), 2);
    assert_eq!(recorded.tasks(labels, "panic"), 1);
    assert_eq!(recorded.tasks(labels, "error"), 1, "the unreadable result");
    assert_eq!(recorded.tasks(labels, "worker_died"), 1);
    let waits = recorded.histogram(labels, "smol_offload_queue_wait_seconds");
    let runs = recorded.histogram(labels, "smol_offload_run_seconds");
    // Six tasks started, and the two cancelled ones too if a worker took them first.
    assert!(waits.len() >= 6, "{waits:?}");
    assert_eq!(waits.len(), runs.len());
    assert!(runs.iter().any(|&seconds| seconds >= 0.05), "{runs:?}");
    // The worker was killed and replaced three times (exit, timeout, cancel); the last one
    // left the list before its task was failed (just seen): once a worker is back, the gauge
    // counts it, as it is moved under the same lock as the list.
    while pool.pids().is_empty() {
        std::thread::sleep(Duration::from_millis(5));
    }
    recorded.take(&snapshotter);
    assert_eq!(recorded.gauge(labels, "smol_offload_workers"), 1.0);
    assert_eq!(recorded.gauge(labels, "smol_offload_queued"), 0.0);
    assert_eq!(recorded.gauge(labels, "smol_offload_running"), 0.0);
    drop(pool);
}

#[test]
fn a_process_pool_counts_its_workers_and_empties_its_queue() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pool = metrics::with_local_recorder(&recorder, || ProcessPool::new(2)).unwrap();
    let labels = ("unnamed", "process");
    let tasks: Vec<_> = (0..20).map(|n| pool.run(square, n)).collect();
    let squares: Vec<u64> = smol::block_on(smol_offload::try_gather(tasks)).unwrap();
    assert_eq!(squares.len(), 20);
    let mut recorded = Recorded::default();
    recorded.take(&snapshotter);
    assert_eq!(recorded.tasks(labels, "ok"), 20);
    assert_eq!(recorded.gauge(labels, "smol_offload_workers"), 2.0);
    assert_eq!(recorded.gauge(labels, "smol_offload_queued"), 0.0);
    assert_eq!(recorded.gauge(labels, "smol_offload_running"), 0.0);
    assert_eq!(
        recorded
            .histogram(labels, "smol_offload_queue_wait_seconds")
            .len(),
        20
    );
    assert_eq!(
        recorded.histogram(labels, "smol_offload_run_seconds").len(),
        20
    );
}
