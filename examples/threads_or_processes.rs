//! One `async fn` written against `Executor`, run on a `ThreadPool(3)` and then on a
//! `ProcessPool(3)` by changing one line: article 001's `run_blocking_tasks(executor)` with
//! `run_in_executor(ThreadPoolExecutor(3) | ProcessPoolExecutor(3), blocks, i)`.
//!
//! Each log line names the thread and the process that wrote it, as the article's two logging
//! formats do. Six 100 ms calls on three workers take about 0.2 s on either backend.
//!
//! Article 001 is one of the Python asyncio articles summarised at the end of
//! `docs/asyncio-migration.md`.
//!
//! Run with `cargo run --release --example threads_or_processes`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use smol_offload::{Executor, ProcessPool, ReturnWhen, ThreadPool, wait};

/// What one call of `blocks` reports: its value and where it ran.
#[derive(Debug, Serialize, Deserialize)]
struct Ran {
    square: u64,
    pid: u32,
    thread: String,
}

fn log(name: &str, message: &str) {
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("<unnamed>");
    println!(
        "{thread:>15} PID {:>6} {name:>18}: {message}",
        std::process::id()
    );
}

/// The article's `blocks(n)`: log, sleep 0.1 s, log, return n².
fn blocks(n: u64) -> Ran {
    let name = format!("blocks({n})");
    log(&name, "running");
    std::thread::sleep(Duration::from_millis(100));
    log(&name, "done");
    Ran {
        square: n * n,
        pid: std::process::id(),
        thread: std::thread::current().name().unwrap_or("").to_owned(),
    }
}

/// The article's `run_blocking_tasks(executor)`, unchanged whichever pool it is given.
async fn run_blocking_tasks(executor: &impl Executor) -> Vec<Ran> {
    let name = "run_blocking_tasks";
    log(name, "starting");
    log(name, "creating executor tasks");
    let blocking_tasks: Vec<_> = (0..6).map(|i| executor.run(blocks, i)).collect();
    log(name, "waiting for executor tasks");
    // asyncio.wait(): results come back in the order the calls finished.
    let waited = wait(blocking_tasks, ReturnWhen::AllCompleted).await;
    assert!(waited.pending.is_empty());
    let results: Vec<Ran> = waited
        .done
        .into_iter()
        .map(|(_, result)| result.expect("blocks() does not fail"))
        .collect();
    let squares: Vec<u64> = results.iter().map(|ran| ran.square).collect();
    log(name, &format!("results: {squares:?}"));
    log(name, "exiting");
    results
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    smol_offload::init(); // first line of main: process pools fork from a single-threaded server

    println!("--- threads: ThreadPool with 3 workers ---");
    let threads = ThreadPool::builder()
        .workers(3)
        .thread_name(|i| format!("Thread-{}", i + 1))
        .build()?;
    let started = Instant::now();
    let on_threads = smol::block_on(run_blocking_tasks(&threads));
    let thread_time = started.elapsed();

    println!("--- processes: ProcessPool with 3 workers (the one line that changes) ---");
    let processes = ProcessPool::new(3)?;
    let started = Instant::now();
    let on_processes = smol::block_on(run_blocking_tasks(&processes));
    let process_time = started.elapsed();

    let squares = |results: &[Ran]| results.iter().map(|r| r.square).collect::<BTreeSet<_>>();
    let expected: BTreeSet<u64> = [0, 1, 4, 9, 16, 25].into();
    assert_eq!(squares(&on_threads), expected);
    assert_eq!(squares(&on_processes), expected);

    let me = std::process::id();
    let thread_names: BTreeSet<&str> = on_threads.iter().map(|r| r.thread.as_str()).collect();
    assert!(
        on_threads.iter().all(|r| r.pid == me),
        "threads run in this process"
    );
    assert!(
        thread_names.len() <= 3,
        "at most 3 threads: {thread_names:?}"
    );
    let pids: BTreeSet<u32> = on_processes.iter().map(|r| r.pid).collect();
    assert!(!pids.contains(&me), "process tasks run in other processes");
    assert!(pids.len() <= 3, "at most 3 worker processes: {pids:?}");

    println!("--- summary ---");
    println!("threads:   {thread_time:>10.3?} on {thread_names:?}");
    println!("processes: {process_time:>10.3?} on pids {pids:?} (this process is {me})");
    println!("same results on both: {expected:?}");
    Ok(())
}
