//! Fallible functions through `Executor::run`: a function that returns
//! `Result<T, smol_offload::TaskError>` uses `?` on any error (here `std::io::Error`), and runs
//! unchanged on a thread pool and a process pool. The caller gets the error back with its
//! message, its sources and its `io::ErrorKind`, as Python re-raises a worker's `OSError`.
//!
//! It counts the words of three files, one of them missing, on both pools, and checks that both
//! give the same counts and the same `NotFound` error.
//!
//! Run with `cargo run --release --example fallible_functions`.

use std::io;
use std::path::PathBuf;

use smol_offload::{Executor, ProcessPool, TaskError, ThreadPool, gather};

/// `def count_words(path): return len(open(path).read().split())`, failing as Python would.
fn count_words(path: PathBuf) -> Result<usize, TaskError> {
    let text = std::fs::read_to_string(&path)?;
    Ok(text.split_whitespace().count())
}

/// The word count of each file, or the error that reading it gave, in order.
async fn count_all(
    executor: &impl Executor,
    paths: &[PathBuf],
) -> Result<Vec<Result<usize, TaskError>>, smol_offload::Error> {
    let tasks = paths
        .iter()
        .map(|path| executor.run(count_words, path.clone()));
    gather(tasks).await.into_iter().collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    smol_offload::init();
    let dir = std::env::temp_dir().join(format!("fallible-functions-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let outcome = run(&dir);
    std::fs::remove_dir_all(&dir)?;
    outcome
}

fn run(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let paths = [
        dir.join("one.txt"),
        dir.join("missing.txt"),
        dir.join("two.txt"),
    ];
    std::fs::write(&paths[0], "the quick brown fox")?;
    std::fs::write(&paths[2], "jumps over the lazy dog today")?;

    let threads = ThreadPool::new(2)?;
    let processes = ProcessPool::new(2)?;
    let (on_threads, on_processes) = smol::block_on(async {
        Ok::<_, smol_offload::Error>((
            count_all(&threads, &paths).await?,
            count_all(&processes, &paths).await?,
        ))
    })?;

    for (pool, counts) in [("threads", &on_threads), ("processes", &on_processes)] {
        println!("{pool}:");
        for (path, count) in paths.iter().zip(counts) {
            match count {
                Ok(words) => println!("  {}: {words} words", path.display()),
                Err(err) => println!("  {}: error: {err} ({:?})", path.display(), err.io_kind()),
            }
        }
    }

    if on_threads != on_processes {
        return Err("threads and processes disagree".into());
    }
    let [Ok(4), Err(missing), Ok(6)] = on_processes.as_slice() else {
        return Err(format!("unexpected counts {on_processes:?}").into());
    };
    if missing.io_kind() != Some(io::ErrorKind::NotFound) {
        return Err(format!("expected NotFound, got {:?}", missing.io_kind()).into());
    }
    // Back in the caller's world, the error is an `io::Error` of the same kind again.
    let again: io::Error = missing.clone().into();
    if again.kind() != io::ErrorKind::NotFound {
        return Err(format!("the io::Error came back as {:?}", again.kind()).into());
    }
    println!("both pools agree; the missing file is {:?}", again.kind());
    Ok(())
}
