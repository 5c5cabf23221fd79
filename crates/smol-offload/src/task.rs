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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use atomic_waker::AtomicWaker;

use crate::error::{Error, ErrorKind};

const STARTED: u8 = 1;
const CANCELLED: u8 = 2;
const DONE: u8 = 4;

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

/// Creates the two ends of one offloaded call.
pub(crate) fn pair<T>() -> (Promise<T>, Task<T>) {
    let shared = Arc::new(Shared {
        state: AtomicU8::new(0),
        result: Mutex::new(None),
        waker: AtomicWaker::new(),
    });
    (
        Promise {
            shared: Some(shared.clone()),
        },
        Task {
            shared: Some(shared),
            assist: None,
        },
    )
}

/// Work the awaiting side of a [`Task`] can do to bring its result in.
///
/// The task calls [`assist`](Assist::assist) whenever it is polled, asked whether it is
/// finished, or registered with a waker, and drops the assist once nobody will do that again:
/// when it returns its result, is dropped or is detached. Dropping an assist hands whatever it
/// still holds back to the pool, which then completes the promise on its own.
pub(crate) trait Assist: Send + Sync {
    /// Moves the work on without blocking; it may complete the task's promise. When the work
    /// cannot go on yet and `waker` is given, arranges for `waker` to be woken when it can (the
    /// waker last given is remembered for calls without one).
    fn assist(&self, waker: Option<&Waker>);
}

/// The runner's end of a [`Task`]: it decides whether the work may start, and delivers its
/// result. A promise dropped without a result resolves its task with a shutdown error, so an
/// awaiting task never hangs.
pub(crate) struct Promise<T> {
    shared: Option<Arc<Shared<T>>>,
}

impl<T> Promise<T> {
    /// Marks the work as started. Returns `false` if the task was cancelled first: the work
    /// must then not run (drop the promise, or [`complete`](Promise::complete) it with an error).
    pub(crate) fn start(&self) -> bool {
        let shared = self.shared.as_ref().expect("promise used after completion");
        shared.state.fetch_or(STARTED, Ordering::AcqRel) & CANCELLED == 0
    }

    /// True when the task was dropped (and not detached): nobody waits for the result.
    pub(crate) fn is_cancelled(&self) -> bool {
        let shared = self.shared.as_ref().expect("promise used after completion");
        shared.state.load(Ordering::Acquire) & CANCELLED != 0
    }

    /// Delivers the result and wakes the awaiting task.
    pub(crate) fn complete(mut self, result: Result<T, Error>) {
        if let Some(shared) = self.shared.take() {
            shared.fulfil(result);
        }
    }
}

impl<T> Drop for Promise<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
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
/// started, the work runs to the end and its result is dropped. Call [`detach`](Task::detach)
/// to let the work run without awaiting it.
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
}

impl<T> Task<T> {
    /// This task, helped by `assist` while it is awaited.
    pub(crate) fn with_assist(mut self, assist: Box<dyn Assist>) -> Task<T> {
        self.assist = Some(assist);
        self
    }

    /// Drops the assist, which gives back what it holds.
    fn release_assist(&mut self) {
        self.assist = None;
    }

    fn is_done(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|shared| shared.state.load(Ordering::Acquire) & DONE != 0)
    }

    /// A task that is already finished with `result`.
    pub(crate) fn ready(result: Result<T, Error>) -> Task<T> {
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
        self.shared = None;
        self.release_assist();
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
        match &self.shared {
            Some(shared) => shared.state.load(Ordering::Acquire) & (STARTED | DONE) != 0,
            None => true,
        }
    }

    /// Gives the task `limit` to finish, like Python's `asyncio.wait_for`.
    ///
    /// When the time is up first, the future resolves to an error whose
    /// [`is_timeout`](Error::is_timeout) is true and the task is dropped: cancelled if it had
    /// not started, left to finish (its result dropped) if it had.
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
    /// [`is_cancelled`](Error::is_cancelled) is true. If it has started, cancelling cannot stop
    /// it: this waits for it to end and gives its result.
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
        if let Some(shared) = &self.shared {
            let mut state = shared.state.load(Ordering::Acquire);
            while state & (STARTED | DONE) == 0 {
                match shared.state.compare_exchange_weak(
                    state,
                    state | CANCELLED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        self.shared = None;
                        self.release_assist();
                        return Err(Error::new(ErrorKind::Cancelled));
                    }
                    Err(actual) => state = actual,
                }
            }
        }
        self.await
    }

    /// Registers `waker` to be woken when the result is ready.
    pub(crate) fn register(&self, waker: &Waker) {
        if let Some(shared) = &self.shared {
            shared.waker.register(waker);
            if let Some(assist) = &self.assist {
                assist.assist(Some(waker));
            }
        }
    }
}

impl<T> Future for Task<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
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
        self.release_assist();
        Poll::Ready(result.expect("a finished task holds its result"))
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.state.fetch_or(CANCELLED, Ordering::AcqRel);
        }
        self.release_assist();
    }
}

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.shared {
            None => "returned",
            Some(shared) => {
                let bits = shared.state.load(Ordering::Acquire);
                if bits & DONE != 0 {
                    "finished"
                } else if bits & STARTED != 0 {
                    "running"
                } else {
                    "queued"
                }
            }
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
            this.task = None;
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

    #[test]
    fn promise_dropped_without_result_gives_shutdown() {
        let (promise, task) = pair::<u8>();
        drop(promise);
        let err = futures_lite::future::block_on(task).unwrap_err();
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
        dropped: Arc<std::sync::atomic::AtomicBool>,
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

    fn assisted_task() -> (Task<u8>, Arc<std::sync::atomic::AtomicBool>) {
        let (promise, task) = pair::<u8>();
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
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
        assert_eq!(futures_lite::future::block_on(task).unwrap(), 7);
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

    #[test]
    fn ready_task_is_finished() {
        let task = Task::ready(Ok(3));
        assert!(task.is_finished());
        assert_eq!(format!("{task:?}"), "Task { state: \"finished\" }");
        assert_eq!(futures_lite::future::block_on(task).unwrap(), 3);
    }
}
