//! What the `metrics` feature costs per task: round trips (submit one task, await it, again)
//! on a pool that records into a real recorder (`metrics-exporter-prometheus`'s, installed
//! for the pool alone with `metrics::with_local_recorder`) against the same kind of pool built
//! with no recorder, whose handles do nothing. Threads and processes, 2 workers each.
//!
//! Both pools run the feature's own bookkeeping (two clock reads, the gauges' calls): what the
//! ratio shows is the cost of recording into a recorder, the part that grows with the exporter.
//! A build without the feature has no such code at all; compare `ours` in the `thread_pool`
//! bench of a build without it for the whole difference.
//!
//! The two pools of a pair take turns every 250 round trips, each going first in every other
//! turn, so that machine noise hits both alike. A control pair, two thread pools without a
//! recorder, shows how far apart two equal pools land on the machine.
//!
//! Run with `cargo bench -p smol-offload --features metrics --bench metrics`; add `-- --quick`
//! (or set `SMOL_OFFLOAD_BENCH_QUICK=1`) for a smoke test. The four contenders take turns in
//! every round, and each figure is the median over rounds of the median round trip.

use std::hint::black_box;
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use smol_offload::{Executor, ProcessPool, ThreadPool};

mod common;

use common::{machine, median, quick_mode};

smol_offload::init_for_tests!();

const WORKERS: usize = 2;

fn identity(n: u64) -> u64 {
    n
}

/// Round trips per turn: the two pools of a pair take turns this often, so that machine
/// noise hits both alike.
const TURN: usize = 250;

/// The medians of `n` round trips on each of two pools, after `warmup` unmeasured ones each,
/// in nanoseconds; the pools take turns every [`TURN`] round trips.
fn round_trip_ns(
    pools: [&dyn Fn(u64) -> smol_offload::Task<u64>; 2],
    warmup: usize,
    n: usize,
) -> [f64; 2] {
    smol::block_on(async {
        for pool in pools {
            for i in 0..warmup {
                black_box(pool(i as u64).await.unwrap());
            }
        }
        let mut times = [Vec::with_capacity(n), Vec::with_capacity(n)];
        for turn in 0..n.div_ceil(TURN) {
            // Each pool goes first in every other turn.
            for which in [turn % 2, 1 - turn % 2] {
                for i in 0..TURN {
                    let start = Instant::now();
                    black_box(pools[which](black_box(i as u64)).await.unwrap());
                    times[which].push(start.elapsed().as_nanos() as f64);
                }
            }
        }
        times.map(|times| median(&times))
    })
}

fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new().build_recorder()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = quick_mode();
    let (rounds, warmup, n) = if quick {
        (3, 200, 2_000)
    } else {
        (7, 2_000, 20_000)
    };
    let process_n = n / 4;

    let threads_recorder = recorder();
    let processes_recorder = recorder();
    let threads_plain = ThreadPool::new(WORKERS)?;
    let threads_plain_too = ThreadPool::new(WORKERS)?;
    let threads_recorded =
        metrics::with_local_recorder(&threads_recorder, || ThreadPool::new(WORKERS))?;
    let processes_plain = ProcessPool::new(WORKERS)?;
    let processes_recorded =
        metrics::with_local_recorder(&processes_recorder, || ProcessPool::new(WORKERS))?;

    let mut figures: [Vec<f64>; 6] = Default::default();
    for _ in 0..rounds {
        let [plain, recorded] = round_trip_ns(
            [&|i| threads_plain.run(identity, i), &|i| {
                threads_recorded.run(identity, i)
            }],
            warmup,
            n,
        );
        figures[0].push(plain);
        figures[1].push(recorded);
        let [plain, recorded] = round_trip_ns(
            [&|i| processes_plain.run(identity, i), &|i| {
                processes_recorded.run(identity, i)
            }],
            warmup / 4,
            process_n,
        );
        figures[2].push(plain);
        figures[3].push(recorded);
        let [plain, plain_too] = round_trip_ns(
            [&|i| threads_plain.run(identity, i), &|i| {
                threads_plain_too.run(identity, i)
            }],
            warmup,
            n,
        );
        figures[4].push(plain);
        figures[5].push(plain_too);
    }
    let [
        thread_plain,
        thread_recorded,
        process_plain,
        process_recorded,
        control,
        control_too,
    ] = figures.map(|rounds| median(&rounds));

    println!(
        "metrics: round trip with a recorder against without one, {WORKERS} workers, \
         median of {rounds} rounds{}",
        if quick { " (quick mode)" } else { "" }
    );
    println!("machine: {}", machine());
    let line = |what: &str, plain: f64, recorded: f64| {
        println!(
            "{what:<8} no recorder {plain:>9.0} ns   recorder {recorded:>9.0} ns   \
             ratio {:.3}   cost {:>6.0} ns/task = {:.1} % of a thread round trip",
            recorded / plain,
            recorded - plain,
            (recorded - plain) / thread_plain * 100.0
        );
    };
    line("thread", thread_plain, thread_recorded);
    line("process", process_plain, process_recorded);
    println!(
        "control: two thread pools without a recorder, the same way: ratio {:.3} \
         (how far apart two equal pools land on this machine)",
        control_too / control
    );
    Ok(())
}
