//! An echo server whose handler has a blocking step per request (a checksum and a 20 ms sleep
//! standing for a slow disk): run inline on the loop, the step serialises every connection and
//! debug mode names the handler as the task that blocks; offloaded to a `ThreadPool` or a
//! `ProcessPool`, the loop stays free and the latency drops.
//!
//! Run with `cargo run --release --example echo_server`. A built-in client load (20 connections
//! x 10 requests on 127.0.0.1) runs against each variant in turn; the example prints p50 and
//! p99 latency and the debug reports, and exits non-zero unless both offloaded variants beat
//! the inline one and debug mode named the inline handler.
//!
//! This is the point of the article on event-loop servers: `data_received` (or here, the
//! handler's poll) must never call anything that blocks, or the whole loop stops with it.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smol::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use smol::net::{TcpListener, TcpStream};
use smol::{LocalExecutor, future};
use smol_offload::debug::{self, DebugMode, Report, ReportKind};
use smol_offload::{Executor, ProcessPool, ThreadPool};

const CONNECTIONS: usize = 20;
const REQUESTS_PER_CONNECTION: usize = 10;
/// The blocking part of a request.
const BLOCKING_STEP: Duration = Duration::from_millis(20);
/// Debug mode's threshold: under the blocking step, far above a healthy poll.
const THRESHOLD: Duration = Duration::from_millis(10);
/// What debug mode calls the handler.
const HANDLER: &str = "echo handler";

/// The blocking step: a checksum of the request (FNV-1a) and a sleep standing for slow I/O.
/// A plain `fn` with a serde argument, so a `ProcessPool` can run it too.
fn checksum_step(data: Vec<u8>) -> u64 {
    std::thread::sleep(BLOCKING_STEP);
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where the handler runs the blocking step.
#[derive(Clone)]
enum Step {
    Inline,
    Threads(ThreadPool),
    Processes(ProcessPool),
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Step::Inline => "inline on the loop",
            Step::Threads(_) => "ThreadPool(8)",
            Step::Processes(_) => "ProcessPool(4)",
        }
    }

    async fn run(&self, data: Vec<u8>) -> io::Result<u64> {
        let offloaded = match self {
            Step::Inline => return Ok(checksum_step(data)),
            Step::Threads(pool) => pool.run(checksum_step, data).await,
            Step::Processes(pool) => pool.run(checksum_step, data).await,
        };
        offloaded.map_err(io::Error::other)
    }
}

/// Echoes each line back, prefixed with its checksum, until the client closes.
async fn handle(stream: TcpStream, step: Step) -> io::Result<()> {
    let mut reader = BufReader::new(stream.clone());
    let mut writer = stream;
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let sum = step.run(line.clone()).await?;
        writer.write_all(format!("{sum:016x} ").as_bytes()).await?;
        writer.write_all(&line).await?;
    }
}

/// Serves on `listener` until `stop` fires, one watched task per connection.
async fn serve(listener: TcpListener, step: Step, stop: async_channel::Receiver<()>) {
    let ex = LocalExecutor::new();
    let accept = async {
        loop {
            let (stream, _) = listener.accept().await.expect("accept a connection");
            let step = step.clone();
            ex.spawn(debug::watch_named(HANDLER, async move {
                if let Err(err) = handle(stream, step).await {
                    eprintln!("handler failed: {err}");
                }
            }))
            .detach();
        }
    };
    ex.run(future::or(accept, async {
        let _ = stop.recv().await;
    }))
    .await;
}

/// The client load, on its own thread and loop: every latency, in order of completion.
fn client_load(addr: SocketAddr) -> io::Result<Vec<Duration>> {
    let ex = LocalExecutor::new();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|connection| {
            let latencies = latencies.clone();
            ex.spawn(async move {
                let stream = TcpStream::connect(addr).await?;
                let mut reader = BufReader::new(stream.clone());
                let mut writer = stream;
                let mut reply = String::new();
                for request in 0..REQUESTS_PER_CONNECTION {
                    let line = format!("connection {connection} request {request}\n");
                    let start = Instant::now();
                    writer.write_all(line.as_bytes()).await?;
                    reply.clear();
                    reader.read_line(&mut reply).await?;
                    latencies.lock().unwrap().push(start.elapsed());
                    let expected = format!("{:016x} {line}", checksum_step_sum(&line));
                    if reply != expected {
                        return Err(io::Error::other(format!("bad echo {reply:?}")));
                    }
                }
                io::Result::Ok(())
            })
        })
        .collect();
    smol::block_on(ex.run(async {
        for client in clients {
            client.await?;
        }
        io::Result::Ok(())
    }))?;
    Ok(std::mem::take(&mut *latencies.lock().unwrap()))
}

/// The checksum of `checksum_step`, without its sleep, for the client to check replies.
fn checksum_step_sum(line: &str) -> u64 {
    line.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One run of the load against a server whose handler runs its step `step`.
struct Outcome {
    name: &'static str,
    p50: Duration,
    p99: Duration,
    total: Duration,
    reports: Vec<Report>,
}

fn run(step: Step, reports: &Arc<Mutex<Vec<Report>>>) -> io::Result<Outcome> {
    let name = step.name();
    let listener = smol::block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = async_channel::bounded(1);
    let start = Instant::now();
    let clients = std::thread::spawn(move || {
        let latencies = client_load(addr);
        drop(stop);
        latencies
    });
    debug::block_on(serve(listener, step, stopped));
    let total = start.elapsed();
    let mut latencies = clients.join().expect("the client thread does not panic")?;
    latencies.sort();
    let at = |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction).round() as usize];
    Ok(Outcome {
        name,
        p50: at(0.50),
        p99: at(0.99),
        total,
        reports: std::mem::take(&mut *reports.lock().unwrap()),
    })
}

fn main() -> ExitCode {
    smol_offload::init(); // first thing in main, before any thread starts
    let reports: Arc<Mutex<Vec<Report>>> = Arc::default();
    let sink = reports.clone();
    DebugMode::new()
        .threshold(THRESHOLD)
        .on_report(move |report| sink.lock().unwrap().push(report.clone()))
        .enable();

    let steps = || -> Result<[Step; 3], smol_offload::BuildError> {
        Ok([
            Step::Inline,
            Step::Threads(ThreadPool::new(8)?),
            Step::Processes(ProcessPool::new(4)?),
        ])
    };
    let outcomes: io::Result<Vec<Outcome>> = match steps() {
        Ok(steps) => steps.into_iter().map(|step| run(step, &reports)).collect(),
        Err(err) => {
            eprintln!("error: could not start the pools: {err}");
            return ExitCode::FAILURE;
        }
    };
    debug::disable();
    let outcomes = match outcomes {
        Ok(outcomes) => outcomes,
        Err(err) => {
            eprintln!("error: the echo load failed: {err}");
            return ExitCode::FAILURE;
        }
    };

    println!(
        "{CONNECTIONS} connections x {REQUESTS_PER_CONNECTION} requests, a {BLOCKING_STEP:?} \
         blocking step per request, debug threshold {THRESHOLD:?}\n"
    );
    println!(
        "| {:<18} | {:>9} | {:>9} | {:>8} | {:>10} | {:>11} |",
        "blocking step", "p50", "p99", "total", "slow polls", "queue waits"
    );
    println!(
        "| {:-<18} | {:->9} | {:->9} | {:->8} | {:->10} | {:->11} |",
        "", "", "", "", "", ""
    );
    for outcome in &outcomes {
        let slow = count(&outcome.reports, |kind| {
            matches!(kind, ReportKind::SlowPoll { .. })
        });
        let queued = count(&outcome.reports, |kind| {
            matches!(kind, ReportKind::QueueWait { .. })
        });
        println!(
            "| {:<18} | {:>9.1?} | {:>9.1?} | {:>8.2?} | {slow:>10} | {queued:>11} |",
            outcome.name, outcome.p50, outcome.p99, outcome.total
        );
    }
    println!();
    for outcome in &outcomes {
        let first_slow = outcome
            .reports
            .iter()
            .find(|report| matches!(report.kind, ReportKind::SlowPoll { .. }));
        let first_wait = outcome
            .reports
            .iter()
            .find(|report| matches!(report.kind, ReportKind::QueueWait { .. }));
        for report in first_slow.into_iter().chain(first_wait) {
            println!("{}: {report}", outcome.name);
        }
    }

    let [inline, threads, processes] = &outcomes[..] else {
        unreachable!("three variants ran")
    };
    let mut ok = true;
    if !inline
        .reports
        .iter()
        .any(|report| report.task == HANDLER && matches!(report.kind, ReportKind::SlowPoll { .. }))
    {
        eprintln!("error: debug mode did not name the inline handler as blocking the loop");
        ok = false;
    }
    for offloaded in [threads, processes] {
        if offloaded.p50 >= inline.p50 || offloaded.p99 >= inline.p99 {
            eprintln!(
                "error: {} did not beat the inline handler: p50 {:?} vs {:?}, p99 {:?} vs {:?}",
                offloaded.name, offloaded.p50, inline.p50, offloaded.p99, inline.p99
            );
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn count(reports: &[Report], kind: impl Fn(&ReportKind) -> bool) -> usize {
    reports.iter().filter(|report| kind(&report.kind)).count()
}
