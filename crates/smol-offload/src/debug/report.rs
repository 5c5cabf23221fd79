//! [`Report`]: what debug mode says about a slow poll, a stuck loop or a starved pool, and where
//! it says it (the user's callback, else `tracing`, else stderr).

use std::fmt;
use std::panic::{self, AssertUnwindSafe, Location};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::stats::PoolStats;

/// What a [`Report`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReportKind {
    /// A poll of a watched task took longer than the threshold, and has returned: asyncio's
    /// "Executing <Task ...> took 0.501 seconds".
    SlowPoll {
        /// True when the watchdog already reported this poll while it was running.
        was_stuck: bool,
    },
    /// A poll of a watched task has run longer than the threshold and has not returned yet:
    /// the loop is stuck now. Sent by the watchdog thread after one threshold, then after two,
    /// four, eight... while the poll goes on.
    Stuck,
    /// A task offloaded to a pool has waited longer than the threshold in the pool's queue
    /// without starting: the pool, not the loop, is the bottleneck.
    QueueWait {
        /// `"ThreadPool"` or `"ProcessPool"`.
        pool: &'static str,
        /// The pool's [`stats`](crate::ThreadPool::stats) when the wait was noticed.
        stats: PoolStats,
    },
}

/// One finding of debug mode (see [where reports go](crate::debug#where-reports-go)).
///
/// Its `Display` is one line, for example
/// `task "handler" blocked the loop for 501.2ms on thread "main" (threshold 100ms)`; on stderr it
/// is prefixed with `smol-offload: `.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Report {
    /// What happened.
    pub kind: ReportKind,
    /// For [`ReportKind::QueueWait`], the pool's name (given to
    /// [`ThreadPoolBuilder::name`](crate::ThreadPoolBuilder::name) or
    /// [`ProcessPoolBuilder::name`](crate::ProcessPoolBuilder::name), else `"unnamed"`);
    /// `None` for the other kinds.
    pub pool_name: Option<String>,
    /// The task: the name given to [`watch_named`](crate::debug::watch_named), else the place
    /// where it was wrapped, as `file:line:column`. For [`ReportKind::QueueWait`], the watched
    /// task that submitted the work, else the place of the `spawn` or `run` call.
    pub task: String,
    /// Where the task was wrapped (or the offloaded work submitted).
    pub location: &'static Location<'static>,
    /// The thread that ran the poll (or submitted the work): its name, else its id.
    pub thread: String,
    /// How long the poll ran (or the work waited) when the report was made.
    pub elapsed: Duration,
    /// The threshold in force.
    pub threshold: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Report {
            task,
            thread,
            elapsed,
            threshold,
            ..
        } = self;
        match self.kind {
            ReportKind::SlowPoll { was_stuck: false } => write!(
                f,
                "task {task:?} blocked the loop for {elapsed:.1?} on thread {thread:?} \
                 (threshold {threshold:?})"
            ),
            ReportKind::SlowPoll { was_stuck: true } => write!(
                f,
                "task {task:?} returned after blocking the loop for {elapsed:.1?} on thread \
                 {thread:?} (threshold {threshold:?})"
            ),
            ReportKind::Stuck => write!(
                f,
                "task {task:?} is blocking the loop: running for {elapsed:.1?} on thread \
                 {thread:?} and not returned yet (threshold {threshold:?})"
            ),
            ReportKind::QueueWait { pool, stats } => write!(
                f,
                "work submitted by task {task:?} at {location} has waited {elapsed:.1?} in the \
                 queue of {pool} {name:?} without starting (threshold {threshold:?}): {stats}",
                location = self.location,
                name = self.pool_name.as_deref().unwrap_or(crate::stats::UNNAMED),
            ),
        }
    }
}

/// The user's report callback.
pub(crate) type Reporter = Arc<dyn Fn(&Report) + Send + Sync + 'static>;

static REPORTER: RwLock<Option<Reporter>> = RwLock::new(None);

pub(crate) fn set_reporter(reporter: Option<Reporter>) {
    *REPORTER.write().unwrap_or_else(PoisonError::into_inner) = reporter;
}

/// Sends `report` to the callback, else to [`default_sink`]. A panicking callback is caught: it
/// must not take down the watchdog or unwind out of a poll that went well.
pub(crate) fn emit(report: &Report) {
    let reporter = REPORTER
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    match reporter {
        Some(reporter) => {
            if panic::catch_unwind(AssertUnwindSafe(|| reporter(report))).is_err() {
                eprintln!("smol-offload: the debug report callback panicked on: {report}");
            }
        }
        None => default_sink(report),
    }
}

/// Without a callback: a `tracing` event when the feature is on and this thread has a
/// subscriber (its scoped one, else the global one), else a line on stderr.
fn default_sink(report: &Report) {
    #[cfg(feature = "tracing")]
    if tracing::dispatcher::get_default(|dispatch| {
        !dispatch.is::<tracing::subscriber::NoSubscriber>()
    }) {
        let (kind, pool) = match report.kind {
            ReportKind::SlowPoll { .. } => ("slow_poll", None),
            ReportKind::Stuck => ("stuck", None),
            ReportKind::QueueWait { pool, stats } => ("queue_wait", Some((pool, stats))),
        };
        tracing::warn!(
            target: "smol_offload::debug",
            kind,
            task = %report.task,
            location = %report.location,
            thread = %report.thread,
            elapsed_ms = report.elapsed.as_secs_f64() * 1e3,
            threshold_ms = report.threshold.as_secs_f64() * 1e3,
            pool = pool.map(|(name, _)| name),
            pool_name = report.pool_name.as_deref(),
            pool_stats = pool.map(|(_, stats)| tracing::field::display(stats)),
            "{report}"
        );
        return;
    }
    eprintln!("smol-offload: {report}");
}
