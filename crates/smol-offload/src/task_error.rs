//! [`TaskError`]: an error a task's function returns, that crosses to a worker process and
//! back.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// An error returned by offloaded work, made to travel: any [`std::error::Error`] converts into
/// it with `?`, and it is a serde type, so a fallible function runs through
/// [`Executor::run`](crate::Executor::run) on threads and processes alike.
///
/// `std::io::Error` cannot cross to another process (it is not a serde type). Python pickles the
/// exception in the worker and raises it again in the caller; `TaskError` keeps what a caller
/// needs of the original error: its message, the messages of its chain of
/// [`source`](std::error::Error::source)s, and the [`io::ErrorKind`] when the error, or one of
/// its sources, is an `io::Error`.
///
/// Like `anyhow::Error`, `TaskError` does not implement `std::error::Error` itself (a type that
/// did could not also convert from every error): it derefs to one, which gives `source()` and
/// `to_string()`, and it converts into `Box<dyn Error + Send + Sync>`, `Box<dyn Error>` and
/// `io::Error` with `?`. Its `Debug` form is its message followed by its causes, so that
/// returning it from `main` prints a readable report.
///
/// # Examples
///
/// A function that reads a file, offloaded to a pool of threads or of processes:
///
/// ```
/// use std::io;
/// use std::path::PathBuf;
///
/// use smol_offload::{Executor, TaskError, ThreadPool};
///
/// fn read_file(path: PathBuf) -> Result<String, TaskError> {
///     Ok(std::fs::read_to_string(path)?)
/// }
///
/// # smol::block_on(async {
/// let pool = ThreadPool::new(2)?;
/// let text = pool.run(read_file, PathBuf::from("Cargo.toml")).await??;
/// assert!(text.contains("[package]"));
///
/// let err = pool.run(read_file, PathBuf::from("no/such/file")).await?.unwrap_err();
/// assert_eq!(err.io_kind(), Some(io::ErrorKind::NotFound));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
///
/// An error's sources are kept as text:
///
/// ```
/// use smol_offload::TaskError;
///
/// let parse = "x".parse::<u32>().unwrap_err();
/// let err = TaskError::from(std::io::Error::new(std::io::ErrorKind::InvalidData, parse));
/// assert_eq!(err.to_string(), "invalid digit found in string");
/// assert_eq!(err.io_kind(), Some(std::io::ErrorKind::InvalidData));
///
/// let err = TaskError::new("could not load the settings").context_of(err);
/// let chain: Vec<_> = err.chain().collect();
/// assert_eq!(chain, ["could not load the settings", "invalid digit found in string"]);
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// The error and its sources, outermost first.
    link: Link,
    /// The kind of the first `io::Error` in the chain, by name.
    #[serde(with = "io_kind_by_name")]
    io_kind: Option<io::ErrorKind>,
}

/// One error of a chain, with the rest of the chain as its source.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Link {
    message: String,
    source: Option<Box<Link>>,
}

impl TaskError {
    /// An error with this message and no source, like `anyhow!("...")`.
    pub fn new(message: impl fmt::Display) -> TaskError {
        TaskError {
            link: Link {
                message: message.to_string(),
                source: None,
            },
            io_kind: None,
        }
    }

    /// This error, with `cause` as its source: `TaskError::new("could not load the settings")
    /// .context_of(err)`. The result's [`io_kind`](TaskError::io_kind) is this error's own, or
    /// else `cause`'s.
    #[must_use]
    pub fn context_of(self, cause: TaskError) -> TaskError {
        let mut link = self.link;
        let mut last = &mut link;
        while let Some(ref mut next) = last.source {
            last = next;
        }
        last.source = Some(Box::new(cause.link));
        TaskError {
            link,
            io_kind: self.io_kind.or(cause.io_kind),
        }
    }

    /// The error's own message, without its sources.
    pub fn message(&self) -> &str {
        &self.link.message
    }

    /// The messages of the error and of its sources, outermost first.
    pub fn chain(&self) -> impl Iterator<Item = &str> {
        std::iter::successors(Some(&self.link), |link| link.source.as_deref())
            .map(|link| link.message.as_str())
    }

    /// The [`io::ErrorKind`] of the original error when it, or one of its sources, was an
    /// `io::Error`.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        self.io_kind
    }
}

/// Keeps the message, the sources as text, and the first `io::ErrorKind` of the chain.
impl<E> From<E> for TaskError
where
    E: StdError + 'static,
{
    fn from(err: E) -> TaskError {
        let mut io_kind = None;
        let mut messages = Vec::new();
        let mut next: Option<&(dyn StdError + 'static)> = Some(&err);
        while let Some(current) = next {
            if io_kind.is_none() {
                io_kind = current.downcast_ref::<io::Error>().map(io::Error::kind);
            }
            messages.push(current.to_string());
            next = current.source();
        }
        let link = messages.into_iter().rev().fold(None, |source, message| {
            Some(Box::new(Link { message, source }))
        });
        TaskError {
            link: *link.expect("the chain holds at least the error itself"),
            io_kind,
        }
    }
}

impl Deref for TaskError {
    type Target = dyn StdError + Send + Sync + 'static;

    fn deref(&self) -> &Self::Target {
        &self.link
    }
}

impl AsRef<dyn StdError + Send + Sync> for TaskError {
    fn as_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &self.link
    }
}

impl From<TaskError> for Box<dyn StdError + Send + Sync + 'static> {
    fn from(err: TaskError) -> Self {
        Box::new(err.link)
    }
}

impl From<TaskError> for Box<dyn StdError + 'static> {
    fn from(err: TaskError) -> Self {
        Box::new(err.link)
    }
}

/// An `io::Error` of the original kind (or `Other`), whose source chain is the task error's.
impl From<TaskError> for io::Error {
    fn from(err: TaskError) -> io::Error {
        io::Error::new(err.io_kind.unwrap_or(io::ErrorKind::Other), err.link)
    }
}

/// The message; with `{:#}`, the message and its sources joined by `": "`, as `anyhow` does.
impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            f.write_str(&self.chain().collect::<Vec<_>>().join(": "))
        } else {
            f.write_str(self.message())
        }
    }
}

/// The message and a `Caused by:` list of the sources, as `anyhow` does.
impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            return f
                .debug_struct("TaskError")
                .field("chain", &self.chain().collect::<Vec<_>>())
                .field("io_kind", &self.io_kind)
                .finish();
        }
        crate::error::write_report(f, &self.link)
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::error::write_report(f, self)
    }
}

impl StdError for Link {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|link| link as _)
    }
}

/// Serializes an `io::ErrorKind` by its name (`"NotFound"`), so that a kind a newer standard
/// library adds still crosses as `Other` rather than failing.
mod io_kind_by_name {
    use std::io::ErrorKind;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Every stable kind a worker's error can carry, for reading names back.
    pub(super) const KINDS: [ErrorKind; 39] = [
        ErrorKind::NotFound,
        ErrorKind::PermissionDenied,
        ErrorKind::ConnectionRefused,
        ErrorKind::ConnectionReset,
        ErrorKind::HostUnreachable,
        ErrorKind::NetworkUnreachable,
        ErrorKind::ConnectionAborted,
        ErrorKind::NotConnected,
        ErrorKind::AddrInUse,
        ErrorKind::AddrNotAvailable,
        ErrorKind::NetworkDown,
        ErrorKind::BrokenPipe,
        ErrorKind::AlreadyExists,
        ErrorKind::WouldBlock,
        ErrorKind::NotADirectory,
        ErrorKind::IsADirectory,
        ErrorKind::DirectoryNotEmpty,
        ErrorKind::ReadOnlyFilesystem,
        ErrorKind::StaleNetworkFileHandle,
        ErrorKind::InvalidInput,
        ErrorKind::InvalidData,
        ErrorKind::TimedOut,
        ErrorKind::WriteZero,
        ErrorKind::StorageFull,
        ErrorKind::NotSeekable,
        ErrorKind::QuotaExceeded,
        ErrorKind::FileTooLarge,
        ErrorKind::ResourceBusy,
        ErrorKind::ExecutableFileBusy,
        ErrorKind::Deadlock,
        ErrorKind::CrossesDevices,
        ErrorKind::TooManyLinks,
        ErrorKind::InvalidFilename,
        ErrorKind::ArgumentListTooLong,
        ErrorKind::Interrupted,
        ErrorKind::Unsupported,
        ErrorKind::UnexpectedEof,
        ErrorKind::OutOfMemory,
        ErrorKind::Other,
    ];

    pub(super) fn serialize<S: Serializer>(
        kind: &Option<ErrorKind>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        kind.map(|kind| format!("{kind:?}")).serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<ErrorKind>, D::Error> {
        let name = Option::<String>::deserialize(deserializer)?;
        Ok(name.map(|name| kind_named(&name)))
    }

    /// The kind whose `Debug` name is `name`, or `Other` for a name this library does not know.
    pub(super) fn kind_named(name: &str) -> ErrorKind {
        KINDS
            .into_iter()
            .find(|kind| format!("{kind:?}") == name)
            .unwrap_or(ErrorKind::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a source that its message does not repeat.
    #[derive(Debug)]
    struct Outer(io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("could not load the settings")
        }
    }

    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    fn settings_error() -> TaskError {
        let io = io::Error::new(io::ErrorKind::PermissionDenied, "settings.toml is locked");
        TaskError::from(Outer(io))
    }

    #[test]
    fn the_source_chain_is_kept_as_text_with_the_io_kind_of_a_source() {
        let err = settings_error();
        assert_eq!(err.message(), "could not load the settings");
        assert_eq!(
            err.chain().collect::<Vec<_>>(),
            ["could not load the settings", "settings.toml is locked"]
        );
        assert_eq!(err.io_kind(), Some(io::ErrorKind::PermissionDenied));
        assert_eq!(err.source().unwrap().to_string(), "settings.toml is locked");
        assert!(err.source().unwrap().source().is_none());
        assert_eq!(
            format!("{err:#}"),
            "could not load the settings: settings.toml is locked"
        );
        assert_eq!(
            format!("{err:?}"),
            "could not load the settings\n\nCaused by:\n    settings.toml is locked"
        );
    }

    #[test]
    fn a_round_trip_through_postcard_loses_nothing() {
        let err = settings_error();
        let bytes = postcard::to_stdvec(&err).unwrap();
        let back: TaskError = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, err);
        let plain = TaskError::new("no kind");
        let back: TaskError = postcard::from_bytes(&postcard::to_stdvec(&plain).unwrap()).unwrap();
        assert_eq!(back.io_kind(), None);
    }

    #[test]
    fn every_kind_is_read_back_by_name_and_unknown_names_are_other() {
        for kind in io_kind_by_name::KINDS {
            assert_eq!(io_kind_by_name::kind_named(&format!("{kind:?}")), kind);
        }
        assert_eq!(
            io_kind_by_name::kind_named("SomeKindFromTheFuture"),
            io::ErrorKind::Other
        );
    }

    #[test]
    fn it_converts_back_into_io_and_boxed_errors() {
        let io: io::Error = settings_error().into();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(io.to_string(), "could not load the settings");
        let io: io::Error = TaskError::new("plain").into();
        assert_eq!(io.kind(), io::ErrorKind::Other);
        let boxed: Box<dyn StdError + Send + Sync> = settings_error().into();
        assert_eq!(
            boxed.source().unwrap().to_string(),
            "settings.toml is locked"
        );
        let boxed: Box<dyn StdError> = TaskError::new("plain").into();
        assert_eq!(boxed.to_string(), "plain");
    }

    #[test]
    fn context_of_puts_the_cause_under_the_whole_chain() {
        let err = TaskError::new("could not start").context_of(settings_error());
        assert_eq!(
            err.chain().collect::<Vec<_>>(),
            [
                "could not start",
                "could not load the settings",
                "settings.toml is locked"
            ]
        );
        assert_eq!(err.io_kind(), Some(io::ErrorKind::PermissionDenied));
    }
}
