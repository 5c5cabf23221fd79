//! Hooks for the remote pool (`smol-offload-remote`, through [`crate::__remote`]): run an already-erased call with raw argument
//! bytes on a [`ProcessPool`] and get the raw reply back, and the typed end of a job that the
//! remote client completes from a reply that crossed the network.

use crate::error::Error;
use crate::process_pool::ProcessPool;
use crate::process_pool::job::Job;
pub use crate::process_pool::wire::Carried;
use crate::sys::{CallStatus, ErasedCall};
use crate::task::{self, Promise, Task};

pub use crate::process_pool::job::Completion;
use crate::process_pool::wire::Payload;
pub use crate::process_pool::wire::{MAX_ARGUMENT, Reply, TaskContext};

/// The reply of a worker process to a call run by [`ProcessPool::run_raw`].
#[derive(Debug)]
pub struct RawReply {
    /// How the call ended.
    pub status: CallStatus,
    /// The encoded value, or the failure, as [`CallStatus`] says.
    pub payload: Vec<u8>,
}

impl Reply {
    /// The reply to job `id` that a remote worker sent over the network: its status and bytes.
    pub fn inline(id: u64, status: CallStatus, payload: Vec<u8>) -> Reply {
        Reply {
            id,
            status,
            payload: Payload::Inline(payload),
        }
    }
}

/// Completes a `Task<RawReply>` with the worker's reply as it came.
struct RawCompletion(Promise<RawReply>);

impl Completion for RawCompletion {
    fn start(&self) -> bool {
        self.0.start()
    }

    fn finish(self: Box<Self>, reply: Reply) {
        self.0.complete(Ok(RawReply {
            status: reply.status,
            payload: reply.payload.as_slice().to_vec(),
        }));
    }

    fn fail(self: Box<Self>, error: Error) {
        self.0.complete(Err(error));
    }
}

impl ProcessPool {
    /// Runs `call` with the encoded argument `arg` on one of the workers, in the span that
    /// `context` describes (see [`Carried`]), and gives back the worker's reply undecoded.
    #[doc(hidden)]
    pub fn run_raw(&self, call: ErasedCall, arg: Vec<u8>, context: Carried) -> Task<RawReply> {
        if arg.len() > MAX_ARGUMENT {
            let detail = format!("{} bytes is more than a frame holds", arg.len());
            return Task::ready(Err(Error::codec(
                "pass the argument to a worker",
                detail,
                None,
            )));
        }
        let (promise, task) = task::pair::<RawReply>();
        let job = Job {
            call,
            options: self.handle.options,
            context,
            arg,
            lost: 0,
            completion: Box::new(RawCompletion(promise)),
        };
        self.place(job, task)
    }
}
