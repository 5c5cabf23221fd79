//! Reading a large file without freezing the event loop: article 002's `AsyncFileWrapper`, which
//! reads a big file in small pieces scheduled with `call_soon` so that other callbacks run in
//! between, and its errata (each piece is still a blocking read on the loop).
//!
//! The example writes a 32 MiB temporary file, asks the kernel to drop it from the page cache
//! (so the reads go to the disk, as for a big file read the first time), and reads it three ways
//! while a ticker task on the same loop tries to tick every millisecond:
//!
//! 1. `std::fs::read` of the whole file on the loop: the ticker stops for the whole read;
//! 2. 256 KiB chunks read on the loop, yielding between chunks (`AsyncFileWrapper`): the loop
//!    gets a turn between chunks, but each read still blocks it for as long as the disk takes;
//! 3. 256 KiB chunks read on a pool thread, one chunk ahead: the loop never waits for the disk.
//!
//! It prints the ticker's largest gap for each (timings depend on the machine and are not
//! checked) and checks the byte count and checksum of every read.
//!
//! Article 002 is one of the Python asyncio articles summarised at the end of
//! `docs/asyncio-migration.md`.
//!
//! Run with `cargo run --release --example chunked_file_read`.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use smol::Timer;
use smol_offload::ThreadPool;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const FILE_SIZE: usize = 32 << 20;
const CHUNK: usize = 256 << 10; // a multiple of 8: see `Checksum::update`
const TICK: Duration = Duration::from_millis(1);

/// A cheap checksum over 8-byte words, fed one chunk (or the whole file) at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checksum(u64);

impl Checksum {
    fn new() -> Checksum {
        Checksum(0xcbf2_9ce4_8422_2325)
    }

    /// Every chunk but the last must be a whole number of words, so that the result does not
    /// depend on how the file was split.
    fn update(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let word = u64::from_le_bytes(word.try_into().unwrap());
            self.0 = (self.0 ^ word)
                .wrapping_mul(0x100_0000_01b3)
                .rotate_left(29);
        }
        for &byte in words.remainder() {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// The temporary file, removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `FILE_SIZE` pseudo-random bytes and returns the file with their checksum.
fn create_file() -> Result<(TempFile, Checksum)> {
    let path = std::env::temp_dir().join(format!(
        "smol-offload-chunked-read-{}.bin",
        std::process::id()
    ));
    let temp = TempFile(path);
    let mut file = File::create(&temp.0)?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut buffer = vec![0u8; 1 << 20];
    let mut sum = Checksum::new();
    for _ in 0..FILE_SIZE / buffer.len() {
        for word in buffer.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        sum.update(&buffer);
        file.write_all(&buffer)?;
    }
    file.sync_all()?;
    Ok((temp, sum))
}

/// Asks the kernel to forget the file's cached pages, so the next read goes to the disk.
fn drop_from_page_cache(path: &Path) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    let evicted = File::open(path).and_then(|file| {
        posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).map_err(io::Error::from)
    });
    if let Err(err) = evicted {
        println!("  (could not drop the file from the page cache: {err})");
    }
}

/// Reads up to `CHUNK` bytes: fewer only at the end of the file, none after it.
fn read_chunk(mut file: File) -> io::Result<(File, Vec<u8>)> {
    let mut chunk = Vec::with_capacity(CHUNK);
    (&mut file).take(CHUNK as u64).read_to_end(&mut chunk)?;
    Ok((file, chunk))
}

/// 1. The whole file in one blocking call on the loop.
async fn whole_file_on_the_loop(path: &Path) -> Result<(usize, Checksum)> {
    let bytes = std::fs::read(path)?;
    let mut sum = Checksum::new();
    sum.update(&bytes);
    Ok((bytes.len(), sum))
}

/// 2. `AsyncFileWrapper`: small blocking reads on the loop, giving way between them.
async fn chunks_on_the_loop(path: &Path) -> Result<(usize, Checksum)> {
    let mut file = File::open(path)?;
    let (mut total, mut sum) = (0, Checksum::new());
    loop {
        let chunk;
        (file, chunk) = read_chunk(file)?;
        if chunk.is_empty() {
            return Ok((total, sum));
        }
        total += chunk.len();
        sum.update(&chunk);
        smol::future::yield_now().await; // the article's loop.call_soon(self.read_ready, ...)
    }
}

/// 3. Chunks read on a pool thread; the next chunk is read while the loop checks this one.
async fn chunks_through_the_pool(pool: &ThreadPool, path: &Path) -> Result<(usize, Checksum)> {
    let file = File::open(path)?;
    let (mut total, mut sum) = (0, Checksum::new());
    let mut next = pool.spawn(move || read_chunk(file));
    loop {
        let (file, chunk) = next.await??;
        if chunk.is_empty() {
            return Ok((total, sum));
        }
        next = pool.spawn(move || read_chunk(file));
        total += chunk.len();
        sum.update(&chunk);
    }
}

/// Ticks every `TICK` until `stop` is set; returns the number of ticks and the largest gap.
async fn ticker(stop: &Cell<bool>) -> (u32, Duration) {
    let (mut ticks, mut largest) = (0, Duration::ZERO);
    let mut last = Instant::now();
    while !stop.get() {
        Timer::after(TICK).await;
        let now = Instant::now();
        largest = largest.max(now - last);
        last = now;
        ticks += 1;
    }
    (ticks, largest)
}

/// Runs `read` and the ticker together on one loop, and reports both.
fn measure<F>(name: &str, read: F) -> Result<(usize, Checksum)>
where
    F: Future<Output = Result<(usize, Checksum)>>,
{
    let stop = Cell::new(false);
    let started = Instant::now();
    let ((ticks, largest_gap), result) = smol::block_on(smol::future::zip(ticker(&stop), async {
        Timer::after(Duration::from_millis(5)).await; // let the ticker get going
        let result = read.await;
        stop.set(true);
        result
    }));
    let (bytes, sum) = result?;
    println!(
        "{name:<34} {:>8.1?}  {ticks:>4} ticks, largest gap {largest_gap:>8.1?}",
        started.elapsed()
    );
    Ok((bytes, sum))
}

fn main() -> Result<()> {
    let (file, expected) = create_file()?;
    let path = file.0.as_path();
    println!(
        "read {} MiB while a ticker on the same loop ticks every {TICK:?}:",
        FILE_SIZE >> 20
    );
    let pool = ThreadPool::builder()
        .workers(1)
        .thread_name(|_| "file-reader".into())
        .build()?;

    drop_from_page_cache(path);
    let whole = measure(
        "1. whole file, blocking on the loop",
        whole_file_on_the_loop(path),
    )?;
    drop_from_page_cache(path);
    let on_loop = measure(
        "2. chunks on the loop (article 002)",
        chunks_on_the_loop(path),
    )?;
    drop_from_page_cache(path);
    let pooled = measure(
        "3. chunks through a ThreadPool",
        chunks_through_the_pool(&pool, path),
    )?;

    for (bytes, sum) in [whole, on_loop, pooled] {
        assert_eq!(bytes, FILE_SIZE, "every byte was read");
        assert_eq!(sum, expected, "the bytes read are the bytes written");
    }
    println!(
        "all three read {FILE_SIZE} bytes with checksum {:016x}",
        expected.0
    );
    Ok(())
}
