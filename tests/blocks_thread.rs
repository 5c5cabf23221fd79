//! End-to-end: the `blocks-thread` binary against the Python original's thread demo.

mod blocks_common;

use std::collections::BTreeSet;

use blocks_common::*;

const BIN: &str = env!("CARGO_BIN_EXE_blocks-thread");

/// Runs the demo with `args` and `--events`, checks its log and events, and returns each
/// task's worker.
fn check_run(args: &[&str], tasks: u64, workers: usize) -> BTreeSet<String> {
    let events = TempPath::new(&format!("thread-{tasks}-{workers}.jsonl"));
    let mut all = args.to_vec();
    all.extend(["--events", events.as_str()]);
    let output = run(BIN, &all);
    assert_success(&output);
    let lines = thread_log(&stderr(&output));
    let results = check_main_lines(&lines, "MainThread");
    assert_eq!(sorted(results), squares(tasks));
    let by_task = check_blocks_lines(&lines, tasks);
    let names: BTreeSet<String> = by_task.values().cloned().collect();
    assert!(names.len() <= workers, "{names:?}");
    for name in &names {
        let n: usize = name
            .strip_prefix("Thread-")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("worker {name:?} is not Thread-N"));
        assert!((1..=workers).contains(&n), "{name}");
    }
    check_events(&events.0, tasks, workers, &by_task);
    names
}

#[test]
fn the_python_run_six_tasks_on_three_threads() {
    let names = check_run(&[], 6, 3);
    assert!(!names.is_empty());
}

#[test]
fn ten_tasks_on_two_threads() {
    check_run(
        &["--tasks", "10", "--workers", "2", "--sleep-ms", "20"],
        10,
        2,
    );
}

#[test]
fn one_thread_runs_everything() {
    let names = check_run(&["--tasks=4", "--workers=1", "--sleep-ms=5"], 4, 1);
    assert_eq!(names, BTreeSet::from(["Thread-1".to_owned()]));
}

#[test]
fn no_tasks_is_an_empty_result() {
    let output = run(BIN, &["--tasks", "0"]);
    assert_success(&output);
    let lines = thread_log(&stderr(&output));
    assert_eq!(check_main_lines(&lines, "MainThread"), Vec::<u64>::new());
    assert_eq!(lines[3].message, "results: []");
    assert_eq!(lines.len(), 5);
}

#[test]
fn without_events_flag_only_the_log_is_written() {
    let output = run(BIN, &["--sleep-ms", "1"]);
    assert_success(&output);
    assert!(output.stdout.is_empty());
    let lines = thread_log(&stderr(&output));
    assert_eq!(lines.len(), 5 + 2 * 6);
}

#[test]
fn bad_flags_exit_with_code_2() {
    check_bad_flags(BIN, "blocks-thread");
}

#[test]
fn help_prints_usage() {
    let output = run(BIN, &["--help"]);
    assert_success(&output);
    let usage = String::from_utf8(output.stdout).unwrap();
    assert!(usage.contains("Usage: blocks-thread [OPTIONS]"), "{usage}");
    for flag in ["--tasks", "--workers", "--sleep-ms", "--events"] {
        assert!(usage.contains(flag), "{flag} missing: {usage}");
    }
    assert!(output.stderr.is_empty());
}

#[test]
fn an_unwritable_events_file_is_an_error() {
    let output = run(
        BIN,
        &[
            "--sleep-ms",
            "1",
            "--events",
            "/nonexistent/dir/events.jsonl",
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("blocks-thread: error: cannot write events to /nonexistent/dir/events.jsonl"),
        "{err}"
    );
}
