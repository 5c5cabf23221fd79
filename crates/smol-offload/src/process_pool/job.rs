//! [`Job`]: one submitted call on its way to a worker, and [`Completion`], its typed end that
//! decides whether it may start and turns the worker's reply into the task's result.
//!
//! Everything above this module (the queue, the loans, the dispatcher) handles jobs without
//! knowing their types: only the [`Completion`] knows the `R` of a `fn(A) -> R`.
//!
//! Before a job is made, `run` checks that the workers have the code its call names
//! ([`ErasedCall::refusal_in_workers`]).

use std::panic::{self, AssertUnwindSafe};

use serde::de::DeserializeOwned;

use crate::byte_buf;
use crate::codec;
use crate::error::{Error, ErrorKind};
use crate::panics::{self, Caught, Reporting};
use crate::process_pool::wire::{CallOptions, Carried, Payload, Reply};
use crate::sys::{self, CallStatus, ErasedCall, LoadedCode};
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

// Whether the workers have the code an [`ErasedCall`] names, checked by `run` before any
// worker is sent to an address: a forked worker has the code loaded when the fork server was
// forked, a remote worker only the executable (which its build identity hashes). The loaded
// objects themselves are listed by `sys::LoadedCode`.

impl ErasedCall {
    /// The two addresses of the call, each with what it is, for messages.
    fn parts(self) -> [(&'static str, usize); 2] {
        let [trampoline, function] = self.to_wire();
        [
            (
                "the function's trampoline (the code that decodes its argument, compiled into \
                 the crate that called `run`)",
                trampoline as usize,
            ),
            ("the function", function as usize),
        ]
    }

    /// Why a worker forked from the fork server could not run this call, if it could not: an
    /// address that lies in a shared library loaded after the server was forked (`dlopen`), or
    /// in no loaded object, is not that code in a worker, which would jump to whatever is there.
    /// Cheap when both addresses lie in the executable, as they do unless code is loaded
    /// dynamically.
    pub(crate) fn refusal_in_workers(self) -> Option<String> {
        let executable = sys::executable_span();
        if self.parts().iter().all(|(_, at)| executable.contains(at)) {
            return None;
        }
        self.refusal_against(sys::code_of_workers(), &LoadedCode::now())
    }

    /// [`refusal_in_workers`](ErasedCall::refusal_in_workers) for workers forked when the code
    /// loaded was `at_fork` (none: no worker was ever forked), with `now` loaded now.
    #[cold]
    pub(crate) fn refusal_against(
        self,
        at_fork: Option<&LoadedCode>,
        now: &LoadedCode,
    ) -> Option<String> {
        for (what, address) in self.parts() {
            let Some(object) = now.containing(address) else {
                return Some(format!(
                    "cannot run the task in a worker process: {what} at {address:#x} lies in no \
                     loaded object"
                ));
            };
            if now.is_executable(object) {
                continue;
            }
            let forked_with = at_fork.and_then(|code| {
                code.objects
                    .iter()
                    .find(|old| old.path == object.path && old.base == object.base)
                    .map(|_| code.unloaded)
            });
            let path = &object.path;
            match forked_with {
                Some(unloaded) if unloaded == now.unloaded => continue,
                Some(_) => {
                    return Some(format!(
                        "cannot run the task in a worker process: {what} lies in the shared \
                         library {path}, and a library was unloaded since the fork server \
                         started, so this one may not be the code that the workers have at \
                         that address; run the function on a ThreadPool, or keep libraries \
                         loaded"
                    ));
                }
                None => {
                    return Some(format!(
                        "cannot run the task in a worker process: {what} lies in the shared \
                         library {path}, loaded (or reloaded) after the fork server started, so the workers \
                         (forked from that server) do not have it; load the library before \
                         smol_offload::init(), or run the function on a ThreadPool"
                    ));
                }
            }
        }
        None
    }

    /// Why a remote worker could not run this call, if it could not: a job names code by its
    /// offset from a static of the executable, and the build identity covers the executable
    /// only, so the function, its trampoline and that static must all lie in the executable,
    /// not in a shared library (a `dylib` crate, `-C prefer-dynamic`, `dlopen`). Cheap when
    /// they do.
    pub fn remote_refusal(self) -> Option<String> {
        let executable = sys::executable_span();
        let anchor = sys::anchor_address() as usize;
        if executable.contains(&anchor)
            && self.parts().iter().all(|(_, at)| executable.contains(at))
        {
            return None;
        }
        self.remote_refusal_in(&LoadedCode::now())
    }

    /// [`remote_refusal`](ErasedCall::remote_refusal), with `now` loaded now.
    #[cold]
    fn remote_refusal_in(self, now: &LoadedCode) -> Option<String> {
        let anchor = (
            "smol-offload itself (whose static the job's offsets start from)",
            sys::anchor_address() as usize,
        );
        for (what, address) in std::iter::once(anchor).chain(self.parts()) {
            match now.containing(address) {
                Some(object) if now.is_executable(object) => {}
                Some(object) => {
                    return Some(format!(
                        "cannot run the task on remote workers: {what} lies in the shared \
                         library {}, and a job can name only code of the executable, whose \
                         SHA-256 the workers check; link that code into the executable (no \
                         dylib crate, no -C prefer-dynamic)",
                        object.path
                    ));
                }
                None => {
                    return Some(format!(
                        "cannot run the task on remote workers: {what} at {address:#x} lies in \
                         no loaded object"
                    ));
                }
            }
        }
        None
    }
}
