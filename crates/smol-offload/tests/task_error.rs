//! `TaskError`: a fallible function's error crosses `Executor::run` on threads and processes
//! with its message, its sources as text, and its `io::ErrorKind`.

use std::fmt;
use std::io;
use std::path::PathBuf;

use smol_offload::{Executor, ProcessPool, TaskError, ThreadPool};

mod common;

use common::block_on;

smol_offload::init_for_tests!();

fn read_file(path: PathBuf) -> Result<String, TaskError> {
    Ok(std::fs::read_to_string(path)?)
}

/// An error whose source is an `io::Error` its message does not repeat.
#[derive(Debug)]
struct LoadError {
    what: String,
    cause: io::Error,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not load {}", self.what)
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

fn load(path: PathBuf) -> Result<usize, TaskError> {
    let text = std::fs::read_to_string(&path).map_err(|cause| LoadError {
        what: path.display().to_string(),
        cause,
    })?;
    Ok(text.len())
}

fn missing() -> PathBuf {
    PathBuf::from("/nonexistent/smol-offload/missing.txt")
}

/// The error of reading a missing file, as the caller's own process sees it.
fn local_not_found() -> io::Error {
    std::fs::read_to_string(missing()).unwrap_err()
}

fn assert_not_found(err: &TaskError) {
    assert_eq!(err.io_kind(), Some(io::ErrorKind::NotFound));
    assert_eq!(err.to_string(), local_not_found().to_string());
    assert!(err.source().is_none());
}

#[test]
fn an_io_error_comes_back_from_a_process_with_its_kind_and_message() {
    let pool = ProcessPool::new(1).unwrap();
    let err = block_on(pool.run(read_file, missing()))
        .unwrap()
        .unwrap_err();
    assert_not_found(&err);
    let text = block_on(pool.run(read_file, PathBuf::from("Cargo.toml")))
        .unwrap()
        .unwrap();
    assert!(text.contains("[package]"));
}

#[test]
fn an_io_error_comes_back_from_a_thread_the_same_way() {
    let pool = ThreadPool::new(1).unwrap();
    let err = block_on(pool.run(read_file, missing()))
        .unwrap()
        .unwrap_err();
    assert_not_found(&err);
}

#[test]
fn a_chain_of_sources_comes_back_from_a_process_as_text() {
    let pool = ProcessPool::new(1).unwrap();
    let err = block_on(pool.run(load, missing())).unwrap().unwrap_err();
    let chain: Vec<&str> = err.chain().collect();
    let expected = format!("could not load {}", missing().display());
    assert_eq!(chain, [expected.as_str(), &local_not_found().to_string()]);
    assert_eq!(err.io_kind(), Some(io::ErrorKind::NotFound));
    assert_eq!(
        err.source().unwrap().to_string(),
        local_not_found().to_string()
    );
    // Back into an io::Error with `?`, as the caller's own code would.
    let io: io::Error = err.into();
    assert_eq!(io.kind(), io::ErrorKind::NotFound);
}

/// Writes to a pipe whose read end is closed, as a task that logs to a consumer gone away does.
fn write_to_a_closed_pipe(_: ()) -> Result<(), TaskError> {
    use std::io::Write;
    let (reader, mut writer) = io::pipe()?;
    drop(reader);
    writer.write_all(b"nobody reads this")?;
    Ok(())
}

#[test]
fn a_write_to_a_closed_pipe_is_an_epipe_error_not_a_dead_worker() {
    // The fork server of this binary started before `main`, where `SIGPIPE` still had its
    // default action (which ends the process): workers must ignore it all the same, as they do
    // under `init()` in a Rust `main`.
    let pool = ProcessPool::new(1).unwrap();
    let err = block_on(pool.run(write_to_a_closed_pipe, ()))
        .unwrap()
        .unwrap_err();
    assert_eq!(err.io_kind(), Some(io::ErrorKind::BrokenPipe), "{err}");
    let pids = pool.pids();
    assert!(block_on(pool.run(write_to_a_closed_pipe, ())).is_ok_and(|r| r.is_err()));
    assert_eq!(pool.pids(), pids, "the worker must live on");
}
