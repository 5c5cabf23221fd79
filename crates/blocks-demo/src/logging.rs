//! Log lines in the Python original's two layouts: by thread name, or by process id.
//!
//! The original configures Python's `logging` with `%(threadName)10s %(name)18s: %(message)s`
//! for threads and `PID %(process)5s %(name)18s: %(message)s` for processes. [`log`] writes
//! the same lines to stderr, each with a single `write`, so that lines from many threads or
//! processes never interleave.

use std::sync::atomic::{AtomicBool, Ordering};

/// Which layout [`log`] writes, chosen once by a binary's `main` with [`set_log_style`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStyle {
    /// `%(threadName)10s %(name)18s: %(message)s`: the current thread's name, right-aligned.
    Thread,
    /// `PID %(process)5s %(name)18s: %(message)s`: the current process id, right-aligned.
    Process,
}

/// Whether this process logs in the process layout. An atomic rather than a lazily set cell,
/// so that a forked worker reads whatever its parent had stored when it was forked.
static PROCESS_STYLE: AtomicBool = AtomicBool::new(false);

/// Sets the layout of every later [`log`] line in this process; the default is
/// [`LogStyle::Thread`].
///
/// Call it first thing in `main`, and in a program with process pools **before
/// `smol_offload::init()`**: the workers are forked from the fork server that `init()` starts,
/// so they see the style as it was then.
///
/// # Examples
///
/// ```
/// use blocks_demo::{LogStyle, log_style, set_log_style};
///
/// set_log_style(LogStyle::Process);
/// assert_eq!(log_style(), LogStyle::Process);
/// ```
pub fn set_log_style(style: LogStyle) {
    PROCESS_STYLE.store(style == LogStyle::Process, Ordering::Relaxed);
}

/// The layout set by [`set_log_style`].
pub fn log_style() -> LogStyle {
    match PROCESS_STYLE.load(Ordering::Relaxed) {
        true => LogStyle::Process,
        false => LogStyle::Thread,
    }
}

/// Writes one line `message` from `logger` to stderr, in the layout of [`log_style`], with a
/// single `write`. A failed write (a closed stderr) is ignored: logging never stops the demo.
pub fn log(logger: &str, message: &str) {
    let line = format_line(log_style(), &worker_name(), logger, message);
    // In this crate's unit tests, through the test harness's capture: shown only on failure.
    #[cfg(test)]
    eprint!("{line}");
    #[cfg(not(test))]
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
}

/// A line in `style` from the worker named `who` (a thread name, or a pid), newline included.
///
/// # Examples
///
/// ```
/// use blocks_demo::{LogStyle, logging::format_line};
///
/// let line = format_line(LogStyle::Thread, "Thread-1", "blocks(0)", "running");
/// assert_eq!(line, "  Thread-1          blocks(0): running\n");
/// let line = format_line(LogStyle::Process, "4242", "run_blocking_tasks", "exiting");
/// assert_eq!(line, "PID  4242 run_blocking_tasks: exiting\n");
/// ```
pub fn format_line(style: LogStyle, who: &str, logger: &str, message: &str) -> String {
    match style {
        LogStyle::Thread => format!("{who:>10} {logger:>18}: {message}\n"),
        LogStyle::Process => format!("PID {who:>5} {logger:>18}: {message}\n"),
    }
}

/// The worker running the caller, as the current [`log_style`] names it: the thread's name as
/// Python prints it (`MainThread` for Rust's `main`, `<unnamed>` without a name), or the pid.
pub fn worker_name() -> String {
    match (log_style(), std::thread::current().name()) {
        (LogStyle::Process, _) => std::process::id().to_string(),
        (LogStyle::Thread, Some("main")) => "MainThread".to_owned(),
        (LogStyle::Thread, Some(name)) => name.to_owned(),
        (LogStyle::Thread, None) => "<unnamed>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_layout_right_aligns_both_columns_and_widens_for_long_names() {
        let line = |who, logger, message| format_line(LogStyle::Thread, who, logger, message);
        assert_eq!(
            line("MainThread", "run_blocking_tasks", "starting"),
            "MainThread run_blocking_tasks: starting\n"
        );
        assert_eq!(
            line("Thread-3", "blocks(12)", "done"),
            "  Thread-3         blocks(12): done\n"
        );
        assert_eq!(
            line("a-long-thread-name", "a-very-long-logger-name", "x"),
            "a-long-thread-name a-very-long-logger-name: x\n"
        );
    }

    #[test]
    fn process_layout_pads_the_pid_to_five() {
        let line = |pid| format_line(LogStyle::Process, pid, "blocks(1)", "running");
        assert_eq!(line("7"), "PID     7          blocks(1): running\n");
        assert_eq!(line("1234567"), "PID 1234567          blocks(1): running\n");
    }

    #[test]
    fn threads_are_named_like_python() {
        let name_of = |builder: std::thread::Builder| builder.spawn(worker_name).unwrap().join();
        let named = std::thread::Builder::new().name("Thread-9".into());
        assert_eq!(name_of(named).unwrap(), "Thread-9");
        assert_eq!(name_of(std::thread::Builder::new()).unwrap(), "<unnamed>");
    }
}
