//! Runs blocks(n) on the thread pool and on the process pool and shows them side by side.
//!
//! Run with `cargo run --release --bin blocks-compare -- --svg target/timeline.svg` after building
//! the other binaries (`cargo build --release --bins`). `BLOCKS_THREAD_BIN` and
//! `BLOCKS_PROCESS_BIN` override where the backends are found.

use std::process::ExitCode;

use anyhow::Context as _;
use blocks_demo::CompareOptions;
use blocks_demo::cli::options_or_exit;
use blocks_demo::compare::{checks, render_checks, render_table};
use blocks_demo::launch::{Launched, PROCESS, ScratchDir, THREAD};
use blocks_demo::timeline::render_svg;

const PROGRAM: &str = "blocks-compare";

fn main() -> ExitCode {
    let parsed = CompareOptions::parse(std::env::args_os().skip(1));
    let options = match options_or_exit(PROGRAM, parsed, CompareOptions::usage) {
        Ok(options) => options,
        Err(code) => return code,
    };
    match compare(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("{PROGRAM}: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs both backends one after the other; true when every check passed.
fn compare(options: &CompareOptions) -> anyhow::Result<bool> {
    let scratch = ScratchDir::new()?;
    let mut launched: Vec<Launched> = Vec::new();
    for backend in [THREAD, PROCESS] {
        let binary = backend.locate()?;
        let events = scratch.path().join(format!("{}.jsonl", backend.name));
        launched.push(backend.run(&binary, &options.run, &events));
    }
    if options.logs {
        for run in &launched {
            println!("--- {} log ---\n{}", run.report.backend, run.log);
        }
    }
    let reports: Vec<_> = launched.iter().map(|run| &run.report).collect();
    print!("{}", render_table(&options.run, &reports));
    if let Some(path) = &options.svg {
        std::fs::write(path, render_svg(&options.run, &reports))
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("\ntimeline written to {}", path.display());
    }
    let checks = checks(&options.run, &reports);
    println!();
    print!("{}", render_checks(&checks));
    Ok(checks.iter().all(|check| check.passed))
}
