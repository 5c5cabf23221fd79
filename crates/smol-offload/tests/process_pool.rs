//! The process pool: values, the same code on threads and processes, panics, dead workers,
//! cancellation, codec errors, shutdown, file descriptors, and fork safety.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use smol_offload::{Executor, ProcessPool, ThreadPool, gather};

mod common;

use common::WATCHDOG;

#[ctor::ctor]
fn start_fork_server() {
    smol_offload::init();
}

fn square(n: u64) -> u64 {
    n * n
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn sleep_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn touch(path: PathBuf) {
    std::fs::write(path, b"ran").unwrap();
}

fn kill_self(signal: i32) -> u32 {
    let signal = nix::sys::signal::Signal::try_from(signal).unwrap();
    nix::sys::signal::raise(signal).unwrap();
    std::thread::sleep(Duration::from_secs(10));
    unreachable!("the signal ends the worker")
}

fn abort(_: ()) {
    std::process::abort()
}

fn exit(code: i32) {
    std::process::exit(code)
}

fn boom(n: u64) -> u64 {
    // Runs in a worker process, which prints nothing by default.
    panic!("task {n} failed")
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("smol-offload-{}-{name}", std::process::id()))
}

fn alive(pid: u32) -> bool {
    // A zombie has exited: only running (or sleeping) processes count as alive.
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

fn wait_until_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(Instant::now() < deadline, "processes still alive: {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn blocks_squares(executor: &impl Executor) -> Vec<u64> {
    let tasks = (0..6).map(|n| executor.run(square, n));
    gather(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn same_generic_code_on_threads_and_processes() {
    let threads = ThreadPool::new(3).unwrap();
    let processes = ProcessPool::new(3).unwrap();
    smol::block_on(async {
        let on_threads = blocks_squares(&threads).await;
        let on_processes = blocks_squares(&processes).await;
        assert_eq!(on_threads, [0, 1, 4, 9, 16, 25]);
        assert_eq!(on_threads, on_processes);
    });
}

#[test]
fn workers_are_other_processes_and_listed() {
    let pool = ProcessPool::builder().workers(3).build().unwrap();
    assert_eq!(pool.workers(), 3);
    let pids = pool.pids();
    assert_eq!(pids.len(), 3);
    assert!(!pids.contains(&std::process::id()));
    smol::block_on(async {
        // Three sleeping tasks at once must land on three different workers.
        let tasks: Vec<_> = (0..3).map(|_| pool.run(sleep_ms, 200)).collect();
        let ran_on: HashSet<u32> = gather(tasks)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(ran_on, pids.iter().copied().collect());
    });
}

#[test]
fn ten_thousand_tasks() {
    let pool = ProcessPool::new(2).unwrap();
    smol::block_on(async {
        let tasks: Vec<_> = (0..10_000u64).map(|n| pool.run(square, n)).collect();
        let results = gather(tasks).await;
        for (n, result) in results.into_iter().enumerate() {
            assert_eq!(result.unwrap(), (n as u64) * (n as u64));
        }
    });
    let stats = pool.stats();
    assert_eq!(
        (stats.completed, stats.queued, stats.running),
        (10_000, 0, 0)
    );
}

#[test]
fn descriptors_do_not_grow_with_queued_tasks() {
    let count_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let pool = ProcessPool::new(2).unwrap();
    let before = count_fds();
    smol::block_on(async {
        let tasks: Vec<_> = (0..10_000u64).map(|n| pool.run(square, n)).collect();
        let during = count_fds();
        assert!(
            during <= before + 1,
            "fds grew from {before} to {during} with 10 000 queued tasks"
        );
        assert_eq!(gather(tasks).await.len(), 10_000);
    });
}

#[test]
fn panics_are_errors_and_workers_go_on() {
    let pool = ProcessPool::new(2).unwrap();
    let pids = pool.pids();
    smol::block_on(async {
        let tasks: Vec<_> = (0..200).map(|n| pool.run(boom, n)).collect();
        for (n, result) in gather(tasks).await.into_iter().enumerate() {
            let err = result.unwrap_err();
            assert!(err.is_panic());
            assert_eq!(
                err.panic_message(),
                Some(format!("task {n} failed").as_str())
            );
        }
        assert_eq!(pool.run(square, 5).await.unwrap(), 25);
    });
    assert_eq!(pool.pids(), pids, "a panic must not cost a worker");
}

fn assert_worker_died(
    pool: &ProcessPool,
    f: fn(i32),
    arg: i32,
    check: impl Fn(&smol_offload::Error),
) {
    let before = pool.pids();
    smol::block_on(async {
        // Other tasks run before, beside and after the one that kills its worker.
        let before_tasks: Vec<_> = (0..20).map(|n| pool.run(square, n)).collect();
        let fatal = pool.run(f, arg);
        let after_tasks: Vec<_> = (20..40).map(|n| pool.run(square, n)).collect();
        let err = fatal.await.unwrap_err();
        assert!(err.is_worker_died(), "{err}");
        let dead = err.worker_pid().unwrap();
        assert!(before.contains(&dead), "{dead} not one of {before:?}");
        assert!(err.to_string().contains(&dead.to_string()), "{err}");
        check(&err);
        for (n, result) in gather(before_tasks.into_iter().chain(after_tasks))
            .await
            .into_iter()
            .enumerate()
        {
            let n = n as u64;
            assert_eq!(result.unwrap(), n * n);
        }
        let now = pool.pids();
        assert_eq!(now.len(), before.len(), "the pool keeps its size");
        assert!(
            !now.contains(&dead),
            "the dead worker {dead} was replaced: {now:?}"
        );
        assert!(!alive(dead));
    });
}

#[test]
fn worker_killed_by_sigkill_fails_only_its_task() {
    let pool = ProcessPool::new(2).unwrap();
    assert_worker_died(
        &pool,
        |signal| {
            kill_self(signal);
        },
        9,
        |err| {
            assert_eq!(err.worker_signal(), Some(9));
            assert!(err.to_string().contains("SIGKILL"), "{err}");
        },
    );
}

#[test]
fn worker_that_aborts_fails_only_its_task() {
    let pool = ProcessPool::new(2).unwrap();
    assert_worker_died(
        &pool,
        |_| abort(()),
        0,
        |err| {
            assert_eq!(err.worker_signal(), Some(libc::SIGABRT));
        },
    );
}

#[test]
fn worker_that_segfaults_fails_only_its_task() {
    let pool = ProcessPool::new(2).unwrap();
    assert_worker_died(
        &pool,
        |signal| {
            kill_self(signal);
        },
        libc::SIGSEGV,
        |err| {
            assert_eq!(err.worker_signal(), Some(libc::SIGSEGV));
        },
    );
}

#[test]
fn worker_that_exits_fails_only_its_task() {
    let pool = ProcessPool::new(2).unwrap();
    assert_worker_died(&pool, exit, 3, |err| {
        assert_eq!(err.worker_exit_code(), Some(3));
        assert_eq!(err.worker_signal(), None);
    });
}

#[test]
fn worker_killed_from_outside_mid_task() {
    let pool = ProcessPool::new(1).unwrap();
    smol::block_on(async {
        let victim = pool.pids()[0];
        let task = pool.run(sleep_ms, 5_000);
        while !task.is_started() {
            smol::Timer::after(Duration::from_millis(5)).await;
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let err = task.timeout(WATCHDOG).await.unwrap_err();
        assert_eq!(
            (err.worker_pid(), err.worker_signal()),
            (Some(victim), Some(9)),
            "{err}"
        );
        assert_eq!(pool.run(square, 9).await.unwrap(), 81);
    });
}

#[test]
fn task_dropped_before_start_never_runs() {
    let pool = ProcessPool::new(1).unwrap();
    let marker = temp_path("dropped-before-start");
    let _ = std::fs::remove_file(&marker);
    smol::block_on(async {
        let busy = pool.run(sleep_ms, 300);
        let dropped = pool.run(touch, marker.clone());
        drop(dropped);
        busy.await.unwrap();
        // Runs after the dropped one would have: the worker took its queue in order.
        pool.run(square, 1).await.unwrap();
    });
    assert!(!marker.exists(), "the dropped task ran");
    let stats = pool.stats();
    assert_eq!(stats.cancelled, 1, "{stats}");
}

#[test]
fn cancel_before_start_is_cancelled() {
    let pool = ProcessPool::new(1).unwrap();
    let marker = temp_path("cancelled");
    let _ = std::fs::remove_file(&marker);
    smol::block_on(async {
        let busy = pool.run(sleep_ms, 200);
        let err = pool.run(touch, marker.clone()).cancel().await.unwrap_err();
        assert!(err.is_cancelled(), "{err}");
        busy.await.unwrap();
        pool.run(square, 1).await.unwrap();
    });
    assert!(!marker.exists(), "the cancelled task ran");
}

#[test]
fn detached_task_runs() {
    let pool = ProcessPool::new(1).unwrap();
    let marker = temp_path("detached");
    let _ = std::fs::remove_file(&marker);
    pool.run(touch, marker.clone()).detach();
    smol::block_on(pool.run(square, 2)).unwrap();
    assert!(marker.exists(), "the detached task did not run");
    std::fs::remove_file(marker).unwrap();
}

/// A value that refuses to be serialized.
#[derive(Debug)]
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value stays home"))
    }
}

impl<'de> Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("this value cannot be rebuilt"))
    }
}

/// Serializes fine, but refuses to be deserialized.
#[derive(Debug, Serialize)]
struct OneWay(u8);

impl<'de> Deserialize<'de> for OneWay {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("one way only"))
    }
}

fn takes_unserializable(_: Unserializable) -> u8 {
    unreachable!("the argument never reaches the worker")
}

fn takes_one_way(_: OneWay) -> u8 {
    unreachable!("the argument cannot be decoded in the worker")
}

fn returns_one_way(n: u8) -> OneWay {
    OneWay(n)
}

fn returns_unserializable(_: ()) -> Unserializable {
    Unserializable
}

#[test]
fn values_that_cannot_cross_are_errors() {
    let pool = ProcessPool::new(1).unwrap();
    smol::block_on(async {
        let err = pool
            .run(takes_unserializable, Unserializable)
            .await
            .unwrap_err();
        assert!(err.is_codec(), "{err}");
        assert!(err.to_string().contains("serialize the argument"), "{err}");
        assert!(err.to_string().contains("this value stays home"), "{err}");
        let err = pool.run(takes_one_way, OneWay(1)).await.unwrap_err();
        assert!(
            err.is_codec() && err.to_string().contains("in the worker"),
            "{err}"
        );
        assert!(err.to_string().contains("one way only"), "{err}");
        let err = pool.run(returns_one_way, 1).await.unwrap_err();
        assert!(
            err.is_codec() && err.to_string().contains("deserialize the result"),
            "{err}"
        );
        assert!(err.to_string().contains("one way only"), "{err}");
        let err = pool.run(returns_unserializable, ()).await.unwrap_err();
        assert!(
            err.is_codec() && err.to_string().contains("serialize the result"),
            "{err}"
        );
        assert!(err.to_string().contains("this value stays home"), "{err}");
        // None of that cost the worker.
        assert_eq!(pool.run(square, 4).await.unwrap(), 16);
    });
}

/// Deserializing it panics (serializing works).
#[derive(Debug, Serialize)]
struct PanicsOnArrival(u8);

impl<'de> Deserialize<'de> for PanicsOnArrival {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        std::panic::set_hook(Box::new(|_| {}));
        panic!("cannot arrive")
    }
}

/// Dropping it panics, in any process but the one that made it.
#[derive(Debug, Serialize, Deserialize)]
struct PanicsOnDrop {
    made_in: u32,
    value: u8,
}

impl PanicsOnDrop {
    fn new(value: u8) -> PanicsOnDrop {
        PanicsOnDrop {
            made_in: std::process::id(),
            value,
        }
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        if self.made_in != std::process::id() && !std::thread::panicking() {
            std::panic::set_hook(Box::new(|_| {}));
            panic!("cannot leave");
        }
    }
}

fn takes_panics_on_arrival(_: PanicsOnArrival) -> u8 {
    unreachable!("its argument cannot be decoded")
}

fn returns_panics_on_arrival(n: u8) -> PanicsOnArrival {
    PanicsOnArrival(n)
}

fn takes_panics_on_drop(value: PanicsOnDrop) -> u8 {
    value.value
}

#[test]
fn panics_in_user_serde_code_and_destructors_are_errors() {
    let pool = ProcessPool::new(1).unwrap();
    let pid = pool.pids()[0];
    smol::block_on(async {
        // In the worker, decoding the argument.
        let err = pool
            .run(takes_panics_on_arrival, PanicsOnArrival(1))
            .await
            .unwrap_err();
        assert_eq!(err.panic_message(), Some("cannot arrive"), "{err}");
        // In the worker, dropping the argument after the call.
        let err = pool
            .run(takes_panics_on_drop, PanicsOnDrop::new(2))
            .await
            .unwrap_err();
        assert_eq!(err.panic_message(), Some("cannot leave"), "{err}");
        assert_eq!(pool.pids(), [pid], "the worker survived");
    });
    // In the parent's dispatcher thread, decoding the result: the hook is silenced by the
    // panicking impl itself, in this process, only from here on.
    let err = smol::block_on(pool.run(returns_panics_on_arrival, 3)).unwrap_err();
    assert_eq!(err.panic_message(), Some("cannot arrive"), "{err}");
    assert_eq!(
        smol::block_on(pool.run(square, 6)).unwrap(),
        36,
        "the dispatcher survived"
    );
}

#[test]
fn large_values_cross() {
    fn reverse(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes.reverse();
        bytes
    }
    let pool = ProcessPool::new(1).unwrap();
    let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut expected = big.clone();
    expected.reverse();
    let back = smol::block_on(pool.run(reverse, big)).unwrap();
    assert!(back == expected);
}

fn echo_bytes(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

#[test]
fn burst_of_large_values_after_short_tasks() {
    // Short tasks first, so that the pool sends tasks ahead; then large values both ways,
    // which must neither deadlock the dispatcher with a worker writing its reply nor get lost.
    let pool = ProcessPool::new(2).unwrap();
    smol::block_on(async {
        let warm_up: Vec<_> = (0..2_000).map(|n| pool.run(square, n)).collect();
        assert_eq!(gather(warm_up).await.len(), 2_000);
        let tasks: Vec<_> = (0..300u32)
            .map(|n| {
                pool.run(echo_bytes, vec![(n % 251) as u8; 64 * 1024])
                    .timeout(WATCHDOG)
            })
            .collect();
        for (n, task) in tasks.into_iter().enumerate() {
            let bytes = task.await.unwrap();
            assert_eq!(bytes.len(), 64 * 1024);
            assert!(bytes.iter().all(|&b| b == (n % 251) as u8));
        }
    });
}

#[test]
fn dropping_the_pool_fails_pending_tasks_and_ends_workers() {
    let pool = ProcessPool::new(1).unwrap();
    let pids = pool.pids();
    smol::block_on(async {
        let running = pool.run(sleep_ms, 300);
        while !running.is_started() {
            smol::Timer::after(Duration::from_millis(5)).await;
        }
        let pending: Vec<_> = (0..5).map(|n| pool.run(square, n)).collect();
        drop(pool);
        for result in gather(pending).await {
            assert!(result.unwrap_err().is_shutdown());
        }
        assert_eq!(running.await.unwrap(), pids[0], "the running task finishes");
    });
    wait_until_gone(&pids);
}

#[test]
fn clones_share_one_pool_across_threads_and_loops() {
    let pool = ProcessPool::new(2).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                smol::block_on(async {
                    let tasks = (0..250).map(|n| pool.run(square, t * 1000 + n));
                    gather(tasks)
                        .await
                        .into_iter()
                        .map(Result::unwrap)
                        .sum::<u64>()
                })
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let expected: u64 = (0..4u64)
        .flat_map(|t| (0..250).map(move |n| (t * 1000 + n).pow(2)))
        .sum();
    assert_eq!(total, expected);
    assert_eq!(pool.pids().len(), 2);
}

#[test]
fn several_pools_share_the_fork_server() {
    let a = ProcessPool::new(1).unwrap();
    let b = ProcessPool::new(1).unwrap();
    assert_ne!(a.pids(), b.pids());
    smol::block_on(async {
        assert_eq!(a.run(pid, ()).await.unwrap(), a.pids()[0]);
        assert_eq!(b.run(pid, ()).await.unwrap(), b.pids()[0]);
    });
}

#[test]
fn zero_workers_is_refused() {
    let err = ProcessPool::new(0).unwrap_err();
    assert_eq!(err.to_string(), "a pool needs at least one worker, got 0");
}

fn print_and_allocate(n: u64) -> usize {
    let text: Vec<String> = (0..50).map(|i| format!("{n}:{i}")).collect();
    println!("task {n} {}", text.join(","));
    text.len()
}

#[test]
fn fork_safety_under_busy_threads() {
    use std::io::Write;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    static GLOBAL: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    static STOP: AtomicBool = AtomicBool::new(false);

    // Threads that hold the stdout lock, a global mutex and the allocator as often as they can.
    let busy: Vec<_> = (0..3)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rounds = 0u64;
                while !STOP.load(Ordering::Relaxed) {
                    let mut stdout = std::io::stdout().lock();
                    let _ = write!(stdout, "");
                    let mut global = GLOBAL.lock().unwrap();
                    global.push(t);
                    if global.len() > 1000 {
                        global.clear();
                    }
                    drop(global);
                    drop(stdout);
                    let garbage: Vec<Box<[u8; 64]>> = (0..16).map(|_| Box::new([0; 64])).collect();
                    std::hint::black_box(garbage);
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    let pool = ProcessPool::new(2).unwrap();
    let results = smol::block_on(async {
        let tasks: Vec<_> = (0..1_000)
            .map(|n| pool.run(print_and_allocate, n).timeout(WATCHDOG))
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await);
        }
        results
    });
    STOP.store(true, Ordering::Relaxed);
    for thread in busy {
        assert!(thread.join().unwrap() > 0);
    }
    for result in results {
        assert_eq!(result.unwrap(), 50);
    }
}

/// The child half of `workers_die_with_their_application`: makes a pool, prints the pids of
/// the fork server and the workers, and waits to be killed.
#[test]
fn child_application_that_gets_killed() {
    if std::env::var_os("SMOL_OFFLOAD_TEST_CHILD").is_none() {
        return;
    }
    let pool = ProcessPool::new(2).unwrap();
    let pids = pool.pids();
    let server = std::fs::read_to_string(format!("/proc/{}/stat", pids[0])).unwrap();
    let server = server
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    println!("pids {server} {} {}", pids[0], pids[1]);
    smol::block_on(pool.run(sleep_ms, 60_000)).unwrap();
}

#[test]
fn workers_die_with_their_application() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_application_that_gets_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SMOL_OFFLOAD_TEST_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The server and the workers inherit the pipe, so it never ends while they live: read it
    // on a thread, and give up after the watchdog instead of hanging.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { return };
            // libtest prints "test <name> ... " on the same line first.
            if let Some((_, rest)) = line.split_once("pids ") {
                let pids: Vec<u32> = rest.split(' ').map(|pid| pid.parse().unwrap()).collect();
                let _ = sender.send(pids);
                return;
            }
        }
    });
    let Ok(pids) = receiver.recv_timeout(WATCHDOG) else {
        child.kill().unwrap();
        panic!("the child never printed its pids");
    };
    assert_eq!(
        pids.len(),
        3,
        "the child printed the server and two workers"
    );
    assert!(pids.iter().all(|&pid| alive(pid)));
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until_gone(&pids);
}
