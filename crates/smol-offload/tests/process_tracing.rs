//! With the `tracing` feature, what a process task logs in its worker carries the task's id and
//! the name of the span current where it was submitted, and the application logs the same id
//! inside that span. Run with `cargo test -p smol-offload --features tracing --test
//! process_tracing`.
//!
//! The subscriber is set in the binary's constructor, before `init`: the fork server and the
//! workers it forks inherit it. It appends one line per event to a file, from whichever process
//! logs it, and the tests read the file once their tasks are done.

#![cfg(feature = "tracing")]

mod common;
#[path = "common/log_file.rs"]
mod log_file;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::block_on;
use log_file::{ToFile, assert_carried_contexts};
use smol_offload::{Executor, ProcessPool};
use tracing::{info, info_span};

/// The file every process of the test binary appends its events to.
fn log_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!(
            "smol-offload-process-tracing-{}.log",
            std::process::id()
        ))
    })
}

#[ctor::ctor]
fn subscribe_then_start_the_fork_server() {
    let _ = std::fs::remove_file(log_path());
    tracing::subscriber::set_global_default(ToFile::new(log_path().clone())).unwrap();
    smol_offload::init();
}

/// Logs an event with `work` in the worker, and says which worker it was.
fn log_in_worker(work: String) -> u32 {
    info!(work = work.as_str(), "in the worker");
    std::process::id()
}

/// The same, with an argument big enough to travel through shared memory.
fn log_big_in_worker((work, data): (String, Vec<u8>)) -> u32 {
    info!(work = work.as_str(), bytes = data.len(), "in the worker");
    std::process::id()
}

#[test]
fn worker_records_carry_the_task_id_and_the_submitting_span() {
    let pool = ProcessPool::new(2).unwrap();
    let (first, big) = info_span!("submitter", request = 7).in_scope(|| {
        (
            pool.run(log_in_worker, "first".to_owned()),
            pool.run(log_big_in_worker, ("big".to_owned(), vec![1u8; 1 << 20])),
        )
    });
    let other = info_span!("other_submitter").in_scope(|| pool.run(log_in_worker, "other".into()));
    let bare = pool.run(log_in_worker, "bare".to_owned());
    let pids = block_on(async {
        [
            first.await.unwrap(),
            big.await.unwrap(),
            other.await.unwrap(),
            bare.await.unwrap(),
        ]
    });
    let us = std::process::id();
    assert!(pids.iter().all(|&pid| pid != us), "ran in the workers");

    assert_carried_contexts(
        log_path(),
        us,
        [
            ("first", Some("submitter")),
            ("big", Some("submitter")),
            ("other", Some("other_submitter")),
            ("bare", None),
        ],
        pids,
        "process task submitted",
    );
    std::fs::remove_file(log_path()).unwrap();
}
