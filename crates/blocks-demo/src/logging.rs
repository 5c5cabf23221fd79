//! Log lines in the Python original's two layouts: by thread name, or by process id.
//!
//! The original configures Python's `logging` with `%(threadName)10s %(name)18s: %(message)s`
//! for threads and `PID %(process)5s %(name)18s: %(message)s` for processes. [`log`] writes
//! the same lines to stderr, each with a single `write`, so that lines from many threads or
//! processes never interleave.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Which layout [`log`] writes, chosen once by a binary's `main` with [`set_log_style`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStyle {
    /// `%(threadName)10s %(name)18s: %(message)s`: the current thread's name, right-aligned.
    Thread = 0,
    /// `PID %(process)5s %(name)18s: %(message)s`: the current process id, right-aligned.
    Process = 1,
    /// The process layout with `host:pid` in place of the pid, for workers on other machines.
    Remote = 2,
}

/// The [`LogStyle`] of this process. An atomic rather than a lazily set cell, so that a forked
/// worker reads whatever its parent had stored when it was forked.
static STYLE: AtomicU8 = AtomicU8::new(LogStyle::Thread as u8);

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
    STYLE.store(style as u8, Ordering::Relaxed);
}

/// The layout set by [`set_log_style`].
pub fn log_style() -> LogStyle {
    match STYLE.load(Ordering::Relaxed) {
        1 => LogStyle::Process,
        2 => LogStyle::Remote,
        _ => LogStyle::Thread,
    }
}

/// Whether [`log`] writes to stdout rather than stderr: see [`log_to_stdout`].
static TO_STDOUT: AtomicBool = AtomicBool::new(false);

/// Sends every later [`log`] line of this process, and of the processes it forks, to stdout.
/// `blocks-remote`'s workers do, before `smol_offload::init()`: their stdout is the demo's log,
/// and their stderr, which `blocks-remote` passes on a line at a time, has their own messages.
pub fn log_to_stdout() {
    TO_STDOUT.store(true, Ordering::Relaxed);
}

/// Writes one line `message` from `logger` to stderr (or stdout), in the layout of
/// [`log_style`], with a single `write`. A failed write (a closed stderr) is ignored: logging
/// never stops the demo.
pub fn log(logger: &str, message: &str) {
    let line = format_line(log_style(), &worker_name(), logger, message);
    // In this crate's unit tests, through the test harness's capture: shown only on failure.
    #[cfg(test)]
    eprint!("{line}");
    // Stdout buffers by line: a whole line goes out at once there too.
    #[cfg(not(test))]
    let _ = match TO_STDOUT.load(Ordering::Relaxed) {
        true => std::io::Write::write_all(&mut std::io::stdout().lock(), line.as_bytes()),
        false => std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes()),
    };
}

/// A line in `style` from the worker named `who` (a thread name, a pid, or `host:pid`),
/// newline included.
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
        LogStyle::Process | LogStyle::Remote => format!("PID {who:>5} {logger:>18}: {message}\n"),
    }
}

/// The worker running the caller, as the current [`log_style`] names it: the thread's name as
/// Python prints it (`MainThread` for Rust's `main`, `<unnamed>` without a name), the pid, or
/// `host:pid`.
pub fn worker_name() -> String {
    let pid = std::process::id();
    match (log_style(), std::thread::current().name()) {
        (LogStyle::Process, _) => pid.to_string(),
        (LogStyle::Remote, _) => format!("{}:{pid}", host_name()),
        (LogStyle::Thread, Some("main")) => "MainThread".to_owned(),
        (LogStyle::Thread, Some(name)) => name.to_owned(),
        (LogStyle::Thread, None) => "<unnamed>".to_owned(),
    }
}

/// This machine's name, as the kernel gives it, or `localhost` when unknown.
pub fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    match name.trim() {
        "" => "localhost".to_owned(),
        name => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_right_align_their_columns_and_widen_for_long_names() {
        use LogStyle::{Process, Remote, Thread};
        for (style, line) in [
            (Thread, "MainThread run_blocking_tasks: x"),
            (Thread, "  Thread-3         blocks(12): x"),
            (Thread, "a-long-thread-name a-very-long-logger-name: x"),
            (Process, "PID     7          blocks(1): x"),
            (Process, "PID 1234567          blocks(1): x"),
            (Remote, "PID db-2:42          blocks(1): x"),
        ] {
            let mut columns = line.trim_start_matches("PID ").split_whitespace();
            let (who, logger) = (columns.next().unwrap(), columns.next().unwrap());
            let logger = logger.trim_end_matches(':');
            assert_eq!(format_line(style, who, logger, "x"), format!("{line}\n"));
        }
    }

    #[test]
    fn threads_are_named_like_python() {
        let name_of = |builder: std::thread::Builder| builder.spawn(worker_name).unwrap().join();
        let named = std::thread::Builder::new().name("Thread-9".into());
        assert_eq!(name_of(named).unwrap(), "Thread-9");
        assert_eq!(name_of(std::thread::Builder::new()).unwrap(), "<unnamed>");
    }
}
