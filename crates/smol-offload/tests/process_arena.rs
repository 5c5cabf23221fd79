//! The per-worker payload arenas of the process pool: payloads of 128 KiB to 4 MiB go through a
//! memfd that each side of a worker keeps and writes again, larger ones through a fresh sealed
//! memfd. Values of every size around both limits cross intact, in turn and many in flight at
//! once (when an arena is busy, a payload takes a fresh memfd); a worker that scribbles over
//! its arenas garbles only its own results; a worker that sends arena replies that do not hold
//! together, or dies in the middle of one, fails only its task, and its replacement works.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use smol_offload::{ByteBuf, Error, Executor, ProcessPool};

mod common;

use common::block_on;

#[ctor::ctor]
fn start_fork_server() {
    smol_offload::init();
}

/// Payloads longer than this go through shared memory (`out_of_line::THRESHOLD`).
const THRESHOLD: usize = 128 * 1024;
/// Payloads up to this go through the arenas (`arena::ARENA_MAX`).
const ARENA_MAX: usize = 4 * 1024 * 1024;
/// The postcard length prefix of a byte buffer between 2 MiB and 256 MiB.
const VARINT: usize = 4;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Checks the argument against the pattern `seed` made, and answers with the pattern of
/// `seed + 1`, `len` bytes long.
fn check_and_answer((seed, bytes, len): (u8, ByteBuf, usize)) -> ByteBuf {
    assert!(
        bytes.as_slice() == pattern(bytes.len(), seed),
        "the argument arrived intact"
    );
    ByteBuf::from(pattern(len, seed.wrapping_add(1)))
}

/// Sends `bytes` to `len` bytes and back, and checks both ways.
async fn round_trip(pool: &ProcessPool, seed: u8, len: usize) {
    let back = pool
        .run(
            check_and_answer,
            (seed, ByteBuf::from(pattern(len, seed)), len),
        )
        .await
        .unwrap();
    assert!(
        back.as_slice() == pattern(len, seed.wrapping_add(1)),
        "{len} bytes"
    );
    assert_eq!(back.is_shared(), len + VARINT > THRESHOLD, "{len} bytes");
}

#[test]
fn sizes_around_both_limits_cross_in_turn_growing_and_shrinking() {
    let pool = ProcessPool::new(1).unwrap();
    // A byte buffer of `ARENA_MAX - VARINT` bytes encodes to exactly `ARENA_MAX`: the last
    // size of the arena; one more byte takes a sealed memfd. The argument has a seed byte
    // before the buffer and a length after it.
    let sizes = [
        THRESHOLD + 1,
        1024 * 1024,
        ARENA_MAX - VARINT - 1,
        ARENA_MAX - VARINT,
        ARENA_MAX - VARINT + 1,
        ARENA_MAX + 1,
        2 * ARENA_MAX,
        THRESHOLD + 7,
        ARENA_MAX - VARINT,
        200_000,
        3,
        2 * THRESHOLD,
    ];
    block_on(async {
        for (n, len) in sizes.into_iter().enumerate() {
            round_trip(&pool, n as u8, len).await;
        }
    });
}

#[test]
fn many_large_values_in_flight_share_the_arenas_and_fresh_memfds() {
    // More tasks than workers, sent ahead to busy workers: their arguments cannot all take
    // the arena of their worker, and results come faster than the parent reads some of them.
    let pool = ProcessPool::new(2).unwrap();
    block_on(async {
        let tasks: Vec<_> = (0..40)
            .map(|n| {
                let len = THRESHOLD + 1 + n * 65_537;
                let seed = n as u8;
                let arg = (seed, ByteBuf::from(pattern(len, seed)), len);
                (len, seed, pool.run(check_and_answer, arg))
            })
            .collect();
        for (len, seed, task) in tasks {
            let back = task.await.unwrap();
            assert!(back.as_slice() == pattern(len, seed + 1), "{len} bytes");
        }
        // And in turn again afterwards.
        round_trip(&pool, 90, 1024 * 1024).await;
    });
}

/// The descriptors of the payload arenas this process holds.
fn arena_fds() -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().contains("smol-offload-arena"))
        })
        .filter_map(|entry| entry.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// In the worker: starts a thread that writes garbage over the arenas whose descriptors the
/// worker holds (its reply arena: it maps the parent's request arena and closes the
/// descriptor), again and again, for as long as the worker lives. Returns how many it found.
fn scribble_over_arenas(_: ()) -> usize {
    let fds = arena_fds();
    let found = fds.len();
    std::thread::spawn(move || {
        let mut garbage = vec![0u8; 64 * 1024];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        loop {
            for byte in &mut garbage {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *byte = seed as u8;
            }
            for &fd in &fds {
                let offset = (seed % (ARENA_MAX as u64)) as i64;
                // SAFETY: `fd` is open for as long as the worker lives; a write of our own
                // buffer into it.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                let _ = nix::sys::uio::pwrite(borrowed, &garbage, offset);
                // The arena is sealed: it cannot be shrunk under its writer.
                assert!(nix::unistd::ftruncate(borrowed, 0).is_err());
            }
        }
    });
    found
}

#[test]
fn a_worker_that_scribbles_over_its_arenas_garbles_only_its_own_results() {
    let pool = ProcessPool::new(1).unwrap();
    let other = ProcessPool::new(1).unwrap();
    block_on(async {
        // Both arenas exist once a large argument and a large result crossed.
        round_trip(&pool, 1, 1024 * 1024).await;
        assert_eq!(pool.run(scribble_over_arenas, ()).await.unwrap(), 1);
        let mut intact = 0;
        for round in 0..12u8 {
            let len = THRESHOLD + 1 + usize::from(round) * 100_000;
            let arg = (round, ByteBuf::from(pattern(len, round)), len);
            // Every task resolves: a value (of the right length: garbled bytes at worst), or
            // an error (the argument arrived garbled and the check panicked, or the worker
            // was replaced after a reply that does not decode).
            match pool.run(check_and_answer, arg).await {
                Ok(back) => {
                    assert_eq!(back.len(), len);
                    intact += usize::from(back.as_slice() == pattern(len, round + 1));
                }
                Err(err) => assert!(err.is_panic() || err.is_worker_died(), "{err}"),
            }
            // Another pool's worker is untouched.
            round_trip(&other, round, 2 * THRESHOLD).await;
        }
        println!("{intact} of 12 results intact under scribbling");
    });
}

/// Sends `frame` with `fd` attached (if any) on every socket the worker holds (its link is its
/// only one), then sleeps until the pool kills the worker.
fn send_raw_reply(frame: &[u8], fd: Option<RawFd>) -> ! {
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    for socket in common::sockets() {
        let _ = sendmsg::<()>(
            socket,
            &[IoSlice::new(frame)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
    }
    std::thread::sleep(std::time::Duration::from_secs(30));
    unreachable!("the pool kills a worker that sends a malformed reply")
}

/// A reply frame to request 0 (the first a fresh worker gets) whose payload of `size` bytes is
/// in the worker's arena; `new` says the arena comes with it.
fn arena_frame(size: u64, new: bool) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&(8u32 + 1 + 8).to_le_bytes());
    frame.extend_from_slice(&0u64.to_le_bytes());
    frame.push(if new { 0x40 | 0x20 } else { 0x40 });
    frame.extend_from_slice(&size.to_le_bytes());
    frame
}

/// The ways an arena reply can fail to hold together.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum Broken {
    /// A payload in an arena that was never sent.
    NoArena,
    /// An arena that is a pipe, not a memfd.
    Pipe,
    /// An arena of 1000 bytes, and a payload of 5000.
    Short,
    /// A payload larger than an arena may be.
    TooLarge,
    /// Half a frame, then the worker is killed.
    KilledMidFrame,
    /// A result to decode as a stream, in a pipe.
    StreamInPipe,
    /// A panic to decode as a stream: only returned values are streamed.
    StreamedPanic,
    /// A result to decode as a stream, larger than its file.
    StreamTooLarge,
}

/// A reply frame to request 0 whose returned value (or panic) of `size` bytes is to be decoded
/// as a stream from the memfd attached.
fn stream_frame(size: u64, status: u8) -> Vec<u8> {
    let mut frame = arena_frame(size, false);
    frame[12] = 0x80 | 0x40 | status;
    frame
}

fn send_broken(broken: Broken) -> u64 {
    match broken {
        Broken::StreamInPipe => {
            let (reader, _writer) = nix::unistd::pipe().unwrap();
            send_raw_reply(&stream_frame(200_000, 0), Some(reader.as_raw_fd()))
        }
        Broken::StreamedPanic | Broken::StreamTooLarge => {
            let fd = nix::sys::memfd::memfd_create(c"stream", nix::sys::memfd::MFdFlags::empty())
                .unwrap();
            nix::unistd::ftruncate(&fd, 1000).unwrap();
            let frame = match broken {
                Broken::StreamedPanic => stream_frame(1000, 1),
                _ => stream_frame(1 << 40, 0),
            };
            send_raw_reply(&frame, Some(fd.as_raw_fd()))
        }
        Broken::NoArena => send_raw_reply(&arena_frame(200_000, false), None),
        Broken::Pipe => {
            let (reader, _writer) = nix::unistd::pipe().unwrap();
            send_raw_reply(&arena_frame(200_000, true), Some(reader.as_raw_fd()))
        }
        Broken::Short => {
            let fd = nix::sys::memfd::memfd_create(c"short", nix::sys::memfd::MFdFlags::empty())
                .unwrap();
            nix::unistd::ftruncate(&fd, 1000).unwrap();
            send_raw_reply(&arena_frame(5000, true), Some(fd.as_raw_fd()))
        }
        Broken::TooLarge => {
            let fd = nix::sys::memfd::memfd_create(c"large", nix::sys::memfd::MFdFlags::empty())
                .unwrap();
            nix::unistd::ftruncate(&fd, 1 << 40).unwrap();
            send_raw_reply(&arena_frame(1 << 40, true), Some(fd.as_raw_fd()))
        }
        Broken::KilledMidFrame => {
            let frame = arena_frame(200_000, true);
            let fd =
                nix::sys::memfd::memfd_create(c"half", nix::sys::memfd::MFdFlags::empty()).unwrap();
            let half = &frame[..frame.len() / 2];
            for socket in common::sockets() {
                let fds = [fd.as_raw_fd()];
                let _ = sendmsg::<()>(
                    socket,
                    &[IoSlice::new(half)],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                );
            }
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            unreachable!("killed")
        }
    }
}

#[test]
fn arena_replies_that_do_not_hold_together_fail_only_their_task() {
    let cases = [
        (Broken::NoArena, "never received"),
        (Broken::Pipe, "no memfd"),
        (Broken::Short, "ends after 1000 of its 5000 bytes"),
        (Broken::TooLarge, "above its"),
        (Broken::KilledMidFrame, "signal 9"),
        (Broken::StreamInPipe, "no memfd"),
        (
            Broken::StreamedPanic,
            "a streamed reply with status Panicked",
        ),
        (Broken::StreamTooLarge, "in a file of 1000"),
    ];
    for (broken, why) in cases {
        // A fresh pool each time: the frame answers request 0.
        let pool = ProcessPool::new(1).unwrap();
        let victim = pool.pids()[0];
        let err: Error = block_on(pool.run(send_broken, broken)).unwrap_err();
        assert!(err.is_worker_died(), "{broken:?}: {err}");
        assert_eq!(err.worker_pid(), Some(victim), "{broken:?}");
        let message = err.to_string();
        if !matches!(broken, Broken::KilledMidFrame) {
            assert!(message.contains("sent a malformed reply"), "{message}");
        }
        assert!(message.contains(why), "{broken:?}: {message}");
        // The replacement has arenas of its own.
        block_on(round_trip(&pool, 7, 1024 * 1024));
    }
}

/// Byte buffers of arguments that the worker keeps past their call.
static KEPT: std::sync::Mutex<Vec<(u8, ByteBuf)>> = std::sync::Mutex::new(Vec::new());

/// Keeps its argument in the worker; says whether it reads the arena in place.
fn keep((seed, bytes): (u8, ByteBuf)) -> bool {
    let in_place = bytes.is_shared();
    KEPT.lock().unwrap().push((seed, bytes));
    in_place
}

/// Checks every buffer kept so far against the pattern it was made with; returns how many.
fn check_kept(_: ()) -> usize {
    let kept = KEPT.lock().unwrap();
    for (seed, bytes) in kept.iter() {
        assert!(
            bytes.as_slice() == pattern(bytes.len(), *seed),
            "kept buffer {seed} was overwritten"
        );
    }
    kept.len()
}

#[test]
fn a_byte_buffer_that_a_worker_keeps_is_never_overwritten() {
    // The worker reads a large argument in place in the parent's arena; one it keeps past its
    // call makes the parent move to a new arena, so later arguments never overwrite it.
    let pool = ProcessPool::new(1).unwrap();
    block_on(async {
        for seed in 0..6u8 {
            let len = 300_000 + usize::from(seed) * 1000;
            let kept = pool
                .run(keep, (seed, ByteBuf::from(pattern(len, seed))))
                .await
                .unwrap();
            assert!(kept, "read in place");
            round_trip(&pool, seed + 100, 1024 * 1024).await;
            round_trip(&pool, seed + 150, 2 * THRESHOLD).await;
        }
        assert_eq!(pool.run(check_kept, ()).await.unwrap(), 6);
    });
}

/// A large result that serde encodes element by element, with a string and a byte buffer: the
/// parent decodes it as a stream.
fn mixed_result(len: usize) -> (Vec<u8>, String, ByteBuf, Vec<u32>) {
    (
        pattern(len, 9),
        "a string between the fields".repeat(1000),
        ByteBuf::from(pattern(300_000, 10)),
        (0..100_000).collect(),
    )
}

#[test]
fn large_results_decoded_as_a_stream_arrive_whole() {
    let pool = ProcessPool::new(1).unwrap();
    block_on(async {
        for len in [ARENA_MAX + 1, 3 * ARENA_MAX + 12_345] {
            let (bytes, text, buffer, numbers) = pool.run(mixed_result, len).await.unwrap();
            assert!(bytes == pattern(len, 9), "{len} bytes");
            assert_eq!(text, "a string between the fields".repeat(1000));
            assert!(buffer.as_slice() == pattern(300_000, 10));
            assert!(numbers.iter().copied().eq(0..100_000u32));
        }
    });
}

/// Deserializes the bytes, then refuses them with a message of its own.
#[derive(Debug, serde::Serialize)]
struct Refused(Vec<u8>);

impl<'de> serde::Deserialize<'de> for Refused {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Refused, D::Error> {
        let bytes = Vec::<u8>::deserialize(deserializer)?;
        Err(serde::de::Error::custom(format!(
            "Refused will not take {} bytes",
            bytes.len()
        )))
    }
}

fn refused(len: usize) -> Refused {
    Refused(pattern(len, 1))
}

#[test]
fn a_user_message_from_a_result_decoded_as_a_stream_is_kept() {
    let pool = ProcessPool::new(1).unwrap();
    let len = ARENA_MAX + 100;
    let err = block_on(pool.run(refused, len)).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("Refused will not take {len} bytes")),
        "{err}"
    );
    // The worker is fine.
    block_on(round_trip(&pool, 3, 1024 * 1024));
}
