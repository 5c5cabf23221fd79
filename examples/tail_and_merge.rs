//! Tail several growing files and merge their lines into one output file written by a thread
//! with its own event loop: the first article's `WriteThread`, `tail_async` and
//! `confirm_merge`, on `LoopThread`.
//!
//! Five writer threads append numbered random lines to five temporary files. On the main event
//! loop, one `tail_async` task per file reads new lines with `smol_offload::spawn`, the default
//! pool (Python's `run_in_executor(None, readline, handle)`), and sleeps `interval` when there is
//! nothing new. Every line goes to `WriteThread::write`, which runs the write on the writer's own
//! loop thread (Python's `run_coroutine_threadsafe(real_write(data), loop)` + `wrap_future`), so
//! the main loop never waits for the disk. The merged file is opened on that loop thread and
//! never leaves it: `spawn_local` builds each write there, next to the `Rc` that owns the file.
//! `WriteThread::start` and `stop` stand for `async with WriteThread(path) as output:`; `stop`
//! closes the file on the loop thread, lets the loop drain and joins the thread. At the end
//! `confirm_merge` checks that every input line reached the output exactly once and in order per
//! input.
//!
//! One change from the article: instead of closing the input handles after a fixed second
//! (`close_all`), each writer says when it is done, and its tailer stops once it has read
//! everything after that.
//!
//! Article 000 is one of the Python asyncio articles summarised at the end of
//! `docs/asyncio-migration.md`.
//!
//! Run with `cargo run --release --example tail_and_merge`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smol::{LocalExecutor, Timer};
use smol_offload::LoopThread;

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

/// The article's `tail_async`: read lines until the writer is done and everything is read,
/// and hand each one to `output.write`.
async fn tail_async(
    mut tail: Tail,
    writer_done: Arc<AtomicBool>,
    output: WriteThread,
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
                output.write(line).await?;
                lines += 1;
            }
            None if finished => return Ok(lines),
            None => {
                Timer::after(POLL_INTERVAL).await;
            }
        }
    }
}

/// The name of the writer's loop thread.
const WRITER_THREAD: &str = "WriteThread";

/// The merged output and how many lines went into it.
struct Merged {
    file: BufWriter<File>,
    lines: usize,
}

thread_local! {
    /// The merged output, the article's `self.output`: opened on the writer's loop thread and
    /// only ever touched there. The `Rc` makes every future that holds it `!Send`, so such a
    /// future can only be built on that thread, with `spawn_local`.
    static OUTPUT: RefCell<Option<Rc<RefCell<Merged>>>> = const { RefCell::new(None) };
}

/// The article's `WriteThread`: a thread running its own loop that owns the merged file.
/// Clones are handles to the same thread.
#[derive(Clone)]
struct WriteThread {
    thread: LoopThread,
}

impl WriteThread {
    /// `__aenter__`: start the thread (through the default pool, as the article starts it in
    /// the executor) and open the output on it.
    async fn start(output_path: PathBuf) -> Result<WriteThread> {
        let thread = smol_offload::spawn(|| LoopThread::new(WRITER_THREAD)).await??;
        thread
            .call(move || {
                let file = BufWriter::new(File::create(output_path)?);
                let merged = Rc::new(RefCell::new(Merged { file, lines: 0 }));
                OUTPUT.with(|slot| *slot.borrow_mut() = Some(merged));
                io::Result::Ok(())
            })
            .await??;
        Ok(WriteThread { thread })
    }

    /// `write`: run `real_write` on the writer's loop and await it from this one
    /// (`run_coroutine_threadsafe` + `wrap_future`).
    async fn write(&self, data: Vec<u8>) -> Result<()> {
        self.thread.spawn_local(move || real_write(data)).await??;
        Ok(())
    }

    /// `__aexit__`: close the output on its thread, then stop the loop (it refuses new work,
    /// finishes what was sent, and its thread is joined). Returns the number of lines written.
    async fn stop(self) -> Result<usize> {
        let lines = self
            .thread
            .call(|| {
                let merged = OUTPUT.with(|slot| slot.borrow_mut().take());
                let merged = merged.expect("the output is open until stop");
                let merged = Rc::into_inner(merged).expect("no write is in flight at stop");
                let Merged { file, lines } = merged.into_inner();
                file.into_inner()
                    .map_err(io::IntoInnerError::into_error)?
                    .sync_all()?;
                io::Result::Ok(lines)
            })
            .await??;
        self.thread.stop().await?;
        Ok(lines)
    }
}

/// `real_write`, built on the writer's loop thread: it holds the `Rc` of the output across an
/// await, so it is not `Send`.
async fn real_write(data: Vec<u8>) -> io::Result<()> {
    assert_eq!(std::thread::current().name(), Some(WRITER_THREAD));
    let merged = OUTPUT
        .with(|slot| slot.borrow().clone())
        .expect("the output is open until stop");
    smol::future::yield_now().await; // other writes may run meanwhile, on this same thread
    let mut merged = merged.borrow_mut();
    merged.file.write_all(&data)?;
    merged.lines += 1;
    Ok(())
}

/// The article's `run_fully_async`: `async with WriteThread(output_path) as output:`, one
/// `tail_async` task per input on this loop, then `gather`. Returns the lines written.
async fn run_fully_async(
    tails: Vec<(Tail, Arc<AtomicBool>)>,
    output_path: PathBuf,
    started: Instant,
) -> Result<usize> {
    let output = WriteThread::start(output_path).await?;
    let executor = LocalExecutor::new();
    let tasks: Vec<_> = tails
        .into_iter()
        .map(|(tail, done)| executor.spawn(tail_async(tail, done, output.clone())))
        .collect();
    executor
        .run(async {
            for (i, task) in tasks.into_iter().enumerate() {
                let lines = task.await?;
                println!(
                    "[{:>6.1?}] tailer {i} read {lines} lines",
                    started.elapsed()
                );
            }
            Ok::<_, Box<dyn std::error::Error>>(())
        })
        .await?;
    let written = output.stop().await?;
    println!(
        "[{:>6.1?}] {WRITER_THREAD} wrote {written} lines and stopped",
        started.elapsed()
    );
    Ok(written)
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

    let tails = inputs
        .iter()
        .map(|input| {
            let tail = Tail {
                reader: BufReader::new(File::open(&input.path)?),
                partial: Vec::new(),
            };
            Ok((tail, input.done.clone()))
        })
        .collect::<io::Result<_>>()?;
    let written = smol::block_on(run_fully_async(tails, output_path.clone(), started))?;
    assert_eq!(written, FILES * LINES_PER_FILE);

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
