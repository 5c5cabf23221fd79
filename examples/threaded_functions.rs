//! Blocking functions that return something to await, in the style of article 004's aiomisc
//! decorators: `@aiomisc.threaded` becomes a plain `fn` that returns a `Task` from
//! `smol_offload::spawn` (the default pool), and what aiomisc carries in `contextvars` (the
//! `user_id` of `write_user`) travels as an argument captured by the closure.
//!
//! It runs two 100 ms `blocking_function()` calls in parallel with `gather` (about 100 ms,
//! not 200), then the audit-log example: five `write_user()` calls append a 4-byte big-endian
//! record each, and `read_log()` reads them back. aiomisc's `read_log` is a threaded generator
//! consumed with `async for`; here it reads the whole log in one offloaded call, and the
//! `threaded_iterable` example streams a generator instead (`smol_offload::stream`). The end
//! of this example shows `@threaded_separate` the plain way, with `std::thread` and
//! `async_channel`; the `threaded_separate` example does it with `spawn_dedicated` and
//! `cancelled()`.
//!
//! Article 004 is one of the Python asyncio articles summarised at the end of
//! `docs/asyncio-migration.md`.
//!
//! Run with `cargo run --release --example threaded_functions`.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use smol::Timer;
use smol_offload::{Task, try_gather};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// `@threaded def blocking_function(): time.sleep(...)`
fn blocking_function() -> Task<()> {
    smol_offload::spawn(|| std::thread::sleep(Duration::from_millis(100)))
}

/// `@threaded def write_user()`, with the context variable passed in.
fn write_user(log: PathBuf, user_id: u32) -> Task<io::Result<()>> {
    smol_offload::spawn(move || {
        let mut file = File::options().create(true).append(true).open(log)?;
        file.write_all(&user_id.to_be_bytes()) // struct.pack(">I", user_id)
    })
}

/// `@threaded def read_log()`, reading every record at once.
fn read_log(log: PathBuf) -> Task<io::Result<Vec<u32>>> {
    smol_offload::spawn(move || {
        let mut bytes = Vec::new();
        File::open(log)?.read_to_end(&mut bytes)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|record| u32::from_be_bytes(record.try_into().unwrap()))
            .collect())
    })
}

/// The temporary audit log, removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `@threaded_separate def long_blocking_function(event)`, the plain way: a thread of its own,
/// a stop flag, and a channel to await its end.
fn long_blocking_function(stop: Arc<AtomicBool>) -> io::Result<async_channel::Receiver<u32>> {
    let (done, finished) = async_channel::bounded(1);
    std::thread::Builder::new()
        .name("long-job".into())
        .spawn(move || {
            let mut rounds = 0;
            while !stop.load(Ordering::Acquire) {
                println!("  long job: running");
                std::thread::sleep(Duration::from_millis(20));
                rounds += 1;
            }
            println!("  long job: stopping");
            let _ = done.send_blocking(rounds);
        })?;
    Ok(finished)
}

async fn run(log: &Path) -> Result<()> {
    let default_pool = smol_offload::default_pool()?;
    println!(
        "default pool: {} threads (set SMOL_OFFLOAD_THREADS to change it)",
        default_pool.workers()
    );

    let started = Instant::now();
    try_gather([blocking_function(), blocking_function()]).await?;
    let elapsed = started.elapsed();
    println!("two 100 ms blocking_function() calls in parallel took {elapsed:.1?}");

    let user_ids = [6621, 33012, 1590, 45008, 56844];
    let writes = user_ids.map(|user_id| write_user(log.to_owned(), user_id));
    for written in try_gather(writes).await? {
        written?;
    }
    let records = read_log(log.to_owned()).await??;
    println!("audit log: {records:?}");
    let written: BTreeSet<u32> = user_ids.into();
    let read: BTreeSet<u32> = records.iter().copied().collect();
    assert_eq!(records.len(), user_ids.len());
    assert_eq!(read, written, "every user id was logged once");

    println!("a long job on a thread of its own, stopped after 100 ms:");
    let stop = Arc::new(AtomicBool::new(false));
    let finished = long_blocking_function(stop.clone())?;
    Timer::after(Duration::from_millis(100)).await; // loop.call_later(..., stop_event.set)
    stop.store(true, Ordering::Release);
    let rounds = finished.recv().await?;
    println!("  long job ran {rounds} rounds");
    assert!(rounds >= 1);
    Ok(())
}

fn main() -> Result<()> {
    let log = TempFile(
        std::env::temp_dir().join(format!("smol-offload-audit-{}.bin", std::process::id())),
    );
    smol::block_on(run(&log.0))
}
