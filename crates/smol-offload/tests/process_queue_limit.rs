//! Backpressure: with `queue_limit(n)` at most `n` tasks wait in a process pool's queue;
//! `run` beyond that returns a task that waits for room, and `ready()` lets a producer wait.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use smol::prelude::*;
use smol_offload::{Executor, ProcessPool, gather};

mod common;

use common::block_on;

#[ctor::ctor]
fn start_fork_server() {
    smol_offload::init();
}

fn square(n: u64) -> u64 {
    n * n
}

fn touch(path: PathBuf) {
    std::fs::write(path, b"ran").unwrap();
}

/// Holds its worker until `path` exists (a gate the test opens by creating the file).
fn wait_for(path: PathBuf) {
    while !path.exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("smol-offload-room-{}-{name}", std::process::id()))
}

fn open_gate(gate: &Path) {
    std::fs::write(gate, b"open").unwrap();
}

/// The number of tasks queued at one instant, if two snapshots of the counters (each read at
/// slightly different times) pin one down: when no task was submitted between them, the
/// second one's `queued` held when it read its count of picked tasks.
fn queued_now(pool: &ProcessPool) -> Option<u64> {
    let submitted = |stats: smol_offload::PoolStats| {
        stats.queued + stats.running + stats.cancelled + stats.completed
    };
    let first = pool.stats();
    let second = pool.stats();
    (submitted(first) == submitted(second)).then_some(second.queued)
}

/// Samples the queue's length on a thread until stopped, and remembers the largest.
struct QueueSampler {
    stop: Arc<AtomicBool>,
    largest: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl QueueSampler {
    fn start(pool: &ProcessPool) -> QueueSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let largest = Arc::new(AtomicU64::new(0));
        let thread = {
            let (pool, stop, largest) = (pool.clone(), stop.clone(), largest.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(queued) = queued_now(&pool) {
                        largest.fetch_max(queued, Ordering::SeqCst);
                    }
                    std::thread::yield_now();
                }
            })
        };
        QueueSampler {
            stop,
            largest,
            thread: Some(thread),
        }
    }

    fn largest(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.largest.load(Ordering::SeqCst)
    }
}

#[test]
fn zero_is_refused() {
    let err = ProcessPool::builder().queue_limit(0).build().unwrap_err();
    assert!(err.to_string().contains("queue_limit"), "{err}");
}

#[test]
fn the_queue_never_holds_more_than_the_limit_and_nothing_is_lost() {
    let pool = ProcessPool::builder()
        .workers(1)
        .queue_limit(3)
        .build()
        .unwrap();
    let gate = temp_path("limit-gate");
    let _ = std::fs::remove_file(&gate);
    let held = pool.run(wait_for, gate.clone());
    let sampler = QueueSampler::start(&pool);
    let tasks: Vec<_> = (0..200u64).map(|n| pool.run(square, n)).collect();
    // The worker is held: three tasks are queued, the others wait for room.
    assert_eq!(pool.stats().queued, 3, "{}", pool.stats());
    assert_eq!(tasks.iter().filter(|task| task.is_started()).count(), 0);
    open_gate(&gate);
    let results = block_on(gather(tasks));
    block_on(held).unwrap();
    for (n, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), (n * n) as u64);
    }
    assert!(sampler.largest() <= 3);
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.queued), (201, 0), "{stats}");
    std::fs::remove_file(gate).unwrap();
}

#[test]
fn ready_waits_for_room() {
    let pool = ProcessPool::builder()
        .workers(1)
        .queue_limit(2)
        .build()
        .unwrap();
    let gate = temp_path("ready-gate");
    let _ = std::fs::remove_file(&gate);
    let held = pool.run(wait_for, gate.clone());
    let queued: Vec<_> = (0..2u64).map(|n| pool.run(square, n)).collect();
    let mut ready = pool.ready();
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(ready.poll(&mut cx), Poll::Pending, "the queue is full");
    open_gate(&gate);
    block_on(ready);
    block_on(held).unwrap();
    assert_eq!(block_on(gather(queued)).len(), 2);
    // Without a limit, ready() resolves at once.
    let unbounded = ProcessPool::new(1).unwrap();
    let mut ready = unbounded.ready();
    assert_eq!(ready.poll(&mut cx), Poll::Ready(()));
    std::fs::remove_file(gate).unwrap();
}

#[test]
fn a_producer_that_awaits_ready_keeps_the_queue_at_the_limit() {
    const LIMIT: u64 = 8;
    const TASKS: u64 = 20_000;
    let pool = ProcessPool::builder()
        .workers(2)
        .queue_limit(LIMIT as usize)
        .build()
        .unwrap();
    let sampler = QueueSampler::start(&pool);
    let sum = Arc::new(AtomicU64::new(0));
    let (done, finished) = async_channel::unbounded::<()>();
    block_on(async {
        for n in 0..TASKS {
            pool.ready().await;
            assert!(pool.stats().queued <= LIMIT);
            let task = pool.run(square, n);
            let (sum, done) = (sum.clone(), done.clone());
            smol::spawn(async move {
                sum.fetch_add(task.await.unwrap(), Ordering::SeqCst);
                drop(done);
            })
            .detach();
        }
        drop(done);
        // Every consumer drops its sender when done: the channel closes after the last one.
        assert!(finished.recv().await.is_err());
    });
    assert_eq!(sum.load(Ordering::SeqCst), (0..TASKS).map(square).sum());
    let largest = sampler.largest();
    assert!(largest <= LIMIT, "{largest} queued");
}

#[test]
fn a_task_waiting_for_room_that_is_dropped_never_runs() {
    let pool = ProcessPool::builder()
        .workers(1)
        .queue_limit(1)
        .build()
        .unwrap();
    let gate = temp_path("drop-gate");
    let dropped_marker = temp_path("dropped");
    let cancelled_marker = temp_path("cancelled");
    for path in [&gate, &dropped_marker, &cancelled_marker] {
        let _ = std::fs::remove_file(path);
    }
    let held = pool.run(wait_for, gate.clone());
    let queued = pool.run(square, 3);
    let dropped = pool.run(touch, dropped_marker.clone());
    let cancelled = pool.run(touch, cancelled_marker.clone());
    drop(dropped);
    let err = block_on(cancelled.cancel()).unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    open_gate(&gate);
    block_on(held).unwrap();
    assert_eq!(block_on(queued).unwrap(), 9);
    // The worker runs tasks in order: any task queued before this one has run.
    block_on(pool.run(square, 1)).unwrap();
    assert!(!dropped_marker.exists(), "the dropped task ran");
    assert!(!cancelled_marker.exists(), "the cancelled task ran");
    std::fs::remove_file(gate).unwrap();
}

#[test]
fn a_task_detached_while_waiting_for_room_still_runs() {
    let pool = ProcessPool::builder()
        .workers(1)
        .queue_limit(1)
        .build()
        .unwrap();
    let gate = temp_path("detach-gate");
    let _ = std::fs::remove_file(&gate);
    let held = pool.run(wait_for, gate.clone());
    let queued = pool.run(square, 2);
    let markers: Vec<PathBuf> = (0..5)
        .map(|n| temp_path(&format!("detached-{n}")))
        .collect();
    for marker in &markers {
        let _ = std::fs::remove_file(marker);
        pool.run(touch, marker.clone()).detach();
    }
    assert!(pool.stats().queued <= 1);
    open_gate(&gate);
    block_on(held).unwrap();
    assert_eq!(block_on(queued).unwrap(), 4);
    // Submitted after the detached ones: it runs after them.
    let last = pool.run(square, 5);
    assert_eq!(block_on(last).unwrap(), 25);
    for marker in &markers {
        assert!(marker.exists(), "detached task {marker:?} did not run");
        std::fs::remove_file(marker).unwrap();
    }
    std::fs::remove_file(gate).unwrap();
}

#[test]
fn tasks_waiting_for_room_fail_when_the_pool_is_dropped() {
    let pool = ProcessPool::builder()
        .workers(1)
        .queue_limit(1)
        .build()
        .unwrap();
    let gate = temp_path("shutdown-gate");
    let _ = std::fs::remove_file(&gate);
    let held = pool.run(wait_for, gate.clone());
    let queued = pool.run(square, 2);
    let waiting = pool.run(square, 3);
    let ready = pool.ready();
    drop(pool);
    let err = block_on(waiting).unwrap_err();
    assert!(err.is_shutdown(), "{err}");
    block_on(ready);
    assert!(block_on(queued).unwrap_err().is_shutdown());
    open_gate(&gate);
    // The running task finishes (or is stopped at the end of the pool's grace period).
    let _ = block_on(held);
    std::fs::remove_file(gate).unwrap();
}

#[test]
fn gather_over_a_limited_pool_from_several_threads() {
    let pool = ProcessPool::builder()
        .workers(2)
        .queue_limit(4)
        .build()
        .unwrap();
    let sampler = QueueSampler::start(&pool);
    let producers: Vec<_> = (0..4u64)
        .map(|producer| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let tasks: Vec<_> = (0..500u64)
                    .map(|n| pool.run(square, producer * 1000 + n))
                    .collect();
                let results = block_on(gather(tasks));
                for (n, result) in results.into_iter().enumerate() {
                    let n = producer * 1000 + n as u64;
                    assert_eq!(result.unwrap(), n * n);
                }
            })
        })
        .collect();
    for producer in producers {
        producer.join().unwrap();
    }
    assert!(sampler.largest() <= 4);
}

#[test]
fn many_waiters_each_get_their_turn_when_others_give_up() {
    // One place frees at a time, and wakes one waiter: those dropped while waiting, woken or
    // not, must pass their turn on, or the others would wait forever.
    let pool = ProcessPool::builder()
        .workers(1)
        .queue_limit(1)
        .build()
        .unwrap();
    let gate = temp_path("many-waiters-gate");
    let _ = std::fs::remove_file(&gate);
    let held = pool.run(wait_for, gate.clone());
    let queued = pool.run(square, 1);
    let mut waiting: Vec<_> = (0..300u64).map(|n| (n, pool.run(square, n))).collect();
    // Each one polled once: it registers as a waiter for room.
    block_on(async {
        for (_, task) in &mut waiting {
            assert!(futures_lite::future::poll_once(&mut *task).await.is_none());
        }
    });
    open_gate(&gate);
    block_on(held).unwrap();
    let mut kept = Vec::new();
    for (n, task) in waiting {
        // Every third one gives up, as places free and waiters are woken.
        if n % 3 == 0 {
            drop(task);
        } else {
            kept.push((n, task));
        }
    }
    let (numbers, tasks): (Vec<u64>, Vec<_>) = kept.into_iter().unzip();
    let results = block_on(gather(tasks));
    for (n, result) in numbers.into_iter().zip(results) {
        assert_eq!(result.unwrap(), n * n);
    }
    assert_eq!(block_on(queued).unwrap(), 1);
    std::fs::remove_file(gate).unwrap();
}
