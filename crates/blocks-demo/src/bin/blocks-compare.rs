//! Runs blocks(n) on the thread pool and on the process pool (and with `--remote` on remote
//! workers) and shows them side by side.
//!
//! Run with `cargo build --release --bins && ./target/release/blocks-compare --svg`, which
//! draws the timeline to `target/blocks-timeline.svg`. `BLOCKS_THREAD_BIN`,
//! `BLOCKS_PROCESS_BIN` and `BLOCKS_REMOTE_BIN` override where the backends are found.

use std::process::ExitCode;

use anyhow::Context as _;
use blocks_demo::CompareArgs;
use blocks_demo::compare::{PROCESS, REMOTE, THREAD, checks, render_table};
use blocks_demo::options::run_main;
use blocks_demo::timeline::render_svg;

fn main() -> ExitCode {
    run_main("blocks-compare", compare)
}

/// Runs the backends one after the other; true when every check passed.
fn compare(args: CompareArgs) -> anyhow::Result<bool> {
    let scratch = tempfile::Builder::new()
        .prefix("blocks-compare-")
        .tempdir()?;
    let (remote, mut reports) = (args.remote.then_some(REMOTE), Vec::new());
    for backend in [THREAD, PROCESS].into_iter().chain(remote) {
        let events = scratch.path().join(format!("{}.jsonl", backend.0));
        reports.push(backend.run(&backend.locate()?, &args.run, &events));
    }
    if args.logs {
        for report in &reports {
            println!("--- {} log ---\n{}", report.backend, report.log);
        }
    }
    let reports: Vec<_> = reports.iter().collect();
    print!("{}", render_table(&args.run, &reports));
    if let Some(path) = &args.svg {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, render_svg(&args.run, &reports))
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("\ntimeline written to {}", path.display());
    }
    println!();
    let checks = checks(&args.run, &reports);
    checks.iter().for_each(|line| println!("{line}"));
    Ok(checks.iter().all(|line| line.starts_with("PASS ")))
}
