//! [`ThreadPool`]: a fixed number of named rayon threads that smol tasks offload to.

use std::fmt;
use std::panic::{self, AssertUnwindSafe, Location};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{BuildError, BuildErrorKind, Error, worker_count};
use crate::executor::Executor;
use crate::job_queue::{Job, JobQueue};
use crate::panics::{self, Reporting};
use crate::stats::{self, Counters, Kind, PoolMetrics, PoolStats};
use crate::task::{self, Promise, Task};

/// A pool of a fixed number of named threads that run blocking or CPU-heavy closures for async
/// code, the counterpart of Python's `ThreadPoolExecutor(max_workers=n)`.
///
/// The pool is a [rayon] thread pool with exactly `workers` threads, whatever the burst: work
/// waits in the pool's first-in, first-out queue until a thread is free. Rayon code inside a
/// task (`par_iter`, `join`) runs on the same threads. Handles are cheap to clone and can be
/// shared by many threads and many event loops; the threads stop when the last handle is
/// dropped and the queued work is done.
///
/// # Examples
///
/// ```
/// use smol_offload::ThreadPool;
///
/// # smol::block_on(async {
/// let pool = ThreadPool::builder()
///     .workers(3)
///     .thread_name(|i| format!("Thread-{}", i + 1))
///     .build()?;
/// let name = pool.spawn(|| std::thread::current().name().map(str::to_owned)).await?;
/// assert!(name.unwrap().starts_with("Thread-"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct ThreadPool {
    inner: Arc<Inner>,
}

struct Inner {
    rayon: rayon::ThreadPool,
    queue: Arc<JobQueue>,
    workers: usize,
    name: Arc<str>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The threads stop once the queued work is done.
        self.queue.counters.metrics.workers_changed(self.workers, 0);
    }
}

impl ThreadPool {
    /// A pool of `workers` threads named `smol-offload-0`, `smol-offload-1`, ...
    ///
    /// # Errors
    ///
    /// `workers == 0`, or the operating system refused to start a thread.
    pub fn new(workers: usize) -> Result<ThreadPool, BuildError> {
        ThreadPool::builder().workers(workers).build()
    }

    /// A builder to choose the number of workers, their names and stack size.
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder::default()
    }

    /// Runs `f` on one of the pool's threads and returns the task to await its value.
    ///
    /// The closure starts as soon as a worker is free. Dropping the task before that cancels
    /// it; a panic in `f` is caught and returned as an [`Error`] whose
    /// [`is_panic`](Error::is_panic) is true, and the worker thread goes on.
    ///
    /// # Examples
    ///
    /// ```
    /// # smol::block_on(async {
    /// let pool = smol_offload::ThreadPool::new(2)?;
    /// let text = pool.spawn(|| std::fs::read_to_string("Cargo.toml")).await??;
    /// assert!(text.contains("smol-offload"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// The closure must be `Send + 'static`: it cannot borrow from the caller.
    ///
    /// ```compile_fail,E0373
    /// let pool = smol_offload::ThreadPool::new(1).unwrap();
    /// let data = vec![1, 2, 3];
    /// let _ = pool.spawn(|| data.len()); // borrows `data`
    /// ```
    ///
    /// ```compile_fail,E0277
    /// let pool = smol_offload::ThreadPool::new(1).unwrap();
    /// let shared = std::rc::Rc::new(1);
    /// let _ = pool.spawn(move || *shared); // `Rc` is not `Send`
    /// ```
    #[track_caller]
    pub fn spawn<F, T>(&self, f: F) -> Task<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        #[cfg(feature = "tracing")]
        let f = {
            // What the closure logs has the submitter's span as parent.
            let span = tracing::Span::current();
            move || span.in_scope(f)
        };
        let (promise, task) = task::timed_pair(self.inner.queue.counters.metrics.timer());
        if crate::debug::is_enabled() {
            self.watch_queued(&task, Location::caller());
        }
        let job: Job = Box::new(move |counters: &Counters| run_job(counters, promise, f));
        self.inner.queue.push(job, &self.inner.rayon);
        task
    }

    /// How many threads the pool has.
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// The pool's name, given to [`ThreadPoolBuilder::name`], else `"unnamed"` (the default
    /// pool of [`spawn`](crate::spawn) is `"default"`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Debug mode: reports `task` if it waits in the queue longer than the threshold.
    fn watch_queued<T: Send + 'static>(&self, task: &Task<T>, at: &'static Location<'static>) {
        let (queue, workers) = (Arc::downgrade(&self.inner.queue), self.inner.workers);
        let name = self.inner.name.clone();
        crate::debug::watch_queued(task, "ThreadPool", name, at, move || {
            Some(queue.upgrade()?.counters.snapshot(workers))
        });
    }

    /// A snapshot of the pool's queued, running and completed tasks.
    pub fn stats(&self) -> PoolStats {
        self.inner.queue.counters.snapshot(self.inner.workers)
    }
}

/// The body of every queued job: skip cancelled work, run the rest under `catch_unwind`, and
/// drop whatever is left under `catch_unwind` too, so that a panic never reaches rayon (which
/// would abort the process).
fn run_job<F, T>(counters: &Counters, promise: Promise<T>, f: F)
where
    F: FnOnce() -> T,
    T: Send + 'static,
{
    counters.picked();
    if !promise.start() {
        counters.cancelled();
        // Dropping the closure runs the destructors of what it captured, which may panic.
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(f)));
        return;
    }
    let result = {
        let _scope = crate::cancel::enter(promise.cancel_source());
        panics::catch(Reporting::Chain, f).map_err(Error::from_caught)
    };
    counters.completed();
    // If the task was dropped meanwhile, completing drops the value here, and its destructor may
    // panic too.
    let _ = panic::catch_unwind(AssertUnwindSafe(move || promise.complete(result)));
}

impl crate::executor::Sealed for ThreadPool {}

impl Executor for ThreadPool {
    #[track_caller]
    fn run<A, R>(&self, f: fn(A) -> R, arg: A) -> Task<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.spawn(move || f(arg))
    }

    fn workers(&self) -> usize {
        self.inner.workers
    }

    fn stats(&self) -> PoolStats {
        ThreadPool::stats(self)
    }
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPool")
            .field("name", &self.name())
            .field("stats", &self.stats())
            .finish()
    }
}

/// Builds a [`ThreadPool`]: `ThreadPool::builder().workers(n).thread_name(..).build()`.
#[derive(Default)]
#[must_use = "a builder does nothing until build() is called"]
pub struct ThreadPoolBuilder {
    workers: Option<usize>,
    name: Option<String>,
    thread_name: Option<Box<dyn FnMut(usize) -> String + 'static>>,
    stack_size: Option<usize>,
}

impl ThreadPoolBuilder {
    /// The number of worker threads. Without it, the pool has one per CPU.
    pub fn workers(mut self, workers: usize) -> ThreadPoolBuilder {
        self.workers = Some(workers);
        self
    }

    /// Names the pool: its `pool` label in metrics (feature `metrics`) and its name in debug
    /// mode's reports. Without it, the pool is `"unnamed"`.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = smol_offload::ThreadPool::builder().name("resize").workers(2).build()?;
    /// assert_eq!(pool.name(), "resize");
    /// # Ok::<(), smol_offload::BuildError>(())
    /// ```
    pub fn name(mut self, name: &str) -> ThreadPoolBuilder {
        self.name = Some(name.to_owned());
        self
    }

    /// Names worker `i` (from 0) `name(i)`, so that logs say which thread ran a task.
    pub fn thread_name<N>(mut self, name: N) -> ThreadPoolBuilder
    where
        N: FnMut(usize) -> String + 'static,
    {
        self.thread_name = Some(Box::new(name));
        self
    }

    /// The stack size of each worker thread, in bytes.
    pub fn stack_size(mut self, bytes: usize) -> ThreadPoolBuilder {
        self.stack_size = Some(bytes);
        self
    }

    /// Starts the threads.
    ///
    /// # Errors
    ///
    /// Zero workers, or the operating system refused to start a thread.
    pub fn build(self) -> Result<ThreadPool, BuildError> {
        let workers = worker_count(self.workers)?;
        // So that a task's panic error says where it happened.
        panics::install_hook();
        // Every job catches its panics; should one escape anyway, rayon must not abort.
        let mut builder = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .panic_handler(|payload| {
                let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
            });
        builder = match self.thread_name {
            Some(name) => builder.thread_name(name),
            None => builder.thread_name(|i| format!("smol-offload-{i}")),
        };
        if let Some(bytes) = self.stack_size {
            builder = builder.stack_size(bytes);
        }
        let rayon = builder
            .build()
            .map_err(|err| BuildError::new(BuildErrorKind::Rayon(err)))?;
        let name = self.name.as_deref().unwrap_or(stats::UNNAMED);
        let metrics = PoolMetrics::new(name, Kind::Thread);
        metrics.workers_changed(0, workers);
        let queue = Arc::new(JobQueue::new(workers, metrics));
        Ok(ThreadPool {
            inner: Arc::new(Inner {
                rayon,
                queue,
                workers,
                name: name.into(),
            }),
        })
    }
}

impl fmt::Debug for ThreadPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPoolBuilder")
            .field("workers", &self.workers)
            .field("name", &self.name)
            .field("thread_name", &self.thread_name.as_ref().map(|_| "<fn>"))
            .field("stack_size", &self.stack_size)
            .finish()
    }
}
