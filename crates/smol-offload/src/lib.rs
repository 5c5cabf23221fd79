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
//! Large arguments and results (over 128 KiB encoded) travel through shared memory rather
//! than the worker's socket. For bytes, use [`ByteBuf`] rather than `Vec<u8>`: serde encodes a
//! `Vec<u8>` one element at a time, a `ByteBuf` as one block, and a large `ByteBuf` reads the
//! shared memory in place instead of being copied out of it.
//!
//! Forking a process that runs threads copies locks held by threads that do not exist in the
//! child, which can then hang on its first `println!` or allocation. So [`init`] forks a small
//! single-threaded fork server at the start of `main`, and every worker is forked from it,
//! never from the application. When the application dies, even by `SIGKILL`, the server and
//! the workers die with it. `docs/fork-safety.md` in the repository tells the whole story,
//! including how test binaries start the server.
//!
//! # Feature flags
//!
//! None yet: everything is on by default.

#![deny(unsafe_code)]

mod byte_buf;
mod codec;
mod default_pool;
mod error;
mod executor;
mod job_queue;
mod panics;
mod process_pool;
pub mod remote;
mod stats;
mod sys;
mod task;
mod thread_pool;
mod wait;

pub use crate::byte_buf::ByteBuf;
pub use crate::default_pool::{THREADS_VARIABLE, default_pool, spawn};
pub use crate::error::{BuildError, Error};
pub use crate::executor::Executor;
pub use crate::process_pool::server::init;
pub use crate::process_pool::{ProcessPool, ProcessPoolBuilder};
pub use crate::remote::RemotePool;
pub use crate::stats::PoolStats;
pub use crate::task::{Task, Timeout};
pub use crate::thread_pool::{ThreadPool, ThreadPoolBuilder};
pub use crate::wait::{ReturnWhen, Wait, Waited, gather, try_gather, wait};

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
