//! The same `run_blocking_tasks` on a `ThreadPool`, a `ProcessPool` and a `RemotePool`: remote
//! workers are this very program started again in worker mode, reached through a Redis broker.
//! It starts a private `redis-server` on loopback and two workers of two processes each, runs
//! the six `blocks(n)` tasks on each pool, prints which host and process ran each remote task,
//! checks that the three pools agree, and stops the workers with `SIGTERM`.
//!
//! On real machines, start `your-program --worker` on each worker host with the broker's URL
//! and the same `SMOL_OFFLOAD_REMOTE_KEY`; here everything runs on 127.0.0.1.
//!
//! Run with `cargo run --release -p smol-offload-remote --example remote_workers` (needs `redis-server` on the `PATH`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use smol_offload::{Executor, ProcessPool, ThreadPool, try_gather};
use smol_offload_remote::{RemotePool, RemoteWorker};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// The demo's signing key; a real fleet reads a long random one from SMOL_OFFLOAD_REMOTE_KEY.
const KEY: &str = "example-key-please-use-a-random-one";
const QUEUE: &str = "blocks";

/// Sleeps a tenth of a second (blocking work) and says where it ran.
fn blocks(n: u64) -> (u64, String) {
    std::thread::sleep(Duration::from_millis(100));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    (n * n, format!("{}:{}", host.trim(), std::process::id()))
}

async fn run_blocking_tasks(executor: &impl Executor) -> Result<Vec<(u64, String)>> {
    let tasks = (0..6).map(|n| executor.run(blocks, n));
    Ok(try_gather(tasks).await?)
}

/// Children killed (if still running) when dropped, so that none outlives the example.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_redis() -> Result<(Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("could not start redis-server (is it installed?): {err}"))?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    for line in lines.by_ref() {
        if line?.contains("Ready to accept connections") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, format!("redis://127.0.0.1:{port}")))
}

fn main() -> Result<()> {
    smol_offload::init();
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--worker") {
        let url = args.next().ok_or("--worker needs the broker's url")?;
        RemoteWorker::builder(&url)
            .queue(QUEUE)
            .key(KEY)
            .workers(2)
            .serve()?;
        return Ok(());
    }

    let (redis, url) = start_redis()?;
    let mut children = Children(vec![redis]);
    for _ in 0..2 {
        let worker = Command::new(std::env::current_exe()?)
            .args(["--worker", &url])
            .stderr(Stdio::null())
            .spawn()?;
        children.0.push(worker);
    }

    let threads = ThreadPool::new(3)?;
    let processes = ProcessPool::new(3)?;
    let remote = RemotePool::builder(&url).queue(QUEUE).key(KEY).build()?;
    smol::block_on(async {
        let mut results = Vec::new();
        for (name, outcome) in [
            ("threads", run_blocking_tasks(&threads).await),
            ("processes", run_blocking_tasks(&processes).await),
            ("remote", run_blocking_tasks(&remote).await),
        ] {
            let outcome = outcome?;
            println!("{name}:");
            for (n, (square, runner)) in outcome.iter().enumerate() {
                println!("  blocks({n}) = {square:>2}, ran in {runner}");
            }
            results.push(
                outcome
                    .into_iter()
                    .map(|(square, _)| square)
                    .collect::<Vec<_>>(),
            );
        }
        if results
            .iter()
            .any(|squares| *squares != [0, 1, 4, 9, 16, 25])
        {
            return Err(format!("the pools disagree: {results:?}").into());
        }
        let fleet = remote.fleet()?;
        println!(
            "fleet: {} worker processes on {:?}, {} jobs in the queue",
            fleet.workers, fleet.hosts, fleet.queue_length
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;

    // Stop the workers as an operator would: SIGTERM, then they finish what they hold.
    for worker in &mut children.0[1..] {
        let pid = nix::unistd::Pid::from_raw(worker.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let status = worker.wait()?;
        if !status.success() {
            return Err(format!("a worker did not stop cleanly: {status}").into());
        }
    }
    println!("the three pools agree; the workers stopped cleanly");
    Ok(())
}
