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
//! `SMOL_OFFLOAD_DEBUG=1` in the environment) or [`debug::DebugMode`] reports every poll that
//! blocks the loop longer than a threshold (100 ms by default), naming the task
//! ([`debug::watch_named`]), its thread and the duration; a watchdog thread reports a poll
//! that is stuck *now*, before it returns; and work that waits too long in a pool's queue is
//! reported with the pool's [`stats`](ThreadPool::stats). Off, it costs nothing: no thread, no
//! timer.
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
//! | worker processes, `smol-offload-wk`, children of the server | building a [`ProcessPool`], and [`remote::serve`], which builds one | they run the tasks. Each leads its own process group and ignores `SIGINT` and `SIGTERM`, so a Ctrl-C reaches the application alone; `PR_SET_PDEATHSIG` kills the server when the application dies, and the workers when the server does |
//! | a panic hook, installed once | building a [`ThreadPool`] or a [`ProcessPool`], [`spawn_dedicated`], the first [`spawn`] | records where a task panicked, for [`Error::panic_location`], and passes every panic on to the hook that was there before. [`leave_panic_hook_alone`] declines it |
//! | catches `SIGINT` and `SIGTERM` | while [`remote::serve`] runs | to stop the worker after the jobs it holds. The program's own handler is still called, and the actions the two signals had are put back when `serve` returns |
//! | threads, all named | the threads of each [`ThreadPool`], the default pool's among them; one per [`LoopThread`], [`spawn_dedicated`] and [`stream_dedicated`]; one dispatcher, `smol-offload-dispatch`, per [`ProcessPool`]; two per [`RemotePool`], `smol-offload-remote-submit` and `-reply`; one answering thread in [`remote::serve`]; `smol-offload-debug`, the watchdog, once debug mode is on | each is part of what the program built, and ends with it; the default pool's threads and the watchdog live as long as the process |
//! | async-io's reactor thread, `async-io` | the first timer ([`Task::timeout`], [`Wait::timeout`]) or process task waiting on its worker's socket, unless `async_io::block_on` drives the reactor | that is how async-io serves timers and sockets; `smol::block_on` drives it instead |
//! | reads environment variables | `SMOL_OFFLOAD_THREADS` when the default pool starts; `SMOL_OFFLOAD_DEBUG` in [`debug::block_on`]; `SMOL_OFFLOAD_REMOTE_KEY`, `SMOL_OFFLOAD_REMOTE_TLS_*` and `SMOL_OFFLOAD_REMOTE_LOG` when a remote pool or worker is built | the remote builders' own settings take precedence |
//! | reads `/proc/self/task` and `/proc/self/exe` | starting the fork server (how many threads run); building a remote pool or worker (the SHA-256 of the executable identifies the build) | |
//! | makes rustls's `ring` provider the process's default | opening a `rediss://` broker, if the program installed no provider | rustls needs one; install yours first to keep it |
//! | writes to stderr | a remote worker's log; a reply a remote pool ignored (forged or altered), and with `SMOL_OFFLOAD_REMOTE_LOG` the worker of each job; debug reports without [`on_report`](debug::DebugMode::on_report); a worker's panics with [`print_panics`](ProcessPoolBuilder::print_panics) | nothing else is printed |
//! | holds file descriptors, all close-on-exec | the link to the fork server; per process pool an eventfd and, per worker, a socket, a pidfd and shared memory; a remote pool's or worker's broker connections | closed when what holds them is dropped |
//!
//! Nothing else: no signal handler outside [`remote::serve`], no `SIGPIPE` from a dead worker
//! (the parent writes to workers with `MSG_NOSIGNAL`), no rlimit, no subreaper, no change to the
//! working directory or the environment.
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

#![deny(unsafe_code)]

pub mod debug;
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
pub mod remote;
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
pub use crate::default_pool::{THREADS_VARIABLE, default_pool, spawn};
pub use crate::error::{BuildError, Error};
pub use crate::executor::Executor;
pub use crate::loop_thread::LoopThread;
pub use crate::panics::leave_panic_hook_alone;
pub use crate::process_pool::room::Ready;
pub use crate::process_pool::server::init;
pub use crate::process_pool::{ProcessPool, ProcessPoolBuilder};
pub use crate::remote::RemotePool;
pub use crate::stats::PoolStats;
pub use crate::stream::{IterStream, stream, stream_dedicated};
pub use crate::task::{Task, Timeout};
pub use crate::task_error::TaskError;
pub use crate::thread_pool::{ThreadPool, ThreadPoolBuilder};
pub use crate::wait::{ReturnWhen, Wait, Waited, gather, try_gather, wait};

/// What the crate's macros expand to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use ctor::ctor;
}

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
