//! End-to-end: `blocks-remote` runs the process demo on remote workers, with `host:pid` where
//! the process demo logs a pid. Needs `redis-server` on the `PATH` (CI installs it); without
//! it the tests say so and pass.

mod blocks_common;

use std::collections::BTreeSet;

use blocks_common::*;

const BIN: &str = env!("CARGO_BIN_EXE_blocks-remote");

/// Parses a log in the process layout `PID %(process)5s %(name)18s: %(message)s`, where each
/// "pid" is `host:pid`.
fn remote_log(lines: &[&str]) -> Vec<Line> {
    let parse = |raw: &&str| {
        let rest = raw
            .strip_prefix("PID ")
            .unwrap_or_else(|| panic!("{raw:?}"));
        let (who, rest) = rest.split_once(' ').unwrap_or_else(|| panic!("{raw:?}"));
        let (logger, message) = rest.trim_start().split_once(": ").expect("a logger");
        assert_eq!(*raw, format!("PID {who:>5} {logger:>18}: {message}"));
        let (who, logger, message) = (who.to_owned(), logger.to_owned(), message.to_owned());
        Line {
            who,
            logger,
            message,
        }
    };
    lines.iter().map(parse).collect()
}

/// The pid of `host:pid`, checking the host.
fn pid_on(host: &str, who: &str) -> u32 {
    let pid = who.strip_prefix(&format!("{host}:"));
    pid.and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{who:?} is not {host}:PID"))
}

#[test]
fn six_tasks_on_three_remote_workers_that_all_stop() {
    if !have_redis_server() {
        return;
    }
    let events = TempPath::new("remote.jsonl");
    let args = ["--sleep-ms", "50", "--events", events.as_str()];
    let (pid, output) = run_with_pid(BIN, &args);
    assert_success(&output);
    let log = stderr(&output);
    // The workers' own lines: each says it serves before the run, and that it stops after.
    let (fleet, demo): (Vec<&str>, Vec<&str>) =
        (log.lines()).partition(|line| line.starts_with("smol-offload worker "));
    let serving = fleet
        .iter()
        .filter(|line| line.contains(": serving "))
        .count();
    let stopped = fleet
        .iter()
        .filter(|line| line.ends_with(": stopped"))
        .count();
    assert_eq!((serving, stopped), (3, 3), "{log}");
    let first_stop = log.find(": stopping").expect("a stopping line");
    assert!(log.find(": serving ").unwrap() < log.find(" starting\n").unwrap());
    assert!(log.find(" exiting\n").unwrap() < first_stop, "{log}");

    let (host, lines) = (host_name(), remote_log(&demo));
    let results = check_main_lines(&lines, &format!("{host}:{pid}"));
    assert_eq!(sorted(results), squares(6));
    let by_task = check_blocks_lines(&lines, 6);
    let pids: BTreeSet<u32> = by_task.values().map(|who| pid_on(&host, who)).collect();
    assert!(
        !pids.is_empty() && pids.len() <= 3 && !pids.contains(&pid),
        "{pids:?}"
    );
    check_events(&events.0, 6, 3, &by_task);
    let workers = fleet.iter().map(|line| {
        let who = line.strip_prefix("smol-offload worker ").unwrap();
        pid_on(&host, who.split_once(": ").unwrap().0)
    });
    assert_gone(pids.iter().copied().chain(workers));
}

#[test]
fn no_broker_is_a_clear_error() {
    let output = run(BIN, &["--redis", "redis://127.0.0.1:1", "--sleep-ms", "1"]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.starts_with("blocks-remote: error: "), "{err}");
    assert!(!err.contains("starting"), "{err}");
}

#[test]
fn bad_flags_exit_with_code_2() {
    check_bad_flags(BIN, "blocks-remote");
}
