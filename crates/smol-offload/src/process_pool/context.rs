//! What a process task carries from where it was submitted into its worker's log records, with
//! the `tracing` feature: [`Carried`] is taken at submission and sent in the request, and
//! [`in_span`] runs the call inside the worker's span around the call.
//!
//! A span cannot cross into another process (its id means something only to the subscriber
//! that made it, and its field values were handed to that subscriber, not kept where they could
//! be read back), so what crosses is what names it: the submitting span's name, and a task id,
//! unique in the application. The application logs the id at submission, as a `DEBUG` event of
//! target `smol_offload::task` inside the submitting span (with its fields, as the subscriber
//! records them); the worker runs the call inside an `INFO` span `smol_offload_task` of the same
//! target with fields `task_id` and `submitted_in`, so that every record of the task names both
//! and joins the application's record on `task_id`.
//!
//! Without the feature, [`Carried`] is empty and nothing crosses: request frames are those of a
//! build without it.

#[cfg(feature = "tracing")]
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(feature = "tracing")]
use crate::process_pool::wire::MAX_SPAN_NAME;
use crate::process_pool::wire::TaskContext;

/// What a job carries into its worker: its [`TaskContext`] with the `tracing` feature, nothing
/// without.
#[derive(Clone, Copy, Debug, Default)]
pub struct Carried(#[cfg(feature = "tracing")] Option<TaskContext<'static>>);

#[cfg(feature = "tracing")]
impl Carried {
    /// The context of a task submitted now, from the current span: a new task id, and the
    /// span's name. Logs the id in the current span (a `DEBUG` event).
    pub(crate) fn capture() -> Carried {
        Carried::capture_for("process")
    }

    /// `capture` for a task of the pool kind `what`, which the event's
    /// message names: "`what` task submitted".
    pub fn capture_for(what: &'static str) -> Carried {
        static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);
        let task_id = NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed);
        let span_name = tracing::Span::current()
            .metadata()
            .map_or("", |metadata| metadata.name());
        tracing::debug!(
            target: "smol_offload::task",
            task_id,
            "{what} task submitted"
        );
        Carried(Some(TaskContext { task_id, span_name }))
    }

    /// The context that a task submitted in another process (a remote pool's client) sent
    /// with its job, for the worker process that runs it.
    pub fn received(task_id: u64, span_name: &str) -> Carried {
        Carried(Some(TaskContext {
            task_id,
            span_name: interned(span_name),
        }))
    }

    /// The context to send with the request, if any.
    pub fn get(self) -> Option<TaskContext<'static>> {
        self.0
    }
}

#[cfg(not(feature = "tracing"))]
impl Carried {
    /// Nothing: without the `tracing` feature no context crosses.
    #[inline(always)]
    pub(crate) fn capture() -> Carried {
        Carried()
    }

    /// Nothing: without the `tracing` feature no context crosses.
    #[inline(always)]
    pub fn capture_for(_: &'static str) -> Carried {
        Carried()
    }

    /// Nothing: without the `tracing` feature no context crosses.
    #[inline(always)]
    pub fn received(_: u64, _: &str) -> Carried {
        Carried()
    }

    /// None: without the `tracing` feature no context crosses.
    #[inline(always)]
    pub fn get(self) -> Option<TaskContext<'static>> {
        None
    }
}

/// `name`, cut to what a request carries, as a `&'static str`: span names are the static
/// names of the client program's span call sites, a small set, so each distinct one is kept
/// once for the life of the process; past [`MAX_INTERNED`] of them (a client that is not the
/// same program, or a hostile one), further names are dropped (empty) rather than kept.
#[cfg(feature = "tracing")]
fn interned(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, PoisonError};

    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut end = name.len().min(MAX_SPAN_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let name = &name[..end];
    if name.is_empty() {
        return "";
    }
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    let names = names.get_or_insert_with(HashSet::new);
    if let Some(&known) = names.get(name) {
        return known;
    }
    if names.len() >= MAX_INTERNED {
        return "";
    }
    let kept: &'static str = Box::leak(name.into());
    names.insert(kept);
    kept
}

/// The most distinct span names received from other processes that a process keeps.
#[cfg(feature = "tracing")]
const MAX_INTERNED: usize = 1024;

/// In a worker, runs `call` inside the span that a task's records carry, for the request's
/// `context` (directly when there is none).
#[cfg(feature = "tracing")]
pub(crate) fn in_span<T>(context: Option<TaskContext<'_>>, call: impl FnOnce() -> T) -> T {
    let Some(context) = context else {
        return call();
    };
    let span = tracing::info_span!(
        target: "smol_offload::task",
        "smol_offload_task",
        task_id = context.task_id,
        submitted_in = tracing::field::Empty,
    );
    if !context.span_name.is_empty() {
        span.record("submitted_in", context.span_name);
    }
    span.in_scope(call)
}

/// Runs `call`: without the `tracing` feature, no request has a context.
#[cfg(not(feature = "tracing"))]
#[inline(always)]
pub(crate) fn in_span<T>(_: Option<TaskContext<'_>>, call: impl FnOnce() -> T) -> T {
    call()
}

#[cfg(all(test, feature = "tracing"))]
mod tests {
    use super::*;

    #[test]
    fn received_span_names_are_kept_once_and_cut_to_what_a_request_carries() {
        let first = interned("received_span");
        let again = interned(&String::from("received_span"));
        assert_eq!(first, "received_span");
        assert!(std::ptr::eq(first, again), "kept once");
        let long = "é".repeat(MAX_SPAN_NAME);
        let cut = interned(&long);
        assert!(cut.len() <= MAX_SPAN_NAME && long.starts_with(cut), "{cut}");
        assert_eq!(interned(""), "");
        let context = Carried::received(9, "received_span").get().unwrap();
        assert_eq!((context.task_id, context.span_name), (9, "received_span"));
    }
}
