//! The watchdog: one thread, started the first time debug mode is turned on, that reports polls
//! still running past the threshold and offloaded work still queued past it.
//!
//! It sleeps on a condition variable until the next deadline it knows of, and at most one
//! threshold: a poll or a submission that begins after the watchdog went to sleep has its
//! deadline at least one threshold later, so it is never missed and the loop never has to wake
//! the watchdog. The loop's side only pushes and pops frames (see `watch.rs`) and, for
//! offloaded work, appends one entry to a list.

use std::panic::Location;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::report::{Report, ReportKind, emit};
use super::switch::{is_enabled, threshold};
use super::watch::{THREADS, TaskName, ThreadPolls, current};
use crate::stats::PoolStats;
use crate::task::{Progress, Task};

/// The shortest sleep of the watchdog, whatever the threshold: it never spins.
const MIN_SLEEP: Duration = Duration::from_millis(1);

/// A task offloaded while debug mode was on, watched until it starts.
struct QueuedWork {
    since: Instant,
    progress: Weak<dyn Progress>,
    /// Reads the pool's stats, or `None` once the pool is gone.
    stats: Box<dyn Fn() -> Option<PoolStats> + Send + Sync>,
    pool: &'static str,
    pool_name: Arc<str>,
    location: &'static Location<'static>,
    thread: Arc<str>,
    submitter: Option<TaskName>,
}

struct Watchdog {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    queued: Vec<QueuedWork>,
    /// Set when the settings changed: the watchdog recomputes its deadline before sleeping.
    changed: bool,
}

static WATCHDOG: OnceLock<Arc<Watchdog>> = OnceLock::new();

impl Watchdog {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts the watchdog thread if it does not run yet, and tells it the settings changed.
pub(crate) fn start() {
    let watchdog = WATCHDOG.get_or_init(|| {
        let watchdog = Arc::new(Watchdog {
            state: Mutex::new(State {
                queued: Vec::new(),
                changed: false,
            }),
            wake: Condvar::new(),
        });
        let thread_side = watchdog.clone();
        let spawned = std::thread::Builder::new()
            .name("smol-offload-debug".to_owned())
            .spawn(move || run(&thread_side));
        if let Err(err) = spawned {
            eprintln!(
                "smol-offload: could not start the debug watchdog thread ({err}): \
                 stuck polls will be reported only when they return"
            );
        }
        watchdog
    });
    watchdog.lock().changed = true;
    watchdog.wake.notify_one();
}

/// Watches `task`, just submitted to a pool, until it starts: reported with the pool's stats if
/// it waits longer than the threshold. Called by the pools only while debug mode is on.
pub(crate) fn watch_queued<T, S>(
    task: &Task<T>,
    pool: &'static str,
    pool_name: Arc<str>,
    location: &'static Location<'static>,
    stats: S,
) where
    T: Send + 'static,
    S: Fn() -> Option<PoolStats> + Send + Sync + 'static,
{
    let (Some(watchdog), Some(progress), Some((thread, submitter))) =
        (WATCHDOG.get(), task.progress(), current())
    else {
        return;
    };
    watchdog.lock().queued.push(QueuedWork {
        since: Instant::now(),
        progress,
        stats: Box::new(stats),
        pool,
        pool_name,
        location,
        thread,
        submitter,
    });
}

fn run(watchdog: &Watchdog) {
    let mut state = watchdog.lock();
    loop {
        state.changed = false;
        if !is_enabled() {
            state.queued.clear();
            state = watchdog
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        let now = Instant::now();
        let threshold = threshold();
        let mut next = later(now, threshold);
        let mut reports = Vec::new();
        check_queue(&mut state.queued, now, threshold, &mut next, &mut reports);
        drop(state);
        check_polls(now, threshold, &mut next, &mut reports);
        for report in &reports {
            emit(report);
        }
        state = watchdog.lock();
        if state.changed {
            continue;
        }
        let sleep = next
            .saturating_duration_since(Instant::now())
            .max(MIN_SLEEP);
        state = watchdog
            .wake
            .wait_timeout(state, sleep)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// `instant + wait`, or a year later when a huge threshold would overflow the clock.
fn later(instant: Instant, wait: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    instant
        .checked_add(wait.min(YEAR))
        .unwrap_or(instant + Duration::from_secs(3600))
}

/// Reports the work that has waited a threshold without starting, and forgets it, and the work
/// that started or was dropped.
fn check_queue(
    queued: &mut Vec<QueuedWork>,
    now: Instant,
    threshold: Duration,
    next: &mut Instant,
    reports: &mut Vec<Report>,
) {
    queued.retain(|work| {
        let Some(progress) = work.progress.upgrade() else {
            return false;
        };
        if progress.is_started_or_cancelled() {
            return false;
        }
        let deadline = later(work.since, threshold);
        if deadline > now {
            *next = (*next).min(deadline);
            return true;
        }
        let Some(stats) = (work.stats)() else {
            return false;
        };
        reports.push(Report {
            kind: ReportKind::QueueWait {
                pool: work.pool,
                stats,
            },
            task: match &work.submitter {
                Some(task) => task.label(),
                None => work.location.to_string(),
            },
            pool_name: Some(work.pool_name.to_string()),
            location: work.location,
            thread: work.thread.to_string(),
            elapsed: now.saturating_duration_since(work.since),
            threshold,
        });
        false
    });
}

/// Reports the polls that have run past their next deadline, and finds the next deadline.
fn check_polls(now: Instant, threshold: Duration, next: &mut Instant, reports: &mut Vec<Report>) {
    let threads: Vec<Arc<ThreadPolls>> = {
        let mut threads = THREADS.lock().unwrap_or_else(PoisonError::into_inner);
        threads.retain(|thread| thread.strong_count() > 0);
        threads.iter().filter_map(Weak::upgrade).collect()
    };
    for polls in threads {
        let mut frames = polls.lock();
        let mut inner_start = None;
        // Innermost first: time is blamed on the innermost watched poll running at that time.
        for frame in frames.iter_mut().rev() {
            let elapsed = now.saturating_duration_since(frame.start);
            let in_inner =
                inner_start.map_or(Duration::ZERO, |start| now.saturating_duration_since(start));
            let own = elapsed
                .saturating_sub(frame.explained)
                .saturating_sub(in_inner);
            if own >= frame.next_stuck_report {
                frame.was_stuck = true;
                while frame.next_stuck_report <= own {
                    frame.next_stuck_report = frame.next_stuck_report.saturating_mul(2);
                }
                reports.push(Report {
                    kind: ReportKind::Stuck,
                    pool_name: None,
                    task: frame.task.label(),
                    location: frame.task.location,
                    thread: polls.thread.to_string(),
                    elapsed,
                    threshold,
                });
            }
            if inner_start.is_none() {
                *next = (*next).min(later(now, frame.next_stuck_report - own));
            }
            inner_start = Some(frame.start);
        }
    }
}
