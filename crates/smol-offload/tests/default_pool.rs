//! The default pool behind `smol_offload::spawn`, and the `SMOL_OFFLOAD_THREADS` variable that
//! sizes it. The default pool is created once per process, so each value of the variable is
//! tried in a fresh child process: this binary runs itself again with one `child_*` test
//! selected, the variable set, and a marker telling that test to run its body.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use smol_offload::env::THREADS_VARIABLE;

mod common;

use common::block_on;

/// Set in a child process: its `#[ignore]`d `child_*` test runs its body there.
const CHILD_MARKER: &str = "SMOL_OFFLOAD_TEST_DEFAULT_POOL_CHILD";

fn in_child() -> bool {
    common::in_child(CHILD_MARKER)
}

/// Runs the test `name` of this binary in a child process with `SMOL_OFFLOAD_THREADS` set to
/// `value` (or unset), asserts that it passed, and returns its output.
fn run_child(name: &str, value: Option<&str>) -> String {
    common::run_child(name, CHILD_MARKER, &[(THREADS_VARIABLE, value)])
}

/// The names of the threads that run `n` tasks held on one barrier: `n` distinct workers.
fn names_of_n_concurrent_tasks(n: usize) -> HashSet<String> {
    common::names_of_concurrent_tasks(n, smol_offload::spawn)
}

/// In a child whose variable holds a bad value: the pool is refused with a message that quotes
/// the value and names the variable, and no work runs.
fn refused_value_body(name: &str, value: &str) {
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let err = block_on(smol_offload::spawn(move || {
        flag.store(true, Ordering::SeqCst)
    }))
    .unwrap_err();
    let message = err.to_string();
    assert!(message.contains(THREADS_VARIABLE), "{message}");
    assert!(message.contains(&format!("{value:?}")), "{message}");
    assert!(!err.is_panic() && !err.is_cancelled() && !err.is_shutdown());
    assert!(!ran.load(Ordering::SeqCst), "work ran on a refused pool");

    let again = block_on(smol_offload::spawn(|| 1)).unwrap_err();
    assert_eq!(again.to_string(), message);
    let pool_err = smol_offload::default_pool().unwrap_err();
    assert_eq!(pool_err.to_string(), message);
    println!("message: {message}");
    println!("{name}: done");
}

#[test]
fn spawn_runs_on_the_default_pool() {
    let values = block_on(async {
        let tasks: Vec<_> = (0..100u64)
            .map(|i| smol_offload::spawn(move || i * i))
            .collect();
        let mut values = Vec::new();
        for task in tasks {
            values.push(task.await.unwrap());
        }
        values
    });
    assert_eq!(values, (0..100u64).map(|i| i * i).collect::<Vec<_>>());
    let name = block_on(smol_offload::spawn(|| {
        thread::current().name().map(str::to_owned)
    }))
    .unwrap();
    let name = name.expect("default workers have names");
    assert!(name.starts_with("smol-offload-"), "{name}");
}

#[test]
fn default_pool_is_one_shared_instance() {
    let a = smol_offload::default_pool().unwrap();
    let b = smol_offload::default_pool().unwrap();
    assert_eq!(a.workers(), b.workers());
    let before = b.stats().completed;
    block_on(a.spawn(|| ())).unwrap();
    // Clones of one pool share their counters: the second handle saw the first's task.
    assert!(b.stats().completed > before);
}

#[test]
fn unset_variable_gives_one_worker_per_cpu() {
    let output = run_child("child_unset", None);
    let cpus = thread::available_parallelism().unwrap().get();
    assert!(output.contains(&format!("workers={cpus}")), "{output}");
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_unset() {
    if !in_child() {
        return;
    }
    let pool = smol_offload::default_pool().unwrap();
    let cpus = thread::available_parallelism().unwrap().get();
    assert_eq!(pool.workers(), cpus);
    assert_eq!(block_on(smol_offload::spawn(|| 40 + 2)).unwrap(), 42);
    println!("workers={}", pool.workers());
    println!("child_unset: done");
}

#[test]
fn two_gives_a_pool_of_two_workers() {
    let output = run_child("child_two", Some("2"));
    assert!(output.contains("workers=2"), "{output}");
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_two() {
    if !in_child() {
        return;
    }
    let pool = smol_offload::default_pool().unwrap();
    assert_eq!(pool.workers(), 2);
    assert_eq!(pool.stats().workers, 2);

    // Exactly two threads when two tasks must run at once ...
    let names = names_of_n_concurrent_tasks(2);
    let expected: HashSet<String> = ["smol-offload-0", "smol-offload-1"]
        .map(str::to_owned)
        .into();
    assert_eq!(names, expected);

    // ... and never more under a burst.
    let tasks: Vec<_> = (0..2_000)
        .map(|_| smol_offload::spawn(|| thread::current().id()))
        .collect();
    let ids: HashSet<_> = block_on(async {
        let mut ids = HashSet::new();
        for task in tasks {
            ids.insert(task.await.unwrap());
        }
        ids
    });
    assert!(ids.len() <= 2, "{} threads ran the burst", ids.len());
    println!("workers={}", pool.workers());
    println!("child_two: done");
}

#[test]
fn surrounding_spaces_are_accepted() {
    let output = run_child("child_spaced_three", Some(" 3 "));
    assert!(output.contains("workers=3"), "{output}");
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_spaced_three() {
    if !in_child() {
        return;
    }
    let pool = smol_offload::default_pool().unwrap();
    assert_eq!(pool.workers(), 3);
    assert_eq!(names_of_n_concurrent_tasks(3).len(), 3);
    println!("workers={}", pool.workers());
    println!("child_spaced_three: done");
}

#[test]
fn zero_is_refused_with_a_clear_error() {
    let output = run_child("child_zero", Some("0"));
    assert!(
        output.contains("message: SMOL_OFFLOAD_THREADS") && output.contains("\"0\""),
        "{output}"
    );
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_zero() {
    if !in_child() {
        return;
    }
    refused_value_body("child_zero", "0");
}

#[test]
fn garbage_is_refused_with_a_clear_error() {
    let output = run_child("child_garbage", Some("abc"));
    assert!(output.contains("\"abc\""), "{output}");
    assert!(output.contains(THREADS_VARIABLE), "{output}");
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_garbage() {
    if !in_child() {
        return;
    }
    refused_value_body("child_garbage", "abc");
}

#[test]
fn negative_is_refused_with_a_clear_error() {
    let output = run_child("child_negative", Some("-2"));
    assert!(output.contains("\"-2\""), "{output}");
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_negative() {
    if !in_child() {
        return;
    }
    refused_value_body("child_negative", "-2");
}
