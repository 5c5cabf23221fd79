//! The Python original's `asyncio_executor_process.py`: blocks(n) on a pool of forked worker
//! processes, logging process ids.
//!
//! Run with `cargo run --release --bin blocks-process` (`-- --help` for the flags).

use std::process::ExitCode;

use blocks_demo::options::run_main;
use blocks_demo::{DemoArgs, LogStyle, run_demo, set_log_style};
use smol_offload::ProcessPool;

fn main() -> ExitCode {
    // The style first: the workers are forked from the server that `init` starts, and only
    // see what was set before it.
    set_log_style(LogStyle::Process);
    smol_offload::init();
    run_main("blocks-process", |args: DemoArgs| {
        run_demo(&ProcessPool::new(args.run.workers)?, &args, "process")
    })
}
