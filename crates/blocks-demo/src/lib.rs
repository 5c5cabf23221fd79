//! The blocks(n) demo of Python's run_in_executor on smol-offload's thread and process pools.
//!
//! Python's asyncio documentation shows `run_in_executor` with a function `blocks(n)` that logs,
//! sleeps 0.1 s and returns `n ** 2`, run six times on a `ThreadPoolExecutor(3)` and then on a
//! `ProcessPoolExecutor(3)`, with logs that show which thread or process ran each call. This
//! crate is that demo on `smol-offload`: [`blocks()`] and [`run_blocking_tasks`] are written once
//! against [`Executor`](smol_offload::Executor), and the binaries only choose the pool.
//!
//! - `blocks-thread` runs it on a [`ThreadPool`](smol_offload::ThreadPool) with threads named
//!   `Thread-1`, `Thread-2`, ... and logs in the Python original's thread layout.
//! - `blocks-process` runs it on a process pool and logs process ids.
//! - `blocks-remote` runs it on a [`RemotePool`](smol_offload_remote::RemotePool) of workers that are
//!   the same binary in worker mode, through Redis, and logs the host and pid.
//! - `blocks-compare` runs them, prints who ran what and when side by side, checks that every
//!   task ran once and no more than `--workers` at once, and can draw an SVG timeline.
//!
//! Run them with `cargo run --release --bin blocks-thread` (add `-- --help` for the flags).
//!
//! # Examples
//!
//! The whole thread demo in a few lines:
//!
//! ```
//! use blocks_demo::{LogStyle, Options, run_blocking_tasks, set_log_style};
//! use smol_offload::ThreadPool;
//!
//! # fn main() -> anyhow::Result<()> {
//! set_log_style(LogStyle::Thread);
//! let pool = ThreadPool::builder()
//!     .workers(3)
//!     .thread_name(|i| format!("Thread-{}", i + 1))
//!     .build()?;
//! let options = Options { sleep_ms: 10, ..Options::default() };
//! let outcomes = smol::block_on(run_blocking_tasks(&pool, &options))?;
//! assert_eq!(outcomes.len(), 6);
//! assert_eq!(outcomes.iter().map(|o| o.result).sum::<u64>(), 55); // 0 + 1 + 4 + ... + 25
//! assert!(outcomes.iter().all(|o| o.worker.starts_with("Thread-")));
//! # Ok(())
//! # }
//! ```

pub mod blocks;
pub mod compare;
pub mod events;
pub mod logging;
pub mod options;
pub mod remote;
pub mod run;
pub mod timeline;

pub use crate::blocks::{Job, Outcome, blocks, unix_micros};
pub use crate::logging::{LogStyle, log, log_style, set_log_style};
pub use crate::options::{CompareArgs, DemoArgs, Options, RemoteArgs};
pub use crate::run::{python_list, run_blocking_tasks, run_demo};
