//! The `--events` file: one JSON object per task and line, and what can be computed from it.
//!
//! A line looks like
//! `{"task":3,"worker":"Thread-1","start_us":100412,"end_us":200519,"result":9,"pid":4242,"backend":"thread"}`:
//! an [`Outcome`] and the pool that ran it; times are microseconds after the run's start,
//! measured inside `blocks`.

use std::fs;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::blocks::Outcome;

/// One line of an events file: the [`Outcome`], then the pool that ran it.
#[derive(Serialize)]
struct Event<'a> {
    #[serde(flatten)]
    outcome: &'a Outcome,
    backend: &'a str,
}

/// Writes `outcomes` to `path` as events of `backend`, one JSON object per line, replacing the
/// file.
///
/// # Errors
///
/// The file could not be created or written.
pub fn write_events(path: &Path, backend: &str, outcomes: &[Outcome]) -> anyhow::Result<()> {
    let mut text = String::new();
    for outcome in outcomes {
        text += &serde_json::to_string(&Event { outcome, backend })?;
        text.push('\n');
    }
    fs::write(path, text).with_context(|| format!("cannot write events to {}", path.display()))
}

/// Reads the outcomes of the events file at `path`.
///
/// # Errors
///
/// The file could not be read, or holds something other than events (the error gives the line).
pub fn read_events(path: &Path) -> anyhow::Result<Vec<Outcome>> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read events from {}", path.display()))?;
    let events = serde_json::Deserializer::from_str(&text).into_iter();
    let events: serde_json::Result<_> = events.collect();
    events.with_context(|| format!("bad events file {}", path.display()))
}

/// The highest number of intervals `[start, end)` that overlap at one instant: how many tasks
/// ran at once at the busiest moment. A task that starts exactly when another ends does not
/// overlap it.
///
/// # Examples
///
/// ```
/// use blocks_demo::events::max_concurrency;
///
/// assert_eq!(max_concurrency([(0, 10), (5, 15), (10, 20)]), 2);
/// assert_eq!(max_concurrency([(0, 10), (10, 20)]), 1);
/// ```
pub fn max_concurrency(intervals: impl IntoIterator<Item = (u64, u64)>) -> usize {
    // At one instant, ends of tasks that took time come first, then starts, then ends of
    // tasks that took no time: touching tasks do not overlap, and an instantaneous task still
    // counts against whatever runs across it.
    const END: u8 = 0;
    const START: u8 = 1;
    const INSTANT_END: u8 = 2;
    let mut edges = Vec::new();
    for (start, end) in intervals {
        edges.push((start, START));
        edges.push(if end > start {
            (end, END)
        } else {
            (start, INSTANT_END)
        });
    }
    edges.sort_unstable();
    let (mut running, mut most) = (0, 0);
    for (_, kind) in edges {
        running = if kind == START {
            running + 1
        } else {
            running - 1
        };
        most = most.max(running);
    }
    most
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::outcome;

    #[test]
    fn events_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let outcomes = [
            outcome(1, "Thread-2", 3, 100_003),
            outcome(0, "Thread-1", 1, 100_001),
        ];
        write_events(&path, "thread", &outcomes).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let first = r#"{"task":1,"worker":"Thread-2","start_us":3,"end_us":100003,"result":1,"pid":42,"backend":"thread"}"#;
        assert_eq!(text.lines().collect::<Vec<_>>()[..1], [first]);
        assert_eq!(text.lines().count(), 2);
        assert_eq!(read_events(&path).unwrap(), outcomes);
    }

    #[test]
    fn a_bad_line_is_reported_by_number_and_a_missing_file_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        let good = serde_json::to_string(&outcome(0, "Thread-1", 0, 1)).unwrap();
        fs::write(&path, format!("{good}\n\n{{\"task\": \"zero\"}}\n")).unwrap();
        let err = format!("{:#}", read_events(&path).unwrap_err());
        assert!(err.contains("bad.jsonl: invalid type") && err.contains("line 3"));
        let err = read_events(Path::new("/nonexistent/x.jsonl")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.jsonl"), "{err}");
    }

    #[test]
    fn concurrency_counts_the_busiest_instant() {
        for (intervals, most) in [
            (&[][..], 0),
            (&[(0, 100)], 1),
            // Three workers, and a fourth task as the first one ends.
            (&[(0, 100), (1, 101), (2, 102), (100, 200)], 3),
            // A fourth task overlapping all three.
            (&[(0, 100), (1, 101), (2, 102), (50, 60)], 4),
            // Zero-length tasks count at their instant only against tasks that span it.
            (&[(5, 5), (0, 10)], 2),
            (&[(5, 5), (5, 5)], 2),
            (&[(5, 5), (0, 5), (5, 9)], 2),
        ] {
            let found = max_concurrency(intervals.iter().copied());
            assert_eq!(found, most, "{intervals:?}");
        }
    }
}
