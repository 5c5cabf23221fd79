//! With the `tracing` feature, debug mode's reports are `WARN` events with structured fields
//! when a subscriber is set (and no callback). Run with
//! `cargo test -p smol-offload --features tracing --test debug_tracing`.

#![cfg(feature = "tracing")]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smol_offload::debug::{self, DebugMode};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// The fields of one event, as text.
type Fields = BTreeMap<String, String>;

/// A subscriber that keeps every event's level, target and fields.
#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<(Level, String, Fields)>>>,
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

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::new();
        event.record(&mut FieldsVisitor(&mut fields));
        let metadata = event.metadata();
        self.events
            .lock()
            .unwrap()
            .push((*metadata.level(), metadata.target().to_owned(), fields));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[test]
fn a_slow_poll_is_a_warn_event_with_the_fields() {
    let recorder = Recorder::default();
    DebugMode::new()
        .threshold(Duration::from_millis(20))
        .enable();
    tracing::subscriber::with_default(recorder.clone(), || {
        smol::block_on(debug::watch_named("traced", async {
            std::thread::sleep(Duration::from_millis(60));
        }));
    });
    debug::disable();
    let events = recorder.events.lock().unwrap();
    let slow: Vec<_> = events
        .iter()
        .filter(|(_, _, fields)| fields.get("kind").map(String::as_str) == Some("slow_poll"))
        .collect();
    assert_eq!(slow.len(), 1, "{events:?}");
    let (level, target, fields) = slow[0];
    assert_eq!(*level, Level::WARN);
    assert_eq!(target, "smol_offload::debug");
    assert_eq!(fields["task"], "traced");
    assert!(
        fields["location"].contains("debug_tracing.rs"),
        "{fields:?}"
    );
    assert!(
        fields["elapsed_ms"].parse::<f64>().unwrap() >= 60.0,
        "{fields:?}"
    );
    assert_eq!(fields["threshold_ms"].parse::<f64>().unwrap(), 20.0);
    assert!(
        fields["message"].starts_with("task \"traced\" "),
        "{fields:?}"
    );
}
