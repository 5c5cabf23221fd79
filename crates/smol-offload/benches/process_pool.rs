//! Process pool benchmark: `ProcessPool` against forked children echoing over a socket (the
//! floor, read blocking and read through the smol reactor) and `procspawn`'s pool, side by side
//! in one run, with ratios.
//!
//! Run with `cargo bench -p smol-offload --bench process_pool`; set
//! `SMOL_OFFLOAD_BENCH_QUICK=1` for a short smoke run, and `SMOL_OFFLOAD_BENCH_CPU=0` to keep the
//! benchmark and every process it forks on CPU 0.
//!
//! Round trips are measured one after another inside one running event loop, as in the thread
//! benchmark; procspawn has no async API and is joined from the benchmark's thread.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use async_io::Async;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use smol_offload::{Executor, ProcessPool};

mod common;
mod payloads;

use common::{machine, median, quick_mode};

const WORKERS: usize = 2;
/// procspawn opens two descriptors per queued task: more than this many at once dies of EMFILE.
const PROCSPAWN_IN_FLIGHT: usize = 256;

struct Config {
    rounds: usize,
    round_trips: usize,
    burst: usize,
}

impl Config {
    fn from_env() -> Config {
        if quick_mode() {
            Config {
                rounds: 2,
                round_trips: 500,
                burst: 1_000,
            }
        } else {
            Config {
                rounds: 5,
                round_trips: 5_000,
                burst: 10_000,
            }
        }
    }
}

fn echo(n: u64) -> u64 {
    std::hint::black_box(n)
}

/// Environment variable naming the one CPU the benchmark and its children may run on.
const CPU_VARIABLE: &str = "SMOL_OFFLOAD_BENCH_CPU";

trait Contender {
    fn name(&self) -> &'static str;
    /// `count` calls one after another, each awaited before the next; returns each one's time.
    fn round_trips(&mut self, count: usize) -> Vec<Duration>;
    /// `count` calls submitted at once (or as many as the contender allows), all awaited.
    fn burst(&mut self, count: usize) -> Duration;
}

struct Ours {
    pool: ProcessPool,
}

impl Contender for Ours {
    fn name(&self) -> &'static str {
        "smol-offload ProcessPool"
    }

    fn round_trips(&mut self, count: usize) -> Vec<Duration> {
        smol::block_on(async {
            let mut times = Vec::with_capacity(count);
            for n in 0..count as u64 {
                let start = Instant::now();
                let value = self.pool.run(echo, n).await.unwrap();
                times.push(start.elapsed());
                assert_eq!(value, n);
            }
            times
        })
    }

    fn burst(&mut self, count: usize) -> Duration {
        smol::block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = (0..count as u64).map(|n| self.pool.run(echo, n)).collect();
            let mut sum = 0;
            for task in tasks {
                sum += task.await.unwrap();
            }
            let took = start.elapsed();
            assert_eq!(sum, (count as u64) * (count as u64 - 1) / 2);
            took
        })
    }
}

/// Forked children that echo 8-byte words over a socket: the cost of the IPC alone.
struct PipeFloor {
    children: Vec<(u32, UnixStream)>,
}

impl PipeFloor {
    /// Forks the echo children. Called first in `main`, while the process has one thread.
    fn start(count: usize) -> PipeFloor {
        let children = (0..count)
            .map(|_| {
                let (parent, child) = UnixStream::pair().unwrap();
                // SAFETY: called at the top of `main`, before any thread exists (checked), so
                // the child inherits no held lock; the child never returns: it loops, then
                // `_exit`s.
                match unsafe { nix::unistd::fork() }.unwrap() {
                    nix::unistd::ForkResult::Child => {
                        drop(parent);
                        let mut child = child;
                        let mut word = [0u8; 8];
                        while child.read_exact(&mut word).is_ok() {
                            if child.write_all(&word).is_err() {
                                break;
                            }
                        }
                        // SAFETY: `_exit` has no preconditions.
                        unsafe { libc::_exit(0) }
                    }
                    nix::unistd::ForkResult::Parent { child: pid } => (pid.as_raw() as u32, parent),
                }
            })
            .collect();
        PipeFloor { children }
    }
}

impl Drop for PipeFloor {
    fn drop(&mut self) {
        for (pid, stream) in self.children.drain(..) {
            drop(stream);
            // Processes forked later (the other echo child, the fork server) hold copies of this
            // socket, so the child never sees its end: stop it outright.
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

impl Contender for PipeFloor {
    fn name(&self) -> &'static str {
        "forked child, socket echo (floor)"
    }

    fn round_trips(&mut self, count: usize) -> Vec<Duration> {
        let stream = &mut self.children[0].1;
        (0..count as u64)
            .map(|n| {
                let start = Instant::now();
                stream.write_all(&n.to_le_bytes()).unwrap();
                let mut word = [0u8; 8];
                stream.read_exact(&mut word).unwrap();
                let took = start.elapsed();
                assert_eq!(u64::from_le_bytes(word), n);
                took
            })
            .collect()
    }

    fn burst(&mut self, count: usize) -> Duration {
        // Pipelined: each child gets its share in one write, then the answers are read back.
        let start = Instant::now();
        let share = count / self.children.len();
        let mut sum = 0u64;
        std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .children
                .iter_mut()
                .enumerate()
                .map(|(index, (_, stream))| {
                    let mut reader = stream.try_clone().unwrap();
                    let writer = scope.spawn(move || {
                        let words: Vec<u8> = (0..share as u64)
                            .flat_map(|n| (n + (index * share) as u64).to_le_bytes())
                            .collect();
                        stream.write_all(&words).unwrap();
                    });
                    let read = scope.spawn(move || {
                        let mut words = vec![0u8; share * 8];
                        reader.read_exact(&mut words).unwrap();
                        words
                            .chunks(8)
                            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
                            .sum::<u64>()
                    });
                    (writer, read)
                })
                .collect();
            for (writer, read) in handles {
                writer.join().unwrap();
                sum += read.join().unwrap();
            }
        });
        let took = start.elapsed();
        let total = (share * self.children.len()) as u64;
        assert_eq!(sum, total * (total - 1) / 2);
        took
    }
}

/// The same echo children, awaited through the smol reactor: the floor for an async caller.
struct ReactorFloor {
    streams: Vec<Async<UnixStream>>,
    /// Owns the children, and stops them when dropped.
    _children: PipeFloor,
}

impl ReactorFloor {
    fn new(mut children: PipeFloor) -> ReactorFloor {
        let streams = children
            .children
            .iter_mut()
            .map(|(_, stream)| Async::new(stream.try_clone().unwrap()).unwrap())
            .collect();
        ReactorFloor {
            streams,
            _children: children,
        }
    }
}

impl Contender for ReactorFloor {
    fn name(&self) -> &'static str {
        "forked child, socket echo awaited on the smol reactor"
    }

    fn round_trips(&mut self, count: usize) -> Vec<Duration> {
        let mut stream = &self.streams[0];
        smol::block_on(async {
            let mut times = Vec::with_capacity(count);
            for n in 0..count as u64 {
                let start = Instant::now();
                stream.write_all(&n.to_le_bytes()).await.unwrap();
                let mut word = [0u8; 8];
                stream.read_exact(&mut word).await.unwrap();
                times.push(start.elapsed());
                assert_eq!(u64::from_le_bytes(word), n);
            }
            times
        })
    }

    fn burst(&mut self, count: usize) -> Duration {
        // Pipelined like the blocking floor: each child's share is written while its answers
        // are read, all on the one event loop.
        let share = count / self.streams.len();
        smol::block_on(async {
            let start = Instant::now();
            let each = self
                .streams
                .iter()
                .enumerate()
                .map(|(index, stream)| async move {
                    let words: Vec<u8> = (0..share as u64)
                        .flat_map(|n| (n + (index * share) as u64).to_le_bytes())
                        .collect();
                    let mut writer = stream;
                    let mut reader = stream;
                    let mut answers = vec![0u8; share * 8];
                    let (written, read) = futures_lite::future::zip(
                        writer.write_all(&words),
                        reader.read_exact(&mut answers),
                    )
                    .await;
                    written.unwrap();
                    read.unwrap();
                    answers
                        .chunks(8)
                        .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
                        .sum::<u64>()
                });
            let mut sum = 0;
            for part in each.collect::<Vec<_>>() {
                sum += part.await;
            }
            let took = start.elapsed();
            let total = (share * self.streams.len()) as u64;
            assert_eq!(sum, total * (total - 1) / 2);
            took
        })
    }
}

struct Procspawn {
    pool: procspawn::Pool,
}

impl Contender for Procspawn {
    fn name(&self) -> &'static str {
        "procspawn::Pool"
    }

    fn round_trips(&mut self, count: usize) -> Vec<Duration> {
        (0..count as u64)
            .map(|n| {
                let start = Instant::now();
                let value = self.pool.spawn(n, echo).join().unwrap();
                let took = start.elapsed();
                assert_eq!(value, n);
                took
            })
            .collect()
    }

    fn burst(&mut self, count: usize) -> Duration {
        let start = Instant::now();
        let mut sum = 0;
        let mut submitted = 0u64;
        while (submitted as usize) < count {
            let batch = PROCSPAWN_IN_FLIGHT.min(count - submitted as usize) as u64;
            let handles: Vec<_> = (submitted..submitted + batch)
                .map(|n| self.pool.spawn(n, echo))
                .collect();
            for handle in handles {
                sum += handle.join().unwrap();
            }
            submitted += batch;
        }
        let took = start.elapsed();
        assert_eq!(sum, (count as u64) * (count as u64 - 1) / 2);
        took
    }
}

struct Figures {
    median_us: f64,
    p99_us: f64,
    per_second: f64,
}

fn measure(contender: &mut dyn Contender, config: &Config) -> Figures {
    let warmup = config.round_trips / 10;
    let mut times: Vec<f64> = contender
        .round_trips(warmup + config.round_trips)
        .split_off(warmup)
        .into_iter()
        .map(|took| took.as_secs_f64() * 1e6)
        .collect();
    times.sort_by(f64::total_cmp);
    let median_us = times[times.len() / 2];
    let p99_us = times[times.len() * 99 / 100];
    let took = contender.burst(config.burst);
    Figures {
        median_us,
        p99_us,
        per_second: config.burst as f64 / took.as_secs_f64(),
    }
}

/// Keeps this process, and every process it forks or spawns from now on, on the CPU that
/// [`CPU_VARIABLE`] names, if it names one.
fn pin_if_asked() -> Option<usize> {
    let cpu: usize = std::env::var(CPU_VARIABLE).ok()?.parse().ok()?;
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
    Some(cpu)
}

fn main() {
    // In the child process that measures the peak memory of a large result, only that.
    payloads::measure_peak_if_asked();
    let pinned = pin_if_asked();
    // These must come first: procspawn re-executes this binary for its workers, and the fork
    // server and the echo children must be forked while the process has a single thread.
    procspawn::init();
    let floor = PipeFloor::start(WORKERS);
    let reactor_children = PipeFloor::start(WORKERS);
    let payload_floor = payloads::ByteEcho::start();
    smol_offload::init();
    // Registering with the reactor starts its thread: only after the forks.
    let reactor_floor = ReactorFloor::new(reactor_children);

    let config = Config::from_env();
    let mut contenders: Vec<Box<dyn Contender>> = vec![
        Box::new(Ours {
            pool: ProcessPool::new(WORKERS).unwrap(),
        }),
        Box::new(floor),
        Box::new(reactor_floor),
        Box::new(Procspawn {
            pool: procspawn::Pool::new(WORKERS).unwrap(),
        }),
    ];
    println!("smol-offload process pool benchmark");
    println!("machine: {}", machine());
    println!(
        "{WORKERS} workers, {} round trips and a burst of {} tasks per \
         round, {} rounds (medians across rounds); procspawn bursts keep at most \
         {PROCSPAWN_IN_FLIGHT} in flight",
        config.round_trips, config.burst, config.rounds
    );
    match pinned {
        Some(cpu) => println!("every process on CPU {cpu} ({CPU_VARIABLE})"),
        None => println!("processes placed by the scheduler (set {CPU_VARIABLE} to pin them)"),
    }
    let mut results: Vec<Vec<Figures>> = contenders.iter().map(|_| Vec::new()).collect();
    for _ in 0..config.rounds {
        for (contender, figures) in contenders.iter_mut().zip(&mut results) {
            figures.push(measure(contender.as_mut(), &config));
        }
    }
    let summary: Vec<Figures> = results
        .iter()
        .map(|rounds| Figures {
            median_us: median(&rounds.iter().map(|f| f.median_us).collect::<Vec<_>>()),
            p99_us: median(&rounds.iter().map(|f| f.p99_us).collect::<Vec<_>>()),
            per_second: median(&rounds.iter().map(|f| f.per_second).collect::<Vec<_>>()),
        })
        .collect();
    println!();
    println!("| contender | round trip median | round trip p99 | throughput |");
    println!("|---|---:|---:|---:|");
    for (contender, figures) in contenders.iter().zip(&summary) {
        println!(
            "| {} | {:.1} us | {:.1} us | {:.0} tasks/s |",
            contender.name(),
            figures.median_us,
            figures.p99_us,
            figures.per_second
        );
    }
    println!();
    let ours = &summary[0];
    for (contender, figures) in contenders.iter().zip(&summary).skip(1) {
        println!(
            "vs {}: round trip {:.2}x (lower is better), throughput {:.2}x (higher is better)",
            contender.name(),
            ours.median_us / figures.median_us,
            ours.per_second / figures.per_second
        );
    }
    let pipe_floor = &summary[1];
    let round_trip = ours.median_us / pipe_floor.median_us;
    println!();
    println!("targets:");
    println!(
        "  round trip within 3x of the pipe floor: {round_trip:.2}x, {}",
        if round_trip <= 3.0 { "met" } else { "missed" }
    );
    println!(
        "  at least 100000 tasks/s: {:.0}, {}",
        ours.per_second,
        if ours.per_second >= 100_000.0 {
            "met"
        } else {
            "missed"
        }
    );
    drop(contenders);
    payloads::run(payload_floor, quick_mode());
}
