//! Several threads, each running its own `smol::block_on` event loop, share one cloned
//! `ThreadPool` of 5 workers: article 003's "several loops in several threads, all throwing work
//! at the same `ThreadPoolExecutor`" (`loop.run_in_executor(e, worker, index)` per thread).
//!
//! A pool handle is cheap to clone and can be used from any thread and any loop: the work of all
//! loops waits in one queue and never runs on more than the pool's 5 threads. The pool's
//! `stats()` are logged while the loops run.
//!
//! Article 003 is one of the Python asyncio articles summarised at the end of
//! `docs/asyncio-migration.md`.
//!
//! Run with `cargo run --release --example several_loops_one_pool`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use smol_offload::ThreadPool;

const LOOPS: usize = 8;
const CALLS_PER_LOOP: usize = 4;
const WORKERS: usize = 5;

/// Tasks running on the pool right now, and the most ever seen at once.
#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// The article's `worker(index)`: sleep, then say which pool thread ran it.
fn worker(concurrency: &Concurrency, index: usize) -> (usize, String) {
    let running = concurrency.now.fetch_add(1, Ordering::SeqCst) + 1;
    concurrency.peak.fetch_max(running, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    concurrency.now.fetch_sub(1, Ordering::SeqCst);
    let thread = std::thread::current().name().unwrap_or("").to_owned();
    (index, thread)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = ThreadPool::builder()
        .workers(WORKERS)
        .thread_name(|i| format!("shared-{i}"))
        .build()?;
    let concurrency = Arc::new(Concurrency::default());
    let started = Instant::now();

    let loop_threads: Vec<_> = (0..LOOPS)
        .map(|loop_index| {
            let pool = pool.clone();
            let concurrency = concurrency.clone();
            std::thread::Builder::new()
                .name(format!("loop-{loop_index}"))
                .spawn(move || {
                    // A loop of its own in this thread, like `asyncio.new_event_loop()`.
                    smol::block_on(async {
                        let tasks: Vec<_> = (0..CALLS_PER_LOOP)
                            .map(|call| {
                                let index = loop_index * CALLS_PER_LOOP + call;
                                let concurrency = concurrency.clone();
                                pool.spawn(move || worker(&concurrency, index))
                            })
                            .collect();
                        let results = smol_offload::try_gather(tasks).await?;
                        println!(
                            "{:>7.1?} loop-{loop_index} got {:?}  pool: {}",
                            started.elapsed(),
                            results
                                .iter()
                                .map(|(i, t)| format!("{i}@{t}"))
                                .collect::<Vec<_>>(),
                            pool.stats(),
                        );
                        Ok::<_, smol_offload::Error>(results)
                    })
                })
        })
        .collect::<Result<_, _>>()?;

    // The main thread watches the shared pool while the loops run.
    while loop_threads.iter().any(|t| !t.is_finished()) {
        println!("{:>7.1?} main   pool: {}", started.elapsed(), pool.stats());
        std::thread::sleep(Duration::from_millis(60));
    }

    let mut indices = BTreeSet::new();
    let mut threads = BTreeSet::new();
    for (loop_index, handle) in loop_threads.into_iter().enumerate() {
        let results = handle.join().expect("a loop thread panicked")?;
        assert_eq!(results.len(), CALLS_PER_LOOP);
        for (call, (index, thread)) in results.into_iter().enumerate() {
            assert_eq!(
                index,
                loop_index * CALLS_PER_LOOP + call,
                "results come back in order"
            );
            indices.insert(index);
            threads.insert(thread);
        }
    }

    let stats = pool.stats();
    let peak = concurrency.peak.load(Ordering::SeqCst);
    println!("{:>7.1?} main   pool: {stats}", started.elapsed());
    println!(
        "{} calls from {LOOPS} loops ran on {} distinct pool threads {threads:?}, at most {peak} at once",
        indices.len(),
        threads.len(),
    );
    assert_eq!(indices, (0..LOOPS * CALLS_PER_LOOP).collect());
    assert!(
        threads.len() <= WORKERS,
        "more than {WORKERS} threads: {threads:?}"
    );
    assert!(threads.iter().all(|t| t.starts_with("shared-")));
    assert!(
        peak <= WORKERS,
        "{peak} calls ran at once on {WORKERS} workers"
    );
    assert_eq!(stats.completed, (LOOPS * CALLS_PER_LOOP) as u64);
    assert_eq!((stats.queued, stats.running), (0, 0));
    Ok(())
}
