//! Debug mode: name the task that blocks the loop, watch a loop that is stuck right now, and
//! tell a blocked loop from a starved pool.
//!
//! An event loop runs one poll at a time: a task that calls `std::thread::sleep`, reads a file
//! or hashes a buffer inside its poll stops every other task on that loop, and the symptom is
//! only latency somewhere else. Python's `asyncio.run(main(), debug=True)` (or
//! `PYTHONASYNCIODEBUG=1`) finds such code by timing every callback and logging those slower
//! than `slow_callback_duration` (100 ms):
//! `Executing <Task ... coro=<main() running at demo.py:12>> took 0.501 seconds`.
//! This module does the same for smol, and more:
//!
//! - **Slow polls.** Wrap a future with [`watch`] or [`watch_named`] (or run the whole program
//!   under [`block_on`]): every poll longer than the threshold is reported when it returns,
//!   with the task's name (or the place where it was wrapped), the thread and the duration.
//! - **A loop stuck now.** A watchdog thread reports a poll that has run past the threshold
//!   *while it is still running* (then again after 2, 4, 8... thresholds, and once more when
//!   it returns): the only report a deadlock or an endless loop will ever give. Since
//!   [`block_on`] watches its whole body, blocking code outside any wrapped task is caught too.
//! - **A starved pool.** Work offloaded to a [`ThreadPool`](crate::ThreadPool) or a
//!   [`ProcessPool`](crate::ProcessPool) that waits in the pool's queue longer than the
//!   threshold is reported with the pool's [`stats`](crate::ThreadPool::stats).
//!
//! # Turning it on
//!
//! For a whole program, replace `smol::block_on` by [`debug::block_on`](block_on) and set
//! `SMOL_OFFLOAD_DEBUG=1` (threshold 100 ms) or `SMOL_OFFLOAD_DEBUG=20ms` when running it. Or turn
//! it on in code with [`DebugMode`], which also takes a callback for the reports:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use smol_offload::debug::{self, DebugMode};
//!
//! let reports = Arc::new(Mutex::new(Vec::new()));
//! let sink = reports.clone();
//! DebugMode::new()
//!     .threshold(Duration::from_millis(50))
//!     .on_report(move |report| sink.lock().unwrap().push(report.clone()))
//!     .enable();
//!
//! debug::block_on(async {
//!     let slow = debug::watch_named("slow", async {
//!         std::thread::sleep(Duration::from_millis(200)); // blocks the loop
//!     });
//!     slow.await;
//! });
//! debug::disable();
//!
//! let reports = reports.lock().unwrap();
//! assert!(reports.iter().any(|report| report.task == "slow"));
//! ```
//!
//! # How it fits smol
//!
//! - `smol::block_on(f)`: use [`debug::block_on(f)`](block_on), which also reads
//!   `SMOL_OFFLOAD_DEBUG`, or `smol::block_on(debug::watch(f))` to watch the body without it.
//! - `smol::Executor` and `LocalExecutor`: spawn `ex.spawn(debug::watch_named("handler",
//!   fut))` for each task to be named in reports, and drive the executor with
//!   `debug::block_on(ex.run(main))`. An executor runs many task polls inside one poll of
//!   `ex.run(..)`: time spent in a watched task that was reported is not blamed on `ex.run`
//!   again, but many quick tasks that together hold the loop past the threshold are reported
//!   as the `block_on` body, which is what happened to the loop.
//! - A multi-threaded `Executor` (`ex.run(..)` on several threads): each thread keeps its own
//!   stack of watched polls, and a report names the thread that ran the slow poll.
//!
//! # Where reports go
//!
//! To the callback given to [`DebugMode::on_report`] when there is one; else, with the
//! `tracing` feature and a subscriber set, as a `WARN` event of target `smol_offload::debug`
//! with the fields `kind`, `task`, `location`, `thread`, `elapsed_ms`, `threshold_ms`, `pool`
//! and `pool_stats`; else as one line on stderr:
//!
//! ```text
//! smol-offload: task "handler" blocked the loop for 501.3ms on thread "main" (threshold 100ms)
//! ```
//!
//! # Cost
//!
//! While debug mode is off (the default), nothing runs: no thread, no timer, and a watched
//! poll costs one relaxed atomic load. While it is on, each watched poll reads the clock twice
//! and takes an uncontended lock twice (`docs/benchmarks.md` measures it), and the watchdog
//! thread wakes about once per threshold.

mod report;
mod switch;
mod watch;
mod watchdog;

pub(crate) use watchdog::watch_queued;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::{BuildError, BuildErrorKind};

pub use report::{Report, ReportKind};
pub use switch::{DEFAULT_THRESHOLD, disable, is_enabled};
use switch::{ENABLED, MIN_THRESHOLD, THRESHOLD_NANOS};
pub use watch::Watched;

/// The environment variable read by [`block_on`] and [`DebugMode::from_env`]: `1` turns debug
/// mode on with the default threshold, a duration in `ms` or `s` (`20ms`, `1.5s`) with that one.
pub const DEBUG_VARIABLE: &str = "SMOL_OFFLOAD_DEBUG";

/// The settings of debug mode, applied to the whole process by [`enable`](DebugMode::enable).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use smol_offload::debug::DebugMode;
///
/// DebugMode::new().threshold(Duration::from_millis(20)).enable();
/// assert!(smol_offload::debug::is_enabled());
/// smol_offload::debug::disable();
/// ```
#[derive(Clone)]
#[must_use = "debug mode is off until enable() is called"]
pub struct DebugMode {
    threshold: Duration,
    reporter: Option<report::Reporter>,
}

impl Default for DebugMode {
    fn default() -> DebugMode {
        DebugMode::new()
    }
}

impl DebugMode {
    /// The default settings: a threshold of [`DEFAULT_THRESHOLD`], reports to `tracing` or
    /// stderr.
    pub fn new() -> DebugMode {
        DebugMode {
            threshold: DEFAULT_THRESHOLD,
            reporter: None,
        }
    }

    /// Reports polls (and queue waits) longer than `threshold`. Thresholds under 1 ms are
    /// raised to 1 ms.
    pub fn threshold(mut self, threshold: Duration) -> DebugMode {
        self.threshold = threshold.max(MIN_THRESHOLD);
        self
    }

    /// Sends every report to `callback` instead of `tracing` or stderr. It is called on the
    /// thread of the slow poll when the poll returns, and on the watchdog thread for a stuck
    /// poll or a queue wait; a panic in it is caught and written to stderr.
    pub fn on_report<C>(mut self, callback: C) -> DebugMode
    where
        C: Fn(&Report) + Send + Sync + 'static,
    {
        self.reporter = Some(std::sync::Arc::new(callback));
        self
    }

    /// The settings [`DEBUG_VARIABLE`] asks for, `None` when it is unset or empty.
    ///
    /// # Errors
    ///
    /// Any other value, `0` included: unset the variable to leave debug mode off.
    pub fn from_env() -> Result<Option<DebugMode>, BuildError> {
        mode_from_value(std::env::var_os(DEBUG_VARIABLE))
    }

    /// Turns debug mode on for the whole process with these settings, replacing earlier ones,
    /// and starts the watchdog thread the first time.
    pub fn enable(self) {
        THRESHOLD_NANOS.store(
            u64::try_from(self.threshold.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        report::set_reporter(self.reporter);
        ENABLED.store(true, Ordering::SeqCst);
        watchdog::start();
    }
}

impl fmt::Debug for DebugMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DebugMode")
            .field("threshold", &self.threshold)
            .field("on_report", &self.reporter.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

fn mode_from_value(value: Option<std::ffi::OsString>) -> Result<Option<DebugMode>, BuildError> {
    let text = value.unwrap_or_default().to_string_lossy().into_owned();
    let threshold = match text.trim() {
        "" => return Ok(None),
        "1" => Some(DEFAULT_THRESHOLD),
        number => number
            .strip_suffix("ms")
            .and_then(parse_positive)
            .map(|ms| ms / 1e3)
            .or_else(|| number.strip_suffix('s').and_then(parse_positive))
            .map(Duration::from_secs_f64),
    };
    match threshold {
        Some(threshold) => Ok(Some(DebugMode::new().threshold(threshold))),
        None => Err(BuildError::new(BuildErrorKind::DebugEnvironment {
            variable: DEBUG_VARIABLE,
            value: text,
        })),
    }
}

fn parse_positive(number: &str) -> Option<f64> {
    let number: f64 = number.trim().parse().ok()?;
    (number.is_finite() && number > 0.0 && number < 1e9).then_some(number)
}

/// Times every poll of `future`, reporting those longer than the threshold while debug mode is
/// on, under the name of the place where it was wrapped (`src/main.rs:12:5`).
///
/// # Examples
///
/// ```
/// use smol_offload::debug;
///
/// let ex = smol::Executor::new();
/// let task = ex.spawn(debug::watch(async { 1 + 1 }));
/// assert_eq!(smol::block_on(ex.run(task)), 2);
/// ```
#[track_caller]
pub fn watch<F: Future>(future: F) -> Watched<F> {
    Watched::new(None, Location::caller(), future)
}

/// Times every poll of `future` like [`watch`], under the name `name`.
///
/// # Examples
///
/// ```
/// use smol_offload::debug;
///
/// let handler = debug::watch_named("handler", async { "done" });
/// assert_eq!(handler.name(), "handler");
/// assert_eq!(smol::block_on(handler), "done");
/// ```
#[track_caller]
pub fn watch_named<F: Future>(name: impl Into<Cow<'static, str>>, future: F) -> Watched<F> {
    Watched::new(Some(name.into()), Location::caller(), future)
}

/// `smol::block_on` in debug mode: turns debug mode on when `SMOL_OFFLOAD_DEBUG` asks for it
/// (and debug mode is not on yet), and watches the whole body, as `block_on at file:line:col`,
/// so that blocking code anywhere in it is reported, wrapped in [`watch`] or not.
///
/// Without the variable and without [`DebugMode::enable`], it is `smol::block_on` and a relaxed
/// atomic load per poll.
///
/// # Examples
///
/// ```
/// let n = smol_offload::debug::block_on(async { 6 * 7 });
/// assert_eq!(n, 42);
/// ```
///
/// # Panics
///
/// When `SMOL_OFFLOAD_DEBUG` holds something other than `1` or a duration: a typo must not
/// silently leave debug mode off.
#[track_caller]
pub fn block_on<F: Future>(future: F) -> F::Output {
    let location = Location::caller();
    enable_from_env_once();
    let name = format!("block_on at {location}");
    async_io::block_on(Watched::new(Some(name.into()), location, future))
}

fn enable_from_env_once() {
    static READ: OnceLock<()> = OnceLock::new();
    READ.get_or_init(|| match DebugMode::from_env() {
        Ok(Some(mode)) if !is_enabled() => mode.enable(),
        Ok(_) => {}
        Err(err) => panic!("{err}"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threshold_of(value: &str) -> Result<Option<Duration>, String> {
        mode_from_value(Some(value.into()))
            .map(|mode| mode.map(|mode| mode.threshold))
            .map_err(|err| err.to_string())
    }

    #[test]
    fn unset_or_empty_leaves_debug_mode_off() {
        assert!(mode_from_value(None).unwrap().is_none());
        assert_eq!(threshold_of(""), Ok(None));
    }

    #[test]
    fn one_and_durations_turn_it_on() {
        assert_eq!(threshold_of("1"), Ok(Some(DEFAULT_THRESHOLD)));
        assert_eq!(threshold_of(" 20ms "), Ok(Some(Duration::from_millis(20))));
        assert_eq!(threshold_of("1.5s"), Ok(Some(Duration::from_millis(1500))));
    }

    #[test]
    fn zero_and_garbage_are_refused_with_the_value() {
        let zero = threshold_of("0").unwrap_err();
        assert_eq!(
            zero,
            "SMOL_OFFLOAD_DEBUG must be 1 or a threshold such as 50ms or 1s, got \"0\": \
             unset it to leave debug mode off"
        );
        for bad in ["0ms", "yes", "-5ms", "true", "10", "nanms", "1e99s"] {
            let err = threshold_of(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
