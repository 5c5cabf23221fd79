//! Remote pool benchmark: a `RemotePool` on a private `redis-server` on loopback against the
//! floor of a raw Redis round trip (`LPUSH` + `BRPOP`, echoed by a second process), side by
//! side in one run, with ratios; then the throughput of a burst of trivial tasks on two
//! worker processes.
//!
//! Run with `cargo bench -p smol-offload-remote --bench remote` (needs `redis-server` on the `PATH`);
//! set `SMOL_OFFLOAD_BENCH_QUICK=1` for a short smoke run. The benchmark starts its own broker on
//! a free port, two workers (this binary in worker mode, one process each) and the echo
//! process, and kills them all at the end. With `SMOL_OFFLOAD_BENCH_REMOTE_ROUND_TRIPS_ONLY=1` it
//! runs only the remote round trips, without the floor and the bursts: for counting what one
//! call costs with `perf stat -e context-switches --inherit` or `strace -f`.

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use smol_offload::{Executor, gather};
use smol_offload_remote::{RemotePool, RemoteWorker};

mod common;
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use common::{machine, median, quick_mode};
use redis_server::RedisServer;

const ROLE_VARIABLE: &str = "SMOL_OFFLOAD_BENCH_REMOTE_ROLE";
const URL_VARIABLE: &str = "SMOL_OFFLOAD_BENCH_REMOTE_URL";
const KEY: &str = "benchmark-key-0123456789abcdef";
const QUEUE: &str = "bench";
/// The queue of the second fleet, whose workers hold several jobs per process.
const PREFETCH_QUEUE: &str = "bench-prefetch";
const PREFETCH: usize = 32;
const WORKERS: usize = 2;

fn echo(n: u64) -> u64 {
    std::hint::black_box(n)
}

/// Child processes killed when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_role(role: &str, url: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE_VARIABLE, role)
        .env(URL_VARIABLE, url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn connection(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

/// The floor's second process: pops a request, pushes it back as the reply, forever.
fn echo_loop(url: &str) {
    let mut connection = connection(url);
    loop {
        let (_, value): (String, Vec<u8>) = redis::cmd("BRPOP")
            .arg("floor:requests")
            .arg(0)
            .query(&mut connection)
            .unwrap();
        redis::cmd("LPUSH")
            .arg("floor:replies")
            .arg(value)
            .query::<()>(&mut connection)
            .unwrap();
    }
}

fn floor_round_trips(url: &str, count: usize) -> Vec<f64> {
    let mut connection = connection(url);
    (0..count)
        .map(|n| {
            let start = Instant::now();
            redis::cmd("LPUSH")
                .arg("floor:requests")
                .arg(postcard::to_allocvec(&(n as u64)).unwrap())
                .query::<()>(&mut connection)
                .unwrap();
            let _: (String, Vec<u8>) = redis::cmd("BRPOP")
                .arg("floor:replies")
                .arg(0)
                .query(&mut connection)
                .unwrap();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

fn remote_round_trips(pool: &RemotePool, count: usize) -> Vec<f64> {
    smol::block_on(async {
        let mut times = Vec::with_capacity(count);
        for n in 0..count as u64 {
            let start = Instant::now();
            assert_eq!(pool.run(echo, n).await.unwrap(), n);
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
        times
    })
}

/// The number of commands the broker has run so far, all kinds together (`INFO commandstats`;
/// a script counts once, and so does each command it calls).
fn broker_commands(url: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut connection(url))
        .unwrap();
    info.lines()
        .filter_map(|line| {
            line.split_once("calls=")?
                .1
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn remote_burst(pool: &RemotePool, count: u64) -> f64 {
    let start = Instant::now();
    let results = smol::block_on(gather((0..count).map(|n| pool.run(echo, n))));
    let elapsed = start.elapsed().as_secs_f64();
    for (n, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), n as u64);
    }
    count as f64 / elapsed
}

fn main() {
    smol_offload::init();
    match std::env::var(ROLE_VARIABLE).as_deref() {
        Ok("worker") => {
            let url = std::env::var(URL_VARIABLE).unwrap();
            RemoteWorker::builder(&url)
                .queue(QUEUE)
                .key(KEY)
                .workers(1)
                .serve()
                .unwrap();
            return;
        }
        Ok("prefetching-worker") => {
            let url = std::env::var(URL_VARIABLE).unwrap();
            RemoteWorker::builder(&url)
                .queue(PREFETCH_QUEUE)
                .key(KEY)
                .workers(1)
                .prefetch(PREFETCH)
                .serve()
                .unwrap();
            return;
        }
        Ok("echo") => return echo_loop(&std::env::var(URL_VARIABLE).unwrap()),
        _ => {}
    }
    // Declared before the children, so it is killed after them.
    let redis = RedisServer::start();
    let url = redis.url();
    let mut children = Children(vec![start_role("echo", &url)]);
    for _ in 0..WORKERS {
        children.0.push(start_role("worker", &url));
        children.0.push(start_role("prefetching-worker", &url));
    }
    let pool = RemotePool::builder(&url)
        .queue(QUEUE)
        .key(KEY)
        .build()
        .unwrap();
    let prefetching = RemotePool::builder(&url)
        .queue(PREFETCH_QUEUE)
        .key(KEY)
        .build()
        .unwrap();
    let (rounds, round_trips, burst) = if quick_mode() {
        (2, 200, 2_000)
    } else {
        (5, 2_000, 10_000)
    };
    // Warm up: both workers have joined and answered.
    smol::block_on(gather((0..100).map(|n| pool.run(echo, n))));
    smol::block_on(gather((0..100).map(|n| prefetching.run(echo, n))));

    println!("smol-offload remote pool benchmark");
    println!("machine: {}", machine());
    println!(
        "redis-server on loopback; {WORKERS} workers of 1 process each; {round_trips} round \
         trips and a burst of {burst} tasks per round, {rounds} rounds (medians across rounds); \
         the bursts run on two fleets of {WORKERS} such workers, one holding 1 job per process \
         (the default), one holding {PREFETCH} (prefetch({PREFETCH}))"
    );
    if std::env::var_os("SMOL_OFFLOAD_BENCH_REMOTE_ROUND_TRIPS_ONLY").is_some() {
        let mut times = remote_round_trips(&pool, round_trips * rounds);
        times.sort_by(f64::total_cmp);
        println!(
            "{} round trips only: median {:.1} µs",
            times.len(),
            median(&times)
        );
        return;
    }
    let (mut ours, mut floor, mut ours_p99, mut floor_p99, mut rates, mut prefetched) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let (mut commands, mut prefetched_commands) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let mut times = remote_round_trips(&pool, round_trips);
        times.sort_by(f64::total_cmp);
        ours.push(median(&times));
        ours_p99.push(times[times.len() * 99 / 100]);
        let mut times = floor_round_trips(&url, round_trips);
        times.sort_by(f64::total_cmp);
        floor.push(median(&times));
        floor_p99.push(times[times.len() * 99 / 100]);
        let before = broker_commands(&url);
        rates.push(remote_burst(&pool, burst));
        let between = broker_commands(&url);
        prefetched.push(remote_burst(&prefetching, burst));
        let after = broker_commands(&url);
        // Each reading is one INFO command itself.
        commands.push((between - before - 1) as f64 / burst as f64);
        prefetched_commands.push((after - between - 1) as f64 / burst as f64);
    }
    let (ours, floor) = (median(&ours), median(&floor));
    let (ours_p99, floor_p99) = (median(&ours_p99), median(&floor_p99));
    let rate = median(&rates);
    let prefetched = median(&prefetched);
    let (commands, prefetched_commands) = (median(&commands), median(&prefetched_commands));
    println!();
    println!("| contender | round trip median | p99 |");
    println!("| --- | ---: | ---: |");
    println!("| RemotePool::run, trivial fn | {ours:.1} µs | {ours_p99:.1} µs |");
    println!("| raw LPUSH + BRPOP echo (floor) | {floor:.1} µs | {floor_p99:.1} µs |");
    println!();
    println!(
        "round trip: {:.2}x the floor (target <= 3x); burst of {burst}: {rate:.0} tasks/s \
         holding 1 job per process, {prefetched:.0} tasks/s with prefetch({PREFETCH}) \
         (target >= 20000/s)",
        ours / floor
    );
    println!(
        "broker commands per task in the bursts: {commands:.1} holding 1 job per process, \
         {prefetched_commands:.1} with prefetch({PREFETCH})"
    );
}
