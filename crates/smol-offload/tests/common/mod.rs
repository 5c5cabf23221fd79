//! Helpers shared by the integration test binaries of `smol-offload`: the watchdog that turns a
//! hang into a failure, a gate for holding workers, the names of the threads that run tasks at
//! the same time, and running one test of the binary again in a child process. A test binary
//! takes them with `mod common;`; being `common/mod.rs`, this file is no test binary itself.

// Every test binary compiles its own copy of this module and uses only some of its helpers:
// the rest would be reported as dead code in each binary that does not use them.
#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use smol::prelude::*;
use smol_offload::{Task, ThreadPool};

/// The longest any test may wait for something that should happen: a bug fails, never hangs.
pub(crate) const WATCHDOG: Duration = Duration::from_secs(60);

/// Panics after [`WATCHDOG`]. Put it first in `watchdog().or(work)`: polled before the work,
/// it fails the test even when its own wake-up would let the work be polled again and so hide
/// a lost wake-up.
pub(crate) async fn watchdog<T>() -> T {
    smol::Timer::after(WATCHDOG).await;
    panic!("nothing happened within {WATCHDOG:?}: a task or a wake-up was lost");
}

/// `future` with a watchdog: `watchdog().or(future)`, for any `block_on`.
pub(crate) fn watched<T>(future: impl Future<Output = T>) -> impl Future<Output = T> {
    watchdog().or(future)
}

/// `smol::block_on` with a watchdog.
pub(crate) fn block_on<T>(future: impl Future<Output = T>) -> T {
    smol::block_on(watched(future))
}

/// `smol::block_on(future)`, or a panic saying that `what` took more than `limit`.
pub(crate) fn block_on_within<T>(
    limit: std::time::Duration,
    what: &str,
    future: impl Future<Output = T>,
) -> T {
    smol::block_on(
        async {
            smol::Timer::after(limit).await;
            panic!("{what} took more than {limit:?}");
        }
        .or(future),
    )
}

/// A gate that blocked workers wait on: `recv_blocking` returns once the sender is dropped,
/// also when the test fails and unwinds, so no worker stays blocked.
pub(crate) fn gate() -> (async_channel::Sender<()>, async_channel::Receiver<()>) {
    async_channel::bounded(1)
}

/// The names of the threads that run `n` tasks, each handed to `spawn`, that all wait on one
/// barrier of `n`: they can only finish if `n` workers run them at the same time, so the set
/// holds `n` distinct names. `spawn` is `|work| pool.spawn(work)` for a given pool (see
/// [`names_of_all_workers`]) or `smol_offload::spawn` for the default pool.
pub(crate) fn names_of_concurrent_tasks(
    n: usize,
    spawn: impl Fn(Box<dyn FnOnce() -> String + Send>) -> Task<String>,
) -> HashSet<String> {
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            spawn(Box::new(move || {
                barrier.wait();
                thread::current()
                    .name()
                    .expect("pool threads have names")
                    .to_owned()
            }))
        })
        .collect();
    block_on(async {
        let mut names = HashSet::new();
        for task in tasks {
            names.insert(task.await.unwrap());
        }
        names
    })
}

/// Names of the threads that run `n` tasks held on one barrier of `n` on `pool`: all `n`
/// workers when the pool has `n`.
pub(crate) fn names_of_all_workers(pool: &ThreadPool, n: usize) -> HashSet<String> {
    names_of_concurrent_tasks(n, |work| pool.spawn(work))
}

/// Whether this process is a child started by [`run_child`] with `marker`: its `child_*` test
/// then runs its body. The `child_*` tests are `#[ignore]`d, so a normal run skips them; run
/// directly with `--ignored`, without the marker, they return at once.
pub(crate) fn in_child(marker: &str) -> bool {
    std::env::var_os(marker).is_some()
}

/// Runs the test `name` of this test binary, an `#[ignore]`d one, in a child process
/// (`--exact name --ignored`), with the
/// environment variable `marker` set so that the test runs its body, and each variable of
/// `vars` set to its value or, for `None`, removed. Asserts that the child passed (it was not
/// aborted either) and printed `name: done`, showing its stdout and stderr otherwise, and
/// returns its stdout.
pub(crate) fn run_child(name: &str, marker: &str, vars: &[(&str, Option<&str>)]) -> String {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(marker, "1");
    let mut with = String::new();
    for &(variable, value) in vars {
        match value {
            Some(value) => command.env(variable, value),
            None => command.env_remove(variable),
        };
        with.push_str(&format!(" with {variable}={value:?}"));
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "child {name}{with} failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    // A wrong name would select no test and still succeed: the child must say it ran.
    let done = format!("{name}: done");
    assert!(
        stdout.contains(&done),
        "child {name} did not run its body\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    stdout.into_owned()
}

/// Spawns a task on `pool` that holds its worker until the returned sender is dropped, then
/// returns `value`; returns once the task is running, so the worker is known to be busy.
pub(crate) fn hold_a_worker<T: Send + 'static>(
    pool: &smol_offload::ThreadPool,
    value: T,
) -> (smol_offload::Task<T>, async_channel::Sender<()>) {
    let (open, closed) = gate();
    let (started_tx, started) = std::sync::mpsc::channel();
    let task = pool.spawn(move || {
        started_tx.send(()).unwrap();
        let _ = closed.recv_blocking();
        value
    });
    started.recv_timeout(WATCHDOG).unwrap();
    (task, open)
}

/// A gate that process tasks wait on: a path that does not exist until the gate opens. Pass
/// [`path`](FileGate::path) to [`wait_for_file`] run on a worker; the test opens the gate with
/// [`open`](FileGate::open), or by dropping it (also when it fails and unwinds), so no worker
/// stays blocked.
pub(crate) struct FileGate {
    path: std::path::PathBuf,
}

impl FileGate {
    /// A closed gate, named after `name` and this process.
    pub(crate) fn new(name: &str) -> FileGate {
        let path =
            std::env::temp_dir().join(format!("smol-offload-gate-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        FileGate { path }
    }

    /// The path that [`wait_for_file`] waits for.
    pub(crate) fn path(&self) -> std::path::PathBuf {
        self.path.clone()
    }

    /// Lets every task waiting on the gate go on.
    pub(crate) fn open(self) {}
}

impl Drop for FileGate {
    fn drop(&mut self) {
        std::fs::write(&self.path, b"open").unwrap();
    }
}

/// Run on a worker: waits until the gate at `path` opens, then removes the file and returns
/// the worker's pid. Gives up after [`WATCHDOG`], so a lost gate fails a test, never hangs it.
pub(crate) fn wait_for_file(path: std::path::PathBuf) -> u32 {
    let deadline = std::time::Instant::now() + WATCHDOG;
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the gate never opened"
        );
        thread::sleep(Duration::from_millis(1));
    }
    let _ = std::fs::remove_file(&path);
    std::process::id()
}

/// True while process `pid` exists, running, stopped or a zombie: a zombie has exited but is
/// not reaped, and the no-leftover checks count it as left over.
pub(crate) fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Makes this process the reaper of its orphaned descendants (`PR_SET_CHILD_SUBREAPER`): a
/// process whose parent dies comes to it instead of to init, which may not reap it (a
/// container's first process often does not), so that [`wait_until_reaped`] can check that it
/// ended and reap it. Call it first thing, from the binary's constructor.
pub(crate) fn reap_orphans() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
}

/// Waits until every process of `pids` has ended and been reaped, reaping those orphaned to
/// this process (see [`reap_orphans`]); panics after a generous bound if any remains, running
/// or as a zombie.
pub(crate) fn wait_until_reaped(pids: &[u32]) {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        for &pid in pids {
            // Only a child of this process can be reaped here; for others this fails at once.
            let _ = waitpid(
                nix::unistd::Pid::from_raw(pid as i32),
                Some(WaitPidFlag::WNOHANG),
            );
        }
        let left: Vec<u32> = pids.iter().copied().filter(|&pid| exists(pid)).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "processes left over (running or zombies): {left:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends, on every socket this process holds (in a worker, its link to the pool), a reply to
/// request `id` that says its payload of `size` bytes is in a sealed memfd, with `memfd`
/// attached: for tasks that play a hostile worker, which choose what `memfd` really is.
pub(crate) fn send_reply_in_memfd(id: u64, size: u64, memfd: &std::fs::File) {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    // Length, id, status (returned, payload in a sealed memfd), payload size.
    let mut frame = Vec::new();
    frame.extend_from_slice(&(8u32 + 1 + 8).to_le_bytes());
    frame.extend_from_slice(&id.to_le_bytes());
    frame.push(0x80);
    frame.extend_from_slice(&size.to_le_bytes());
    let fds = [std::os::fd::AsRawFd::as_raw_fd(memfd)];
    for socket in sockets() {
        let _ = sendmsg::<()>(
            socket,
            &[std::io::IoSlice::new(&frame)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
    }
}

/// The descriptors of the sockets this process holds, read from `/proc/self/fd`: in a worker
/// process, its link to the pool (its only socket), for tasks that play a hostile worker.
pub(crate) fn sockets() -> Vec<std::os::fd::RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|entry| entry.file_name().to_string_lossy().parse().ok())
        .collect()
}
