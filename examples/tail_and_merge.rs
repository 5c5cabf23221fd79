//! Tail several growing files and merge their lines into one output file: article 000's
//! `tail_async` + `run_in_executor(None, readline, handle)` + `confirm_merge`.
//!
//! Five writer threads append numbered random lines to five temporary files. On one event
//! loop, one tailer task per file reads new lines with `smol_offload::spawn`, the default pool
//! (Python's `run_in_executor(None, ...)`), sleeps `interval` when there is nothing new, and
//! sends each line to a single merger task that writes the merged file, its writes offloaded
//! too. At the end `confirm_merge` checks that every input line reached the output exactly once
//! and in order per input.
//!
//! Two changes from the article: the article moves the writes into `WriteThread`, a thread running its
//! own event loop that other loops await (`run_coroutine_threadsafe`); that loop thread is a
//! later layer of smol-offload, so here one merger task owns the output file and an
//! `async_channel` carries the lines to it. And instead of closing the input handles after a
//! fixed second (`close_all`), each writer says when it is done, and its tailer stops once it
//! has read everything after that.
//!
//! Article 000 is one of the Python asyncio articles summarised at the end of
//! `docs/asyncio-migration.md`.
//!
//! Run with `cargo run --release --example tail_and_merge`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use smol::{LocalExecutor, Timer};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const FILES: usize = 5;
const LINES_PER_FILE: usize = 10;
const WRITE_INTERVAL: Duration = Duration::from_millis(20);
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A temporary directory, removed with its files when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small xorshift generator: random enough for sleeps and letters.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The article's `write_random_data`: numbered lines with ten random letters, at random times.
fn write_random_data(path: &Path, done: &AtomicBool, seed: u64) -> io::Result<()> {
    let mut random = Random(seed | 1);
    let mut file = File::options().append(true).open(path)?;
    for i in 0..LINES_PER_FILE {
        let pause = random.below(WRITE_INTERVAL.as_micros() as u64);
        std::thread::sleep(Duration::from_micros(pause));
        let letters: String = (0..10)
            .map(|_| char::from(b'a' + random.below(26) as u8))
            .collect();
        // One `write` call per line, like the article's write + flush.
        file.write_all(format!("{}-{i:02}-{letters}\n", path.display()).as_bytes())?;
    }
    done.store(true, Ordering::Release);
    Ok(())
}

/// One input file and the thread writing it.
struct Input {
    path: PathBuf,
    /// Set by the writer after its last line.
    done: Arc<AtomicBool>,
    writer: JoinHandle<io::Result<()>>,
}

/// The article's `start_write_threads`: one empty file and one writer thread per input.
fn start_write_threads(directory: &Path) -> io::Result<Vec<Input>> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |t| t.as_nanos() as u64);
    (0..FILES)
        .map(|i| {
            let path = directory.join(i.to_string());
            File::create(&path)?; // exists before its tailer opens it
            let done = Arc::new(AtomicBool::new(false));
            let writer = {
                let (path, done) = (path.clone(), done.clone());
                let seed = seed.wrapping_mul(i as u64 + 1);
                std::thread::spawn(move || write_random_data(&path, &done, seed))
            };
            Ok(Input { path, done, writer })
        })
        .collect()
}

/// An input file being tailed: where reading got to, and a line not finished yet.
struct Tail {
    reader: BufReader<File>,
    partial: Vec<u8>,
}

/// The article's `readline(handle)`: the next whole line, or `None` if there is none yet (the
/// article's `NoNewData`). Runs on a pool thread: it is a blocking read.
fn readline(tail: &mut Tail) -> io::Result<Option<Vec<u8>>> {
    tail.reader.read_until(b'\n', &mut tail.partial)?;
    if tail.partial.ends_with(b"\n") {
        Ok(Some(std::mem::take(&mut tail.partial)))
    } else {
        Ok(None) // nothing new, or half a line: keep it and look again later
    }
}

/// The article's `tail_async`: read lines until the writer is done and everything is read.
async fn tail_async(
    mut tail: Tail,
    writer_done: Arc<AtomicBool>,
    merged: Sender<Vec<u8>>,
) -> Result<usize> {
    let mut lines = 0;
    loop {
        // Read the flag first: whatever was written before it was set, this read will see.
        let finished = writer_done.load(Ordering::Acquire);
        let line;
        (tail, line) = smol_offload::spawn(move || {
            let line = readline(&mut tail);
            (tail, line)
        })
        .await?;
        match line? {
            Some(line) => {
                merged.send(line).await?;
                lines += 1;
            }
            None if finished => return Ok(lines),
            None => {
                Timer::after(POLL_INTERVAL).await;
            }
        }
    }
}

/// The one writer of the merged file (the article's `WriteThread.write`); its writes are
/// offloaded so the loop never waits for the disk. Ends when every tailer has hung up.
async fn merge(lines: Receiver<Vec<u8>>, mut output: File) -> Result<usize> {
    let mut count = 0;
    while let Ok(line) = lines.recv().await {
        output = smol_offload::spawn(move || output.write_all(&line).map(|()| output)).await??;
        count += 1;
    }
    output = smol_offload::spawn(move || output.sync_all().map(|()| output)).await??;
    drop(output);
    Ok(count)
}

/// The article's `confirm_merge`: every input line is in the output, once, in input order.
fn confirm_merge(input_paths: &[PathBuf], output_path: &Path) -> io::Result<()> {
    let mut found: BTreeMap<&Path, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(output_path)?.lines() {
        let input = input_paths
            .iter()
            .find(|path| line.starts_with(&format!("{}-", path.display())))
            .unwrap_or_else(|| panic!("output line {line:?} comes from no input"));
        found.entry(input).or_default().push(line.to_owned());
    }
    for path in input_paths {
        let expected: Vec<String> = std::fs::read_to_string(path)?
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(expected.len(), LINES_PER_FILE);
        let found = found.get(path.as_path()).map_or(&[][..], Vec::as_slice);
        assert_eq!(expected, found, "lines of {}", path.display());
        println!(
            "  {}: {} lines, all merged in order",
            path.display(),
            found.len()
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let directory =
        TempDir(std::env::temp_dir().join(format!("smol-offload-tail-{}", std::process::id())));
    std::fs::create_dir_all(&directory.0)?;
    let started = Instant::now();
    let inputs = start_write_threads(&directory.0)?;
    let output_path = directory.0.join("merged");
    println!(
        "{FILES} writer threads append {LINES_PER_FILE} lines each under {}",
        directory.0.display()
    );

    let executor = LocalExecutor::new();
    let (send, receive) = async_channel::bounded(16);
    let merger = executor.spawn(merge(receive, File::create(&output_path)?));
    let tailers: Vec<_> = inputs
        .iter()
        .map(|input| {
            let tail = Tail {
                reader: BufReader::new(File::open(&input.path)?),
                partial: Vec::new(),
            };
            Ok(executor.spawn(tail_async(tail, input.done.clone(), send.clone())))
        })
        .collect::<io::Result<_>>()?;
    drop(send); // the merger ends when the last tailer drops its sender

    smol::block_on(executor.run(async {
        for (i, tailer) in tailers.into_iter().enumerate() {
            let lines = tailer.await?;
            println!(
                "[{:>6.1?}] tailer {i} read {lines} lines",
                started.elapsed()
            );
        }
        let merged = merger.await?;
        println!("[{:>6.1?}] merger wrote {merged} lines", started.elapsed());
        assert_eq!(merged, FILES * LINES_PER_FILE);
        Ok::<_, Box<dyn std::error::Error>>(())
    }))?;

    let mut input_paths = Vec::new();
    for input in inputs {
        input.writer.join().expect("a writer thread panicked")?;
        input_paths.push(input.path);
    }
    let merged = std::fs::read_to_string(&output_path)?;
    println!("first lines of {}:", output_path.display());
    for line in merged.lines().take(6) {
        println!("  {line}");
    }
    println!("confirm_merge:");
    confirm_merge(&input_paths, &output_path)?;
    Ok(())
}
