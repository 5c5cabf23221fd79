//! Stopping started process tasks: `Task::timeout`, `Task::cancel` and, with `kill_on_drop`,
//! dropping a task kill the worker that runs it; the pool forks a replacement, and the next
//! task does not wait for the abandoned work. Also the pool-wide `task_timeout`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use smol_offload::{Executor, ProcessPool, Task};

mod common;

use common::block_on;

#[ctor::ctor]
fn start_fork_server() {
    smol_offload::init();
}

/// Longer than any test may take: a task of this length that is not killed fails the test.
const FOREVER_MS: u64 = 120_000;
/// How long the next task may take after a kill, on a loaded machine: far below `FOREVER_MS`.
const PROMPTLY: Duration = Duration::from_secs(30);

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn square(n: u64) -> u64 {
    n * n
}

/// Writes its pid to `marker`, then sleeps `ms`: the test knows it started, and where.
fn mark_then_sleep((marker, ms): (PathBuf, u64)) -> u32 {
    std::fs::write(&marker, std::process::id().to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn sleep_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("smol-offload-kill-{}-{name}", std::process::id()))
}

/// Waits (polling, bounded) for `marker` to hold the pid of the worker that started the task.
fn started_on(marker: &Path) -> u32 {
    let deadline = Instant::now() + common::WATCHDOG;
    loop {
        if let Ok(text) = std::fs::read_to_string(marker)
            && let Ok(pid) = text.parse()
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "the task never started");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `future`'s output, which must come within [`PROMPTLY`].
async fn promptly<T>(future: impl std::future::Future<Output = T>) -> T {
    use smol::future::FutureExt;
    let late = async {
        smol::Timer::after(PROMPTLY).await;
        panic!("waited for work that should have been killed");
    };
    future.or(late).await
}

/// True while `pid` runs (a zombie has ended: it does not count).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.trim().chars().next());
            state != Some('Z') && state != Some('X')
        }
        Err(_) => false,
    }
}

fn wait_until_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The next task on `pool` runs promptly, on a worker other than `killed`, which is gone and
/// no longer listed.
fn assert_replaced(pool: &ProcessPool, killed: u32) {
    let next = block_on(pool.run(pid, ()).timeout(PROMPTLY));
    let next = next.expect("the next task waited for the abandoned one");
    assert_ne!(next, killed, "the killed worker ran the next task");
    wait_until_gone(killed);
    let pids = pool.pids();
    assert_eq!(pids.len(), pool.workers(), "{pids:?}");
    assert!(!pids.contains(&killed), "{killed} still listed in {pids:?}");
}

#[test]
fn timeout_of_a_task_sent_straight_to_a_worker_kills_it() {
    let pool = ProcessPool::new(1).unwrap();
    let before = pool.pids();
    // The only worker is idle: the task goes straight to it, and has started when run returns.
    let task = pool.run(sleep_ms, FOREVER_MS);
    assert!(task.is_started());
    let err = block_on(task.timeout(Duration::from_millis(50))).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_replaced(&pool, before[0]);
}

#[test]
fn timeout_of_a_queued_task_that_started_kills_its_worker() {
    let pool = ProcessPool::new(1).unwrap();
    let marker = temp_path("queued-timeout");
    let _ = std::fs::remove_file(&marker);
    // The worker is lent to `busy`, so the next task waits in the queue for the dispatcher.
    let busy = pool.run(sleep_ms, 100);
    let task = pool.run(mark_then_sleep, (marker.clone(), FOREVER_MS));
    assert!(!task.is_started());
    block_on(busy).unwrap();
    let worker = started_on(&marker);
    let err = block_on(task.timeout(Duration::from_millis(10))).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_replaced(&pool, worker);
    std::fs::remove_file(marker).unwrap();
}

#[test]
fn cancel_of_a_started_task_kills_its_worker_and_resolves_at_once() {
    let pool = ProcessPool::new(1).unwrap();
    let marker = temp_path("cancel-started");
    let _ = std::fs::remove_file(&marker);
    let task = pool.run(mark_then_sleep, (marker.clone(), FOREVER_MS));
    let worker = started_on(&marker);
    let err = block_on(promptly(task.cancel())).unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert_replaced(&pool, worker);

    // The same through the queue.
    let _ = std::fs::remove_file(&marker);
    let busy = pool.run(sleep_ms, 50);
    let task = pool.run(mark_then_sleep, (marker.clone(), FOREVER_MS));
    block_on(busy).unwrap();
    let worker = started_on(&marker);
    let err = block_on(promptly(task.cancel())).unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert_replaced(&pool, worker);
    std::fs::remove_file(marker).unwrap();
}

#[test]
fn only_the_running_task_is_killed_others_run() {
    let pool = ProcessPool::new(1).unwrap();
    let marker = temp_path("only-running");
    let _ = std::fs::remove_file(&marker);
    block_on(async {
        // Short tasks in a deep queue: the dispatcher learns to send tasks ahead.
        let warm: Vec<_> = (0..2_000u64).map(|n| pool.run(square, n)).collect();
        for (n, task) in warm.into_iter().enumerate() {
            assert_eq!(task.await.unwrap(), (n * n) as u64);
        }
    });
    let slow = pool.run(mark_then_sleep, (marker.clone(), FOREVER_MS));
    let behind: Vec<Task<u64>> = (0..200u64).map(|n| pool.run(square, n)).collect();
    let worker = started_on(&marker);
    let err = block_on(slow.timeout(Duration::from_millis(10))).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    block_on(async {
        for (n, task) in behind.into_iter().enumerate() {
            let value = task.timeout(PROMPTLY).await;
            assert_eq!(
                value.unwrap(),
                (n * n) as u64,
                "task {n} behind the killed one"
            );
        }
    });
    assert_replaced(&pool, worker);
    std::fs::remove_file(marker).unwrap();
}

#[test]
fn dropping_a_started_task_kills_its_worker_with_kill_on_drop() {
    let pool = ProcessPool::builder()
        .workers(1)
        .kill_on_drop(true)
        .build()
        .unwrap();
    let marker = temp_path("kill-on-drop");
    let _ = std::fs::remove_file(&marker);
    let task = pool.run(mark_then_sleep, (marker.clone(), FOREVER_MS));
    let worker = started_on(&marker);
    drop(task);
    assert_replaced(&pool, worker);
    // A detached task is not dropped: it runs to the end.
    let _ = std::fs::remove_file(&marker);
    pool.run(mark_then_sleep, (marker.clone(), 0)).detach();
    let worker = started_on(&marker);
    assert_eq!(block_on(pool.run(pid, ())).unwrap(), worker);
    std::fs::remove_file(marker).unwrap();
}

#[test]
fn dropping_a_started_task_lets_it_finish_by_default() {
    let pool = ProcessPool::new(1).unwrap();
    let marker = temp_path("no-kill-on-drop");
    let _ = std::fs::remove_file(&marker);
    let task = pool.run(mark_then_sleep, (marker.clone(), 200));
    let worker = started_on(&marker);
    drop(task);
    // The worker finishes the dropped task, then runs the next one: it was not killed.
    assert_eq!(block_on(pool.run(pid, ())).unwrap(), worker);
    assert_eq!(pool.pids(), [worker]);
    std::fs::remove_file(marker).unwrap();
}

#[test]
fn a_timed_out_thread_task_is_left_running() {
    let threads = smol_offload::ThreadPool::new(1).unwrap();
    let (open, closed) = common::gate();
    let (started_tx, started) = std::sync::mpsc::channel();
    let task = threads.spawn(move || {
        started_tx.send(()).unwrap();
        closed.recv_blocking().is_err()
    });
    started.recv_timeout(common::WATCHDOG).unwrap();
    let err = block_on(task.timeout(Duration::from_millis(10))).unwrap_err();
    assert!(err.is_timeout());
    // The thread still waits at the gate: the next task queues behind it until it opens.
    let next = threads.spawn(|| 7);
    assert!(!next.is_finished());
    drop(open);
    assert_eq!(block_on(next).unwrap(), 7);
}

fn task_timeout_pool(limit: Duration) -> ProcessPool {
    ProcessPool::builder()
        .workers(1)
        .task_timeout(limit)
        .build()
        .unwrap()
}

#[test]
fn zero_task_timeout_is_refused() {
    let err = ProcessPool::builder()
        .task_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("task_timeout"), "{err}");
}

#[test]
fn task_timeout_fails_an_awaited_task_and_replaces_its_worker() {
    let pool = task_timeout_pool(Duration::from_millis(200));
    let before = pool.pids()[0];
    // A first task, so that the dispatcher sleeps with the worker lent out idle.
    assert_eq!(block_on(pool.run(sleep_ms, 0)).unwrap(), before);
    std::thread::sleep(Duration::from_millis(50));
    let err = block_on(promptly(pool.run(sleep_ms, FOREVER_MS))).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(!err.is_worker_died(), "{err}");
    assert_replaced(&pool, before);
}

#[test]
fn task_timeout_holds_for_detached_and_unpolled_tasks() {
    let pool = task_timeout_pool(Duration::from_millis(200));
    let marker = temp_path("unpolled");
    let _ = std::fs::remove_file(&marker);
    // Never polled until its worker is gone: the dispatcher alone enforces the limit.
    let unpolled = pool.run(mark_then_sleep, (marker.clone(), FOREVER_MS));
    let worker = started_on(&marker);
    wait_until_gone(worker);
    assert!(block_on(unpolled).unwrap_err().is_timeout());

    let _ = std::fs::remove_file(&marker);
    pool.run(mark_then_sleep, (marker.clone(), FOREVER_MS))
        .detach();
    let worker = started_on(&marker);
    assert_replaced(&pool, worker);
    std::fs::remove_file(marker).unwrap();
}

#[test]
fn task_timeout_kills_a_task_that_waited_in_the_queue() {
    let pool = task_timeout_pool(Duration::from_millis(1500));
    // Queued behind tasks that take most of the limit: queued time does not count.
    let first = pool.run(sleep_ms, 900);
    let second = pool.run(sleep_ms, 900);
    let third = pool.run(sleep_ms, FOREVER_MS);
    let fourth = pool.run(sleep_ms, 0);
    let worker = pool.pids()[0];
    assert_eq!(block_on(first).unwrap(), worker);
    assert_eq!(block_on(second).unwrap(), worker);
    let err = block_on(promptly(third)).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_ne!(block_on(promptly(fourth)).unwrap(), worker);
    assert_replaced(&pool, worker);
}

#[test]
fn tasks_within_the_task_timeout_are_not_touched() {
    let pool = task_timeout_pool(Duration::from_secs(30));
    let before = pool.pids();
    block_on(async {
        let tasks: Vec<_> = (0..2_000u64).map(|n| pool.run(square, n)).collect();
        for (n, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap(), (n * n) as u64);
        }
    });
    assert_eq!(pool.pids(), before);
}

fn sleep_us(us: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(us));
    us
}

#[test]
fn timeouts_racing_with_replies_leave_a_working_pool() {
    let pool = ProcessPool::builder()
        .workers(2)
        .kill_on_drop(true)
        .build()
        .unwrap();
    let started = pool.pids();
    let (mut finished, mut timed_out) = (0, 0);
    block_on(async {
        // Timeouts around the tasks' own length: some replies arrive as the kill goes out.
        // Two at a time, so that most of them start before their time is up.
        for pair in 0..150u64 {
            let tasks: Vec<_> = (pair * 2..pair * 2 + 2)
                .map(|n| {
                    let task = pool.run(sleep_us, (n * 37) % 3000);
                    task.timeout(Duration::from_micros((n * 53) % 3000))
                })
                .collect();
            for (n, task) in (pair * 2..).zip(tasks) {
                match promptly(task).await {
                    Ok(us) => {
                        assert_eq!(us, (n * 37) % 3000);
                        finished += 1;
                    }
                    Err(err) => {
                        assert!(err.is_timeout(), "task {n}: {err}");
                        timed_out += 1;
                    }
                }
            }
        }
    });
    eprintln!("{finished} tasks finished, {timed_out} timed out");
    assert_eq!(finished + timed_out, 300);
    // The pool works and has its two workers; the killed ones are gone.
    assert_eq!(block_on(promptly(pool.run(square, 12))).unwrap(), 144);
    let deadline = Instant::now() + common::WATCHDOG;
    while pool.pids().len() != 2 {
        assert!(Instant::now() < deadline, "{:?}", pool.pids());
        std::thread::sleep(Duration::from_millis(5));
    }
    for pid in started.iter().filter(|pid| !pool.pids().contains(pid)) {
        wait_until_gone(*pid);
    }
    // A killed worker's job counts as done once the worker is reaped.
    while (pool.stats().queued, pool.stats().running) != (0, 0) {
        assert!(Instant::now() < deadline, "{}", pool.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = pool.stats();
    assert_eq!(stats.completed + stats.cancelled, 301, "{stats}");
}

/// Stops its own worker (`SIGSTOP`): it never answers, and never exits on its own.
fn stop_self(_: ()) -> u32 {
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::process::id()
}

#[test]
fn task_timeout_and_cancel_kill_a_stopped_worker() {
    let pool = task_timeout_pool(Duration::from_millis(200));
    let before = pool.pids()[0];
    let err = block_on(promptly(pool.run(stop_self, ()))).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_replaced(&pool, before);

    let pool = ProcessPool::new(1).unwrap();
    let before = pool.pids()[0];
    let stopped = pool.run(stop_self, ());
    // Stopped or about to be: either way it will not answer, and cancel must not wait.
    let err = block_on(promptly(stopped.cancel())).unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert_replaced(&pool, before);
}

#[test]
fn a_task_sent_ahead_that_times_out_never_runs_and_costs_no_worker() {
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.pids()[0];
    let marker = temp_path("sent-ahead-running");
    let dropped_marker = temp_path("sent-ahead-dropped");
    for path in [&marker, &dropped_marker] {
        let _ = std::fs::remove_file(path);
    }
    block_on(async {
        // Short tasks in a deep queue: the dispatcher learns to send tasks ahead.
        let warm: Vec<_> = (0..2_000u64).map(|n| pool.run(square, n)).collect();
        for task in warm {
            task.await.unwrap();
        }
    });
    // A first task takes the idle worker; the rest queue, and once it is back the dispatcher
    // sends the slow one, then short ones ahead behind it.
    let first = pool.run(square, 1);
    let slow = pool.run(mark_then_sleep, (marker.clone(), 500));
    let behind: Vec<Task<()>> = (0..20)
        .map(|n| {
            let path = if n == 10 {
                dropped_marker.clone()
            } else {
                temp_path(&format!("sent-ahead-{n}"))
            };
            pool.run(touch, path)
        })
        .collect();
    block_on(first).unwrap();
    assert_eq!(started_on(&marker), worker);
    let mut behind = behind;
    let victim = behind.remove(10);
    let sent_ahead = victim.is_started();
    let err = block_on(victim.timeout(Duration::from_millis(1))).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // The slow task was not killed for it, and the others all ran.
    assert_eq!(block_on(promptly(slow)).unwrap(), worker);
    for task in behind {
        block_on(promptly(task)).unwrap();
    }
    assert!(!dropped_marker.exists(), "the abandoned task ran");
    assert_eq!(pool.pids(), [worker], "sent ahead: {sent_ahead}");
    eprintln!("the abandoned task was sent ahead: {sent_ahead}");
    for n in (0..20).filter(|&n| n != 10) {
        let _ = std::fs::remove_file(temp_path(&format!("sent-ahead-{n}")));
    }
    std::fs::remove_file(marker).unwrap();
}

fn touch(path: PathBuf) {
    std::fs::write(path, b"ran").unwrap();
}
