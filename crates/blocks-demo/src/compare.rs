//! What `blocks-compare` does with the two backends: run them ([`Backend`]), report each run
//! ([`RunReport`]), check them ([`Check`]) and show them side by side ([`render_table`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::blocks::{Outcome, join, micros, ms};
use crate::events::{max_concurrency, read_events};
use crate::options::Options;
use crate::run::python_list;

/// One backend binary of the demo, by its name in reports: `thread` or `process`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend(pub &'static str);

/// `blocks-thread`, overridden by `BLOCKS_THREAD_BIN`.
pub const THREAD: Backend = Backend("thread");

/// `blocks-process`, overridden by `BLOCKS_PROCESS_BIN`.
pub const PROCESS: Backend = Backend("process");

impl Backend {
    /// The binary's name, `blocks-NAME`, looked for next to the running executable.
    pub fn binary(self) -> String {
        format!("blocks-{}", self.0)
    }

    /// The environment variable that overrides the binary's path: `BLOCKS_NAME_BIN`.
    pub fn env_var(self) -> String {
        format!("BLOCKS_{}_BIN", self.0.to_uppercase())
    }

    /// The binary to run: the path in [`env_var`](Backend::env_var) if set and not empty,
    /// otherwise [`binary`](Backend::binary) in the directory of the running executable (where
    /// cargo puts every binary of a package).
    ///
    /// # Errors
    ///
    /// The running executable's path is unknown.
    pub fn locate(self) -> anyhow::Result<PathBuf> {
        if let Some(path) = std::env::var_os(self.env_var()).filter(|path| !path.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        let exe = std::env::current_exe().context("cannot find the running executable")?;
        let dir = exe
            .parent()
            .context("the running executable has no directory")?;
        Ok(dir.join(self.binary() + std::env::consts::EXE_SUFFIX))
    }

    /// Runs `binary` with the run flags of `options` and `--events events`, and reads the
    /// events it wrote. Gives the run's report and its stderr (its log). A run that could not
    /// start, failed, or wrote unreadable events comes back with its
    /// [`failure`](RunReport::failure) set, never as an error.
    pub fn run(self, binary: &Path, options: &Options, events: &Path) -> (RunReport, String) {
        let _ = std::fs::remove_file(events);
        let started = Instant::now();
        let mut command = Command::new(binary);
        command.args(options.run_args()).arg("--events").arg(events);
        let output = command.output();
        let mut report = RunReport {
            backend: self.0.to_owned(),
            wall: started.elapsed(),
            outcomes: Vec::new(),
            failure: None,
        };
        let (binary, (name, var)) = (binary.display(), (self.binary(), self.env_var()));
        let (read, log) = match output {
            Err(err) => {
                let build = format!("`cargo build --release --bin {name}`");
                let failure =
                    format!("cannot run {binary}: {err} (build it with {build}, or set {var})");
                (Err(failure), String::new())
            }
            Ok(output) => {
                let log = String::from_utf8_lossy(&output.stderr).into_owned();
                let last_line = log.lines().last().unwrap_or("no output");
                let read = match output.status.success() {
                    true => read_events(events).map_err(|err| format!("{err:#}")),
                    false => Err(format!("{binary} {}: {last_line}", output.status)),
                };
                (read, log)
            }
        };
        match read {
            Ok(events) => report.outcomes = events.into_iter().map(|e| e.outcome).collect(),
            Err(failure) => report.failure = Some(failure),
        }
        (report, log)
    }
}

/// One backend's run as `blocks-compare` saw it: how long the binary took, and the outcomes of
/// the events it wrote, or why it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunReport {
    /// The backend's name: `thread` or `process`.
    pub backend: String,
    /// How long the binary ran, from spawn to exit.
    pub wall: Duration,
    /// The tasks it ran, in the order they finished.
    pub outcomes: Vec<Outcome>,
    /// Why the run failed (the binary exited with an error, or its events were unreadable).
    pub failure: Option<String>,
}

impl RunReport {
    /// The highest number of tasks that ran at once.
    pub fn max_concurrency(&self) -> usize {
        max_concurrency(self.outcomes.iter().map(|o| (o.start_us, o.end_us)))
    }

    /// From the run's start to the end of its last task, in microseconds.
    pub fn span_us(&self) -> u64 {
        self.outcomes.iter().map(|o| o.end_us).max().unwrap_or(0)
    }

    /// The workers that ran a task, each once, in natural order: shorter names first, so that
    /// `Thread-2` comes before `Thread-10` and pid `999` before pid `1000`.
    pub fn workers(&self) -> Vec<&str> {
        let mut workers: Vec<&str> = self.outcomes.iter().map(|o| o.worker.as_str()).collect();
        workers.sort_by_key(|name| (name.len(), *name));
        workers.dedup();
        workers
    }

    /// The set of results each task number gave.
    fn results_by_task(&self) -> BTreeMap<u64, BTreeSet<u64>> {
        let mut by_task: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for o in &self.outcomes {
            by_task.entry(o.task).or_default().insert(o.result);
        }
        by_task
    }
}

/// One verdict of `blocks-compare`: what was checked, and what was found when it did not hold
/// (nothing when it held).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// The problems found, joined by `"; "`; empty when the check passed.
    pub detail: String,
}

impl Check {
    fn new(name: String, problems: Vec<String>) -> Check {
        let detail = problems.join("; ");
        Check { name, detail }
    }

    /// Whether the check held.
    pub fn passed(&self) -> bool {
        self.detail.is_empty()
    }
}

/// Checks each run (it finished, every task `0..tasks` ran exactly once, never more than
/// `workers` at once), then that both runs gave the same results per task.
pub fn checks(options: &Options, runs: &[&RunReport]) -> Vec<Check> {
    let (tasks, workers) = (options.tasks, options.workers);
    let mut checks = Vec::new();
    for run in runs {
        let backend = &run.backend;
        let most = run.max_concurrency();
        let crowded =
            (most > workers).then(|| format!("{most} tasks ran at once on {workers} workers"));
        checks.extend([
            Check::new(
                format!("{backend}: the run finished"),
                run.failure.iter().cloned().collect(),
            ),
            Check::new(
                format!("{backend}: every task 0..{tasks} ran exactly once"),
                task_count_problems(tasks, run),
            ),
            Check::new(
                format!("{backend}: at most {workers} tasks at once"),
                crowded.into_iter().collect(),
            ),
        ]);
    }
    for pair in runs.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let name = format!("{} and {} gave the same results", a.backend, b.backend);
        checks.push(Check::new(name, result_problems(a, b)));
    }
    checks
}

fn task_count_problems(tasks: usize, run: &RunReport) -> Vec<String> {
    let mut counts: BTreeMap<u64, usize> = (0..tasks as u64).map(|task| (task, 0)).collect();
    for outcome in &run.outcomes {
        *counts.entry(outcome.task).or_default() += 1;
    }
    let tasks_where = |keep: &dyn Fn(u64, usize) -> bool, show: fn(u64, usize) -> String| {
        let found = counts.iter().filter(|&(&t, &c)| keep(t, c));
        found
            .map(|(&t, &c)| show(t, c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    [
        (
            "missing ",
            tasks_where(&|_, c| c == 0, |t, _| t.to_string()),
        ),
        (
            "ran more than once: ",
            tasks_where(&|_, c| c > 1, |t, c| format!("{t} (x{c})")),
        ),
        (
            "unexpected ",
            tasks_where(&|t, _| t >= tasks as u64, |t, _| t.to_string()),
        ),
    ]
    .into_iter()
    .filter(|(_, found)| !found.is_empty())
    .map(|(what, found)| format!("{what}{found}"))
    .collect()
}

fn result_problems(a: &RunReport, b: &RunReport) -> Vec<String> {
    let (by_a, by_b) = (a.results_by_task(), b.results_by_task());
    let tasks: BTreeSet<u64> = by_a.keys().chain(by_b.keys()).copied().collect();
    let set = |by: &BTreeMap<u64, BTreeSet<u64>>, task| match by.get(&task) {
        None => "nothing".to_owned(),
        Some(results) => format!("{{{}}}", join(results)),
    };
    tasks
        .into_iter()
        .filter(|task| by_a.get(task) != by_b.get(task))
        .map(|task| {
            let (in_a, in_b) = (set(&by_a, task), set(&by_b, task));
            format!("task {task}: {} {in_a} vs {} {in_b}", a.backend, b.backend)
        })
        .collect()
}

/// The checks as `PASS name` / `FAIL name: detail` lines.
pub fn render_checks(checks: &[Check]) -> String {
    checks
        .iter()
        .map(|check| match check.passed() {
            true => format!("PASS {}\n", check.name),
            false => format!("FAIL {}: {}\n", check.name, check.detail),
        })
        .collect()
}

/// The side-by-side text: a header, one row per task with the worker, start and end (ms) on
/// each backend, then per run the wall time, the span of its tasks, the most tasks at once, its
/// workers and its results.
pub fn render_table(options: &Options, runs: &[&RunReport]) -> String {
    let mut text = format!("{options}\n\n");
    // Per task: the first event of each run (a repeat is flagged by the checks and marked here).
    let tasks: BTreeSet<u64> = (0..options.tasks as u64)
        .chain(runs.iter().flat_map(|run| &run.outcomes).map(|o| o.task))
        .collect();
    let all = runs.iter().flat_map(|run| &run.outcomes);
    let worker_width = all.map(|o| o.worker.len() + 3).fold(6, usize::max);
    let column_width = worker_width + 2 * 10;
    let cells = |cell: &dyn Fn(&RunReport) -> String| runs.iter().map(|run| cell(run)).collect();
    let mut row = |first: &str, cells: Vec<String>| {
        let _ = write!(text, "{first:>5}");
        cells
            .iter()
            .for_each(|cell| text.push_str(&format!(" | {cell:<column_width$}")));
        text.push('\n');
    };
    let times = |worker: &str, start: String, end: String| {
        format!("{worker:<worker_width$}{start:>10}{end:>10}")
    };
    row("task", cells(&|run| run.backend.clone()));
    row(
        "",
        cells(&|_| times("worker", "start ms".into(), "end ms".into())),
    );
    for task in tasks {
        row(
            &task.to_string(),
            cells(&|run| {
                let ran: Vec<&Outcome> = run.outcomes.iter().filter(|o| o.task == task).collect();
                let Some(first) = ran.first() else {
                    return "-".to_owned();
                };
                let repeats = match ran.len() {
                    1 => String::new(),
                    n => format!(" x{n}"),
                };
                let worker = format!("{}{repeats}", first.worker);
                times(&worker, ms(first.start_us), ms(first.end_us))
            }),
        );
    }
    let summaries: [(&str, Summary); 5] = [
        ("", |run| run.backend.clone()),
        ("wall time (ms)", |run| ms(micros(run.wall))),
        ("tasks span (ms)", |run| ms(run.span_us())),
        ("most at once", |run| run.max_concurrency().to_string()),
        ("workers", |run| run.workers().len().to_string()),
    ];
    for (label, value) in summaries {
        text.push_str(&format!("\n{label:<16}"));
        runs.iter()
            .for_each(|run| text.push_str(&format!("{:>12}", value(run))));
    }
    text.push_str("\n\n");
    for run in runs {
        let backend = &run.backend;
        let _ = writeln!(text, "{backend} workers: {}", join(run.workers()));
        let results = python_list(run.outcomes.iter().map(|o| o.result));
        let _ = writeln!(text, "{backend} results: {results}");
        if let Some(failure) = &run.failure {
            let _ = writeln!(text, "{backend} failed: {failure}");
        }
    }
    text.lines()
        .map(|line| line.trim_end().to_owned() + "\n")
        .collect()
}

/// One row of the summary under the table: a figure of a run, as text.
type Summary = fn(&RunReport) -> String;

/// A report of a run of `backend` that took `wall` and did not fail, for tests.
#[cfg(test)]
pub(crate) fn report(backend: &str, wall: Duration, outcomes: Vec<Outcome>) -> RunReport {
    let (backend, failure) = (backend.to_owned(), None);
    RunReport {
        backend,
        wall,
        outcomes,
        failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The outcome of task `task` from `start_ms` to `end_ms`.
    fn ran(task: u64, worker: &str, start_ms: u64, end_ms: u64) -> Outcome {
        crate::blocks::outcome(task, worker, start_ms * 1000, end_ms * 1000)
    }

    /// Six tasks of 100 ms on three workers, finishing in the Python original's order.
    fn python_run(backend: &str) -> RunReport {
        let outcomes = [
            (0, "W-1", 0, 100),
            (2, "W-3", 0, 100),
            (1, "W-2", 0, 100),
            (3, "W-1", 100, 200),
            (5, "W-2", 100, 200),
            (4, "W-3", 100, 200),
        ]
        .into_iter()
        .map(|(task, worker, start, end)| ran(task, worker, start, end))
        .collect();
        report(backend, Duration::from_millis(215), outcomes)
    }

    /// The `FAIL` lines of the rendered checks.
    fn failed(checks: &[Check]) -> Vec<String> {
        let text = render_checks(checks);
        let failed = text.lines().filter(|line| !line.starts_with("PASS "));
        failed.map(str::to_owned).collect()
    }

    #[test]
    fn two_good_runs_pass_every_check() {
        let (thread, process) = (python_run("thread"), python_run("process"));
        let checks = checks(&Options::default(), &[&thread, &process]);
        assert!(checks.iter().all(Check::passed), "{checks:?}");
        assert_eq!(
            render_checks(&checks),
            "PASS thread: the run finished\n\
             PASS thread: every task 0..6 ran exactly once\n\
             PASS thread: at most 3 tasks at once\n\
             PASS process: the run finished\n\
             PASS process: every task 0..6 ran exactly once\n\
             PASS process: at most 3 tasks at once\n\
             PASS thread and process gave the same results\n"
        );
    }

    #[test]
    fn missing_repeated_and_unexpected_tasks_fail() {
        let mut thread = python_run("thread");
        thread.outcomes.retain(|o| o.task != 4);
        thread.outcomes.push(ran(1, "W-1", 200, 300));
        thread.outcomes.push(ran(1, "W-1", 300, 400));
        thread.outcomes.push(ran(9, "W-2", 200, 300));
        let process = python_run("process");
        let checks = checks(&Options::default(), &[&thread, &process]);
        assert_eq!(
            failed(&checks),
            [
                "FAIL thread: every task 0..6 ran exactly once: \
                 missing 4; ran more than once: 1 (x3); unexpected 9",
                "FAIL thread and process gave the same results: \
                 task 4: thread nothing vs process {16}; task 9: thread {81} vs process nothing",
            ]
        );
    }

    #[test]
    fn too_many_at_once_fails() {
        let mut thread = python_run("thread");
        thread.outcomes[3].start_us = 50_000; // blocks(3) starts before anything finished
        let checks = checks(&Options::default(), &[&thread]);
        assert_eq!(
            failed(&checks),
            ["FAIL thread: at most 3 tasks at once: 4 tasks ran at once on 3 workers"]
        );
    }

    #[test]
    fn different_results_and_failed_runs_fail() {
        let thread = python_run("thread");
        let mut process = python_run("process");
        process.outcomes[5].result = 17;
        process.failure = Some("blocks-process exited with code 1".to_owned());
        let checks = checks(&Options::default(), &[&thread, &process]);
        assert_eq!(
            failed(&checks),
            [
                "FAIL process: the run finished: blocks-process exited with code 1",
                "FAIL thread and process gave the same results: task 4: thread {16} vs process {17}",
            ]
        );
    }

    #[test]
    fn zero_tasks_pass_with_empty_runs() {
        let options = Options {
            tasks: 0,
            ..Options::default()
        };
        let empty = report("thread", Duration::ZERO, Vec::new());
        assert!(failed(&checks(&options, &[&empty, &empty])).is_empty());
    }

    #[test]
    fn report_summaries() {
        let run = python_run("thread");
        assert_eq!(run.max_concurrency(), 3);
        assert_eq!(run.span_us(), 200_000);
        assert_eq!(run.workers(), ["W-1", "W-2", "W-3"]);
    }

    #[test]
    fn table_shows_each_task_on_both_backends() {
        let thread = python_run("thread");
        let mut process = python_run("process");
        process.outcomes.retain(|o| o.task != 5);
        process.outcomes.push(ran(0, "W-2", 200, 300));
        let text = render_table(&Options::default(), &[&thread, &process]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "blocks(n): 6 tasks of 100 ms on 3 workers");
        assert_eq!(lines[2], " task | thread                     | process");
        assert_eq!(
            lines[3],
            "      | worker  start ms    end ms | worker  start ms    end ms"
        );
        assert_eq!(
            lines[4],
            "    0 | W-1          0.0     100.0 | W-1 x2       0.0     100.0"
        );
        assert_eq!(lines[9], "    5 | W-2        100.0     200.0 | -");
        assert!(
            text.contains("\nwall time (ms)         215.0       215.0\n"),
            "{text}"
        );
        assert!(text.contains("\nmost at once               3           3\n"));
        assert!(text.contains("\nthread results: [0, 4, 1, 9, 25, 16]\n"));
        assert!(text.contains("\nprocess workers: W-1, W-2, W-3\n"));
    }

    #[test]
    fn a_missing_or_failing_binary_is_a_failed_run() {
        let dir = tempfile::tempdir().unwrap();
        let (options, events) = (Options::default(), dir.path().join("events.jsonl"));
        let (report, _) = THREAD.run(Path::new("/nonexistent/blocks-thread"), &options, &events);
        let failure = report.failure.unwrap();
        assert!(
            failure.starts_with("cannot run /nonexistent/blocks-thread: "),
            "{failure}"
        );
        assert!(failure.contains("BLOCKS_THREAD_BIN"), "{failure}");
        let (report, _) = PROCESS.run(Path::new("/bin/false"), &options, &events);
        assert_eq!(report.backend, "process");
        let failure = report.failure.unwrap();
        assert!(
            failure.starts_with("/bin/false exit status: 1"),
            "{failure}"
        );
    }
}
