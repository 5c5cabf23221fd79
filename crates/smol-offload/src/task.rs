//! [`Task`], the future of one offloaded call, and [`Promise`], the worker's end of it.
//!
//! Both pools hand out the same `Task<T>`: a one-shot slot shared between the awaiting task and
//! whoever runs the work (a rayon thread, or the process pool's dispatcher). The slot holds three
//! flags: *started* (set by the runner when the work begins), *cancelled* (set when the `Task` is
//! dropped without being detached) and *done* (set once the result is stored). Whichever of
//! *started* and *cancelled* comes first wins, so a task dropped before it started never runs.
//!
//! A task may also carry an [`Assist`]: work the awaiting side can do itself so that the result
//! comes in without a detour through another thread. A process task sent straight to an idle
//! worker reads that worker's reply this way, on the thread that awaits it.
//!
//! And a task may carry an [`Abandon`] hook: how to stop work that has started. A thread cannot
//! be stopped, so thread tasks have none; a process task's hook asks its pool to kill the worker
//! that runs it. The task marks itself *abandoned* (a fourth flag, set only while the work runs)
//! and calls the hook when it is timed out, cancelled, or dropped when the hook asks for that.
//!
//! A future run by a [`LoopThread`](crate::LoopThread) needs no slot of its own: its task is
//! the loop executor's `async_task` task, whose handle ([`LoopTask`]) the `Task` holds instead,
//! with the same rules (see `loop_executor`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use atomic_waker::AtomicWaker;

use crate::error::{Error, ErrorKind};
use crate::loop_executor::LoopTask;
use crate::stats::{Outcome, TaskTimer};

const STARTED: u8 = 1;
const CANCELLED: u8 = 2;
const DONE: u8 = 4;
/// Set on a started, unfinished task whose awaiting side gave up on it: its runner should stop
/// the work (a process pool kills the worker).
const ABANDONED: u8 = 8;
/// Set by [`Task::cancel`] on work that has already started: it runs on, but
/// [`cancelled()`](crate::cancelled) tells it that nobody waits for it any more.
const CANCEL_REQUESTED: u8 = 16;
/// Set by [`Timeout`] when the time limit ran out first: what the pool's metrics count.
const TIMED_OUT: u8 = 32;

struct Shared<T> {
    state: AtomicU8,
    result: Mutex<Option<Result<T, Error>>>,
    waker: AtomicWaker,
}

impl<T> Shared<T> {
    fn fulfil(&self, result: Result<T, Error>) {
        if self.state.load(Ordering::Acquire) & CANCELLED != 0 {
            // Nobody will read it: drop the value here, on the worker, right away.
            return;
        }
        *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
        self.state.fetch_or(DONE, Ordering::AcqRel);
        self.waker.wake();
    }
}

/// Whether an offloaded call has begun, read without owning its [`Task`]: what debug mode's
/// watchdog asks about work waiting in a pool's queue.
pub(crate) trait Progress: Send + Sync {
    /// True once the work started, finished, or was cancelled by dropping its task.
    fn is_started_or_cancelled(&self) -> bool;
}

impl<T: Send> Progress for Shared<T> {
    fn is_started_or_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire) & (STARTED | CANCELLED | DONE) != 0
    }
}

impl<T: Send> crate::cancel::CancelSource for Shared<T> {
    fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire) & (CANCELLED | CANCEL_REQUESTED | ABANDONED) != 0
    }
}

/// Creates the two ends of one offloaded call.
pub fn pair<T>() -> (Promise<T>, Task<T>) {
    timed_pair(TaskTimer::none())
}

/// Creates the two ends of one offloaded call whose wait, run time and outcome `timer` records
/// in its pool's metrics.
pub fn timed_pair<T>(timer: TaskTimer) -> (Promise<T>, Task<T>) {
    let shared = Arc::new(Shared {
        state: AtomicU8::new(0),
        result: Mutex::new(None),
        waker: AtomicWaker::new(),
    });
    (
        Promise {
            shared: Some(shared.clone()),
            timer,
        },
        Task {
            shared: Some(shared),
            assist: None,
            abandon: None,
            on_loop: None,
        },
    )
}

/// Work the awaiting side of a [`Task`] can do to bring its result in.
///
/// The task calls [`assist`](Assist::assist) whenever it is polled, asked whether it is
/// finished, or registered with a waker, and drops the assist once nobody will do that again:
/// when it returns its result, is dropped or is detached. Dropping an assist hands whatever it
/// still holds back to the pool, which then completes the promise on its own.
pub trait Assist: Send + Sync {
    /// Moves the work on without blocking; it may complete the task's promise. When the work
    /// cannot go on yet and `waker` is given, arranges for `waker` to be woken when it can (the
    /// waker last given is remembered for calls without one).
    fn assist(&self, waker: Option<&Waker>);

    /// For [`Task::cancel`] of work not known to have started, when only the runner can tell
    /// (a remote job may be claimed by a worker the awaiting side has not heard from yet):
    /// asks the runner to withdraw the work and returns true; the runner then completes the
    /// promise with a cancelled error if the work never starts, or marks it started and
    /// completes it with its result. Returns false (the default) when the task decides alone.
    fn withdraw(&self) -> bool {
        false
    }
}

/// How to stop the work of a [`Task`] that has started: the process pool kills its worker.
///
/// The task marks itself abandoned first, then calls [`abandon`](Abandon::abandon); the runner
/// finds the abandoned work with [`Promise::is_abandoned`].
pub(crate) trait Abandon: Send + Sync {
    /// Whether dropping a started task (without detaching it) abandons its work.
    fn on_drop(&self) -> bool;

    /// Asks the runner to stop the work of a task just marked abandoned. Must not block.
    fn abandon(&self);
}

/// The runner's end of a [`Task`]: it decides whether the work may start, and delivers its
/// result. A promise dropped without a result resolves its task with a shutdown error, so an
/// awaiting task never hangs.
pub struct Promise<T> {
    shared: Option<Arc<Shared<T>>>,
    timer: TaskTimer,
}

impl<T> Promise<T> {
    /// Marks the work as started. Returns `false` if the task was cancelled first: the work
    /// must then not run (drop the promise, or `complete` it with an error).
    pub fn start(&self) -> bool {
        let shared = self.shared.as_ref().expect("promise used after completion");
        let started = shared.state.fetch_or(STARTED, Ordering::AcqRel) & CANCELLED == 0;
        if started {
            self.timer.started();
        }
        started
    }

    /// True when the task was dropped (and not detached): nobody waits for the result.
    pub fn is_cancelled(&self) -> bool {
        let shared = self.shared.as_ref().expect("promise used after completion");
        shared.state.load(Ordering::Acquire) & CANCELLED != 0
    }

    /// True when the awaiting side gave up on the started work (see [`Abandon`]): it should be
    /// stopped, and nobody will read its result.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|shared| shared.state.load(Ordering::Acquire) & ABANDONED != 0)
    }

    /// What the running work sees through [`cancelled()`](crate::cancelled): true once the task
    /// was dropped, timed out or cancelled.
    pub(crate) fn cancel_source(&self) -> Arc<dyn crate::cancel::CancelSource>
    where
        T: Send + 'static,
    {
        self.shared.clone().expect("promise used after completion")
    }

    /// Delivers the result and wakes the awaiting task.
    pub(crate) fn complete(mut self, result: Result<T, Error>) {
        if let Some(shared) = self.shared.take() {
            self.timer.ended(|| {
                Outcome::of(
                    &result,
                    shared.state.load(Ordering::Acquire) & TIMED_OUT != 0,
                )
            });
            shared.fulfil(result);
        }
    }
}

impl<T> Drop for Promise<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            // Dropped without a result: the work was skipped because its task was dropped
            // first, or the pool went away.
            self.timer
                .ended(|| match shared.state.load(Ordering::Acquire) {
                    state if state & TIMED_OUT != 0 => Outcome::Timeout,
                    state if state & CANCELLED != 0 => Outcome::Cancelled,
                    _ => Outcome::Error,
                });
            shared.fulfil(Err(Error::new(ErrorKind::Shutdown)));
        }
    }
}

impl<T> fmt::Debug for Promise<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Promise").finish_non_exhaustive()
    }
}

/// The result of an offloaded call, to be awaited on any executor.
///
/// A `Task` is a future with `Output = Result<T, Error>`: the value the work returned, or why it
/// did not return one (it panicked, its worker process died, its pool shut down, ...).
///
/// Dropping a `Task` before its work started cancels the work: it never runs. Once it has
/// started, the work runs to the end and its result is dropped, unless it runs in a
/// [`ProcessPool`](crate::ProcessPool) built with
/// [`kill_on_drop(true)`](crate::ProcessPoolBuilder::kill_on_drop): its worker is then killed.
/// Call [`detach`](Task::detach) to let the work run without awaiting it.
///
/// # Examples
///
/// ```
/// # smol::block_on(async {
/// let pool = smol_offload::ThreadPool::new(2)?;
/// let task = pool.spawn(|| 6 * 7);
/// assert_eq!(task.await?, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[must_use = "a task is cancelled when dropped before it starts: await it or call detach()"]
pub struct Task<T> {
    shared: Option<Arc<Shared<T>>>,
    assist: Option<Box<dyn Assist>>,
    abandon: Option<Arc<dyn Abandon>>,
    /// For a future run by a loop thread, its executor's task, and no `shared` slot.
    on_loop: Option<LoopTask<T>>,
}

impl<T> Task<T> {
    /// The task of a future run by a loop thread.
    pub(crate) fn on_loop(task: LoopTask<T>) -> Task<T> {
        Task {
            shared: None,
            assist: None,
            abandon: None,
            on_loop: Some(task),
        }
    }

    /// This task, whose started work `abandon` can stop.
    pub(crate) fn with_abandon(mut self, abandon: Arc<dyn Abandon>) -> Task<T> {
        self.abandon = Some(abandon);
        self
    }

    /// Marks the work abandoned and asks the hook to stop it, if it has started, has not
    /// finished, and can be stopped. Returns whether it did. `dropped` says the task is being
    /// dropped: the hook then decides.
    fn abandon_started(&self, dropped: bool) -> bool {
        let (Some(shared), Some(abandon)) = (&self.shared, &self.abandon) else {
            return false;
        };
        if dropped && !abandon.on_drop() {
            return false;
        }
        let marked = shared
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state & (STARTED | DONE | ABANDONED) == STARTED).then_some(state | ABANDONED)
            })
            .is_ok();
        if marked {
            abandon.abandon();
        }
        marked
    }

    /// This task, helped by `assist` while it is awaited (for the remote pool).
    #[doc(hidden)]
    pub fn with_assist(mut self, assist: Box<dyn Assist>) -> Task<T> {
        self.assist = Some(assist);
        self
    }

    /// A weak view of whether the work has begun, for debug mode; `None` once detached.
    pub(crate) fn progress(&self) -> Option<std::sync::Weak<dyn Progress>>
    where
        T: Send + 'static,
    {
        let shared: Arc<dyn Progress> = self.shared.clone()?;
        Some(Arc::downgrade(&shared))
    }

    /// True once the result is ready, or taken, without asking the assist.
    fn is_done(&self) -> bool {
        match (&self.on_loop, &self.shared) {
            (Some(on_loop), _) => on_loop.is_finished(),
            (None, shared) => shared
                .as_ref()
                .is_none_or(|shared| shared.state.load(Ordering::Acquire) & DONE != 0),
        }
    }

    /// A task that is already finished with `result` (for the remote pool).
    #[doc(hidden)]
    pub fn ready(result: Result<T, Error>) -> Task<T> {
        let (promise, task) = pair();
        promise.complete(result);
        task
    }

    /// Lets the work run to the end without awaiting it. Its result is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let pool = smol_offload::ThreadPool::new(1)?;
    /// let (sender, receiver) = mpsc::channel();
    /// pool.spawn(move || sender.send("ran").unwrap()).detach();
    /// assert_eq!(receiver.recv()?, "ran");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn detach(mut self) {
        if let Some(on_loop) = self.on_loop.take() {
            on_loop.detach();
        }
        self.shared = None;
    }

    /// True once the result is ready: awaiting the task will not wait.
    pub fn is_finished(&self) -> bool {
        if !self.is_done()
            && let Some(assist) = &self.assist
        {
            assist.assist(None);
        }
        self.is_done()
    }

    /// True once the work has begun on a worker (or has finished).
    pub fn is_started(&self) -> bool {
        if let Some(on_loop) = &self.on_loop {
            return on_loop.is_started();
        }
        self.shared
            .as_ref()
            .is_none_or(|shared| shared.state.load(Ordering::Acquire) & (STARTED | DONE) != 0)
    }

    /// Gives the task `limit` to finish, like Python's `asyncio.wait_for`.
    ///
    /// When the time is up first, the future resolves to an error whose
    /// [`is_timeout`](Error::is_timeout) is true and the task is dropped: cancelled if it had
    /// not started. If it had started, a thread task is left to finish (its result dropped: a
    /// thread cannot be stopped), and a process task's worker is killed at once, so that the
    /// pool's next task does not wait for abandoned work; the pool forks a replacement.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # smol::block_on(async {
    /// let pool = smol_offload::ThreadPool::new(1)?;
    /// let slow = pool.spawn(|| std::thread::sleep(Duration::from_millis(300)));
    /// let err = slow.timeout(Duration::from_millis(10)).await.unwrap_err();
    /// assert!(err.is_timeout());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn timeout(self, limit: Duration) -> Timeout<T> {
        Timeout {
            task: Some(self),
            timer: async_io::Timer::after(limit),
            limit,
        }
    }

    /// Cancels the task, like Python's `task.cancel()` followed by awaiting it.
    ///
    /// If the work has not started, it never will, and this resolves to an error whose
    /// [`is_cancelled`](Error::is_cancelled) is true. If it has started in a
    /// [`ProcessPool`](crate::ProcessPool), its worker is killed (the pool forks a replacement)
    /// and this resolves at once to the same error. A thread cannot be stopped: if a thread
    /// task has started, this waits for it to end and gives its result. The running closure
    /// can see the request, though: [`cancelled()`](crate::cancelled) is true for it from then
    /// on, so a long loop that checks it can stop early.
    /// A remote pool's task (crate `smol-offload-remote`) has started once a worker claimed its job,
    /// which `cancel` asks the broker; a remote worker cannot be stopped from here either, so
    /// this then waits for the job's result.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # smol::block_on(async {
    /// let pool = smol_offload::ThreadPool::new(1)?;
    /// let busy = pool.spawn(|| std::thread::sleep(Duration::from_millis(100)));
    /// let queued = pool.spawn(|| unreachable!("cancelled work never runs"));
    /// assert!(queued.cancel().await.unwrap_err().is_cancelled());
    /// busy.await?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn cancel(mut self) -> Result<T, Error> {
        if let Some(on_loop) = self.on_loop.take() {
            match on_loop.cancel_unstarted() {
                Ok(()) => return Err(Error::new(ErrorKind::Cancelled)),
                Err(started) => self.on_loop = Some(started),
            }
        }
        if let Some(shared) = &self.shared {
            if shared.state.load(Ordering::Acquire) & (STARTED | DONE) == 0
                && self.assist.as_ref().is_some_and(|assist| assist.withdraw())
            {
                shared.state.fetch_or(CANCEL_REQUESTED, Ordering::AcqRel);
                return self.await;
            }
            let unstarted = shared
                .state
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                    (state & (STARTED | DONE) == 0).then_some(state | CANCELLED)
                })
                .is_ok();
            if !unstarted {
                shared.state.fetch_or(CANCEL_REQUESTED, Ordering::AcqRel);
            }
            if unstarted || self.abandon_started(false) {
                // Cancelled, or its work abandoned: dropping the task has nothing left to do.
                self.shared = None;
                return Err(Error::new(ErrorKind::Cancelled));
            }
        }
        self.await
    }
}

impl<T> Future for Task<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(on_loop) = &mut self.on_loop {
            let result = std::task::ready!(on_loop.poll(cx));
            // Finished: dropping the handle now neither cancels nor detaches anything.
            self.on_loop = None;
            return Poll::Ready(result);
        }
        let shared = self
            .shared
            .as_ref()
            .expect("`Task` polled after it returned its result");
        if shared.state.load(Ordering::Acquire) & DONE == 0 {
            if let Some(assist) = &self.assist {
                assist.assist(Some(cx.waker()));
            }
            shared.waker.register(cx.waker());
            if shared.state.load(Ordering::Acquire) & DONE == 0 {
                return Poll::Pending;
            }
        }
        let result = shared
            .result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.shared = None;
        self.assist = None;
        Poll::Ready(result.expect("a finished task holds its result"))
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if let Some(on_loop) = self.on_loop.take() {
            on_loop.release();
        }
        self.abandon_started(true);
        if let Some(shared) = self.shared.take() {
            shared.state.fetch_or(CANCELLED, Ordering::AcqRel);
        }
    }
}

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.shared.is_none() && self.on_loop.is_none() {
            "returned"
        } else if self.is_done() {
            "finished"
        } else if self.is_started() {
            "running"
        } else {
            "queued"
        };
        f.debug_struct("Task").field("state", &state).finish()
    }
}

/// A [`Task`] with a time limit: the future returned by [`Task::timeout`].
#[must_use = "futures do nothing unless awaited"]
pub struct Timeout<T> {
    task: Option<Task<T>>,
    timer: async_io::Timer,
    limit: Duration,
}

impl<T> Future for Timeout<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let task = this
            .task
            .as_mut()
            .expect("`Timeout` polled after it returned its result");
        if let Poll::Ready(result) = Pin::new(task).poll(cx) {
            this.task = None;
            return Poll::Ready(result);
        }
        if Pin::new(&mut this.timer).poll(cx).is_ready() {
            if let Some(task) = this.task.take() {
                if let Some(shared) = &task.shared {
                    shared.state.fetch_or(TIMED_OUT, Ordering::AcqRel);
                }
                task.abandon_started(false);
            }
            return Poll::Ready(Err(Error::new(ErrorKind::Timeout(this.limit))));
        }
        Poll::Pending
    }
}

impl<T> fmt::Debug for Timeout<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("task", &self.task)
            .field("limit", &self.limit)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    #[test]
    fn promise_dropped_without_result_gives_shutdown() {
        let (promise, task) = pair::<u8>();
        drop(promise);
        let err = block_on(task).unwrap_err();
        assert!(err.is_shutdown(), "{err}");
    }

    #[test]
    fn dropped_task_refuses_start() {
        let (promise, task) = pair::<u8>();
        drop(task);
        assert!(promise.is_cancelled());
        assert!(!promise.start());
    }

    #[test]
    fn detached_task_still_starts() {
        let (promise, task) = pair::<u8>();
        task.detach();
        assert!(!promise.is_cancelled());
        assert!(promise.start());
    }

    #[test]
    fn started_task_ignores_later_drop() {
        let (promise, task) = pair::<u8>();
        assert!(promise.start());
        drop(task);
        assert!(promise.is_cancelled());
    }

    /// An assist that completes the promise it holds when first asked, and records its drop.
    struct CompletesWhenAsked {
        promise: Mutex<Option<Promise<u8>>>,
        dropped: Arc<AtomicBool>,
    }

    impl Assist for CompletesWhenAsked {
        fn assist(&self, _: Option<&Waker>) {
            if let Some(promise) = self.promise.lock().unwrap().take() {
                promise.complete(Ok(7));
            }
        }
    }

    impl Drop for CompletesWhenAsked {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    fn assisted_task() -> (Task<u8>, Arc<AtomicBool>) {
        let (promise, task) = pair::<u8>();
        let dropped = Arc::new(AtomicBool::new(false));
        let assist = CompletesWhenAsked {
            promise: Mutex::new(Some(promise)),
            dropped: dropped.clone(),
        };
        (task.with_assist(Box::new(assist)), dropped)
    }

    #[test]
    fn is_finished_asks_the_assist() {
        let (task, dropped) = assisted_task();
        assert!(task.is_finished());
        assert!(
            !dropped.load(Ordering::SeqCst),
            "kept until the result is taken"
        );
        assert_eq!(block_on(task).unwrap(), 7);
    }

    #[test]
    fn the_assist_is_dropped_once_the_result_is_taken() {
        let (mut task, dropped) = assisted_task();
        let polled = Pin::new(&mut task).poll(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(polled, Poll::Ready(Ok(7))));
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn dropping_or_detaching_a_task_drops_its_assist() {
        let (task, dropped) = assisted_task();
        drop(task);
        assert!(dropped.load(Ordering::SeqCst));
        let (task, dropped) = assisted_task();
        task.detach();
        assert!(dropped.load(Ordering::SeqCst));
    }

    /// An abandon hook that counts its calls.
    struct CountsAbandons {
        on_drop: bool,
        calls: AtomicUsize,
    }

    impl Abandon for CountsAbandons {
        fn on_drop(&self) -> bool {
            self.on_drop
        }

        fn abandon(&self) {
            self.calls.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn abandonable(on_drop: bool) -> (Promise<u8>, Task<u8>, Arc<CountsAbandons>) {
        let (promise, task) = pair::<u8>();
        let hook = Arc::new(CountsAbandons {
            on_drop,
            calls: AtomicUsize::new(0),
        });
        (promise, task.with_abandon(hook.clone()), hook)
    }

    #[test]
    fn cancelling_started_work_abandons_it_at_once() {
        let (promise, task, hook) = abandonable(false);
        assert!(promise.start());
        let err = block_on(task.cancel()).unwrap_err();
        assert!(err.is_cancelled(), "{err}");
        assert!(promise.is_abandoned());
        assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn cancelling_unstarted_or_finished_work_does_not_abandon_it() {
        let (promise, task, hook) = abandonable(true);
        let err = block_on(task.cancel()).unwrap_err();
        assert!(err.is_cancelled());
        assert!(!promise.start());
        assert!(!promise.is_abandoned());

        let (promise, task, _) = abandonable(true);
        assert!(promise.start());
        promise.complete(Ok(5));
        assert_eq!(block_on(task.cancel()).unwrap(), 5);
        assert_eq!(hook.calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn timing_out_started_work_abandons_it() {
        let (promise, task, hook) = abandonable(false);
        assert!(promise.start());
        let err = block_on(task.timeout(Duration::from_millis(1))).unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(promise.is_abandoned());
        assert_eq!(
            hook.calls.load(Ordering::SeqCst),
            1,
            "once, not again on drop"
        );
    }

    #[test]
    fn dropping_started_work_abandons_it_only_when_the_hook_asks() {
        let (promise, task, hook) = abandonable(false);
        assert!(promise.start());
        drop(task);
        assert!(!promise.is_abandoned());
        assert_eq!(hook.calls.load(Ordering::SeqCst), 0);

        let (promise, task, hook) = abandonable(true);
        assert!(promise.start());
        drop(task);
        assert!(promise.is_abandoned());
        assert_eq!(hook.calls.load(Ordering::SeqCst), 1);

        let (promise, task, hook) = abandonable(true);
        assert!(promise.start());
        task.detach();
        assert!(!promise.is_abandoned(), "a detached task runs on");
        assert_eq!(hook.calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn cancel_source_sees_drop_and_cancel_of_a_started_task() {
        let (promise, task) = pair::<u8>();
        let source = promise.cancel_source();
        assert!(promise.start());
        assert!(!source.is_cancelled());
        drop(task);
        assert!(source.is_cancelled());

        let (promise, task) = pair::<u8>();
        let source = promise.cancel_source();
        assert!(promise.start());
        let cancelling = std::thread::spawn(move || block_on(task.cancel()));
        while !source.is_cancelled() {
            std::thread::yield_now();
        }
        promise.complete(Ok(5));
        assert_eq!(
            cancelling.join().unwrap().unwrap(),
            5,
            "the result still comes back"
        );
    }

    #[test]
    fn a_detached_task_is_not_cancelled() {
        let (promise, task) = pair::<u8>();
        task.detach();
        assert!(!promise.cancel_source().is_cancelled());
    }

    #[test]
    fn ready_task_is_finished() {
        let task = Task::ready(Ok(3));
        assert!(task.is_finished());
        assert_eq!(format!("{task:?}"), "Task { state: \"finished\" }");
        assert_eq!(block_on(task).unwrap(), 3);
    }
}
