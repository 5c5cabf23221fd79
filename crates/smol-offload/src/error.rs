//! The errors of the crate: [`Error`] for a task, [`BuildError`] for a pool.

use std::fmt;
use std::io;

/// Why a [`Task`](crate::Task) did not produce its value.
///
/// The error is opaque: ask it what happened with the predicates ([`is_panic`](Error::is_panic),
/// [`is_worker_died`](Error::is_worker_died), ...) and the accessors
/// ([`panic_message`](Error::panic_message), [`worker_pid`](Error::worker_pid)). Its `Display`
/// says what failed in one lowercase sentence.
///
/// # Examples
///
/// A panic in the offloaded closure comes back as an error carrying the panic's message:
///
/// ```
/// # smol::block_on(async {
/// let pool = smol_offload::ThreadPool::new(1)?;
/// let err = pool.spawn(|| -> u32 { panic!("no answer") }).await.unwrap_err();
/// assert!(err.is_panic());
/// assert_eq!(err.panic_message(), Some("no answer"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct Error {
    kind: ErrorKind,
    /// Where the task panicked (`file:line:column`), when it panicked and the pool saw where.
    panic_location: Option<Box<str>>,
}

#[derive(Debug)]
#[doc(hidden)]
pub enum ErrorKind {
    Panic(String),
    Cancelled,
    Timeout(std::time::Duration),
    WorkerDied {
        pid: u32,
        exit: WorkerExit,
    },
    /// The pool gave up on the task: `times` workers were lost while it was assigned to them
    /// and their claim word said it had not started (so it was requeued, up to a bound); the
    /// last was worker `pid`, which ended so.
    WorkerLost {
        times: u32,
        pid: u32,
        exit: WorkerExit,
    },
    Shutdown,
    /// The pool gave up (it could not keep any worker process alive), for this reason.
    Broken(String),
    /// The pool's initializer panicked in the new worker that would have run the task.
    InitializerFailed(String),
    Codec {
        stage: &'static str,
        detail: String,
        source: Option<postcard::Error>,
    },
    Config(String),
    /// A loop thread refused work because it is stopping; the message names it.
    Stopped(String),
    /// A blocking call that would have waited for itself; the message says which.
    Deadlock(String),
    /// A remote pool's broker or worker fleet failed the task; the message says what to do.
    Remote(String),
    /// The pool cannot name the task's function to its workers (its code lies in a shared
    /// library they do not have): the task never left; the message names the library.
    ForeignCode(String),
}

/// How a worker process ended, as the pool learned it from `waitpid`, or why the pool killed it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[doc(hidden)]
pub enum WorkerExit {
    /// The process called `exit` with this code.
    Code(i32),
    /// The process was ended by this signal.
    Signal(i32),
    /// The pool lost its link to the worker before it learned the status.
    Unknown,
    /// The worker closed its end of the socket but went on running: the pool killed it.
    ClosedLink,
    /// The worker sent bytes that are no reply to the task it ran (said here): the pool killed
    /// it.
    MalformedReply(String),
    /// The worker sent bytes that are no reply to an earlier task (said here) before it started
    /// this one: read too late to keep it from starting, they cost its result when the pool
    /// killed the worker.
    MalformedEarlierReply(String),
    /// The worker stayed stopped (`SIGSTOP`) after its pool was dropped: the pool killed it.
    StoppedAfterClose,
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerExit::Code(code) => write!(f, "exited with code {code}"),
            WorkerExit::Signal(signal) => match nix::sys::signal::Signal::try_from(*signal) {
                Ok(name) => write!(f, "was killed by signal {signal} ({})", name.as_str()),
                Err(_) => write!(f, "was killed by signal {signal}"),
            },
            WorkerExit::Unknown => write!(f, "stopped answering"),
            WorkerExit::ClosedLink => write!(f, "closed its link to the pool and was killed"),
            WorkerExit::MalformedReply(detail) => {
                write!(f, "sent a malformed reply ({detail}) and was killed")
            }
            WorkerExit::MalformedEarlierReply(detail) => {
                write!(
                    f,
                    "was killed for an earlier task's malformed reply ({detail})"
                )
            }
            WorkerExit::StoppedAfterClose => write!(
                f,
                "stayed stopped after its pool was dropped and was killed"
            ),
        }
    }
}

impl Error {
    /// An error of this kind (for the remote pool).
    #[doc(hidden)]
    pub fn new(kind: ErrorKind) -> Error {
        Error {
            kind,
            panic_location: None,
        }
    }

    /// The payload of a panic caught without the pool's hook watching (a future on a loop
    /// thread, a stream's iterator): its message, and no location.
    pub(crate) fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Error {
        Error::from_caught(crate::panics::caught(payload, None))
    }

    /// A caught panic, with its message and, if the pool's panic hook saw it, its location.
    #[doc(hidden)]
    pub fn from_caught(caught: crate::panics::Caught) -> Error {
        Error {
            kind: ErrorKind::Panic(caught.message),
            panic_location: caught.location.map(String::into_boxed_str),
        }
    }

    /// A value that could not cross to or from a worker process, at `stage`.
    #[doc(hidden)]
    pub fn codec(stage: &'static str, detail: String, source: Option<postcard::Error>) -> Error {
        Error::new(ErrorKind::Codec {
            stage,
            detail,
            source,
        })
    }

    /// True when the task panicked. The panic was caught: the caller and the pool go on.
    pub fn is_panic(&self) -> bool {
        matches!(self.kind, ErrorKind::Panic(_))
    }

    /// The panic's message, when the task panicked with a `&str` or `String` payload (as
    /// `panic!` does). Other payloads give `Some("Box<dyn Any>")`, like the standard library.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.kind {
            ErrorKind::Panic(message) => Some(message),
            _ => None,
        }
    }

    /// Where the task panicked, as `file:line:column`, like the standard library's hook prints
    /// it. The pool learns it from a panic hook it installs when the first pool is built (one
    /// that calls the hook installed before it); it is `None` for other errors, and when the
    /// application replaced that hook afterwards without calling it.
    ///
    /// # Examples
    ///
    /// ```
    /// # smol::block_on(async {
    /// let pool = smol_offload::ThreadPool::new(1)?;
    /// let err = pool.spawn(|| -> u32 { panic!("no answer") }).await.unwrap_err();
    /// let location = err.panic_location().unwrap();
    /// assert!(location.contains(".rs:"), "{location}");
    /// assert!(err.to_string().contains(location));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn panic_location(&self) -> Option<&str> {
        self.panic_location.as_deref()
    }

    /// True when the task was cancelled (see [`Task::cancel`](crate::Task::cancel)): before its
    /// work started, or, for a process task, while it ran (its worker was killed).
    pub fn is_cancelled(&self) -> bool {
        matches!(self.kind, ErrorKind::Cancelled)
    }

    /// True when the task did not finish within the time it was given (see
    /// [`Task::timeout`](crate::Task::timeout), and a process pool's
    /// [`task_timeout`](crate::ProcessPoolBuilder::task_timeout)). A process task that timed
    /// out while it ran had its worker killed.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ErrorKind::Timeout(_))
    }

    /// True when the worker process running the task died (a signal, `abort`, `exit`), or the
    /// pool had to kill it because it broke its link (it closed its socket, or sent a malformed
    /// reply). Only that task fails; the pool replaces the worker. Also true when the pool gave
    /// up on a task whose workers were lost, one after another, while it was assigned (a task
    /// that kills its workers runs only a few times); the pid is then the last worker's.
    pub fn is_worker_died(&self) -> bool {
        self.worker().is_some()
    }

    /// The pid of the worker process that died running the task.
    pub fn worker_pid(&self) -> Option<u32> {
        self.worker().map(|(pid, _)| pid)
    }

    /// The signal that ended the worker running the task, if a signal did.
    pub fn worker_signal(&self) -> Option<i32> {
        match self.worker()? {
            (_, WorkerExit::Signal(signal)) => Some(*signal),
            _ => None,
        }
    }

    /// The exit code of the worker running the task, if it called `exit`.
    pub fn worker_exit_code(&self) -> Option<i32> {
        match self.worker()? {
            (_, WorkerExit::Code(code)) => Some(*code),
            _ => None,
        }
    }

    /// The pid and the end of the worker that died running the task (the last one, if the pool
    /// gave up on it).
    fn worker(&self) -> Option<(u32, &WorkerExit)> {
        match &self.kind {
            ErrorKind::WorkerDied { pid, exit } | ErrorKind::WorkerLost { pid, exit, .. } => {
                Some((*pid, exit))
            }
            _ => None,
        }
    }

    /// True when the pool shut down before the task could finish: its last handle was dropped
    /// with the task still queued, or its worker processes could not be kept alive (the
    /// message then says why). Also true for work submitted to a
    /// [`LoopThread`](crate::LoopThread) that is stopping.
    pub fn is_shutdown(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Shutdown | ErrorKind::Broken(_) | ErrorKind::Stopped(_)
        )
    }

    /// True when the task did not run because the pool's
    /// [`initializer`](crate::ProcessPoolBuilder::initializer) panicked in the new worker that
    /// would have run it, and no other worker could. The message names the initializer's
    /// panic.
    pub fn is_initializer_failure(&self) -> bool {
        matches!(self.kind, ErrorKind::InitializerFailed(_))
    }

    /// True when a blocking call was refused because it would have waited for itself forever,
    /// such as [`LoopThread::block_on`](crate::LoopThread::block_on) called on that loop's own
    /// thread. The message says which call and what to do instead.
    pub fn is_deadlock(&self) -> bool {
        matches!(self.kind, ErrorKind::Deadlock(_))
    }

    /// True when the argument or the result of a process task could not be serialized or
    /// deserialized. The task's function did not run when the argument failed.
    pub fn is_codec(&self) -> bool {
        matches!(self.kind, ErrorKind::Codec { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Panic(message) => match &self.panic_location {
                Some(location) => write!(f, "the task panicked at {location}: {message}"),
                None => write!(f, "the task panicked: {message}"),
            },
            ErrorKind::Cancelled => write!(f, "the task was cancelled"),
            ErrorKind::Timeout(limit) => write!(f, "the task did not finish within {limit:?}"),
            ErrorKind::WorkerDied { pid, exit } => {
                write!(f, "worker process {pid} {exit} while running the task")
            }
            ErrorKind::WorkerLost { times, pid, exit } => write!(
                f,
                "the pool gave up on the task: its worker was lost {times} times while it was \
                 assigned, each time before the task was seen to start (the task may be \
                 killing its workers); the last was worker process {pid}, which {exit}"
            ),
            ErrorKind::Shutdown => write!(f, "the pool shut down before the task finished"),
            ErrorKind::Broken(reason) => write!(f, "the pool shut down: {reason}"),
            ErrorKind::InitializerFailed(reason) => write!(
                f,
                "the task did not run: the pool has no worker, {reason}; fix the initializer \
                 or what it needs"
            ),
            ErrorKind::Codec { stage, detail, .. } => write!(f, "could not {stage}: {detail}"),
            ErrorKind::Config(message) => f.write_str(message),
            ErrorKind::Stopped(message) | ErrorKind::Deadlock(message) => f.write_str(message),
            ErrorKind::Remote(message) | ErrorKind::ForeignCode(message) => f.write_str(message),
        }
    }
}

/// Prints the message and the chain of sources, as `anyhow` does, so that an error returned
/// from `main` reads as a sentence; `{:#?}` prints the structure instead.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            return f.debug_tuple("Error").field(&self.kind).finish();
        }
        write_report(f, self)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Codec {
                source: Some(err), ..
            } => Some(err),
            _ => None,
        }
    }
}

/// Why a pool could not be built.
///
/// # Examples
///
/// ```
/// let err = smol_offload::ThreadPool::new(0).unwrap_err();
/// assert!(err.to_string().starts_with("a pool needs at least one worker, got 0: "));
/// ```
///
/// Its `Debug` form is its message, followed by the chain of sources when there is one, so
/// that `fn main() -> Result<(), Box<dyn std::error::Error>>` prints
/// `Error: a pool needs at least one worker, got 0: ...` rather than a struct.
pub struct BuildError {
    kind: BuildErrorKind,
}

#[derive(Debug)]
#[doc(hidden)]
pub enum BuildErrorKind {
    ZeroWorkers,
    Environment {
        variable: &'static str,
        value: String,
    },
    Rayon(rayon::ThreadPoolBuildError),
    NeedsInit {
        threads: usize,
    },
    Io {
        doing: &'static str,
        source: io::Error,
    },
    DebugEnvironment {
        variable: &'static str,
        value: String,
    },
    /// A builder option was given a value it cannot take; the message says which and why.
    Setting(String),
    /// A remote pool or worker could not start; the message says why and what to do.
    Remote(String),
}

impl BuildError {
    /// A build error of this kind (for the remote pool).
    #[doc(hidden)]
    pub fn new(kind: BuildErrorKind) -> BuildError {
        BuildError { kind }
    }

    /// True when the error says to call [`init`](crate::init) at the start of `main`.
    pub fn needs_init(&self) -> bool {
        matches!(self.kind, BuildErrorKind::NeedsInit { .. })
    }
}

/// The number of workers a builder asked for: zero is refused, none means one per CPU.
pub(crate) fn worker_count(requested: Option<usize>) -> Result<usize, BuildError> {
    match requested {
        Some(0) => Err(BuildError::new(BuildErrorKind::ZeroWorkers)),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BuildErrorKind::ZeroWorkers => write!(
                f,
                "a pool needs at least one worker, got 0: ask for 1 or more, \
                 or leave the count out for one per CPU"
            ),
            BuildErrorKind::Environment { variable, value } => write!(
                f,
                "{variable} must be a positive whole number of workers, got {value:?}: \
                 set it to 1 or more, or unset it for one per CPU"
            ),
            BuildErrorKind::Rayon(err) => write!(f, "could not start the worker threads: {err}"),
            BuildErrorKind::NeedsInit { threads } => write!(
                f,
                "process pools need smol_offload::init() at the start of main: \
                 this process already runs {threads} threads"
            ),
            BuildErrorKind::Io { doing, source } => write!(f, "could not {doing}: {source}"),
            BuildErrorKind::DebugEnvironment { variable, value } => write!(
                f,
                "{variable} must be 1 or a threshold such as 50ms or 1s, got {value:?}: \
                 unset it to leave debug mode off"
            ),
            BuildErrorKind::Setting(message) => f.write_str(message),
            BuildErrorKind::Remote(message) => f.write_str(message),
        }
    }
}

/// The message and the chain of sources, as for [`Error`]; `{:#?}` prints the structure.
impl fmt::Debug for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            return f.debug_tuple("BuildError").field(&self.kind).finish();
        }
        write_report(f, self)
    }
}

/// Writes `err`'s message, then a `Caused by:` list of the sources whose text the message does
/// not already include (the crate's messages often end with their source's text).
pub(crate) fn write_report(
    f: &mut fmt::Formatter<'_>,
    err: &(dyn std::error::Error + 'static),
) -> fmt::Result {
    let mut shown = err.to_string();
    f.write_str(&shown)?;
    let mut causes = Vec::new();
    let mut next = err.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !shown.contains(&text) {
            shown.push_str(&text);
            causes.push(text);
        }
        next = source.source();
    }
    match causes.as_slice() {
        [] => Ok(()),
        [cause] => write!(f, "\n\nCaused by:\n    {cause}"),
        causes => {
            f.write_str("\n\nCaused by:")?;
            for (n, cause) in causes.iter().enumerate() {
                write!(f, "\n    {n}: {cause}")?;
            }
            Ok(())
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            BuildErrorKind::Rayon(err) => Some(err),
            BuildErrorKind::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose message does not repeat its source's, with an optional source.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|layer| layer as _)
        }
    }

    #[test]
    fn debug_of_build_error_is_its_message() {
        let err = BuildError::new(BuildErrorKind::NeedsInit { threads: 3 });
        assert_eq!(
            format!("{err:?}"),
            "process pools need smol_offload::init() at the start of main: \
             this process already runs 3 threads"
        );
        assert_eq!(
            format!("{err:#?}"),
            "BuildError(\n    NeedsInit {\n        threads: 3,\n    },\n)"
        );
    }

    #[test]
    fn debug_does_not_repeat_a_source_the_message_includes() {
        let source = io::Error::new(io::ErrorKind::PermissionDenied, "no socket for you");
        let err = BuildError::new(BuildErrorKind::Io {
            doing: "open the socket",
            source,
        });
        assert_eq!(
            format!("{err:?}"),
            "could not open the socket: no socket for you"
        );
        let err = Error::new(ErrorKind::Panic("no answer".to_owned()));
        assert_eq!(format!("{err:?}"), "the task panicked: no answer");
    }

    #[test]
    fn debug_lists_the_sources_the_message_leaves_out() {
        /// Shows a `Layer` the way the crate's `Debug` impls show their errors.
        struct Report<'a>(&'a Layer);
        impl fmt::Display for Report<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_report(f, self.0)
            }
        }
        let one = Layer("could not load", Some(Box::new(Layer("disk full", None))));
        assert_eq!(
            Report(&one).to_string(),
            "could not load\n\nCaused by:\n    disk full"
        );
        let two = Layer(
            "could not load",
            Some(Box::new(Layer(
                "could not read",
                Some(Box::new(Layer("disk full", None))),
            ))),
        );
        assert_eq!(
            Report(&two).to_string(),
            "could not load\n\nCaused by:\n    0: could not read\n    1: disk full"
        );
    }
}
