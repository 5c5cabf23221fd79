//! The `--events` file: one JSON object per task and line, and what can be computed from it.
//!
//! A line looks like
//! `{"task":3,"worker":"Thread-1","start_us":100412,"end_us":200519,"result":9,"pid":4242,"backend":"thread"}`:
//! times are microseconds after the run's start, measured inside `blocks`.

use std::fs;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::blocks::Outcome;

/// One task of a run, as written to and read from an events file: its [`Outcome`], and the
/// pool that ran it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What the call of `blocks` reported.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Which pool ran it: `thread` or `process`.
    pub backend: String,
}

/// Writes `outcomes` to `path` as events of `backend`, one JSON object per line, replacing the
/// file.
///
/// # Errors
///
/// The file could not be created or written.
pub fn write_events(path: &Path, backend: &str, outcomes: Vec<Outcome>) -> anyhow::Result<()> {
    let backend = backend.to_owned();
    let lines: serde_json::Result<String> = (outcomes.into_iter())
        .map(|outcome| {
            let event = Event {
                outcome,
                backend: backend.clone(),
            };
            Ok(serde_json::to_string(&event)? + "\n")
        })
        .collect();
    fs::write(path, lines?).with_context(|| format!("cannot write events to {}", path.display()))
}

/// Reads the events file at `path`; blank lines are skipped.
///
/// # Errors
///
/// The file could not be read, or a line is not an event (the error gives its number).
pub fn read_events(path: &Path) -> anyhow::Result<Vec<Event>> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read events from {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line).with_context(|| format!("line {}", index + 1))
        })
        .collect::<anyhow::Result<_>>()
        .with_context(|| format!("bad events file {}", path.display()))
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
pub fn max_concurrency<I>(intervals: I) -> usize
where
    I: IntoIterator<Item = (u64, u64)>,
{
    // At one instant, ends of tasks that took time come first, then starts, then ends of
    // tasks that took no time: touching tasks do not overlap, and an instantaneous task still
    // counts against whatever runs across it.
    const END: u8 = 0;
    const START: u8 = 1;
    const INSTANT_END: u8 = 2;
    let mut edges: Vec<(u64, u8)> = intervals
        .into_iter()
        .flat_map(|(start, end)| {
            let end_kind = if end > start { END } else { INSTANT_END };
            [(start, START), (end.max(start), end_kind)]
        })
        .collect();
    edges.sort_unstable();
    let running = edges.into_iter().scan(0usize, |running, (_, kind)| {
        *running = if kind == START {
            *running + 1
        } else {
            *running - 1
        };
        Some(*running)
    });
    running.max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::outcome;

    fn event(task: u64, worker: &str, start_us: u64, end_us: u64) -> Event {
        let outcome = outcome(task, worker, start_us, end_us);
        Event {
            outcome,
            backend: "thread".to_owned(),
        }
    }

    #[test]
    fn events_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let events = vec![
            event(1, "Thread-2", 3, 100_003),
            event(0, "Thread-1", 1, 100_001),
        ];
        let outcomes = events.iter().map(|event| event.outcome.clone()).collect();
        write_events(&path, "thread", outcomes).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.starts_with(r#"{"task":1,"worker":"Thread-2","start_us":3,"#),
            "{text}"
        );
        assert!(
            text.contains(r#""result":1,"pid":42,"backend":"thread"}"#),
            "{text}"
        );
        assert_eq!(read_events(&path).unwrap(), events);
    }

    #[test]
    fn a_bad_line_is_reported_by_number_and_a_missing_file_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        let good = serde_json::to_string(&event(0, "Thread-1", 0, 1)).unwrap();
        fs::write(&path, format!("{good}\n\n{{\"task\": \"zero\"}}\n")).unwrap();
        let err = format!("{:#}", read_events(&path).unwrap_err());
        assert!(err.contains("bad.jsonl: line 3: missing field"), "{err}");
        let err = read_events(Path::new("/nonexistent/events.jsonl")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/events.jsonl"),
            "{err}"
        );
    }

    #[test]
    fn concurrency_counts_the_busiest_instant() {
        assert_eq!(max_concurrency(std::iter::empty()), 0);
        assert_eq!(max_concurrency([(0, 100)]), 1);
        // Three workers, two rounds: never more than three at once.
        let rounds = [
            (0, 100),
            (1, 101),
            (2, 102),
            (100, 200),
            (101, 201),
            (102, 202),
        ];
        assert_eq!(max_concurrency(rounds), 3);
        // A fourth task overlapping all three.
        assert_eq!(max_concurrency([(0, 100), (1, 101), (2, 102), (50, 60)]), 4);
        // Zero-length tasks count at their instant only against tasks that span it.
        assert_eq!(max_concurrency([(5, 5), (0, 10)]), 2);
        assert_eq!(max_concurrency([(5, 5), (5, 5)]), 2);
        assert_eq!(max_concurrency([(5, 5), (0, 5), (5, 9)]), 2);
    }
}
