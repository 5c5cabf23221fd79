//! [`Job`]: one submitted call on its way to a worker, and [`Completion`], its typed end that
//! decides whether it may start and turns the worker's reply into the task's result.
//!
//! Everything that handles jobs (the queue, the loans, the dispatcher) does so without knowing
//! their types: only the [`Completion`] knows the `R` of a `fn(A) -> R`. `run`, in the parent
//! module, makes jobs and implements [`Completion`] for the task's `Promise<R>`.

use crate::error::Error;
use crate::process_pool::wire::{CallOptions, Carried, Reply};
use crate::sys::ErasedCall;

/// One submitted call, waiting for a worker.
pub(crate) struct Job {
    pub(crate) call: ErasedCall,
    pub(crate) options: CallOptions,
    /// Where it was submitted, for the worker's log records (feature `tracing`).
    pub(crate) context: Carried,
    pub(crate) arg: Vec<u8>,
    pub(crate) completion: Box<dyn Completion>,
    /// How many workers were lost while it was the oldest job sent to them and their claim
    /// word said it had not started (see [`MOST_LOSSES`]).
    pub(crate) lost: u32,
}

/// How many workers a job may lose before the pool gives up on it, instead of requeueing it.
///
/// A worker's claim word is the worker's to write: a task that moves it back makes its own
/// (started) job look unstarted, and if it then kills its worker, the job is requeued and runs
/// again, on another worker it kills in turn. Each such loss is counted against the job the
/// worker could have been running, the oldest sent to it, and the third fails it: it runs at
/// most three times, and costs at most three workers. A job that follows the protocol loses a
/// worker this way only when the worker dies in the instant between its reply to the job
/// before and its claim of this one, three times over.
pub(crate) const MOST_LOSSES: u32 = 3;

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("call", &self.call)
            .field("arg_len", &self.arg.len())
            .finish_non_exhaustive()
    }
}

/// The typed end of a job: decides whether it may start and decodes its reply.
///
/// `start` is asked once, just before the job is sent (a job sent is started); then exactly
/// one of `finish` (a reply came) or `fail` (no reply will come) consumes it.
pub trait Completion: Send {
    /// Marks the job started; false when its task was cancelled first (it must not run).
    fn start(&self) -> bool;
    /// True when the task gave up on the started job (timed out, cancelled, or dropped with
    /// `kill_on_drop`): the worker running it is to be killed.
    fn is_abandoned(&self) -> bool {
        false
    }
    /// True when the task was dropped (not detached) before the job started: it must not run.
    fn is_cancelled(&self) -> bool {
        false
    }
    /// Completes the task from the worker's reply.
    fn finish(self: Box<Self>, reply: Reply);
    /// Completes the task with `error`: no reply will come.
    fn fail(self: Box<Self>, error: Error);
}
