//! Blocking generators consumed as async streams with a bounded buffer: aiomisc's
//! `@threaded_iterable`, `@threaded_iterable(max_size=2)` closed early with `gen.close()`,
//! `IteratorWrapper` on a pool of one thread and `IteratorWrapperSeparate` on a thread of its
//! own, with `ThreadPool::stream`, `smol_offload::stream` and `smol_offload::stream_dedicated`.
//!
//! The article's "first blockchain" reads its own source and chains a hash over the lines; here
//! the hash is std's `DefaultHasher` instead of MD5, and the lines go to a `Vec` instead of a
//! TCP socket. The `/dev/urandom` readers stop after 10 (or 100) items: dropping the stream is
//! Python's `await gen.close()` (or leaving `async with`), and the example checks that the
//! generator was then dropped, on a worker, having run at most `max_size` items ahead.
//!
//! Run with `cargo run --release --example threaded_iterable`.

use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::Hasher;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use futures_lite::StreamExt;
use smol_offload::ThreadPool;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// The article's `blocking_reader(fname)`: each line with a hash chained over all lines so far.
fn blocking_reader(path: &str) -> std::io::Result<impl Iterator<Item = (String, u64)> + use<>> {
    let mut chain = DefaultHasher::new();
    let lines = BufReader::new(File::open(path)?).lines();
    Ok(lines.map_while(Result::ok).map(move |line| {
        chain.write(line.as_bytes());
        (line, chain.finish())
    }))
}

/// The article's `urandom_reader()`: endless 8-byte reads. It counts what it produced and
/// reports, when dropped, which thread dropped it.
struct UrandomReader {
    file: File,
    size: usize,
    produced: Arc<AtomicUsize>,
    dropped: mpsc::Sender<String>,
}

impl Iterator for UrandomReader {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let mut chunk = vec![0; self.size];
        self.file.read_exact(&mut chunk).ok()?;
        self.produced.fetch_add(1, Ordering::SeqCst);
        Some(chunk)
    }
}

impl Drop for UrandomReader {
    fn drop(&mut self) {
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        let _ = self.dropped.send(name);
    }
}

fn urandom_reader(
    size: usize,
) -> Result<(UrandomReader, Arc<AtomicUsize>, mpsc::Receiver<String>)> {
    let produced = Arc::new(AtomicUsize::new(0));
    let (dropped, dropped_by) = mpsc::channel();
    let reader = UrandomReader {
        file: File::open("/dev/urandom")?,
        size,
        produced: produced.clone(),
        dropped,
    };
    Ok((reader, produced, dropped_by))
}

fn main() -> Result<()> {
    smol::block_on(async {
        // @threaded_iterable def blocking_reader(fname) ... async for line, digest in generator:
        let source = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/threaded_iterable.rs"
        );
        let expected_lines = std::fs::read_to_string(source)?.lines().count();
        let mut generator = smol_offload::stream(blocking_reader(source)?, 64);
        let mut chained = Vec::new();
        while let Some(item) = generator.next().await {
            let (line, digest) = item?;
            chained.push(format!("{digest:016x}\t{line}"));
        }
        assert_eq!(chained.len(), expected_lines);
        println!("blocking_reader: {} lines, first:", chained.len());
        println!("  {}", chained[0]);

        // @threaded_iterable(max_size=2) def urandom_reader(): ... break after 10, generator.close()
        let pool = ThreadPool::builder()
            .workers(1)
            .thread_name(|_| "pool-1".to_owned())
            .build()?;
        let (reader, produced, dropped_by) = urandom_reader(8)?;
        let mut generator = pool.stream(reader, 2);
        let mut counter = 0;
        while let Some(chunk) = generator.next().await {
            assert_eq!(chunk?.len(), 8);
            counter += 1;
            if counter == 10 {
                break;
            }
        }
        drop(generator); // await gen.close()
        let dropped_on = dropped_by.recv()?;
        let ahead = produced.load(Ordering::SeqCst);
        println!("urandom_reader(max_size=2): read 10, produced {ahead}, dropped on {dropped_on}");
        assert!(
            ahead <= 10 + 2 + 1,
            "ran {ahead} items ahead of a buffer of 2"
        );
        assert_eq!(dropped_on, "pool-1");

        // IteratorWrapper(urandom_reader, executor=ThreadPoolExecutor(1), max_size=2)
        let (reader, _, dropped_by) = urandom_reader(1024)?;
        let mut chunks = 0usize;
        let mut hash = DefaultHasher::new();
        let mut generator = pool.stream(reader, 2).take(100);
        while let Some(chunk) = generator.next().await {
            hash.write(&chunk?);
            chunks += 1;
        }
        drop(generator);
        assert_eq!(chunks, 100);
        assert_eq!(dropped_by.recv()?, "pool-1");
        println!("IteratorWrapper: 100 chunks, hash {:016x}", hash.finish());

        // IteratorWrapperSeparate(urandom_reader, max_size=2): a thread of its own.
        let (reader, _, dropped_by) = urandom_reader(1024)?;
        let mut generator = smol_offload::stream_dedicated("urandom", reader, 2).take(100);
        let mut chunks = 0usize;
        while let Some(chunk) = generator.next().await {
            chunk?;
            chunks += 1;
        }
        drop(generator);
        assert_eq!(chunks, 100);
        assert_eq!(dropped_by.recv()?, "urandom");
        println!("IteratorWrapperSeparate: 100 chunks on the thread \"urandom\"");
        Ok(())
    })
}
