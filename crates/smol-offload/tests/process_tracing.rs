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
use log_file::{Logged, ToFile, logged, the_event};
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

    let events = logged(log_path());
    let mut task_ids = Vec::new();
    for ((work, submitted_in), pid) in [
        ("first", Some("submitter")),
        ("big", Some("submitter")),
        ("other", Some("other_submitter")),
        ("bare", None),
    ]
    .into_iter()
    .zip(pids)
    {
        let event = &events[the_event(&events, work)];
        assert_eq!(event.pid, pid, "{work} logged in its worker");
        let task = event
            .span("smol_offload_task")
            .unwrap_or_else(|| panic!("{work} logged outside the task's span: {event:?}"));
        assert_eq!(
            task.get("submitted_in").map(String::as_str),
            submitted_in,
            "{work}: {task:?}"
        );
        let task_id = task.get("task_id").expect("a task id").clone();
        task_ids.push(task_id.clone());

        // The application logged the same id at submission, inside the submitting span.
        let submitted: Vec<&Logged> = events
            .iter()
            .filter(|event| {
                event.pid == us && event.fields.get("task_id") == Some(&task_id) && {
                    event.fields.get("message").map(String::as_str)
                        == Some("process task submitted")
                }
            })
            .collect();
        assert_eq!(submitted.len(), 1, "{work}: {events:?}");
        let innermost = submitted[0].spans.last().map(|(name, _)| name.as_str());
        assert_eq!(innermost, submitted_in, "{work}");
    }
    let submitter = &events
        .iter()
        .find(|event| event.pid == us && event.span("submitter").is_some())
        .expect("a submission record in the submitter span");
    assert_eq!(
        submitter.span("submitter").unwrap().get("request"),
        Some(&"7".to_owned()),
        "the application's record has the span's fields"
    );
    task_ids.sort();
    task_ids.dedup();
    assert_eq!(task_ids.len(), 4, "one id per task");
    std::fs::remove_file(log_path()).unwrap();
}
