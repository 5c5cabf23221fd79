//! A first crate on smol-offload: the blocking functions it offloads, and the async code that
//! runs them on a thread pool or a process pool alike.
//!
//! `src/main.rs` is the program; `tests/pools.rs` tests it with both pools, starting the fork
//! server with `smol_offload::init_for_tests!()`.

use std::path::PathBuf;
use std::time::Duration;

use smol_offload::{Executor, TaskError, gather};

/// The number of words in a file: fails with the `io::Error` of reading it, carried by a
/// `TaskError` so that it can come back from a worker process.
pub fn count_words(path: PathBuf) -> Result<usize, TaskError> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.split_whitespace().count())
}

/// `a / b`, panicking when `b` is zero, as integer division does.
pub fn divide((a, b): (u64, u64)) -> u64 {
    a / b
}

/// Sleeps for `ms` milliseconds, then returns them: a stand-in for slow blocking work.
pub fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The word counts of `paths`, in order, counted on `executor`'s workers. A file that could not
/// be read gives its error; a task that the pool could not run fails the whole count.
pub async fn count_all(
    executor: &impl Executor,
    paths: Vec<PathBuf>,
) -> Result<Vec<Result<usize, TaskError>>, smol_offload::Error> {
    let tasks = paths
        .into_iter()
        .map(|path| executor.run(count_words, path));
    gather(tasks).await.into_iter().collect()
}
