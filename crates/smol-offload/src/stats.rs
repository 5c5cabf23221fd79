//! Counters a pool keeps about its tasks, and the [`PoolStats`] snapshot users log.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use crate::metrics::PoolMetrics;

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
///
/// With the `metrics` feature, the same points move the pool's `smol_offload_queued` and
/// `smol_offload_running` gauges.
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
