//! Tasks sent straight to an idle worker: a task submitted while a worker is idle and nothing
//! is queued skips the dispatcher and reads its own reply. These tests check that such a task
//! behaves like any other: awaited, polled for `is_finished` alone, left unpolled, dropped,
//! detached, timed out, moved across threads, or outlived by its pool.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use smol_offload::{Executor, ProcessPool, ReturnWhen, wait};

mod common;

use common::{FileGate, WATCHDOG, block_on, wait_for_file};

smol_offload::init_for_tests!();

fn square(n: u64) -> u64 {
    n * n
}

fn sleep_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Waits, without a deadline of its own, until `condition` holds; fails after [`WATCHDOG`].
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Where and how often a process has gone to sleep, from `/proc`: a worker that was waiting
/// for a request, ran one and wrote its reply is asleep in the same place again, one or more
/// sleeps later.
#[derive(PartialEq)]
struct Sleep {
    /// The kernel function it sleeps in, if it sleeps.
    wchan: Option<String>,
    /// How many times it has gone to sleep.
    sleeps: u64,
}

impl Sleep {
    fn of(pid: u32) -> Sleep {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> String {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .unwrap()
                .trim()
                .to_owned()
        };
        let asleep = field("State:").starts_with('S');
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap();
        Sleep {
            wchan: asleep.then_some(wchan),
            sleeps: field("voluntary_ctxt_switches:").parse().unwrap(),
        }
    }

    /// True when the process sleeps where it slept at `earlier`, having woken since.
    fn is_a_later(&self, earlier: &Sleep) -> bool {
        self.wchan.is_some() && self.wchan == earlier.wchan && self.sleeps > earlier.sleeps
    }
}

#[test]
fn an_unpolled_task_does_not_keep_its_worker_from_queued_work() {
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.pids()[0];
    block_on(pool.run(square, 2)).unwrap();
    // Asleep in the same place, without waking, across 20 ms: waiting for a request, not in a
    // passing sleep on the way back to it (a loaded machine shows those).
    let mut idle = Sleep::of(worker);
    eventually("the worker waits for a request", || {
        idle = Sleep::of(worker);
        std::thread::sleep(Duration::from_millis(20));
        idle.wchan.is_some() && Sleep::of(worker) == idle
    });
    let first = pool.run(square, 3);
    // The reply waits in the socket, unread: nobody polls `first`.
    eventually("the worker replied and waits again", || {
        Sleep::of(worker).is_a_later(&idle)
    });
    let second = pool.run(square, 4);
    assert_eq!(block_on(second).unwrap(), 16);
    assert_eq!(block_on(first).unwrap(), 9);
}

#[test]
fn is_finished_alone_brings_the_result_in() {
    let pool = ProcessPool::new(1).unwrap();
    let task = pool.run(square, 5);
    eventually("the task finished", || task.is_finished());
    assert_eq!(block_on(task).unwrap(), 25);
}

#[test]
fn a_dropped_task_gives_its_worker_back() {
    let pool = ProcessPool::new(1).unwrap();
    let gate = FileGate::new("dropped-task");
    let task = pool.run(wait_for_file, gate.path());
    eventually("the task started", || task.is_started());
    drop(task);
    gate.open();
    assert_eq!(block_on(pool.run(square, 6)).unwrap(), 36);
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.cancelled), (2, 0), "{stats}");
}

#[test]
fn a_detached_task_runs_and_gives_its_worker_back() {
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.pids()[0];
    pool.run(sleep_ms, 30).detach();
    assert_eq!(block_on(pool.run(sleep_ms, 0)).unwrap(), worker);
    eventually("both tasks counted", || pool.stats().completed == 2);
}

#[test]
fn a_timed_out_task_gives_its_worker_back() {
    let pool = ProcessPool::new(1).unwrap();
    let gate = FileGate::new("timed-out-task");
    let slow = pool
        .run(wait_for_file, gate.path())
        .timeout(Duration::from_millis(10));
    assert!(block_on(slow).unwrap_err().is_timeout());
    gate.open();
    assert_eq!(block_on(pool.run(square, 7)).unwrap(), 49);
}

#[test]
fn a_task_outlives_its_pool() {
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.pids()[0];
    let gate = FileGate::new("outlives-its-pool");
    let task = pool.run(wait_for_file, gate.path());
    eventually("the task started", || task.is_started());
    drop(pool);
    gate.open();
    assert_eq!(block_on(task).unwrap(), worker, "a running task finishes");
}

#[test]
fn a_task_polled_on_one_thread_finishes_on_another() {
    let pool = ProcessPool::new(1).unwrap();
    let gate = FileGate::new("polled-on-one-thread");
    let mut task = pool.run(wait_for_file, gate.path());
    let polled = pin!(&mut task).poll(&mut Context::from_waker(Waker::noop()));
    assert!(polled.is_pending());
    gate.open();
    let worker = std::thread::spawn(move || block_on(task))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(pool.pids(), [worker]);
}

#[test]
fn wait_sees_the_first_of_two_direct_tasks() {
    let pool = ProcessPool::new(2).unwrap();
    let gate = FileGate::new("first-of-two");
    let tasks = vec![pool.run(wait_for_file, gate.path()), pool.run(sleep_ms, 0)];
    let waited = block_on(wait(tasks, ReturnWhen::FirstCompleted));
    assert_eq!(waited.done.len(), 1);
    assert_eq!(waited.done[0].0, 1, "the ungated task ends first");
    gate.open();
    let rest = waited.pending.into_iter().map(|(_, task)| task);
    let waited = block_on(wait(rest, ReturnWhen::AllCompleted));
    assert!(waited.done[0].1.is_ok());
}

#[test]
fn an_idle_worker_that_dies_is_replaced() {
    let pool = ProcessPool::new(2).unwrap();
    let victim = pool.pids()[0];
    let pid = nix::unistd::Pid::from_raw(victim as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    eventually("the dead worker replaced", || {
        let pids = pool.pids();
        pids.len() == 2 && !pids.contains(&victim)
    });
    for n in 0..4 {
        assert_eq!(block_on(pool.run(square, n)).unwrap(), n * n);
    }
}

#[test]
fn a_task_sent_to_a_worker_that_just_died_runs_elsewhere() {
    let pool = ProcessPool::new(1).unwrap();
    let victim = pool.pids()[0];
    let pid = nix::unistd::Pid::from_raw(victim as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    // Submitted as soon as the worker is gone, before or after the pool notices: the task
    // never reached the dead worker, so it must not fail with it.
    eventually("the worker gone", || {
        std::fs::read_to_string(format!("/proc/{victim}/stat"))
            .map_or(true, |stat| stat.contains(") Z"))
    });
    let worker = block_on(pool.run(sleep_ms, 0)).unwrap();
    assert_ne!(worker, victim);
}

#[test]
fn many_lone_round_trips_alternate_with_bursts() {
    let pool = ProcessPool::new(2).unwrap();
    block_on(async {
        for round in 0..50u64 {
            assert_eq!(pool.run(square, round).await.unwrap(), round * round);
            let burst: Vec<_> = (0..20).map(|n| pool.run(square, n)).collect();
            for (n, task) in (0..20u64).zip(burst) {
                assert_eq!(task.await.unwrap(), n * n);
            }
        }
    });
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.queued, stats.running), (1050, 0, 0));
}

fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

#[test]
fn long_replies_to_direct_tasks_arrive_whole() {
    let pool = ProcessPool::new(1).unwrap();
    block_on(async {
        for len in [0, 100, 64 * 1024, 64 * 1024 + 1, 3 << 20] {
            let reply = pool.run(bytes, len).await.unwrap();
            assert_eq!(reply, bytes(len), "a reply of {len} bytes");
        }
    });
}

#[test]
fn direct_tasks_resolve_under_any_executor() {
    // Only `smol::block_on` drives the reactor on the awaiting thread; elsewhere the reply
    // wakes async-io's own thread, which wakes the task.
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.pids()[0];
    let call = || common::watched(pool.run(sleep_ms, 20));

    assert_eq!(futures_lite::future::block_on(call()).unwrap(), worker);

    let local = smol::LocalExecutor::new();
    let value = futures_lite::future::block_on(local.run(local.spawn(call())));
    assert_eq!(value.unwrap(), worker);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(runtime.block_on(call()).unwrap(), worker);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let value = runtime.block_on(async { tokio::spawn(call()).await });
    assert_eq!(value.unwrap().unwrap(), worker);
}
