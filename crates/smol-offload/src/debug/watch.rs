//! [`Watched`]: a future whose polls are timed, and the per-thread stack of polls in progress
//! that the watchdog reads.
//!
//! Every thread that polls a watched future while debug mode is on gets one [`ThreadPolls`]:
//! a small mutex-protected stack of the watched polls it is inside (a watched task polled by a
//! watched `block_on` makes two). A poll pushes a frame with its start time and pops it when it
//! returns; the watchdog thread visits the stacks of all threads when a deadline comes.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::report::{Report, ReportKind, emit};
use super::switch::{is_enabled, threshold};

/// Who a watched poll belongs to: the user's name, and where it was wrapped.
#[derive(Clone)]
pub(crate) struct TaskName {
    name: Option<Arc<str>>,
    pub(crate) location: &'static Location<'static>,
}

impl TaskName {
    /// The name, else the location as `file:line:column`.
    pub(crate) fn label(&self) -> String {
        match &self.name {
            Some(name) => name.to_string(),
            None => self.location.to_string(),
        }
    }
}

impl fmt::Debug for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// One watched poll in progress on a thread.
pub(crate) struct Frame {
    pub(crate) task: TaskName,
    pub(crate) start: Instant,
    /// Time spent in inner watched polls that were reported themselves: not this frame's fault.
    pub(crate) explained: Duration,
    /// Own running time at which the watchdog reports this poll (again) as stuck.
    pub(crate) next_stuck_report: Duration,
    /// Whether the watchdog has reported this poll as stuck.
    pub(crate) was_stuck: bool,
}

/// The watched polls in progress on one thread, innermost last.
pub(crate) struct ThreadPolls {
    pub(crate) thread: Arc<str>,
    pub(crate) frames: Mutex<Vec<Frame>>,
}

impl ThreadPolls {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<Frame>> {
        self.frames.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every thread's stack, for the watchdog; a thread's entry dies with the thread.
pub(crate) static THREADS: Mutex<Vec<Weak<ThreadPolls>>> = Mutex::new(Vec::new());

thread_local! {
    static POLLS: Arc<ThreadPolls> = register_thread();
}

fn register_thread() -> Arc<ThreadPolls> {
    let current = std::thread::current();
    let thread: Arc<str> = match current.name() {
        Some(name) => name.into(),
        None => format!("{:?}", current.id()).into(),
    };
    let polls = Arc::new(ThreadPolls {
        thread,
        frames: Mutex::new(Vec::with_capacity(4)),
    });
    THREADS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Arc::downgrade(&polls));
    polls
}

/// This thread's name (or id) and the innermost watched task it is polling, if any; `None` when
/// the thread is being torn down.
pub(crate) fn current() -> Option<(Arc<str>, Option<TaskName>)> {
    POLLS
        .try_with(|polls| {
            let task = polls.lock().last().map(|frame| frame.task.clone());
            (polls.thread.clone(), task)
        })
        .ok()
}

/// Pops the frame pushed by [`enter`] when the poll returns, or unwinds, and reports the poll if
/// it was slow.
struct PollGuard {
    threshold: Duration,
}

fn enter(task: &TaskName) -> Option<PollGuard> {
    let threshold = threshold();
    POLLS
        .try_with(|polls| {
            polls.lock().push(Frame {
                task: task.clone(),
                start: Instant::now(),
                explained: Duration::ZERO,
                next_stuck_report: threshold,
                was_stuck: false,
            });
            PollGuard { threshold }
        })
        .ok()
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        let end = Instant::now();
        if let Ok(Some(report)) = POLLS.try_with(|polls| self.pop(polls, end)) {
            emit(&report);
        }
    }
}

impl PollGuard {
    /// Pops this poll's frame; the report to make if it was slow.
    fn pop(&self, polls: &ThreadPolls, end: Instant) -> Option<Report> {
        let mut frames = polls.lock();
        let frame = frames.pop()?;
        let elapsed = end.saturating_duration_since(frame.start);
        let own = elapsed.saturating_sub(frame.explained);
        if own < self.threshold && !frame.was_stuck {
            return None;
        }
        // The outer polls were slow because of this one, which is reported: they are not to
        // blame for it.
        if let Some(outer) = frames.last_mut() {
            outer.explained += elapsed;
        }
        Some(Report {
            kind: ReportKind::SlowPoll {
                was_stuck: frame.was_stuck,
            },
            pool_name: None,
            task: frame.task.label(),
            location: frame.task.location,
            thread: polls.thread.to_string(),
            elapsed,
            threshold: self.threshold,
        })
    }
}

pin_project_lite::pin_project! {
    /// A future whose every poll is timed while debug mode is on; made by
    /// [`watch`](super::watch), [`watch_named`](super::watch_named) and
    /// [`block_on`](super::block_on).
    #[must_use = "futures do nothing unless polled"]
    pub struct Watched<F> {
        task: TaskName,
        #[pin]
        future: F,
    }
}

impl<F> Watched<F> {
    pub(crate) fn new(
        name: Option<Cow<'static, str>>,
        location: &'static Location<'static>,
        future: F,
    ) -> Watched<F> {
        Watched {
            task: TaskName {
                name: name.map(Arc::from),
                location,
            },
            future,
        }
    }

    /// The name reports give this task: the one given to
    /// [`watch_named`](super::watch_named), else the place where it was wrapped.
    pub fn name(&self) -> String {
        self.task.label()
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !is_enabled() {
            return this.future.poll(cx);
        }
        let _guard = enter(this.task);
        this.future.poll(cx)
    }
}

impl<F> fmt::Debug for Watched<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}
