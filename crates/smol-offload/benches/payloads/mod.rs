//! The payload figures of the process benchmark: large arguments and results, against a raw
//! echo of the same bytes over a Unix socket between two processes, in the same run; and the
//! peak memory of the parent while it receives a 64 MiB result (a `Vec<u8>`, the crate's
//! `ByteBuf` and `serde_bytes::ByteBuf`), measured in a fresh child
//! process from the kernel's high-water mark of its resident memory (`VmHWM`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use smol_offload::{ByteBuf, Executor, ProcessPool, ThreadPool};

use crate::common::median;

const MIB: usize = 1024 * 1024;
/// The size of the echoed payload.
const ECHO: usize = MIB;
/// The size of the result whose peak memory is measured, and of the large echo.
const LARGE: usize = 64 * MIB;
/// Set in the child process that measures the peak memory, to what it returns.
const PEAK_VARIABLE: &str = "SMOL_OFFLOAD_BENCH_PEAK";

fn echo_vec(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

fn echo_buffer(bytes: ByteBuf) -> ByteBuf {
    bytes
}

fn echo_serde_bytes(bytes: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    bytes
}

fn make_vec(len: usize) -> Vec<u8> {
    vec![7; len]
}

fn make_buffer(len: usize) -> ByteBuf {
    ByteBuf::from(vec![7; len])
}

fn make_serde_bytes(len: usize) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(vec![7; len])
}

/// A forked child that echoes blocks of [`ECHO`] bytes over a socket: the floor.
pub(crate) struct ByteEcho {
    pid: u32,
    stream: UnixStream,
}

impl ByteEcho {
    /// Forks the echo child. Called first in `main`, while the process has one thread.
    pub(crate) fn start() -> ByteEcho {
        let (parent, child) = UnixStream::pair().unwrap();
        // SAFETY: called at the top of `main`, before any thread exists, so the child inherits
        // no held lock; the child never returns: it loops, then `_exit`s.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                drop(parent);
                let mut child = child;
                let mut block = vec![0u8; ECHO];
                while child.read_exact(&mut block).is_ok() {
                    if child.write_all(&block).is_err() {
                        break;
                    }
                }
                // SAFETY: `_exit` has no preconditions.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child: pid } => ByteEcho {
                pid: pid.as_raw() as u32,
                stream: parent,
            },
        }
    }

    fn round_trip(&mut self, block: &[u8], back: &mut [u8]) -> Duration {
        let start = Instant::now();
        self.stream.write_all(block).unwrap();
        self.stream.read_exact(back).unwrap();
        start.elapsed()
    }
}

impl Drop for ByteEcho {
    fn drop(&mut self) {
        // Processes forked later hold copies of this socket: stop the child outright.
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}

/// The median time of `count` calls of `call`, after a tenth as many to warm up.
fn median_of(count: usize, mut call: impl FnMut() -> Duration) -> Duration {
    for _ in 0..count / 10 + 1 {
        call();
    }
    let times: Vec<f64> = (0..count).map(|_| call().as_secs_f64()).collect();
    Duration::from_secs_f64(median(&times))
}

fn micros(took: Duration) -> f64 {
    took.as_secs_f64() * 1e6
}

/// Measures and prints the payload figures.
pub(crate) fn run(mut floor: ByteEcho, quick: bool) {
    let count = if quick { 20 } else { 200 };
    let pool = ProcessPool::new(1).unwrap();
    let threads = ThreadPool::new(1).unwrap();
    let block: Vec<u8> = (0..ECHO).map(|i| i as u8).collect();
    let mut back = vec![0u8; ECHO];

    // Interleaved rounds, so that noise hits every contender alike.
    let rounds = if quick { 2 } else { 5 };
    let mut raw = Vec::new();
    let mut as_vec = Vec::new();
    let mut as_buffer = Vec::new();
    let mut as_serde_bytes = Vec::new();
    for _ in 0..rounds {
        raw.push(median_of(count, || floor.round_trip(&block, &mut back)).as_secs_f64());
        as_vec.push(
            median_of(count, || {
                // The value is made before the clock starts, as the floor's buffer is.
                let sent = block.clone();
                let start = Instant::now();
                let echoed = smol::block_on(pool.run(echo_vec, sent)).unwrap();
                let took = start.elapsed();
                assert_eq!(echoed.len(), ECHO);
                took
            })
            .as_secs_f64(),
        );
        as_buffer.push(
            median_of(count, || {
                let sent = ByteBuf::from(block.clone());
                let start = Instant::now();
                let echoed = smol::block_on(pool.run(echo_buffer, sent)).unwrap();
                let took = start.elapsed();
                assert_eq!(echoed.len(), ECHO);
                took
            })
            .as_secs_f64(),
        );
        as_serde_bytes.push(
            median_of(count, || {
                let sent = serde_bytes::ByteBuf::from(block.clone());
                let start = Instant::now();
                let echoed = smol::block_on(pool.run(echo_serde_bytes, sent)).unwrap();
                let took = start.elapsed();
                assert_eq!(echoed.len(), ECHO);
                took
            })
            .as_secs_f64(),
        );
    }
    assert_eq!(back, block);
    let raw = Duration::from_secs_f64(median(&raw));
    let as_vec = Duration::from_secs_f64(median(&as_vec));
    let as_buffer = Duration::from_secs_f64(median(&as_buffer));
    let as_serde_bytes = Duration::from_secs_f64(median(&as_serde_bytes));

    let large_count = if quick { 2 } else { 5 };
    let large: Vec<u8> = vec![3; LARGE];
    let large_vec = median_of(large_count, || {
        let sent = large.clone();
        let start = Instant::now();
        let echoed = smol::block_on(pool.run(echo_vec, sent)).unwrap();
        let took = start.elapsed();
        assert_eq!(echoed.len(), LARGE);
        took
    });
    let large_buffer = median_of(large_count, || {
        let sent = ByteBuf::from(large.clone());
        let start = Instant::now();
        let echoed = smol::block_on(pool.run(echo_buffer, sent)).unwrap();
        let took = start.elapsed();
        assert_eq!(echoed.len(), LARGE);
        took
    });
    let large_serde_bytes = median_of(large_count, || {
        let sent = serde_bytes::ByteBuf::from(large.clone());
        let start = Instant::now();
        let echoed = smol::block_on(pool.run(echo_serde_bytes, sent)).unwrap();
        let took = start.elapsed();
        assert_eq!(echoed.len(), LARGE);
        took
    });
    let large_threads = median_of(large_count, || {
        let sent = large.clone();
        let start = Instant::now();
        let echoed = smol::block_on(threads.run(echo_vec, sent)).unwrap();
        let took = start.elapsed();
        assert_eq!(echoed.len(), LARGE);
        took
    });

    println!();
    println!(
        "payloads: one worker; 1 MiB medians of {count} round trips per round, {rounds} rounds"
    );
    println!("| payload | round trip | vs raw 1 MiB socket echo |");
    println!("|---|---:|---:|");
    println!(
        "| raw 1 MiB echo over a Unix socket, two processes (floor) | {:.0} us | 1.00x |",
        micros(raw)
    );
    let ratio = |took: Duration| took.as_secs_f64() / raw.as_secs_f64();
    println!(
        "| 1 MiB Vec<u8> argument and result | {:.0} us | {:.2}x |",
        micros(as_vec),
        ratio(as_vec)
    );
    println!(
        "| 1 MiB ByteBuf argument and result | {:.0} us | {:.2}x |",
        micros(as_buffer),
        ratio(as_buffer)
    );
    println!(
        "| 1 MiB serde_bytes::ByteBuf argument and result | {:.0} us | {:.2}x |",
        micros(as_serde_bytes),
        ratio(as_serde_bytes)
    );
    println!(
        "| 64 MiB Vec<u8> echo | {:.1} ms | |",
        large_vec.as_secs_f64() * 1e3
    );
    println!(
        "| 64 MiB ByteBuf echo | {:.1} ms | |",
        large_buffer.as_secs_f64() * 1e3
    );
    println!(
        "| 64 MiB serde_bytes::ByteBuf echo | {:.1} ms | |",
        large_serde_bytes.as_secs_f64() * 1e3
    );
    println!(
        "| 64 MiB Vec<u8> echo on a ThreadPool (nothing copied) | {:.3} ms | |",
        large_threads.as_secs_f64() * 1e3
    );

    let peak_vec = peak_in_child("vec");
    let peak_buffer = peak_in_child("buffer");
    let peak_serde_bytes = peak_in_child("serde_bytes");
    println!();
    println!(
        "peak memory of the parent while it receives a 64 MiB result (VmHWM over VmRSS before):"
    );
    println!("| result | peak | times the result's size |");
    println!("|---|---:|---:|");
    for (what, peak) in [
        ("Vec<u8>", peak_vec),
        ("ByteBuf", peak_buffer),
        ("serde_bytes::ByteBuf", peak_serde_bytes),
    ] {
        println!(
            "| 64 MiB {what} | {:.1} MiB | {:.2}x |",
            peak as f64 / MIB as f64,
            peak as f64 / LARGE as f64
        );
    }
    println!();
    println!("payload targets:");
    let verdict = |met: bool| if met { "met" } else { "missed" };
    println!(
        "  1 MiB round trip at most 2x the raw echo: Vec<u8> {:.2}x, {}; ByteBuf {:.2}x, {}; \
         serde_bytes::ByteBuf {:.2}x, {}",
        ratio(as_vec),
        verdict(ratio(as_vec) <= 2.0),
        ratio(as_buffer),
        verdict(ratio(as_buffer) <= 2.0),
        ratio(as_serde_bytes),
        verdict(ratio(as_serde_bytes) <= 2.0)
    );
    let times = |peak: usize| peak as f64 / LARGE as f64;
    println!(
        "  64 MiB result peaks at most 1.5x its size: Vec<u8> {:.2}x, {}; ByteBuf {:.2}x, {}; \
         serde_bytes::ByteBuf {:.2}x, {}",
        times(peak_vec),
        verdict(times(peak_vec) <= 1.5),
        times(peak_buffer),
        verdict(times(peak_buffer) <= 1.5),
        times(peak_serde_bytes),
        verdict(times(peak_serde_bytes) <= 1.5)
    );
}

/// Runs this benchmark again in a child process that measures the peak; returns it in bytes.
fn peak_in_child(what: &str) -> usize {
    let output = Command::new(std::env::current_exe().unwrap())
        .env(PEAK_VARIABLE, what)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "peak child failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("peak ")?.trim().parse().ok())
        .expect("the child printed its peak")
}

/// In the child that [`peak_in_child`] starts: measures, prints `peak <bytes>`, and exits.
pub(crate) fn measure_peak_if_asked() {
    let Some(what) = std::env::var_os(PEAK_VARIABLE) else {
        return;
    };
    smol_offload::init();
    let pool = ProcessPool::new(1).unwrap();
    // Warm up: the pool, the reactor and the allocator's arenas exist before the baseline.
    smol::block_on(pool.run(make_vec, 1024)).unwrap();
    // Writing 5 to clear_refs resets VmHWM to the current resident size.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");
    // Every byte of the result is read, so that every page of it is resident.
    let sum: u64 = match what.to_str() {
        Some("vec") => {
            let bytes = smol::block_on(pool.run(make_vec, LARGE)).unwrap();
            bytes.iter().map(|&b| u64::from(b)).sum()
        }
        Some("buffer") => {
            let bytes = smol::block_on(pool.run(make_buffer, LARGE)).unwrap();
            bytes.iter().map(|&b| u64::from(b)).sum()
        }
        _ => {
            let bytes = smol::block_on(pool.run(make_serde_bytes, LARGE)).unwrap();
            bytes.iter().map(|&b| u64::from(b)).sum()
        }
    };
    let peak = status_kib("VmHWM:");
    assert_eq!(sum, 7 * LARGE as u64);
    println!("peak {}", (peak - before) * 1024);
    drop(pool);
    std::process::exit(0);
}

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}
