//! What the blocks(n) end-to-end tests share: running a demo binary, reading its log back
//! from stderr in either layout, and reading its `--events` file.
//!
//! The parsing here is deliberately independent of the `blocks_demo` library, so that the tests
//! check the binaries against the Python original's layouts rather than against the library's own code.

#![allow(dead_code)] // each test binary uses a part

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The generous bound on one demo run: the machine is noisy, not that slow.
pub(crate) const TIME_LIMIT: Duration = Duration::from_secs(30);

/// Runs `binary` with `args`, checks it finished within [`TIME_LIMIT`], and returns its output.
pub(crate) fn run(binary: &str, args: &[&str]) -> Output {
    let started = Instant::now();
    let output = Command::new(binary)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {binary}: {err}"));
    let took = started.elapsed();
    assert!(took < TIME_LIMIT, "{binary} {args:?} took {took:?}");
    output
}

/// Like [`run`], and also returns the child's pid.
pub(crate) fn run_with_pid(binary: &str, args: &[&str]) -> (u32, Output) {
    let started = Instant::now();
    let child = Command::new(binary)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {binary}: {err}"));
    let pid = child.id();
    let output = child.wait_with_output().expect("wait for the child");
    let took = started.elapsed();
    assert!(took < TIME_LIMIT, "{binary} {args:?} took {took:?}");
    (pid, output)
}

/// Whether process `pid` still runs (a zombie waiting to be reaped does not run).
pub(crate) fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            !matches!(state, Some(Some('Z' | 'X')))
        }
    }
}

/// Stderr as text.
pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("stderr is UTF-8")
}

/// Asserts that the run succeeded, showing its stderr if not.
pub(crate) fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}, stderr:\n{}",
        output.status,
        stderr(output)
    );
}

/// One log line, split into its columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    /// The thread name, or the pid as text.
    pub(crate) who: String,
    /// The logger: `run_blocking_tasks` or `blocks(n)`.
    pub(crate) logger: String,
    /// The message.
    pub(crate) message: String,
}

/// Splits `who logger: message`, where neither name has a space or a `: `.
fn split(line: &str, rest: &str) -> Line {
    let (left, message) = rest
        .split_once(": ")
        .unwrap_or_else(|| panic!("no ': ' in {line:?}"));
    let mut names = left.split_whitespace();
    let who = names
        .next()
        .unwrap_or_else(|| panic!("no name in {line:?}"));
    let logger = names
        .next()
        .unwrap_or_else(|| panic!("no logger in {line:?}"));
    assert!(names.next().is_none(), "extra column in {line:?}");
    Line {
        who: who.to_owned(),
        logger: logger.to_owned(),
        message: message.to_owned(),
    }
}

/// Parses a log in the thread layout `%(threadName)10s %(name)18s: %(message)s`, checking that
/// every line is laid out exactly so (right-aligned columns of 10 and 18).
pub(crate) fn thread_log(text: &str) -> Vec<Line> {
    assert!(
        text.ends_with('\n'),
        "log does not end in a newline: {text:?}"
    );
    text.lines()
        .map(|raw| {
            let line = split(raw, raw);
            let laid_out = format!("{:>10} {:>18}: {}", line.who, line.logger, line.message);
            assert_eq!(raw, laid_out, "not in the thread layout");
            line
        })
        .collect()
}

/// Parses a log in the process layout `PID %(process)5s %(name)18s: %(message)s`, checking that
/// every line is laid out exactly so, and that the pids are numbers.
pub(crate) fn process_log(text: &str) -> Vec<Line> {
    assert!(
        text.ends_with('\n'),
        "log does not end in a newline: {text:?}"
    );
    text.lines()
        .map(|raw| {
            let rest = raw
                .strip_prefix("PID ")
                .unwrap_or_else(|| panic!("no 'PID ' in {raw:?}"));
            let line = split(raw, rest);
            line.who
                .parse::<u32>()
                .unwrap_or_else(|_| panic!("pid {:?} in {raw:?}", line.who));
            let laid_out = format!("PID {:>5} {:>18}: {}", line.who, line.logger, line.message);
            assert_eq!(raw, laid_out, "not in the process layout");
            line
        })
        .collect()
}

/// Checks the lines of `run_blocking_tasks`: all from `main_who`, the Python original's five messages in
/// order, and the results after every `done`. Returns the results.
pub(crate) fn check_main_lines(lines: &[Line], main_who: &str) -> Vec<u64> {
    let main: Vec<(usize, &Line)> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| line.logger == "run_blocking_tasks")
        .collect();
    for (_, line) in &main {
        assert_eq!(line.who, main_who, "{line:?}");
    }
    let messages: Vec<&str> = main.iter().map(|(_, l)| l.message.as_str()).collect();
    assert_eq!(messages.len(), 5, "{messages:?}");
    assert_eq!(
        messages[..3],
        [
            "starting",
            "creating executor tasks",
            "waiting for executor tasks"
        ]
    );
    assert!(messages[3].starts_with("results: "), "{messages:?}");
    assert_eq!(messages[4], "exiting");
    let (results_at, results_line) = main[3];
    let last_done = lines.iter().rposition(|l| l.message == "done");
    assert!(
        last_done.is_none_or(|done| done < results_at),
        "results before the last done"
    );
    parse_python_list(results_line.message.strip_prefix("results: ").unwrap())
}

/// Parses Python's repr of a list of ints, `[16, 4, 1]`, strictly.
pub(crate) fn parse_python_list(text: &str) -> Vec<u64> {
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not a list: {text:?}"));
    if inner.is_empty() {
        return Vec::new();
    }
    inner
        .split(", ")
        .map(|n| n.parse().unwrap_or_else(|_| panic!("not a list: {text:?}")))
        .collect()
}

/// Checks the lines of `blocks(n)` for `n` in `0..tasks`: one `running` then one `done` each,
/// from the same worker, and nothing else. Returns each task's worker.
pub(crate) fn check_blocks_lines(lines: &[Line], tasks: u64) -> BTreeMap<u64, String> {
    let mut workers = BTreeMap::new();
    for n in 0..tasks {
        let logger = format!("blocks({n})");
        let own: Vec<(usize, &Line)> = lines
            .iter()
            .enumerate()
            .filter(|(_, line)| line.logger == logger)
            .collect();
        let messages: Vec<&str> = own.iter().map(|(_, l)| l.message.as_str()).collect();
        assert_eq!(messages, ["running", "done"], "{logger}");
        assert!(own[0].0 < own[1].0, "{logger}: done before running");
        assert_eq!(own[0].1.who, own[1].1.who, "{logger} changed worker");
        workers.insert(n, own[0].1.who.clone());
    }
    let other = lines.iter().find(|line| {
        line.logger != "run_blocking_tasks" && !workers.contains_key(&blocks_number(&line.logger))
    });
    assert!(other.is_none(), "unexpected line {other:?}");
    workers
}

fn blocks_number(logger: &str) -> u64 {
    logger
        .strip_prefix("blocks(")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

/// The squares of `0..tasks`, sorted.
pub(crate) fn squares(tasks: u64) -> Vec<u64> {
    (0..tasks).map(|n| n * n).collect()
}

/// `values`, sorted: a multiset to compare.
pub(crate) fn sorted(mut values: Vec<u64>) -> Vec<u64> {
    values.sort_unstable();
    values
}

/// One line of an `--events` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TaskEvent {
    pub(crate) task: u64,
    pub(crate) worker: String,
    pub(crate) start_us: u64,
    pub(crate) end_us: u64,
    pub(crate) result: u64,
}

/// Reads an `--events` file: one JSON object per line, each with at least `task`, `worker`,
/// `start_us`, `end_us` and `result`.
pub(crate) fn read_events(path: &Path) -> Vec<TaskEvent> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    text.lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
            let number = |key: &str| {
                value[key]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no number {key} in {line}"))
            };
            TaskEvent {
                task: number("task"),
                worker: value["worker"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no worker in {line}"))
                    .to_owned(),
                start_us: number("start_us"),
                end_us: number("end_us"),
                result: number("result"),
            }
        })
        .collect()
}

/// The most events running at one start instant: an event counts as running over
/// `[start_us, end_us)`, and the busiest moment is always some event's start.
pub(crate) fn max_overlap(events: &[TaskEvent]) -> usize {
    events
        .iter()
        .map(|at| {
            events
                .iter()
                .filter(|e| e.start_us <= at.start_us && at.start_us < e.end_us.max(e.start_us + 1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Checks an events file against the run's log: `0..tasks` once each with `n * n`, from the
/// worker the log named, `start <= end`, and at most `workers` at once.
pub(crate) fn check_events(
    path: &Path,
    tasks: u64,
    workers: usize,
    log_workers: &BTreeMap<u64, String>,
) {
    let events = read_events(path);
    assert_eq!(events.len() as u64, tasks, "{events:?}");
    let mut seen: Vec<u64> = events.iter().map(|e| e.task).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..tasks).collect::<Vec<_>>());
    for event in &events {
        assert_eq!(event.result, event.task * event.task, "{event:?}");
        assert_eq!(
            Some(&event.worker),
            log_workers.get(&event.task),
            "{event:?}"
        );
        assert!(event.start_us <= event.end_us, "{event:?}");
    }
    let most = max_overlap(&events);
    assert!(most <= workers, "{most} tasks at once on {workers} workers");
}

/// A path in the temporary directory for this test process, removed when dropped.
pub(crate) struct TempPath(pub PathBuf);

impl TempPath {
    pub(crate) fn new(name: &str) -> TempPath {
        TempPath(std::env::temp_dir().join(format!("blocks-e2e-{}-{name}", std::process::id())))
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The bad command lines every demo binary must refuse with exit code 2, and a piece of the
/// message each must print.
pub(crate) const BAD_FLAGS: &[(&[&str], &str)] = &[
    (&["--bogus"], "unexpected argument '--bogus'"),
    (&["--tasks"], "a value is required for '--tasks <N>'"),
    (&["--tasks", "six"], "invalid value 'six' for '--tasks <N>'"),
    (&["--sleep-ms", "-1"], "unexpected argument '-1'"),
    (&["--workers", "0"], "0 is not in 1..=1024"),
    (&["--workers", "1025"], "1025 is not in 1..=1024"),
    (&["--tasks", "1000001"], "1000001 is not in 0..=1000000"),
    (&["stray"], "unexpected argument 'stray'"),
];

/// Checks that `binary` refuses every [`BAD_FLAGS`] line with exit code 2, a message naming
/// the program, and no run.
pub(crate) fn check_bad_flags(binary: &str, program: &str) {
    for (args, message) in BAD_FLAGS {
        let output = run(binary, args);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with(&format!("{program}: ")), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
        assert!(!err.contains("starting"), "{args:?} ran anyway: {err}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

/// Whether `redis-server` runs here: the remote demo's tests are skipped (and say so in one
/// line) without it, or fail when `SMOL_OFFLOAD_REQUIRE_REDIS=1` says it must be there (CI).
pub(crate) fn have_redis_server() -> bool {
    let version = Command::new("redis-server").arg("--version").output();
    if version.is_ok_and(|output| output.status.success()) {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    let required = std::env::var_os("SMOL_OFFLOAD_REQUIRE_REDIS").is_some_and(|value| value == "1");
    assert!(
        !required,
        "{test}: no redis-server on the PATH, and SMOL_OFFLOAD_REQUIRE_REDIS=1 requires one"
    );
    // Straight to stderr, past the test harness's capture, so that the line shows.
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: needs redis-server on the PATH (apt-get install redis-server); set \
         SMOL_OFFLOAD_REQUIRE_REDIS=1 to make this a failure"
    );
    false
}

/// This machine's name, as `blocks-remote` logs it before a worker's pid.
pub(crate) fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("a host name");
    name.trim().to_owned()
}

/// Waits up to 10 s for processes `pids` to stop.
pub(crate) fn assert_gone(pids: impl IntoIterator<Item = u32>) {
    let pids: Vec<u32> = pids.into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&pid| is_running(pid)) {
        assert!(Instant::now() < deadline, "still running: {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
