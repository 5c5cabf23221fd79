//! Every `unsafe` operation of the crate, and only system calls, mappings and the primitive of
//! calling a function by its address: forking, leaving a forked child, receiving file
//! descriptors, shared memory, catching `SIGINT` and `SIGTERM` while a remote worker serves, and
//! [`ErasedCall`]. The worker's request loop is `process_pool::worker`; whether the workers have
//! a call's code is checked in `process_pool`.
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
//!
//! # Memory shared with a worker
//!
//! A worker runs the user's code, which may be a plug-in that nobody vetted, so the parent
//! treats every worker as possibly hostile: a worker that breaks the protocol may cost its own
//! tasks, never the application or another worker's tasks. Where the parent maps memory that a
//! worker can reach, the danger is a fault: an access to a page that the file no longer covers
//! raises `SIGBUS`, which kills the whole application. So every such mapping rests on what the
//! kernel enforces on the file, whoever holds it, and never on the worker's good behaviour:
//!
//! | the parent maps | what the worker holds | why no access of the parent's can fault |
//! | --- | --- | --- |
//! | the claim page ([`SharedWord`]), read and written atomically | a writable mapping; it closes its descriptor once mapped | sealed against shrinking and growing before the worker gets it; every value read is the worker's word, checked as such (`process_pool::worker::Claims`) |
//! | the request arena ([`ArenaMapping`]), written, never read | a read-only mapping (which it could make writable); it closes its descriptor once mapped | sealed against shrinking and growing by the parent; what the worker writes there only reaches its own arguments |
//! | a sealed reply ([`SealedMapping`]), read in place | the memfd it made, which it may keep | the seals (writes, shrinking, growing), the file system, the size and that every page was written are checked on the file before it is mapped; its size is bounded (`process_pool::wire::MAX_RESULT`) |
//!
//! A worker's reply arena and its streamed results are never mapped: the parent copies them out
//! with `pread` ([`read_from_start`]), so what the worker does to those files changes the bytes
//! read or makes the read come up short (its reply is then malformed), and nothing else. A
//! worker holds no descriptor of another worker's: the fork server closes its copies of a
//! worker's socket and claim memfd once it has forked it, so a worker inherits only what the
//! application had open when [`crate::init`] ran, and its own two.
//!
//! Out of this model: a worker runs as the application's user and makes its own system calls. It
//! can send the application a signal, or reach it and its other workers through `/proc` (open
//! their descriptors, and `ptrace` them where the system allows it). The pool keeps a worker
//! from harming anything through what the protocol hands it (its descriptors, the memory it
//! shares, the bytes it sends), not through the operating system: to contain a plug-in that
//! far, run it under the system's isolation (another user, a seccomp filter, namespaces).

#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::signal::{SigHandler, Signal, signal};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::panics::{self, Reporting};

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

/// Makes the calling process ignore `SIGINT` and `SIGTERM`: a Ctrl-C in the terminal, or a
/// `kill` of the application's process group, reaches every process of the group, and the
/// application, not its fork server or workers, decides what it means. When the application
/// exits, they follow (`PR_SET_PDEATHSIG` and the end of their sockets).
pub(crate) fn ignore_interrupts() -> io::Result<()> {
    ignore(&[Signal::SIGINT, Signal::SIGTERM])
}

fn ignore(signals: &[Signal]) -> io::Result<()> {
    for &ignored in signals {
        // SAFETY: `SigIgn` installs no handler code, so no async-signal-safety rule can be
        // broken.
        unsafe { signal(ignored, SigHandler::SigIgn) }?;
    }
    Ok(())
}

/// `SIGINT` and `SIGTERM`, in the order of the slots below.
const INTERRUPTS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// Set by [`on_interrupt`] when `SIGINT` or `SIGTERM` arrives while interrupts are caught.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The `sa_sigaction` of the action each interrupt had before it was caught, for
/// [`on_interrupt`] to call it too, and whether that handler takes `SA_SIGINFO`'s arguments.
static CHAINED: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
static CHAINED_SIGINFO: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// While interrupts are caught: how many [`CatchingInterrupts`] live, and the actions to put
/// back when the last one is dropped.
static CATCHING: Mutex<Option<SavedActions>> = Mutex::new(None);

struct SavedActions {
    holders: usize,
    previous: [libc::sigaction; 2],
}

/// `SIGINT` and `SIGTERM` caught for a remote worker while it serves: they set a flag
/// ([`interrupted`]) instead of ending the process. The first of these guards saves the
/// actions the two signals had and the last one dropped puts them back, unless the application
/// installed its own since. Meanwhile a handler that was installed before is still called after
/// the flag is set (without its own mask and flags), so the application still sees its signals.
#[derive(Debug)]
#[must_use = "interrupts are caught only while the guard lives"]
pub struct CatchingInterrupts {
    _private: (),
}

/// Catches `SIGINT` and `SIGTERM` until the guard is dropped; see [`CatchingInterrupts`].
///
/// # Errors
///
/// `sigaction` refused (it does not for these two signals).
pub fn catch_interrupts() -> io::Result<CatchingInterrupts> {
    let mut catching = CATCHING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(caught) = catching.as_mut() {
        caught.holders += 1;
        return Ok(CatchingInterrupts { _private: () });
    }
    INTERRUPTED.store(false, Ordering::Relaxed);
    let previous = [
        swap_action(INTERRUPTS[0], None)?,
        swap_action(INTERRUPTS[1], None)?,
    ];
    for (slot, action) in previous.iter().enumerate() {
        CHAINED[slot].store(action.sa_sigaction, Ordering::Release);
        CHAINED_SIGINFO[slot].store(action.sa_flags & libc::SA_SIGINFO != 0, Ordering::Release);
    }
    // SAFETY: all-zero bytes are a valid `sigaction`: no handler (`SIG_DFL`), an empty mask,
    // no flags, no restorer.
    let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
    ours.sa_sigaction = on_interrupt as extern "C" fn(_, _, _) as libc::sighandler_t;
    ours.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    for (slot, &signal) in INTERRUPTS.iter().enumerate() {
        if let Err(err) = swap_action(signal, Some(&ours)) {
            for (undo, &signal) in INTERRUPTS.iter().enumerate().take(slot) {
                let _ = swap_action(signal, Some(&previous[undo]));
            }
            return Err(err);
        }
    }
    *catching = Some(SavedActions {
        holders: 1,
        previous,
    });
    Ok(CatchingInterrupts { _private: () })
}

/// Whether `SIGINT` or `SIGTERM` arrived since interrupts were last caught (see
/// [`catch_interrupts`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

impl Drop for CatchingInterrupts {
    fn drop(&mut self) {
        let mut catching = CATCHING.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(caught) = catching.as_mut() else {
            return;
        };
        caught.holders -= 1;
        if caught.holders > 0 {
            return;
        }
        let previous = caught.previous;
        *catching = None;
        let ours = on_interrupt as extern "C" fn(_, _, _) as libc::sighandler_t;
        for (slot, &signal) in INTERRUPTS.iter().enumerate() {
            // An action the application installed meanwhile is its own: it stays.
            if swap_action(signal, None).is_ok_and(|now| now.sa_sigaction == ours) {
                let _ = swap_action(signal, Some(&previous[slot]));
            }
        }
    }
}

/// The action `signal` had, after giving it the action `new`, if any.
fn swap_action(signal: libc::c_int, new: Option<&libc::sigaction>) -> io::Result<libc::sigaction> {
    // SAFETY: all-zero bytes are a valid `sigaction` (see `catch_interrupts`), and it is only
    // written by the call below.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    let new = new.map_or(std::ptr::null(), std::ptr::from_ref);
    // SAFETY: `old` is a valid, writable `sigaction` that outlives the call. `new` is null (the
    // call only reads the current action) or, from the callers in this module, an action that
    // this function read (put back as it was) or ours, whose handler is `on_interrupt`, which
    // is async-signal-safe (see it).
    if unsafe { libc::sigaction(signal, new, &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(old)
}

/// The handler of `SIGINT` and `SIGTERM` while they are caught: sets [`INTERRUPTED`], then
/// calls the handler that was installed before, if there was one. It does nothing that is not
/// async-signal-safe: an atomic store, two atomic loads, and a call of a handler that was
/// itself installed as one.
extern "C" fn on_interrupt(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    INTERRUPTED.store(true, Ordering::Relaxed);
    let slot = usize::from(signal == libc::SIGTERM);
    let chained = CHAINED[slot].load(Ordering::Acquire);
    if chained == libc::SIG_DFL || chained == libc::SIG_IGN {
        return;
    }
    if CHAINED_SIGINFO[slot].load(Ordering::Acquire) {
        // SAFETY: `chained` is the `sa_sigaction` of the action this signal had before ours,
        // with `SA_SIGINFO`: the address of a handler with these three arguments, which the
        // kernel would have called with the very arguments it gave us. The code that
        // installed it vouched that it is async-signal-safe; it stays mapped (handlers are
        // functions of the program or of libraries it keeps loaded).
        let handler = unsafe {
            std::mem::transmute::<
                usize,
                extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
            >(chained)
        };
        handler(signal, info, context);
    } else {
        // SAFETY: as above, for a handler installed without `SA_SIGINFO`, which takes only the
        // signal's number.
        let handler = unsafe { std::mem::transmute::<usize, extern "C" fn(libc::c_int)>(chained) };
        handler(signal);
    }
}

/// Makes the calling process ignore `SIGPIPE`, as the runtime of a Rust `main` does before
/// `main` runs: a write to a pipe or socket whose reader is gone then fails with `EPIPE`
/// (`io::ErrorKind::BrokenPipe`) instead of ending the process. A worker does it whether its
/// fork server was started in `main` (where the runtime had done it already) or before `main`
/// by [`init_for_tests!`](crate::init_for_tests!) (where it had not), so a task sees the same
/// behaviour either way.
pub(crate) fn ignore_broken_pipes() -> io::Result<()> {
    ignore(&[Signal::SIGPIPE])
}

/// Makes process `pid` (0: the calling process) the leader of a new process group whose id is
/// its pid. The fork server calls it on both sides of forking a worker, so that the group
/// exists whichever side runs first.
pub(crate) fn lead_own_group(pid: u32) -> io::Result<()> {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::unistd::setpgid(pid, pid)?;
    Ok(())
}

/// A pidfd for process `pid`: a descriptor that `poll` reports readable once the process has
/// exited. It works for a process that is not a child of the caller (a worker is the fork
/// server's child), and it refers to that very process even if the pid is reused later.
///
/// # Errors
///
/// The process does not exist (it was already reaped), or the kernel is older than Linux 5.3.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: `pidfd_open(pid, flags)` takes two integers and touches no memory of the
    // caller; it returns a new descriptor or -1 with `errno` set.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just created `fd` (close-on-exec) for this call; nothing else in the
    // process knows it, so this is its one owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `InvalidData` error: what a peer sent is not what the protocol allows.
pub(crate) fn invalid_data(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A new memfd of `len` bytes (holes until written), close-on-exec, that can be sealed.
fn new_memfd(name: &std::ffi::CStr, len: usize) -> io::Result<File> {
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    let file = File::from(memfd_create(name, flags)?);
    file.set_len(len as u64)?;
    Ok(file)
}

/// Seals `file` against shrinking, growing and `more`, and against further seals.
fn seal(file: &File, more: SealFlag) -> io::Result<()> {
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL | more;
    fcntl(file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(())
}

/// The seals of `fd`; an error when it is no memfd (or other shared-memory file).
fn seals(fd: BorrowedFd<'_>) -> io::Result<SealFlag> {
    Ok(SealFlag::from_bits_truncate(fcntl(
        fd,
        FcntlArg::F_GET_SEALS,
    )?))
}

/// A shared mapping of the start of a file, unmapped when dropped. Its owners below say why
/// their accesses to it are sound; each hands out references that borrow it.
#[derive(Debug)]
struct Mapping {
    address: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps the first `len` bytes of `fd`, shared, with `protection` and `flags` besides.
    ///
    /// # Safety
    ///
    /// The file must hold `len` bytes and be sealed against shrinking: the kernel then keeps
    /// every page of the mapping backed by the file, whatever any holder of the file does (an
    /// access to a page the file no longer covers raises `SIGBUS`, which kills the process).
    unsafe fn new(
        fd: BorrowedFd<'_>,
        len: NonZeroUsize,
        protection: ProtFlags,
        flags: MapFlags,
    ) -> io::Result<Mapping> {
        // SAFETY: a new mapping at an address the kernel picks: it overlaps no memory of this
        // process. That no access to it faults is the caller's contract (see above).
        let address = unsafe { mmap(None, len, protection, MapFlags::MAP_SHARED | flags, fd, 0) }?;
        Ok(Mapping {
            address: address.cast(),
            len: len.get(),
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; no reference into it outlives its owner,
        // whose accessors all borrow it.
        let _ = unsafe { munmap(self.address.cast(), self.len) };
    }
}

const READ_WRITE: ProtFlags = ProtFlags::PROT_READ.union(ProtFlags::PROT_WRITE);

/// A 64-bit word of memory shared by the parent and one worker: a page of a memfd, mapped
/// `MAP_SHARED` in each. The parent creates it and passes the memfd to the worker (through
/// the fork server); both then see the same word, for atomic operations only. The memfd is
/// sealed against shrinking and growing before it leaves the parent; the worker can still
/// write the page at any time, so every value read from it is untrusted data (see the table
/// above and `process_pool::worker::Claims`).
pub(crate) struct SharedWord(Mapping);

// SAFETY: the mapping is only reached through `&AtomicU64`, which is `Sync`, and it stays
// mapped until the `SharedWord` is dropped; moving the owner to another thread changes nothing.
unsafe impl Send for SharedWord {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for SharedWord {}

impl SharedWord {
    /// Creates a memfd holding one zeroed page, sealed against shrinking, growing and further
    /// seals, and maps it. Returns the mapping and the memfd (close-on-exec), to pass to the
    /// other process.
    pub(crate) fn create() -> io::Result<(SharedWord, OwnedFd)> {
        let file = new_memfd(c"smol-offload-claim", page_size())?;
        // Not `F_SEAL_WRITE`: both sides write the page.
        seal(&file, SealFlag::empty())?;
        let word = SharedWord::map(file.as_fd())?;
        Ok((word, file.into()))
    }

    /// Maps the word of a memfd made by [`create`](SharedWord::create). The descriptor may be
    /// closed afterwards: the mapping keeps the file.
    ///
    /// # Errors
    ///
    /// The memfd is not sealed against shrinking, or holds less than a page (no such memfd
    /// comes from `create`), or `mmap` failed.
    pub(crate) fn map(fd: BorrowedFd<'_>) -> io::Result<SharedWord> {
        let sealed = seals(fd)?.contains(SealFlag::F_SEAL_SHRINK);
        if !sealed || nix::sys::stat::fstat(fd)?.st_size < page_size() as libc::off_t {
            return Err(invalid_data(
                "a claim page that is not a page sealed against shrinking",
            ));
        }
        let page = NonZeroUsize::new(page_size()).expect("at least 16 bytes");
        // SAFETY: the file holds at least that page and is sealed against shrinking (both
        // checked just above).
        let mapping = unsafe { Mapping::new(fd, page, READ_WRITE, MapFlags::empty()) }?;
        Ok(SharedWord(mapping))
    }

    /// The second word of the page, for a second use (the arena's, see
    /// `process_pool::out_of_line`).
    pub(crate) fn second(&self) -> &AtomicU64 {
        // SAFETY: as in `get`: the page is at least 16 bytes (`page_size` is at least 16), so
        // the second 8-byte-aligned word lies in it too, and it is only ever accessed
        // atomically here.
        unsafe { self.0.address.cast::<AtomicU64>().add(1).as_ref() }
    }

    /// The word.
    pub(crate) fn get(&self) -> &AtomicU64 {
        // SAFETY: `address` points to the start of a live, page-aligned (so 8-byte aligned)
        // mapping of a page, which stays mapped while `self` lives, and stays backed by the
        // file: the kernel upholds that, since the memfd is sealed against shrinking (checked
        // by `map`), so no access faults. This process only accesses it atomically. The other
        // process is meant to as well; one that writes it some other way, or writes any value,
        // is upheld by nobody and needs no one to: an `AtomicU64` has no invalid value, and
        // the parent treats what it reads as untrusted data (see `process_pool::worker::Claims`).
        unsafe { self.0.address.cast::<AtomicU64>().as_ref() }
    }
}

impl std::fmt::Debug for SharedWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedWord").field(self.get()).finish()
    }
}

fn page_size() -> usize {
    // SAFETY: `sysconf` reads a configuration value; it has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(16)
}

/// Sends `SIGKILL` to process `pid` and to every process of the process group `pid` leads:
/// the worker and what it forked. Call it only while `pid` is not reaped yet, so that neither
/// id can belong to another process. Errors (already gone) are ignored.
pub(crate) fn kill_worker_group(pid: u32) {
    use nix::sys::signal::{Signal, kill, killpg};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    // The worker itself first: it may have left its group (`setpgid`, `setsid`) in a task.
    let _ = kill(pid, Signal::SIGKILL);
    let _ = killpg(pid, Signal::SIGKILL);
}

/// Takes ownership of a descriptor that arrived through `SCM_RIGHTS`.
pub(crate) fn own_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process for this message only; nothing else in
    // the process knows it, so this is its one owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A new memfd holding a copy of `bytes`, sealed so that nobody (its creator included) can
/// write, shrink or grow it any more: a process it is sent to may map it and read it as
/// immutable memory.
pub(crate) fn sealed_memfd(bytes: &[u8]) -> io::Result<OwnedFd> {
    let mut file = new_memfd(c"smol-offload-payload", bytes.len())?;
    file.write_all(bytes)?;
    seal(&file, SealFlag::F_SEAL_WRITE)?;
    Ok(file.into())
}

/// A new memfd holding a copy of `bytes`, not sealed: its reader may punch out its pages as it
/// goes (see `process_pool::out_of_line::StreamPayload`).
pub(crate) fn payload_memfd(bytes: &[u8]) -> io::Result<OwnedFd> {
    let mut file = File::from(memfd_create(c"smol-offload-stream", MFdFlags::MFD_CLOEXEC)?);
    file.write_all(bytes)?;
    Ok(file.into())
}

/// A read-only mapping of a memfd that [`sealed_memfd`] made (checked): bytes that can never
/// change while they are mapped.
///
/// The parent maps these from a possibly hostile worker, so what makes the mapping safe to
/// read is checked on the file itself, not taken from the worker's word (see `new`). How large
/// a mapping the reader accepts is for the caller to bound (`process_pool::wire::MAX_RESULT`).
#[derive(Debug)]
pub(crate) struct SealedMapping(Option<Mapping>);

// SAFETY: the mapping is read-only memory that nobody can write (the memfd is sealed against
// writes), owned by this value alone: sharing or sending it between threads is like doing so
// with a `Box<[u8]>` that is never mutated.
unsafe impl Send for SealedMapping {}
// SAFETY: see `Send` just above; `&SealedMapping` only ever reads.
unsafe impl Sync for SealedMapping {}

impl SealedMapping {
    /// Maps the memfd `fd`, which must hold exactly `len` bytes, all of them written (the
    /// sender paid for the memory: mapping holes would allocate them in the reader), be sealed
    /// against writes, shrinking and growing (no holder can change a byte or fault a reader),
    /// and be an ordinary memfd; `fd` is closed (the mapping keeps the memory).
    ///
    /// # Errors
    ///
    /// The descriptor is no such memfd (a broken or hostile peer), or `mmap` failed.
    pub(crate) fn new(fd: OwnedFd, len: usize) -> io::Result<SealedMapping> {
        use std::os::unix::fs::MetadataExt;

        let needed = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
        if !seals(fd.as_fd())?.contains(needed) {
            return Err(invalid_data(
                "a shared payload that is not sealed against writes",
            ));
        }
        // Seals work on `hugetlbfs` too, whose pages are reserved, not allocated, by a mapping.
        if nix::sys::statfs::fstatfs(&fd)?.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
            return Err(invalid_data("a shared payload that is no ordinary memfd"));
        }
        let file = File::from(fd);
        let metadata = file.metadata()?;
        let size = metadata.len();
        if size != len as u64 {
            return Err(invalid_data(format!(
                "a shared payload of {size} bytes announced as {len}"
            )));
        }
        // The blocks of a memfd are its pages in memory or in swap: all of them, for a file
        // written whole. A hole would be allocated by the first access to it, in this process;
        // since the file is sealed against writes, none can be punched later.
        let held = metadata.blocks().saturating_mul(512);
        if held < size {
            return Err(invalid_data(format!(
                "a shared payload of {size} bytes of which only {held} were ever written"
            )));
        }
        let Some(len) = NonZeroUsize::new(len) else {
            return Ok(SealedMapping(None));
        };
        // Populated at once: one call instead of a page fault per few pages, since the payload
        // is about to be read whole. It only maps pages that the sender allocated already
        // (checked above), at most as many as the caller allows.
        let populate = MapFlags::MAP_POPULATE;
        // SAFETY: the file holds `len` bytes and is sealed against shrinking (no page of the
        // mapping can vanish under a reader) and against writes (no byte changes, and no page
        // can be punched out), as checked above; it is an ordinary memfd whose every page is
        // allocated already, so no access needs to allocate one.
        let mapping = unsafe { Mapping::new(file.as_fd(), len, ProtFlags::PROT_READ, populate) }?;
        Ok(SealedMapping(Some(mapping)))
    }

    /// The mapped bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        let Some(mapping) = &self.0 else {
            return &[];
        };
        // SAFETY: `address` is the start of a readable mapping of `len` bytes, alive until
        // `self` is dropped, and its contents never change and never fault: `new` checked that
        // the memfd is sealed against writes and shrinking and that every page is in it, the
        // kernel upholds the seals whoever holds the file, and this process mapped it
        // read-only.
        unsafe { std::slice::from_raw_parts(mapping.address.as_ptr(), mapping.len) }
    }
}

/// The writer's side of a per-worker payload arena (see `process_pool::out_of_line`): a memfd
/// of a fixed size, sealed against shrinking and growing, mapped writable by the one process
/// that writes it. The other process holds the descriptor and may write the file too, never
/// shrink it, so a write through the mapping never faults.
#[derive(Debug)]
pub(crate) struct ArenaMapping {
    mapping: Mapping,
    fd: OwnedFd,
}

// SAFETY: the mapping is only written, through `&mut self`, and stays mapped until the
// `ArenaMapping` is dropped; which thread owns it changes nothing.
unsafe impl Send for ArenaMapping {}

impl ArenaMapping {
    /// Makes the memfd, `len` bytes of it (no page is allocated before it is written), seals
    /// its size, and maps it.
    pub(crate) fn create(len: usize) -> io::Result<ArenaMapping> {
        let len = NonZeroUsize::new(len).ok_or(io::ErrorKind::InvalidInput)?;
        let file = new_memfd(c"smol-offload-arena", len.get())?;
        seal(&file, SealFlag::empty())?;
        // SAFETY: the file is `len` bytes and sealed against shrinking (just above, and
        // `F_SEAL_SEAL` keeps the seals as they are), whatever the other process (which gets
        // the descriptor, and may be hostile) does to it.
        let mapping = unsafe { Mapping::new(file.as_fd(), len, READ_WRITE, MapFlags::empty()) }?;
        let fd = file.into();
        Ok(ArenaMapping { mapping, fd })
    }

    /// The memfd, to send to the reader.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Copies `bytes` to the start of the arena; `false` (nothing written) when they do not fit.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.mapping.len {
            return false;
        }
        // SAFETY: the destination is the first `bytes.len() <= len` bytes of the live
        // mapping, which no reference of this process points into (this process only ever
        // writes it, through raw pointers, and never reads it back); `bytes` is memory of this
        // process, so the two do not overlap. The other process may write the same bytes at
        // the same time: that can only change what it reads back itself, as its own writes
        // would.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.mapping.address.as_ptr(),
                bytes.len(),
            );
        }
        true
    }
}

/// The worker's read-only mapping of the parent's request arena (see
/// `process_pool::out_of_line`), so that a large argument is decoded, and a `ByteBuf` in it
/// read, in place rather than copied out first.
///
/// Unlike a [`SealedMapping`], the kernel does not keep these bytes from changing: the parent
/// writes the arena again for a later argument. What keeps them still while they are read is
/// the protocol, on the parent's side of which the worker relies as it relies on the code
/// addresses the parent sends: the parent writes the arena only once the worker has answered
/// the job whose argument is there, and the worker answers only when no reference into the
/// arena is left (nothing but its own loop holds this view); when a `ByteBuf` of the argument
/// outlives its call, the worker lets go of this view instead, and tells the parent to make
/// another arena (the `ByteBuf` keeps this one mapped, and the parent never writes it again).
#[derive(Debug)]
pub(crate) struct ArenaView(Mapping);

// SAFETY: read-only memory that, by the protocol above, nobody writes while it is referenced;
// which thread holds the view changes nothing.
unsafe impl Send for ArenaView {}
// SAFETY: as above: shared references only read it.
unsafe impl Sync for ArenaView {}

impl ArenaView {
    /// Maps the arena `fd` that the parent sent, whole; `fd` is closed (the mapping keeps the
    /// file).
    ///
    /// # Errors
    ///
    /// The descriptor is no memfd sealed against shrinking, or `mmap` failed.
    pub(crate) fn map(fd: OwnedFd) -> io::Result<ArenaView> {
        if !seals(fd.as_fd())?.contains(SealFlag::F_SEAL_SHRINK) {
            return Err(invalid_data(
                "a payload arena that is not sealed against shrinking",
            ));
        }
        let file = File::from(fd);
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| invalid_data("a payload arena too large"))?;
        let len = NonZeroUsize::new(len).ok_or_else(|| invalid_data("an empty payload arena"))?;
        // SAFETY: the file holds `len` bytes and is sealed against shrinking (checked above),
        // so no page of the mapping can vanish under a reader.
        let mapping =
            unsafe { Mapping::new(file.as_fd(), len, ProtFlags::PROT_READ, MapFlags::empty()) }?;
        Ok(ArenaView(mapping))
    }

    /// The first `len` bytes of the arena; `None` if it is shorter.
    pub(crate) fn get(&self, len: usize) -> Option<&[u8]> {
        if len > self.0.len {
            return None;
        }
        // SAFETY: `address` is the start of a live readable mapping of `self.0.len >= len`
        // bytes, which no one writes while the returned reference (tied to `self`) lives: see
        // the type's documentation.
        Some(unsafe { std::slice::from_raw_parts(self.0.address.as_ptr(), len) })
    }
}

/// Whether `fd` is a memfd (or another shared-memory file): `F_GET_SEALS` works on those only.
/// Reading such a file never waits, whatever the process that sent it does.
pub(crate) fn is_memfd(fd: BorrowedFd<'_>) -> bool {
    seals(fd).is_ok()
}

/// Reads exactly `len` bytes from the start of the file `fd` into a new vector, with `pread`:
/// the kernel copies them, so what another process does to the file meanwhile (write it,
/// shrink it) can change the bytes read or make the read come up short (an `InvalidData`
/// error), never touch this process's memory beyond the vector.
pub(crate) fn read_from_start(fd: BorrowedFd<'_>, len: usize) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;

    let mut bytes: Vec<u8> = Vec::with_capacity(len);
    while bytes.len() < len {
        let done = bytes.len();
        let spare = bytes.spare_capacity_mut();
        // SAFETY: `pread` writes at most `spare.len()` bytes into the vector's spare capacity,
        // which is allocated and not aliased (it is a `&mut`); it reads no memory of this
        // process.
        let read = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                done as libc::off_t,
            )
        };
        match read {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the shared payload ends after {done} of its {len} bytes"),
                ));
            }
            n if n > 0 => {
                let n = (n as usize).min(spare.len());
                // SAFETY: `pread` initialized the `n` bytes after the first `done`, and
                // `done + n <= len <= capacity`.
                unsafe { bytes.set_len(done + n) };
            }
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(bytes)
}

/// How a call through `ErasedCall::invoke` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CallStatus {
    /// `out` holds the encoded value.
    Returned = 0,
    /// `out` holds the panic's message and location, a postcard-encoded `panics::Caught`.
    Panicked = 1,
    /// The argument could not be decoded; `out` holds the message.
    BadArgument = 2,
    /// The value could not be encoded; `out` holds the message.
    BadResult = 3,
}

impl CallStatus {
    /// The status whose `repr(u8)` is `byte`, if any.
    pub fn from_byte(byte: u8) -> Option<CallStatus> {
        use CallStatus::*;
        [Returned, Panicked, BadArgument, BadResult]
            .get(usize::from(byte))
            .copied()
    }
}

/// A function `fn(A) -> R` with its types erased: the address of the function, and the address
/// of the trampoline that knows `A` and `R`. Both stay valid in a child forked without `exec`,
/// which runs the same program image at the same addresses.
///
/// The fields are private and an `ErasedCall` is made only by [`erase`], or by the `unsafe`
/// `ErasedCall::from_wire` from the words that `ErasedCall::to_wire` gave: holding one
/// proves that its addresses are a matching trampoline and function, which is what makes
/// `ErasedCall::invoke` safe to call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErasedCall {
    trampoline: u64,
    function: u64,
}

type Trampoline = fn(u64, Reporting, &[u8], &mut Vec<u8>) -> CallStatus;

/// Erases the types of `f`, to send it to a forked worker.
pub fn erase<A, R>(f: fn(A) -> R) -> ErasedCall
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
    /// The two addresses of the call, each with what it is, for messages.
    pub(crate) fn parts(self) -> [(&'static str, usize); 2] {
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

    /// The call that a worker's request names, from the words the worker read on its socket.
    ///
    /// A worker's request loop (`process_pool::worker`) is the one caller, and the one place
    /// where words read from a socket become an `ErasedCall`. Why that is sound: the loop runs
    /// only in a worker process, forked without `exec` from the fork server, which was forked
    /// without `exec` from the application, so all three run one program image at the same
    /// addresses; and it reads the worker's end of the socket pair that the application made
    /// for this one worker and handed over through the fork server's private link. The other
    /// end stays in the application, which writes only requests built by `wire::write_request`
    /// from a call made by [`erase`].
    pub(crate) fn sent_by_parent(words: [u64; 2]) -> ErasedCall {
        // SAFETY: the words came from the parent, which wrote the `to_wire()` of a call made by
        // `erase` in the same program image (see above).
        unsafe { ErasedCall::from_wire(words) }
    }

    /// Decodes the argument in `arg`, calls the function, and appends the encoded value (or
    /// the failure: a message, or a panic's [`Caught`]) to `out`. A panic is reported as it
    /// happens as `reporting` says.
    pub(crate) fn invoke(self, reporting: Reporting, arg: &[u8], out: &mut Vec<u8>) -> CallStatus {
        // SAFETY: an `ErasedCall` is made only by `erase`, which pairs a `fn(A) -> R` with its
        // `trampoline::<A, R>`, or by `from_wire`, whose caller vouches that the words are the
        // same pair in this program image.
        unsafe { call_address(self.trampoline, self.function, reporting, arg, out) }
    }
}

/// A fixed point of the program image: a remote job names its function and trampoline by their
/// offsets from this static, which stay the same in every process that runs the same
/// executable, wherever the loader placed it.
static ANCHOR: u8 = 0;

pub(crate) fn anchor_address() -> i64 {
    std::ptr::addr_of!(ANCHOR) as usize as i64
}

impl ErasedCall {
    /// The call as two offsets from a fixed symbol of the executable, valid in any process that
    /// runs the same build (a remote pool's job names its function so) when the call's code lies
    /// in the executable, as [`remote_refusal`](ErasedCall::remote_refusal) checks.
    pub fn to_portable(self) -> [i64; 2] {
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
    /// that runs the very same executable (same build) as this one, of code that lies in that
    /// executable (the anchor included). Any other offsets are addresses of arbitrary code,
    /// which the call, once invoked, would jump to.
    pub unsafe fn from_portable(offsets: [i64; 2]) -> ErasedCall {
        let anchor = anchor_address();
        ErasedCall {
            trampoline: anchor.wrapping_add(offsets[0]) as u64,
            function: anchor.wrapping_add(offsets[1]) as u64,
        }
    }
}

/// A loaded ELF object of this process (the executable, a shared library, the vDSO): the path
/// the loader knows it by (empty for the executable), its load base, and the span of its
/// loadable segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LoadedObject {
    pub(crate) path: String,
    pub(crate) base: usize,
    pub(crate) span: std::ops::Range<usize>,
}

/// The objects loaded in this process at one moment, the executable first, and how many objects
/// the loader had unloaded by then (`dlclose`).
#[derive(Debug, Default)]
pub(crate) struct LoadedCode {
    pub(crate) objects: Vec<LoadedObject>,
    pub(crate) unloaded: u64,
}

impl LoadedCode {
    /// The objects loaded now, as `dl_iterate_phdr` lists them.
    pub(crate) fn now() -> LoadedCode {
        let mut code = LoadedCode::default();
        // SAFETY: `collect_object` has the signature `dl_iterate_phdr` expects, and `data`
        // points to `code`, which outlives the call; the loader calls back on this thread only,
        // before `dl_iterate_phdr` returns.
        unsafe { libc::dl_iterate_phdr(Some(collect_object), (&raw mut code).cast()) };
        code
    }

    /// The object whose loadable segments hold `address`.
    pub(crate) fn containing(&self, address: usize) -> Option<&LoadedObject> {
        self.objects
            .iter()
            .find(|object| object.span.contains(&address))
    }

    /// Whether `object` is the executable.
    pub(crate) fn is_executable(&self, object: &LoadedObject) -> bool {
        self.objects.first() == Some(object)
    }
}

/// Records one object for [`LoadedCode::now`]; called by `dl_iterate_phdr` for each loaded
/// object in turn, the executable first.
///
/// # Safety
///
/// Only `dl_iterate_phdr` calls it, as `LoadedCode::now` asks: with the loader's description of
/// one object, and with `data` pointing to the `LoadedCode` being filled.
unsafe extern "C" fn collect_object(
    info: *mut libc::dl_phdr_info,
    size: usize,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: `data` is the `&mut LoadedCode` that `LoadedCode::now` passed to
    // `dl_iterate_phdr`, which is blocked in that call: nothing else refers to it meanwhile.
    let code = unsafe { &mut *data.cast::<LoadedCode>() };
    // SAFETY: the loader passes a valid `dl_phdr_info`, alive during the call.
    let info = unsafe { &*info };
    let path = if info.dlpi_name.is_null() {
        String::new()
    } else {
        // SAFETY: a non-null `dlpi_name` is a NUL-terminated string of the loader's, alive
        // during the call.
        let name = unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) };
        name.to_string_lossy().into_owned()
    };
    let headers = if info.dlpi_phdr.is_null() {
        &[][..]
    } else {
        // SAFETY: `dlpi_phdr` points to the object's `dlpi_phnum` program headers, mapped while
        // the object is loaded, which it stays during the call (the loader holds its lock).
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
    };
    let base = info.dlpi_addr as usize;
    // From the lowest start to the highest end of the loadable segments; empty without any.
    let (mut lowest, mut highest) = (usize::MAX, 0);
    for header in headers
        .iter()
        .filter(|header| header.p_type == libc::PT_LOAD)
    {
        let start = base.wrapping_add(header.p_vaddr as usize);
        lowest = lowest.min(start);
        highest = highest.max(start.wrapping_add(header.p_memsz as usize));
    }
    let span = lowest..highest.max(lowest);
    // The counter is there when the loader's structure is as long as this crate's (glibc's is).
    if size >= std::mem::size_of::<libc::dl_phdr_info>() {
        code.unloaded = info.dlpi_subs;
    }
    code.objects.push(LoadedObject { path, base, span });
    0
}

/// Where the executable's code and statics lie in this process, found once: most calls name
/// functions there, and checking that costs two comparisons an address.
pub(crate) fn executable_span() -> &'static std::ops::Range<usize> {
    static EXECUTABLE: std::sync::OnceLock<std::ops::Range<usize>> = std::sync::OnceLock::new();
    EXECUTABLE.get_or_init(|| {
        LoadedCode::now()
            .objects
            .first()
            .map_or(0..0, |object| object.span.clone())
    })
}

/// The code that the fork server had when it was forked, which is what every worker has, at
/// the same addresses (see [`remember_code_of_workers`]).
static CODE_OF_WORKERS: std::sync::OnceLock<LoadedCode> = std::sync::OnceLock::new();

/// Records the objects loaded now, just before the fork server is forked: a call whose code
/// lies in one of them (and not in one loaded, or reloaded, later) can run in its workers.
pub(crate) fn remember_code_of_workers() {
    let _ = CODE_OF_WORKERS.set(LoadedCode::now());
}

/// The code loaded when the fork server was forked (none: no worker was ever forked), which is
/// the code every worker has.
pub(crate) fn code_of_workers() -> Option<&'static LoadedCode> {
    CODE_OF_WORKERS.get()
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
    reporting: Reporting,
    arg: &[u8],
    out: &mut Vec<u8>,
) -> CallStatus {
    // SAFETY: by this function's contract, `trampoline` is the address of a
    // `trampoline::<A, R>` of this program image, which has the type `Trampoline`.
    let trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(trampoline as usize) };
    trampoline(function, reporting, arg, out)
}

/// Decodes `A`, calls `f`, and appends the encoded `R` (or the panic's message) to `out`.
fn trampoline<A, R>(
    function: u64,
    reporting: Reporting,
    arg: &[u8],
    out: &mut Vec<u8>,
) -> CallStatus
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
    let outcome = panics::catch(reporting, || {
        let arg: A = codec::decode(arg).map_err(|err| (CallStatus::BadArgument, err.message))?;
        let value = f(arg);
        codec::encode_into(&value, out).map_err(|err| (CallStatus::BadResult, err.message))?;
        Ok(())
    });
    if !matches!(outcome, Ok(Ok(()))) {
        out.truncate(start);
    }
    match outcome {
        Ok(Ok(())) => CallStatus::Returned,
        Ok(Err((status, message))) => {
            out.extend_from_slice(message.as_bytes());
            status
        }
        Err(caught) => {
            // Two strings: nothing in them can fail to encode.
            let _ = codec::encode_into(&caught, out);
            CallStatus::Panicked
        }
    }
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

    static SEEN_BY_THE_PROGRAM: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn programs_handler(_signal: libc::c_int) {
        SEEN_BY_THE_PROGRAM.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn caught_interrupts_reach_the_programs_handler_and_get_it_back() {
        let programs = programs_handler as extern "C" fn(_) as libc::sighandler_t;
        // SAFETY: all-zero bytes are a valid `sigaction`.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = programs;
        swap_action(libc::SIGTERM, Some(&action)).unwrap();
        let sigint_before = swap_action(libc::SIGINT, None).unwrap().sa_sigaction;

        let first = catch_interrupts().unwrap();
        let second = catch_interrupts().unwrap();
        assert!(!interrupted());
        // SAFETY: `raise` has no preconditions; the handler runs on this thread before it
        // returns.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        assert!(interrupted());
        assert_eq!(SEEN_BY_THE_PROGRAM.load(Ordering::Relaxed), 1);
        drop(first);
        let ours = on_interrupt as extern "C" fn(_, _, _) as libc::sighandler_t;
        assert_eq!(swap_action(libc::SIGTERM, None).unwrap().sa_sigaction, ours);
        drop(second);
        assert_eq!(
            swap_action(libc::SIGTERM, None).unwrap().sa_sigaction,
            programs
        );
        assert_eq!(
            swap_action(libc::SIGINT, None).unwrap().sa_sigaction,
            sigint_before
        );

        action.sa_sigaction = libc::SIG_DFL;
        swap_action(libc::SIGTERM, Some(&action)).unwrap();
    }

    #[test]
    fn a_sealed_mapping_needs_every_page_written_and_an_ordinary_memfd() {
        use std::io::Write;
        let whole = sealed_memfd(&[5; 100_000]).unwrap();
        assert_eq!(
            SealedMapping::new(whole, 100_000).unwrap().as_slice()[99_999],
            5
        );
        // Half written, then sealed: the holes would be allocated by the reader.
        let fd =
            nix::sys::memfd::memfd_create(c"half", nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING)
                .unwrap();
        let mut file = std::fs::File::from(fd);
        file.set_len(1 << 20).unwrap();
        file.write_all(&[1; 1 << 19]).unwrap();
        let seals = nix::fcntl::SealFlag::F_SEAL_SHRINK
            | nix::fcntl::SealFlag::F_SEAL_GROW
            | nix::fcntl::SealFlag::F_SEAL_WRITE;
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_ADD_SEALS(seals)).unwrap();
        let err = SealedMapping::new(file.into(), 1 << 20).unwrap_err();
        assert!(
            err.to_string()
                .contains("of which only 524288 were ever written"),
            "{err}"
        );
        // A huge-page memfd can be sealed too, where the kernel has huge pages to give.
        if let Ok(fd) = nix::sys::memfd::memfd_create(
            c"huge",
            nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING | nix::sys::memfd::MFdFlags::MFD_HUGETLB,
        ) {
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_ADD_SEALS(seals)).unwrap();
            let err = SealedMapping::new(fd, 0).unwrap_err();
            assert!(err.to_string().contains("no ordinary memfd"), "{err}");
        }
    }

    #[test]
    fn erased_call_round_trips_in_process() {
        let call = erase(double);
        let mut out = Vec::new();
        let arg = postcard::to_allocvec(&21u32).unwrap();
        let status = call.invoke(Reporting::Quiet, &arg, &mut out);
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
        assert_eq!(
            back.invoke(Reporting::Quiet, &arg, &mut out),
            CallStatus::Returned
        );
        assert_eq!(postcard::from_bytes::<u32>(&out).unwrap(), 8);
    }

    #[test]
    fn erased_call_crosses_the_network_as_two_offsets() {
        let call = erase(double);
        // SAFETY: the offsets are the `to_portable()` of a call made in this very process.
        let back = unsafe { ErasedCall::from_portable(call.to_portable()) };
        assert_eq!(back, call);
    }

    /// The address of `getpid` in the C library, a shared object loaded at start.
    fn address_in_the_c_library() -> u64 {
        // SAFETY: the name is NUL-terminated; `RTLD_DEFAULT` searches the objects loaded now.
        let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"getpid".as_ptr()) };
        assert!(!symbol.is_null());
        symbol as usize as u64
    }

    #[test]
    fn code_of_the_executable_is_accepted_by_both_pools() {
        let call = erase(double);
        assert_eq!(call.refusal_in_workers(), None);
        assert_eq!(call.remote_refusal(), None);
    }

    // The calls below pair addresses that `erase` never would: they are only checked, never
    // invoked.

    #[test]
    fn code_of_a_shared_library_is_refused_remotely_naming_it() {
        let library = address_in_the_c_library();
        let function = ErasedCall {
            function: library,
            ..erase(double)
        };
        let refusal = function.remote_refusal().unwrap();
        assert!(
            refusal.contains("the function lies in the shared library /"),
            "{refusal}"
        );
        assert!(refusal.contains("libc.so"), "{refusal}");
        let trampoline = ErasedCall {
            trampoline: library,
            ..erase(double)
        };
        let refusal = trampoline.remote_refusal().unwrap();
        assert!(refusal.contains("trampoline"), "{refusal}");
        assert!(refusal.contains("libc.so"), "{refusal}");
    }

    #[test]
    fn code_of_a_shared_library_runs_in_workers_only_if_the_fork_server_had_it() {
        let call = ErasedCall {
            function: address_in_the_c_library(),
            ..erase(double)
        };
        let now = LoadedCode::now();
        // Loaded before the server was forked, and nothing unloaded since: the same code.
        let at_fork = LoadedCode::now();
        assert_eq!(call.refusal_against(Some(&at_fork), &now), None);
        // Loaded after: refused, naming the library.
        let without = LoadedCode {
            objects: at_fork.objects[..1].to_vec(),
            unloaded: at_fork.unloaded,
        };
        let refusal = call.refusal_against(Some(&without), &now).unwrap();
        assert!(refusal.contains("libc.so"), "{refusal}");
        assert!(refusal.contains("loaded (or reloaded) after"), "{refusal}");
        // A library unloaded since: another may have been loaded at the same address.
        let unloaded_since = LoadedCode {
            objects: at_fork.objects.clone(),
            unloaded: now.unloaded + 1,
        };
        let refusal = call.refusal_against(Some(&unloaded_since), &now).unwrap();
        assert!(refusal.contains("was unloaded"), "{refusal}");
    }

    #[test]
    fn an_address_in_no_loaded_object_is_refused_by_both_pools() {
        let nowhere = ErasedCall {
            function: 16,
            ..erase(double)
        };
        let refusal = nowhere.refusal_in_workers().unwrap();
        assert!(
            refusal.contains("the function at 0x10 lies in no loaded object"),
            "{refusal}"
        );
        let refusal = nowhere.remote_refusal().unwrap();
        assert!(
            refusal.contains("the function at 0x10 lies in no loaded object"),
            "{refusal}"
        );
    }

    #[test]
    fn erased_call_reports_panic_and_bad_argument() {
        let call = erase(fail);
        let mut out = Vec::new();
        let arg = postcard::to_allocvec(&"boom".to_string()).unwrap();
        panics::install_hook();
        let status = call.invoke(Reporting::Quiet, &arg, &mut out);
        assert_eq!(status, CallStatus::Panicked);
        let caught: panics::Caught = codec::decode(&out).unwrap();
        assert_eq!(caught.message, "boom");
        assert!(caught.location.unwrap().starts_with(file!()));

        out.clear();
        let status = call.invoke(Reporting::Quiet, &[0xff], &mut out);
        assert_eq!(status, CallStatus::BadArgument);
        assert!(!out.is_empty());
    }
}
