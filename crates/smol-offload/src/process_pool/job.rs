//! [`Job`]: one submitted call on its way to a worker, and [`Completion`], its typed end that
//! decides whether it may start and turns the worker's reply into the task's result.
//!
//! Everything above this module (the queue, the loans, the dispatcher) handles jobs without
//! knowing their types: only the [`Completion`] knows the `R` of a `fn(A) -> R`.

use std::panic::{self, AssertUnwindSafe};

use serde::de::DeserializeOwned;

use crate::byte_buf;
use crate::codec;
use crate::error::{Error, ErrorKind};
use crate::panics::{self, Caught, Reporting};
use crate::process_pool::wire::Carried;
use crate::process_pool::wire::{CallOptions, Payload, Reply};
use crate::sys::{CallStatus, ErasedCall};
use crate::task::Promise;

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

impl<R: DeserializeOwned + Send> Completion for Promise<R> {
    fn start(&self) -> bool {
        Promise::start(self)
    }

    fn is_abandoned(&self) -> bool {
        Promise::is_abandoned(self)
    }

    fn is_cancelled(&self) -> bool {
        Promise::is_cancelled(self)
    }

    fn finish(self: Box<Self>, reply: Reply) {
        let text = || String::from_utf8_lossy(&reply.payload.as_slice()).into_owned();
        let result = match reply.status {
            // The user's `Deserialize` runs here, on the dispatcher or the awaiting thread: its
            // panic is the task's.
            CallStatus::Returned => panics::catch(Reporting::Chain, || {
                let decoded = match &reply.payload {
                    // Read as it is decoded, its memory given back as it goes.
                    Payload::Stream(stream) => codec::decode_stream(stream.reader(), stream.len()),
                    // A `ByteBuf` in a result that came through shared memory reads it in place.
                    payload => byte_buf::with_backing(payload.mapping(), || {
                        codec::decode(&payload.as_slice())
                    }),
                };
                decoded
                    .map_err(|err| Error::codec("deserialize the result", err.message, err.source))
            })
            .unwrap_or_else(|caught| Err(Error::from_caught(caught))),
            CallStatus::Panicked => Err(match codec::decode::<Caught>(&reply.payload.as_slice()) {
                Ok(caught) => Error::from_caught(caught),
                Err(_) => Error::new(ErrorKind::Panic(text())),
            }),
            CallStatus::BadArgument => Err(Error::codec(
                "deserialize the argument in the worker",
                text(),
                None,
            )),
            CallStatus::BadResult => Err(Error::codec(
                "serialize the result in the worker",
                text(),
                None,
            )),
        };
        // An unread value (its task was dropped) is dropped here, and its destructor may panic.
        let _ = panic::catch_unwind(AssertUnwindSafe(move || self.complete(result)));
    }

    fn fail(self: Box<Self>, error: Error) {
        self.complete(Err(error));
    }
}
