//! Bounded thread and process pools for smol: offload blocking work and await it.
//!
//! An async program must never block its event loop. `smol-offload` hands blocking I/O and
//! CPU-heavy work to a fixed pool of named threads, or of forked worker processes, and gives
//! back a [`Task`] to await: the Rust counterpart of Python's
//! `await loop.run_in_executor(ThreadPoolExecutor(3) | ProcessPoolExecutor(3), f, arg)`. The
//! loop stays responsive, the pool never grows past its size, and a panic in the work comes back
//! as an [`Error`] instead of tearing anything down.
//!
//! # Examples
//!
//! Offload a closure to a pool of three named threads and await its value:
//!
//! ```
//! use smol_offload::ThreadPool;
//!
//! # smol::block_on(async {
//! let pool = ThreadPool::new(3)?;
//! let len = pool.spawn(|| std::fs::read("Cargo.toml").map(|bytes| bytes.len())).await??;
//! assert!(len > 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! Write the async code once against [`Executor`], and choose the pool at the call site:
//!
//! ```
//! use smol_offload::{Executor, ThreadPool, gather};
//!
//! fn blocks(n: u64) -> u64 {
//!     std::thread::sleep(std::time::Duration::from_millis(10));
//!     n * n
//! }
//!
//! async fn run_blocking_tasks(executor: &impl Executor) -> Vec<u64> {
//!     let tasks = (0..6).map(|n| executor.run(blocks, n));
//!     gather(tasks).await.into_iter().map(Result::unwrap).collect()
//! }
//!
//! # smol::block_on(async {
//! let pool = ThreadPool::new(3)?;
//! assert_eq!(run_blocking_tasks(&pool).await, [0, 1, 4, 9, 16, 25]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! Without a pool of your own, [`spawn`] uses a default one sized by `SMOL_OFFLOAD_THREADS`
//! or the number of CPUs:
//!
//! ```
//! # smol::block_on(async {
//! let hash = smol_offload::spawn(|| (0..1000u64).fold(0, |h, x| h ^ x.rotate_left(7))).await?;
//! # let _ = hash;
//! # Ok::<(), smol_offload::Error>(())
//! # }).unwrap();
//! ```
//!
//! [`LoopThread`] is an event loop running in a thread of its own, that any thread or loop hands
//! futures and closures to (`asyncio.run_coroutine_threadsafe`, `call_soon_threadsafe`), and
//! that blocking code waits on with [`LoopThread::block_on`] (aiomisc's `sync_wait_coroutine`):
//!
//! ```
//! # smol::block_on(async {
//! let writer = smol_offload::LoopThread::new("writer")?;
//! let on = writer.spawn(async { std::thread::current().name().map(str::to_owned) }).await?;
//! assert_eq!(on.as_deref(), Some("writer"));
//! writer.stop().await?; // runs what was submitted, then joins the thread
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! A blocking iterator becomes an async stream with a bounded buffer ([`ThreadPool::stream`],
//! [`stream`], [`stream_dedicated`]), and a long job gets a thread of its own
//! ([`spawn_dedicated`]):
//!
//! ```
//! use futures_lite::StreamExt;
//!
//! # smol::block_on(async {
//! let lines = smol_offload::stream(["a", "b", "c"].map(str::to_owned), 2);
//! assert_eq!(lines.map(Result::unwrap).collect::<Vec<_>>().await, ["a", "b", "c"]);
//! let long = smol_offload::spawn_dedicated("long-job", || 2 + 2);
//! assert_eq!(long.await?, 4);
//! # Ok::<(), smol_offload::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Panics and cancellation
//!
//! A panic in offloaded work is caught on the worker: the task resolves to an [`Error`] whose
//! [`is_panic`](Error::is_panic) is true and whose [`panic_message`](Error::panic_message) is
//! the panic's text, and the worker goes on. The error's `Display` also names where the panic
//! happened ([`panic_location`](Error::panic_location)); a worker process prints nothing when its
//! task panics, unless its pool was built with
//! [`print_panics(true)`](ProcessPoolBuilder::print_panics). Dropping a [`Task`] before its work started cancels
//! the work, which then never runs; [`Task::detach`] lets it run unobserved instead. A thread
//! task that has started runs to the end. [`wait`] and [`gather`] await many tasks at once, as
//! `asyncio.wait` and `asyncio.gather` do.
//!
//! Thread work that has started can still stop early on its own: [`cancelled()`] is true inside
//! it once nobody waits for its result (its task was dropped, cancelled or timed out, or its
//! stream was dropped).
//!
//! # Processes and fork safety
//!
//! [`ProcessPool`] runs functions in forked worker processes, for CPU-heavy work that should
//! not share the application's memory or for code that may crash: a worker that dies fails
//! only the task it was running, and the pool forks a replacement. [`Executor::run`] takes a
//! plain `fn(A) -> R` and a serde argument, so the same call works on both pools:
//!
//! ```
//! use smol_offload::{Executor, ProcessPool};
//!
//! fn checksum(data: Vec<u8>) -> u64 {
//!     data.iter().map(|&b| u64::from(b)).sum()
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     smol_offload::init(); // first thing in main, before any thread starts
//!     let pool = ProcessPool::new(2)?;
//!     let sum = smol::block_on(pool.run(checksum, vec![1, 2, 3]))?;
//!     assert_eq!(sum, 6);
//!     Ok(())
//! }
//! ```
//!
//! A function that can fail returns `Result<R, `[`TaskError`]`>`: `?` converts any error into
//! it, keeping its message, its sources and its `io::ErrorKind`, and it crosses to a process
//! and back. A test binary starts the fork server with [`init_for_tests!`].
//!
//! Large arguments and results (over 128 KiB encoded) travel through shared memory rather
//! than the worker's socket. For bytes, use [`ByteBuf`] rather than `Vec<u8>`: serde encodes a
//! `Vec<u8>` one element at a time, a `ByteBuf` as one block, and a large `ByteBuf` reads the
//! shared memory in place instead of being copied out of it. (`serde_bytes::ByteBuf` crosses as
//! one block too, copied once into its own vector.)
//!
//! Forking a process that runs threads copies locks held by threads that do not exist in the
//! child, which can then hang on its first `println!` or allocation. So [`init`] forks a small
//! single-threaded fork server at the start of `main`, and every worker is forked from it,
//! never from the application. When the application dies, even by `SIGKILL`, the server and
//! the workers die with it. `docs/fork-safety.md` in the repository tells the whole story,
//! including how test binaries start the server.
//!
//! # Debug mode
//!
//! The counterpart of `asyncio.run(main(), debug=True)`: [`debug::block_on`] (with
//! `SMOL_OFFLOAD_DEBUG=1` in the environment) or [`debug::DebugMode`] reports the polls that
//! block the loop longer than a threshold, those stuck *now*, and work kept waiting in a pool's
//! queue, as the [`debug`] module tells. Off, it costs nothing: no thread, no timer.
//!
//! ```
//! use std::time::Duration;
//! use smol_offload::debug::{self, DebugMode};
//!
//! DebugMode::new()
//!     .threshold(Duration::from_millis(50))
//!     .on_report(|report| eprintln!("{report}"))
//!     .enable();
//! let pool = smol_offload::ThreadPool::new(1)?;
//! debug::block_on(debug::watch_named("handler", async {
//!     // Offloaded, the sleep blocks a pool thread, not the loop: nothing is reported.
//!     pool.spawn(|| std::thread::sleep(Duration::from_millis(100))).await
//! }))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What the crate does to your process
//!
//! Everything the crate changes in the program's process besides the values it returns: each
//! effect follows from something the program asked for, and is needed by it. The panic hook is
//! the one a program may want the rest without, so it can be declined.
//!
//! | effect | when | why, or how to avoid it |
//! | --- | --- | --- |
//! | forks the fork server, a child process named `smol-offload-fs` | [`init`]; [`init_for_tests!`], from a constructor before `main`; or the first [`ProcessPool`] (also a remote worker's) built without them | workers must be forked from a single-threaded process. Without process pools there is no server |
//! | registers an `atexit` handler | with the fork server | at a normal exit it closes the link and reaps the server, which kills and reaps its workers: no process or zombie outlives the program |
//! | worker processes, `smol-offload-wk`, children of the server | building a [`ProcessPool`], and `smol_offload_remote::serve`, which builds one | they run the tasks. Each leads its own process group and ignores `SIGINT` and `SIGTERM`, so a Ctrl-C reaches the application alone; `PR_SET_PDEATHSIG` kills the server when the application dies, and the workers when the server does |
//! | a panic hook, installed once | building a [`ThreadPool`] or a [`ProcessPool`], [`spawn_dedicated`], the first [`spawn`] | records where a task panicked, for [`Error::panic_location`], and passes every panic on to the hook that was there before. [`leave_panic_hook_alone`] declines it |
//! | catches `SIGINT` and `SIGTERM` | while `smol_offload_remote::serve` runs | to stop the worker after the jobs it holds. The program's own handler is still called, and the actions the two signals had are put back when `serve` returns |
//! | threads, all named | the threads of each [`ThreadPool`], the default pool's among them; one per [`LoopThread`], [`spawn_dedicated`] and [`stream_dedicated`]; one dispatcher, `smol-offload-dispatch`, per [`ProcessPool`]; two per `smol_offload_remote::RemotePool`, `smol-offload-remote-submit` and `-reply`; one answering thread in `smol_offload_remote::serve`; `smol-offload-debug`, the watchdog, once debug mode is on | each is part of what the program built, and ends with it; the default pool's threads and the watchdog live as long as the process |
//! | async-io's reactor thread, `async-io` | the first timer ([`Task::timeout`], [`Wait::timeout`]) or process task waiting on its worker's socket, unless `async_io::block_on` drives the reactor | that is how async-io serves timers and sockets; `smol::block_on` drives it instead |
//! | reads environment variables | `SMOL_OFFLOAD_THREADS` when the default pool starts; `SMOL_OFFLOAD_DEBUG` in [`debug::block_on`]; `SMOL_OFFLOAD_REMOTE_KEY`, `SMOL_OFFLOAD_REMOTE_TLS_*` and `SMOL_OFFLOAD_REMOTE_LOG` when a remote pool or worker is built | the remote builders' own settings take precedence |
//! | reads `/proc/self/task` and `/proc/self/exe` | starting the fork server (how many threads run); building a remote pool or worker (the SHA-256 of the executable identifies the build) | |
//! | makes rustls's `ring` provider the process's default | opening a `rediss://` broker, if the program installed no provider | rustls needs one; install yours first to keep it |
//! | writes to stderr | a remote worker's log; a reply a remote pool ignored (forged or altered), and with `SMOL_OFFLOAD_REMOTE_LOG` the worker of each job; debug reports without [`on_report`](debug::DebugMode::on_report); a worker's panics with [`print_panics`](ProcessPoolBuilder::print_panics) | nothing else is printed |
//! | holds file descriptors, all close-on-exec | the link to the fork server; per process pool an eventfd and, per worker, a socket, a pidfd and shared memory; a remote pool's or worker's broker connections | closed when what holds them is dropped |
//!
//! Nothing else: no signal handler outside `smol_offload_remote::serve`, no `SIGPIPE` from a dead worker
//! (the parent writes to workers with `MSG_NOSIGNAL`), no rlimit, no subreaper, no change to the
//! working directory or the environment.
//!
//! # Metrics
//!
//! With the `metrics` feature, every [`ThreadPool`], [`ProcessPool`] and `smol_offload_remote::RemotePool`
//! records through the [`metrics`](https://docs.rs/metrics) facade, so that any exporter
//! (Prometheus, StatsD, OpenTelemetry bridges) picks it up. A pool resolves its handles with
//! the recorder installed when it is **built**: install the recorder first (a pool built
//! before records nothing). Every metric has the labels `pool`, the name given to the
//! builder's `name` (e.g. [`ThreadPoolBuilder::name`]; `"unnamed"` without one, `"default"`
//! for the pool of [`spawn`]), and `kind`, one of `thread`, `process`, `remote`.
//!
//! - **`smol_offload_tasks_total`** (counter, tasks; a third label `outcome`): a task ended.
//!   Counted once per task that reached the pool, when its result is delivered (or, if it never
//!   ran, when the pool lets it go). Outcomes:
//!   - `ok`: the work returned a value (and, for processes, it was read back);
//!   - `panic`: the work panicked ([`Error::is_panic`]);
//!   - `worker_died`: the worker process running it died ([`Error::is_worker_died`]);
//!   - `cancelled`: the task was dropped or [cancelled](Task::cancel) before the work started,
//!     which then never ran, or a process worker was killed because its task gave up on it;
//!   - `timeout`: the time limit ran out before the result came: [`Task::timeout`] (a thread's
//!     work runs on to its end and is counted here, not as `ok`), a process pool's
//!     [`task_timeout`](ProcessPoolBuilder::task_timeout) or a remote pool's timeout;
//!   - `error`: any other failure: an argument or a result that does not deserialize on the
//!     other side ([`Error::is_codec`]), the pool shut down or broke
//!     ([`Error::is_shutdown`]), its initializer failed ([`Error::is_initializer_failure`]),
//!     a remote broker failed.
//!
//!   A task refused before it reaches the pool (its argument does not serialize on the calling
//!   thread) is not counted.
//! - **`smol_offload_queue_wait_seconds`** (histogram, seconds): from the `run` or `spawn`
//!   call to the start of the work, recorded when it starts, for every task that starts. The
//!   start is when a pool thread begins the closure; for a process, when the job is sent to a
//!   worker (a small job may be sent ahead to a busy worker, and waits in its socket after
//!   that); for a remote pool, when the worker's started notice reaches this process. A remote
//!   worker sends that notice only for a job that runs longer than about a millisecond: a
//!   shorter one is answered first, and records neither histogram (its outcome is counted).
//! - **`smol_offload_run_seconds`** (histogram, seconds): from the start of the work to its
//!   end, recorded when the task ends, for every task that started: the closure returned or
//!   panicked; the process's reply was read or its death noticed; the remote reply came in.
//! - **`smol_offload_workers`** (gauge, workers): the pool's threads from build until the pool
//!   is dropped; a process pool's live workers, down when one dies or is retired and up again
//!   when its replacement is forked, 0 once the pool has shut down; a remote fleet's worker
//!   processes when last asked (`RemotePool::fleet`, at build).
//! - **`smol_offload_queued`** (gauge, tasks): submitted and not picked by a worker yet, as
//!   in [`PoolStats::queued`].
//! - **`smol_offload_running`** (gauge, tasks): picked and not ended yet, as in
//!   [`PoolStats::running`]; back to 0 when the pool is idle.
//!
//! The gauges move by increments and decrements, so pools that share a name and a kind add
//! up. The handles are built once per pool, with their labels: recording a task costs two
//! clock reads and the recorder's own work, no allocation. Without the feature, none of this
//! code is compiled.
//!
//! # Platforms
//!
//! Linux only: the pools use `fork`, `eventfd`, `prctl(PR_SET_PDEATHSIG)` and
//! `/proc/self/task`. Building for another target stops with an error saying so.
//!
//! # Feature flags
//!
//! - `tracing` (off by default): the [`tracing`](https://docs.rs/tracing) span current where work
//!   is submitted to a thread ([`ThreadPool::spawn`], [`Executor::run`], [`spawn`],
//!   [`spawn_dedicated`], the streams, [`LoopThread::spawn`], `spawn_local`, `call` and
//!   `block_on`) is entered around the work on its thread, so what the work logs has the
//!   submitter's span as parent. A [`ProcessPool`] task cannot take the span into its worker
//!   process: what it logs there is inside an `INFO` span `smol_offload_task` (target
//!   `smol_offload::task`) with the task's `task_id` and `submitted_in`, the submitting span's
//!   name, and the application logs the same `task_id` in a `DEBUG` event inside the submitting
//!   span. Workers inherit a global subscriber set before [`init`]; set one later in
//!   [`ProcessPoolBuilder::initializer`]. Debug mode's reports also go out as `WARN` events on
//!   the target `smol_offload::debug`.
//! - `metrics` (off by default): the pools' task counts, queue waits, run times and gauges
//!   through the [`metrics`](https://docs.rs/metrics) facade (its 0.24 line): see
//!   [Metrics](#metrics).

#![deny(unsafe_code)]

pub mod debug;

/// The names of the environment variables the crate reads (debug mode's is
/// [`debug::DEBUG_VARIABLE`]).
pub mod env {
    pub use crate::default_pool::THREADS_VARIABLE;
}
#[cfg(not(target_os = "linux"))]
compile_error!(
    "smol-offload runs on Linux only: its pools need fork, eventfd, prctl(PR_SET_PDEATHSIG) \
     and /proc; build on Linux (or in a Linux container or VM)"
);

mod byte_buf;
mod cancel;
mod codec;
mod dedicated;
mod default_pool;
mod error;
mod executor;
mod init_for_tests;
mod job_queue;
mod loop_executor;
mod loop_thread;
mod panics;
mod process_pool;
mod stats;
mod stream;
mod sys;
mod task;
mod task_error;
mod thread_pool;
mod wait;

pub use crate::byte_buf::ByteBuf;
pub use crate::cancel::cancelled;
pub use crate::dedicated::spawn_dedicated;
pub use crate::default_pool::{default_pool, spawn};
pub use crate::error::{BuildError, Error};
pub use crate::executor::Executor;
pub use crate::loop_thread::LoopThread;
pub use crate::panics::leave_panic_hook_alone;
pub use crate::process_pool::Ready;
pub use crate::process_pool::server::init;
pub use crate::process_pool::{ProcessPool, ProcessPoolBuilder};
pub use crate::stats::PoolStats;
pub use crate::stream::{IterStream, stream, stream_dedicated};
pub use crate::task::{Task, Timeout};
pub use crate::task_error::TaskError;
pub use crate::thread_pool::{ThreadPool, ThreadPoolBuilder};
pub use crate::wait::{ReturnWhen, Wait, Waited, gather, try_gather, wait};

// What the sibling crate `smol-offload-remote` builds its pool on; hidden, no stability promise.
#[doc(hidden)]
#[path = "remote_hooks.rs"]
pub mod __remote;

/// What the crate's macros expand to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use ctor::ctor;
}

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
