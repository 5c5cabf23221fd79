//! Worker recycling and set-up: `max_tasks_per_worker` replaces a worker after `n` tasks, and
//! `initializer` runs once in every new worker before its first task.

use std::collections::HashMap;
use std::time::Duration;

use smol_offload::{Executor, ProcessPool, gather};

mod common;

use common::block_on;

#[ctor::ctor]
fn start_fork_server() {
    smol_offload::init();
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn pid_and_square(n: u64) -> (u32, u64) {
    (std::process::id(), n * n)
}

fn sleep_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Waits (bounded) until `worker` has left `pool`, replaced by another.
fn wait_until_replaced(pool: &ProcessPool, worker: u32) {
    let deadline = std::time::Instant::now() + common::WATCHDOG;
    while pool.pids().contains(&worker) || pool.pids().len() != pool.workers() {
        assert!(
            std::time::Instant::now() < deadline,
            "{worker} was not replaced"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn recycling_pool(workers: usize, tasks: usize) -> ProcessPool {
    ProcessPool::builder()
        .workers(workers)
        .max_tasks_per_worker(tasks)
        .build()
        .unwrap()
}

#[test]
fn zero_max_tasks_is_refused() {
    let err = ProcessPool::builder()
        .max_tasks_per_worker(0)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("max_tasks_per_worker"), "{err}");
}

#[test]
fn a_worker_is_replaced_after_its_tasks() {
    let pool = recycling_pool(1, 3);
    let first = pool.pids()[0];
    let pids: Vec<u32> = (0..9)
        .map(|_| block_on(pool.run(pid, ())))
        .map(Result::unwrap)
        .collect();
    assert_eq!(pids[0], first);
    for batch in pids.chunks(3) {
        assert!(batch.iter().all(|&pid| pid == batch[0]), "{pids:?}");
    }
    assert!(
        pids[0] != pids[3] && pids[3] != pids[6] && pids[0] != pids[6],
        "{pids:?}"
    );
    // The third worker ran its three tasks and is replaced in turn.
    wait_until_replaced(&pool, pids[6]);
}

#[test]
fn no_worker_runs_more_than_its_tasks_even_with_tasks_sent_ahead() {
    const PER_WORKER: usize = 5;
    const TASKS: u64 = 2_000;
    let pool = recycling_pool(2, PER_WORKER);
    // A deep queue of tiny tasks: the dispatcher sends tasks ahead, never past a budget.
    let tasks: Vec<_> = (0..TASKS).map(|n| pool.run(pid_and_square, n)).collect();
    let results = block_on(gather(tasks));
    let mut per_pid: HashMap<u32, usize> = HashMap::new();
    for (n, result) in results.into_iter().enumerate() {
        let (pid, square) = result.unwrap_or_else(|err| panic!("task {n} failed: {err}"));
        assert_eq!(square, (n * n) as u64);
        *per_pid.entry(pid).or_default() += 1;
    }
    assert!(
        per_pid.values().all(|&count| count <= PER_WORKER),
        "a worker ran more than {PER_WORKER} tasks: {per_pid:?}"
    );
    assert!(per_pid.len() >= TASKS as usize / PER_WORKER);
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.queued), (TASKS, 0), "{stats}");
}

#[test]
fn recycling_loses_no_task_sent_straight_to_a_worker_or_queued() {
    let pool = recycling_pool(2, 1);
    let (sender, receiver) = std::sync::mpsc::channel();
    for n in 0..20u64 {
        let task = pool.run(pid_and_square, n);
        let sender = sender.clone();
        std::thread::spawn(move || sender.send(block_on(task).unwrap()).unwrap());
    }
    drop(sender);
    let results: Vec<(u32, u64)> = receiver.iter().collect();
    assert_eq!(results.len(), 20);
    let pids: std::collections::HashSet<u32> = results.iter().map(|(pid, _)| *pid).collect();
    assert_eq!(pids.len(), 20, "one task per worker");
    // A long task on a worker with one task left finishes; the worker goes after it.
    let worker = block_on(pool.run(sleep_ms, 100)).unwrap();
    wait_until_replaced(&pool, worker);
}
