//! The executor of a [`LoopThread`](crate::LoopThread), and the handle of a future it runs.
//!
//! One thread needs none of a work-stealing executor's machinery: a queue of `async_task`
//! runnables that the thread pops and runs, and a waker that a push wakes it with. A future
//! submitted with `LoopThread::spawn` is one `async_task` task, whose [`Meta`] holds two flags,
//! and whose handle ([`LoopTask`]) the [`Task`](crate::Task) wraps: no slot, mutex or waker of
//! its own. Whichever flag is set first wins, so a task dropped before its future first runs
//! never runs, and one dropped later runs on to its end (its handle is detached, not dropped,
//! which would stop the future at its next await).

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use async_task::Runnable;
use atomic_waker::AtomicWaker;
use concurrent_queue::ConcurrentQueue;

use crate::error::Error;

/// Set by the loop thread just before the future's first poll.
const STARTED: u8 = 1;
/// Set by the handle when it is dropped or cancelled.
const CANCELLED: u8 = 2;

/// Runnables run in one go before the thread lets its reactor look for I/O and timers.
const BUDGET: usize = 64;

/// What a loop task's runnable and its handle share, inside the task's own allocation: its
/// [`STARTED`] and [`CANCELLED`] bits.
#[derive(Debug)]
pub(crate) struct Meta(AtomicU8);

impl Meta {
    /// Marks the future started; false if its handle cancelled it first.
    fn start(&self) -> bool {
        self.is_started() || self.0.fetch_or(STARTED, Ordering::AcqRel) & CANCELLED == 0
    }

    /// Marks the task cancelled; false if its future had started first.
    fn cancel(&self) -> bool {
        self.0.fetch_or(CANCELLED, Ordering::AcqRel) & STARTED == 0
    }

    fn is_started(&self) -> bool {
        self.0.load(Ordering::Acquire) & STARTED != 0
    }
}

/// The runnables of one loop thread, and the thread's wake-up.
#[derive(Debug)]
pub(crate) struct RunQueue {
    queue: ConcurrentQueue<Runnable<Meta>>,
    waker: AtomicWaker,
}

impl RunQueue {
    pub(crate) fn new() -> RunQueue {
        RunQueue {
            queue: ConcurrentQueue::unbounded(),
            waker: AtomicWaker::new(),
        }
    }

    /// Queues `runnable` and wakes the loop thread: the schedule function of every loop task.
    pub(crate) fn push(&self, runnable: Runnable<Meta>) {
        // The queue is unbounded and never closed: the push cannot fail.
        let _ = self.queue.push(runnable);
        self.waker.wake();
    }

    /// Wakes the loop thread to look at its stop condition again.
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    /// Runs what is queued, and what gets queued, until the queue is empty and `done` is true.
    pub(crate) fn poll_run(&self, cx: &mut Context<'_>, done: impl Fn() -> bool) -> Poll<()> {
        for _ in 0..BUDGET {
            match self.queue.pop() {
                Ok(runnable) => run(runnable),
                Err(_) => {
                    self.waker.register(cx.waker());
                    // A push between the pop and the registration woke nobody: look again.
                    if !self.queue.is_empty() {
                        continue;
                    }
                    return if done() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
        // Give the reactor its turn, then come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Runs one step of a loop task, or drops its future unpolled if its handle cancelled it first.
/// The futures catch their own panics; a panic here (a future's destructor) must not end the
/// loop either.
fn run(runnable: Runnable<Meta>) {
    if runnable.metadata().start() {
        let _ = panic::catch_unwind(AssertUnwindSafe(move || runnable.run()));
    } else {
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(runnable)));
    }
}

/// Spawns `future` as a loop task whose runnables go to `schedule` (a push on the loop's
/// [`RunQueue`]), and schedules its first run.
pub(crate) fn spawn<F, S>(future: F, schedule: S) -> async_task::Task<F::Output, Meta>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
    S: Fn(Runnable<Meta>) + Send + Sync + 'static,
{
    let (runnable, task) = async_task::Builder::new()
        .metadata(Meta(AtomicU8::new(0)))
        .spawn(move |_| future, schedule);
    runnable.schedule();
    task
}

/// Spawns the `!Send` `future` as a loop task, on the loop thread, and runs its first step now.
pub(crate) fn spawn_local_now<F, S>(future: F, schedule: S)
where
    F: Future<Output = ()> + 'static,
    S: Fn(Runnable<Meta>) + Send + Sync + 'static,
{
    // Already under way: built and first run by a started task.
    let (runnable, task) = async_task::Builder::new()
        .metadata(Meta(AtomicU8::new(STARTED)))
        .spawn_local(move |_| future, schedule);
    task.detach();
    runnable.run();
}

/// The handle of a future submitted with `LoopThread::spawn`: what a [`Task`](crate::Task)
/// holds for it.
///
/// It has no `Drop` of its own: the `Task` hands it to [`release`](LoopTask::release), since
/// dropping the `async_task` handle as such would stop a started future at its next await.
pub(crate) struct LoopTask<T> {
    task: async_task::Task<Result<T, Error>, Meta>,
}

impl<T> LoopTask<T> {
    pub(crate) fn new(task: async_task::Task<Result<T, Error>, Meta>) -> LoopTask<T> {
        LoopTask { task }
    }

    /// True once the future has begun to run (or has finished).
    pub(crate) fn is_started(&self) -> bool {
        self.task.metadata().is_started() || self.task.is_finished()
    }

    /// True once the result is ready.
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Lets the future run to its end; its output is dropped.
    pub(crate) fn detach(self) {
        self.task.detach();
    }

    /// Cancels the future if it has not started (it never will), or gives the handle back.
    pub(crate) fn cancel_unstarted(self) -> Result<(), LoopTask<T>> {
        if self.task.metadata().cancel() {
            // The loop thread drops the future, unpolled, when it pops its runnable.
            drop(self.task);
            Ok(())
        } else {
            Err(self)
        }
    }

    /// What dropping the `Task` does: cancels the future if it has not started, lets it run
    /// on to its end if it has.
    pub(crate) fn release(self) {
        if let Err(started) = self.cancel_unstarted() {
            started.detach();
        }
    }

    /// Polls for the result.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, Error>> {
        Pin::new(&mut self.task).poll(cx)
    }
}
