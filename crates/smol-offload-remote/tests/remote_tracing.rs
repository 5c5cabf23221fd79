//! With the `tracing` feature, what a remote task logs in the worker process that runs it
//! carries the task's id and the name of the span current where it was submitted, as for a
//! local process task, and the client logs the same id inside that span. Run with
//! `cargo test -p smol-offload-remote --features tracing --test remote_tracing`.
//!
//! The subscriber is set in the binary's constructor, before `init`, in the test and in the
//! remote worker (this binary run again): both append one line per event to the same file,
//! named by the test, and the test reads it once its tasks are done.

#![cfg(feature = "tracing")]

mod common;
#[path = "common/log_file.rs"]
mod log_file;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use common::{block_on, in_child};
use log_file::{ToFile, assert_carried_contexts};
use redis_server::{RedisServer, skip_without_redis_server};
use smol_offload::Executor;
use smol_offload_remote::{RemotePool, RemoteWorker};
use tracing::{info, info_span};

const KEY: &str = "remote-tracing-test-key-0123456789";
const WORKER_MARKER: &str = "SMOL_OFFLOAD_TEST_REMOTE_TRACING_WORKER";
const LOG_VARIABLE: &str = "SMOL_OFFLOAD_TEST_REMOTE_TRACING_LOG";

/// The file every process of the test appends its events to: the test's, which its worker is
/// told through [`LOG_VARIABLE`].
fn log_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| match std::env::var_os(LOG_VARIABLE) {
        Some(path) => PathBuf::from(path),
        None => std::env::temp_dir().join(format!(
            "smol-offload-remote-tracing-{}.log",
            std::process::id()
        )),
    })
}

#[ctor::ctor]
fn subscribe_then_start_the_fork_server() {
    if !in_child(WORKER_MARKER) {
        let _ = std::fs::remove_file(log_path());
    }
    tracing::subscriber::set_global_default(ToFile::new(log_path().clone())).unwrap();
    smol_offload::init();
}

/// The remote worker, killed when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The body of the worker process: serve until killed.
#[test]
#[ignore = "runs as a remote worker in a child process, started by the test"]
fn remote_tracing_worker_main() {
    if !in_child(WORKER_MARKER) {
        return;
    }
    let url = std::env::var(WORKER_MARKER).unwrap();
    RemoteWorker::builder(&url)
        .queue("tracing")
        .workers(2)
        .key(KEY)
        .serve()
        .unwrap();
}

/// Logs an event with `work` in the worker process, and says which process it was.
fn log_in_worker(work: String) -> u32 {
    info!(work = work.as_str(), "in the worker");
    std::process::id()
}

#[test]
fn remote_worker_records_carry_the_task_id_and_the_submitting_span() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let worker = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "remote_tracing_worker_main",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WORKER_MARKER, redis.url())
        .env(LOG_VARIABLE, log_path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let worker = Worker(worker);
    let pool = RemotePool::builder(&redis.url())
        .queue("tracing")
        .key(KEY)
        .build()
        .unwrap();
    let (first, second) = info_span!("submitter", request = 7).in_scope(|| {
        (
            pool.run(log_in_worker, "first".to_owned()),
            pool.run(log_in_worker, "second".to_owned()),
        )
    });
    let other = info_span!("other_submitter").in_scope(|| pool.run(log_in_worker, "other".into()));
    let bare = pool.run(log_in_worker, "bare".to_owned());
    let pids = block_on(async {
        [
            first.await.unwrap(),
            second.await.unwrap(),
            other.await.unwrap(),
            bare.await.unwrap(),
        ]
    });
    let us = std::process::id();
    let serving = worker.0.id();
    assert!(
        pids.iter().all(|&pid| pid != us && pid != serving),
        "ran in the worker's processes: {pids:?}"
    );

    let events = assert_carried_contexts(
        log_path(),
        us,
        [
            ("first", Some("submitter")),
            ("second", Some("submitter")),
            ("other", Some("other_submitter")),
            ("bare", None),
        ],
        pids,
        "remote task submitted",
    );
    // The worker's own process pool made no task ids of its own for these jobs.
    assert!(
        !events
            .iter()
            .any(|event| event.fields.get("message").map(String::as_str)
                == Some("process task submitted")),
        "{events:?}"
    );
    drop(worker);
    std::fs::remove_file(log_path()).unwrap();
}
