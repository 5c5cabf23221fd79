//! The core's interface to `smol-offload-remote`, re-exported as the hidden
//! `smol_offload::__remote`: the items the remote pool and its workers build on, each under the
//! path of the module that defines it, so that the remote crate names them as the core does.
//! For that crate only; no stability promise.
//!
//! The one item that turns data into a call, [`sys::ErasedCall::from_portable`], is `unsafe`:
//! its caller vouches that the offsets name a call made by [`sys::erase`] in the same build.

/// Encoding of arguments and results (postcard, keeping the user's serde error messages).
pub mod codec {
    pub use crate::codec::{CodecError, encode};
}

/// The error types, with their kinds, for the remote pool's own failures.
pub mod error {
    pub use crate::error::{BuildError, BuildErrorKind, Error, ErrorKind, WorkerExit};
}

/// [`Executor`](crate::Executor) and the supertrait that seals it.
pub mod executor {
    pub use crate::executor::{Executor, Sealed};
}

/// Catching panics in user code with the crate's hook.
pub mod panics {
    pub use crate::panics::{Caught, Reporting, catch};
}

/// A pool's handles in the `metrics` facade (empty without the `metrics` feature).
pub mod metrics {
    pub use crate::stats::{Kind, PoolMetrics, TaskTimer, UNNAMED};
}

/// The process pool, and its raw runs for the remote workers.
pub mod process_pool {
    pub use crate::process_pool::ProcessPool;

    /// Running an erased call with raw bytes, and completing a typed task from a raw reply.
    pub mod raw {
        pub use crate::process_pool::raw::{
            Carried, Completion, MAX_ARGUMENT, RawReply, Reply, TaskContext,
        };
    }
}

/// A pool's live task counters.
pub mod stats {
    pub use crate::stats::{Counters, PoolStats};
}

/// Functions with their types erased, and how a call through one ended.
pub mod sys {
    pub use crate::sys::{
        CallStatus, CatchingInterrupts, ErasedCall, catch_interrupts, erase, interrupted,
    };
}

/// The two ends of a task, and the work its awaiting side may do.
pub mod task {
    pub use crate::task::{Assist, Promise, Task, pair, timed_pair};
}

// Whether remote workers have the code an [`ErasedCall`] names, checked by the remote pool's
// `run`: a remote worker has only the executable, which its build identity hashes.
impl crate::sys::ErasedCall {
    /// Why a remote worker could not run this call, if it could not: a job names code by its
    /// offset from a static of the executable, and the build identity covers the executable
    /// only, so the function, its trampoline and that static must all lie in the executable,
    /// not in a shared library (a `dylib` crate, `-C prefer-dynamic`, `dlopen`). Cheap when
    /// they do.
    pub fn remote_refusal(self) -> Option<String> {
        let executable = crate::sys::executable_span();
        let anchor = crate::sys::anchor_address() as usize;
        if executable.contains(&anchor)
            && self.parts().iter().all(|(_, at)| executable.contains(at))
        {
            return None;
        }
        self.remote_refusal_in(&crate::sys::LoadedCode::now())
    }

    /// [`remote_refusal`](ErasedCall::remote_refusal), with `now` loaded now.
    #[cold]
    fn remote_refusal_in(self, now: &crate::sys::LoadedCode) -> Option<String> {
        let anchor = (
            "smol-offload itself (whose static the job's offsets start from)",
            crate::sys::anchor_address() as usize,
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
