//! A `tracing` subscriber for the process tracing tests: it appends one line per event to a
//! file, from whichever process logs it (the application, the fork server or a worker), and
//! [`logged`] reads them back. A test binary takes it with
//! `#[path = "common/log_file.rs"] mod log_file;`.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_core::span::Current;

/// Field name → value as text.
pub(crate) type Fields = BTreeMap<String, String>;

/// One event as the file has it: the process that logged it, its spans (outermost first, each
/// with its fields), and its own fields.
#[derive(Debug)]
pub(crate) struct Logged {
    pub(crate) pid: u32,
    pub(crate) spans: Vec<(String, Fields)>,
    pub(crate) fields: Fields,
}

impl Logged {
    /// The fields of the span named `name` around the event, if it is in one.
    pub(crate) fn span(&self, name: &str) -> Option<&Fields> {
        self.spans
            .iter()
            .find(|(span, _)| span == name)
            .map(|(_, fields)| fields)
    }
}

/// A subscriber that appends each event to the file at `path`, with the spans around it, from
/// whichever process logs it.
pub(crate) struct ToFile {
    path: PathBuf,
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
            .open(&self.path)
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

impl ToFile {
    pub(crate) fn new(path: PathBuf) -> ToFile {
        ToFile {
            path,
            next_id: AtomicU64::new(0),
            spans: Mutex::default(),
        }
    }
}

/// Every event logged so far to the file at `path`, by any process.
pub(crate) fn logged(path: &Path) -> Vec<Logged> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
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
pub(crate) fn the_event(events: &[Logged], work: &str) -> usize {
    let found: Vec<usize> = (0..events.len())
        .filter(|&at| events[at].fields.get("work").map(String::as_str) == Some(work))
        .collect();
    assert_eq!(found.len(), 1, "events with work={work}: {events:?}");
    found[0]
}

/// Checks what four tasks submitted by process `us` logged to the file at `path`: the event of each task's `work`
/// in its worker (`pids`, in order), inside a `smol_offload_task` span whose `submitted_in`
/// is the name given beside `work` (`None`: submitted outside any span); the same task id
/// logged by `us` at submission as a `submitted` event inside that span; the `submitter`
/// span's record with its `request` field; one id per task. Returns the events.
pub(crate) fn assert_carried_contexts(
    path: &Path,
    us: u32,
    tasks: [(&str, Option<&str>); 4],
    pids: [u32; 4],
    submitted: &str,
) -> Vec<Logged> {
    let events = logged(path);
    let mut task_ids = Vec::new();
    for ((work, submitted_in), pid) in tasks.into_iter().zip(pids) {
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

        // The submitter logged the same id at submission, inside the submitting span.
        let at_submission: Vec<&Logged> = events
            .iter()
            .filter(|event| {
                event.pid == us
                    && event.fields.get("task_id") == Some(&task_id)
                    && event.fields.get("message").map(String::as_str) == Some(submitted)
            })
            .collect();
        assert_eq!(at_submission.len(), 1, "{work}: {events:?}");
        let innermost = at_submission[0].spans.last().map(|(name, _)| name.as_str());
        assert_eq!(innermost, submitted_in, "{work}");
    }
    let submitter = events
        .iter()
        .find(|event| event.pid == us && event.span("submitter").is_some())
        .expect("a submission record in the submitter span");
    assert_eq!(
        submitter.span("submitter").unwrap().get("request"),
        Some(&"7".to_owned()),
        "the submitter's record has the span's fields"
    );
    task_ids.sort();
    task_ids.dedup();
    assert_eq!(task_ids.len(), 4, "one id per task");
    events
}
