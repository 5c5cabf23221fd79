//! `gather` and `wait` with `FirstCompleted`, `FirstError`, `AllCompleted` and a timeout, what
//! to do with the tasks still pending (await them later, or cancel them), `Task::timeout`, and
//! a semaphore that limits how many offloaded calls are in flight: the patterns of article 003
//! (`asyncio.gather`, `asyncio.wait(return_when=...)`, `asyncio.wait(timeout=2)`,
//! `task.cancel()`, `asyncio.Semaphore(500)`, `run_in_executor(ThreadPoolExecutor(5), sleep, t)`).
//!
//! The article's durations (seconds) are scaled down to tens of milliseconds.
//!
//! Article 003 is one of the Python asyncio articles summarised at the end of
//! `docs/asyncio-migration.md`.
//!
//! Run with `cargo run --release --example wait_modes`.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use smol::LocalExecutor;
use smol::lock::Semaphore;
use smol_offload::{Error, ReturnWhen, ThreadPool, gather, try_gather, wait};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `asyncio.gather` of the article's `blocked_sleep(name, t)` on `ThreadPoolExecutor(5)`:
/// results come back in the order the calls were made, whatever order they finish in.
async fn gather_results() -> Result<()> {
    println!("== gather: blocked_sleep(1..=5) on a pool of 5, results in call order");
    let pool = ThreadPool::new(5)?;
    let start = Instant::now();
    let tasks = (1..=5u64).rev().map(|t| {
        println!(
            "[{:>6.1?}] sleep {t} is running {}0 ms",
            start.elapsed(),
            t * 4
        );
        pool.spawn(move || {
            std::thread::sleep(ms(40 * t));
            t
        })
    });
    let results = try_gather(tasks).await?;
    println!("[{:>6.1?}] results: {results:?}", start.elapsed());
    assert_eq!(results, [5, 4, 3, 2, 1]);

    // `gather` is `return_exceptions=True`: one result per call, failures included. (Rust's
    // panic hook prints the worker's panic on stderr; the pool caught it.)
    let results = gather([
        pool.spawn(|| 1),
        pool.spawn(|| panic!("no answer")),
        pool.spawn(|| 3),
    ])
    .await;
    for (i, result) in results.iter().enumerate() {
        println!("  call {i}: {result:?}");
    }
    assert_eq!(results[0].as_ref().ok(), Some(&1));
    assert_eq!(
        results[1].as_ref().unwrap_err().panic_message(),
        Some("no answer")
    );
    assert_eq!(results[2].as_ref().ok(), Some(&3));
    Ok(())
}

/// The article's `coro(tag)` ten times with "random" durations, collected in three rounds:
/// the first to complete, then whatever completes within a timeout, then all the rest.
async fn first_then_timeout_then_all() -> Result<()> {
    println!("== wait: FirstCompleted, then a 150 ms timeout, then AllCompleted");
    let pool = ThreadPool::new(10)?; // all ten run at once, like ten asyncio.sleep coroutines
    let durations = [310, 60, 450, 120, 270, 90, 380, 200, 150, 420];
    let tasks: Vec<_> = (1..=10u64)
        .zip(durations)
        .map(|(tag, duration)| {
            println!("> {tag} ({duration} ms)");
            pool.spawn(move || {
                std::thread::sleep(ms(duration));
                tag
            })
        })
        .collect();
    let mut seen = Vec::new();

    println!("Get first result:");
    let first = wait(tasks, ReturnWhen::FirstCompleted).await;
    for (_, result) in first.done {
        seen.push(result?);
    }
    println!("  {seen:?}, unfinished: {}", first.pending.len());
    // Tag 2 sleeps least; a loop slow to look may find more tasks done.
    assert!(!seen.is_empty() && seen.len() + first.pending.len() == 10);

    println!("Get more results in 150 ms:");
    // `pending` keeps each task's position in the first call; the tasks return their tag, so
    // the positions are not needed here.
    let unfinished = first.pending.into_iter().map(|(_, task)| task);
    let second = wait(unfinished, ReturnWhen::AllCompleted)
        .timeout(ms(150))
        .await;
    let round: Vec<u64> = second
        .done
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Result<_, _>>()?;
    println!("  {round:?}, unfinished: {}", second.pending.len());
    seen.extend(round);

    println!("Get all other results:");
    let rest = second.pending.into_iter().map(|(_, task)| task);
    let third = wait(rest, ReturnWhen::AllCompleted).await;
    assert!(third.pending.is_empty());
    let round: Vec<u64> = third
        .done
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Result<_, _>>()?;
    println!("  {round:?}");
    seen.extend(round);

    let unique: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), 10, "every task is reported once: {seen:?}");
    assert_eq!(unique, (1..=10).collect());
    Ok(())
}

/// `FIRST_EXCEPTION`: stop at the first failure and cancel what is left. Work that has not
/// started never runs; work already running cannot be stopped and is awaited.
async fn first_error_then_cancel() -> Result<()> {
    println!("== wait: FirstError on a pool of 2, then cancel the pending tasks");
    let pool = ThreadPool::new(2)?;
    let ran: Arc<Vec<AtomicBool>> = Arc::new((0..5).map(|_| AtomicBool::new(false)).collect());
    let tasks: Vec<_> = (0..5usize)
        .map(|i| {
            let ran = ran.clone();
            pool.spawn(move || {
                ran[i].store(true, Ordering::SeqCst);
                if i == 0 {
                    std::thread::sleep(ms(20));
                    panic!("request {i} failed");
                }
                std::thread::sleep(ms(300));
                i
            })
        })
        .collect();
    let waited = wait(tasks, ReturnWhen::FirstError).await;
    let failed: Vec<&Error> = waited
        .done
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    println!(
        "  done: {}, pending: {}",
        waited.done.len(),
        waited.pending.len()
    );
    assert_eq!(failed.len(), 1);
    println!("  first error: {}", failed[0]);
    assert_eq!(failed[0].panic_message(), Some("request 0 failed"));

    // Cancel the queued tasks first, so that none of them starts while we wait for the running
    // ones; `cancel()` of a running task waits for its result.
    let (running, queued): (Vec<_>, Vec<_>) = waited
        .pending
        .into_iter()
        .partition(|(_, task)| task.is_started());
    let mut cancelled = 0;
    for (i, task) in queued.into_iter().chain(running) {
        match task.cancel().await {
            Ok(value) => {
                println!("  task {i}: already running, finished with {value}");
                assert_eq!(value, i);
                assert!(ran[i].load(Ordering::SeqCst));
            }
            Err(err) if err.is_cancelled() => {
                println!("  task {i}: cancelled before it started");
                assert!(!ran[i].load(Ordering::SeqCst), "cancelled work never runs");
                cancelled += 1;
            }
            Err(err) => return Err(err.into()),
        }
    }
    println!("  {cancelled} cancelled, pool: {}", pool.stats());
    Ok(())
}

/// `asyncio.wait_for`: one task with a time limit.
async fn one_task_with_a_timeout() -> Result<()> {
    println!("== Task::timeout (asyncio.wait_for)");
    let pool = ThreadPool::new(1)?;
    let quick = pool.spawn(|| "quick").timeout(ms(500)).await?;
    println!("  within 500 ms: {quick:?}");
    let err = pool
        .spawn(|| std::thread::sleep(ms(200)))
        .timeout(ms(20))
        .await
        .unwrap_err();
    println!("  too slow: {err}");
    assert!(err.is_timeout());
    Ok(())
}

/// `asyncio.Semaphore(500)` around 600 requests: here 600 blocking "fetches" on a pool of 8,
/// with at most 50 submitted to the pool at any time, so its queue stays short.
fn semaphore_limits_calls_in_flight() -> Result<()> {
    const REQUESTS: usize = 600;
    const LIMIT: usize = 50;
    println!("== Semaphore({LIMIT}) around {REQUESTS} offloaded calls on a pool of 8");
    let pool = ThreadPool::new(8)?;
    let semaphore = Semaphore::new(LIMIT);
    let in_flight = Cell::new(0usize);
    let peak_in_flight = Cell::new(0usize);
    let peak_queued = Cell::new(0u64);
    let (semaphore, pool) = (&semaphore, &pool);
    let (in_flight, peak_in_flight, peak_queued) = (&in_flight, &peak_in_flight, &peak_queued);
    let fetch = |n: usize| async move {
        let _permit = semaphore.acquire().await;
        in_flight.set(in_flight.get() + 1);
        peak_in_flight.set(peak_in_flight.get().max(in_flight.get()));
        let task = pool.spawn(move || {
            std::thread::sleep(ms(2)); // the blocking request
            n * 2
        });
        peak_queued.set(peak_queued.get().max(pool.stats().queued));
        let answer = task.await;
        in_flight.set(in_flight.get() - 1);
        answer
    };

    let start = Instant::now();
    let executor = LocalExecutor::new();
    let answers = smol::block_on(executor.run(async {
        let tasks: Vec<_> = (0..REQUESTS).map(|n| executor.spawn(fetch(n))).collect();
        let mut answers = Vec::with_capacity(REQUESTS);
        for task in tasks {
            answers.push(task.await?);
        }
        Ok::<_, Error>(answers)
    }))?;
    println!(
        "  {} answers in {:.1?}; at most {} calls in flight, at most {} queued in the pool",
        answers.len(),
        start.elapsed(),
        peak_in_flight.get(),
        peak_queued.get()
    );
    assert_eq!(answers, (0..REQUESTS).map(|n| n * 2).collect::<Vec<_>>());
    assert!(peak_in_flight.get() <= LIMIT);
    assert!(peak_queued.get() <= LIMIT as u64);
    assert_eq!(pool.stats().completed, REQUESTS as u64);
    Ok(())
}

fn main() -> Result<()> {
    smol::block_on(async {
        gather_results().await?;
        first_then_timeout_then_all().await?;
        first_error_then_cancel().await?;
        one_task_with_a_timeout().await
    })?;
    semaphore_limits_calls_in_flight()?;
    println!("all checks passed");
    Ok(())
}
