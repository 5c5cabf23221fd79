//! The Python original's `asyncio_executor_process.py`: blocks(n) on a pool of forked worker
//! processes, logging process ids.
//!
//! Run with `cargo run --release --bin blocks-process` (`-- --help` for the flags).

use std::process::ExitCode;

use blocks_demo::{LogStyle, demo_main, set_log_style};
use smol_offload::ProcessPool;

fn main() -> ExitCode {
    // The style first: the workers are forked from the server that `init` starts, and only
    // see what was set before it.
    set_log_style(LogStyle::Process);
    smol_offload::init();
    demo_main("blocks-process", "process", |workers| {
        Ok(ProcessPool::new(workers)?)
    })
}
