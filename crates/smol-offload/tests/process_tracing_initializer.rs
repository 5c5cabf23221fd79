//! With the `tracing` feature, a subscriber set after `init` is in the application only: the
//! workers, forked from the application as it was at `init`, log nothing, unless the pool's
//! initializer sets a subscriber in each of them. Run with `cargo test -p smol-offload
//! --features tracing --test process_tracing_initializer`.

#![cfg(feature = "tracing")]

mod common;
#[path = "common/log_file.rs"]
mod log_file;

use std::path::PathBuf;

use common::block_on;
use log_file::{ToFile, logged, the_event};
use smol_offload::{Executor, ProcessPool};
use tracing::{info, info_span};

smol_offload::init_for_tests!();

/// The pool's initializer: the worker's own subscriber, appending to the same file.
fn subscribe_in_worker(path: PathBuf) {
    tracing::subscriber::set_global_default(ToFile::new(path)).unwrap();
}

/// Logs an event with `work` in the worker, and says which worker it was.
fn log_in_worker(work: String) -> u32 {
    info!(work = work.as_str(), "in the worker");
    std::process::id()
}

#[test]
fn a_subscriber_set_after_init_reaches_workers_through_the_initializer() {
    let path = std::env::temp_dir().join(format!(
        "smol-offload-process-tracing-initializer-{}.log",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    // After `init`: the application's subscriber, not the workers'.
    tracing::subscriber::set_global_default(ToFile::new(path.clone())).unwrap();
    let plain = ProcessPool::new(1).unwrap();
    let initialized = ProcessPool::builder()
        .workers(1)
        .initializer(subscribe_in_worker, path.clone())
        .build()
        .unwrap();
    let (unheard, heard) = info_span!("late_submitter").in_scope(|| {
        (
            plain.run(log_in_worker, "unheard".to_owned()),
            initialized.run(log_in_worker, "heard".to_owned()),
        )
    });
    let (_, worker) = block_on(async { (unheard.await.unwrap(), heard.await.unwrap()) });

    let events = logged(&path);
    assert!(
        !events
            .iter()
            .any(|event| event.fields.get("work").map(String::as_str) == Some("unheard")),
        "a worker without the initializer has no subscriber: {events:?}"
    );
    let event = &events[the_event(&events, "heard")];
    assert_eq!(event.pid, worker);
    let task = event.span("smol_offload_task").expect("the task's span");
    assert_eq!(
        task.get("submitted_in").map(String::as_str),
        Some("late_submitter")
    );
    let task_id = task.get("task_id").expect("a task id");
    let us = std::process::id();
    assert!(
        events.iter().any(|event| event.pid == us
            && event.fields.get("task_id") == Some(task_id)
            && event.span("late_submitter").is_some()),
        "the application logged task {task_id} in the submitting span: {events:?}"
    );
    std::fs::remove_file(&path).unwrap();
}
