//! With the `tracing` feature, the span current where work is submitted is the parent of what
//! the work logs on its thread. Run with `cargo test -p smol-offload --features tracing --test
//! tracing_context`.

#![cfg(feature = "tracing")]

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use common::block_on;
use futures_lite::StreamExt;
use smol_offload::{Executor, LoopThread, ThreadPool};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber, info, info_span};
use tracing_core::span::Current;

/// A subscriber that records, for every event, the name of its parent span and the thread it
/// was logged on.
#[derive(Default)]
struct Recorder {
    next_id: AtomicU64,
    spans: Mutex<HashMap<u64, &'static Metadata<'static>>>,
    /// `work` field of the event → (parent span name, thread name).
    events: Mutex<HashMap<String, (Option<&'static str>, String)>>,
}

thread_local! {
    /// The spans entered on this thread, innermost last.
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

struct WorkField(Option<String>);

impl Visit for WorkField {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "work" {
            self.0 = Some(format!("{value:?}"));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "work" {
            self.0 = Some(value.to_owned());
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        self.spans.lock().unwrap().insert(id, span.metadata());
        Id::from_u64(id)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut work = WorkField(None);
        event.record(&mut work);
        let Some(work) = work.0 else { return };
        let parent = match event.parent() {
            Some(id) => Some(id.into_u64()),
            None if event.is_contextual() => ENTERED.with(|stack| stack.borrow().last().copied()),
            None => None,
        };
        let parent = parent.and_then(|id| Some(self.spans.lock().unwrap().get(&id)?.name()));
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        self.events.lock().unwrap().insert(work, (parent, thread));
    }

    /// What `Span::current()` asks: the innermost span entered on this thread.
    fn current_span(&self) -> Current {
        let innermost = ENTERED.with(|stack| stack.borrow().last().copied());
        match innermost.and_then(|id| Some((id, *self.spans.lock().unwrap().get(&id)?))) {
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

fn recorder() -> &'static Recorder {
    static RECORDER: OnceLock<&'static Recorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static Recorder = Box::leak(Box::default());
        tracing::subscriber::set_global_default(ForwardTo(recorder)).unwrap();
        recorder
    })
}

/// The global subscriber, forwarding to the leaked recorder the tests read.
struct ForwardTo(&'static Recorder);

impl Subscriber for ForwardTo {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.0.new_span(span)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        self.0.record(span, values)
    }
    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.0.record_follows_from(span, follows)
    }
    fn event(&self, event: &Event<'_>) {
        self.0.event(event)
    }
    fn current_span(&self) -> Current {
        self.0.current_span()
    }
    fn enter(&self, span: &Id) {
        self.0.enter(span)
    }
    fn exit(&self, span: &Id) {
        self.0.exit(span)
    }
}

/// The parent span and thread of the event whose `work` field is `work`.
fn logged(work: &str) -> (Option<&'static str>, String) {
    recorder()
        .events
        .lock()
        .unwrap()
        .get(work)
        .cloned()
        .unwrap_or_else(|| panic!("no event with work = {work:?}"))
}

fn log_pool_run(_: ()) {
    info!(work = "run");
}

#[test]
fn thread_work_logs_under_the_submitting_span() {
    recorder();
    let pool = ThreadPool::builder()
        .workers(2)
        .thread_name(|i| format!("traced-{i}"))
        .build()
        .unwrap();
    let span = info_span!("submitter");
    let (spawned, ran, default, dedicated) = span.in_scope(|| {
        (
            pool.spawn(|| info!(work = "spawn")),
            pool.run(log_pool_run, ()),
            smol_offload::spawn(|| info!(work = "default")),
            smol_offload::spawn_dedicated("traced-own", || info!(work = "dedicated")),
        )
    });
    block_on(async {
        spawned.await.unwrap();
        ran.await.unwrap();
        default.await.unwrap();
        dedicated.await.unwrap();
    });
    let (parent, thread) = logged("spawn");
    assert_eq!(parent, Some("submitter"));
    assert!(thread.starts_with("traced-"), "{thread}");
    assert_eq!(logged("run").0, Some("submitter"));
    assert_eq!(logged("default").0, Some("submitter"));
    assert_eq!(
        logged("dedicated"),
        (Some("submitter"), "traced-own".to_owned())
    );

    // Without a span at submission, the work logs without a parent.
    block_on(pool.spawn(|| info!(work = "unparented"))).unwrap();
    assert_eq!(logged("unparented").0, None);
}

#[test]
fn stream_iterators_log_under_the_span_that_made_the_stream() {
    recorder();
    let pool = ThreadPool::new(1).unwrap();
    let span = info_span!("streamer");
    let (on_pool, on_own) = span.in_scope(|| {
        (
            pool.stream((0..3).inspect(|_| info!(work = "pool-item")), 1),
            smol_offload::stream_dedicated(
                "traced-stream",
                (0..3).inspect(|_| info!(work = "own-item")),
                1,
            ),
        )
    });
    block_on(async {
        assert_eq!(
            on_pool.map(Result::unwrap).collect::<Vec<_>>().await,
            [0, 1, 2]
        );
        assert_eq!(
            on_own.map(Result::unwrap).collect::<Vec<_>>().await,
            [0, 1, 2]
        );
    });
    assert_eq!(logged("pool-item").0, Some("streamer"));
    assert_eq!(
        logged("own-item"),
        (Some("streamer"), "traced-stream".to_owned())
    );
}

#[test]
fn loop_thread_work_logs_under_the_submitting_span() {
    recorder();
    let target = LoopThread::new("traced-loop").unwrap();
    let span = info_span!("looper");
    let (spawned, local, called) = span.in_scope(|| {
        (
            target.spawn(async {
                smol::future::yield_now().await;
                info!(work = "loop-spawn");
            }),
            target.spawn_local(|| {
                info!(work = "loop-make");
                async {
                    smol::future::yield_now().await;
                    info!(work = "loop-local");
                }
            }),
            target.call(|| info!(work = "loop-call")),
        )
    });
    block_on(async {
        spawned.await.unwrap();
        local.await.unwrap();
        called.await.unwrap();
    });
    let blocking = target.clone();
    std::thread::spawn(move || {
        info_span!("blocker")
            .in_scope(|| blocking.block_on(async { info!(work = "loop-block-on") }))
    })
    .join()
    .unwrap()
    .unwrap();
    for work in ["loop-spawn", "loop-make", "loop-local", "loop-call"] {
        assert_eq!(
            logged(work),
            (Some("looper"), "traced-loop".to_owned()),
            "{work}"
        );
    }
    assert_eq!(logged("loop-block-on").0, Some("blocker"));
    block_on(target.stop()).unwrap();
}
