//! The command lines of the demo binaries: [`DemoArgs`] for `blocks-thread` and
//! `blocks-process`, [`RemoteArgs`] for `blocks-remote`, [`CompareArgs`] for `blocks-compare`,
//! sharing the flags of [`Options`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clap::builder::RangedU64ValueParser;

/// The most tasks a run accepts: plenty for a demo, and every `n * n` fits a `u64`.
pub const MAX_TASKS: usize = 1_000_000;

/// The most workers a pool accepts: more would be threads or processes for nothing.
pub const MAX_WORKERS: usize = 1024;

/// The options of one run of blocks(n), shared by every binary.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct Options {
    /// Run blocks(0) .. blocks(N-1)
    #[arg(long, value_name = "N", default_value_t = 6,
          value_parser = RangedU64ValueParser::<usize>::new().range(..=MAX_TASKS as u64))]
    pub tasks: usize,
    /// Workers in the pool
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_WORKERS as u64))]
    pub workers: usize,
    /// How long each blocks(n) sleeps, in ms
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub sleep_ms: u64,
}

impl Default for Options {
    /// The Python original's run, the flags' defaults: 6 tasks of 100 ms on 3 workers.
    fn default() -> Options {
        DemoArgs::parse_from(["blocks"]).run
    }
}

impl std::fmt::Display for Options {
    /// The run in words: `blocks(n): 6 tasks of 100 ms on 3 workers`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (tasks, workers, sleep) = (self.tasks, self.workers, self.sleep_ms);
        let run = format!("blocks(n): {tasks} tasks of {sleep} ms on {workers} workers");
        f.write_str(&run)
    }
}

impl Options {
    /// The flags that make another binary do the same run.
    pub fn run_args(&self) -> Vec<String> {
        let (tasks, workers, sleep) = (self.tasks, self.workers, self.sleep_ms);
        let flags = format!("--tasks {tasks} --workers {workers} --sleep-ms {sleep}");
        flags.split(' ').map(str::to_owned).collect()
    }
}

/// The blocks(n) demo of Python's run_in_executor, on smol-offload.
///
/// Runs blocks(0), blocks(1), ... on a bounded pool; each logs, sleeps and returns n*n.
#[derive(Clone, Debug, Parser)]
pub struct DemoArgs {
    /// The run.
    #[command(flatten)]
    pub run: Options,
    /// Write one JSON object per task and line to FILE
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
}

/// Run blocks(n) on the thread pool and on the process pool, side by side.
///
/// Runs the sibling binaries blocks-thread and blocks-process with the same flags (override
/// their paths with BLOCKS_THREAD_BIN and BLOCKS_PROCESS_BIN), shows which worker ran each task
/// and when, and checks that every task ran exactly once, that no more than --workers tasks ran
/// at once, and that both runs gave the same results. Exits with 1 when a check fails.
#[derive(Clone, Debug, Parser)]
pub struct CompareArgs {
    /// The run to do on each backend.
    #[command(flatten)]
    pub run: Options,
    /// Write a timeline of both runs to FILE [default: target/blocks-timeline.svg]
    #[arg(long, value_name = "FILE", num_args = 0..=1,
          default_missing_value = "target/blocks-timeline.svg")]
    pub svg: Option<PathBuf>,
    /// Print each run's log
    #[arg(long)]
    pub logs: bool,
    /// Also run blocks-remote (BLOCKS_REMOTE_BIN), on a private redis-server, and show it too
    #[arg(long)]
    pub remote: bool,
}

/// The blocks(n) demo of Python's run_in_executor, on remote workers through Redis.
///
/// Starts --workers worker processes of this program, each serving one job at a time from a
/// Redis broker (a private redis-server on a free loopback port unless --redis says where),
/// runs blocks(0), blocks(1), ... on them, logging host:pid where blocks-process logs a pid,
/// then stops the workers and the server. The signing key is SMOL_OFFLOAD_REMOTE_KEY, or a
/// random one.
#[derive(Clone, Debug, Parser)]
pub struct RemoteArgs {
    /// The run.
    #[command(flatten)]
    pub demo: DemoArgs,
    /// The broker's redis:// URL [default: a private redis-server]
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Serve the queue QUEUE of the broker given by --redis as a worker, until stdin closes
    #[arg(long, value_name = "QUEUE", hide = true, requires = "redis")]
    pub serve: Option<String>,
}

/// The `main` of every demo binary: parses the command line of `program` into `T`, runs `body`
/// with it, and gives the exit code: 0 when `body` gave true, 1 when it gave false or failed
/// (the error printed, prefixed with the program's name). For `--help` clap prints the help
/// and the code is 0; for a bad command line it prints the error and the code is 2, as with
/// most Unix tools.
pub fn run_main<T: Parser>(
    program: &'static str,
    body: impl FnOnce(T) -> anyhow::Result<bool>,
) -> ExitCode {
    let command = T::command().name(program).bin_name(program);
    let matches = command.try_get_matches_from(std::env::args_os());
    let args = match matches.and_then(|matches| T::from_arg_matches(&matches)) {
        Ok(args) => args,
        Err(err) if !err.use_stderr() => {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprint!("{program}: {err}");
            return ExitCode::from(2);
        }
    };
    match body(args) {
        Ok(passed) => ExitCode::from(u8::from(!passed)),
        Err(err) => {
            eprintln!("{program}: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
