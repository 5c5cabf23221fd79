//! Loop responsiveness benchmark: how late a 1 ms ticker on the event loop wakes up while the
//! same loop runs the `blocks(n)` workload (6 calls of 100 ms blocking work, 3 workers), done
//! five ways: inline on the loop, `ThreadPool`, `ProcessPool`, `blocking::unblock`, and tokio's
//! `spawn_blocking` with the same ticker on a tokio runtime. Then `ThreadPool` again with debug
//! mode on, and the cost of a watched poll in nanoseconds.
//!
//! Run with `cargo bench -p smol-offload --bench loop_responsiveness`; add `-- --quick` (or set
//! `SMOL_OFFLOAD_BENCH_QUICK=1`) for a smoke test, and words to run only the contenders whose
//! names contain one of them (`-- --quick threadpool unblock`). The contenders take turns in every round,
//! and each figure is the median over rounds of the per-round figure.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future;
use smol_offload::debug::{self, DebugMode, ReportKind};
use smol_offload::{Executor, ProcessPool, ThreadPool, gather};

mod common;

use common::{machine, median, quick_mode};

/// The ticker's period.
const TICK: Duration = Duration::from_millis(1);
/// Workers of every pool, as in `ThreadPoolExecutor(max_workers=3)`.
const WORKERS: usize = 3;
/// Calls of `blocks` per batch.
const BATCH: u64 = 6;

/// The article's `blocks(n)`: 100 ms of blocking work, then `n * n`.
fn blocks(n: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(100));
    n * n
}

fn check(results: impl IntoIterator<Item = u64>) {
    let results: Vec<u64> = results.into_iter().collect();
    assert_eq!(
        results,
        [0, 1, 4, 9, 16, 25],
        "blocks(n) lost or changed results"
    );
}

#[derive(Debug, Clone, Copy)]
struct Config {
    quick: bool,
    rounds: usize,
    /// How long each contender runs batches in one round.
    run_for: Duration,
    /// Polls timed by the per-poll overhead measurement, per repetition.
    polls: u64,
}

impl Config {
    fn from_env() -> Config {
        if quick_mode() {
            Config {
                quick: true,
                rounds: 1,
                run_for: Duration::from_millis(400),
                polls: 200_000,
            }
        } else {
            Config {
                quick: false,
                rounds: 3,
                run_for: Duration::from_secs(2),
                polls: 5_000_000,
            }
        }
    }
}

/// One way to run the workload next to the ticker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Inline,
    Threads,
    Processes,
    Blocking,
    Tokio,
    ThreadsDebug,
}

impl Contender {
    const ALL: [Contender; 6] = [
        Contender::Inline,
        Contender::Threads,
        Contender::Processes,
        Contender::Blocking,
        Contender::Tokio,
        Contender::ThreadsDebug,
    ];

    fn name(self) -> &'static str {
        match self {
            Contender::Inline => "inline on the loop",
            Contender::Threads => "smol-offload ThreadPool",
            Contender::Processes => "smol-offload ProcessPool",
            Contender::Blocking => "blocking::unblock",
            Contender::Tokio => "tokio spawn_blocking",
            Contender::ThreadsDebug => "ThreadPool, debug mode on",
        }
    }
}

struct Pools {
    threads: ThreadPool,
    processes: ProcessPool,
    tokio: tokio::runtime::Runtime,
    /// Reports debug mode made during the debug runs: slow or stuck polls, and queue waits.
    reports: Arc<[AtomicUsize; 2]>,
}

/// The ticker's lateness samples, in nanoseconds: each scheduled tick (every `TICK` from the
/// start) records when it actually ran minus when it was due.
#[derive(Default)]
struct Ticks {
    lateness: RefCell<Vec<u64>>,
    stop: Cell<bool>,
}

impl Ticks {
    fn record(&self, due: Instant) {
        let late = Instant::now().saturating_duration_since(due);
        self.lateness
            .borrow_mut()
            .push(u64::try_from(late.as_nanos()).unwrap_or(u64::MAX));
    }
}

/// The ticker on smol: wakes at every multiple of `TICK`, keeping its schedule when late.
async fn smol_ticker(ticks: &Ticks) {
    let mut due = Instant::now() + TICK;
    while !ticks.stop.get() {
        smol::Timer::at(due).await;
        ticks.record(due);
        due += TICK;
    }
}

/// Runs batches of the workload for `run_for`, then stops the ticker.
async fn load<F, Fut>(ticks: &Ticks, run_for: Duration, batch: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let end = Instant::now() + run_for;
    while Instant::now() < end {
        batch().await;
    }
    ticks.stop.set(true);
}

fn run_smol<F, Fut>(run_for: Duration, watched: bool, batch: F) -> Vec<u64>
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let ticks = Ticks::default();
    let both = future::or(smol_ticker(&ticks), load(&ticks, run_for, batch));
    if watched {
        debug::block_on(debug::watch_named("ticker and load", both));
    } else {
        smol::block_on(both);
    }
    ticks.lateness.into_inner()
}

fn run(contender: Contender, pools: &Pools, run_for: Duration) -> Vec<u64> {
    match contender {
        Contender::Inline => run_smol(run_for, false, || async {
            let mut results = Vec::new();
            for n in 0..BATCH {
                results.push(blocks(n));
                future::yield_now().await;
            }
            check(results);
        }),
        Contender::Threads => run_smol(run_for, false, || async {
            let tasks = (0..BATCH).map(|n| pools.threads.spawn(move || blocks(n)));
            check(gather(tasks).await.into_iter().map(Result::unwrap));
        }),
        Contender::Processes => run_smol(run_for, false, || async {
            let tasks = (0..BATCH).map(|n| pools.processes.run(blocks, n));
            check(gather(tasks).await.into_iter().map(Result::unwrap));
        }),
        Contender::Blocking => run_smol(run_for, false, || async {
            let tasks: Vec<_> = (0..BATCH)
                .map(|n| blocking::unblock(move || blocks(n)))
                .collect();
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await);
            }
            check(results);
        }),
        Contender::Tokio => run_tokio(&pools.tokio, run_for),
        Contender::ThreadsDebug => {
            let reports = pools.reports.clone();
            DebugMode::new()
                .on_report(move |report| {
                    let index = usize::from(matches!(report.kind, ReportKind::QueueWait { .. }));
                    reports[index].fetch_add(1, Ordering::Relaxed);
                })
                .enable();
            let lateness = run_smol(run_for, true, || {
                debug::watch_named("batch", async {
                    let tasks = (0..BATCH).map(|n| pools.threads.spawn(move || blocks(n)));
                    check(gather(tasks).await.into_iter().map(Result::unwrap));
                })
            });
            debug::disable();
            lateness
        }
    }
}

/// The same ticker and workload on a current-thread tokio runtime, `spawn_blocking` capped at
/// `WORKERS` threads.
fn run_tokio(runtime: &tokio::runtime::Runtime, run_for: Duration) -> Vec<u64> {
    let ticks = Ticks::default();
    let ticker = async {
        let mut due = Instant::now() + TICK;
        while !ticks.stop.get() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            ticks.record(due);
            due += TICK;
        }
    };
    let batches = load(&ticks, run_for, || async {
        let handles: Vec<_> = (0..BATCH)
            .map(|n| tokio::task::spawn_blocking(move || blocks(n)))
            .collect();
        let mut results = Vec::new();
        for handle in handles {
            results.push(handle.await.unwrap());
        }
        check(results);
    });
    runtime.block_on(future::or(ticker, batches));
    ticks.lateness.into_inner()
}

#[derive(Debug, Clone, Copy)]
struct Lateness {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn summarise(mut samples: Vec<u64>) -> Lateness {
    assert!(!samples.is_empty(), "the ticker never ran");
    samples.sort_unstable();
    let at = |fraction: f64| {
        let index = ((samples.len() - 1) as f64 * fraction).round() as usize;
        samples[index] as f64 / 1e6
    };
    Lateness {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

/// A future that is never ready, to time polls alone.
struct Pending;

impl Future for Pending {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

/// Nanoseconds per poll of `future`, polled `polls` times.
fn ns_per_poll<F: Future>(future: F, polls: u64) -> f64 {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    let start = Instant::now();
    for _ in 0..polls {
        black_box(future.as_mut().poll(&mut cx).is_pending());
    }
    start.elapsed().as_nanos() as f64 / polls as f64
}

/// The cost of a watched poll: plain, watched with debug mode off, watched with it on.
fn poll_overhead(config: &Config) -> [f64; 3] {
    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..5 {
        samples[0].push(ns_per_poll(Pending, config.polls));
        samples[1].push(ns_per_poll(debug::watch(Pending), config.polls));
        DebugMode::new().on_report(|_| {}).enable();
        samples[2].push(ns_per_poll(debug::watch(Pending), config.polls));
        debug::disable();
    }
    samples.map(|values| median(&values))
}

fn main() {
    // Before any thread starts: the fork server of the process pool.
    smol_offload::init();
    // SAFETY: no other thread runs yet, none reads the environment meanwhile.
    unsafe { std::env::set_var("BLOCKING_MAX_THREADS", WORKERS.to_string()) };

    let config = Config::from_env();
    let pools = Pools {
        threads: ThreadPool::new(WORKERS).expect("start the thread pool"),
        processes: ProcessPool::new(WORKERS).expect("start the process pool"),
        tokio: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .max_blocking_threads(WORKERS)
            .build()
            .expect("start the tokio runtime"),
        reports: Arc::default(),
    };

    println!(
        "smol-offload loop responsiveness benchmark{}",
        if config.quick { " (quick mode)" } else { "" }
    );
    println!("machine: {}", machine());
    println!(
        "a {TICK:?} ticker on the loop records its lateness while the loop runs batches of \
         {BATCH} x blocks(n) (100 ms sleep) on {WORKERS} workers, for {:?} per contender and \
         round; {} rounds, contenders rotated in each; figures are medians over rounds.",
        config.run_for, config.rounds
    );
    println!();

    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .map(|arg| arg.to_lowercase())
        .collect();
    let selected = |contender: Contender| {
        let name = contender.name().to_lowercase();
        filters.is_empty() || filters.iter().any(|word| name.contains(word))
    };
    let mut results: Vec<Vec<Lateness>> = vec![Vec::new(); Contender::ALL.len()];
    for round in 0..config.rounds {
        for k in 0..Contender::ALL.len() {
            let index = (round + k) % Contender::ALL.len();
            let contender = Contender::ALL[index];
            if !selected(contender) {
                continue;
            }
            let lateness = summarise(run(contender, &pools, config.run_for));
            println!(
                "round {}  {:<26} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
                round + 1,
                contender.name(),
                lateness.p50_ms,
                lateness.p99_ms,
                lateness.max_ms
            );
            results[index].push(lateness);
        }
    }
    if results.iter().any(Vec::is_empty) {
        return; // a filtered run: the rounds above are the result
    }
    let summary: Vec<Lateness> = results
        .iter()
        .map(|rounds| {
            let pick =
                |field: fn(&Lateness) -> f64| median(&rounds.iter().map(field).collect::<Vec<_>>());
            Lateness {
                p50_ms: pick(|l| l.p50_ms),
                p99_ms: pick(|l| l.p99_ms),
                max_ms: pick(|l| l.max_ms),
            }
        })
        .collect();
    let best_p99 = summary
        .iter()
        .map(|l| l.p99_ms)
        .fold(f64::INFINITY, f64::min);

    println!();
    println!(
        "| {:<26} | {:>10} | {:>10} | {:>10} | {:>11} |",
        "contender", "p50 late", "p99 late", "max late", "p99 / best"
    );
    println!(
        "| {:-<26} | {:->10} | {:->10} | {:->10} | {:->11} |",
        "", "", "", "", ""
    );
    for (contender, lateness) in Contender::ALL.iter().zip(&summary) {
        println!(
            "| {:<26} | {:>7.3} ms | {:>7.3} ms | {:>7.3} ms | {:>10.2}x |",
            contender.name(),
            lateness.p50_ms,
            lateness.p99_ms,
            lateness.max_ms,
            lateness.p99_ms / best_p99
        );
    }
    let p99 = |contender: Contender| summary[contender as usize].p99_ms;
    println!();
    println!(
        "debug mode reports during the debug runs: {} slow or stuck polls, {} queue waits \
         (half of each batch waits about 100 ms for a worker)",
        pools.reports[0].load(Ordering::Relaxed),
        pools.reports[1].load(Ordering::Relaxed)
    );
    for ours in [Contender::Threads, Contender::Processes] {
        println!(
            "{}: p99 {:.3} ms (target <= 1 ms: {}), {:.2}x of blocking::unblock, {:.2}x of tokio",
            ours.name(),
            p99(ours),
            if p99(ours) <= 1.0 { "met" } else { "missed" },
            p99(ours) / p99(Contender::Blocking),
            p99(ours) / p99(Contender::Tokio)
        );
    }
    println!(
        "debug mode on: p99 {:.3} ms against {:.3} ms off",
        p99(Contender::ThreadsDebug),
        p99(Contender::Threads)
    );

    let [plain, off, on] = poll_overhead(&config);
    println!();
    println!(
        "cost of a poll, median of 5 x {} polls of a pending future:",
        config.polls
    );
    println!("  plain future:                 {plain:>6.1} ns");
    println!(
        "  debug::watch, debug mode off: {off:>6.1} ns  (+{:.1} ns)",
        off - plain
    );
    println!(
        "  debug::watch, debug mode on:  {on:>6.1} ns  (+{:.1} ns)",
        on - plain
    );
}
