//! The newcomer's functions on a thread pool and a process pool, the way a user tests them.

// A crate that denies unsafe code can use `init_for_tests!()` all the same.
#![deny(unsafe_code)]

use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use newcomer::{count_all, count_words, divide, sleep_ms};
use smol_offload::{Executor, ProcessPool, TaskError, ThreadPool};

smol_offload::init_for_tests!();

/// This crate's manifest, and a file that does not exist.
fn paths() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    vec![dir.join("Cargo.toml"), dir.join("no-such-file.txt")]
}

fn words_of_the_manifest() -> usize {
    let text = std::fs::read_to_string(&paths()[0]).unwrap();
    text.split_whitespace().count()
}

fn assert_counts(counts: &[Result<usize, TaskError>]) {
    assert_eq!(counts[0].as_ref().ok(), Some(&words_of_the_manifest()));
    let err = counts[1].as_ref().unwrap_err();
    assert_eq!(err.io_kind(), Some(io::ErrorKind::NotFound));
    assert_eq!(err.to_string(), "No such file or directory (os error 2)");
}

#[test]
fn counts_words_on_threads_and_on_processes() -> Result<(), Box<dyn std::error::Error>> {
    let threads = ThreadPool::new(2)?;
    let processes = ProcessPool::new(2)?;
    let (on_threads, on_processes) = smol::block_on(async {
        Ok::<_, smol_offload::Error>((
            count_all(&threads, paths()).await?,
            count_all(&processes, paths()).await?,
        ))
    })?;
    assert_counts(&on_threads);
    assert_counts(&on_processes);
    Ok(())
}

#[test]
fn an_io_error_from_a_process_converts_back_with_question_mark() {
    fn caller(pool: &ProcessPool) -> io::Result<usize> {
        let count =
            smol::block_on(pool.run(count_words, paths()[1].clone())).map_err(io::Error::other)?;
        Ok(count?) // TaskError into io::Error, with its kind
    }
    let pool = ProcessPool::new(1).unwrap();
    assert_eq!(caller(&pool).unwrap_err().kind(), io::ErrorKind::NotFound);
}

#[test]
fn a_panic_in_a_process_comes_back_as_an_error() {
    let pool = ProcessPool::new(1).unwrap();
    let err = smol::block_on(pool.run(divide, (1, 0))).unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.panic_message(), Some("attempt to divide by zero"));
    // The worker, or its replacement, goes on.
    assert_eq!(smol::block_on(pool.run(divide, (42, 2))).unwrap(), 21);
}

#[test]
fn a_task_that_takes_too_long_times_out() {
    let pool = ThreadPool::new(1).unwrap();
    // Ten seconds against a limit of ten milliseconds: the timeout always comes first.
    let err = smol::block_on(
        pool.run(sleep_ms, 10_000)
            .timeout(Duration::from_millis(10)),
    )
    .unwrap_err();
    assert!(err.is_timeout(), "{err}");
}

#[test]
fn the_program_prints_counts_and_fails_on_a_missing_file() {
    let program = env!("CARGO_BIN_EXE_newcomer");
    let manifest = &paths()[0];
    let output = Command::new(program).arg(manifest).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let expected = format!(
        "{}: {} words\n",
        manifest.display(),
        words_of_the_manifest()
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected);

    let output = Command::new(program).args(paths()).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "Error: No such file or directory (os error 2)\n"
    );
}
