//! The seed's `asyncio_executor_process.py`: blocks(n) on a pool of forked worker processes,
//! logging process ids.
//!
//! Run with `cargo run --release --bin blocks-process` (`-- --help` for the flags).

use std::process::ExitCode;

use blocks_demo::events::{Event, write_events};
use blocks_demo::{LogStyle, Options, Parsed, USAGE_EXIT_CODE, run_blocking_tasks, set_log_style};
use smol_offload::ProcessPool;

const PROGRAM: &str = "blocks-process";

fn main() -> ExitCode {
    // The style first: the workers are forked from the server that `init` starts, and only
    // see what was set before it.
    set_log_style(LogStyle::Process);
    smol_offload::init();
    let options = match Options::parse(std::env::args_os().skip(1)) {
        Ok(Parsed::Run(options)) => options,
        Ok(Parsed::Help) => {
            print!("{}", Options::usage(PROGRAM));
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("{PROGRAM}: {err}");
            return ExitCode::from(USAGE_EXIT_CODE);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{PROGRAM}: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> anyhow::Result<()> {
    let pool = ProcessPool::new(options.workers)?;
    let outcomes = smol::block_on(run_blocking_tasks(&pool, options))?;
    if let Some(path) = &options.events {
        let events: Vec<Event> = outcomes
            .iter()
            .map(|outcome| Event::new("process", outcome))
            .collect();
        write_events(path, &events)?;
    }
    Ok(())
}
