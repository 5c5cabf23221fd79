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
