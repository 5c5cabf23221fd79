//! `blocks-remote`: [`run_demo`] on a [`RemotePool`] whose workers are this program again,
//! started by [`run`] in worker mode ([`serve`]) on a Redis broker.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use smol_offload_remote::RemotePool;
use smol_offload_remote::RemoteWorker;
use smol_offload_remote::env::KEY_VARIABLE;

use crate::logging::log_to_stdout;
use crate::options::RemoteArgs;
use crate::run::run_demo;

/// Runs the demo: starts a private `redis-server` unless `--redis` names a broker, connects,
/// starts `--workers` workers of one process each on a queue of its own, waits until they serve,
/// runs [`run_demo`] on them, then closes the workers' stdin and waits for them to stop.
///
/// # Errors
///
/// No `redis-server` on the `PATH`, a worker that did not start or stop cleanly, or an error of
/// [`run_demo`].
pub fn run(args: &RemoteArgs) -> anyhow::Result<bool> {
    let mut children = Vec::new();
    let outcome = run_with(args, &mut children);
    // Whatever happened, nothing outlives the demo: what still runs is killed, all is reaped.
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    outcome
}

/// [`run`], with every process it starts in `children`.
fn run_with(args: &RemoteArgs, children: &mut Vec<Child>) -> anyhow::Result<bool> {
    let url = match &args.redis {
        Some(url) => url.clone(),
        None => start_redis(children)?,
    };
    let key = std::env::var(KEY_VARIABLE).or_else(|_| random_key())?;
    let queue = format!("blocks-demo-{}", std::process::id());
    let pool = RemotePool::builder(&url).queue(&queue).key(&key).build()?;
    let (first_worker, mut forwarders) = (children.len(), Vec::new());
    for _ in 0..args.demo.run.workers {
        let mut worker = Command::new(std::env::current_exe()?);
        worker.args(["--redis", &url, "--serve", &queue]);
        worker.env(KEY_VARIABLE, &key).stdin(Stdio::piped());
        // The workers log blocks(n) to their stdout, straight into this log. Their own
        // messages come in pieces on stderr: pass them on a whole line at a time, so that the
        // lines of different workers never mix.
        worker.stdout(std::io::stderr()).stderr(Stdio::piped());
        children.push(worker.spawn()?);
        let lines = children.last_mut().and_then(|worker| worker.stderr.take());
        let lines = BufReader::new(lines.context("a worker has no stderr")?).lines();
        forwarders.push(std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
            }
        }));
    }
    let workers = &mut children[first_worker..];
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.fleet()?.workers < workers.len() {
        for worker in workers.iter_mut() {
            if let Some(status) = worker.try_wait()? {
                anyhow::bail!("a worker exited before it served: {status}");
            }
        }
        let late = Instant::now() > deadline;
        anyhow::ensure!(!late, "the workers did not start in 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    run_demo(&pool, &args.demo, "remote")?;
    // Workers stop when their stdin closes: they finish what they hold and leave the fleet.
    for worker in workers.iter_mut() {
        drop(worker.stdin.take());
    }
    for worker in workers {
        let status = worker.wait()?;
        anyhow::ensure!(status.success(), "a worker did not stop cleanly: {status}");
    }
    for forwarder in forwarders {
        let _ = forwarder.join();
    }
    Ok(true)
}

/// Worker mode: serves `queue` of the broker at `url` with one process, until stdin closes.
///
/// # Errors
///
/// The worker could not start (see [`RemoteWorker::serve`]).
pub fn serve(url: &str, queue: &str) -> anyhow::Result<bool> {
    log_to_stdout();
    smol_offload::init();
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        stopper.store(true, Ordering::Relaxed);
    });
    let worker = RemoteWorker::builder(url).queue(queue).workers(1);
    worker.stop_flag(stop).serve()?;
    Ok(true)
}

/// Starts `redis-server` on a free loopback port, without persistence, into `children`, and
/// gives its URL once it accepts connections.
fn start_redis(children: &mut Vec<Child>) -> anyhow::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = Command::new("redis-server");
    server.args(["--port", &port.to_string(), "--bind", "127.0.0.1"]);
    server.args(["--save", "", "--appendonly", "no"]);
    let server = server.stdout(Stdio::piped()).stderr(Stdio::null()).spawn();
    let install = "install it (Debian: apt-get install redis-server) or pass --redis URL";
    children.push(server.with_context(|| format!("cannot start redis-server: {install}"))?);
    let output = children.last_mut().and_then(|server| server.stdout.take());
    let mut lines = BufReader::new(output.context("redis-server has no stdout")?).lines();
    let mut lines_until_ready = lines.by_ref().map_while(Result::ok);
    let ready = lines_until_ready.any(|line| line.contains("Ready to accept connections"));
    anyhow::ensure!(ready, "redis-server exited before it was ready");
    std::thread::spawn(move || lines.for_each(drop));
    Ok(format!("redis://127.0.0.1:{port}"))
}

/// A fresh signing key: 32 random bytes from the kernel, as hex.
fn random_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}
