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

/// What the initializer left in this worker: its argument, and how often it ran here.
static LOADED: std::sync::Mutex<Option<(String, u32)>> = std::sync::Mutex::new(None);

fn load(model: String) {
    let mut loaded = LOADED.lock().unwrap();
    let runs = loaded.as_ref().map_or(0, |(_, runs)| *runs);
    *loaded = Some((model, runs + 1));
}

/// The worker's pid and what its initializer left.
fn loaded(_: ()) -> (u32, Option<(String, u32)>) {
    (std::process::id(), LOADED.lock().unwrap().clone())
}

#[test]
fn the_initializer_runs_once_in_every_worker_before_its_tasks() {
    let pool = ProcessPool::builder()
        .workers(2)
        .max_tasks_per_worker(3)
        .initializer(load, "model-7".to_string())
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..30).map(|_| pool.run(loaded, ())).collect();
    let mut pids = std::collections::HashSet::new();
    for result in block_on(gather(tasks)) {
        let (pid, loaded) = result.unwrap();
        assert_eq!(loaded, Some(("model-7".to_string(), 1)), "in worker {pid}");
        pids.insert(pid);
    }
    // Recycled workers ran it too: at least ten workers ran the thirty tasks.
    assert!(pids.len() >= 10, "{pids:?}");
}

#[test]
fn a_worker_killed_by_a_timeout_is_replaced_by_an_initialized_one() {
    let pool = ProcessPool::builder()
        .workers(1)
        .initializer(load, "model-8".to_string())
        .build()
        .unwrap();
    let (first, _) = block_on(pool.run(loaded, ())).unwrap();
    let stuck = pool.run(sleep_ms, 120_000);
    assert!(
        block_on(stuck.timeout(Duration::from_millis(50)))
            .unwrap_err()
            .is_timeout()
    );
    let (second, state) = block_on(pool.run(loaded, ())).unwrap();
    assert_ne!(first, second);
    assert_eq!(state, Some(("model-8".to_string(), 1)));
}

fn fail_to_load(path: std::path::PathBuf) {
    use std::io::Write;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(log, "{}", std::process::id()).unwrap();
    std::panic::set_hook(Box::new(|_| {}));
    panic!("no model on this machine");
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("smol-offload-init-{}-{name}", std::process::id()))
}

#[test]
fn a_panicking_initializer_fails_waiting_tasks_backs_off_and_breaks_the_pool() {
    let log = temp_path("failing");
    let _ = std::fs::remove_file(&log);
    let pool = ProcessPool::builder()
        .workers(2)
        .initializer(fail_to_load, log.clone())
        .build()
        .unwrap();
    let err = block_on(pool.run(pid, ())).unwrap_err();
    assert!(err.is_initializer_failure() || err.is_shutdown(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("initializer") && message.contains("no model on this machine"),
        "{message}"
    );
    // Tasks keep failing with the initializer's message until the pool gives up.
    let err = block_on(async {
        loop {
            let err = pool.run(pid, ()).await.unwrap_err();
            assert!(
                err.to_string().contains("no model on this machine"),
                "{err}"
            );
            if err.is_shutdown() {
                break err;
            }
        }
    });
    assert!(err.to_string().contains("initializer"), "{err}");
    // Backed off, not a tight loop: a handful of workers were forked in all.
    let forked = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!((5..=12).contains(&forked), "{forked} workers forked");
    assert!(block_on(pool.run(pid, ())).unwrap_err().is_shutdown());
    std::fs::remove_file(log).unwrap();
}

/// Panics in the first worker that runs it only.
fn fail_once(flag: std::path::PathBuf) {
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&flag)
        .is_ok()
    {
        std::panic::set_hook(Box::new(|_| {}));
        panic!("flaky start");
    }
}

#[test]
fn a_flaky_initializer_costs_one_worker_and_no_task() {
    let flag = temp_path("flaky");
    let _ = std::fs::remove_file(&flag);
    let pool = ProcessPool::builder()
        .workers(2)
        .initializer(fail_once, flag.clone())
        .build()
        .unwrap();
    // Waits for both workers to be up: the failed one was replaced.
    let tasks: Vec<_> = (0..200u64).map(|n| pool.run(pid_and_square, n)).collect();
    for (n, result) in block_on(gather(tasks)).into_iter().enumerate() {
        // One worker initialized at once: nothing waited without a worker.
        assert_eq!(result.unwrap().1, (n * n) as u64);
    }
    assert!(flag.exists(), "the initializer never failed");
    std::fs::remove_file(flag).unwrap();
}

#[test]
fn an_initializer_argument_that_cannot_be_serialized_is_a_build_error() {
    struct Refuses;
    impl serde::Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("Refuses will not be serialized"))
        }
    }
    impl<'de> serde::Deserialize<'de> for Refuses {
        fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            Ok(Refuses)
        }
    }
    fn init(_: Refuses) {}
    let err = ProcessPool::builder()
        .initializer(init, Refuses)
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("initializer's argument"), "{text}");
    assert!(text.contains("Refuses will not be serialized"), "{text}");
}

#[test]
fn an_initializer_argument_whose_serialize_panics_is_a_build_error() {
    struct Panics;
    impl serde::Serialize for Panics {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            panic!("Panics panics when serialized")
        }
    }
    impl<'de> serde::Deserialize<'de> for Panics {
        fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            Ok(Panics)
        }
    }
    fn init(_: Panics) {}
    let err = ProcessPool::builder()
        .initializer(init, Panics)
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "serializing the initializer's argument panicked: Panics panics when serialized"
        ),
        "{text}"
    );
}

fn hang(log: std::path::PathBuf) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    writeln!(file, "{}", std::process::id()).unwrap();
    std::thread::sleep(Duration::from_secs(3600));
}

#[test]
fn an_initializer_that_hangs_is_stopped_by_the_task_timeout() {
    let log = temp_path("hanging");
    let _ = std::fs::remove_file(&log);
    let pool = ProcessPool::builder()
        .workers(1)
        .initializer(hang, log.clone())
        .task_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let err = block_on(pool.run(pid, ())).unwrap_err();
    assert!(err.is_initializer_failure(), "{err}");
    assert!(err.to_string().contains("did not return within"), "{err}");
    let err = block_on(async {
        loop {
            let err = pool.run(pid, ()).await.unwrap_err();
            if err.is_shutdown() {
                break err;
            }
        }
    });
    assert!(err.to_string().contains("initializer"), "{err}");
    let forked: Vec<u32> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    assert!((5..=8).contains(&forked.len()), "{forked:?}");
    // Each hung worker was killed and reaped.
    common::wait_until_reaped(&forked);
    std::fs::remove_file(log).unwrap();
}
