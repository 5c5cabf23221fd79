//! End-to-end: the `blocks-process` binary against the Python original's process demo.

mod blocks_common;

use std::collections::BTreeSet;

use blocks_common::*;

const BIN: &str = env!("CARGO_BIN_EXE_blocks-process");

/// Runs the demo with `args` and `--events`, checks its log and events, and returns the
/// workers' pids.
fn check_run(args: &[&str], tasks: u64, workers: usize) -> BTreeSet<u32> {
    let events = TempPath::new(&format!("process-{tasks}-{workers}.jsonl"));
    let mut all = args.to_vec();
    all.extend(["--events", events.as_str()]);
    let (pid, output) = run_with_pid(BIN, &all);
    assert_success(&output);
    let lines = process_log(&stderr(&output));
    let results = check_main_lines(&lines, &pid.to_string());
    assert_eq!(sorted(results), squares(tasks));
    let by_task = check_blocks_lines(&lines, tasks);
    let pids: BTreeSet<u32> = by_task.values().map(|who| who.parse().unwrap()).collect();
    assert!(pids.len() <= workers, "{pids:?}");
    assert!(!pids.contains(&pid), "a task ran in the main process");
    check_events(&events.0, tasks, workers, &by_task);
    pids
}

#[test]
fn the_python_run_six_tasks_on_three_processes() {
    let pids = check_run(&[], 6, 3);
    assert!(!pids.is_empty());
    assert_gone(pids);
}

#[test]
fn ten_tasks_on_two_processes() {
    let pids = check_run(
        &["--tasks", "10", "--workers", "2", "--sleep-ms", "20"],
        10,
        2,
    );
    assert_gone(pids);
}

#[test]
fn one_process_runs_everything() {
    let pids = check_run(&["--tasks=4", "--workers=1", "--sleep-ms=5"], 4, 1);
    assert_eq!(pids.len(), 1);
}

#[test]
fn bad_flags_exit_with_code_2() {
    check_bad_flags(BIN, "blocks-process");
}

#[test]
fn help_prints_usage() {
    let output = run(BIN, &["--help"]);
    assert_success(&output);
    let usage = String::from_utf8(output.stdout).unwrap();
    assert!(usage.contains("Usage: blocks-process [OPTIONS]"), "{usage}");
}
