//! `cancelled()` inside running thread work, and `spawn_dedicated`.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{WATCHDOG, block_on};
use smol_offload::{Task, ThreadPool, cancelled, spawn_dedicated};

/// Work that says when it runs, then spins until `cancelled()` and reports that it saw it.
/// Returns the task and the receiver of the report, once the work is running.
fn spin_until_cancelled(
    spawn: impl FnOnce(Box<dyn FnOnce() -> u32 + Send>) -> Task<u32>,
) -> (Task<u32>, mpsc::Receiver<&'static str>) {
    let (started_tx, started) = mpsc::channel();
    let (saw_tx, saw) = mpsc::channel();
    let task = spawn(Box::new(move || {
        assert!(!cancelled(), "nobody cancelled yet");
        started_tx.send(()).unwrap();
        let mut spins = 0u32;
        while !cancelled() {
            spins = spins.wrapping_add(1);
            std::thread::yield_now();
        }
        saw_tx.send("cancelled").unwrap();
        7
    }));
    started.recv_timeout(WATCHDOG).unwrap();
    (task, saw)
}

#[test]
fn false_outside_any_task() {
    assert!(!cancelled());
    let pool = ThreadPool::new(1).unwrap();
    assert!(!block_on(pool.spawn(cancelled)).unwrap());
}

#[test]
fn a_pool_closure_sees_its_task_dropped() {
    let pool = ThreadPool::new(1).unwrap();
    let (task, saw) = spin_until_cancelled(|work| pool.spawn(work));
    drop(task);
    assert_eq!(saw.recv_timeout(WATCHDOG), Ok("cancelled"));
    // The worker is free again, and the next closure starts uncancelled.
    assert!(!block_on(pool.spawn(cancelled)).unwrap());
}

#[test]
fn a_pool_closure_sees_cancel_and_its_value_still_comes_back() {
    let pool = ThreadPool::new(1).unwrap();
    let (task, saw) = spin_until_cancelled(|work| pool.spawn(work));
    assert_eq!(block_on(task.cancel()).unwrap(), 7);
    assert_eq!(saw.recv_timeout(WATCHDOG), Ok("cancelled"));
}

#[test]
fn a_pool_closure_sees_its_timeout_expire() {
    let pool = ThreadPool::new(1).unwrap();
    let (task, saw) = spin_until_cancelled(|work| pool.spawn(work));
    let err = block_on(task.timeout(Duration::from_millis(5))).unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(saw.recv_timeout(WATCHDOG), Ok("cancelled"));
}

#[test]
fn a_detached_task_is_never_cancelled() {
    let pool = ThreadPool::new(1).unwrap();
    let (gate_tx, gate) = mpsc::channel::<()>();
    let (seen_tx, seen) = mpsc::channel();
    pool.spawn(move || {
        let _ = gate.recv();
        seen_tx.send(cancelled()).unwrap();
    })
    .detach();
    drop(gate_tx);
    assert_eq!(seen.recv_timeout(WATCHDOG), Ok(false));
}

#[test]
fn a_dedicated_thread_sees_drop_cancel_and_timeout() {
    let (task, saw) = spin_until_cancelled(|work| spawn_dedicated("long-job", work));
    drop(task);
    assert_eq!(saw.recv_timeout(WATCHDOG), Ok("cancelled"));

    let (task, saw) = spin_until_cancelled(|work| spawn_dedicated("long-job", work));
    assert_eq!(block_on(task.cancel()).unwrap(), 7);
    assert_eq!(saw.recv_timeout(WATCHDOG), Ok("cancelled"));

    let (task, saw) = spin_until_cancelled(|work| spawn_dedicated("long-job", work));
    assert!(
        block_on(task.timeout(Duration::from_millis(5)))
            .unwrap_err()
            .is_timeout()
    );
    assert_eq!(saw.recv_timeout(WATCHDOG), Ok("cancelled"));
}

#[test]
fn spawn_dedicated_runs_on_its_own_named_thread_and_reports_panics() {
    let pool = ThreadPool::builder()
        .workers(1)
        .thread_name(|_| "only-worker".to_owned())
        .build()
        .unwrap();
    // The pool's only worker is busy with a job that waits for the dedicated one: a pool job
    // could never run it.
    let (tx, rx) = mpsc::channel();
    let waiting = pool.spawn(move || rx.recv_timeout(WATCHDOG).unwrap());
    let name = block_on(spawn_dedicated("separate", move || {
        let name = std::thread::current().name().map(str::to_owned);
        tx.send(name.clone()).unwrap();
        name
    }))
    .unwrap();
    assert_eq!(name.as_deref(), Some("separate"));
    assert_eq!(block_on(waiting).unwrap().as_deref(), Some("separate"));

    let err = block_on(spawn_dedicated("panics", || -> u8 {
        panic!("separate boom")
    }))
    .unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.panic_message(), Some("separate boom"));
}

#[test]
fn a_bad_thread_name_is_a_clear_error() {
    let err = block_on(spawn_dedicated("nul\0inside", || 1)).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("could not start the dedicated thread \"nul\\0inside\""),
        "{err}"
    );
}
