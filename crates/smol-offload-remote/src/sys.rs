//! Erased calls, and the one place where a job read from the network becomes a call: this
//! crate's only `unsafe` code.

#![allow(unsafe_code)]

pub(crate) use smol_offload::__remote::sys::{CallStatus, ErasedCall, erase};

use crate::envelope::VerifiedJob;

/// The call named by a remote job that [`crate::envelope::verify`] verified.
///
/// This is the one place where offsets read from the network become an [`ErasedCall`], and why
/// that is sound is that a [`VerifiedJob`] is made only by `envelope::verify`, after two checks:
/// the job carries a valid HMAC-SHA256 under the fleet's key (or the operator declared the
/// network trusted, and so every writer to the queue), so it was made by a client of this fleet
/// from a call made by [`erase`]; and its build identity (the SHA-256 of the client's
/// executable) equals this process's, so the offsets are those of this very image.
pub(crate) fn call_of_verified_job(job: &VerifiedJob) -> ErasedCall {
    // SAFETY: see above: the offsets are the `to_portable()` of a call `erase` made in a
    // process running the same executable, which is `from_portable`'s contract; `verify`
    // (this crate) upholds it.
    unsafe { ErasedCall::from_portable(job.offsets()) }
}
