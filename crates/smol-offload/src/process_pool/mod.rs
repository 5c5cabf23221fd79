//! [`ProcessPool`]: a fixed number of forked worker processes behind the same [`Executor`].

// Imports flow one way, each module using only those listed above it:
// out_of_line → wire → job → server → worker_link → loan → shared → loan_assist → dying → dispatcher.
mod dispatcher;
mod dying;
mod job;
mod loan;
mod loan_assist;
pub(crate) mod out_of_line;
pub(crate) mod raw;
pub(crate) mod server;
mod shared;
pub(crate) mod wire;
mod worker;
mod worker_link;

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::error::{BuildError, BuildErrorKind, Error, worker_count};
use crate::executor::Executor;
use crate::panics::{self, Reporting};
use crate::stats::PoolStats;
use crate::sys;
use crate::task::{self, Task};
use dispatcher::Dispatcher;
use job::Job;
use loan_assist::LoanAssist;
use shared::{Placed, Shared};
use wire::CallOptions;

/// A pool of a fixed number of worker processes, the counterpart of Python's
/// `ProcessPoolExecutor(max_workers=n)`, behind the same [`Executor`] as
/// [`ThreadPool`](crate::ThreadPool).
///
/// Each worker is a process forked (without `exec`) from the fork server that [`init`](crate::init)
/// starts, so it runs the same program: [`Executor::run`] sends it the address of `f` and the
/// postcard encoding of the argument, and it sends back the encoded result. A worker runs one
/// task at a time. A panic in `f` comes back as an [`Error`] and the worker goes on; a worker that
/// dies (a signal, `abort`, `exit`) fails only the task it was running, with an error naming its
/// pid and how it ended, and the pool forks a replacement.
///
/// A call made while a worker is idle and nothing is queued goes straight to that worker: the
/// calling thread writes the request, and the task reads the reply itself when it is awaited,
/// sleeping on the worker's socket in smol's reactor. Such a task has started when `run`
/// returns, so dropping it no longer cancels it. Other calls wait in the pool's queue for its
/// dispatcher thread, which also sends short tasks ahead to busy workers when the queue is deep.
///
/// Dropping the last handle ends the pool: queued tasks resolve with a shutdown error, running
/// ones finish, then the workers exit. If the application dies, even by `SIGKILL`, the fork
/// server and the workers exit with it.
///
/// # Examples
///
/// ```no_run
/// use smol_offload::{Executor, ProcessPool};
///
/// fn square(n: u64) -> u64 {
///     n * n
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     smol_offload::init(); // first thing in main, before any thread starts
///     let pool = ProcessPool::new(3)?;
///     smol::block_on(async {
///         assert_eq!(pool.run(square, 7).await?, 49);
///         Ok(())
///     })
/// }
/// ```
#[derive(Clone)]
pub struct ProcessPool {
    handle: Arc<Handle>,
}

/// The last handle closes the pool when dropped.
struct Handle {
    shared: Arc<Shared>,
    workers: usize,
    /// What every call of the pool tells its worker.
    options: CallOptions,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl ProcessPool {
    /// A pool of `workers` processes.
    ///
    /// # Errors
    ///
    /// `workers == 0`; [`init`](crate::init) was not called and the process already runs
    /// other threads; or the workers could not be forked.
    pub fn new(workers: usize) -> Result<ProcessPool, BuildError> {
        ProcessPool::builder().workers(workers).build()
    }

    /// A builder to choose the number of workers.
    pub fn builder() -> ProcessPoolBuilder {
        ProcessPoolBuilder::default()
    }

    /// How many worker processes the pool has.
    pub fn workers(&self) -> usize {
        self.handle.workers
    }

    /// The pids of the current workers, for logs and tests. A worker that dies is replaced by
    /// one with a new pid.
    pub fn pids(&self) -> Vec<u32> {
        self.handle.shared.pids()
    }

    /// A snapshot of the pool's queued, running and completed tasks.
    pub fn stats(&self) -> PoolStats {
        self.handle.shared.counters.snapshot(self.handle.workers)
    }
}

impl Executor for ProcessPool {
    fn run<A, R>(&self, f: fn(A) -> R, arg: A) -> Task<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let arg = match encode_argument(&arg) {
            Ok(bytes) => bytes,
            Err(error) => return Task::ready(Err(error)),
        };
        let (promise, task) = task::pair::<R>();
        let job = Job {
            call: sys::erase(f),
            options: self.handle.options,
            arg,
            completion: Box::new(promise),
        };
        match self.handle.shared.submit(job) {
            Ok(Placed::Queued) => task,
            Ok(Placed::Lent(loan)) => task.with_assist(Box::new(LoanAssist {
                loan,
                shared: self.handle.shared.clone(),
            })),
            Err(refused) => {
                refused.completion.fail(self.handle.shared.refusal());
                task
            }
        }
    }

    fn workers(&self) -> usize {
        self.handle.workers
    }

    fn stats(&self) -> PoolStats {
        ProcessPool::stats(self)
    }
}

/// Encodes a task's argument on the calling thread. The user's `Serialize` runs here: a panic
/// in it is the task's error, like its other failures, and never unwinds into the caller.
fn encode_argument<A: Serialize>(arg: &A) -> Result<Vec<u8>, Error> {
    const STAGE: &str = "serialize the argument";
    match panics::catch(Reporting::Chain, || codec::encode(arg)) {
        Ok(Ok(bytes)) if bytes.len() <= wire::MAX_ARGUMENT => Ok(bytes),
        Ok(Ok(bytes)) => {
            let detail = format!("{} bytes is more than a frame holds", bytes.len());
            Err(Error::codec(STAGE, detail, None))
        }
        Ok(Err(err)) => Err(Error::codec(STAGE, err.message, err.source)),
        Err(caught) => Err(Error::from_caught(caught)),
    }
}

impl fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessPool")
            .field("pids", &self.pids())
            .field("stats", &self.stats())
            .finish()
    }
}

/// Builds a [`ProcessPool`]: `ProcessPool::builder().workers(n).build()`.
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until build() is called"]
pub struct ProcessPoolBuilder {
    workers: Option<usize>,
    print_panics: bool,
}

impl ProcessPoolBuilder {
    /// The number of worker processes. Without it, the pool has one per CPU.
    pub fn workers(mut self, workers: usize) -> ProcessPoolBuilder {
        self.workers = Some(workers);
        self
    }

    /// Whether a worker prints a task's panic to its stderr as it happens. Off by default: the
    /// panic comes back to the caller as the task's [`Error`], with its message and location,
    /// as Python's executors re-raise an exception in the caller without printing it. On, each
    /// panic prints `smol-offload worker <pid> panicked at <file:line:column>:` and the
    /// message (and a backtrace when `RUST_BACKTRACE` asks for one), naming the worker.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use smol_offload::{Executor, ProcessPool};
    ///
    /// fn check(n: u32) -> u32 {
    ///     assert!(n < 10, "{n} is too big");
    ///     n
    /// }
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     smol_offload::init();
    ///     let pool = ProcessPool::builder().workers(1).print_panics(true).build()?;
    ///     // The worker prints "smol-offload worker <pid> panicked at ...: 12 is too big".
    ///     let err = smol::block_on(pool.run(check, 12)).unwrap_err();
    ///     assert_eq!(err.panic_message(), Some("12 is too big"));
    ///     Ok(())
    /// }
    /// ```
    pub fn print_panics(mut self, print: bool) -> ProcessPoolBuilder {
        self.print_panics = print;
        self
    }

    /// Forks the workers and starts the pool's dispatcher thread.
    ///
    /// # Errors
    ///
    /// Zero workers; [`init`](crate::init) was not called and the process already runs other
    /// threads; or the workers could not be forked.
    pub fn build(self) -> Result<ProcessPool, BuildError> {
        let workers = worker_count(self.workers)?;
        let link = server::link_or_start()?;
        // For the user's serde code that runs in this process: its panics get a location.
        panics::install_hook();
        let io_error = |doing| move |source| BuildError::new(BuildErrorKind::Io { doing, source });
        let shared = Arc::new(Shared::new().map_err(io_error("create the pool's eventfd"))?);
        let spawned = dispatcher::spawn_workers(link, workers)
            .map_err(io_error("fork the worker processes"))?;
        let dispatcher = Dispatcher::new(shared.clone(), link, spawned);
        let started = std::thread::Builder::new()
            .name("smol-offload-dispatch".into())
            .spawn(move || dispatcher.run());
        if let Err(source) = started {
            // The workers wait, lent out, for tasks that will never come: end them.
            for worker in std::mem::take(&mut shared.lock().idle) {
                sys::kill_worker_group(worker.pid);
                let _ = link.reap(worker.pid);
            }
            return Err(io_error("start the dispatcher thread")(source));
        }
        Ok(ProcessPool {
            handle: Arc::new(Handle {
                shared,
                workers,
                options: CallOptions {
                    print_panics: self.print_panics,
                },
            }),
        })
    }
}
