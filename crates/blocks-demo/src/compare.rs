//! What `blocks-compare` does with the backends: run them ([`Backend`]), report each run
//! ([`RunReport`]), check them ([`checks`]) and show them side by side ([`render_table`]).

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

/// One backend binary of the demo, by its name in reports: `thread`, `process` or `remote`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend(pub &'static str);

/// `blocks-thread`, overridden by `BLOCKS_THREAD_BIN`.
pub const THREAD: Backend = Backend("thread");

/// `blocks-process`, overridden by `BLOCKS_PROCESS_BIN`.
pub const PROCESS: Backend = Backend("process");

/// `blocks-remote`, overridden by `BLOCKS_REMOTE_BIN`.
pub const REMOTE: Backend = Backend("remote");

impl Backend {
    /// The binary to run: the path in `BLOCKS_NAME_BIN` if set and not empty, otherwise
    /// `blocks-NAME` next to the running executable (where cargo puts every binary of a
    /// package).
    ///
    /// # Errors
    ///
    /// The running executable's path is unknown.
    pub fn locate(self) -> anyhow::Result<PathBuf> {
        if let Some(path) = std::env::var_os(self.env_var()).filter(|path| !path.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        let exe = std::env::current_exe().context("cannot find the running executable")?;
        let name = format!("blocks-{}{}", self.0, std::env::consts::EXE_SUFFIX);
        Ok(exe.with_file_name(name))
    }

    fn env_var(self) -> String {
        format!("BLOCKS_{}_BIN", self.0.to_uppercase())
    }

    /// Runs `binary` with the run flags of `options` and `--events events`, and reads the
    /// events it wrote. A run that could not start, failed, or wrote unreadable events comes
    /// back with its [`failure`](RunReport::failure) set, never as an error.
    pub fn run(self, binary: &Path, options: &Options, events: &Path) -> RunReport {
        let _ = std::fs::remove_file(events);
        let (started, mut command) = (Instant::now(), Command::new(binary));
        command.args(options.run_args()).arg("--events").arg(events);
        let output = command.output();
        let mut report = RunReport::default();
        (report.backend, report.wall) = (self.0.to_owned(), started.elapsed());
        let binary = binary.display();
        let outcomes = match output {
            Err(err) => {
                let build = format!("`cargo build --release --bin blocks-{}`", self.0);
                let hint = format!("build it with {build}, or set {}", self.env_var());
                Err(format!("cannot run {binary}: {err} ({hint})"))
            }
            Ok(output) if output.status.success() => {
                report.log = String::from_utf8_lossy(&output.stderr).into_owned();
                read_events(events).map_err(|err| format!("{err:#}"))
            }
            Ok(output) => {
                report.log = String::from_utf8_lossy(&output.stderr).into_owned();
                let last_line = report.log.lines().last().unwrap_or("no output");
                Err(format!("{binary} {}: {last_line}", output.status))
            }
        };
        match outcomes {
            Ok(outcomes) => report.outcomes = outcomes,
            Err(failure) => report.failure = Some(failure),
        }
        report
    }
}

/// One backend's run as `blocks-compare` saw it: how long the binary took, its log, and the
/// outcomes of the events it wrote, or why it failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// The backend's name: `thread`, `process` or `remote`.
    pub backend: String,
    /// How long the binary ran, from spawn to exit.
    pub wall: Duration,
    /// The tasks it ran, in the order they finished.
    pub outcomes: Vec<Outcome>,
    /// Why the run failed (the binary exited with an error, or its events were unreadable).
    pub failure: Option<String>,
    /// What the binary wrote to stderr.
    pub log: String,
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

    /// The outcomes of task `task`, in the order they finished.
    fn ran(&self, task: u64) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.task == task).collect()
    }

    /// The results task `task` gave, as a set: `{16}`, or `nothing`.
    fn results_of(&self, task: u64) -> String {
        let results: BTreeSet<u64> = self.ran(task).iter().map(|o| o.result).collect();
        match results.is_empty() {
            true => "nothing".to_owned(),
            false => format!("{{{}}}", join(results)),
        }
    }
}

/// Checks each run (it finished, every task `0..tasks` ran exactly once, never more than
/// `workers` at once), then that each run gave the same results per task as the one before:
/// one `PASS name` or `FAIL name: problems` line per check.
pub fn checks(options: &Options, runs: &[&RunReport]) -> Vec<String> {
    let (tasks, workers) = (options.tasks as u64, options.workers);
    let mut lines = Vec::new();
    let mut check = |name: String, problems: Vec<String>| {
        lines.push(match problems.is_empty() {
            true => format!("PASS {name}"),
            false => format!("FAIL {name}: {}", problems.join("; ")),
        });
    };
    for run in runs {
        let backend = &run.backend;
        let failure = run.failure.iter().cloned().collect();
        check(format!("{backend}: the run finished"), failure);
        let mut counts: BTreeMap<u64, usize> = (0..tasks).map(|task| (task, 0)).collect();
        for outcome in &run.outcomes {
            *counts.entry(outcome.task).or_default() += 1;
        }
        let (mut missing, mut repeated, mut unexpected) = (vec![], vec![], vec![]);
        for (&task, &count) in &counts {
            match count {
                0 => missing.push(task.to_string()),
                1 => {}
                n => repeated.push(format!("{task} (x{n})")),
            }
            if task >= tasks {
                unexpected.push(task.to_string());
            }
        }
        let mut problems = Vec::new();
        for (what, found) in [
            ("missing ", missing),
            ("ran more than once: ", repeated),
            ("unexpected ", unexpected),
        ] {
            if !found.is_empty() {
                problems.push(format!("{what}{}", found.join(", ")));
            }
        }
        let name = format!("{backend}: every task 0..{tasks} ran exactly once");
        check(name, problems);
        let most = run.max_concurrency();
        let crowded = format!("{most} tasks ran at once on {workers} workers");
        let crowded = (most > workers).then_some(crowded).into_iter().collect();
        let name = format!("{backend}: at most {workers} tasks at once");
        check(name, crowded);
    }
    for pair in runs.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let (x, y) = (&a.backend, &b.backend);
        let outcomes = a.outcomes.iter().chain(&b.outcomes);
        let both: BTreeSet<u64> = outcomes.map(|o| o.task).collect();
        let mut problems = Vec::new();
        for task in both {
            let (in_a, in_b) = (a.results_of(task), b.results_of(task));
            if in_a != in_b {
                problems.push(format!("task {task}: {x} {in_a} vs {y} {in_b}"));
            }
        }
        check(format!("{x} and {y} gave the same results"), problems);
    }
    lines
}

/// The side-by-side text: a header, one row per task with the worker, start and end (ms) on
/// each backend, then per run the wall time, the span of its tasks, the most tasks at once, its
/// workers and its results.
pub fn render_table(options: &Options, runs: &[&RunReport]) -> String {
    let mut text = format!("{options}\n\n");
    let all = runs.iter().flat_map(|run| &run.outcomes);
    let tasks = (0..options.tasks as u64).chain(all.clone().map(|o| o.task));
    let tasks: BTreeSet<u64> = tasks.collect();
    let width = all.map(|o| o.worker.len() + 3).fold(6, usize::max);
    let times =
        |worker: &str, start: &str, end: &str| format!("{worker:<width$}{start:>10}{end:>10}");
    let mut row = |first: &str, cell: &dyn Fn(&RunReport) -> String| {
        let _ = write!(text, "{first:>5}");
        for run in runs {
            let _ = write!(text, " | {:<1$}", cell(run), width + 20);
        }
        text.push('\n');
    };
    row("task", &|run| run.backend.clone());
    row("", &|_| times("worker", "start ms", "end ms"));
    for task in tasks {
        // The first event of each run; a repeat is flagged by the checks and marked here.
        row(&task.to_string(), &|run| match run.ran(task)[..] {
            [] => "-".to_owned(),
            [first] => times(&first.worker, &ms(first.start_us), &ms(first.end_us)),
            [first, ref again @ ..] => {
                let worker = format!("{} x{}", first.worker, again.len() + 1);
                times(&worker, &ms(first.start_us), &ms(first.end_us))
            }
        });
    }
    let summaries: [(&str, Summary); 5] = [
        ("", |run| run.backend.clone()),
        ("wall time (ms)", |run| ms(micros(run.wall))),
        ("tasks span (ms)", |run| ms(run.span_us())),
        ("most at once", |run| run.max_concurrency().to_string()),
        ("workers", |run| run.workers().len().to_string()),
    ];
    for (label, value) in summaries {
        let _ = write!(text, "\n{label:<16}");
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

/// Six tasks of 100 ms on three workers, finishing in the Python original's order, for tests.
#[cfg(test)]
pub(crate) fn python_run(backend: &str, [w1, w2, w3]: [&str; 3]) -> RunReport {
    let ran = [(0, w1), (2, w3), (1, w2), (3, w1), (5, w2), (4, w3)];
    let outcome = |(task, worker)| {
        let start_us = task / 3 * 100_000;
        crate::blocks::outcome(task, worker, start_us, start_us + 100_000)
    };
    let mut report = RunReport::default();
    (report.backend, report.wall) = (backend.to_owned(), Duration::from_millis(215));
    report.outcomes = ran.map(outcome).to_vec();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: [&str; 3] = ["W-1", "W-2", "W-3"];

    /// The outcome of task `task` from `start_ms` to `end_ms`.
    fn ran(task: u64, worker: &str, start_ms: u64, end_ms: u64) -> Outcome {
        crate::blocks::outcome(task, worker, start_ms * 1000, end_ms * 1000)
    }

    #[test]
    fn each_problem_fails_its_check() {
        type Spoil = fn(&mut RunReport, &mut RunReport);
        let cases: [(Spoil, &[&str]); 4] = [
            (|_, _| {}, &[]),
            (
                |thread, _| {
                    thread.outcomes.retain(|o| o.task != 4);
                    let (again, stray) = (ran(1, "W-1", 200, 300), ran(9, "W-2", 200, 300));
                    thread.outcomes.extend([again.clone(), again, stray]);
                },
                &[
                    "FAIL thread: every task 0..6 ran exactly once: \
                     missing 4; ran more than once: 1 (x3); unexpected 9",
                    "FAIL thread and process gave the same results: \
                     task 4: thread nothing vs process {16}; task 9: thread {81} vs process nothing",
                ],
            ),
            (
                // blocks(3) starts before anything finished.
                |thread, _| thread.outcomes[3].start_us = 50_000,
                &["FAIL thread: at most 3 tasks at once: 4 tasks ran at once on 3 workers"],
            ),
            (
                |_, process| {
                    process.outcomes[5].result = 17;
                    process.failure = Some("blocks-process exited with code 1".to_owned());
                },
                &[
                    "FAIL process: the run finished: blocks-process exited with code 1",
                    "FAIL thread and process gave the same results: \
                     task 4: thread {16} vs process {17}",
                ],
            ),
        ];
        for (spoil, expected) in cases {
            let (mut thread, mut process) = (python_run("thread", W), python_run("process", W));
            spoil(&mut thread, &mut process);
            let lines = checks(&Options::default(), &[&thread, &process]);
            let failed: Vec<&String> = lines.iter().filter(|l| !l.starts_with("PASS ")).collect();
            assert_eq!(failed, expected);
            assert_eq!(lines.len(), 7);
        }
        let none = Options {
            tasks: 0,
            ..Options::default()
        };
        let empty = RunReport::default();
        let lines = checks(&none, &[&empty, &empty]);
        assert!(
            lines.iter().all(|line| line.starts_with("PASS ")),
            "{lines:?}"
        );
    }

    #[test]
    fn table_shows_each_task_on_both_backends() {
        let thread = python_run("thread", W);
        let mut process = python_run("process", W);
        process.outcomes.retain(|o| o.task != 5);
        process.outcomes.push(ran(0, "W-2", 200, 300));
        let text = render_table(&Options::default(), &[&thread, &process]);
        let expected = "\
blocks(n): 6 tasks of 100 ms on 3 workers

 task | thread                     | process
      | worker  start ms    end ms | worker  start ms    end ms
    0 | W-1          0.0     100.0 | W-1 x2       0.0     100.0
    1 | W-2          0.0     100.0 | W-2          0.0     100.0
    2 | W-3          0.0     100.0 | W-3          0.0     100.0
    3 | W-1        100.0     200.0 | W-1        100.0     200.0
    4 | W-3        100.0     200.0 | W-3        100.0     200.0
    5 | W-2        100.0     200.0 | -

                      thread     process
wall time (ms)         215.0       215.0
tasks span (ms)        200.0       300.0
most at once               3           3
workers                    3           3

thread workers: W-1, W-2, W-3
thread results: [0, 4, 1, 9, 25, 16]
process workers: W-1, W-2, W-3
process results: [0, 4, 1, 9, 16, 0]
";
        assert_eq!(text, expected);
    }
}
