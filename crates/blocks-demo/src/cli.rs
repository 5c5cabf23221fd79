//! What the three binaries' `main` functions share: reading the flags, and for the two demos,
//! running blocks(n) on a pool and writing the events file.

use std::process::ExitCode;

use smol_offload::Executor;

use crate::events::{Event, write_events};
use crate::options::{Options, Parsed, USAGE_EXIT_CODE, UsageError};
use crate::run::run_blocking_tasks;

/// Turns the result of parsing the flags into the options to run with, or into the exit code
/// of `main`: success after printing `usage` for `--help`, [`USAGE_EXIT_CODE`] after printing
/// the error for bad flags.
pub fn options_or_exit<T>(
    program: &str,
    parsed: Result<Parsed<T>, UsageError>,
    usage: impl FnOnce(&str) -> String,
) -> Result<T, ExitCode> {
    match parsed {
        Ok(Parsed::Run(options)) => Ok(options),
        Ok(Parsed::Help) => {
            print!("{}", usage(program));
            Err(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("{program}: {err}");
            Err(ExitCode::from(USAGE_EXIT_CODE))
        }
    }
}

/// The `main` of `blocks-thread` and `blocks-process`: reads the flags, builds the pool with
/// `build_pool(workers)`, runs [`run_blocking_tasks`] on it, and writes the events file when
/// `--events` asks for one, each event tagged with `backend`.
pub fn demo_main<E, B>(program: &str, backend: &str, build_pool: B) -> ExitCode
where
    E: Executor,
    B: FnOnce(usize) -> anyhow::Result<E>,
{
    let parsed = Options::parse(std::env::args_os().skip(1));
    let options = match options_or_exit(program, parsed, Options::usage) {
        Ok(options) => options,
        Err(code) => return code,
    };
    let run = || -> anyhow::Result<()> {
        let pool = build_pool(options.workers)?;
        let outcomes = smol::block_on(run_blocking_tasks(&pool, &options))?;
        if let Some(path) = &options.events {
            let events: Vec<Event> = outcomes
                .iter()
                .map(|outcome| Event::new(backend, outcome))
                .collect();
            write_events(path, &events)?;
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{program}: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
