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

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use common::block_on;
use smol_offload::{Executor, ProcessPool};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber, info, info_span};
use tracing_core::span::Current;

/// Field name → value as text.
type Fields = BTreeMap<String, String>;

/// One event as the file has it: the process that logged it, its spans (outermost first, each
/// with its fields), and its own fields.
#[derive(Debug)]
struct Logged {
    pid: u32,
    spans: Vec<(String, Fields)>,
    fields: Fields,
}

impl Logged {
    /// The fields of the span named `name` around the event, if it is in one.
    fn span(&self, name: &str) -> Option<&Fields> {
        self.spans
            .iter()
            .find(|(span, _)| span == name)
            .map(|(_, fields)| fields)
    }
}

/// A subscriber that appends each event to [`log_path`], with the spans around it.
#[derive(Default)]
struct ToFile {
    next_id: AtomicU64,
    spans: Mutex<HashMap<u64, (&'static Metadata<'static>, Fields)>>,
}

thread_local! {
    /// The spans entered on this thread, innermost last.
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

struct FieldsVisitor<'a>(&'a mut Fields);

impl Visit for FieldsVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Fields as `k=v` pairs separated by `,` (the tests' values have neither `,` nor `=`).
fn encode(fields: &Fields) -> String {
    let pairs: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

fn decode(text: &str) -> Fields {
    text.split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("k=v");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

impl Subscriber for ToFile {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = Fields::new();
        span.record(&mut FieldsVisitor(&mut fields));
        self.spans
            .lock()
            .unwrap()
            .insert(id, (span.metadata(), fields));
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some((_, fields)) = self.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut FieldsVisitor(fields));
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    /// Writes `pid \t name{fields}/name{fields} \t fields`, in one write.
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::new();
        event.record(&mut FieldsVisitor(&mut fields));
        let stack = ENTERED.with(|stack| stack.borrow().clone());
        let spans = self.spans.lock().unwrap();
        let spans: Vec<String> = stack
            .iter()
            .filter_map(|id| spans.get(id))
            .map(|(metadata, fields)| format!("{}{{{}}}", metadata.name(), encode(fields)))
            .collect();
        let line = format!(
            "{}\t{}\t{}\n",
            std::process::id(),
            spans.join("/"),
            encode(&fields)
        );
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path())
            .unwrap();
        file.write_all(line.as_bytes()).unwrap();
    }

    fn current_span(&self) -> Current {
        let innermost = ENTERED.with(|stack| stack.borrow().last().copied());
        let spans = self.spans.lock().unwrap();
        match innermost.and_then(|id| Some((id, spans.get(&id)?.0))) {
            Some((id, metadata)) => Current::new(Id::from_u64(id), metadata),
            None => Current::none(),
        }
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|stack| stack.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        ENTERED.with(|stack| {
            let mut stack = stack.borrow_mut();
            if let Some(at) = stack.iter().rposition(|&id| id == span.into_u64()) {
                stack.remove(at);
            }
        });
    }
}

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
    tracing::subscriber::set_global_default(ToFile::default()).unwrap();
    smol_offload::init();
}

/// Every event logged so far, by any process of the binary.
fn logged() -> Vec<Logged> {
    let text = std::fs::read_to_string(log_path()).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.split('\t');
            let pid = parts.next().unwrap().parse().unwrap();
            let spans = parts
                .next()
                .unwrap()
                .split('/')
                .filter(|span| !span.is_empty())
                .map(|span| {
                    let (name, fields) = span.split_once('{').expect("name{fields}");
                    (name.to_owned(), decode(fields.trim_end_matches('}')))
                })
                .collect();
            let fields = decode(parts.next().unwrap());
            Logged { pid, spans, fields }
        })
        .collect()
}

/// The one event whose `work` field is `work`.
fn the_event(events: &[Logged], work: &str) -> usize {
    let found: Vec<usize> = (0..events.len())
        .filter(|&at| events[at].fields.get("work").map(String::as_str) == Some(work))
        .collect();
    assert_eq!(found.len(), 1, "events with work={work}: {events:?}");
    found[0]
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

    let events = logged();
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
