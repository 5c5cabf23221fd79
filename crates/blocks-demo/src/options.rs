//! The command lines of the demo binaries: [`Options`] for `blocks-thread` and
//! `blocks-process`, [`CompareOptions`] for `blocks-compare`.
//!
//! Flags are `--name VALUE` or `--name=VALUE`. A bad command line is a [`UsageError`], which
//! the binaries print before exiting with [`USAGE_EXIT_CODE`].

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The exit code of a binary given a bad command line, as with most Unix tools.
pub const USAGE_EXIT_CODE: u8 = 2;

/// The most tasks a run accepts: plenty for a demo, and every `n * n` fits a `u64`.
pub const MAX_TASKS: usize = 1_000_000;

/// The most workers a pool accepts: more would be threads or processes for nothing.
pub const MAX_WORKERS: usize = 1024;

/// What a command line asks for: a run with these options, or the help text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// Run with these options.
    Run(T),
    /// `--help` or `-h`: print the usage and exit successfully.
    Help,
}

/// A command line that cannot be run, with a message saying what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError {
    message: String,
}

impl UsageError {
    fn new(message: impl Into<String>) -> UsageError {
        UsageError {
            message: message.into(),
        }
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UsageError {}

/// The options of one run of blocks(n): `--tasks`, `--workers`, `--sleep-ms`, `--events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// How many calls `blocks(0)`, `blocks(1)`, ... to run (`--tasks`, default 6).
    pub tasks: usize,
    /// How many workers the pool has (`--workers`, default 3).
    pub workers: usize,
    /// How long each call blocks, in milliseconds (`--sleep-ms`, default 100).
    pub sleep_ms: u64,
    /// Where to write one JSON line per task (`--events`), if anywhere.
    pub events: Option<PathBuf>,
}

impl Default for Options {
    /// The Python original's run: 6 tasks of 100 ms on 3 workers.
    fn default() -> Options {
        Options {
            tasks: 6,
            workers: 3,
            sleep_ms: 100,
            events: None,
        }
    }
}

impl Options {
    /// Parses the arguments after the program name.
    ///
    /// # Examples
    ///
    /// ```
    /// use blocks_demo::{Options, Parsed};
    ///
    /// let parsed = Options::parse(["--tasks", "10", "--workers=2"])?;
    /// let Parsed::Run(options) = parsed else { panic!("not a run") };
    /// assert_eq!((options.tasks, options.workers, options.sleep_ms), (10, 2, 100));
    ///
    /// assert!(Options::parse(["--tasks", "many"]).is_err());
    /// # Ok::<(), blocks_demo::UsageError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// An unknown flag, a missing or malformed value, a positional argument, zero workers, or a
    /// count above [`MAX_TASKS`] or [`MAX_WORKERS`].
    pub fn parse<I, S>(args: I) -> Result<Parsed<Options>, UsageError>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut options = Options::default();
        let mut cursor = Cursor::new(args);
        while let Some(flag) = cursor.next_flag()? {
            match flag.as_str() {
                "--help" | "-h" => {
                    cursor.switch(&flag)?;
                    return Ok(Parsed::Help);
                }
                "--events" => options.events = Some(cursor.value(&flag)?.into()),
                _ => {
                    if !options.parse_run_flag(&flag, &mut cursor)? {
                        return Err(unknown_flag(&flag));
                    }
                }
            }
        }
        options.validate()?;
        Ok(Parsed::Run(options))
    }

    /// The usage text of a binary named `program` that takes these options.
    pub fn usage(program: &str) -> String {
        format!(
            "{program}: the blocks(n) demo of Python's run_in_executor, on smol-offload\n\
             \n\
             Runs blocks(0), blocks(1), ... on a bounded pool; each logs, sleeps and returns n*n.\n\
             \n\
             Usage: {program} [OPTIONS]\n\
             \n\
             Options:\n\
             {RUN_FLAGS}\
             \x20 --events FILE    write one JSON object per task and line to FILE\n\
             \x20 -h, --help       print this help\n"
        )
    }

    /// The flags that make another binary do the same run: `--tasks`, `--workers`,
    /// `--sleep-ms` (not `--events`).
    pub fn run_args(&self) -> Vec<String> {
        vec![
            "--tasks".to_owned(),
            self.tasks.to_string(),
            "--workers".to_owned(),
            self.workers.to_string(),
            "--sleep-ms".to_owned(),
            self.sleep_ms.to_string(),
        ]
    }

    /// Handles `--tasks`, `--workers` and `--sleep-ms`; false for any other flag.
    fn parse_run_flag(&mut self, flag: &str, cursor: &mut Cursor) -> Result<bool, UsageError> {
        match flag {
            "--tasks" => self.tasks = cursor.number(flag)?,
            "--workers" => self.workers = cursor.number(flag)?,
            "--sleep-ms" => self.sleep_ms = cursor.number(flag)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn validate(&self) -> Result<(), UsageError> {
        if self.workers == 0 {
            return Err(UsageError::new("--workers must be at least 1"));
        }
        if self.workers > MAX_WORKERS {
            return Err(UsageError::new(format!(
                "--workers must be at most {MAX_WORKERS}, got {}",
                self.workers
            )));
        }
        if self.tasks > MAX_TASKS {
            return Err(UsageError::new(format!(
                "--tasks must be at most {MAX_TASKS}, got {}",
                self.tasks
            )));
        }
        Ok(())
    }
}

/// The help lines of the flags that [`Options`] and [`CompareOptions`] share.
const RUN_FLAGS: &str = "\
\x20 --tasks N        run blocks(0) .. blocks(N-1) [default: 6]\n\
\x20 --workers N      workers in the pool [default: 3]\n\
\x20 --sleep-ms N     how long each blocks(n) sleeps, in ms [default: 100]\n";

/// The options of `blocks-compare`: the run to do on both pools, and what to show.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompareOptions {
    /// The run to do on each backend (its `events` is unused: each run gets a file of its own).
    pub run: Options,
    /// Where to write the SVG timeline (`--svg`), if anywhere.
    pub svg: Option<PathBuf>,
    /// Whether to print each run's log (`--logs`).
    pub logs: bool,
}

impl CompareOptions {
    /// Parses the arguments after the program name.
    ///
    /// # Examples
    ///
    /// ```
    /// use blocks_demo::{CompareOptions, Parsed};
    ///
    /// let Parsed::Run(options) = CompareOptions::parse(["--svg", "t.svg", "--sleep-ms", "20"])?
    /// else { panic!("not a run") };
    /// assert_eq!(options.run.sleep_ms, 20);
    /// assert_eq!(options.svg.as_deref(), Some(std::path::Path::new("t.svg")));
    /// # Ok::<(), blocks_demo::UsageError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`Options::parse`]; `--events` is not accepted here.
    pub fn parse<I, S>(args: I) -> Result<Parsed<CompareOptions>, UsageError>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut options = CompareOptions::default();
        let mut cursor = Cursor::new(args);
        while let Some(flag) = cursor.next_flag()? {
            match flag.as_str() {
                "--help" | "-h" => {
                    cursor.switch(&flag)?;
                    return Ok(Parsed::Help);
                }
                "--svg" => options.svg = Some(cursor.value(&flag)?.into()),
                "--logs" => {
                    cursor.switch(&flag)?;
                    options.logs = true;
                }
                _ => {
                    if !options.run.parse_run_flag(&flag, &mut cursor)? {
                        return Err(unknown_flag(&flag));
                    }
                }
            }
        }
        options.run.validate()?;
        Ok(Parsed::Run(options))
    }

    /// The usage text of `blocks-compare`.
    pub fn usage(program: &str) -> String {
        format!(
            "{program}: run blocks(n) on the thread pool and on the process pool, side by side\n\
             \n\
             Runs the sibling binaries blocks-thread and blocks-process with the same flags\n\
             (override their paths with BLOCKS_THREAD_BIN and BLOCKS_PROCESS_BIN), shows which\n\
             worker ran each task and when, and checks that every task ran exactly once, that no\n\
             more than --workers tasks ran at once, and that both runs gave the same results.\n\
             Exits with 1 when a check fails.\n\
             \n\
             Usage: {program} [OPTIONS]\n\
             \n\
             Options:\n\
             {RUN_FLAGS}\
             \x20 --svg FILE       write a timeline of both runs to FILE\n\
             \x20 --logs           print each run's log\n\
             \x20 -h, --help       print this help\n"
        )
    }
}

fn unknown_flag(flag: &str) -> UsageError {
    UsageError::new(format!("unknown flag '{flag}' (see --help)"))
}

/// Walks a command line flag by flag, splitting `--name=value`.
struct Cursor {
    args: VecDeque<OsString>,
    /// The flag and value of the last `--name=value`, until the flag's handler takes the value.
    inline: Option<(String, OsString)>,
}

impl Cursor {
    fn new<I, S>(args: I) -> Cursor
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Cursor {
            args: args.into_iter().map(Into::into).collect(),
            inline: None,
        }
    }

    /// The next flag, `None` at the end.
    fn next_flag(&mut self) -> Result<Option<String>, UsageError> {
        if let Some((flag, _)) = self.inline.take() {
            return Err(UsageError::new(format!("{flag} takes no value")));
        }
        let Some(arg) = self.args.pop_front() else {
            return Ok(None);
        };
        let Some(arg) = arg.to_str() else {
            return Err(UsageError::new(format!(
                "unexpected argument {arg:?} (see --help)"
            )));
        };
        if !arg.starts_with('-') || arg == "-" {
            return Err(UsageError::new(format!(
                "unexpected argument '{arg}' (see --help)"
            )));
        }
        match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                self.inline = Some((flag.to_owned(), value.into()));
                Ok(Some(flag.to_owned()))
            }
            _ => Ok(Some(arg.to_owned())),
        }
    }

    /// Checks that `flag`, a switch, was not given a value with `=`.
    fn switch(&mut self, flag: &str) -> Result<(), UsageError> {
        match self.inline.take() {
            Some(_) => Err(UsageError::new(format!("{flag} takes no value"))),
            None => Ok(()),
        }
    }

    /// The value of `flag`: the part after `=`, or the next argument.
    fn value(&mut self, flag: &str) -> Result<OsString, UsageError> {
        if let Some((_, value)) = self.inline.take() {
            return Ok(value);
        }
        self.args
            .pop_front()
            .ok_or_else(|| UsageError::new(format!("{flag} needs a value")))
    }

    /// The value of `flag` as a whole number.
    fn number<T: FromStr>(&mut self, flag: &str) -> Result<T, UsageError> {
        let value = self.value(flag)?;
        value
            .to_str()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| {
                UsageError::new(format!(
                    "{flag} expects a whole number, got {:?}",
                    value.to_string_lossy()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Options {
        match Options::parse(args.iter().copied()) {
            Ok(Parsed::Run(options)) => options,
            other => panic!("{args:?} gave {other:?}"),
        }
    }

    fn error(args: &[&str]) -> String {
        match Options::parse(args.iter().copied()) {
            Err(err) => err.to_string(),
            other => panic!("{args:?} gave {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_seed() {
        assert_eq!(
            run(&[]),
            Options {
                tasks: 6,
                workers: 3,
                sleep_ms: 100,
                events: None
            }
        );
    }

    #[test]
    fn every_flag_in_both_spellings() {
        let options = run(&[
            "--tasks",
            "10",
            "--workers=2",
            "--sleep-ms",
            "20",
            "--events=out.jsonl",
        ]);
        assert_eq!(options.tasks, 10);
        assert_eq!(options.workers, 2);
        assert_eq!(options.sleep_ms, 20);
        assert_eq!(options.events, Some(PathBuf::from("out.jsonl")));
        assert_eq!(run(&["--events", "a=b"]).events, Some(PathBuf::from("a=b")));
    }

    #[test]
    fn the_last_of_a_repeated_flag_wins() {
        assert_eq!(run(&["--tasks", "1", "--tasks", "4"]).tasks, 4);
    }

    #[test]
    fn help_wins_over_everything_before_it() {
        assert_eq!(Options::parse(["--tasks", "3", "--help"]), Ok(Parsed::Help));
        assert_eq!(Options::parse(["-h"]), Ok(Parsed::Help));
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        assert_eq!(error(&["--bogus"]), "unknown flag '--bogus' (see --help)");
        assert_eq!(error(&["--tasks"]), "--tasks needs a value");
        assert_eq!(
            error(&["--tasks", "six"]),
            "--tasks expects a whole number, got \"six\""
        );
        assert_eq!(
            error(&["--sleep-ms", "-5"]),
            "--sleep-ms expects a whole number, got \"-5\""
        );
        assert_eq!(error(&["--workers", "0"]), "--workers must be at least 1");
        assert_eq!(
            error(&["--workers", "5000"]),
            "--workers must be at most 1024, got 5000"
        );
        assert_eq!(
            error(&["--tasks", "2000000"]),
            "--tasks must be at most 1000000, got 2000000"
        );
        assert_eq!(error(&["six"]), "unexpected argument 'six' (see --help)");
        assert_eq!(error(&["--help=yes"]), "--help takes no value");
        assert_eq!(
            CompareOptions::parse(["--logs=1"]).unwrap_err().to_string(),
            "--logs takes no value"
        );
        assert_eq!(
            error(&["--svg", "x.svg"]),
            "unknown flag '--svg' (see --help)"
        );
    }

    #[test]
    fn run_args_reproduce_the_run() {
        let options = run(&["--tasks", "9", "--workers", "4", "--sleep-ms", "7"]);
        let again = run(&options
            .run_args()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>());
        assert_eq!(again, options);
    }

    #[test]
    fn compare_takes_the_run_flags_and_its_own() {
        let Ok(Parsed::Run(options)) =
            CompareOptions::parse(["--workers", "2", "--logs", "--svg=t.svg"])
        else {
            panic!("not a run");
        };
        assert_eq!(options.run.workers, 2);
        assert!(options.logs);
        assert_eq!(options.svg, Some(PathBuf::from("t.svg")));
        assert_eq!(
            CompareOptions::parse(["--events", "x"])
                .unwrap_err()
                .to_string(),
            "unknown flag '--events' (see --help)"
        );
        assert!(CompareOptions::parse(["--workers", "0"]).is_err());
    }

    #[test]
    fn usage_lists_every_flag() {
        let usage = Options::usage("blocks-thread");
        for flag in ["--tasks", "--workers", "--sleep-ms", "--events", "--help"] {
            assert!(usage.contains(flag), "{flag} missing from {usage}");
        }
        let usage = CompareOptions::usage("blocks-compare");
        for flag in [
            "--tasks",
            "--workers",
            "--sleep-ms",
            "--svg",
            "--logs",
            "--help",
        ] {
            assert!(usage.contains(flag), "{flag} missing from {usage}");
        }
    }
}
