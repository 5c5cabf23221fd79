//! Log lines in the Python original's two layouts: by thread name, or by process id.
//!
//! The Python original configures Python's `logging` with `%(threadName)10s %(name)18s: %(message)s` for
//! threads and `PID %(process)5s %(name)18s: %(message)s` for processes. [`log`] writes the same
//! lines to stderr, each with a single `write`, so that lines from many threads or processes
//! never interleave.

use std::sync::atomic::{AtomicU8, Ordering};

/// Which layout [`log`] writes, chosen once by a binary's `main` with [`set_log_style`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStyle {
    /// `%(threadName)10s %(name)18s: %(message)s`: the current thread's name, right-aligned.
    Thread,
    /// `PID %(process)5s %(name)18s: %(message)s`: the current process id, right-aligned.
    Process,
}

const THREAD: u8 = 0;
const PROCESS: u8 = 1;

/// The style of every log line of this process. An atomic rather than a lazily set cell, so
/// that a forked worker reads whatever its parent had stored when it was forked.
static STYLE: AtomicU8 = AtomicU8::new(THREAD);

/// Sets the layout of every later [`log`] line in this process. The default is
/// [`LogStyle::Thread`].
///
/// Call it first thing in `main`, and in a program with process pools **before
/// `smol_offload::init()`**: process workers are forked from the fork server that `init()`
/// creates, so they see the statics as they were when `init()` ran, and a style set later
/// would not reach them.
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
    let value = match style {
        LogStyle::Thread => THREAD,
        LogStyle::Process => PROCESS,
    };
    STYLE.store(value, Ordering::Relaxed);
}

/// The layout set by [`set_log_style`], [`LogStyle::Thread`] if none was.
pub fn log_style() -> LogStyle {
    match STYLE.load(Ordering::Relaxed) {
        PROCESS => LogStyle::Process,
        _ => LogStyle::Thread,
    }
}

/// Writes one line `message` from `logger` to stderr, in the layout of [`log_style`].
///
/// The line is formatted first and written with a single `write`, so concurrent lines from
/// threads or processes sharing stderr come out whole. A failed write (a closed stderr) is
/// ignored: logging never stops the demo.
pub fn log(logger: &str, message: &str) {
    let line = format_line(log_style(), logger, message);
    // In this crate's unit tests, through the test harness's capture: shown only on failure.
    #[cfg(test)]
    eprint!("{line}");
    #[cfg(not(test))]
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
}

/// The line [`log`] writes in `style` from the current thread and process, newline included.
pub fn format_line(style: LogStyle, logger: &str, message: &str) -> String {
    match style {
        LogStyle::Thread => format_thread_line(&current_thread_name(), logger, message),
        LogStyle::Process => format_process_line(std::process::id(), logger, message),
    }
}

/// A line in the thread layout, `%(threadName)10s %(name)18s: %(message)s`, newline included.
///
/// # Examples
///
/// ```
/// let line = blocks_demo::logging::format_thread_line("Thread-1", "blocks(0)", "running");
/// assert_eq!(line, "  Thread-1          blocks(0): running\n");
/// ```
pub fn format_thread_line(thread_name: &str, logger: &str, message: &str) -> String {
    format!("{thread_name:>10} {logger:>18}: {message}\n")
}

/// A line in the process layout, `PID %(process)5s %(name)18s: %(message)s`, newline included.
///
/// # Examples
///
/// ```
/// let line = blocks_demo::logging::format_process_line(4242, "run_blocking_tasks", "exiting");
/// assert_eq!(line, "PID  4242 run_blocking_tasks: exiting\n");
/// ```
pub fn format_process_line(pid: u32, logger: &str, message: &str) -> String {
    format!("PID {pid:>5} {logger:>18}: {message}\n")
}

/// The current thread's name as Python would print it: `MainThread` for the main thread
/// (which Rust names `main`), `<unnamed>` for a thread without a name.
pub fn current_thread_name() -> String {
    match std::thread::current().name() {
        Some("main") => "MainThread".to_owned(),
        Some(name) => name.to_owned(),
        None => "<unnamed>".to_owned(),
    }
}

/// Names the worker running the caller in the current [`log_style`]: the thread name for
/// threads, the process id for processes.
pub fn worker_name() -> String {
    match log_style() {
        LogStyle::Thread => current_thread_name(),
        LogStyle::Process => std::process::id().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_layout_right_aligns_both_columns() {
        assert_eq!(
            format_thread_line("MainThread", "run_blocking_tasks", "starting"),
            "MainThread run_blocking_tasks: starting\n"
        );
        assert_eq!(
            format_thread_line("Thread-3", "blocks(12)", "done"),
            "  Thread-3         blocks(12): done\n"
        );
    }

    #[test]
    fn long_names_widen_the_column_instead_of_being_cut() {
        let line = format_thread_line("a-long-thread-name", "a-very-long-logger-name", "x");
        assert_eq!(line, "a-long-thread-name a-very-long-logger-name: x\n");
    }

    #[test]
    fn process_layout_pads_the_pid_to_five() {
        assert_eq!(
            format_process_line(7, "blocks(1)", "running"),
            "PID     7          blocks(1): running\n"
        );
        assert_eq!(
            format_process_line(1234567, "blocks(1)", "done"),
            "PID 1234567          blocks(1): done\n"
        );
    }

    #[test]
    fn threads_are_named_like_python() {
        let named = std::thread::Builder::new()
            .name("Thread-9".into())
            .spawn(current_thread_name)
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(named, "Thread-9");
        let unnamed = std::thread::Builder::new()
            .spawn(current_thread_name)
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(unnamed, "<unnamed>");
    }

    #[test]
    fn process_style_line_carries_this_pid() {
        let line = format_line(LogStyle::Process, "blocks(2)", "done");
        assert_eq!(
            line,
            format!("PID {:>5}          blocks(2): done\n", std::process::id())
        );
    }
}
