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

use crate::process_pool::wire::TaskContext;

/// What a job carries into its worker: its [`TaskContext`] with the `tracing` feature, nothing
/// without.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Carried(#[cfg(feature = "tracing")] Option<TaskContext<'static>>);

#[cfg(feature = "tracing")]
impl Carried {
    /// The context of a task submitted now, from the current span: a new task id, and the
    /// span's name. Logs the id in the current span (a `DEBUG` event).
    pub(crate) fn capture() -> Carried {
        static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);
        let task_id = NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed);
        let span_name = tracing::Span::current()
            .metadata()
            .map_or("", |metadata| metadata.name());
        tracing::debug!(
            target: "smol_offload::task",
            task_id,
            "process task submitted"
        );
        Carried(Some(TaskContext { task_id, span_name }))
    }

    /// The context to send with the request, if any.
    pub(crate) fn get(self) -> Option<TaskContext<'static>> {
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

    /// None: without the `tracing` feature no context crosses.
    #[inline(always)]
    pub(crate) fn get(self) -> Option<TaskContext<'static>> {
        None
    }
}

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
