//! [`ProcessPool`]: a fixed number of forked worker processes behind the same [`Executor`].

// Imports flow one way, each module using only those listed above it:
// out_of_line → wire → worker → job → server → worker_link → shared → dying → dispatcher.
mod dispatcher;
mod dying;
mod job;
pub(crate) mod out_of_line;
pub(crate) mod raw;
pub(crate) mod server;
mod shared;
pub(crate) mod wire;
mod worker;
mod worker_link;

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::byte_buf;
use crate::codec;
use crate::error::{BuildError, BuildErrorKind, Error, ErrorKind, worker_count};
use crate::executor::Executor;
use crate::panics::{self, Caught, Reporting};
use crate::stats::PoolStats;
use crate::sys::{self, CallStatus, ErasedCall, LoadedCode};
use crate::task::{self, Promise, Task};
use dispatcher::Dispatcher;
use job::{Completion, Job};
pub use shared::Ready;
use shared::{Initializer, LoanAssist, Placed, PoolOptions, RoomAssist, Shared};
use wire::{CallOptions, Carried, Payload, Reply};

/// A pool of a fixed number of worker processes, the counterpart of Python's
/// `ProcessPoolExecutor(max_workers=n)`, behind the same [`Executor`] as
/// [`ThreadPool`](crate::ThreadPool).
///
/// Each worker is a process forked (without `exec`) from the fork server that [`init`](crate::init)
/// starts, so it runs the same program: [`Executor::run`] sends it the address of `f` and the
/// postcard encoding of the argument, and it sends back the encoded result. A function whose
/// code lies in a shared library loaded after `init` (with `dlopen`) is not at that address in a
/// worker: `run` refuses it, with an error naming the library. A worker runs one
/// task at a time. A panic in `f` comes back as an [`Error`] and the worker goes on; a worker that
/// dies (a signal, `abort`, `exit`) fails only the task it was running, with an error naming its
/// pid and how it ended, and the pool forks a replacement. Tasks sent to it that it had not
/// started run on another worker.
///
/// Nothing a worker does can hang the pool, another pool or the application's exit: a worker
/// that closes its socket and lives on, or sends bytes that are no reply, is killed and its task
/// fails saying so; a worker's death is seen from its pidfd even while a process it forked holds
/// its socket. Each worker leads its own process group, killed with it, so what a task forks
/// does not outlive its worker. If no worker can be forked for a while, the pool tries again
/// with backoff, and after repeated failures fails every task with the reason.
///
/// A call made while a worker is idle and nothing is queued goes straight to that worker: the
/// calling thread writes the request, and the task reads the reply itself when it is awaited,
/// sleeping on the worker's socket in smol's reactor. Such a task has started when `run`
/// returns, so dropping it no longer cancels it. Other calls wait in the pool's queue for its
/// dispatcher thread, which also sends short tasks ahead to busy workers when the queue is deep.
///
/// Dropping the last handle ends the pool: queued tasks resolve with a shutdown error, running
/// ones finish (a worker that stays stopped meanwhile is killed), then the workers exit; one
/// that does not within 2 s is killed. If the application dies, even by `SIGKILL`, the fork
/// server and the workers exit with it.
///
/// # Stopping, recycling and bounding the work
///
/// Unlike a thread, a worker process can be stopped, and the pool does so when the work it runs
/// is no longer wanted:
///
/// - [`Task::timeout`] and [`Task::cancel`] on a task that has started kill its worker
///   (`SIGKILL`, with the worker's process group) and resolve at once, with
///   [`is_timeout`](Error::is_timeout) or [`is_cancelled`](Error::is_cancelled); the pool forks
///   a replacement, so the next task does not wait for abandoned work. Dropping a started task
///   kills its worker only with [`kill_on_drop(true)`](ProcessPoolBuilder::kill_on_drop).
///   Tasks sent ahead to that worker that had not started go to other workers.
/// - [`task_timeout`](ProcessPoolBuilder::task_timeout) is a hard time limit for every task,
///   enforced by the pool even for detached tasks and tasks nobody polls.
/// - [`max_tasks_per_worker`](ProcessPoolBuilder::max_tasks_per_worker) replaces each worker
///   after a number of tasks, for code that leaks.
/// - [`initializer`](ProcessPoolBuilder::initializer) runs once in every new worker before
///   its first task, to load what the tasks share.
/// - [`queue_limit`](ProcessPoolBuilder::queue_limit) bounds the queue, and
///   [`ready`](ProcessPool::ready) lets a producer wait for room: without it the queue is
///   unbounded, as in Python's `ProcessPoolExecutor`.
///
/// ```
/// use std::time::Duration;
/// use smol_offload::{Executor, ProcessPool};
///
/// fn sleep_ms(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     smol_offload::init();
///     let pool = ProcessPool::new(1)?;
///     let stuck = pool.pids();
///     smol::block_on(async {
///         // The only worker is killed at the time limit: the next task runs at once.
///         let late = pool.run(sleep_ms, 60_000).timeout(Duration::from_millis(50)).await;
///         assert!(late.unwrap_err().is_timeout());
///         assert_eq!(pool.run(sleep_ms, 1).await?, 1);
///         assert_ne!(pool.pids(), stuck);
///         Ok(())
///     })
/// }
/// ```
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

    /// How many worker processes the pool keeps: the number it was built with. While a
    /// replacement cannot be forked, fewer run: [`pids`](ProcessPool::pids) lists those.
    pub fn workers(&self) -> usize {
        self.handle.workers
    }

    /// The pool's name, given to [`ProcessPoolBuilder::name`], else `"unnamed"`.
    pub fn name(&self) -> &str {
        self.handle.shared.name()
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

    /// Waits until the pool's queue has room for one more task, for a producer that must not
    /// run ahead of the workers. Resolves at once without a
    /// [`queue_limit`](ProcessPoolBuilder::queue_limit), and once the pool is shut down.
    ///
    /// Room is not reserved: another producer may take it first, and the next
    /// [`run`](Executor::run) then returns a task that waits for room (see
    /// [`queue_limit`](ProcessPoolBuilder::queue_limit)).
    ///
    /// # Examples
    ///
    /// A producer that keeps at most 4 tasks queued, however many it submits:
    ///
    /// ```
    /// use smol_offload::{Executor, ProcessPool};
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     smol_offload::init();
    ///     let pool = ProcessPool::builder().workers(2).queue_limit(4).build()?;
    ///     let (sender, results) = std::sync::mpsc::channel();
    ///     smol::block_on(async {
    ///         for n in 0..100u64 {
    ///             pool.ready().await;
    ///             assert!(pool.stats().queued <= 4);
    ///             let sender = sender.clone();
    ///             let task = pool.run(|n: u64| n * n, n);
    ///             smol::spawn(async move { sender.send(task.await.unwrap()).unwrap() }).detach();
    ///         }
    ///     });
    ///     drop(sender);
    ///     assert_eq!(results.iter().sum::<u64>(), (0..100).map(|n| n * n).sum());
    ///     Ok(())
    /// }
    /// ```
    pub fn ready(&self) -> Ready {
        Ready::new(self.handle.shared.clone())
    }

    /// Submits `job`, whose promise `task` awaits: the task then helps with a loan or waits
    /// for room as needed, and a started task that is abandoned kills its worker.
    pub(crate) fn place<T>(&self, job: Job, task: Task<T>) -> Task<T> {
        let task = task.with_abandon(self.handle.shared.clone());
        match self.handle.shared.submit(job) {
            Ok(Placed::Queued) => task,
            Ok(Placed::Full(job)) => {
                task.with_assist(Box::new(RoomAssist::new(self.handle.shared.clone(), job)))
            }
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
}

impl crate::executor::Sealed for ProcessPool {}

impl Executor for ProcessPool {
    #[track_caller]
    fn run<A, R>(&self, f: fn(A) -> R, arg: A) -> Task<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let call = sys::erase(f);
        if let Some(refusal) = call.refusal_in_workers() {
            return Task::ready(Err(Error::new(ErrorKind::ForeignCode(refusal))));
        }
        let arg = match encode_argument(&arg) {
            Ok(bytes) => bytes,
            Err(error) => return Task::ready(Err(error)),
        };
        let timer = self.handle.shared.counters.metrics.timer();
        let (promise, task) = task::timed_pair::<R>(timer);
        if crate::debug::is_enabled() {
            let (shared, workers) = (Arc::downgrade(&self.handle.shared), self.handle.workers);
            let at = std::panic::Location::caller();
            let name = self.handle.shared.name().into();
            crate::debug::watch_queued(&task, "ProcessPool", name, at, move || {
                Some(shared.upgrade()?.counters.snapshot(workers))
            });
        }
        let job = Job {
            call,
            options: self.handle.options,
            context: Carried::capture(),
            arg,
            lost: 0,
            completion: Box::new(promise),
        };
        self.place(job, task)
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

/// The typed end of a process task: decodes the worker's reply into the task's result. Below
/// `run` and this, jobs travel as bytes.
impl<R: DeserializeOwned + Send> Completion for Promise<R> {
    fn start(&self) -> bool {
        Promise::start(self)
    }

    fn is_abandoned(&self) -> bool {
        Promise::is_abandoned(self)
    }

    fn is_cancelled(&self) -> bool {
        Promise::is_cancelled(self)
    }

    fn finish(self: Box<Self>, reply: Reply) {
        let text = || String::from_utf8_lossy(&reply.payload.as_slice()).into_owned();
        let result = match reply.status {
            // The user's `Deserialize` runs here, on the dispatcher or the awaiting thread: its
            // panic is the task's.
            CallStatus::Returned => panics::catch(Reporting::Chain, || {
                let decoded = match &reply.payload {
                    // Read as it is decoded, its memory given back as it goes.
                    Payload::Stream(stream) => codec::decode_stream(stream.reader(), stream.len()),
                    Payload::Inline(bytes) => codec::decode(bytes),
                    // A `ByteBuf` in a result that came through shared memory reads it in place.
                    Payload::Shared(mapping) => {
                        byte_buf::with_backing(mapping, || codec::decode(mapping.as_slice()))
                    }
                };
                decoded
                    .map_err(|err| Error::codec("deserialize the result", err.message, err.source))
            })
            .unwrap_or_else(|caught| Err(Error::from_caught(caught))),
            CallStatus::Panicked => Err(match codec::decode::<Caught>(&reply.payload.as_slice()) {
                Ok(caught) => Error::from_caught(caught),
                Err(_) => Error::new(ErrorKind::Panic(text())),
            }),
            CallStatus::BadArgument => Err(Error::codec(
                "deserialize the argument in the worker",
                text(),
                None,
            )),
            CallStatus::BadResult => Err(Error::codec(
                "serialize the result in the worker",
                text(),
                None,
            )),
        };
        // An unread value (its task was dropped) is dropped here, and its destructor may panic.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(move || self.complete(result)));
    }

    fn fail(self: Box<Self>, error: Error) {
        self.complete(Err(error));
    }
}

// Whether forked workers have the code an [`ErasedCall`] names, checked by `run` (and by `build`
// for an initializer) before any worker is sent to an address: a forked worker has the code
// loaded when the fork server was forked. The loaded objects are listed by `sys::LoadedCode`.
impl ErasedCall {
    /// Why a worker forked from the fork server could not run this call, if it could not: an
    /// address that lies in a shared library loaded after the server was forked (`dlopen`), or
    /// in no loaded object, is not that code in a worker, which would jump to whatever is there.
    /// Cheap when both addresses lie in the executable, as they do unless code is loaded
    /// dynamically.
    pub(crate) fn refusal_in_workers(self) -> Option<String> {
        let executable = sys::executable_span();
        if self.parts().iter().all(|(_, at)| executable.contains(at)) {
            return None;
        }
        self.refusal_against(sys::code_of_workers(), &LoadedCode::now())
    }

    /// [`refusal_in_workers`](ErasedCall::refusal_in_workers) for workers forked when the code
    /// loaded was `at_fork` (none: no worker was ever forked), with `now` loaded now.
    #[cold]
    pub(crate) fn refusal_against(
        self,
        at_fork: Option<&LoadedCode>,
        now: &LoadedCode,
    ) -> Option<String> {
        let cannot = "cannot run the task in a worker process";
        for (what, address) in self.parts() {
            let Some(object) = now.containing(address) else {
                return Some(format!(
                    "{cannot}: {what} at {address:#x} lies in no loaded object"
                ));
            };
            if now.is_executable(object) {
                continue;
            }
            let forked_with = at_fork.and_then(|code| {
                code.objects
                    .iter()
                    .find(|old| old.path == object.path && old.base == object.base)
                    .map(|_| code.unloaded)
            });
            let path = &object.path;
            match forked_with {
                Some(unloaded) if unloaded == now.unloaded => continue,
                Some(_) => {
                    return Some(format!(
                        "{cannot}: {what} lies in the shared library {path}, and a library was \
                         unloaded since the fork server started, so this one may not be the code \
                         that the workers have at that address; run the function on a \
                         ThreadPool, or keep libraries loaded"
                    ));
                }
                None => {
                    return Some(format!(
                        "{cannot}: {what} lies in the shared library {path}, loaded (or \
                         reloaded) after the fork server started, so the workers (forked from \
                         that server) do not have it; load the library before \
                         smol_offload::init(), or run the function on a ThreadPool"
                    ));
                }
            }
        }
        None
    }
}

impl fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessPool")
            .field("name", &self.name())
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
    options: PoolOptions,
    /// Why an option given cannot be used, said by `build`.
    invalid: Option<String>,
    print_panics: bool,
}

impl ProcessPoolBuilder {
    /// The number of worker processes. Without it, the pool has one per CPU.
    pub fn workers(mut self, workers: usize) -> ProcessPoolBuilder {
        self.workers = Some(workers);
        self
    }

    /// Whether dropping a task whose work has started kills the worker running it. Off by
    /// default, as in `tokio::process::Command::kill_on_drop`: a started task that is dropped
    /// runs to the end and its result is dropped. [`Task::detach`] never kills.
    ///
    /// [`Task::timeout`] and [`Task::cancel`] kill a started task's worker either way.
    ///
    /// # Examples
    ///
    /// ```
    /// use smol_offload::{Executor, ProcessPool};
    ///
    /// fn sleep_forever(_: ()) {
    ///     std::thread::sleep(std::time::Duration::MAX);
    /// }
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     smol_offload::init();
    ///     let pool = ProcessPool::builder().workers(1).kill_on_drop(true).build()?;
    ///     let stuck = pool.run(sleep_forever, ());
    ///     let before = pool.pids();
    ///     drop(stuck); // started on the idle worker: the worker is killed and replaced
    ///     smol::block_on(pool.run(|n: u32| n + 1, 1))?;
    ///     assert_ne!(pool.pids(), before);
    ///     Ok(())
    /// }
    /// ```
    pub fn kill_on_drop(mut self, kill: bool) -> ProcessPoolBuilder {
        self.options.kill_on_drop = kill;
        self
    }

    /// A hard time limit for every task of the pool, like billiard's `time_limit`: a task that
    /// runs longer has its worker killed (`SIGKILL`, with the worker's process group), resolves
    /// with an error whose [`is_timeout`](crate::Error::is_timeout) is true, and the pool forks
    /// a replacement.
    ///
    /// The pool's dispatcher enforces it, so it holds for detached tasks and for tasks nobody
    /// polls. A task's time starts when the worker is known to start it: when its request is
    /// sent to an idle worker, or when the reply of the task before it comes in. Queued time
    /// does not count. For one task, [`Task::timeout`] does the same from the caller's side.
    ///
    /// # Errors
    ///
    /// [`build`](ProcessPoolBuilder::build) refuses a zero limit.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use smol_offload::{Executor, ProcessPool};
    ///
    /// fn sleep_ms(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     smol_offload::init();
    ///     let pool = ProcessPool::builder()
    ///         .workers(1)
    ///         .task_timeout(Duration::from_millis(200))
    ///         .build()?;
    ///     smol::block_on(async {
    ///         assert_eq!(pool.run(sleep_ms, 1).await?, 1);
    ///         let err = pool.run(sleep_ms, 60_000).await.unwrap_err();
    ///         assert!(err.is_timeout());
    ///         // The stuck worker was killed and replaced: the pool goes on at once.
    ///         assert_eq!(pool.run(sleep_ms, 2).await?, 2);
    ///         Ok(())
    ///     })
    /// }
    /// ```
    pub fn task_timeout(mut self, limit: Duration) -> ProcessPoolBuilder {
        self.options.task_timeout = Some(limit);
        self
    }

    /// Runs `f(arg)` once in every new worker before its first task, like `initializer` and
    /// `initargs` of Python's `ProcessPoolExecutor`: to load a model, open a connection, or
    /// fill a cache that the pool's tasks then use. What `f` leaves in the worker's memory (a
    /// `static` `OnceLock`, say) is there for every task that worker runs. Every worker runs it:
    /// those forked by [`build`](ProcessPoolBuilder::build), and every replacement (after a
    /// crash, a kill, or [`max_tasks_per_worker`](ProcessPoolBuilder::max_tasks_per_worker)).
    /// A worker takes no task until its initializer returned.
    ///
    /// Workers are forked from the application as it was at [`init`](crate::init): whatever
    /// the application set up later, such as a `tracing` subscriber set after `init`, is not
    /// in them, and the initializer is where to set it up.
    ///
    /// If `f` panics, the worker is discarded and a replacement is forked after a delay that
    /// doubles with each failure in a row (50 ms, 100 ms, ... up to 5 s): never a tight fork
    /// loop. While no other worker can run them, the tasks waiting in the queue fail with an
    /// error whose [`is_initializer_failure`](crate::Error::is_initializer_failure) is true and
    /// whose message names the initializer's panic (which the worker also prints, as a task's,
    /// with [`print_panics(true)`](ProcessPoolBuilder::print_panics)). After 5 failures in a
    /// row with no worker left, the pool breaks: every task fails with
    /// [`is_shutdown`](crate::Error::is_shutdown) and a message that says so. A task never
    /// runs in a worker whose initializer failed. With a
    /// [`task_timeout`](ProcessPoolBuilder::task_timeout), an initializer that runs longer
    /// than the limit is killed and counts as failed; without one, tasks wait for it.
    ///
    /// # Errors
    ///
    /// [`build`](ProcessPoolBuilder::build) fails if `arg` cannot be serialized.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::OnceLock;
    /// use smol_offload::{Executor, ProcessPool};
    ///
    /// /// Loaded once in each worker, read by every task it runs.
    /// static GREETING: OnceLock<String> = OnceLock::new();
    ///
    /// fn load(greeting: String) {
    ///     GREETING.set(greeting).unwrap();
    /// }
    ///
    /// fn greet(name: String) -> String {
    ///     format!("{}, {name}", GREETING.get().expect("set by the initializer"))
    /// }
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     smol_offload::init();
    ///     let pool = ProcessPool::builder()
    ///         .workers(2)
    ///         .initializer(load, "hello".to_string())
    ///         .build()?;
    ///     let greeting = smol::block_on(pool.run(greet, "world".to_string()))?;
    ///     assert_eq!(greeting, "hello, world");
    ///     Ok(())
    /// }
    /// ```
    pub fn initializer<A>(mut self, f: fn(A), arg: A) -> ProcessPoolBuilder
    where
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        match encode_argument(&arg) {
            Ok(arg) => {
                let call = sys::erase(f);
                self.options.initializer = Some(Initializer { call, arg });
            }
            Err(err) => {
                self.invalid = Some(match err.panic_message() {
                    Some(message) => {
                        format!("serializing the initializer's argument panicked: {message}")
                    }
                    None => format!("the initializer's argument: {err}"),
                })
            }
        }
        self
    }

    /// Replaces each worker after it has run `tasks` tasks, like `max_tasks_per_child` in
    /// Python's `ProcessPoolExecutor` and billiard: for task code that leaks memory or other
    /// resources, a fresh process every `tasks` tasks.
    ///
    /// A worker is never sent more tasks than it has left, also when short tasks are sent
    /// ahead; after its last reply its socket is closed, it exits, and the pool forks a
    /// replacement. No task fails or waits for a worker that is about to go. Without it,
    /// workers live as long as the pool (unless they die).
    ///
    /// # Errors
    ///
    /// [`build`](ProcessPoolBuilder::build) refuses 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::collections::HashSet;
    /// use smol_offload::{Executor, ProcessPool};
    ///
    /// fn pid(_: ()) -> u32 {
    ///     std::process::id()
    /// }
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     smol_offload::init();
    ///     let pool = ProcessPool::builder().workers(1).max_tasks_per_worker(2).build()?;
    ///     let pids = smol::block_on(async {
    ///         let mut pids = Vec::new();
    ///         for _ in 0..6 {
    ///             pids.push(pool.run(pid, ()).await?);
    ///         }
    ///         Ok::<_, smol_offload::Error>(pids)
    ///     })?;
    ///     // Two tasks per worker: three workers ran the six tasks, one after the other.
    ///     assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 3);
    ///     assert!(pids.chunks(2).all(|pair| pair[0] == pair[1]));
    ///     Ok(())
    /// }
    /// ```
    pub fn max_tasks_per_worker(mut self, tasks: usize) -> ProcessPoolBuilder {
        self.options.max_tasks_per_worker = Some(tasks);
        self
    }

    /// At most `limit` tasks wait in the pool's queue: backpressure for a producer that
    /// submits faster than the workers run tasks. Without it the queue is unbounded, like
    /// Python's `ProcessPoolExecutor`: every submitted task waits in memory, with its
    /// argument.
    ///
    /// [`Executor::run`] stays synchronous. When the queue is full, `run` returns a task that
    /// holds its job and puts it in the queue itself, once there is room, when it is awaited
    /// (or polled by [`wait`](crate::wait) or [`gather`](crate::gather)). Such a task has not
    /// started: dropping it drops the job. A task detached while it waits for room joins an
    /// overflow list that moves into the queue, in order, as room frees: only detached tasks
    /// can make memory grow past the limit.
    ///
    /// To keep memory flat, a producer awaits [`ProcessPool::ready`] before each `run`: the
    /// queue then holds at most `limit` jobs and the producer at most one more.
    ///
    /// # Errors
    ///
    /// [`build`](ProcessPoolBuilder::build) refuses a limit of 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use smol_offload::{Executor, ProcessPool};
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     smol_offload::init();
    ///     let pool = ProcessPool::builder().workers(1).queue_limit(2).build()?;
    ///     smol::block_on(async {
    ///         // More tasks than the queue holds: the last ones wait for room as they are awaited.
    ///         let tasks: Vec<_> = (0..10u64).map(|n| pool.run(|n: u64| n + 1, n)).collect();
    ///         assert!(pool.stats().queued <= 2);
    ///         let values = smol_offload::try_gather(tasks).await?;
    ///         assert_eq!(values, (1..=10).collect::<Vec<u64>>());
    ///         Ok(())
    ///     })
    /// }
    /// ```
    pub fn queue_limit(mut self, limit: usize) -> ProcessPoolBuilder {
        self.options.queue_limit = Some(limit);
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

    /// Names the pool: its `pool` label in metrics (feature `metrics`) and its name in debug
    /// mode's reports. Without it, the pool is `"unnamed"`.
    ///
    /// # Examples
    ///
    /// ```
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     smol_offload::init();
    ///     let pool = smol_offload::ProcessPool::builder().name("thumbnails").workers(1).build()?;
    ///     assert_eq!(pool.name(), "thumbnails");
    ///     Ok(())
    /// }
    /// ```
    pub fn name(mut self, name: &str) -> ProcessPoolBuilder {
        self.options.name = Some(name.to_owned());
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
        let setting = |why: &str| Err(BuildError::new(BuildErrorKind::Setting(why.into())));
        if let Some(message) = self.invalid {
            return setting(&message);
        }
        if self.options.task_timeout == Some(Duration::ZERO) {
            return setting("task_timeout must be longer than zero: no task could finish");
        }
        if self.options.max_tasks_per_worker == Some(0) {
            return setting("max_tasks_per_worker must be at least 1: a worker must run a task");
        }
        if self.options.queue_limit == Some(0) {
            return setting("queue_limit must be at least 1: a pool needs room to queue one task");
        }
        let link = server::link_or_start()?;
        // Checked once the server runs: code loaded before it started is the workers' too.
        if let Some(refusal) = self
            .options
            .initializer
            .as_ref()
            .and_then(|initializer| initializer.call.refusal_in_workers())
        {
            return setting(&format!("the initializer: {refusal}"));
        }
        // For the user's serde code that runs in this process: its panics get a location.
        panics::install_hook();
        let io_error = |doing| move |source| BuildError::new(BuildErrorKind::Io { doing, source });
        let shared = Arc::new(
            Shared::with_options(PoolOptions {
                print_panics: self.print_panics,
                ..self.options
            })
            .map_err(io_error("create the pool's eventfd"))?,
        );
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
