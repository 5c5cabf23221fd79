//! Erased calls, and the one place where a job read from the network becomes a call: this
//! crate's only `unsafe` code.

#![allow(unsafe_code)]

pub(crate) use smol_offload::__remote::sys::{
    CallStatus, CatchingInterrupts, ErasedCall, catch_interrupts, erase, interrupted,
};

use crate::envelope::VerifiedJob;

/// The call named by a remote job that [`crate::envelope::verify`] verified.
///
/// This is the one place where offsets read from the network become an [`ErasedCall`], and why
/// that is sound is that a [`VerifiedJob`] is made only by `envelope::verify`, after two checks:
/// the job carries a valid HMAC-SHA256 under the fleet's key, so it was made by a client of
/// this fleet from a call made by [`erase`] (or the worker was built with the `unsafe`
/// `RemoteWorker::trusted_network`, whose caller guarantees that only such clients can write to
/// the queue); and its build identity (the SHA-256 of the client's executable) equals this
/// process's, so the offsets are those of this very image. The client sent them only for code
/// that lies in that executable (`RemotePool::run` checks `ErasedCall::remote_refusal` first),
/// the one object the identity covers.
pub(crate) fn call_of_verified_job(job: &VerifiedJob) -> ErasedCall {
    // SAFETY: see above: the offsets are the `to_portable()` of a call `erase` made, of code in
    // the executable, in a process running the same executable, which is `from_portable`'s
    // contract. `verify` (this crate) checks the signature and the identity; the rest rests on
    // the client following the protocol (it holds the fleet's key and checks `remote_refusal`
    // before sending), or, without a key, on the caller of `trusted_network`.
    unsafe { ErasedCall::from_portable(job.offsets()) }
}
