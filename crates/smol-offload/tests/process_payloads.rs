//! Large arguments and results of process tasks, which go through a sealed memfd instead of
//! the worker's socket: every size around the threshold crosses intact both ways, as a
//! `Vec<u8>`, as a `ByteBuf` (which reads the shared memory in place) and as a
//! `serde_bytes::ByteBuf`; a worker that dies
//! while it writes a large result, or that sends a shared reply that is not sealed, fails
//! only its task; and no descriptor leaks, in the parent or in the worker.

use std::io::IoSlice;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde::{Deserialize, Serialize};
use smol_offload::{ByteBuf, Error, Executor, ProcessPool};

mod common;

use common::block_on;

#[ctor::ctor]
fn start_fork_server() {
    smol_offload::init();
}

/// Payloads longer than this go through shared memory (`out_of_line::THRESHOLD`).
const THRESHOLD: usize = 128 * 1024;

/// Sizes of byte vectors whose encodings (a varint length of 3 bytes, then the bytes) fall on
/// each side of the threshold, and far above it.
const SIZES: [usize; 8] = [
    0,
    THRESHOLD - 4,
    THRESHOLD - 3,
    THRESHOLD - 2,
    THRESHOLD,
    THRESHOLD + 1,
    1024 * 1024,
    8 * 1024 * 1024 + 7,
];

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Checks the argument against the pattern it was made with, and sends another pattern back.
fn check_and_answer(bytes: Vec<u8>) -> Vec<u8> {
    assert_eq!(
        bytes,
        pattern(bytes.len(), 1),
        "the argument arrived intact"
    );
    pattern(bytes.len(), 2)
}

fn check_and_answer_buffer(bytes: ByteBuf) -> (bool, ByteBuf) {
    assert!(
        bytes.as_slice() == pattern(bytes.len(), 3),
        "arrived intact"
    );
    (bytes.is_shared(), ByteBuf::from(pattern(bytes.len(), 4)))
}

fn large_result(len: usize) -> Vec<u8> {
    pattern(len, 5)
}

#[test]
fn values_of_every_size_around_the_threshold_cross_both_ways() {
    let pool = ProcessPool::new(2).unwrap();
    block_on(async {
        for len in SIZES {
            let back = pool.run(check_and_answer, pattern(len, 1)).await.unwrap();
            assert!(back == pattern(len, 2), "a result of {len} bytes");
            let (shared_there, back) = pool
                .run(check_and_answer_buffer, ByteBuf::from(pattern(len, 3)))
                .await
                .unwrap();
            assert!(back.as_slice() == pattern(len, 4), "a ByteBuf of {len}");
            // Above the threshold, the buffers read the shared memory in place, in the worker
            // and here; below it they were copied out of the socket's bytes. The argument's
            // encoding has a varint length before the bytes, the result's a `bool` too.
            let varint = if len == 0 { 1 } else { 3 };
            let argument_shared = varint + len > THRESHOLD;
            let result_shared = 1 + varint + len > THRESHOLD;
            assert_eq!(shared_there, argument_shared, "an argument of {len} bytes");
            assert_eq!(back.is_shared(), result_shared, "a result of {len} bytes");
        }
    });
}

/// Checks a `serde_bytes::ByteBuf` argument and answers with another, of `len` bytes.
fn check_and_answer_serde_bytes(
    (bytes, len): (serde_bytes::ByteBuf, usize),
) -> serde_bytes::ByteBuf {
    assert!(*bytes == pattern(bytes.len(), 6), "arrived intact");
    serde_bytes::ByteBuf::from(pattern(len, 7))
}

#[test]
fn serde_bytes_buffers_cross_as_blocks_both_ways() {
    // 1 MiB goes through the workers' arenas; 64 MiB through a fresh memfd each way, the result
    // decoded as a stream straight into the buffer's own vector.
    let pool = ProcessPool::new(1).unwrap();
    block_on(async {
        for len in [1024 * 1024, 64 * 1024 * 1024] {
            let sent = serde_bytes::ByteBuf::from(pattern(len, 6));
            let back = pool
                .run(check_and_answer_serde_bytes, (sent, len + 1))
                .await
                .unwrap();
            assert_eq!(back.len(), len + 1);
            assert!(
                *back == pattern(len + 1, 7),
                "a result of {} bytes",
                len + 1
            );
        }
    });
}

#[test]
fn many_large_values_at_once_on_every_path() {
    // More tasks than workers: some go straight to an idle worker, others wait in the queue
    // and go through the dispatcher.
    let pool = ProcessPool::new(2).unwrap();
    block_on(async {
        let tasks: Vec<_> = (0..24)
            .map(|n| pool.run(large_result, THRESHOLD + n * 4096))
            .collect();
        for (n, task) in tasks.into_iter().enumerate() {
            let bytes = task.await.unwrap();
            assert!(bytes == pattern(THRESHOLD + n * 4096, 5), "task {n}");
        }
    });
}

/// Serializes half of its bytes, then ends the worker: it dies while writing a large result.
#[derive(Debug)]
struct DiesHalfway(usize);

impl Serialize for DiesHalfway {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0))?;
        for i in 0..self.0 {
            if i == self.0 / 2 {
                std::process::abort();
            }
            seq.serialize_element(&(i as u8))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for DiesHalfway {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(deserializer).map(|bytes| DiesHalfway(bytes.len()))
    }
}

fn dies_halfway(len: usize) -> DiesHalfway {
    DiesHalfway(len)
}

fn takes_and_aborts(_: Vec<u8>) -> u8 {
    std::process::abort()
}

#[test]
fn a_worker_that_dies_with_a_large_payload_fails_only_its_task() {
    let pool = ProcessPool::new(1).unwrap();
    block_on(async {
        let err = pool.run(dies_halfway, 4 * THRESHOLD).await.unwrap_err();
        assert!(err.is_worker_died(), "{err}");
        let err = pool
            .run(takes_and_aborts, pattern(4 * THRESHOLD, 1))
            .await
            .unwrap_err();
        assert!(err.is_worker_died(), "{err}");
        // The replacement takes large values both ways.
        let back = pool
            .run(check_and_answer, pattern(2 * THRESHOLD, 1))
            .await
            .unwrap();
        assert!(back == pattern(2 * THRESHOLD, 2));
    });
}

/// Sends, as the reply to request 0 (the first a fresh worker gets), a shared-memory reply
/// whose memfd is not sealed, on every socket the worker holds (its link is its only one);
/// then goes on writing into that memfd.
fn unsealed_reply(_: ()) -> u64 {
    use std::io::Write;
    let fd =
        nix::sys::memfd::memfd_create(c"unsealed", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let mut file = std::fs::File::from(fd);
    file.write_all(&[7; 1000]).unwrap();
    common::send_reply_in_memfd(0, 1000, &file);
    std::thread::sleep(std::time::Duration::from_secs(30));
    unreachable!("the pool kills a worker that sends a malformed reply")
}

#[test]
fn a_shared_reply_that_is_not_sealed_is_a_malformed_reply() {
    let pool = ProcessPool::new(1).unwrap();
    let victim = pool.pids()[0];
    let err: Error = block_on(pool.run(unsealed_reply, ())).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.worker_pid(), Some(victim));
    let message = err.to_string();
    assert!(
        message.contains("sent a malformed reply") && message.contains("not sealed"),
        "{message}"
    );
    let back = block_on(pool.run(check_and_answer, pattern(2 * THRESHOLD, 1))).unwrap();
    assert!(back == pattern(2 * THRESHOLD, 2), "the replacement works");
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits until this process has `expected` descriptors open again: a killed worker's pidfd is
/// closed once the dispatcher has reaped it, which may come just after the task's error.
/// Panics with the last count after a generous bound.
fn wait_for_descriptors(expected: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = open_descriptors();
        if now == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{now} descriptors open, expected {expected}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The worker's own count of open descriptors, after checking a large argument.
fn descriptors_in_worker(bytes: ByteBuf) -> usize {
    assert_eq!(bytes.len(), 3 * THRESHOLD);
    drop(bytes);
    open_descriptors()
}

#[test]
fn shared_payloads_leak_no_descriptor() {
    // Alone in a child process: the other tests of this binary open and close descriptors
    // of their own at the same time.
    common::run_child(
        "child_shared_payloads_leak_no_descriptor",
        "SMOL_OFFLOAD_PAYLOAD_CHILD",
        &[],
    );
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_shared_payloads_leak_no_descriptor() {
    if !common::in_child("SMOL_OFFLOAD_PAYLOAD_CHILD") {
        return;
    }
    let pool = ProcessPool::new(1).unwrap();
    block_on(async {
        // Warm up: the pool's own descriptors (reactor, sockets, pidfds) are open by then.
        pool.run(check_and_answer, pattern(2 * THRESHOLD, 1))
            .await
            .unwrap();
        let in_worker = pool
            .run(descriptors_in_worker, ByteBuf::from(vec![0; 3 * THRESHOLD]))
            .await
            .unwrap();
        let before = open_descriptors();
        let mut kept = Vec::new();
        for round in 0..50 {
            let back = pool
                .run(check_and_answer, pattern(THRESHOLD + round, 1))
                .await
                .unwrap();
            assert_eq!(back.len(), THRESHOLD + round);
            let (_, buffer) = pool
                .run(
                    check_and_answer_buffer,
                    ByteBuf::from(pattern(2 * THRESHOLD, 3)),
                )
                .await
                .unwrap();
            assert!(buffer.is_shared());
            kept.push(buffer);
        }
        // A buffer read in place holds a mapping, not a descriptor.
        assert_eq!(
            open_descriptors(),
            before,
            "descriptors with 50 buffers kept"
        );
        drop(kept);
        assert_eq!(open_descriptors(), before, "descriptors after");
        let again = pool
            .run(descriptors_in_worker, ByteBuf::from(vec![0; 3 * THRESHOLD]))
            .await
            .unwrap();
        assert_eq!(again, in_worker, "descriptors in the worker");
    });
    println!("child_shared_payloads_leak_no_descriptor: done");
}

/// Sends 200 copies of a memfd's descriptor, each with one zero byte, on every socket the
/// worker holds (its link is its only one); then sleeps.
fn flood_descriptors(_: ()) -> u64 {
    let fd = nix::sys::memfd::memfd_create(c"flood", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let memfd = [std::os::fd::AsRawFd::as_raw_fd(&fd)];
    for socket in common::sockets() {
        for _ in 0..200 {
            let _ = sendmsg::<()>(
                socket,
                &[IoSlice::new(&[0])],
                &[ControlMessage::ScmRights(&memfd)],
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            );
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(30));
    unreachable!("the pool kills a worker that sends a malformed reply")
}

#[test]
fn a_flood_of_descriptors_is_closed_and_is_a_malformed_reply() {
    common::run_child(
        "child_a_flood_of_descriptors_is_closed",
        "SMOL_OFFLOAD_PAYLOAD_CHILD",
        &[],
    );
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_a_flood_of_descriptors_is_closed() {
    if !common::in_child("SMOL_OFFLOAD_PAYLOAD_CHILD") {
        return;
    }
    let pool = ProcessPool::new(1).unwrap();
    block_on(pool.run(large_result, 10)).unwrap();
    let before = open_descriptors();
    let err = block_on(pool.run(flood_descriptors, ())).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert!(err.to_string().contains("sent a malformed reply"), "{err}");
    // The replacement works, and holds what its predecessor held: nothing the flood sent
    // stayed open here.
    assert_eq!(block_on(pool.run(large_result, 10)).unwrap().len(), 10);
    wait_for_descriptors(before);
    println!("child_a_flood_of_descriptors_is_closed: done");
}
