//! Thread pool benchmark: `smol_offload::ThreadPool` against `blocking::unblock`, a rayon pool
//! plus a channel (what `async_rayon` does) and tokio's `spawn_blocking`, all on 2 threads; and
//! ours again with the burst awaited by `gather` instead of one task after another.
//!
//! Run with `cargo bench -p smol-offload --bench thread_pool`; add `-- --quick` (or set
//! `SMOL_OFFLOAD_BENCH_QUICK=1`) for a smoke test with small counts. The contenders take turns
//! in every round, so machine noise hits them alike, and each figure is the median over rounds.

use std::hint::black_box;
use std::time::{Duration, Instant};

mod common;

use common::{machine, median, quick_mode};

/// Where ours and the anchor (rayon + async-channel) sit in the list of contenders.
const OURS: usize = 0;
const ANCHOR: usize = 2;
/// The burst awaited with `gather` (ours too), left out of the targets.
const GATHER: usize = 4;

/// Threads in every contender's pool.
const WORKERS: usize = 2;

/// How much to measure.
#[derive(Debug, Clone, Copy)]
struct Config {
    quick: bool,
    /// Rounds; each contender runs once per round.
    rounds: usize,
    /// Round trips before the measured ones, in every round.
    warmup: usize,
    /// Measured round trips per round.
    round_trips: usize,
    /// Tasks submitted at once in one throughput run.
    burst: u64,
    /// Throughput runs per round; the round keeps the best.
    bursts_per_round: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = quick_mode();
        if quick {
            Config {
                quick,
                rounds: 2,
                warmup: 200,
                round_trips: 2_000,
                burst: 10_000,
                bursts_per_round: 1,
            }
        } else {
            Config {
                quick,
                rounds: 7,
                warmup: 2_000,
                round_trips: 20_000,
                burst: 100_000,
                bursts_per_round: 3,
            }
        }
    }
}

/// One way to offload a trivial closure and await its result.
trait Contender {
    /// The name in the table.
    fn name(&self) -> &'static str;

    /// Runs `warmup` unmeasured round trips, then `n` measured ones; returns each in nanoseconds.
    fn round_trips(&self, warmup: usize, n: usize) -> Vec<u64>;

    /// Submits `n` tasks at once, then awaits them all in order; returns the time it took.
    fn burst(&self, n: u64) -> Duration;
}

/// The trivial work: returns its input through `black_box`, so nothing can be folded away.
fn work(i: u64) -> u64 {
    black_box(i)
}

/// Checks that a burst of `n` tasks returned every input once.
fn check_sum(sum: u64, n: u64) {
    assert_eq!(sum, n * (n - 1) / 2, "a burst lost or changed results");
}

fn nanos(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Contender 1, ours: `smol_offload::ThreadPool::spawn`, awaited from `smol::block_on`.
struct Ours {
    pool: smol_offload::ThreadPool,
}

impl Ours {
    /// Submits job `i` now; the future awaits its value.
    fn submit(&self, i: u64) -> impl Future<Output = u64> + use<> {
        let task = self.pool.spawn(move || work(i));
        async move { task.await.unwrap() }
    }
}

impl Contender for Ours {
    fn name(&self) -> &'static str {
        "smol-offload ThreadPool"
    }

    fn round_trips(&self, warmup: usize, n: usize) -> Vec<u64> {
        smol::block_on(measure_round_trips(warmup, n, |i| self.submit(i)))
    }

    fn burst(&self, n: u64) -> Duration {
        smol::block_on(measure_burst(n, |i| self.submit(i)))
    }
}

/// Ours again, the burst awaited with `smol_offload::gather` instead of one task after another:
/// what `wait`/`gather` cost over the plain loop.
struct OursGather {
    pool: smol_offload::ThreadPool,
}

impl Contender for OursGather {
    fn name(&self) -> &'static str {
        "ThreadPool, gather"
    }

    fn round_trips(&self, warmup: usize, n: usize) -> Vec<u64> {
        smol::block_on(measure_round_trips(warmup, n, |i| {
            let task = self.pool.spawn(move || work(i));
            async move { task.await.unwrap() }
        }))
    }

    fn burst(&self, n: u64) -> Duration {
        let start = Instant::now();
        let tasks: Vec<_> = (0..n).map(|i| self.pool.spawn(move || work(i))).collect();
        let sum = smol::block_on(smol_offload::gather(tasks))
            .into_iter()
            .map(|value| value.unwrap())
            .sum();
        let elapsed = start.elapsed();
        check_sum(sum, n);
        elapsed
    }
}

/// Contender 2: `blocking::unblock`, capped at 2 threads by `BLOCKING_MAX_THREADS`, awaited
/// from `smol::block_on`.
struct Blocking;

impl Contender for Blocking {
    fn name(&self) -> &'static str {
        "blocking::unblock"
    }

    fn round_trips(&self, warmup: usize, n: usize) -> Vec<u64> {
        smol::block_on(measure_round_trips(warmup, n, |i| {
            blocking::unblock(move || work(i))
        }))
    }

    fn burst(&self, n: u64) -> Duration {
        smol::block_on(measure_burst(n, |i| blocking::unblock(move || work(i))))
    }
}

/// Contender 3, the anchor, as `async_rayon` does it: `rayon::ThreadPool::spawn` on a 2-thread
/// pool and an `async_channel::bounded(1)` per task to carry the result back, awaited from
/// `smol::block_on`.
struct RayonChannel {
    pool: rayon::ThreadPool,
}

impl RayonChannel {
    /// Submits job `i` now; the future awaits its value from the channel.
    fn submit(&self, i: u64) -> impl Future<Output = u64> + use<> {
        let (sender, receiver) = async_channel::bounded(1);
        self.pool.spawn(move || {
            let _ = sender.try_send(work(i));
        });
        async move { receiver.recv().await.unwrap() }
    }
}

impl Contender for RayonChannel {
    fn name(&self) -> &'static str {
        "rayon + async-channel"
    }

    fn round_trips(&self, warmup: usize, n: usize) -> Vec<u64> {
        smol::block_on(measure_round_trips(warmup, n, |i| self.submit(i)))
    }

    fn burst(&self, n: u64) -> Duration {
        smol::block_on(measure_burst(n, |i| self.submit(i)))
    }
}

/// Contender 4: tokio's `spawn_blocking` on a current-thread runtime with
/// `max_blocking_threads(2)`; the `JoinHandle`s are awaited inside `rt.block_on`, as a tokio
/// program would.
struct Tokio {
    runtime: tokio::runtime::Runtime,
}

impl Contender for Tokio {
    fn name(&self) -> &'static str {
        "tokio spawn_blocking"
    }

    fn round_trips(&self, warmup: usize, n: usize) -> Vec<u64> {
        self.runtime
            .block_on(measure_round_trips(warmup, n, submit_to_tokio))
    }

    fn burst(&self, n: u64) -> Duration {
        self.runtime.block_on(measure_burst(n, submit_to_tokio))
    }
}

/// Submits job `i` to tokio's blocking pool now; the future awaits its value. Must run inside
/// the runtime.
fn submit_to_tokio(i: u64) -> impl Future<Output = u64> {
    let handle = tokio::task::spawn_blocking(move || work(i));
    async move { handle.await.unwrap() }
}

/// Awaits `warmup` unmeasured round trips, then `n` measured ones, each submitting one job with
/// `submit` and awaiting it; returns each measured one in nanoseconds.
async fn measure_round_trips<S, F>(warmup: usize, n: usize, submit: S) -> Vec<u64>
where
    S: Fn(u64) -> F,
    F: Future<Output = u64>,
{
    for i in 0..warmup as u64 {
        black_box(submit(i).await);
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let start = Instant::now();
        black_box(submit(i).await);
        samples.push(nanos(start));
    }
    samples
}

/// Submits `n` jobs at once with `submit` (which must submit before it returns), then awaits
/// them all in order; returns the time it took.
async fn measure_burst<S, F>(n: u64, submit: S) -> Duration
where
    S: Fn(u64) -> F,
    F: Future<Output = u64>,
{
    let mut pending = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for i in 0..n {
        pending.push(submit(i));
    }
    let mut sum = 0;
    for value in pending {
        sum += value.await;
    }
    let elapsed = start.elapsed();
    check_sum(sum, n);
    elapsed
}

/// One contender's figures in one round.
#[derive(Debug, Clone, Copy)]
struct RoundResult {
    median_us: f64,
    p99_us: f64,
    tasks_per_sec: f64,
}

/// The smallest and the largest of `values`.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), value| {
        (low.min(value), high.max(value))
    })
}

fn run_round(contender: &dyn Contender, config: &Config) -> RoundResult {
    let mut samples = contender.round_trips(config.warmup, config.round_trips);
    samples.sort_unstable();
    let at = |fraction: f64| {
        samples[((samples.len() as f64 * fraction) as usize).min(samples.len() - 1)]
    };
    let median_us = at(0.5) as f64 / 1e3;
    let p99_us = at(0.99) as f64 / 1e3;
    let best = (0..config.bursts_per_round)
        .map(|_| contender.burst(config.burst))
        .min()
        .expect("at least one burst per round");
    RoundResult {
        median_us,
        p99_us,
        tasks_per_sec: config.burst as f64 / best.as_secs_f64(),
    }
}

fn main() {
    // SAFETY: this is the first statement of `main`: no other thread of this process exists yet
    // (the harness is ours, `harness = false`), so nothing can read the environment concurrently.
    // `blocking` reads the variable once, when its pool is first used, which is later.
    unsafe { std::env::set_var("BLOCKING_MAX_THREADS", WORKERS.to_string()) };

    let config = Config::from_env();
    println!(
        "smol-offload thread pool benchmark{}",
        if config.quick { " (quick mode)" } else { "" }
    );
    println!("machine: {}", machine());
    println!(
        "pools of {WORKERS} threads; {} rounds, contenders interleaved (rotated order) in each;",
        config.rounds
    );
    println!(
        "round trip: {} awaited one at a time after {} warm-up, per-round median and p99;",
        config.round_trips, config.warmup
    );
    println!(
        "throughput: {} tasks submitted at once then awaited in order, best of {} per round;",
        config.burst, config.bursts_per_round
    );
    println!("every figure below is the median over rounds of the per-round figure;");
    println!("(rounds range) is the smallest and largest per-round figure.");
    println!("tokio: current-thread runtime, max_blocking_threads({WORKERS}),");
    println!("awaited inside rt.block_on; the others are awaited from smol::block_on.");
    println!();

    // Ours first (`OURS`), the anchor third (`ANCHOR`).
    let contenders: Vec<Box<dyn Contender>> = vec![
        Box::new(Ours {
            pool: smol_offload::ThreadPool::new(WORKERS).expect("start our pool"),
        }),
        Box::new(Blocking),
        Box::new(RayonChannel {
            pool: rayon::ThreadPoolBuilder::new()
                .num_threads(WORKERS)
                .thread_name(|i| format!("rayon-bench-{i}"))
                .build()
                .expect("start the rayon pool"),
        }),
        Box::new(Tokio {
            runtime: tokio::runtime::Builder::new_current_thread()
                .max_blocking_threads(WORKERS)
                .build()
                .expect("start the tokio runtime"),
        }),
        Box::new(OursGather {
            pool: smol_offload::ThreadPool::new(WORKERS).expect("start our second pool"),
        }),
    ];

    let started = Instant::now();
    let mut results: Vec<Vec<RoundResult>> = vec![Vec::new(); contenders.len()];
    for round in 0..config.rounds {
        for k in 0..contenders.len() {
            let index = (round + k) % contenders.len();
            let result = run_round(contenders[index].as_ref(), &config);
            println!(
                "round {}  {:<24} rt median {:>7.2} us  p99 {:>7.2} us  {:>6.2} M tasks/s",
                round + 1,
                contenders[index].name(),
                result.median_us,
                result.p99_us,
                result.tasks_per_sec / 1e6
            );
            results[index].push(result);
        }
    }
    println!("({:.1} s)", started.elapsed().as_secs_f64());
    println!();

    let summary: Vec<RoundResult> = results
        .iter()
        .map(|rounds| {
            let pick = |field: fn(&RoundResult) -> f64| {
                median(&rounds.iter().map(field).collect::<Vec<_>>())
            };
            RoundResult {
                median_us: pick(|r| r.median_us),
                p99_us: pick(|r| r.p99_us),
                tasks_per_sec: pick(|r| r.tasks_per_sec),
            }
        })
        .collect();

    println!(
        "| {:<24} | {:>17} | {:>14} | {:>15} | {:>20} | {:>14} |",
        "contender",
        "round trip median",
        "(rounds range)",
        "round trip p99",
        "throughput",
        "(rounds range)"
    );
    println!(
        "| {:-<24} | {:->17} | {:->14} | {:->15} | {:->20} | {:->14} |",
        "", "", "", "", "", ""
    );
    for ((contender, figures), rounds) in contenders.iter().zip(&summary).zip(&results) {
        let (rt_low, rt_high) = range(rounds.iter().map(|r| r.median_us));
        let (tp_low, tp_high) = range(rounds.iter().map(|r| r.tasks_per_sec / 1e6));
        println!(
            "| {:<24} | {:>14.2} us | {:>14} | {:>12.2} us | {:>10.2} M tasks/s | {:>14} |",
            contender.name(),
            figures.median_us,
            format!("{rt_low:.1}-{rt_high:.1}"),
            figures.p99_us,
            figures.tasks_per_sec / 1e6,
            format!("{tp_low:.2}-{tp_high:.2}"),
        );
    }
    println!();

    let ours = summary[OURS];
    println!("ours relative to each other contender:");
    for (index, (contender, figures)) in contenders.iter().zip(&summary).enumerate() {
        if index == OURS {
            continue;
        }
        let name = contender.name();
        let round_trip = ours.median_us / figures.median_us;
        let throughput = ours.tasks_per_sec / figures.tasks_per_sec;
        println!("  round trip: {round_trip:.2}x of {name} (lower is better)");
        println!("  throughput: {throughput:.2}x of {name} (higher is better)");
    }
    println!();

    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let rayon = summary[ANCHOR];
    println!("targets:");
    println!(
        "  round trip no slower than rayon + async-channel: {} ({:.2} us vs {:.2} us)",
        verdict(ours.median_us <= rayon.median_us),
        ours.median_us,
        rayon.median_us
    );
    println!(
        "  throughput >= 2.5 M tasks/s: {} ({:.2} M tasks/s)",
        verdict(ours.tasks_per_sec >= 2.5e6),
        ours.tasks_per_sec / 1e6
    );
    for (index, (contender, figures)) in contenders.iter().zip(&summary).enumerate() {
        if index == OURS || index == ANCHOR || index == GATHER {
            continue;
        }
        println!(
            "  ahead of {} on round trip: {}; on throughput: {}",
            contender.name(),
            verdict(ours.median_us < figures.median_us),
            verdict(ours.tasks_per_sec > figures.tasks_per_sec)
        );
    }
}
