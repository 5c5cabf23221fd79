//! Panics in pool tasks: where they happened, and whether they are printed as they happen.
//!
//! A caught panic's payload holds its message but not its location, which only the panic hook
//! sees. So building a pool installs, once per process, a hook that records the location of a
//! panic raised while a pool task runs on the current thread, and otherwise changes nothing:
//!
//! - on a thread that runs no pool task, it calls the hook that was installed before it, so
//!   whatever the application's own hook prints, it still prints;
//! - in a thread pool's task, or in the caller's code that encodes or decodes a process task's
//!   values, it records the location, then calls the previous hook, as before;
//! - in a worker process, a task's panic is recorded and printed only if the pool asked for it
//!   (`ProcessPoolBuilder::print_panics`), as `smol-offload worker <pid> panicked at
//!   <file:line:column>:` and the message, so that the output says which worker it came from;
//!   any other panic in a worker is printed that way too.
//!
//! The hook is process-global, as `std::panic::set_hook` is: a hook the application sets after
//! the first pool was built replaces this one unless it calls the hook it took over (as this
//! one does), and errors then carry no location. [`leave_panic_hook_alone`] keeps it out of the
//! application's process altogether (worker processes, the crate's own, still install it).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::io::Write;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

/// What the hook does with a panic raised in a task on this thread, besides recording where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporting {
    /// Calls the previous hook: a thread pool's task, or the caller's side of a process task.
    Chain,
    /// Prints nothing: a worker process's task, by default.
    Quiet,
    /// Prints one line naming this worker process, then the message.
    Labelled,
}

/// A panic caught in a task: its message and, when the hook saw it, its location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caught {
    pub(crate) message: String,
    /// `file:line:column`.
    pub(crate) location: Option<String>,
}

thread_local! {
    /// How a panic of the task running on this thread is reported; `None` outside tasks.
    static REPORTING: Cell<Option<Reporting>> = const { Cell::new(None) };
    /// Where the last panic of the task running on this thread was raised.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The pid of this process when it is a worker process, else 0.
static WORKER_PID: AtomicU32 = AtomicU32::new(0);

/// Set by [`leave_panic_hook_alone`]: the application's process gets no hook of the crate's.
static LEFT_ALONE: AtomicBool = AtomicBool::new(false);

/// Keeps the crate from installing its panic hook in this process, so that the program's own
/// hook (or the default one) stays the one installed: call it first thing in `main`, before
/// building any pool.
///
/// Building a pool (or [`spawn_dedicated`](crate::spawn_dedicated), or the first
/// [`spawn`](crate::spawn)) installs, once per process, a panic hook that records where a
/// panic in a thread task happened, for [`Error::panic_location`](crate::Error::panic_location),
/// and passes every panic on to the hook that was there before. Without it, those errors carry
/// the panic's message but no location. A [`ProcessPool`](crate::ProcessPool) task's errors
/// still have theirs: the hook is then installed in the worker processes only, which are the
/// crate's own.
///
/// If the hook was already installed, it passes every later panic straight on to the previous
/// hook, recording nothing.
///
/// # Examples
///
/// ```
/// smol_offload::leave_panic_hook_alone();
/// let pool = smol_offload::ThreadPool::new(1)?;
/// let err = smol::block_on(pool.spawn(|| -> u8 { panic!("gave up") })).unwrap_err();
/// assert_eq!(err.panic_message(), Some("gave up"));
/// assert_eq!(err.panic_location(), None);
/// # Ok::<(), smol_offload::BuildError>(())
/// ```
pub fn leave_panic_hook_alone() {
    LEFT_ALONE.store(true, Ordering::Relaxed);
}

/// Installs the hook, once per process, unless [`leave_panic_hook_alone`] was called; later
/// calls do nothing. Call it where the user expects set-up to happen (building a pool), not
/// while tasks run: installing takes the previous hook and sets a new one, which races with
/// another thread doing the same.
pub(crate) fn install_hook() {
    if !LEFT_ALONE.load(Ordering::Relaxed) {
        install_once();
    }
}

fn install_once() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| report(info, &*previous)));
    });
}

/// Makes this process a worker process for the hook: its panics are labelled with its pid. A
/// worker is the crate's own process, so it gets the hook even when the application's process
/// was left alone.
pub(crate) fn install_in_worker() {
    WORKER_PID.store(std::process::id(), Ordering::Relaxed);
    install_once();
}

type Hook = dyn Fn(&PanicHookInfo<'_>) + Send + Sync;

fn report(info: &PanicHookInfo<'_>, previous: &Hook) {
    let worker = WORKER_PID.load(Ordering::Relaxed);
    if worker == 0 && LEFT_ALONE.load(Ordering::Relaxed) {
        return previous(info);
    }
    let location = info
        .location()
        .map(|at| format!("{}:{}:{}", at.file(), at.line(), at.column()));
    // `try_with`: a panic while this thread's locals are being destroyed still gets reported.
    let reporting = REPORTING.try_with(Cell::get).ok().flatten();
    if reporting.is_some() {
        let _ = LOCATION.try_with(|slot| {
            if let Ok(mut slot) = slot.try_borrow_mut() {
                slot.clone_from(&location);
            }
        });
    }
    match reporting {
        Some(Reporting::Quiet) => {}
        Some(Reporting::Labelled) => print_labelled(worker, info, location.as_deref()),
        None if worker != 0 => print_labelled(worker, info, location.as_deref()),
        Some(Reporting::Chain) | None => previous(info),
    }
}

fn print_labelled(pid: u32, info: &PanicHookInfo<'_>, location: Option<&str>) {
    let message = panic_payload_message(info.payload());
    let at = location.unwrap_or("an unknown location");
    let backtrace = std::backtrace::Backtrace::capture();
    let mut text = format!("smol-offload worker {pid} panicked at {at}:\n{message}\n");
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        text.push_str(&format!("stack backtrace:\n{backtrace}\n"));
    }
    // One write, so that lines of several workers do not interleave; a closed stderr is fine.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Runs `f` as a task, reporting its panics as `reporting` says, and catches them.
pub fn catch<T>(reporting: Reporting, f: impl FnOnce() -> T) -> Result<T, Caught> {
    let outer = REPORTING.replace(Some(reporting));
    let outer_location = LOCATION.take();
    let outcome = panic::catch_unwind(AssertUnwindSafe(f));
    REPORTING.set(outer);
    let location = LOCATION.replace(outer_location);
    outcome.map_err(|payload| caught(payload, location))
}

/// The message of `payload`, which is dropped here under `catch_unwind`: its own destructor
/// may panic too, and that must not escape a worker either.
pub(crate) fn caught(payload: Box<dyn Any + Send>, location: Option<String>) -> Caught {
    let message = panic_payload_message(payload.as_ref());
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
    Caught { message, location }
}

/// The text of a panic payload, the way the standard library's hook prints it.
fn panic_payload_message(payload: &(dyn Any + Send)) -> String {
    let text = payload.downcast_ref::<&'static str>().copied();
    let text = text.or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    text.unwrap_or("Box<dyn Any>").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_task_is_caught_with_its_location() {
        install_hook();
        let line = line!() + 2;
        let caught = catch(Reporting::Quiet, || -> u8 {
            panic!("where was I");
        })
        .unwrap_err();
        assert_eq!(caught.message, "where was I");
        let location = caught.location.expect("the hook recorded it");
        assert!(
            location.starts_with(&format!("{}:{line}:", file!())),
            "{location}"
        );
        assert_eq!(catch(Reporting::Quiet, || 7).unwrap(), 7);
        assert_eq!(REPORTING.get(), None, "the thread is outside tasks again");
    }

    #[test]
    fn a_nested_task_restores_the_outer_one() {
        install_hook();
        let inner = catch(Reporting::Chain, || {
            let inner = catch(Reporting::Quiet, || panic::panic_any(5u8)).unwrap_err();
            assert_eq!(REPORTING.get(), Some(Reporting::Chain));
            inner
        })
        .unwrap();
        assert_eq!(inner.message, "Box<dyn Any>");
        assert!(inner.location.is_some());
    }
}
