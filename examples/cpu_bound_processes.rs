//! CPU-heavy work on a `ProcessPool` and on a `ThreadPool`: article 001's point that processes
//! suit CPU-bound work (`ProcessPoolExecutor`, one task per CPU), shown by counting primes in
//! ranges with the same `fn` on both pools. It prints where each range ran and the wall times,
//! and checks that both pools find the same count.
//!
//! Unlike Python, Rust has no global interpreter lock: threads already run CPU work in
//! parallel, so both pools take about the same time. What processes add is isolation, shown at
//! the end: a panic comes back as an error, and a worker killed mid-task fails only that task
//! while the pool forks a replacement.
//!
//! Article 001 is one of the Python asyncio articles summarised at the end of
//! `docs/asyncio-migration.md`.
//!
//! Run with `cargo run --release --example cpu_bound_processes`.

use std::collections::BTreeSet;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use smol_offload::{Executor, ProcessPool, ThreadPool, try_gather};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const LIMIT: u64 = 2_000_000;
const RANGES: u64 = 8;
/// How many primes there are below two million.
const PRIMES_BELOW_LIMIT: u64 = 148_933;

/// What one call reports: its count and where it ran.
#[derive(Debug, Serialize, Deserialize)]
struct Counted {
    start: u64,
    end: u64,
    primes: u64,
    pid: u32,
    thread: String,
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut divisor = 3;
    while divisor * divisor <= n {
        if n.is_multiple_of(divisor) {
            return false;
        }
        divisor += 2;
    }
    true
}

/// The CPU-heavy pure function: how many primes lie in `start..end`, by trial division.
fn count_primes((start, end): (u64, u64)) -> Counted {
    Counted {
        start,
        end,
        primes: (start..end).filter(|&n| is_prime(n)).count() as u64,
        pid: std::process::id(),
        thread: std::thread::current().name().unwrap_or("").to_owned(),
    }
}

/// Counts the primes below `LIMIT` in `RANGES` calls on `executor`; prints and returns them.
fn count_on(name: &str, executor: &impl Executor) -> Result<Vec<Counted>> {
    let step = LIMIT / RANGES;
    let started = Instant::now();
    let counted = smol::block_on(try_gather(
        (0..RANGES).map(|i| executor.run(count_primes, (i * step, (i + 1) * step))),
    ))?;
    let elapsed = started.elapsed();
    println!("{name}:");
    for c in &counted {
        println!(
            "  {:>9}..{:<9} {:>6} primes  pid {:>6} thread {}",
            c.start, c.end, c.primes, c.pid, c.thread
        );
    }
    let total: u64 = counted.iter().map(|c| c.primes).sum();
    println!("  total {total} primes in {elapsed:.1?}");
    Ok(counted)
}

fn main() -> Result<()> {
    smol_offload::init(); // first line of main: process pools fork from a single-threaded server

    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let me = std::process::id();
    println!("{workers} workers per pool; this process is pid {me}");

    let started = Instant::now();
    let alone = count_primes((0, LIMIT));
    println!(
        "one call on the main thread: {} primes in {:.1?}",
        alone.primes,
        started.elapsed()
    );

    let threads = ThreadPool::new(workers)?;
    let on_threads = count_on(&format!("ThreadPool({workers})"), &threads)?;
    let processes = ProcessPool::new(workers)?;
    let on_processes = count_on(&format!("ProcessPool({workers})"), &processes)?;

    let counts = |counted: &[Counted]| counted.iter().map(|c| c.primes).collect::<Vec<_>>();
    assert_eq!(alone.primes, PRIMES_BELOW_LIMIT);
    assert_eq!(counts(&on_threads), counts(&on_processes));
    assert_eq!(counts(&on_threads).iter().sum::<u64>(), PRIMES_BELOW_LIMIT);
    assert!(on_threads.iter().all(|c| c.pid == me));
    let pids: BTreeSet<u32> = on_processes.iter().map(|c| c.pid).collect();
    assert!(!pids.contains(&me) && pids.len() <= workers, "{pids:?}");
    println!("same counts on both pools; process work ran in pids {pids:?}");

    println!("isolation:");
    smol::block_on(async {
        let err = processes
            .run(|n: u64| -> u64 { panic!("no primes near {n}") }, 7)
            .await
            .unwrap_err();
        println!(
            "  a panic in a worker (its hook prints it on stderr) comes back as an error: {err}"
        );
        assert_eq!(err.panic_message(), Some("no primes near 7"));

        let before = processes.pids();
        let err = processes
            .run(
                |()| {
                    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                },
                (),
            )
            .await
            .unwrap_err();
        println!("  a worker killed mid-task fails only that task: {err}");
        assert!(err.is_worker_died());

        let again = processes.run(count_primes, (0, 100)).await?;
        assert_eq!(again.primes, 25);
        println!(
            "  the pool goes on: pids {before:?} -> {:?}, primes below 100: {}",
            processes.pids(),
            again.primes
        );
        Ok::<_, smol_offload::Error>(())
    })?;
    Ok(())
}
