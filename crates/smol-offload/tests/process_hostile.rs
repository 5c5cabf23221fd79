//! Workers that misbehave on purpose: a task that closes its worker's socket and lives on, one
//! that forks a process holding the socket and then dies, one that writes garbage to the
//! socket. None may hang its task, its pool, another pool, or the application's exit, and
//! none may leave a process behind.
//!
//! The hostile tasks sleep 30 s where they could hang something; each test gives up after
//! [`SHORT`], far less, so that a regression fails instead of passing slowly.

// A hostile task must close, write and fork by raw descriptor: that is what it is testing.
#![allow(unsafe_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use smol_offload::{Error, Executor, ProcessPool, gather};

mod common;

/// The longest a test waits for what must happen promptly: far less than the 30 s that the
/// hostile tasks sleep.
const SHORT: Duration = Duration::from_secs(10);

/// How long a hostile task sleeps (or a process it forked) when nothing ends it.
const LONG: Duration = Duration::from_secs(30);

#[ctor::ctor]
fn start_fork_server() {
    // Processes that a worker forked are orphaned when the pool kills the worker: they come
    // to this process (not to init, which may not reap them here), so that the tests can
    // check that they were killed and reap them.
    common::reap_orphans();
    smol_offload::init();
}

/// `future`, or a panic after [`SHORT`].
fn promptly<T>(what: &str, future: impl Future<Output = T>) -> T {
    common::block_on_within(SHORT, what, future)
}

/// `f()` on another thread, or a panic after [`SHORT`].
fn promptly_blocking<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(f());
    });
    receiver
        .recv_timeout(SHORT)
        .unwrap_or_else(|_| panic!("{what} took more than {SHORT:?}"))
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("smol-offload-{}-{name}", std::process::id()))
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + SHORT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_until_reaped(pids: &[u32]) {
    common::wait_until_reaped(pids);
}

/// Waits for `pid`, a process orphaned to this one (see [`start_fork_server`]), to die, and
/// reaps it; returns how it ended.
fn reap_orphan(pid: u32) -> nix::sys::wait::WaitStatus {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let deadline = Instant::now() + SHORT;
    loop {
        let status = waitpid(
            nix::unistd::Pid::from_raw(pid as i32),
            Some(WaitPidFlag::WNOHANG),
        )
        .expect("the orphan comes to this process");
        if status != WaitStatus::StillAlive {
            return status;
        }
        assert!(Instant::now() < deadline, "process {pid} still runs");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn square(n: u64) -> u64 {
    n * n
}

fn sleep_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn abort(_: ()) {
    std::process::abort()
}

/// Closes every descriptor above stderr (the worker's socket among them), says so in
/// `marker`, and sleeps.
fn close_fds_and_sleep(marker: PathBuf) -> u32 {
    for fd in 3..1024 {
        // SAFETY: closing a descriptor number is what this hostile task is about; nothing in
        // the worker uses one again (its loop only writes the reply, which then fails).
        unsafe { libc::close(fd) };
    }
    std::fs::write(marker, b"closed").unwrap();
    std::thread::sleep(LONG);
    std::process::id()
}

/// Forks a process (no `exec`) that sleeps, holding a copy of the worker's socket; returns
/// its pid.
fn fork_a_sleeper(_: ()) -> u32 {
    // SAFETY: a worker runs one thread, so the child inherits no lock held by another; the
    // child only sleeps and `_exit`s.
    match unsafe { libc::fork() } {
        0 => {
            std::thread::sleep(LONG);
            // SAFETY: ends the child without running the worker's handlers.
            unsafe { libc::_exit(0) }
        }
        pid => pid as u32,
    }
}

/// Writes 64 pseudo-random bytes, from `seed`, to every socket the worker holds (its link to
/// the pool is its only one), then returns normally.
fn write_garbage(seed: u64) -> u64 {
    let mut state = seed | 1;
    let garbage: Vec<u8> = (0..64)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    for fd in common::sockets() {
        // SAFETY: writes from a live buffer of its own length to a descriptor number;
        // corrupting the stream is what this hostile task is about.
        unsafe { libc::write(fd, garbage.as_ptr().cast(), garbage.len()) };
    }
    seed
}

fn assert_malformed(err: &Error, victim: u32) {
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.worker_pid(), Some(victim), "{err}");
    assert_eq!(
        err.worker_signal(),
        None,
        "the pool's own kill is not the cause: {err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("worker process {victim} sent a malformed reply"))
            && message.contains("was killed"),
        "{message}"
    );
}

#[test]
fn a_worker_that_closes_its_socket_is_killed_and_delays_no_other_pool() {
    let hostile = ProcessPool::new(1).unwrap();
    let other = ProcessPool::new(1).unwrap();
    let victim = hostile.pids()[0];
    let marker = temp_path("closed-socket");
    let task = hostile.run(close_fds_and_sleep, marker.clone());
    wait_for_file(&marker);
    std::fs::remove_file(&marker).unwrap();
    // While that worker may still live with its socket closed, another pool's crash resolves
    // and a new pool is built at once: nothing waits for the worker under the server's lock.
    let crashed = promptly("another pool's crash", other.run(abort, ())).unwrap_err();
    assert_eq!(crashed.worker_signal(), Some(libc::SIGABRT), "{crashed}");
    let third = promptly_blocking("building a pool", || ProcessPool::new(1).unwrap());
    assert_eq!(
        promptly("a new pool's task", third.run(square, 3)).unwrap(),
        9
    );
    // The worker itself is killed and its task fails, saying why.
    let err = promptly("the task of the worker that closed its socket", task).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.worker_pid(), Some(victim));
    assert!(
        err.to_string()
            .contains("closed its link to the pool and was killed"),
        "{err}"
    );
    wait_until_reaped(&[victim]);
    assert_eq!(
        promptly("the next task", hostile.run(square, 4)).unwrap(),
        16
    );
    assert!(!hostile.pids().contains(&victim));
}

/// The child half of `returning_from_main_does_not_wait_for_a_worker_that_closed_its_socket`:
/// leaves a worker sleeping with its socket closed, and returns.
#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_returns_while_a_worker_lives_with_its_socket_closed() {
    if !common::in_child("SMOL_OFFLOAD_TEST_CLOSED_SOCKET") {
        return;
    }
    let pool = ProcessPool::new(1).unwrap();
    let marker = temp_path("closed-socket-child");
    pool.run(close_fds_and_sleep, marker.clone()).detach();
    wait_for_file(&marker);
    std::fs::remove_file(&marker).unwrap();
    println!("child_returns_while_a_worker_lives_with_its_socket_closed: done");
}

#[test]
fn returning_from_main_does_not_wait_for_a_worker_that_closed_its_socket() {
    // The child's stdout reaches the parent through a pipe that the worker holds too: the
    // child's output ends only once the worker is gone as well.
    promptly_blocking("the child application's exit", || {
        common::run_child(
            "child_returns_while_a_worker_lives_with_its_socket_closed",
            "SMOL_OFFLOAD_TEST_CLOSED_SOCKET",
            &[],
        )
    });
}

#[test]
fn a_worker_that_dies_on_loan_is_noticed_while_its_fork_holds_the_socket() {
    let pool = ProcessPool::new(1).unwrap();
    let victim = pool.pids()[0];
    // Lone calls on an idle worker: both go straight to it, on loan.
    let orphan = promptly("forking", pool.run(fork_a_sleeper, ())).unwrap();
    let err = promptly("the crash", pool.run(abort, ())).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.worker_pid(), Some(victim));
    assert_eq!(err.worker_signal(), Some(libc::SIGABRT), "{err}");
    let pids = pool.pids();
    assert_eq!(pids.len(), 1);
    assert!(!pids.contains(&victim), "{pids:?} still lists {victim}");
    // The worker's process group went with it: what it forked was killed.
    assert_eq!(
        reap_orphan(orphan),
        nix::sys::wait::WaitStatus::Signaled(
            nix::unistd::Pid::from_raw(orphan as i32),
            nix::sys::signal::Signal::SIGKILL,
            false
        )
    );
    wait_until_reaped(&[victim]);
    assert_eq!(promptly("the next task", pool.run(square, 5)).unwrap(), 25);
}

#[test]
fn a_worker_that_dies_on_a_dispatched_task_is_noticed_while_its_fork_holds_the_socket() {
    let pool = ProcessPool::new(1).unwrap();
    let victim = pool.pids()[0];
    let orphan = promptly("forking", pool.run(fork_a_sleeper, ())).unwrap();
    // The first call takes the idle worker; the crash waits in the queue, for the dispatcher.
    let first = pool.run(sleep_ms, 50);
    let crash = pool.run(abort, ());
    assert_eq!(promptly("the first task", first).unwrap(), victim);
    let err = promptly("the crash", crash).unwrap_err();
    assert_eq!(err.worker_pid(), Some(victim));
    assert_eq!(err.worker_signal(), Some(libc::SIGABRT), "{err}");
    assert!(!pool.pids().contains(&victim));
    assert!(matches!(
        reap_orphan(orphan),
        nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)
    ));
    wait_until_reaped(&[victim]);
    assert_eq!(promptly("the next task", pool.run(square, 6)).unwrap(), 36);
}

#[test]
fn garbage_from_a_worker_on_loan_is_a_malformed_reply() {
    let pool = ProcessPool::new(1).unwrap();
    for seed in [7, 0xdead_beef, 12_345] {
        let victim = pool.pids()[0];
        let err = promptly("the garbage task", pool.run(write_garbage, seed)).unwrap_err();
        assert_malformed(&err, victim);
        wait_until_reaped(&[victim]);
        assert_eq!(promptly("the next task", pool.run(square, 7)).unwrap(), 49);
        assert!(!pool.pids().contains(&victim));
    }
}

#[test]
fn garbage_from_a_worker_on_a_dispatched_task_is_a_malformed_reply() {
    let pool = ProcessPool::new(1).unwrap();
    let victim = pool.pids()[0];
    let first = pool.run(sleep_ms, 50);
    let garbage = pool.run(write_garbage, 99);
    let after = pool.run(square, 8);
    assert_eq!(promptly("the first task", first).unwrap(), victim);
    assert_malformed(&promptly("the garbage task", garbage).unwrap_err(), victim);
    assert_eq!(promptly("the task after", after).unwrap(), 64);
    wait_until_reaped(&[victim]);
}

fn tiny_or_garbage(n: u64) -> u64 {
    if n == 300 {
        write_garbage(n);
        // Stuck after the garbage: the tasks sent ahead behind it never start on this worker.
        // (A worker that went on would start them, and they would fail with it.)
        std::thread::sleep(LONG);
    }
    n
}

#[test]
fn garbage_from_a_worker_with_tasks_sent_ahead_fails_only_its_task() {
    let pool = ProcessPool::new(2).unwrap();
    let victims = pool.pids();
    // Tiny tasks in a deep queue: the pool sends them ahead to its busy workers, so the one
    // that writes garbage has tasks queued behind it on its worker. Those are requeued.
    let tasks: Vec<_> = (0..600).map(|n| pool.run(tiny_or_garbage, n)).collect();
    let results = promptly("600 tiny tasks", gather(tasks));
    assert_eq!(results.iter().filter(|result| result.is_err()).count(), 1);
    for (n, result) in results.into_iter().enumerate() {
        match result {
            Ok(value) => assert_eq!(value, n as u64),
            Err(err) => {
                assert_eq!(n, 300, "only the garbage task fails: task {n}: {err}");
                let victim = err.worker_pid().unwrap();
                assert!(victims.contains(&victim));
                assert_malformed(&err, victim);
            }
        }
    }
    let tasks: Vec<_> = (0..10).map(|n| pool.run(square, n)).collect();
    let squares: Vec<u64> = promptly("the tasks after", gather(tasks))
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(squares[9], 81);
    assert_eq!(pool.pids().len(), 2);
}

/// A task that records its run in `runs`; the guilty one then waits at its gate, breaks its
/// worker's stream, and hangs until the pool kills it (it must not go on to a task sent ahead
/// to it, which would then have started).
#[derive(serde::Serialize, serde::Deserialize)]
struct Marked {
    n: u64,
    runs: PathBuf,
    guilty: Option<(PathBuf, Breach)>,
}

/// How a guilty task breaks its worker's stream.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
enum Breach {
    /// 64 pseudo-random bytes.
    Garbage,
    /// A reply to request `id` whose payload is in a memfd that is not sealed.
    UnsealedReply { id: u64 },
    /// Closes every descriptor above stderr, the worker's socket among them.
    ClosedLink,
}

fn marked_or_guilty(task: Marked) -> u64 {
    use std::io::Write;
    let mut runs = std::fs::OpenOptions::new()
        .append(true)
        .open(&task.runs)
        .unwrap();
    runs.write_all(format!("{}\n", task.n).as_bytes()).unwrap();
    drop(runs);
    if let Some((gate, breach)) = task.guilty {
        common::wait_for_file(gate);
        match breach {
            Breach::Garbage => {
                write_garbage(task.n);
            }
            Breach::UnsealedReply { id } => send_unsealed_reply(id),
            Breach::ClosedLink => {
                for fd in 3..1024 {
                    // SAFETY: closing a descriptor number is what this hostile task is about;
                    // the worker uses none again before the pool kills it.
                    unsafe { libc::close(fd) };
                }
            }
        }
        std::thread::sleep(LONG);
    }
    task.n * 2
}

/// Sends a reply to request `id` whose payload is in a memfd that is not sealed, on every
/// socket the worker holds (its link to the pool is its only one).
fn send_unsealed_reply(id: u64) {
    let fd =
        nix::sys::memfd::memfd_create(c"unsealed", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let file = std::fs::File::from(fd);
    file.set_len(1000).unwrap();
    common::send_reply_in_memfd(id, 1000, &file);
}

/// How many times each task of `0..count` ran, from the file the tasks append their number to.
fn runs_of(runs: &Path, count: u64) -> Vec<usize> {
    let marks = std::fs::read_to_string(runs).unwrap();
    let mut times = vec![0; count as usize];
    for mark in marks.lines() {
        times[mark.parse::<usize>().unwrap()] += 1;
    }
    times
}

/// Waits until `done()` holds, or `bound` passed: a wait on state, whose outcome the caller's
/// assertions judge.
fn wait_until(bound: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// On a pool of one worker, a guilty task breaks its worker's stream while 100 innocent tasks
/// wait behind it, sent ahead to its worker (`through_dispatcher`, as far as the pool sends
/// ahead) or in the queue while it runs on loan. Every innocent task runs exactly once and
/// returns its result; only the guilty one fails, saying which worker did what; nothing is left
/// behind.
fn breach_while_innocent_tasks_wait(name: &str, through_dispatcher: bool, breach: Breach) {
    const TASKS: u64 = 101;
    const WARM_UP: u64 = 400;
    let pool = ProcessPool::new(1).unwrap();
    let victim = pool.pids()[0];
    // Short tasks teach the pool to send tasks ahead to a busy worker.
    let warm_up: Vec<_> = (0..WARM_UP).map(|n| pool.run(square, n)).collect();
    assert!(
        promptly("warming up", gather(warm_up))
            .iter()
            .all(Result::is_ok)
    );
    let runs = temp_path(name);
    std::fs::write(&runs, b"").unwrap();
    let gate = common::FileGate::new(name);
    let guilty = if through_dispatcher { 1 } else { 0 };
    // A worker's requests are numbered from 0, and this one was sent every task, once each.
    let breach = match breach {
        Breach::UnsealedReply { .. } => Breach::UnsealedReply {
            id: WARM_UP + guilty,
        },
        breach => breach,
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|n| {
            let guilty = (n == guilty).then(|| (gate.path(), breach));
            let runs = runs.clone();
            pool.run(marked_or_guilty, Marked { n, runs, guilty })
        })
        .collect();
    if through_dispatcher {
        // The guilty task runs behind one on loan, and tasks sent ahead count as running: wait
        // until some are, behind it on its worker (the dispatcher sends them as it hands the
        // guilty task out, so a second is plenty). A pool that found its tasks slow (a loaded
        // machine) sends none ahead: then the queued path alone is tried. On loan, the guilty
        // task runs alone and the others wait in the queue.
        wait_until(SHORT / 10, || pool.stats().running >= 3);
    }
    println!("{name}: {} tasks held by the worker", pool.stats().running);
    gate.open();
    let results = promptly("the tasks", gather(tasks));
    let times = runs_of(&runs, TASKS);
    std::fs::remove_file(&runs).unwrap();
    for (n, result) in results.into_iter().enumerate() {
        assert_eq!(times[n], 1, "task {n} ran {} times", times[n]);
        if n as u64 == guilty {
            let err = result.unwrap_err();
            let message = err.to_string();
            match breach {
                Breach::Garbage => assert_malformed(&err, victim),
                Breach::UnsealedReply { .. } => {
                    assert_malformed(&err, victim);
                    assert!(message.contains("not sealed"), "{message}");
                }
                Breach::ClosedLink => {
                    assert_eq!(err.worker_pid(), Some(victim), "{message}");
                    assert!(
                        message.contains("closed its link to the pool and was killed"),
                        "{message}"
                    );
                }
            }
        } else {
            let value = result.unwrap_or_else(|err| panic!("innocent task {n} failed: {err}"));
            assert_eq!(value, 2 * n as u64);
        }
    }
    let after = pool.pids();
    assert_eq!(promptly("the next task", pool.run(square, 9)).unwrap(), 81);
    drop(pool);
    let mut seen = after;
    seen.push(victim);
    wait_until_reaped(&seen);
}

/// The child half of `a_broken_stream_with_tasks_sent_ahead_fails_no_innocent_task`.
#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_broken_stream_with_tasks_sent_ahead() {
    if !common::in_child("SMOL_OFFLOAD_TEST_HOSTILE") {
        return;
    }
    let unsealed = Breach::UnsealedReply { id: 0 };
    for breach in [Breach::Garbage, unsealed, Breach::ClosedLink] {
        breach_while_innocent_tasks_wait("breach-sent-ahead", true, breach);
    }
    println!("child_broken_stream_with_tasks_sent_ahead: done");
}

#[test]
fn a_broken_stream_with_tasks_sent_ahead_fails_no_innocent_task() {
    run_child_promptly("child_broken_stream_with_tasks_sent_ahead");
}

/// The child half of `a_broken_stream_on_loan_with_tasks_queued_fails_no_innocent_task`.
#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_broken_stream_on_loan_with_tasks_queued() {
    if !common::in_child("SMOL_OFFLOAD_TEST_HOSTILE") {
        return;
    }
    let unsealed = Breach::UnsealedReply { id: 0 };
    for breach in [Breach::Garbage, unsealed, Breach::ClosedLink] {
        breach_while_innocent_tasks_wait("breach-on-loan", false, breach);
    }
    println!("child_broken_stream_on_loan_with_tasks_queued: done");
}

#[test]
fn a_broken_stream_on_loan_with_tasks_queued_fails_no_innocent_task() {
    run_child_promptly("child_broken_stream_on_loan_with_tasks_queued");
}

/// Records its run, writes garbage to its worker's socket, and returns: the worker goes on to
/// the tasks sent ahead to it until the pool, reading the garbage, takes back those it has not
/// started and kills it.
fn garbage_and_return(task: Marked) -> u64 {
    let doubled = marked_or_guilty(task);
    write_garbage(doubled);
    doubled
}

/// The child half of `garbage_then_more_tasks_on_its_worker_blames_only_the_guilty_one`.
#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_garbage_then_more_tasks_on_its_worker() {
    if !common::in_child("SMOL_OFFLOAD_TEST_HOSTILE") {
        return;
    }
    const TASKS: u64 = 300;
    const GUILTY: u64 = 100;
    let pool = ProcessPool::new(2).unwrap();
    let first = pool.pids();
    let warm_up: Vec<_> = (0..400).map(|n| pool.run(square, n)).collect();
    assert!(
        promptly("warming up", gather(warm_up))
            .iter()
            .all(Result::is_ok)
    );
    let runs = temp_path("garbage-then-more");
    std::fs::write(&runs, b"").unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|n| {
            let task = Marked {
                n,
                runs: runs.clone(),
                guilty: None,
            };
            let f = if n == GUILTY {
                garbage_and_return
            } else {
                marked_or_guilty
            };
            pool.run(f, task)
        })
        .collect();
    let results = promptly("the tasks", gather(tasks));
    let times = runs_of(&runs, TASKS);
    std::fs::remove_file(&runs).unwrap();
    let guilty = results[GUILTY as usize].as_ref().unwrap_err();
    let victim = guilty.worker_pid().unwrap();
    assert!(first.contains(&victim));
    assert_malformed(guilty, victim);
    let mut started_after = 0;
    for (n, result) in results.iter().enumerate() {
        // None ran twice, and none was lost: a task the worker never started ran elsewhere.
        assert_eq!(times[n], 1, "task {n} ran {} times", times[n]);
        match result {
            Ok(value) => assert_eq!(*value, 2 * n as u64),
            Err(err) if n as u64 != GUILTY => {
                // It started on that worker after the garbage was sent, and its reply was lost
                // with the stream: it fails, but is not blamed for the garbage.
                started_after += 1;
                assert_eq!(err.worker_pid(), Some(victim), "task {n}: {err}");
                let message = err.to_string();
                assert!(
                    message.contains("an earlier task") && !message.contains("sent a malformed"),
                    "task {n}: {message}"
                );
            }
            Err(_) => {}
        }
    }
    println!("{started_after} tasks started after the garbage");
    let seen = pool.pids().into_iter().chain(first).collect::<Vec<_>>();
    drop(pool);
    wait_until_reaped(&seen);
    println!("child_garbage_then_more_tasks_on_its_worker: done");
}

#[test]
fn garbage_then_more_tasks_on_its_worker_blames_only_the_guilty_one() {
    run_child_promptly("child_garbage_then_more_tasks_on_its_worker");
}

/// Forks a process that holds a copy of the worker's socket, waits at `gate`, writes garbage
/// to the socket, says so in `gate` + ".written" and exits; returns its pid. The task itself
/// returns at once: the garbage comes while its worker is idle. The process leaves the
/// worker's process group, so that it lives to say so once the pool kills the worker.
fn garbage_later(gate: PathBuf) -> u32 {
    // SAFETY: a worker runs one thread, so the child inherits no lock held by another; the
    // child waits, writes and `_exit`s.
    match unsafe { libc::fork() } {
        0 => {
            nix::unistd::setsid().unwrap();
            let written = gate.with_extension("written");
            common::wait_for_file(gate);
            write_garbage(5);
            std::fs::write(written, b"written").unwrap();
            // SAFETY: ends the child without running the worker's handlers.
            unsafe { libc::_exit(0) }
        }
        pid => pid as u32,
    }
}

/// The child half of `garbage_from_an_idle_worker_fails_no_later_task`.
#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_garbage_from_an_idle_worker() {
    if !common::in_child("SMOL_OFFLOAD_TEST_HOSTILE") {
        return;
    }
    let pool = ProcessPool::new(1).unwrap();
    let victim = pool.pids()[0];
    let gate = common::FileGate::new("idle-garbage");
    let written = gate.path().with_extension("written");
    let writer = promptly("the task", pool.run(garbage_later, gate.path())).unwrap();
    // The garbage comes while the worker is idle, lent out for the next task to go straight
    // to it: that task must not fail for it.
    gate.open();
    wait_for_file(&written);
    std::fs::remove_file(&written).unwrap();
    let runs = temp_path("idle-garbage-runs");
    std::fs::write(&runs, b"").unwrap();
    let innocent = Marked {
        n: 3,
        runs: runs.clone(),
        guilty: None,
    };
    let result = promptly("the next task", pool.run(marked_or_guilty, innocent));
    let times = runs_of(&runs, 4);
    std::fs::remove_file(&runs).unwrap();
    assert_eq!(
        result.unwrap_or_else(|err| panic!("an innocent task failed: {err}")),
        6
    );
    assert_eq!(times[3], 1, "it ran once");
    let replacement = pool.pids();
    assert!(!replacement.contains(&victim));
    drop(pool);
    wait_until_reaped(&[&replacement[..], &[victim, writer]].concat());
    println!("child_garbage_from_an_idle_worker: done");
}

#[test]
fn garbage_from_an_idle_worker_fails_no_later_task() {
    run_child_promptly("child_garbage_from_an_idle_worker");
}

/// The parent of process `pid`, from `/proc`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = stat.rsplit(')').next().unwrap();
    after_name
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// The processes whose parent is `pid`, zombies included.
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let parent = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|parent| parent.parse::<u32>().ok());
        if parent == Some(pid) {
            children.push(child);
        }
    }
    children
}

/// Limits this process to descriptors below `limit` (`RLIMIT_NOFILE`), returning the old
/// soft limit.
fn limit_descriptors(limit: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` to the live struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    let new = libc::rlimit {
        rlim_cur: limit,
        rlim_max: old.rlim_max,
    };
    // SAFETY: `setrlimit` reads one `rlimit` from the live struct it is given.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) }, 0);
    old.rlim_cur
}

/// Leaves this process room for `room` more descriptors: fills the free numbers below the
/// highest open one (the kernel hands out the lowest free number), then limits descriptors to
/// `room` numbers above it. Returns the old limit, for [`limit_descriptors`].
fn leave_room_for(room: u64) -> u64 {
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u64>().ok())
        .max()
        .unwrap();
    loop {
        let filler = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&filler) as u64;
        if fd > highest {
            break;
        }
        // Kept open for the life of this (child) process.
        std::mem::forget(filler);
    }
    limit_descriptors(highest + 1 + room)
}

/// Makes the fork server (`server`) unable to receive a worker's socket, so that forking a
/// worker fails (with `enable = false`), or able again.
fn let_server_fork(server: u32, enable: bool) {
    let limit = libc::rlimit {
        rlim_cur: if enable { 1024 } else { 0 },
        rlim_max: 1024,
    };
    // SAFETY: `prlimit` reads one live `rlimit` and writes none (the old value is not asked).
    let done = unsafe {
        libc::prlimit(
            server as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(done, 0, "{}", std::io::Error::last_os_error());
}

/// Runs the child test `name` of this binary (see `common::run_child`), within [`SHORT`].
fn run_child_promptly(name: &'static str) {
    promptly_blocking(name, move || {
        common::run_child(name, "SMOL_OFFLOAD_TEST_HOSTILE", &[]);
    });
}

/// The child half of `a_failed_build_leaves_no_worker_behind`.
#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_fails_to_build_a_pool() {
    if !common::in_child("SMOL_OFFLOAD_TEST_HOSTILE") {
        return;
    }
    let first = ProcessPool::new(1).unwrap();
    let server = parent_of(first.pids()[0]);
    assert_eq!(children_of(server), first.pids());
    // Room for the descriptors of a few workers, not of twenty.
    let old = leave_room_for(8);
    let err = ProcessPool::new(20).unwrap_err();
    limit_descriptors(old);
    assert!(
        err.to_string()
            .contains("could not fork the worker processes"),
        "{err}"
    );
    // The workers forked before the failure are gone and reaped: the server's only child is
    // the first pool's worker.
    let deadline = Instant::now() + SHORT;
    while children_of(server) != first.pids() {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            children_of(server)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("child_fails_to_build_a_pool: done");
}

#[test]
fn a_failed_build_leaves_no_worker_behind() {
    run_child_promptly("child_fails_to_build_a_pool");
}

/// The child half of `a_pool_whose_forks_fail_tries_again_and_recovers`.
#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_pool_recovers_after_forks_failed() {
    if !common::in_child("SMOL_OFFLOAD_TEST_HOSTILE") {
        return;
    }
    let pool = ProcessPool::new(1).unwrap();
    assert_eq!(promptly("a task", pool.run(square, 2)).unwrap(), 4);
    let server = parent_of(pool.pids()[0]);
    let_server_fork(server, false);
    let crashed = promptly("the crash", pool.run(abort, ())).unwrap_err();
    assert!(crashed.is_worker_died(), "{crashed}");
    // No worker, and forking one fails: the task waits while the pool tries again.
    let waiting = pool.run(square, 3);
    std::thread::sleep(Duration::from_millis(100));
    assert!(pool.pids().is_empty());
    let_server_fork(server, true);
    assert_eq!(promptly("the waiting task", waiting).unwrap(), 9);
    assert_eq!(pool.pids().len(), 1);
    println!("child_pool_recovers_after_forks_failed: done");
}

#[test]
fn a_pool_whose_forks_fail_tries_again_and_recovers() {
    run_child_promptly("child_pool_recovers_after_forks_failed");
}

/// The child half of `a_pool_that_cannot_keep_any_worker_says_why`.
#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_pool_cannot_fork_any_worker() {
    if !common::in_child("SMOL_OFFLOAD_TEST_HOSTILE") {
        return;
    }
    let pool = ProcessPool::new(1).unwrap();
    let server = parent_of(pool.pids()[0]);
    let_server_fork(server, false);
    let crashed = promptly("the crash", pool.run(abort, ())).unwrap_err();
    assert!(crashed.is_worker_died(), "{crashed}");
    let err = promptly("the waiting task", pool.run(square, 3)).unwrap_err();
    let_server_fork(server, true);
    assert!(err.is_shutdown(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("none of its worker processes could be kept alive")
            && message.contains("os error"),
        "{message}"
    );
    // Every later task is refused at once, with the same reason.
    let later = promptly("a later task", pool.run(square, 4)).unwrap_err();
    assert_eq!(later.to_string(), message);
    assert!(pool.pids().is_empty());
    println!("child_pool_cannot_fork_any_worker: done");
}

#[test]
fn a_pool_that_cannot_keep_any_worker_says_why() {
    run_child_promptly("child_pool_cannot_fork_any_worker");
}

#[test]
fn a_dropped_pool_kills_a_stopped_worker() {
    let pool = ProcessPool::new(2).unwrap();
    let pids = pool.pids();
    assert_eq!(promptly("a task", pool.run(square, 2)).unwrap(), 4);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    drop(pool);
    // The stopped worker cannot exit at the end of its socket: it is killed after the grace
    // period, and both workers are reaped.
    wait_until_reaped(&pids);
}

/// The child half of `sigterm_to_the_process_group_spares_the_pool`.
#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_pool_gets_sigterm() {
    if !common::in_child("SMOL_OFFLOAD_TEST_HOSTILE") {
        return;
    }
    use nix::sys::signal::{Signal, kill};
    let pool = ProcessPool::new(2).unwrap();
    let pids = pool.pids();
    let server = parent_of(pids[0]);
    // What `kill -TERM` of the application's process group does to the server and the
    // workers (the application itself would decide what to do with its own).
    for pid in [server, pids[0], pids[1]] {
        kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    }
    let tasks: Vec<_> = (0..2).map(|_| pool.run(sleep_ms, 100)).collect();
    let ran_on: Vec<u32> = promptly("two tasks", gather(tasks))
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(ran_on.iter().all(|pid| pids.contains(pid)), "{ran_on:?}");
    assert_eq!(pool.pids(), pids);
    let other = promptly_blocking("building a pool", || ProcessPool::new(1).unwrap());
    assert_eq!(promptly("a task", other.run(square, 5)).unwrap(), 25);
    println!("child_pool_gets_sigterm: done");
}

#[test]
fn sigterm_to_the_process_group_spares_the_pool() {
    run_child_promptly("child_pool_gets_sigterm");
}

/// The child half of `after_the_fork_server_dies_every_pool_says_so`.
#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_loses_its_fork_server() {
    if !common::in_child("SMOL_OFFLOAD_TEST_HOSTILE") {
        return;
    }
    let pool = ProcessPool::new(1).unwrap();
    let server = parent_of(pool.pids()[0]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The worker dies with the server; its replacement cannot be forked.
    let deadline = Instant::now() + SHORT;
    let err = loop {
        match promptly("a task", pool.run(square, 3)) {
            Err(err) if err.is_shutdown() => break err,
            Err(err) => assert!(err.is_worker_died(), "{err}"),
            Ok(_) => {}
        }
        assert!(Instant::now() < deadline, "the pool still works");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(err.to_string().contains("the fork server is gone"), "{err}");
    let build = ProcessPool::new(1).unwrap_err();
    assert!(
        build.to_string().contains("the fork server is gone"),
        "{build}"
    );
    println!("child_loses_its_fork_server: done");
}

#[test]
fn after_the_fork_server_dies_every_pool_says_so() {
    run_child_promptly("child_loses_its_fork_server");
}

/// What a chaos task does, besides recording that it ran.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChaosTask {
    n: u64,
    /// The file every run appends its number to.
    runs: PathBuf,
    /// Write garbage to the worker's socket, then hang.
    garbage: bool,
}

fn chaos_task(task: ChaosTask) -> u64 {
    use std::io::Write;
    // One short append per run (`O_APPEND`): runs of concurrent workers never interleave.
    let mut runs = std::fs::OpenOptions::new()
        .append(true)
        .open(&task.runs)
        .unwrap();
    runs.write_all(format!("{}\n", task.n).as_bytes()).unwrap();
    if task.garbage {
        write_garbage(task.n);
        // Hangs until the pool kills it: it must not go on to a task sent ahead to it.
        std::thread::sleep(LONG);
    }
    // Tiny tasks, some a little longer, so that chaos strikes workers at every stage.
    std::thread::sleep(Duration::from_micros(task.n % 4 * 150));
    task.n * 2
}

#[test]
fn chaos_every_task_resolves_once_and_nothing_is_left_behind() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    const TASKS: u64 = 3000;
    let pool = ProcessPool::new(4).unwrap();
    let runs = temp_path("chaos-runs");
    std::fs::write(&runs, b"").unwrap();
    let seen = Arc::new(Mutex::new(HashSet::<u32>::from_iter(pool.pids())));
    let kills = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Every few milliseconds, a random worker is killed, or stopped and continued.
    let chaos = {
        let (pool, seen, kills, stop) = (pool.clone(), seen.clone(), kills.clone(), stop.clone());
        std::thread::spawn(move || {
            use nix::sys::signal::{Signal, kill};
            let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
            while !stop.load(Ordering::Relaxed) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let pids = pool.pids();
                seen.lock().unwrap().extend(&pids);
                if let Some(&pid) = pids.get(state as usize % pids.len().max(1)) {
                    let pid = nix::unistd::Pid::from_raw(pid as i32);
                    if state.is_multiple_of(3) {
                        if kill(pid, Signal::SIGKILL).is_ok() {
                            kills.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        let _ = kill(pid, Signal::SIGSTOP);
                        std::thread::sleep(Duration::from_millis(2));
                        let _ = kill(pid, Signal::SIGCONT);
                    }
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    let garbage = |n: u64| n % 97 == 13;
    let tasks: Vec<_> = (0..TASKS)
        .map(|n| {
            let task = ChaosTask {
                n,
                runs: runs.clone(),
                garbage: garbage(n),
            };
            pool.run(chaos_task, task)
        })
        .collect();
    let results = promptly("the chaos tasks", gather(tasks));
    stop.store(true, Ordering::Relaxed);
    chaos.join().unwrap();

    let mut failed = 0;
    for (n, result) in results.iter().enumerate() {
        let n = n as u64;
        match result {
            Ok(value) => {
                assert!(!garbage(n), "task {n} wrote garbage yet returned");
                assert_eq!(*value, n * 2);
            }
            Err(err) => {
                assert!(err.is_worker_died(), "task {n}: {err}");
                seen.lock().unwrap().insert(err.worker_pid().unwrap());
                // A garbage task fails saying its reply was malformed, unless the chaos killed
                // its worker before it wrote the garbage: only the others count as failures.
                if !garbage(n) {
                    failed += 1;
                }
            }
        }
    }
    // A kill fails at most the one task its worker was running.
    let kills = kills.load(Ordering::Relaxed);
    eprintln!("chaos: {kills} workers killed, {failed} tasks failed with them");
    assert!(kills > 0, "the chaos never struck");
    assert!(failed <= kills, "{failed} tasks failed for {kills} kills");
    // No task ran twice, and every task that returned a value ran.
    let mut count = vec![0u32; TASKS as usize];
    for line in std::fs::read_to_string(&runs).unwrap().lines() {
        count[line.parse::<usize>().unwrap()] += 1;
    }
    std::fs::remove_file(&runs).unwrap();
    for (n, result) in results.iter().enumerate() {
        assert!(count[n] <= 1, "task {n} ran {} times", count[n]);
        if result.is_ok() {
            assert_eq!(count[n], 1, "task {n} returned without running");
        }
    }
    // A task fails with its worker only once the worker claimed it; the few that failed
    // without their mark were killed between the claim and the mark.
    let unmarked = results
        .iter()
        .zip(&count)
        .filter(|(result, count)| result.is_err() && **count == 0)
        .count();
    eprintln!("chaos: {unmarked} failed tasks were killed before their first line");
    // The pool works afterwards, at full size.
    let tasks: Vec<_> = (0..20).map(|n| pool.run(square, n)).collect();
    for (n, result) in promptly("tasks after the chaos", gather(tasks))
        .into_iter()
        .enumerate()
    {
        assert_eq!(result.unwrap(), (n * n) as u64);
    }
    assert_eq!(pool.pids().len(), 4);
    // Nothing is left behind once the pool is dropped: every worker ever seen is reaped.
    drop(pool);
    let seen: Vec<u32> = seen.lock().unwrap().iter().copied().collect();
    wait_until_reaped(&seen);
}

/// Waits (up to [`LONG`]) until `gate` exists.
fn wait_at_gate(gate: PathBuf) -> u32 {
    let deadline = Instant::now() + LONG;
    while !gate.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    std::process::id()
}

#[test]
fn tasks_sent_ahead_behind_a_long_task_move_to_an_idle_worker() {
    let pool = ProcessPool::new(2).unwrap();
    let gate = temp_path("sent-ahead-gate");
    // Short tasks teach the pool to send tasks ahead to busy workers.
    let warm_up: Vec<_> = (0..400).map(|n| pool.run(square, n)).collect();
    assert!(
        promptly("warming up", gather(warm_up))
            .iter()
            .all(Result::is_ok)
    );
    for _ in 0..5 {
        // A deep queue, with a long task near its head: short tasks are sent ahead behind it.
        let mut short: Vec<_> = (0..4).map(|n| pool.run(square, n)).collect();
        let long = pool.run(wait_at_gate, gate.clone());
        short.extend((4..100).map(|n| pool.run(square, n)));
        // The long task waits until every short one is done: a short one stuck behind it
        // while the other worker idles would hold it until the watchdog.
        let results = promptly("the short tasks", gather(short));
        for (n, result) in results.into_iter().enumerate() {
            assert_eq!(result.unwrap(), (n * n) as u64);
        }
        std::fs::write(&gate, b"open").unwrap();
        promptly("the long task", long).unwrap();
        std::fs::remove_file(&gate).unwrap();
    }
}

fn square_and_mark(args: (u64, PathBuf)) -> u64 {
    use std::io::Write;
    let (n, runs) = args;
    let mut runs = std::fs::OpenOptions::new().append(true).open(runs).unwrap();
    runs.write_all(format!("{n}\n").as_bytes()).unwrap();
    n * n
}

#[test]
fn a_task_its_dead_worker_never_started_runs_on_the_replacement() {
    use nix::sys::signal::{Signal, kill};
    let pool = ProcessPool::new(1).unwrap();
    let victim = pool.pids()[0];
    let runs = temp_path("never-started");
    std::fs::write(&runs, b"").unwrap();
    // A stopped worker cannot start what it is sent: the first task goes to it on loan, the
    // second waits in the queue behind it. Then the worker is killed.
    let victim_pid = nix::unistd::Pid::from_raw(victim as i32);
    kill(victim_pid, Signal::SIGSTOP).unwrap();
    let first = pool.run(square_and_mark, (7, runs.clone()));
    let second = pool.run(square_and_mark, (8, runs.clone()));
    kill(victim_pid, Signal::SIGKILL).unwrap();
    // Neither had started: both run on the replacement, once, instead of failing.
    assert_eq!(promptly("the first task", first).unwrap(), 49);
    assert_eq!(promptly("the second task", second).unwrap(), 64);
    let marks = std::fs::read_to_string(&runs).unwrap();
    std::fs::remove_file(&runs).unwrap();
    let mut marks: Vec<&str> = marks.lines().collect();
    marks.sort_unstable();
    assert_eq!(marks, ["7", "8"]);
    assert!(!pool.pids().contains(&victim));
    wait_until_reaped(&[victim]);
}

fn mark_and_sleep(marker: PathBuf) -> u32 {
    std::fs::write(marker, b"running").unwrap();
    std::thread::sleep(LONG);
    std::process::id()
}

#[test]
fn a_dropped_pool_kills_a_worker_stopped_in_the_middle_of_a_task() {
    let pool = ProcessPool::new(1).unwrap();
    let victim = pool.pids()[0];
    let marker = temp_path("stopped-mid-task");
    let task = pool.run(mark_and_sleep, marker.clone());
    wait_for_file(&marker);
    std::fs::remove_file(&marker).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    // A dropped pool lets its running tasks finish, but a stopped worker never would.
    drop(pool);
    let err = promptly("the stopped worker's task", task).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.worker_pid(), Some(victim));
    assert!(
        err.to_string()
            .contains("stayed stopped after its pool was dropped and was killed"),
        "{err}"
    );
    wait_until_reaped(&[victim]);
}

/// The environment variable that names the file where the tasks of
/// `child_a_task_that_rolls_back_its_claim` record their runs.
const RUNS_FILE: &str = "SMOL_OFFLOAD_TEST_RUNS";

/// How many times, at most, a task may run whose workers are lost while it runs: the pool
/// requeues it after each loss its worker's claim word hides, up to a bound.
const MOST_RUNS: usize = 3;

/// How long the parent lets the child of `a_task_that_rolls_back_its_claim_costs_only_itself`
/// run: enough for hundreds of tasks and a few lost workers, and a bound on a task that would
/// be requeued forever.
const CHILD_BOUND: Duration = Duration::from_secs(60);

/// Appends `line` to the file of runs.
fn record_run(runs: &Path, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(runs).unwrap();
    file.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// An innocent task: records that task `n` ran on this worker, and answers `2 * n`.
fn record_and_double((n, runs): (u64, PathBuf)) -> u64 {
    record_run(&runs, &format!("{n} {}", std::process::id()));
    n * 2
}

/// The address of this worker's claim word: the start of its `smol-offload-claim` mapping,
/// found as any task could find it.
fn claim_word_address() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|line| line.contains("smol-offload-claim"))
        .expect("the worker maps its claim page");
    let start = line.split('-').next().unwrap();
    usize::from_str_radix(start, 16).unwrap()
}

/// The hostile task: records its run, moves its worker's claim word back to 0 (its own job,
/// which it claimed, now looks unstarted; so it does whatever revocation came in between),
/// waits `linger` milliseconds (a pool that took back
/// the jobs its word shows unstarted from a worker it keeps, to hand them to an idle one, would
/// take this one), and kills its worker.
fn roll_back_claim_and_die((runs, linger): (PathBuf, u64)) -> u64 {
    record_run(&runs, &format!("hostile {}", std::process::id()));
    let address = claim_word_address();
    // SAFETY: the claim page is a live shared mapping of this worker, page-aligned, that the
    // worker itself reads and writes as an `AtomicU64` at its start; lying about it is what
    // this hostile task is about.
    let word = unsafe { &*(address as *const std::sync::atomic::AtomicU64) };
    word.store(0, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(linger));
    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL).unwrap();
    std::thread::sleep(LONG);
    0
}

/// The lines of the file of runs: innocent tasks as `n pid`, the hostile one as `hostile pid`.
/// Returns how many times each innocent task ran (at least `count` of them), how many times the
/// hostile one did, and every worker pid seen.
fn read_runs(runs: &Path, count: u64) -> (Vec<usize>, usize, Vec<u32>) {
    let marks = std::fs::read_to_string(runs).unwrap();
    let (mut times, mut hostile, mut pids) = (vec![0; count as usize], 0, Vec::new());
    for mark in marks.lines() {
        let (what, pid) = mark.split_once(' ').unwrap();
        pids.push(pid.parse().unwrap());
        match what {
            "hostile" => hostile += 1,
            n => {
                let n = n.parse::<usize>().unwrap();
                if n >= times.len() {
                    times.resize(n + 1, 0);
                }
                times[n] += 1;
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    (times, hostile, pids)
}

/// The child half of `a_task_that_rolls_back_its_claim_costs_only_itself`.
#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_a_task_that_rolls_back_its_claim() {
    if !common::in_child("SMOL_OFFLOAD_TEST_HOSTILE") {
        return;
    }
    let runs = PathBuf::from(std::env::var_os(RUNS_FILE).unwrap());
    // Killing its worker at once, and after a while during which the other worker may run out
    // of work while tasks wait behind the hostile one.
    for linger in [0, 20] {
        std::fs::write(&runs, b"").unwrap();
        roll_back_beside_innocent_tasks(&runs, linger);
    }
    println!("child_a_task_that_rolls_back_its_claim: done");
}

/// On a pool of two workers that learned its tasks are short (so it sends tasks ahead to a
/// busy worker), runs the hostile task that rolls its claim word back and kills its worker
/// after `linger` ms, followed by many innocent tasks; checks that it ran at most
/// [`MOST_RUNS`] times and failed saying why, that every innocent task ran once and
/// succeeded, and that no worker is left behind.
fn roll_back_beside_innocent_tasks(runs: &Path, linger: u64) {
    // Innocent tasks go in batches, each awaited before the next: between two, a worker runs
    // out of work while tasks may wait behind the hostile one.
    const BATCH: u64 = 30;
    const BATCHES: u64 = 10;
    let pool = ProcessPool::new(2).unwrap();
    let mut pids = pool.pids();
    let warm_up: Vec<_> = (0..200).map(|n| pool.run(square, n)).collect();
    let warm_up = promptly("warming up", gather(warm_up));
    assert!(warm_up.iter().all(Result::is_ok));
    let hostile = pool.run(roll_back_claim_and_die, (runs.to_owned(), linger));
    // As many batches as it takes the hostile task to end, and at least `BATCHES`. No bound of
    // its own: the parent bounds this child, and says how often the hostile task ran by then.
    let mut results = Vec::new();
    while results.len() < (BATCH * BATCHES) as usize || !hostile.is_finished() {
        let first = results.len() as u64;
        let innocents: Vec<_> = (first..first + BATCH)
            .map(|n| pool.run(record_and_double, (n, runs.to_owned())))
            .collect();
        results.extend(smol::block_on(gather(innocents)));
    }
    let hostile = smol::block_on(hostile);
    let (times, hostile_runs, seen) = read_runs(runs, results.len() as u64);
    for (n, result) in results.into_iter().enumerate() {
        let value = result.unwrap_or_else(|err| panic!("innocent task {n} failed: {err}"));
        assert_eq!(value, 2 * n as u64);
        assert_eq!(times[n], 1, "innocent task {n} ran {} times", times[n]);
    }
    let err = hostile.unwrap_err();
    let message = err.to_string();
    println!(
        "lingering {linger} ms, the hostile task ran {hostile_runs} times and failed: {message}"
    );
    assert!(hostile_runs <= MOST_RUNS, "it ran {hostile_runs} times");
    assert!(err.is_worker_died(), "{message}");
    assert!(
        message.contains(&format!("lost {MOST_RUNS} times")),
        "{message}"
    );
    let last = err.worker_pid().unwrap();
    assert!(
        message.contains(&format!(
            "worker process {last}, which was killed by signal 9"
        )),
        "{message}"
    );
    // The pool works on, at full size.
    assert_eq!(promptly("the next task", pool.run(square, 9)).unwrap(), 81);
    assert_eq!(pool.pids().len(), 2);
    pids.extend(pool.pids());
    pids.extend(seen);
    drop(pool);
    wait_until_reaped(&pids);
}

/// A task that moves its worker's claim word back, so that the job it runs looks unstarted,
/// then kills its worker, would be requeued after each death and kill every worker in turn.
/// It runs a bounded number of times and fails; every innocent task runs once and succeeds;
/// nothing is left behind (the child checks, for the workers it saw; a child killed at the
/// bound takes its fork server and workers with it, as any application that dies).
#[test]
fn a_task_that_rolls_back_its_claim_costs_only_itself() {
    let name = "child_a_task_that_rolls_back_its_claim";
    let runs = temp_path("claim-rollback-runs");
    let output = temp_path("claim-rollback-output");
    std::fs::write(&runs, b"").unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--nocapture"])
        .args(["--test-threads=1"])
        .env("SMOL_OFFLOAD_TEST_HOSTILE", "1")
        .env(RUNS_FILE, &runs)
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + CHILD_BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (_, hostile_runs, _) = read_runs(&runs, 0);
    let stdout = std::fs::read_to_string(&output).unwrap();
    std::fs::remove_file(&runs).unwrap();
    std::fs::remove_file(&output).unwrap();
    print!("{stdout}");
    let Some(status) = status else {
        panic!(
            "the child did not finish within {CHILD_BOUND:?}: the hostile task ran \
             {hostile_runs} times"
        );
    };
    assert!(status.success(), "the child failed ({status}): {stdout}");
    assert!(stdout.contains(&format!("{name}: done")), "{stdout}");
    assert!(
        hostile_runs <= MOST_RUNS,
        "the hostile task ran {hostile_runs} times"
    );
}
