//! [`LoopThread`]: a named thread running its own smol executor, that any thread or event loop
//! can hand futures and closures to.
//!
//! The thread runs its own executor (`loop_executor`). A future given to [`LoopThread::spawn`]
//! is one `async_task` task, whose handle its [`Task`] holds; one that
//! [`LoopThread::spawn_local`] builds on the thread is a local task on the same queue. Every
//! submission is counted in by the submitting thread and out by the loop thread, on two
//! counters on cache lines of their own, so that a round trip moves neither between CPUs.
//! `stop()` (or the last handle's drop) sets a *stopping* bit in the count in, after which
//! submissions are refused, and the thread leaves its executor once the two counts meet.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Waker;
use std::thread::{JoinHandle, ThreadId};

use crossbeam_utils::CachePadded;
use futures_lite::FutureExt;

use crate::dedicated::spawn_thread;
use crate::error::{BuildError, BuildErrorKind, Error, ErrorKind};
use crate::loop_executor::{self, LoopTask, RunQueue};
use crate::task::{self, Assist, Promise, Task};

/// Set in [`Shared::submitted`] once the loop takes no new work; the other bits count the
/// submissions.
const STOPPING: usize = 1 << (usize::BITS - 1);

thread_local! {
    /// On a loop thread, the loop it runs: where a submission that ends there counts itself out.
    static THIS_LOOP: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
}

/// A named thread running its own smol executor until stopped: Python's event loop running
/// forever in a `Thread`, with `asyncio.run_coroutine_threadsafe` ([`spawn`](LoopThread::spawn)),
/// `loop.call_soon_threadsafe` ([`call`](LoopThread::call)) and aiomisc's
/// `sync_wait_coroutine` ([`block_on`](LoopThread::block_on)).
///
/// A loop thread owns what must stay on one thread or must not block the caller's loop: a file
/// that many tasks append to, a `!Send` client, a connection with its own protocol state. Any
/// thread and any event loop submits to it; every submission returns the crate's [`Task`], which
/// can be awaited on any executor, gives `Err` with [`is_panic`](Error::is_panic) when the
/// future panics, and cancels the future when dropped before the future first runs (once it
/// runs, it runs to its end, as on the pools).
///
/// `LoopThread` is a cheap handle: clones talk to the same thread. [`stop`](LoopThread::stop)
/// refuses new work, lets everything already submitted finish, and resolves once the thread has
/// been joined. Dropping the last handle does the same in the background. Rust has no async
/// drop, so Python's `async with WriteThread() as writer:` becomes
/// `let writer = LoopThread::new("writer")?;` ... `writer.stop().await?`.
///
/// # Examples
///
/// ```
/// use std::rc::Rc;
/// use smol_offload::LoopThread;
///
/// # smol::block_on(async {
/// let worker = LoopThread::new("io-loop")?;
/// // A future from any thread or loop, run on the loop thread:
/// let name = worker.spawn(async { std::thread::current().name().map(str::to_owned) });
/// assert_eq!(name.await?.as_deref(), Some("io-loop"));
/// // A plain closure:
/// assert_eq!(worker.call(|| 6 * 7).await?, 42);
/// // A future built on the loop thread, which may hold `!Send` state:
/// let count = worker.spawn_local(|| async {
///     let shared = Rc::new(3);
///     *shared + 1
/// });
/// assert_eq!(count.await?, 4);
/// worker.stop().await?;
/// assert!(worker.call(|| ()).await.unwrap_err().is_shutdown());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct LoopThread {
    handle: Arc<Handle>,
}

/// Shared by all clones of one `LoopThread`: the last one dropped starts the stop.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.begin_stop();
    }
}

/// What the handles and the loop thread share.
struct Shared {
    name: String,
    /// The loop's executor: its own `Arc`, which every task's schedule function holds.
    queue: Arc<RunQueue>,
    /// Submissions so far, admitted or refused, plus [`STOPPING`]. Written by the submitting
    /// threads (and once by the stop).
    submitted: CachePadded<AtomicUsize>,
    /// Submissions that ended (or were refused). Written by the loop thread, save for refusals.
    ended: CachePadded<AtomicUsize>,
    /// [`STOPPING`] again, where the loop thread reads it after each submission without
    /// pulling `submitted`'s cache line away from the submitting thread.
    stopping: AtomicBool,
    /// The loop thread, known once it has been started.
    thread: OnceLock<ThreadId>,
    end: Mutex<End>,
}

/// The end of the loop thread, which `stop()` awaits.
#[derive(Default)]
struct End {
    /// The thread, until it is joined.
    join: Option<JoinHandle<()>>,
    /// Set by the loop thread when it has left its executor, just before it returns.
    finished: bool,
    /// The `stop()` tasks waiting for `finished`.
    wakers: Vec<Waker>,
}

impl Shared {
    /// Counts one more submission in flight, unless the loop is stopping.
    fn admit(self: &Arc<Self>) -> Result<Admission, Error> {
        let previous = self.submitted.fetch_add(1, Ordering::SeqCst);
        if previous & STOPPING != 0 {
            self.count_out();
            return Err(Error::new(ErrorKind::Stopped(format!(
                "the loop thread {:?} is stopping and takes no new work",
                self.name
            ))));
        }
        Ok(Admission {
            loop_id: Arc::as_ptr(self) as usize,
        })
    }

    /// Counts one submission out: it ended, or it was refused.
    fn count_out(&self) {
        self.ended.fetch_add(1, Ordering::SeqCst);
        if self.stopping.load(Ordering::SeqCst) {
            self.queue.wake();
        }
    }

    fn begin_stop(&self) {
        self.submitted.fetch_or(STOPPING, Ordering::SeqCst);
        self.stopping.store(true, Ordering::SeqCst);
        self.queue.wake();
    }

    /// Submissions admitted and not ended yet.
    fn in_flight(&self) -> usize {
        let submitted = self.submitted.load(Ordering::SeqCst) & !STOPPING;
        submitted.saturating_sub(self.ended.load(Ordering::SeqCst))
    }

    fn is_drained(&self) -> bool {
        // `submitted` first: a submission counted in after this load was refused, and counts
        // itself out as well, so `ended` can only catch up, never pass, until it is read
        // again after its wake-up.
        let submitted = self.submitted.load(Ordering::SeqCst);
        submitted & STOPPING != 0 && submitted & !STOPPING == self.ended.load(Ordering::SeqCst)
    }

    fn end(&self) -> MutexGuard<'_, End> {
        self.end.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn on_loop_thread(&self) -> bool {
        self.thread.get() == Some(&std::thread::current().id())
    }

    /// The loop thread's body: run the executor until stopped and drained.
    fn run(self: &Arc<Self>) {
        THIS_LOOP.with(|this| *this.borrow_mut() = Some(self.clone()));
        async_io::block_on(futures_lite::future::poll_fn(|cx| {
            self.queue.poll_run(cx, || self.is_drained())
        }));
        THIS_LOOP.with(|this| this.borrow_mut().take());
        let wakers = {
            let mut end = self.end();
            end.finished = true;
            std::mem::take(&mut end.wakers)
        };
        // Woken once the lock is released: a waker may run code that takes it.
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// One submission in flight; dropping it (the future finished, or was dropped) counts it out.
///
/// It holds no `Arc` of its loop (whose count would move between the two CPUs on every round
/// trip): it ends on the loop thread, which knows its loop, and `loop_id` (the loop's address)
/// makes sure it is that one. Off the thread (an executor dropped with work in it, once its
/// thread has gone) there is no drain left to count for.
struct Admission {
    loop_id: usize,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let _ = THIS_LOOP.try_with(|this| {
            if let Ok(this) = this.try_borrow()
                && let Some(shared) = &*this
                && Arc::as_ptr(shared) as usize == self.loop_id
            {
                shared.count_out();
            }
        });
    }
}

impl LoopThread {
    /// Starts a thread named `name` that runs its own executor until stopped.
    ///
    /// # Errors
    ///
    /// `name` contains a NUL byte, or the operating system refused to start the thread.
    pub fn new(name: impl Into<String>) -> Result<LoopThread, BuildError> {
        let shared = Arc::new(Shared {
            name: name.into(),
            queue: Arc::new(RunQueue::new()),
            submitted: CachePadded::new(AtomicUsize::new(0)),
            ended: CachePadded::new(AtomicUsize::new(0)),
            stopping: AtomicBool::new(false),
            thread: OnceLock::new(),
            end: Mutex::default(),
        });
        let on_thread = shared.clone();
        let join = spawn_thread(&shared.name, move || on_thread.run()).map_err(|source| {
            BuildError::new(BuildErrorKind::Io {
                doing: "start the loop thread",
                source,
            })
        })?;
        let _ = shared.thread.set(join.thread().id());
        shared.end().join = Some(join);
        Ok(LoopThread {
            handle: Arc::new(Handle { shared }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The name of the loop's thread.
    pub fn name(&self) -> &str {
        &self.shared().name
    }

    /// True when called on this loop's own thread (from a future or closure it runs).
    pub fn is_current(&self) -> bool {
        self.shared().on_loop_thread()
    }

    /// Runs `future` on the loop thread and returns the task to await its output: Python's
    /// `asyncio.run_coroutine_threadsafe(coro, loop)`, callable from any thread or loop.
    ///
    /// # Examples
    ///
    /// ```
    /// # smol::block_on(async {
    /// let other = smol_offload::LoopThread::new("other")?;
    /// let doubled = other.spawn(async { 21 * 2 });
    /// assert_eq!(doubled.await?, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// The task resolves to an error with [`is_shutdown`](Error::is_shutdown) when the loop is
    /// stopping, and with [`is_panic`](Error::is_panic) when the future panics.
    pub fn spawn<F>(&self, future: F) -> Task<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let admission = match self.shared().admit() {
            Ok(admission) => admission,
            Err(err) => return Task::ready(Err(err)),
        };
        #[cfg(feature = "tracing")]
        let future = tracing::Instrument::instrument(future, tracing::Span::current());
        let task = loop_executor::spawn(run_future(admission, future), self.schedule());
        Task::on_loop(LoopTask::new(task))
    }

    /// The schedule function of this loop's tasks: queue on its executor.
    fn schedule(
        &self,
    ) -> impl Fn(async_task::Runnable<loop_executor::Meta>) + Send + Sync + 'static {
        let queue = self.shared().queue.clone();
        move |runnable| queue.push(runnable)
    }

    /// Builds a future on the loop thread with `make` and runs it there; the future need not be
    /// `Send`, so it can own `!Send` state such as an `Rc` or a writer that must stay on one
    /// thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::cell::RefCell;
    /// use std::rc::Rc;
    ///
    /// # smol::block_on(async {
    /// let owner = smol_offload::LoopThread::new("owner")?;
    /// let total = owner.spawn_local(|| async {
    ///     let lines = Rc::new(RefCell::new(Vec::new()));
    ///     for n in 0..3 {
    ///         lines.borrow_mut().push(n);
    ///         smol::future::yield_now().await; // `lines` lives across awaits
    ///     }
    ///     let total: i32 = lines.borrow().iter().sum();
    ///     total
    /// });
    /// assert_eq!(total.await?, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// As [`spawn`](LoopThread::spawn); a panic in `make` is reported like one in the future.
    pub fn spawn_local<M, F>(&self, make: M) -> Task<F::Output>
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future + 'static,
        F::Output: Send + 'static,
    {
        let admission = match self.shared().admit() {
            Ok(admission) => admission,
            Err(err) => return Task::ready(Err(err)),
        };
        #[cfg(feature = "tracing")]
        let span = tracing::Span::current();
        #[cfg(feature = "tracing")]
        let make = move || {
            let _entered = span.enter();
            tracing::Instrument::instrument(make(), span.clone())
        };
        let (promise, task) = task::pair();
        let schedule = self.schedule();
        let local_schedule = self.schedule();
        loop_executor::spawn(
            async move {
                // On the loop thread: build the future here, as a local task of the loop's
                // executor, so that it is only ever polled here.
                loop_executor::spawn_local_now(run_local(admission, promise, make), local_schedule);
            },
            schedule,
        )
        .detach();
        task
    }

    /// Runs the closure `f` on the loop thread and returns the task to await its value:
    /// `loop.call_soon_threadsafe(f)`, with a result.
    ///
    /// `f` runs between the loop's futures, so it must not block for long.
    ///
    /// # Errors
    ///
    /// As [`spawn`](LoopThread::spawn).
    pub fn call<F, T>(&self, f: F) -> Task<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn(async move { f() })
    }

    /// Runs `future` on the loop thread and blocks the calling thread until it is done: aiomisc's
    /// `sync_wait_coroutine(loop, coro)`, anyio's `from_thread.run`. It is meant for code that
    /// is not async, such as a closure running on a [`ThreadPool`](crate::ThreadPool) or a
    /// dedicated thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # smol::block_on(async {
    /// let service = smol_offload::LoopThread::new("service")?;
    /// let pool = smol_offload::ThreadPool::new(1)?;
    /// let service_in_pool = service.clone();
    /// let answer = pool.spawn(move || service_in_pool.block_on(async { 40 + 2 }));
    /// assert_eq!(answer.await??, 42);
    ///
    /// // On the loop thread itself, waiting would never end: it is refused at once.
    /// let on_itself = service.clone();
    /// let refused = service.call(move || on_itself.block_on(async {})).await?;
    /// assert!(refused.unwrap_err().is_deadlock());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// Only the direct case is detected: two loop threads whose futures `block_on` each other
    /// still wait for each other forever, as any two threads waiting on each other do.
    ///
    /// # Errors
    ///
    /// An error with [`is_deadlock`](Error::is_deadlock) when called on this loop's own thread,
    /// and otherwise the errors of [`spawn`](LoopThread::spawn).
    pub fn block_on<F>(&self, future: F) -> Result<F::Output, Error>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if self.is_current() {
            return Err(Error::new(ErrorKind::Deadlock(format!(
                "LoopThread::block_on was called on the loop thread {:?} itself, \
                 which would wait forever for a future only it can run: await the future instead",
                self.name()
            ))));
        }
        futures_lite::future::block_on(self.spawn(future))
    }

    /// Stops the loop: from now on it refuses new work (submissions get an error with
    /// [`is_shutdown`](Error::is_shutdown)), runs everything already submitted to its end, and
    /// then its thread exits. The task resolves once the thread has been joined. Any handle can
    /// stop the loop, for all of them. A submitted future that never ends keeps the loop from
    /// stopping: give such futures their own way out (a channel, a timer) before stopping.
    ///
    /// # Examples
    ///
    /// ```
    /// # smol::block_on(async {
    /// let writer = smol_offload::LoopThread::new("writer")?;
    /// let queued: Vec<_> = (0..100).map(|n| writer.spawn(async move { n })).collect();
    /// writer.stop().await?; // all 100 have run
    /// for (n, task) in queued.into_iter().enumerate() {
    ///     assert_eq!(task.await?, n);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// Called on the loop thread itself, the stop begins but the task is at once an error with
    /// [`is_deadlock`](Error::is_deadlock): the loop cannot wait for its own end.
    pub fn stop(&self) -> Task<()> {
        let shared = self.shared().clone();
        shared.begin_stop();
        if shared.on_loop_thread() {
            return Task::ready(Err(Error::new(ErrorKind::Deadlock(format!(
                "LoopThread::stop was awaited on the loop thread {:?} itself, which stops only \
                 after this future ends: the stop has begun, await it from another thread",
                shared.name
            )))));
        }
        let (promise, task) = task::pair();
        task.with_assist(Box::new(Joiner {
            shared,
            promise: Mutex::new(Some(promise)),
        }))
    }
}

/// Runs a submitted future on the loop's executor, a panic in it being an error. The executor
/// does not poll it at all if its task was dropped first.
async fn run_future<F>(admission: Admission, future: F) -> Result<F::Output, Error>
where
    F: Future,
{
    let _admission = admission;
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(Error::from_panic)
}

/// Builds and runs a `spawn_local` future on the loop's local executor.
async fn run_local<M, F>(admission: Admission, promise: Promise<F::Output>, make: M)
where
    M: FnOnce() -> F,
    F: Future,
{
    if !promise.start() {
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(make)));
        return;
    }
    // A panic in `make` is caught with the future's, on the first poll.
    let result = run_future(admission, async move { make().await }).await;
    let _ = panic::catch_unwind(AssertUnwindSafe(move || promise.complete(result)));
}

/// The awaiting side of `stop()`: once the loop thread has left its executor, joins it and
/// completes the stop task.
struct Joiner {
    shared: Arc<Shared>,
    promise: Mutex<Option<Promise<()>>>,
}

impl Assist for Joiner {
    fn assist(&self, waker: Option<&Waker>) {
        let mut end = self.shared.end();
        if !end.finished {
            if let Some(waker) = waker
                && !end.wakers.iter().any(|known| known.will_wake(waker))
            {
                end.wakers.push(waker.clone());
            }
            return;
        }
        // The thread has nothing left to run but its return: joining does not block. The lock
        // is held while joining, so a second `stop()` completes only after the join.
        if let Some(handle) = end.join.take() {
            let _ = handle.join();
        }
        drop(end);
        let promise = self
            .promise
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(promise) = promise {
            promise.complete(Ok(()));
        }
    }
}

impl fmt::Debug for LoopThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.shared();
        f.debug_struct("LoopThread")
            .field("name", &shared.name)
            .field("in_flight", &shared.in_flight())
            .field("stopping", &shared.stopping.load(Ordering::SeqCst))
            .finish()
    }
}
