//! The Python original's `asyncio_executor_thread.py`: blocks(n) on a pool of threads named
//! `Thread-N`.
//!
//! Run with `cargo run --release --bin blocks-thread` (`-- --help` for the flags).

use std::process::ExitCode;

use blocks_demo::{LogStyle, demo_main, set_log_style};
use smol_offload::ThreadPool;

fn main() -> ExitCode {
    set_log_style(LogStyle::Thread);
    demo_main("blocks-thread", "thread", |workers| {
        let pool = ThreadPool::builder()
            .workers(workers)
            .thread_name(|i| format!("Thread-{}", i + 1))
            .build()?;
        Ok(pool)
    })
}
