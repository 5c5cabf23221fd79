//! Every `unsafe` operation of the crate: forking, leaving a forked child, receiving file
//! descriptors, and calling a function through its address (with the worker's loop that does
//! it).
//!
//! # The fork contract
//!
//! A child forked from a process that runs other threads inherits every lock those threads held
//! at that instant (stdout, the allocator's arenas, a logger's mutex), held forever by threads
//! that do not exist in the child. So this crate forks only from a process that has a single
//! thread: the application before it starts threads ([`crate::init`]), and the fork server that
//! `init` creates, which never starts one. A forked child never returns or unwinds into its
//! parent's stack frames: it runs its loop, then calls [`exit_child`]; a guard aborts the child
//! should a panic ever escape. See `docs/fork-safety.md`.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;

/// Which side of a fork the caller is on.
pub(crate) enum Forked {
    /// The original process; the child has this pid.
    Parent(u32),
    /// The new process.
    Child,
}

/// How many threads the calling process runs now, from `/proc/self/task`.
pub(crate) fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Forks the calling process, refusing when it runs more than one thread.
///
/// The child must not return from the function that called `fork`: it ends with
/// [`exit_child`], under a [`ChildGuard`].
///
/// # Errors
///
/// The process runs other threads (the error says how many), or `fork` failed.
pub(crate) fn fork() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot fork a process that runs {threads} threads"
        )));
    }
    // SAFETY: the process runs a single thread (checked just above; only this thread could
    // start another), so the child inherits no lock held by a thread it does not have.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child.as_raw() as u32)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Ends a forked child at once with `code`, without running the parent's `atexit` handlers or
/// flushing buffers it inherited (they belong to the parent).
pub(crate) fn exit_child(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// Aborts a forked child if it is dropped while unwinding: a panic must never unwind out of the
/// child's loop into the frames it copied from its parent.
pub(crate) struct ChildGuard;

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Unwinding past the child's entry point: stop here.
            std::process::abort();
        }
    }
}

/// Makes the kernel send `SIGKILL` to the calling process when its parent dies, and checks that
/// the parent is still `parent` (it may have died before the request took effect).
pub(crate) fn die_with_parent(parent: u32) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return Err(io::Error::other("the parent process already exited"));
    }
    Ok(())
}

/// Runs `f` when the process exits normally (returning from `main`, or `std::process::exit`).
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `atexit` only records the pointer; `f` is a plain function with no arguments, as
    // the C signature asks.
    if unsafe { libc::atexit(f) } != 0 {
        return Err(io::Error::other("atexit refused the handler"));
    }
    Ok(())
}

/// Names the calling process for `ps` and `top` (at most 15 bytes are kept).
pub(crate) fn set_process_name(name: &std::ffi::CStr) {
    // Only a label: a failure changes nothing else.
    let _ = nix::sys::prctl::set_name(name);
}

/// Makes the calling process ignore `SIGINT`: a Ctrl-C in the terminal reaches the whole
/// process group, and the application, not its workers, decides what it means.
pub(crate) fn ignore_interrupts() -> io::Result<()> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: `SigIgn` installs no handler code, so no async-signal-safety rule can be broken.
    unsafe { signal(Signal::SIGINT, SigHandler::SigIgn) }?;
    Ok(())
}

/// Takes ownership of a descriptor that arrived through `SCM_RIGHTS`.
pub(crate) fn own_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process for this message only; nothing else in
    // the process knows it, so this is its one owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// How a call through [`ErasedCall::invoke`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum CallStatus {
    /// `out` holds the encoded value.
    Returned = 0,
    /// `out` holds the panic's message, in UTF-8.
    Panicked = 1,
    /// The argument could not be decoded; `out` holds the message.
    BadArgument = 2,
    /// The value could not be encoded; `out` holds the message.
    BadResult = 3,
}

impl CallStatus {
    pub(crate) fn from_byte(byte: u8) -> Option<CallStatus> {
        match byte {
            0 => Some(CallStatus::Returned),
            1 => Some(CallStatus::Panicked),
            2 => Some(CallStatus::BadArgument),
            3 => Some(CallStatus::BadResult),
            _ => None,
        }
    }
}

/// A function `fn(A) -> R` with its types erased: the address of the function, and the address
/// of the trampoline that knows `A` and `R`. Both stay valid in a child forked without `exec`,
/// which runs the same program image at the same addresses.
///
/// The fields are private and an `ErasedCall` is made only by [`erase`], or by the `unsafe`
/// [`ErasedCall::from_wire`] from the words that [`ErasedCall::to_wire`] gave: holding one
/// proves that its addresses are a matching trampoline and function, which is what makes
/// [`ErasedCall::invoke`] safe to call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ErasedCall {
    trampoline: u64,
    function: u64,
}

type Trampoline = fn(u64, &[u8], &mut Vec<u8>) -> CallStatus;

/// Erases the types of `f`, to send it to a forked worker.
pub(crate) fn erase<A, R>(f: fn(A) -> R) -> ErasedCall
where
    A: DeserializeOwned,
    R: Serialize,
{
    let trampoline: Trampoline = trampoline::<A, R>;
    ErasedCall {
        trampoline: trampoline as usize as u64,
        function: f as usize as u64,
    }
}

impl ErasedCall {
    /// The two words that cross the socket: the trampoline's address, then the function's.
    pub(crate) fn to_wire(self) -> [u64; 2] {
        [self.trampoline, self.function]
    }

    /// Rebuilds the call that [`to_wire`](ErasedCall::to_wire) encoded.
    ///
    /// # Safety
    ///
    /// `words` must be the `to_wire()` of an `ErasedCall` made by [`erase`] in this process, or
    /// in a process this one was forked from without `exec` (which runs the same program image
    /// at the same addresses). Any other words are addresses of arbitrary code, which
    /// [`invoke`](ErasedCall::invoke) would jump to.
    pub(crate) unsafe fn from_wire(words: [u64; 2]) -> ErasedCall {
        ErasedCall {
            trampoline: words[0],
            function: words[1],
        }
    }

    /// Decodes the argument in `arg`, calls the function, and appends the encoded value (or
    /// the failure's message) to `out`.
    pub(crate) fn invoke(self, arg: &[u8], out: &mut Vec<u8>) -> CallStatus {
        // SAFETY: an `ErasedCall` is made only by `erase`, which pairs a `fn(A) -> R` with its
        // `trampoline::<A, R>`, or by `from_wire`, whose caller vouches that the words are the
        // same pair in this program image.
        unsafe { call_address(self.trampoline, self.function, arg, out) }
    }
}

/// A fixed point of the program image: a remote job names its function and trampoline by their
/// offsets from this static, which stay the same in every process that runs the same
/// executable, wherever the loader placed it.
static ANCHOR: u8 = 0;

fn anchor_address() -> i64 {
    std::ptr::addr_of!(ANCHOR) as usize as i64
}

impl ErasedCall {
    /// The call as two offsets from a fixed symbol of the executable, valid in any process that
    /// runs the same build (see [`crate::remote`]).
    pub(crate) fn to_portable(self) -> [i64; 2] {
        let anchor = anchor_address();
        [
            (self.trampoline as i64).wrapping_sub(anchor),
            (self.function as i64).wrapping_sub(anchor),
        ]
    }

    /// Rebuilds the call that [`to_portable`](ErasedCall::to_portable) encoded.
    ///
    /// # Safety
    ///
    /// `offsets` must be the `to_portable()` of an `ErasedCall` made by [`erase`] in a process
    /// that runs the very same executable (same build) as this one. Any other offsets are
    /// addresses of arbitrary code, which [`invoke`](ErasedCall::invoke) would jump to.
    unsafe fn from_portable(offsets: [i64; 2]) -> ErasedCall {
        let anchor = anchor_address();
        ErasedCall {
            trampoline: anchor.wrapping_add(offsets[0]) as u64,
            function: anchor.wrapping_add(offsets[1]) as u64,
        }
    }
}

/// The call named by a remote job that [`crate::remote`] verified.
///
/// This is the one place where offsets read from the network become an [`ErasedCall`], and why
/// that is sound is that a [`VerifiedJob`](crate::remote::envelope::VerifiedJob) is made only
/// by `envelope::verify`, after two checks: the job carries a valid HMAC-SHA256 under the
/// fleet's key (or the operator declared the network trusted, and so every writer to the
/// queue), so it was made by a client of this fleet from a call made by [`erase`]; and its
/// build identity (the SHA-256 of the client's executable) equals this process's, so the
/// offsets are those of this very image.
pub(crate) fn call_of_verified_job(job: &crate::remote::envelope::VerifiedJob) -> ErasedCall {
    // SAFETY: see above: the offsets are the `to_portable()` of a call `erase` made in a
    // process running the same executable, which is `from_portable`'s contract.
    unsafe { ErasedCall::from_portable(job.offsets()) }
}

/// Calls the trampoline at address `trampoline` with the function at address `function`.
///
/// # Safety
///
/// `trampoline` must be the address of a `trampoline::<A, R>` of this program image, and
/// `function` the address of a `fn(A) -> R` with the same `A` and `R`, both as [`erase`]
/// computed them in this process or in one it was forked from without `exec`.
unsafe fn call_address(
    trampoline: u64,
    function: u64,
    arg: &[u8],
    out: &mut Vec<u8>,
) -> CallStatus {
    // SAFETY: by this function's contract, `trampoline` is the address of a
    // `trampoline::<A, R>` of this program image, which has the type `Trampoline`.
    let trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(trampoline as usize) };
    trampoline(function, arg, out)
}

/// Decodes `A`, calls `f`, and appends the encoded `R` (or the panic's message) to `out`.
fn trampoline<A, R>(function: u64, arg: &[u8], out: &mut Vec<u8>) -> CallStatus
where
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: `function` was made by `erase::<A, R>` from a `fn(A) -> R` of this same program
    // image (see `call_address`), and this trampoline is the `trampoline::<A, R>` it was
    // paired with.
    let f: fn(A) -> R = unsafe { std::mem::transmute::<usize, fn(A) -> R>(function as usize) };
    let start = out.len();
    // Everything under `catch_unwind`: `f`, but also the user's `Deserialize` and `Serialize`
    // code and the destructors of the argument and the value. A panic there is the task's
    // error, not the end of the worker.
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let arg: A = codec::decode(arg).map_err(|err| (CallStatus::BadArgument, err.message))?;
        let value = f(arg);
        codec::encode_into(&value, out).map_err(|err| (CallStatus::BadResult, err.message))?;
        Ok(())
    }));
    let (status, message) = match outcome {
        Ok(Ok(())) => return CallStatus::Returned,
        Ok(Err(failure)) => failure,
        Err(payload) => {
            let message = crate::error::panic_payload_message(payload.as_ref());
            // The payload's own drop may panic too; it must not escape the worker.
            let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
            (CallStatus::Panicked, message)
        }
    };
    out.truncate(start);
    out.extend_from_slice(message.as_bytes());
    status
}

/// The loop of a worker process: reads each request its parent sends on `stream`, calls the
/// function it names, and writes the reply, until the parent closes the socket.
///
/// This is the one place where words read from a socket become an [`ErasedCall`], and why
/// that is sound is the reason this loop lives here, next to the `unsafe` it needs: it runs
/// only in a worker process, forked without `exec` from the fork server, which was forked
/// without `exec` from the application, so all three run one program image at the same
/// addresses; and `stream` is the worker's end of the socket pair that the application made
/// for this one worker and handed over through the fork server's private link. The other end
/// stays in the application, which writes only requests built by `wire::write_request` from a
/// call made by [`erase`].
pub(crate) fn serve_requests(stream: &std::os::unix::net::UnixStream) -> io::Result<()> {
    use crate::process_pool::wire;
    use std::io::{BufReader, Write};

    let mut input = BufReader::with_capacity(64 * 1024, stream);
    let mut output = stream;
    let mut buffer = Vec::new();
    let mut reply = Vec::new();
    while let Some(request) = wire::read_request(&mut input, &mut buffer)? {
        // SAFETY: the request came from the parent, which wrote the `to_wire()` of a call made
        // by `erase` in the same program image (see this function's documentation).
        let call = unsafe { ErasedCall::from_wire(request.call) };
        wire::begin_reply(&mut reply, request.id);
        let status = call.invoke(request.arg, &mut reply);
        wire::finish_reply(&mut reply, status);
        output.write_all(&reply)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(n: u32) -> u32 {
        n * 2
    }

    fn fail(message: String) -> u32 {
        panic!("{message}")
    }

    #[test]
    fn erased_call_round_trips_in_process() {
        let call = erase(double);
        let mut out = Vec::new();
        let arg = postcard::to_allocvec(&21u32).unwrap();
        let status = call.invoke(&arg, &mut out);
        assert_eq!(status, CallStatus::Returned);
        assert_eq!(postcard::from_bytes::<u32>(&out).unwrap(), 42);
    }

    #[test]
    fn erased_call_crosses_the_wire_as_two_words() {
        let call = erase(double);
        // SAFETY: the words are the `to_wire()` of a call `erase` made in this process.
        let back = unsafe { ErasedCall::from_wire(call.to_wire()) };
        assert_eq!(back, call);
        let mut out = Vec::new();
        let arg = postcard::to_allocvec(&4u32).unwrap();
        assert_eq!(back.invoke(&arg, &mut out), CallStatus::Returned);
        assert_eq!(postcard::from_bytes::<u32>(&out).unwrap(), 8);
    }

    #[test]
    fn erased_call_crosses_the_network_as_two_offsets() {
        let call = erase(double);
        // SAFETY: the offsets are the `to_portable()` of a call made in this very process.
        let back = unsafe { ErasedCall::from_portable(call.to_portable()) };
        assert_eq!(back, call);
    }

    #[test]
    fn erased_call_reports_panic_and_bad_argument() {
        let call = erase(fail);
        let mut out = Vec::new();
        let arg = postcard::to_allocvec(&"boom".to_string()).unwrap();
        let hook = panic::take_hook();
        panic::set_hook(Box::new(|_| {}));
        let status = call.invoke(&arg, &mut out);
        panic::set_hook(hook);
        assert_eq!(status, CallStatus::Panicked);
        assert_eq!(out, b"boom");

        out.clear();
        let status = call.invoke(&[0xff], &mut out);
        assert_eq!(status, CallStatus::BadArgument);
        assert!(!out.is_empty());
    }
}
