//! [`blocks`], the Python original's blocking function, with the [`Job`] it takes and the
//! [`Outcome`] it gives back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::logging::{log, worker_name};

/// What one call of [`blocks`] does: square `n` after sleeping `sleep_ms` milliseconds.
///
/// It carries the start of the whole run as wall-clock microseconds since the UNIX epoch, so
/// that a worker in another process, whose `Instant`s mean nothing to the parent, can still
/// tell when it ran relative to the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The task number, and the number to square.
    pub n: u64,
    /// How long the call blocks, in milliseconds.
    pub sleep_ms: u64,
    /// When the run started, in microseconds since the UNIX epoch (see [`unix_micros`]).
    pub run_start_us: u64,
}

/// What one call of [`blocks`] reports: its result, where it ran and when. The fields are in
/// the order of an events file's line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The task number, `n` of the [`Job`].
    pub task: u64,
    /// The worker that ran it, as [`log`] names it: a thread name, a pid, or `host:pid`.
    pub worker: String,
    /// When the call started, in microseconds after the run's start.
    pub start_us: u64,
    /// When the call ended, in microseconds after the run's start.
    pub end_us: u64,
    /// `n * n`.
    pub result: u64,
    /// The process that ran it.
    pub pid: u32,
}

/// The Python original's `blocks(n)`: logs `running` under the logger `blocks(n)`, sleeps,
/// logs `done` and returns `n * n` with the worker's name and the call's start and end.
///
/// It is a plain `fn(Job) -> Outcome` of serde types, so that both pools run it through
/// [`Executor::run`](smol_offload::Executor::run).
///
/// # Examples
///
/// ```
/// use blocks_demo::{Job, blocks, unix_micros};
///
/// let outcome = blocks(Job { n: 7, sleep_ms: 1, run_start_us: unix_micros() });
/// assert_eq!((outcome.task, outcome.result), (7, 49));
/// assert!(outcome.start_us < outcome.end_us);
/// ```
pub fn blocks(job: Job) -> Outcome {
    let logger = format!("blocks({})", job.n);
    let start_us = unix_micros().saturating_sub(job.run_start_us);
    log(&logger, "running");
    std::thread::sleep(Duration::from_millis(job.sleep_ms));
    log(&logger, "done");
    Outcome {
        task: job.n,
        worker: worker_name(),
        start_us,
        end_us: unix_micros().saturating_sub(job.run_start_us),
        result: job.n * job.n,
        pid: std::process::id(),
    }
}

/// Now, as microseconds since the UNIX epoch: a clock that every process on the machine shares.
/// A clock set before 1970 reads as 0.
pub fn unix_micros() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH);
    micros(since_epoch.unwrap_or_default())
}

/// A duration in whole microseconds, saturating.
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// `items` as text, joined by `", "`.
pub fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|item| item.to_string()).collect();
    items.join(", ")
}

/// Milliseconds with one decimal, from microseconds: `ms(100_412)` is `"100.4"`.
pub fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// The outcome of task `task` (giving `task * task`) on `worker`, in process 42, for tests.
#[cfg(test)]
pub(crate) fn outcome(task: u64, worker: &str, start_us: u64, end_us: u64) -> Outcome {
    let (worker, result, pid) = (worker.to_owned(), task * task, 42);
    Outcome {
        task,
        worker,
        start_us,
        end_us,
        result,
        pid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_squares_and_times_itself() {
        let outcome = blocks(Job {
            n: 12,
            sleep_ms: 20,
            run_start_us: unix_micros(),
        });
        assert_eq!((outcome.task, outcome.result), (12, 144));
        assert_eq!(outcome.pid, std::process::id());
        assert!(outcome.end_us >= outcome.start_us + 20_000, "{outcome:?}");
        // A run that starts in the future (a clock stepped back) gives zero offsets.
        let outcome = blocks(Job {
            n: 1,
            sleep_ms: 0,
            run_start_us: u64::MAX,
        });
        assert_eq!((outcome.start_us, outcome.end_us), (0, 0));
    }

    #[test]
    fn jobs_round_trip_through_json_and_times_print_in_ms() {
        let job = Job {
            n: 4,
            sleep_ms: 100,
            run_start_us: 1_700_000_000_000_000,
        };
        let text = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), job);
        assert_eq!((ms(100_412), ms(0)), ("100.4".to_owned(), "0.0".to_owned()));
        assert_eq!(micros(Duration::MAX), u64::MAX);
    }
}
