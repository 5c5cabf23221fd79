//! Counters a pool keeps about its tasks, the [`PoolStats`] snapshot users log, and the same
//! counts through the `metrics` facade (feature `metrics`): [`PoolMetrics`] and [`TaskTimer`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// A snapshot of a pool's work, for logs and dashboards.
///
/// The counters are read one after another while workers keep going, so a snapshot is
/// approximate under load, but never negative and never above what was submitted.
///
/// # Examples
///
/// ```
/// # smol::block_on(async {
/// let pool = smol_offload::ThreadPool::new(2)?;
/// pool.spawn(|| ()).await?;
/// let stats = pool.stats();
/// assert_eq!((stats.workers, stats.completed, stats.queued), (2, 1, 0));
/// println!("{stats}"); // workers=2 queued=0 running=0 completed=1 cancelled=0
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// How many workers the pool has.
    pub workers: usize,
    /// Tasks submitted that no worker has picked up yet.
    pub queued: u64,
    /// Tasks a worker is running now.
    pub running: u64,
    /// Tasks whose work ended, with a value, a panic or a dead worker.
    pub completed: u64,
    /// Tasks dropped before they started, whose work was skipped.
    pub cancelled: u64,
}

impl fmt::Display for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "workers={} queued={} running={} completed={} cancelled={}",
            self.workers, self.queued, self.running, self.completed, self.cancelled
        )
    }
}

/// The live counters. Each one has a single kind of writer (the submitters, or the workers) and
/// its own cache line, so counting costs no contention between the loop and the workers.
#[derive(Debug)]
pub struct Counters {
    submitted: CachePadded<AtomicU64>,
    picked: CachePadded<AtomicU64>,
    cancelled: CachePadded<AtomicU64>,
    completed: CachePadded<AtomicU64>,
    /// The pool's handles in the metrics facade, moved at the same points.
    pub metrics: Arc<PoolMetrics>,
}

impl Counters {
    /// Counters at zero, moving `metrics`' gauges too.
    pub fn new(metrics: Arc<PoolMetrics>) -> Counters {
        Counters {
            submitted: CachePadded::default(),
            picked: CachePadded::default(),
            cancelled: CachePadded::default(),
            completed: CachePadded::default(),
            metrics,
        }
    }

    /// A task was submitted.
    pub fn submitted(&self) {
        self.submitted.fetch_add(1, Ordering::Relaxed);
        self.metrics.submitted();
    }

    /// A worker took the task off the queue: it will run, or be skipped as cancelled.
    pub fn picked(&self) {
        self.picked.fetch_add(1, Ordering::Relaxed);
        self.metrics.picked();
    }

    /// A task was cancelled before it ran.
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
        self.metrics.ended();
    }

    /// A task finished (with its value or an error).
    pub fn completed(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.metrics.ended();
    }

    /// The counts now, for a pool of `workers` workers.
    pub fn snapshot(&self, workers: usize) -> PoolStats {
        // Read the later stages first: each count read is at least the one of the stage after.
        let completed = self.completed.load(Ordering::Acquire);
        let cancelled = self.cancelled.load(Ordering::Acquire);
        let picked = self.picked.load(Ordering::Acquire);
        let submitted = self.submitted.load(Ordering::Acquire);
        PoolStats {
            workers,
            queued: submitted.saturating_sub(picked),
            running: picked.saturating_sub(cancelled).saturating_sub(completed),
            completed,
            cancelled,
        }
    }
}

// [`PoolMetrics`] resolves a pool's handles once, when the pool is built, with its labels, so
// that recording costs no label allocation and no registry lookup. Without the `metrics`
// feature it and [`TaskTimer`] are empty and every method does nothing: the calls compile away.
// The gauges move where [`Counters`] count, so they agree with [`PoolStats`]; the timer lives in
// the task's promise, which sees the start and the result of every task.

/// The `kind` label: which sort of pool recorded a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `ThreadPool`.
    Thread,
    /// A `ProcessPool`.
    Process,
    /// A remote pool.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    Remote,
}

impl Kind {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn label(self) -> &'static str {
        match self {
            Kind::Thread => "thread",
            Kind::Process => "process",
            Kind::Remote => "remote",
        }
    }
}

/// How a task ended, the `outcome` label of `smol_offload_tasks_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Panic,
    WorkerDied,
    Cancelled,
    Timeout,
    Error,
}

impl Outcome {
    /// The labels of the outcomes, in the order of the variants.
    #[cfg(feature = "metrics")]
    const LABELS: [&str; 6] = [
        "ok",
        "panic",
        "worker_died",
        "cancelled",
        "timeout",
        "error",
    ];

    /// The outcome of a task whose result is `result`; `timed_out` when its awaiting side's
    /// time limit ran out first, which wins over whatever the work then returned.
    pub fn of<T>(result: &Result<T, crate::Error>, timed_out: bool) -> Outcome {
        match result {
            _ if timed_out => Outcome::Timeout,
            Ok(_) => Outcome::Ok,
            Err(err) if err.is_panic() => Outcome::Panic,
            Err(err) if err.is_worker_died() => Outcome::WorkerDied,
            Err(err) if err.is_cancelled() => Outcome::Cancelled,
            Err(err) if err.is_timeout() => Outcome::Timeout,
            Err(_) => Outcome::Error,
        }
    }
}

#[cfg(feature = "metrics")]
pub use recording::{PoolMetrics, TaskTimer};
#[cfg(not(feature = "metrics"))]
pub use silent::{PoolMetrics, TaskTimer};

/// The name of a pool built without [`name`](crate::ThreadPoolBuilder::name).
pub const UNNAMED: &str = "unnamed";

#[cfg(feature = "metrics")]
mod recording {
    use std::sync::{Arc, OnceLock};
    use std::time::Instant;

    use metrics::{Counter, Gauge, Histogram, Label};

    use super::{Kind, Outcome};

    /// The labelled handles of one pool.
    pub struct PoolMetrics {
        outcomes: [Counter; 6],
        queue_wait: Histogram,
        run: Histogram,
        workers: Gauge,
        queued: Gauge,
        running: Gauge,
    }

    impl std::fmt::Debug for PoolMetrics {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PoolMetrics").finish_non_exhaustive()
        }
    }

    impl PoolMetrics {
        /// Registers the pool's metrics with the recorder installed now (the global one, or a
        /// local one on this thread).
        pub fn new(name: &str, kind: Kind) -> Arc<PoolMetrics> {
            describe();
            let labels = vec![
                Label::new("pool", name.to_owned()),
                Label::new("kind", kind.label()),
            ];
            let outcomes = Outcome::LABELS.map(|outcome| {
                let mut labels = labels.clone();
                labels.push(Label::new("outcome", outcome));
                metrics::counter!("smol_offload_tasks_total", labels)
            });
            Arc::new(PoolMetrics {
                outcomes,
                queue_wait: metrics::histogram!("smol_offload_queue_wait_seconds", labels.clone()),
                run: metrics::histogram!("smol_offload_run_seconds", labels.clone()),
                workers: metrics::gauge!("smol_offload_workers", labels.clone()),
                queued: metrics::gauge!("smol_offload_queued", labels.clone()),
                running: metrics::gauge!("smol_offload_running", labels),
            })
        }

        /// The pool went from `before` workers to `after`. The gauge moves by the difference
        /// rather than being set, so that pools that share a name add up, and a pool that
        /// shuts down takes its own workers away.
        pub fn workers_changed(&self, before: usize, after: usize) {
            if after >= before {
                self.workers.increment((after - before) as f64);
            } else {
                self.workers.decrement((before - after) as f64);
            }
        }

        /// A task joined the queue.
        pub fn submitted(&self) {
            self.queued.increment(1.0);
        }

        /// A task left the queue to run.
        pub fn picked(&self) {
            self.queued.decrement(1.0);
            self.running.increment(1.0);
        }

        /// A picked task ended: it ran, or was skipped as cancelled.
        pub fn ended(&self) {
            self.running.decrement(1.0);
        }

        /// The timer of a task submitted now.
        pub fn timer(self: &Arc<Self>) -> TaskTimer {
            TaskTimer(Some(Timing {
                pool: self.clone(),
                submitted: Instant::now(),
                started: OnceLock::new(),
            }))
        }
    }

    /// Gives the recorder each metric's unit and help text.
    fn describe() {
        use metrics::Unit;
        metrics::describe_counter!(
            "smol_offload_tasks_total",
            Unit::Count,
            "Tasks that ended, by outcome: ok, panic, worker_died, cancelled, timeout, error"
        );
        metrics::describe_histogram!(
            "smol_offload_queue_wait_seconds",
            Unit::Seconds,
            "Time from submission to the start of the call"
        );
        metrics::describe_histogram!(
            "smol_offload_run_seconds",
            Unit::Seconds,
            "Time from the start of the call to its end"
        );
        metrics::describe_gauge!("smol_offload_workers", Unit::Count, "Workers the pool has");
        metrics::describe_gauge!(
            "smol_offload_queued",
            Unit::Count,
            "Tasks submitted that no worker has picked up yet"
        );
        metrics::describe_gauge!("smol_offload_running", Unit::Count, "Tasks running now");
    }

    /// What one task records: its wait in the queue, its run time and its outcome.
    /// `None` for a task that no pool records (a loop thread's, a dedicated thread's).
    pub struct TaskTimer(Option<Timing>);

    impl std::fmt::Debug for TaskTimer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_tuple("TaskTimer").field(&self.0.is_some()).finish()
        }
    }

    struct Timing {
        pool: Arc<PoolMetrics>,
        submitted: Instant,
        started: OnceLock<Instant>,
    }

    impl TaskTimer {
        /// The timer of a task no pool records: it reads no clock.
        pub fn none() -> TaskTimer {
            TaskTimer(None)
        }

        /// The work starts now: records how long it waited.
        pub fn started(&self) {
            if let Some(timing) = &self.0 {
                let now = Instant::now();
                if timing.started.set(now).is_ok() {
                    timing.pool.queue_wait.record(now - timing.submitted);
                }
            }
        }

        /// The task ended with `outcome` (asked only when recording): records it, and the
        /// run time if the work started. Records nothing the second time.
        pub fn ended(&mut self, outcome: impl FnOnce() -> Outcome) {
            if let Some(timing) = self.0.take() {
                if let Some(started) = timing.started.get() {
                    timing.pool.run.record(started.elapsed());
                }
                timing.pool.outcomes[outcome() as usize].increment(1);
            }
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod silent {
    use std::sync::Arc;

    use super::{Kind, Outcome};

    /// Without the `metrics` feature: nothing to record.
    #[derive(Debug)]
    pub struct PoolMetrics;

    impl PoolMetrics {
        /// Does nothing without the `metrics` feature.
        pub fn new(_: &str, _: Kind) -> Arc<PoolMetrics> {
            Arc::new(PoolMetrics)
        }

        /// Does nothing without the `metrics` feature.
        #[inline(always)]
        pub fn workers_changed(&self, _: usize, _: usize) {}

        /// Does nothing without the `metrics` feature.
        #[inline(always)]
        pub fn submitted(&self) {}

        /// Does nothing without the `metrics` feature.
        #[inline(always)]
        pub fn picked(&self) {}

        /// Does nothing without the `metrics` feature.
        #[inline(always)]
        pub fn ended(&self) {}

        /// Does nothing without the `metrics` feature.
        #[inline(always)]
        pub fn timer(self: &Arc<Self>) -> TaskTimer {
            TaskTimer
        }
    }

    /// Without the `metrics` feature: nothing to time.
    #[derive(Debug)]
    pub struct TaskTimer;

    impl TaskTimer {
        /// Does nothing without the `metrics` feature.
        #[inline(always)]
        pub fn none() -> TaskTimer {
            TaskTimer
        }

        /// Does nothing without the `metrics` feature.
        #[inline(always)]
        pub fn started(&self) {}

        /// Does nothing without the `metrics` feature.
        #[inline(always)]
        pub fn ended(&mut self, _: impl FnOnce() -> Outcome) {}
    }
}
