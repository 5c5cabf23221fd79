//! Workers that attack the memory they share with the application: a task that truncates, or
//! maps and scribbles over, every descriptor it holds and every shared memory it maps, and a
//! worker that replies with a sealed memfd larger than a reply may be, or one whose pages were
//! never written. None may fault the application (a `SIGBUS` on a mapping shrunk under it
//! would kill it), make it map more than the limit, or cost any task but the hostile worker's
//! own; the pool goes on working, and the application exits normally.
//!
//! The hostile tests run in a child process (see `common::run_child`) and assert there on what
//! survives: the child must pass, so a signal that kills it fails the test. The hostile tasks
//! spare files on disk: a test must not damage what a descriptor it inherited points to.

// A hostile task must truncate, map and write by raw descriptor and address: that is what it
// is testing.
#![allow(unsafe_code)]

use std::future::Future;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use smol_offload::{ByteBuf, Error, Executor, ProcessPool};

mod common;

/// The longest a child test waits for what must happen promptly.
const SHORT: Duration = Duration::from_secs(20);

/// How long a hostile task that sent a malformed reply sleeps: far longer than [`SHORT`], so
/// that only the pool's kill ends it in time.
const LONG: Duration = Duration::from_secs(60);

#[ctor::ctor]
fn start_fork_server() {
    common::reap_orphans();
    smol_offload::init();
}

/// `future`, or a panic after [`SHORT`].
fn promptly<T>(what: &str, future: impl Future<Output = T>) -> T {
    common::block_on_within(SHORT, what, future)
}

/// Runs the child test `name` of this binary, which must pass (not be killed by a signal).
fn run_child(name: &'static str) {
    let stdout = common::run_child(name, "SMOL_OFFLOAD_TEST_HOSTILE_MEMORY", &[]);
    // What the hostile task reached, for whoever reads the test's output.
    print!("{stdout}");
}

/// `len` bytes that depend on `seed` and on their place, made a block of 256 at a time (the
/// pattern repeats): byte by byte, several MiB take a while in a debug build.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let block: Vec<u8> = (0..=255u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect();
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        let more = (len - bytes.len()).min(block.len());
        bytes.extend_from_slice(&block[..more]);
    }
    bytes
}

/// An innocent task: checks its argument, takes a few milliseconds (so that the pool sends
/// nothing ahead to its busy worker), and answers with its worker's pid and the pattern of
/// `seed + 1`, `len` bytes long.
fn innocent((seed, bytes, len): (u8, ByteBuf, usize)) -> (u32, ByteBuf) {
    assert!(
        bytes.as_slice() == pattern(bytes.len(), seed),
        "the argument arrived intact"
    );
    std::thread::sleep(Duration::from_millis(3));
    (
        std::process::id(),
        ByteBuf::from(pattern(len, seed.wrapping_add(1))),
    )
}

/// The sizes the innocent tasks send and receive: through the socket, the arenas, and fresh
/// sealed memfds (which the application maps).
const SIZES: [usize; 4] = [10, 200_000, 1024 * 1024, 6 * 1024 * 1024];

/// Runs `count` innocent tasks at once, of every size both ways, and checks every result;
/// returns the pids of the workers that ran them.
fn run_innocents(pool: &ProcessPool, count: usize) -> Vec<u32> {
    let tasks: Vec<_> = (0..count)
        .map(|n| {
            let seed = n as u8;
            let (arg_len, len) = (SIZES[n % 4], SIZES[(n / 4 + n) % 4]);
            let task = pool.run(innocent, (seed, ByteBuf::from(pattern(arg_len, seed)), len));
            (seed, len, task)
        })
        .collect();
    let mut pids = Vec::new();
    for (seed, len, task) in tasks {
        let (pid, back) = promptly("an innocent task", task).unwrap();
        assert!(
            back.as_slice() == pattern(len, seed.wrapping_add(1)),
            "{len} bytes"
        );
        pids.push(pid);
    }
    pids
}

/// What descriptor `fd` of this process refers to, if it is open.
fn target_of(fd: RawFd) -> Option<String> {
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    Some(target.to_string_lossy().into_owned())
}

/// Whether a descriptor's or a mapping's target is a file on disk, which no test may damage;
/// everything else (a memfd, a socket, a pipe) is fair game for a hostile task.
fn on_disk(target: &str) -> bool {
    target.starts_with('/') && !target.starts_with("/memfd:")
}

/// The descriptors 3 to 63 that a hostile task attacks, with their targets.
fn attacked_descriptors() -> Vec<(RawFd, String)> {
    (3..64)
        .filter_map(|fd| Some((fd, target_of(fd)?)))
        .filter(|(_, target)| !on_disk(target))
        .collect()
}

/// A shared mapping of a memfd in this process, from `/proc/self/maps`.
struct SharedMapping {
    start: usize,
    end: usize,
    name: String,
}

/// The shared mappings of memfds in this process: the memory it shares with another process,
/// whether or not it still holds a descriptor of it.
fn shared_memfd_mappings() -> Vec<SharedMapping> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let name = fields.nth(3)?.to_owned();
            if !perms.ends_with('s') || !name.starts_with("/memfd:") {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(SharedMapping {
                start: usize::from_str_radix(start, 16).ok()?,
                end: usize::from_str_radix(end, 16).ok()?,
                name,
            })
        })
        .collect()
}

/// Grows the file to 1 GiB, then truncates it to nothing (in that order, so that it stays
/// empty), and says which worked.
fn grow_then_truncate(fd: BorrowedFd<'_>) -> String {
    let grown = nix::unistd::ftruncate(fd, 1 << 30).is_ok();
    let truncated = nix::unistd::ftruncate(fd, 0).is_ok();
    format!("grown: {grown}, truncated: {truncated}")
}

/// The hostile task of failure 1 of issue 15: truncates every descriptor it holds (3 to 63),
/// and every memfd it maps, reopened by name through `/proc/self/map_files` (which takes
/// `CAP_SYS_ADMIN`: as root, it reaches the files whose descriptors the worker closed), then
/// returns normally. Returns its pid and what it reached.
fn truncate_everything(_: ()) -> (u32, Vec<String>) {
    let mut reached = Vec::new();
    for (fd, target) in attacked_descriptors() {
        // SAFETY: `fd` was open a moment ago and nothing in this worker closes it while its
        // task runs; truncating it is what this hostile task is about.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        reached.push(format!("descriptor {target}: {}", grow_then_truncate(fd)));
    }
    for mapping in shared_memfd_mappings() {
        let path = format!("/proc/self/map_files/{:x}-{:x}", mapping.start, mapping.end);
        if let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            let what = grow_then_truncate(file.as_fd());
            reached.push(format!("mapping {}: {what}", mapping.name));
        }
    }
    (std::process::id(), reached)
}

/// Pseudo-random bytes.
struct Garbage(u64);

impl Garbage {
    fn fill(&mut self, bytes: &mut [u8]) {
        for byte in bytes {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *byte = self.0 as u8;
        }
    }
}

/// The most a scribbling task maps of one descriptor.
const MOST_MAPPED: usize = 64 * 1024 * 1024;

/// Maps the file `fd` shared and writable, as large as `fstat` says (growing an empty one to
/// 1 MiB first), writes garbage over all of it, and unmaps it; says how that went.
fn scribble_through(fd: BorrowedFd<'_>, garbage: &mut Garbage) -> String {
    use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
    let size = |fd| nix::sys::stat::fstat(fd).map_or(0, |stat| stat.st_size as usize);
    if size(fd) == 0 {
        let _ = nix::unistd::ftruncate(fd, 1024 * 1024);
    }
    let Some(len) = std::num::NonZeroUsize::new(size(fd).min(MOST_MAPPED)) else {
        return "empty".to_owned();
    };
    // SAFETY: a new mapping at an address the kernel picks, which overlaps nothing of this
    // process.
    let mapped = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd,
            0,
        )
    };
    let Ok(address) = mapped else {
        return format!("not mapped ({})", mapped.unwrap_err());
    };
    // SAFETY: the mapping just made, `len` bytes, writable, and referenced by nothing else in
    // this process (a fault here, on a file shrunk meanwhile, would only kill this worker).
    let bytes = unsafe { std::slice::from_raw_parts_mut(address.as_ptr().cast::<u8>(), len.get()) };
    garbage.fill(bytes);
    // SAFETY: unmaps exactly the mapping made above; `bytes` is not used again.
    let _ = unsafe { munmap(address, len.get()) };
    format!("{} bytes scribbled", len.get())
}

/// The hostile task that scribbles: maps every descriptor it holds (3 to 63) and writes
/// garbage over it, then writes garbage over every memfd it already maps shared (after making
/// the mapping writable, where the seals let it), such as its claim page and the pool's request
/// arena; then returns normally. Returns its pid and what it reached.
fn scribble_over_everything(seed: u64) -> (u32, Vec<String>) {
    let mut garbage = Garbage(seed | 1);
    let mut reached = Vec::new();
    for (fd, target) in attacked_descriptors() {
        // SAFETY: as in `truncate_everything`.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let what = scribble_through(fd, &mut garbage);
        reached.push(format!("descriptor {target}: {what}"));
    }
    for mapping in shared_memfd_mappings() {
        let len = mapping.end - mapping.start;
        let Some(address) = std::ptr::NonNull::new(mapping.start as *mut std::ffi::c_void) else {
            continue;
        };
        // SAFETY: changes the protection of a whole mapping of this process, listed in
        // `/proc/self/maps` a moment ago; nothing else maps or unmaps while the task runs.
        let writable = unsafe {
            nix::sys::mman::mprotect(
                address,
                len,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
            )
        };
        if writable.is_err() {
            reached.push(format!("mapping {}: read-only", mapping.name));
            continue;
        }
        // SAFETY: the mapping is live and now writable, and no reference into it is in use
        // while this task runs (the worker reads its arguments' memory only around calls, and
        // its claim word only between them); writing garbage into the memory this worker
        // shares is what this hostile task is about.
        let bytes = unsafe { std::slice::from_raw_parts_mut(mapping.start as *mut u8, len) };
        garbage.fill(bytes);
        reached.push(format!("mapping {}: {len} bytes scribbled", mapping.name));
    }
    (std::process::id(), reached)
}

/// The application's peak resident memory, from `/proc/self/status`, in bytes.
fn peak_resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Runs the hostile task `hostile` on a pool of three workers, beside innocent tasks on the
/// others, and checks what survives: every innocent result, the pool (new tasks of every size
/// succeed, on three workers), and the application (this child, which must exit normally).
/// Returns the hostile task's outcome.
fn survive(hostile: fn(u64) -> (u32, Vec<String>)) -> Result<(u32, Vec<String>), Error> {
    let pool = ProcessPool::new(3).unwrap();
    // Every worker gets large payloads both ways: it holds its reply arena, and maps the
    // pool's request arena, by the time the hostile task runs.
    run_innocents(&pool, 12);
    let hostile_task = pool.run(hostile, 0x2545_f491_4f6c_dd1d);
    let pids = run_innocents(&pool, 24);
    let outcome = promptly("the hostile task", hostile_task);
    match &outcome {
        Ok((pid, reached)) => {
            println!("the hostile task on worker {pid} reached:");
            for what in reached {
                println!("  {what}");
            }
            assert!(
                reached.iter().any(|what| what.contains("/memfd:")),
                "it reached no shared memory: {reached:?}"
            );
        }
        Err(err) => println!("the hostile task failed: {err}"),
    }
    // The pool works, at full size: new tasks of every size, on every worker.
    let after = run_innocents(&pool, 24);
    assert_eq!(pool.pids().len(), 3);
    println!(
        "innocent tasks ran on workers {:?}, then on {:?}",
        dedup(pids),
        dedup(after)
    );
    drop(pool);
    outcome
}

fn dedup(mut pids: Vec<u32>) -> Vec<u32> {
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The child half of `a_task_that_truncates_every_descriptor_leaves_the_application_alive`.
#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_truncates_every_descriptor() {
    if !common::in_child("SMOL_OFFLOAD_TEST_HOSTILE_MEMORY") {
        return;
    }
    let (pid, reached) = survive(|_| truncate_everything(())).unwrap();
    // Nothing shared could be shrunk or grown: every memfd the pool maps is sealed.
    for what in reached.iter().filter(|what| what.contains("smol-offload")) {
        assert!(
            what.ends_with("grown: false, truncated: false"),
            "worker {pid}: {what}"
        );
    }
    println!("child_truncates_every_descriptor: done");
}

#[test]
fn a_task_that_truncates_every_descriptor_leaves_the_application_alive() {
    run_child("child_truncates_every_descriptor");
}

/// The child half of `a_task_that_scribbles_over_its_shared_memory_fails_only_itself`.
#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_scribbles_over_every_descriptor() {
    if !common::in_child("SMOL_OFFLOAD_TEST_HOSTILE_MEMORY") {
        return;
    }
    // The garbage lands on the worker's claim page among the rest: a word past every job the
    // pool sent, which no worker can claim. The pool finds out at the reply, and the worker is
    // killed as one that sent a malformed reply: its own task fails, nothing else. (Garbage
    // that happened to look like a claim word would cost its own tasks only, too.)
    let err = survive(scribble_over_everything).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("sent a malformed reply (a claim word of")
            && message.contains("and was killed"),
        "{message}"
    );
    println!("child_scribbles_over_every_descriptor: done");
}

#[test]
fn a_task_that_scribbles_over_its_shared_memory_fails_only_itself() {
    run_child("child_scribbles_over_every_descriptor");
}

/// Replies to request 0 (the first a fresh worker gets) with a sealed memfd of `size` bytes,
/// never written (every page a hole), on every socket the worker holds (its link is its only
/// one); then sleeps until the pool kills the worker.
fn reply_with_sealed_holes(size: u64) -> u64 {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(c"holes", MFdFlags::MFD_ALLOW_SEALING).unwrap();
    nix::unistd::ftruncate(&fd, size as i64).unwrap();
    let seals = SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SEAL;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).unwrap();
    // `len: u32 | id: u64 | status: u8 | size: u64`, status bit 0x80: a sealed reply.
    let mut frame = Vec::new();
    frame.extend_from_slice(&(8u32 + 1 + 8).to_le_bytes());
    frame.extend_from_slice(&0u64.to_le_bytes());
    frame.push(0x80);
    frame.extend_from_slice(&size.to_le_bytes());
    let fds = [fd.as_raw_fd()];
    for socket in common::sockets() {
        let _ = sendmsg::<()>(
            socket,
            &[IoSlice::new(&frame)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
    }
    std::thread::sleep(LONG);
    unreachable!("the pool kills a worker that sends a malformed reply")
}

/// The child half of `a_sealed_reply_beyond_the_limit_or_never_written_is_never_mapped`.
#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_gets_sealed_replies_it_must_not_map() {
    if !common::in_child("SMOL_OFFLOAD_TEST_HOSTILE_MEMORY") {
        return;
    }
    let cases = [
        // One page past the largest reply: mapped (and populated), it would take 4 GiB.
        ((1u64 << 32) + 4096, "above the 4294967295-byte limit"),
        // Under the limit, but the worker never paid for its pages: mapping them would
        // allocate them, in the application.
        (256 * 1024 * 1024, "of which only 0 were ever written"),
    ];
    for (size, why) in cases {
        // A fresh pool each time: the frame answers request 0.
        let pool = ProcessPool::new(2).unwrap();
        let err =
            promptly("the hostile task", pool.run(reply_with_sealed_holes, size)).unwrap_err();
        let message = err.to_string();
        assert!(err.is_worker_died(), "{message}");
        assert!(
            message.contains("sent a malformed reply") && message.contains(why),
            "{size} bytes: {message}"
        );
        // The pool works: its replacement worker, and the other, answer large results too.
        run_innocents(&pool, 8);
        assert_eq!(pool.pids().len(), 2);
    }
    let peak = peak_resident();
    assert!(
        peak < 1 << 30,
        "the application's memory peaked at {} MiB: it mapped a reply",
        peak >> 20
    );
    println!("child_gets_sealed_replies_it_must_not_map: done");
}

#[test]
fn a_sealed_reply_beyond_the_limit_or_never_written_is_never_mapped() {
    run_child("child_gets_sealed_replies_it_must_not_map");
}

/// The memfds this worker holds descriptors of, and how many sockets.
fn held(_: ()) -> (Vec<String>, usize) {
    let memfds = (0..1024)
        .filter_map(target_of)
        .filter(|target| target.starts_with("/memfd:"))
        .collect();
    (memfds, common::sockets().len())
}

#[test]
fn a_worker_holds_no_descriptor_of_memory_the_application_maps() {
    // Two pools: the second's worker was forked after the first's, and inherited nothing of
    // it from the fork server.
    let _first = ProcessPool::new(1).unwrap();
    let pool = ProcessPool::new(1).unwrap();
    // A fresh worker maps its claim page and closes the descriptor: it holds its socket only.
    let (memfds, sockets) = promptly("a task", pool.run(held, ())).unwrap();
    assert_eq!((memfds.as_slice(), sockets), (&[][..], 1));
    // After large payloads both ways (it maps the pool's request arena, and writes its reply
    // arena, which the application reads with `pread` and never maps), and a larger one in a
    // sealed memfd: its own reply arena only.
    for (seed, len) in [(1u8, 1024 * 1024), (2, 6 * 1024 * 1024)] {
        let arg = (seed, ByteBuf::from(pattern(len, seed)), len);
        promptly("a large task", pool.run(innocent, arg)).unwrap();
    }
    let (memfds, sockets) = promptly("a task", pool.run(held, ())).unwrap();
    assert_eq!(sockets, 1);
    assert_eq!(memfds, ["/memfd:smol-offload-arena (deleted)"]);
}
