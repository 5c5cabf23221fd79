//! End-to-end: `blocks-compare` runs both demo binaries, shows them side by side, checks them
//! and draws the timeline.

mod blocks_common;

use std::process::{Command, Output};
use std::time::Instant;

use blocks_common::*;

const BIN: &str = env!("CARGO_BIN_EXE_blocks-compare");
const THREAD_BIN: &str = env!("CARGO_BIN_EXE_blocks-thread");

/// Runs `blocks-compare` with `args`, with the backends found next to it unless `process_bin`
/// overrides the process one.
fn compare(args: &[&str], process_bin: Option<&str>) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("BLOCKS_THREAD_BIN")
        .env_remove("BLOCKS_PROCESS_BIN")
        .env_remove("BLOCKS_REMOTE_BIN");
    if let Some(path) = process_bin {
        command.env("BLOCKS_PROCESS_BIN", path);
    }
    let started = Instant::now();
    let output = command.output().expect("run blocks-compare");
    assert!(
        started.elapsed() < TIME_LIMIT,
        "took {:?}",
        started.elapsed()
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

/// The verdict lines, as (passed, name).
fn verdicts(text: &str) -> Vec<(bool, &str)> {
    text.lines()
        .filter_map(|line| {
            line.strip_prefix("PASS ")
                .map(|name| (true, name))
                .or_else(|| line.strip_prefix("FAIL ").map(|name| (false, name)))
        })
        .collect()
}

/// The worker column of task `task`'s row for each backend.
fn row_workers(text: &str, task: u64) -> Vec<String> {
    let row = text
        .lines()
        .find(|line| line.split(" | ").next().map(str::trim) == Some(&task.to_string()))
        .unwrap_or_else(|| panic!("no row for task {task} in\n{text}"));
    row.split(" | ")
        .skip(1)
        .map(|cell| cell.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn compares_both_pools_and_draws_a_timeline() {
    let svg = TempPath::new("compare.svg");
    let output = compare(
        &[
            "--tasks",
            "6",
            "--workers",
            "3",
            "--sleep-ms",
            "50",
            "--svg",
            svg.as_str(),
        ],
        None,
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    assert_eq!(
        verdicts(&text),
        [
            (true, "thread: the run finished"),
            (true, "thread: every task 0..6 ran exactly once"),
            (true, "thread: at most 3 tasks at once"),
            (true, "process: the run finished"),
            (true, "process: every task 0..6 ran exactly once"),
            (true, "process: at most 3 tasks at once"),
            (true, "thread and process gave the same results"),
        ]
    );
    for task in 0..6 {
        let workers = row_workers(&text, task);
        assert_eq!(workers.len(), 2, "{workers:?}");
        assert!(workers[0].starts_with("Thread-"), "{workers:?}");
        assert!(workers[1].parse::<u32>().is_ok(), "{workers:?}");
    }
    let results = |backend: &str| {
        let prefix = format!("{backend} results: ");
        let line = text.lines().find_map(|l| l.strip_prefix(&prefix));
        sorted(parse_python_list(line.expect("a results line")))
    };
    assert_eq!(results("thread"), squares(6));
    assert_eq!(results("process"), squares(6));

    let picture = std::fs::read_to_string(&svg.0).expect("the SVG was written");
    assert!(picture.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(picture.trim_end().ends_with("</svg>"));
    assert!(picture.contains(">blocks(n): 6 tasks of 50 ms on 3 workers</text>"));
    let thread_panel = picture.find(">thread pool: wall ").expect("thread panel");
    let process_panel = picture.find(">process pool: wall ").expect("process panel");
    assert!(thread_panel < process_panel);
    assert_eq!(picture.matches("<g class=\"task\">").count(), 12);
    assert!(picture.contains(">wall time: thread "), "{picture}");
    for task in 0..6 {
        // A bar on each panel, in the lane of the worker the table names, with a tooltip.
        assert_eq!(picture.matches(&format!(">{task}</text></g>")).count(), 2);
        let workers = row_workers(&text, task);
        for lane in [workers[0].clone(), format!("PID {}", workers[1])] {
            assert_eq!(picture.matches(&format!(">{lane}</text>")).count(), 1);
        }
        let tooltip = format!(
            "<title>blocks({task}) = {} on {}: ",
            task * task,
            workers[1]
        );
        assert!(picture.contains(&tooltip), "{tooltip}");
    }
    // The time axis under each panel starts at 0.
    assert_eq!(picture.matches(">0</text>\n").count(), 2);
    assert_eq!(
        picture.matches("time since the run started (ms)").count(),
        2
    );
}

#[test]
fn an_override_replaces_a_backend() {
    let output = compare(
        &["--tasks", "4", "--workers", "2", "--sleep-ms", "10"],
        Some(THREAD_BIN),
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    assert!(verdicts(&text).iter().all(|(passed, _)| *passed), "{text}");
    assert_eq!(verdicts(&text).len(), 7);
    assert!(
        !text.contains("timeline written"),
        "an SVG without --svg: {text}"
    );
    let process_workers = text
        .lines()
        .find_map(|l| l.strip_prefix("process workers: "))
        .expect("a workers line");
    assert!(process_workers.starts_with("Thread-"), "{process_workers}");
}

#[test]
fn a_failing_backend_fails_the_comparison() {
    let output = compare(&["--sleep-ms", "10"], Some("/bin/false"));
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let verdicts = verdicts(&text);
    assert!(verdicts.contains(&(true, "thread: every task 0..6 ran exactly once")));
    let died = (
        false,
        "process: the run finished: /bin/false exit status: 1: no output",
    );
    assert!(verdicts.contains(&died), "{text}");
    assert!(
        verdicts.iter().any(|(passed, name)| !passed
            && name.starts_with("process: every task 0..6 ran exactly once: missing 0, 1")),
        "{text}"
    );
}

#[test]
fn a_missing_backend_says_how_to_build_it() {
    let output = compare(&["--sleep-ms", "1"], Some("/nonexistent/blocks-process"));
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let failure = "FAIL process: the run finished: cannot run /nonexistent/blocks-process: ";
    let line = text.lines().find(|line| line.starts_with(failure));
    let line = line.unwrap_or_else(|| panic!("no {failure:?} in {text}"));
    assert!(
        line.contains("`cargo build --release --bin blocks-process`"),
        "{line}"
    );
    assert!(line.ends_with("or set BLOCKS_PROCESS_BIN)"), "{line}");
}

#[test]
fn remote_shows_beside_thread_and_process() {
    if !have_redis_server() {
        return;
    }
    let output = compare(
        &["--remote", "--tasks", "4", "--sleep-ms", "20", "--logs"],
        None,
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    let verdicts = verdicts(&text);
    assert_eq!(verdicts.len(), 3 * 3 + 2, "{text}");
    assert!(verdicts.iter().all(|(passed, _)| *passed), "{text}");
    assert!(verdicts.contains(&(true, "process and remote gave the same results")));
    assert!(text.contains("\n task | thread "), "{text}");
    let host = format!("{}:", host_name());
    for task in 0..4 {
        let workers = row_workers(&text, task);
        assert!(workers[2].starts_with(&host), "{workers:?}");
    }
    assert!(text.contains("--- remote log ---\n"), "{text}");
}

#[test]
fn logs_shows_both_runs() {
    let output = compare(&["--tasks", "2", "--sleep-ms", "1", "--logs"], None);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    let thread = text.find("--- thread log ---").expect("thread log");
    let process = text.find("--- process log ---").expect("process log");
    assert!(thread < process);
    assert!(text[thread..process].contains("MainThread run_blocking_tasks: starting"));
    assert!(text[process..].contains("run_blocking_tasks: starting"));
    assert!(
        text[process..].starts_with("--- process log ---\nPID "),
        "{text}"
    );
}

#[test]
fn bad_flags_exit_with_code_2() {
    for (args, message) in [
        (
            &["--events", "x.jsonl"][..],
            "unexpected argument '--events'",
        ),
        (
            &["--workers", "0"][..],
            "invalid value '0' for '--workers <N>'",
        ),
        (
            &["--workers", "none"][..],
            "invalid value 'none' for '--workers <N>'",
        ),
    ] {
        let output = compare(args, None);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("blocks-compare: "), "{err}");
        assert!(err.contains(message), "{args:?}: {err}");
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn svg_without_a_file_writes_under_target_and_says_where() {
    let dir = std::env::temp_dir().join(format!("blocks-compare-svg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = Command::new(BIN)
        .args(["--svg", "--tasks", "2", "--sleep-ms", "1"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = stdout(&output);
    let written = dir.join("target/blocks-timeline.svg").exists();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    assert!(
        text.contains("\ntimeline written to target/blocks-timeline.svg\n"),
        "{text}"
    );
    assert!(written, "no SVG under target/");
}
