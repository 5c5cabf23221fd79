//! Pool metrics for Prometheus: a thread pool and a process pool under load, with
//! `metrics-exporter-prometheus` serving `/metrics` on 127.0.0.1 (a free port). The example
//! fetches its own endpoint once, checks that the task counter and the two histograms are there
//! for both pools, prints a few lines of what Prometheus would scrape, and exits.
//!
//! Run with `cargo run --release --example metrics_prometheus --features metrics`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;
use smol_offload::{Executor, ProcessPool, ThreadPool, gather};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// The families every pool exports, checked in the scrape.
const FAMILIES: [&str; 3] = [
    "smol_offload_tasks_total",
    "smol_offload_queue_wait_seconds",
    "smol_offload_run_seconds",
];

fn checksum(n: u64) -> u64 {
    (0..20_000u64).fold(n, |sum, x| sum.wrapping_mul(31).wrapping_add(x ^ n))
}

fn fails_on_seven(n: u64) -> u64 {
    assert!(n != 7, "seven is not welcome");
    n
}

fn main() -> Result<()> {
    // First, before the exporter starts its thread: process pools fork from a clean process.
    smol_offload::init();

    let address = free_local_port()?;
    PrometheusBuilder::new()
        .with_http_listener(address)
        // Histograms with buckets (rather than summaries), in seconds.
        .set_buckets(&[1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0])?
        .install()?;

    // Built after the recorder is installed: a pool resolves its metric handles when built.
    let threads = ThreadPool::builder().name("checksums").workers(2).build()?;
    let processes = ProcessPool::builder().name("sandbox").workers(2).build()?;
    smol::block_on(async {
        let on_threads = gather((0..200).map(|n| threads.run(checksum, n))).await;
        let on_processes = gather((0..50).map(|n| processes.run(fails_on_seven, n))).await;
        assert!(on_threads.iter().all(Result::is_ok));
        assert_eq!(
            on_processes.iter().filter(|result| result.is_err()).count(),
            1
        );
    });

    let scrape = scrape_when(address, |text| {
        text.contains(r#"outcome="panic""#) && FAMILIES.iter().all(|family| text.contains(family))
    })?;
    for family in FAMILIES {
        for pool in [r#"pool="checksums""#, r#"pool="sandbox""#] {
            assert!(
                scrape
                    .lines()
                    .any(|line| line.starts_with(family) && line.contains(pool)),
                "{family} of {pool} missing from the scrape:\n{scrape}"
            );
        }
    }
    println!("GET http://{address}/metrics, a few lines of it:");
    // The counts that are not zero, the workers, and how many run times each pool recorded.
    let shown = scrape.lines().filter(|line| {
        (line.starts_with("smol_offload_tasks_total") && !line.ends_with(" 0"))
            || line.starts_with("smol_offload_workers")
            || line.starts_with("smol_offload_run_seconds_count")
    });
    for line in shown {
        println!("  {line}");
    }
    Ok(())
}

/// A port on loopback that nobody listens on now.
fn free_local_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?)
}

/// Fetches `/metrics` until `ready` accepts it: the exporter's listener starts on its own
/// thread, and renders what was recorded up to the request.
fn scrape_when(address: SocketAddr, ready: impl Fn(&str) -> bool) -> Result<String> {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        match get_metrics(address) {
            Ok(text) if ready(&text) => return Ok(text),
            Ok(_) | Err(_) if Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(text) => return Err(format!("incomplete scrape:\n{text}").into()),
            Err(err) => return Err(err),
        }
    }
}

/// One plain HTTP/1.0 GET of `/metrics`: the body.
fn get_metrics(address: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("no end of headers in the response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("unexpected response: {head}").into());
    }
    Ok(body.to_owned())
}
