//! Loop thread and stream benchmark. A `LoopThread::spawn` round trip awaited from another
//! loop, against the plain-smol way (an `Arc<smol::Executor>` run by a thread, `ex.spawn(fut)`,
//! awaiting its `smol::Task`) and against tokio's `Handle::spawn` from outside its runtime; and
//! the throughput of `ThreadPool::stream` (and `stream_dedicated`) over small items with
//! `buffer = 64`, against `blocking::Unblock` over the same iterator and against a bounded
//! `async_channel` fed by a pool job (`send_blocking`, which pins the pool thread while the
//! buffer is full: the crate-based stream, without the hand-back of the iterator).
//!
//! Run with `cargo bench -p smol-offload --bench loop_thread`; add `-- --quick` (or set
//! `SMOL_OFFLOAD_BENCH_QUICK=1`) for a smoke test with small counts. The contenders take turns
//! in every round (the order rotates from round to round), and a stream round runs each stream
//! contender several times, alternating, so that a burst of load on the machine hits all of
//! them. Each figure is the median of its samples; each ratio is the ratio of two medians, and
//! the range of the same ratio taken within each round (where the contenders saw the same
//! load) is printed beside it.
//!
//! For instruction counts, which do not depend on the machine's load, set
//! `SMOL_OFFLOAD_BENCH_ROUND_TRIPS=ours:N` (or `smol:N`, `tokio:N`): the benchmark then only does
//! N round trips with that contender and exits. Run it under `valgrind --tool=callgrind` for two
//! values of N; the difference of the two totals over the difference of the Ns is the cost of
//! one round trip, on both threads, without the start-up.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{machine, median, quick_mode};
use futures_lite::StreamExt;

/// The buffer of every stream contender.
const BUFFER: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Config {
    quick: bool,
    rounds: usize,
    warmup: usize,
    round_trips: usize,
    items: u64,
    /// Runs of each stream contender per round, alternating with the others.
    stream_runs: usize,
}

impl Config {
    fn from_env() -> Config {
        if quick_mode() {
            Config {
                quick: true,
                rounds: 3,
                warmup: 200,
                round_trips: 2_000,
                items: 100_000,
                stream_runs: 2,
            }
        } else {
            Config {
                quick: false,
                rounds: 7,
                warmup: 2_000,
                round_trips: 20_000,
                items: 1_000_000,
                stream_runs: 3,
            }
        }
    }
}

/// One way to run a trivial future on another thread's loop and await it from this loop.
trait RoundTrip {
    fn name(&self) -> &'static str;
    /// Awaits one round trip carrying `i` there and back.
    fn round_trip(&self, i: u64) -> u64;
}

struct Ours(smol_offload::LoopThread);

impl RoundTrip for Ours {
    fn name(&self) -> &'static str {
        "LoopThread::spawn"
    }
    fn round_trip(&self, i: u64) -> u64 {
        smol::block_on(self.0.spawn(async move { black_box(i) })).expect("our task")
    }
}

/// An `Arc<smol::Executor>` run by a thread until its stop channel closes.
struct PlainSmol {
    executor: Arc<smol::Executor<'static>>,
    _stop: async_channel::Sender<()>,
}

impl PlainSmol {
    fn start() -> PlainSmol {
        let executor = Arc::new(smol::Executor::new());
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let running = executor.clone();
        std::thread::Builder::new()
            .name("plain-smol".into())
            .spawn(move || smol::block_on(running.run(stopped.recv())))
            .expect("start the plain smol thread");
        PlainSmol {
            executor,
            _stop: stop,
        }
    }
}

impl RoundTrip for PlainSmol {
    fn name(&self) -> &'static str {
        "smol Executor::spawn"
    }
    fn round_trip(&self, i: u64) -> u64 {
        smol::block_on(self.executor.spawn(async move { black_box(i) }))
    }
}

/// A tokio runtime with one worker thread, spawned to with `Handle::spawn` from outside it.
struct Tokio(tokio::runtime::Runtime);

impl RoundTrip for Tokio {
    fn name(&self) -> &'static str {
        "tokio Handle::spawn"
    }
    fn round_trip(&self, i: u64) -> u64 {
        let handle = self.0.handle();
        smol::block_on(handle.spawn(async move { black_box(i) })).expect("tokio task")
    }
}

/// The median round trip of `contender` in nanoseconds, over `n` after `warmup`.
fn round_trips(contender: &dyn RoundTrip, warmup: usize, n: usize) -> f64 {
    for i in 0..warmup {
        assert_eq!(contender.round_trip(i as u64), i as u64);
    }
    let times: Vec<f64> = (0..n)
        .map(|i| {
            let start = Instant::now();
            let back = contender.round_trip(i as u64);
            let elapsed = start.elapsed();
            assert_eq!(back, i as u64);
            elapsed.as_nanos() as f64
        })
        .collect();
    median(&times)
}

/// One way to consume a blocking iterator of `n` small items as a stream.
#[derive(Clone, Copy, Debug)]
enum StreamKind {
    Pool,
    Dedicated,
    Channel,
    Unblock,
}

impl StreamKind {
    fn name(self) -> &'static str {
        match self {
            StreamKind::Pool => "ThreadPool::stream",
            StreamKind::Dedicated => "stream_dedicated",
            StreamKind::Channel => "async_channel::bounded",
            StreamKind::Unblock => "blocking::Unblock",
        }
    }

    /// Streams `0..n` and checks the sum; returns the time it took.
    fn run(self, pool: &smol_offload::ThreadPool, n: u64) -> Duration {
        let items = (0..n).map(black_box);
        let start = Instant::now();
        let sum = smol::block_on(async {
            match self {
                StreamKind::Pool => {
                    let mut stream = pool.stream(items, BUFFER);
                    let mut sum = 0;
                    while let Some(item) = stream.next().await {
                        sum += item.expect("item");
                    }
                    sum
                }
                StreamKind::Dedicated => {
                    let mut stream = smol_offload::stream_dedicated("bench-stream", items, BUFFER);
                    let mut sum = 0;
                    while let Some(item) = stream.next().await {
                        sum += item.expect("item");
                    }
                    sum
                }
                StreamKind::Channel => {
                    let (sender, receiver) = async_channel::bounded(BUFFER);
                    let producer = pool.spawn(move || {
                        for item in items {
                            if sender.send_blocking(item).is_err() {
                                break;
                            }
                        }
                    });
                    let mut sum = 0;
                    let mut receiver = std::pin::pin!(receiver);
                    while let Some(item) = receiver.next().await {
                        sum += item;
                    }
                    producer.await.expect("producer");
                    sum
                }
                StreamKind::Unblock => {
                    let mut stream = blocking::Unblock::with_capacity(BUFFER, items);
                    let mut sum = 0;
                    while let Some(item) = stream.next().await {
                        sum += item;
                    }
                    sum
                }
            }
        });
        let elapsed = start.elapsed();
        assert_eq!(sum, n * (n - 1) / 2);
        elapsed
    }
}

/// The lowest and highest of `values`.
fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), &v| {
            (low.min(v), high.max(v))
        })
}

/// For each round, `ours` over `theirs` on the medians of that round's samples.
fn per_round_ratios(ours: &[Vec<f64>], theirs: &[Vec<f64>]) -> Vec<f64> {
    ours.iter()
        .zip(theirs)
        .map(|(ours, theirs)| median(ours) / median(theirs))
        .collect()
}

/// Prints one contender's row: median, range of samples, and the ratios against ours.
fn print_row(name: &str, samples: &[Vec<f64>], ours: &[Vec<f64>], scale: f64) {
    let all: Vec<f64> = samples.iter().flatten().copied().collect();
    let ours_all: Vec<f64> = ours.iter().flatten().copied().collect();
    let (low, high) = range(&all);
    let (ratio_low, ratio_high) = range(&per_round_ratios(ours, samples));
    println!(
        "| {name} | {:.2} | {:.2} to {:.2} | {:.2}x | {:.2}x to {:.2}x |",
        median(&all) / scale,
        low / scale,
        high / scale,
        median(&ours_all) / median(&all),
        ratio_low,
        ratio_high
    );
}

/// Environment variable that selects the instruction-count mode: `contender:N`.
const ROUND_TRIPS_VARIABLE: &str = "SMOL_OFFLOAD_BENCH_ROUND_TRIPS";

/// In the instruction-count mode, does only N round trips with the contender named in
/// [`ROUND_TRIPS_VARIABLE`]; returns false when that mode is off.
fn count_round_trips_only() -> bool {
    let Some(value) = std::env::var_os(ROUND_TRIPS_VARIABLE) else {
        return false;
    };
    let value = value.to_string_lossy();
    let (name, n) = value
        .split_once(':')
        .and_then(|(name, n)| Some((name, n.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("{ROUND_TRIPS_VARIABLE} must be ours:N, smol:N or tokio:N"));
    let contender: Box<dyn RoundTrip> = match name {
        "ours" => Box::new(Ours(
            smol_offload::LoopThread::new("bench-loop").expect("start the loop thread"),
        )),
        "smol" => Box::new(PlainSmol::start()),
        "tokio" => Box::new(Tokio(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .build()
                .expect("start the tokio runtime"),
        )),
        _ => panic!("{ROUND_TRIPS_VARIABLE} must be ours:N, smol:N or tokio:N"),
    };
    for i in 0..n {
        assert_eq!(contender.round_trip(i), i);
    }
    println!("{n} round trips with {}", contender.name());
    true
}

fn main() {
    if count_round_trips_only() {
        return;
    }
    let config = Config::from_env();
    println!(
        "smol-offload loop thread and stream benchmark{}",
        if config.quick { " (quick mode)" } else { "" }
    );
    println!("machine: {}", machine());
    println!(
        "{} rounds, contenders interleaved (rotated order) in each; figures are medians",
        config.rounds
    );
    println!(
        "round trip: a trivial future sent to another thread's loop and awaited from smol::block_on, \
         {} per round after {} warm-up, per-round median",
        config.round_trips, config.warmup
    );
    println!(
        "stream: {} u64 items with buffer = {BUFFER}, consumed by smol::block_on, {} runs of each \
         contender per round, alternating",
        config.items, config.stream_runs
    );
    println!();

    let round_trippers: Vec<Box<dyn RoundTrip>> = vec![
        Box::new(Ours(
            smol_offload::LoopThread::new("bench-loop").expect("start the loop thread"),
        )),
        Box::new(PlainSmol::start()),
        Box::new(Tokio(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .build()
                .expect("start the tokio runtime"),
        )),
    ];
    let pool = smol_offload::ThreadPool::new(1).expect("start the pool");
    let kinds = [
        StreamKind::Pool,
        StreamKind::Dedicated,
        StreamKind::Channel,
        StreamKind::Unblock,
    ];

    // [contender][round] -> samples of that round.
    let mut trips = vec![vec![Vec::new(); config.rounds]; round_trippers.len()];
    let mut rates = vec![vec![Vec::new(); config.rounds]; kinds.len()];
    for round in 0..config.rounds {
        for k in 0..round_trippers.len() {
            let index = (round + k) % round_trippers.len();
            let contender = round_trippers[index].as_ref();
            let ns = round_trips(contender, config.warmup, config.round_trips);
            println!(
                "round {}  {:<22} round trip {:>8.2} us",
                round + 1,
                contender.name(),
                ns / 1000.0
            );
            trips[index][round].push(ns);
        }
        for run in 0..config.stream_runs {
            for k in 0..kinds.len() {
                let index = (round + run + k) % kinds.len();
                let elapsed = kinds[index].run(&pool, config.items);
                let rate = config.items as f64 / elapsed.as_secs_f64();
                println!(
                    "round {}  {:<22} {:>8.2} M items/s",
                    round + 1,
                    kinds[index].name(),
                    rate / 1e6
                );
                rates[index][round].push(rate);
            }
        }
    }

    println!();
    println!(
        "| round trip from another loop | median (us) | range (us) | ours / it | ours / it within a round |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (contender, times) in round_trippers.iter().zip(&trips) {
        print_row(contender.name(), times, &trips[0], 1000.0);
    }
    println!();
    println!(
        "| stream of {} items, buffer {BUFFER} | median (M items/s) | range (M items/s) | ours / it | ours / it within a round |",
        config.items
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (kind, samples) in kinds.iter().zip(&rates) {
        print_row(kind.name(), samples, &rates[0], 1e6);
    }
    println!();
    println!(
        "ours / it: for round trips, below 1 means ours is faster; for streams, above 1 means ours is faster"
    );
    let unblock = rates.len() - 1;
    let stream_ratio = {
        let ours: Vec<f64> = rates[0].iter().flatten().copied().collect();
        let theirs: Vec<f64> = rates[unblock].iter().flatten().copied().collect();
        median(&ours) / median(&theirs)
    };
    let trip_ratio = {
        let ours: Vec<f64> = trips[0].iter().flatten().copied().collect();
        let smol: Vec<f64> = trips[1].iter().flatten().copied().collect();
        median(&ours) / median(&smol)
    };
    println!(
        "target: LoopThread::spawn no slower than plain smol: {:.2}x, {}",
        trip_ratio,
        if trip_ratio <= 1.0 { "met" } else { "MISSED" }
    );
    println!(
        "target: ThreadPool::stream at least as fast as blocking::Unblock: {:.2}x, {}",
        stream_ratio,
        if stream_ratio >= 1.0 { "met" } else { "MISSED" }
    );
    let channel_ratio = {
        let ours: Vec<f64> = rates[0].iter().flatten().copied().collect();
        let theirs: Vec<f64> = rates[2].iter().flatten().copied().collect();
        median(&ours) / median(&theirs)
    };
    println!(
        "kept only while at least 1.3x a bounded async_channel: ThreadPool::stream {:.2}x, {}",
        channel_ratio,
        if channel_ratio >= 1.3 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "kept only while at least 1.3x faster than plain smol: LoopThread::spawn takes {:.2}x, {}",
        trip_ratio,
        if trip_ratio <= 1.0 / 1.3 {
            "met"
        } else {
            "MISSED"
        }
    );
}
