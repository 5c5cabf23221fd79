//! The seed's `asyncio_executor_thread.py`: blocks(n) on a pool of threads named `Thread-N`.
//!
//! Run with `cargo run --release --bin blocks-thread` (`-- --help` for the flags).

use std::process::ExitCode;

use blocks_demo::events::{Event, write_events};
use blocks_demo::{LogStyle, Options, Parsed, USAGE_EXIT_CODE, run_blocking_tasks, set_log_style};
use smol_offload::ThreadPool;

const PROGRAM: &str = "blocks-thread";

fn main() -> ExitCode {
    set_log_style(LogStyle::Thread);
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
    let pool = ThreadPool::builder()
        .workers(options.workers)
        .thread_name(|i| format!("Thread-{}", i + 1))
        .build()?;
    let outcomes = smol::block_on(run_blocking_tasks(&pool, options))?;
    if let Some(path) = &options.events {
        let events: Vec<Event> = outcomes
            .iter()
            .map(|outcome| Event::new("thread", outcome))
            .collect();
        write_events(path, &events)?;
    }
    Ok(())
}
