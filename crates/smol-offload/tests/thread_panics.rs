//! Panics in thread-pool tasks: each becomes an `Error` with the panic's message, and the pool
//! keeps all its workers; a panic while dropping a task's closure or value does not crash the
//! process either. This binary silences the panic hook for pool threads, so it holds only panic
//! tests. Scenarios that could abort the process run in a child process: the binary runs itself
//! again with one `child_*` test selected and a marker telling that test to run its body.

use std::panic;
use std::sync::{Arc, Once};
use std::thread;

use smol_offload::{Task, ThreadPool};

mod common;

use common::{block_on, gate, hold_a_worker, names_of_all_workers};

/// Keeps the expected panics of pool threads off stderr. The hook is process-global, which is
/// why this binary holds nothing but panic tests; the test threads keep the default hook, so a
/// failing assertion still prints its message.
fn quiet_worker_panics() {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let name = thread::current().name().unwrap_or("").to_owned();
            let expected = name.starts_with("smol-offload-") || name.starts_with("panicky-");
            if !expected {
                default(info);
            }
        }));
    });
}

/// What task `i` panics with, and the message the error must carry.
fn panic_for(i: usize) -> (Box<dyn FnOnce() -> usize + Send>, String) {
    match i % 5 {
        0 => (
            Box::new(move || panic!("task {i} failed")),
            format!("task {i} failed"),
        ),
        1 => (
            Box::new(|| panic!("a literal message")),
            "a literal message".to_owned(),
        ),
        2 => (
            Box::new(move || panic::panic_any(format!("string payload {i}"))),
            format!("string payload {i}"),
        ),
        3 => (
            Box::new(|| panic::panic_any("static str payload")),
            "static str payload".to_owned(),
        ),
        _ => (
            Box::new(move || panic::panic_any(i)),
            "Box<dyn Any>".to_owned(),
        ),
    }
}

#[test]
fn every_panic_becomes_an_error_with_its_message() {
    quiet_worker_panics();
    const TASKS: usize = 1_000;
    let pool = ThreadPool::new(2).unwrap();
    let before = names_of_all_workers(&pool, 2);

    let (tasks, messages): (Vec<Task<usize>>, Vec<String>) = (0..TASKS)
        .map(|i| {
            let (work, message) = panic_for(i);
            (pool.spawn(work), message)
        })
        .unzip();
    block_on(async {
        for (i, (task, message)) in tasks.into_iter().zip(messages).enumerate() {
            let err = task.await.unwrap_err();
            assert!(err.is_panic(), "task {i}: {err}");
            assert!(!err.is_cancelled() && !err.is_timeout() && !err.is_shutdown());
            assert!(!err.is_worker_died() && !err.is_codec());
            assert_eq!(err.panic_message(), Some(message.as_str()), "task {i}");
            // With the location when this binary's quiet hook calls the pool's, which
            // depends on which of the two was installed first.
            let text = err.to_string();
            assert!(text.starts_with("the task panicked"), "{text}");
            assert!(text.ends_with(&format!(": {message}")), "{text}");
            assert!(std::error::Error::source(&err).is_none());
        }
    });

    // The pool goes on, with the same workers.
    block_on(async {
        for i in 0..100 {
            assert_eq!(pool.spawn(move || i * 2).await.unwrap(), i * 2);
        }
    });
    assert_eq!(pool.workers(), 2);
    assert_eq!(names_of_all_workers(&pool, 2), before);
    let stats = pool.stats();
    // Two barrier rounds, the panics and the 100 values: a panic counts as completed.
    assert_eq!(stats.completed, (2 + TASKS + 100 + 2) as u64);
    assert_eq!((stats.queued, stats.running, stats.cancelled), (0, 0, 0));
}

#[test]
fn panics_mixed_with_values_keep_each_result_apart() {
    quiet_worker_panics();
    let pool = ThreadPool::builder()
        .workers(3)
        .thread_name(|i| format!("panicky-{i}"))
        .build()
        .unwrap();
    let tasks: Vec<Task<u32>> = (0..1_000u32)
        .map(|i| {
            pool.spawn(move || {
                if i % 2 == 0 {
                    panic!("odd one out {i}");
                }
                i
            })
        })
        .collect();
    block_on(async {
        for (i, task) in (0..1_000u32).zip(tasks) {
            match task.await {
                Ok(value) => assert_eq!(value, i),
                Err(err) => {
                    assert_eq!(i % 2, 0, "task {i} failed: {err}");
                    assert_eq!(
                        err.panic_message().unwrap(),
                        format!("odd one out {i}").as_str()
                    );
                }
            }
        }
    });
    assert_eq!(names_of_all_workers(&pool, 3).len(), 3);
}

#[test]
fn a_panic_does_not_disturb_a_running_task() {
    quiet_worker_panics();
    let pool = ThreadPool::new(2).unwrap();
    let (survivor, open) = hold_a_worker(&pool, "survived");
    block_on(async {
        for _ in 0..100 {
            let err = pool.spawn(|| panic!("next door")).await.unwrap_err();
            assert_eq!(err.panic_message(), Some("next door"));
        }
        drop(open);
        assert_eq!(survivor.await.unwrap(), "survived");
    });
}

#[test]
fn a_panicking_closure_drops_its_captures() {
    quiet_worker_panics();
    let pool = ThreadPool::new(1).unwrap();
    let resource = Arc::new(());
    let held = resource.clone();
    let err = block_on(pool.spawn(move || {
        let _held = held;
        panic!("dropped on unwind")
    }))
    .unwrap_err();
    assert_eq!(err.panic_message(), Some("dropped on unwind"));
    assert_eq!(Arc::strong_count(&resource), 1, "the capture leaked");
}

#[test]
fn a_panic_in_rayon_work_inside_a_task_is_caught() {
    use rayon::prelude::*;

    quiet_worker_panics();
    let pool = ThreadPool::new(2).unwrap();
    let err = block_on(pool.spawn(|| {
        (0..1_000u32)
            .into_par_iter()
            .map(|i| if i == 777 { panic!("par_iter {i}") } else { i })
            .sum::<u32>()
    }))
    .unwrap_err();
    assert_eq!(err.panic_message(), Some("par_iter 777"));
    assert_eq!(names_of_all_workers(&pool, 2).len(), 2);
}

#[test]
fn default_pool_panics_become_errors() {
    quiet_worker_panics();
    let err = block_on(smol_offload::spawn(|| -> u8 { panic!("default pool") })).unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.panic_message(), Some("default pool"));
    assert_eq!(block_on(smol_offload::spawn(|| 9)).unwrap(), 9);
}

#[test]
fn a_panic_in_a_detached_task_is_contained() {
    quiet_worker_panics();
    let pool = ThreadPool::new(1).unwrap();
    for _ in 0..100 {
        pool.spawn(|| panic!("nobody listens")).detach();
    }
    // One worker, submission order: this runs after every detached panic.
    assert_eq!(block_on(pool.spawn(|| "still here")).unwrap(), "still here");
    assert_eq!(pool.stats().completed, 101);
}

/// Set in a child process: its `child_*` test runs its body instead of returning at once.
const CHILD_MARKER: &str = "SMOL_OFFLOAD_TEST_THREAD_PANICS_CHILD";

fn in_child() -> bool {
    common::in_child(CHILD_MARKER)
}

/// Runs the test `name` of this binary in a child process and asserts that it passed: it was
/// not aborted, and it ran its body.
fn run_child(name: &str) {
    common::run_child(name, CHILD_MARKER, &[]);
}

/// Panics when dropped, like a guard whose cleanup fails.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("dropping failed");
    }
}

#[test]
fn a_panic_dropping_a_cancelled_closure_does_not_abort() {
    run_child("child_panic_dropping_a_cancelled_closure");
}

#[test]
fn child_panic_dropping_a_cancelled_closure() {
    if !in_child() {
        return;
    }
    quiet_worker_panics();
    let pool = ThreadPool::new(1).unwrap();
    let (open, closed) = gate();
    let busy = pool.spawn(move || {
        let _ = closed.recv_blocking();
    });
    let guard = PanicOnDrop;
    // Cancelled before it starts: the worker drops the closure, and with it the guard.
    drop(pool.spawn(move || drop(guard)));
    drop(open);
    block_on(busy).unwrap();
    assert_eq!(block_on(pool.spawn(|| "still here")).unwrap(), "still here");
    println!("child_panic_dropping_a_cancelled_closure: done");
}

#[test]
fn a_panic_dropping_an_unread_result_does_not_abort() {
    run_child("child_panic_dropping_an_unread_result");
}

#[test]
fn child_panic_dropping_an_unread_result() {
    if !in_child() {
        return;
    }
    quiet_worker_panics();
    let pool = ThreadPool::new(1).unwrap();
    let (task, open) = hold_a_worker(&pool, PanicOnDrop);
    // Dropped while it runs: nobody reads the value, so the worker drops it.
    drop(task);
    drop(open);
    assert_eq!(block_on(pool.spawn(|| "still here")).unwrap(), "still here");
    println!("child_panic_dropping_an_unread_result: done");
}
