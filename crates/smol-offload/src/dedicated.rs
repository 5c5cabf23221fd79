//! [`spawn_dedicated`]: one long job on a thread of its own, outside every pool.

use std::panic::{self, AssertUnwindSafe};
use std::thread::JoinHandle;

use crate::error::{Error, ErrorKind};
use crate::task::{self, Promise, Task};

/// Runs `f` on a new thread named `name`, outside every pool, and returns the task to await its
/// value: aiomisc's `@threaded_separate`.
///
/// For a job that runs for minutes (a watcher, a long import) and would hold one of a pool's
/// few threads all that time; the thread ends with the job. The [`Task`] behaves as for a pool:
/// a panic comes back as an [`Error`] whose [`is_panic`](Error::is_panic) is true, dropping the
/// task before the thread calls `f` means `f` never runs, and once `f` runs it runs to its end,
/// unless it returns early when [`cancelled()`](crate::cancelled) turns true.
///
/// # Examples
///
/// ```
/// # smol::block_on(async {
/// let name = smol_offload::spawn_dedicated("importer", || {
///     std::thread::current().name().map(str::to_owned)
/// });
/// assert_eq!(name.await?.as_deref(), Some("importer"));
/// # Ok::<(), smol_offload::Error>(())
/// # }).unwrap();
/// ```
///
/// # Errors
///
/// The task resolves to an error when `f` panics, or when the operating system refused to
/// start the thread (the error says why).
pub fn spawn_dedicated<F, T>(name: impl Into<String>, f: F) -> Task<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let name = name.into();
    // A panic in `f` then carries its location, as on the pools.
    crate::panics::install_hook();
    let (promise, task) = task::pair();
    #[cfg(feature = "tracing")]
    let span = tracing::Span::current();
    let body = move || {
        #[cfg(feature = "tracing")]
        let _entered = span.enter();
        run(promise, f);
    };
    match spawn_thread(&name, body) {
        Ok(_detached) => task,
        // The closure, and the promise in it, are gone: `task` holds a shutdown error.
        Err(err) => Task::ready(Err(Error::new(ErrorKind::Config(format!(
            "could not start the dedicated thread {name:?}: {err}"
        ))))),
    }
}

/// Starts a thread named `name` running `body`; a name with a NUL byte is an error, where `std`
/// would panic.
pub(crate) fn spawn_thread(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    if name.contains('\0') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a thread name cannot contain a NUL byte",
        ));
    }
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
}

/// Runs `f` for `promise` unless its task was dropped first, with [`cancelled()`](crate::cancelled)
/// answering for it, and never lets a panic escape.
fn run<F, T>(promise: Promise<T>, f: F)
where
    F: FnOnce() -> T,
    T: Send + 'static,
{
    if !promise.start() {
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(f)));
        return;
    }
    let result = {
        let _scope = crate::cancel::enter(promise.cancel_source());
        crate::panics::catch(crate::panics::Reporting::Chain, f).map_err(Error::from_caught)
    };
    let _ = panic::catch_unwind(AssertUnwindSafe(move || promise.complete(result)));
}
