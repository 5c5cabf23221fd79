//! The Python original's `asyncio_executor_thread.py`: blocks(n) on a pool of threads named
//! `Thread-N`.
//!
//! Run with `cargo run --release --bin blocks-thread` (`-- --help` for the flags).

use std::process::ExitCode;

use blocks_demo::options::run_main;
use blocks_demo::{DemoArgs, LogStyle, run_demo, set_log_style};
use smol_offload::ThreadPool;

fn main() -> ExitCode {
    set_log_style(LogStyle::Thread);
    run_main("blocks-thread", |args: DemoArgs| {
        let pool = ThreadPool::builder()
            .workers(args.run.workers)
            .thread_name(|i| format!("Thread-{}", i + 1))
            .build()?;
        run_demo(&pool, &args, "thread")
    })
}
