//! [`run_blocking_tasks`], the Python original's coroutine, written once for every
//! [`Executor`], and [`run_demo`], the body of the demo binaries.

use smol_offload::{Executor, ReturnWhen, wait};

use crate::blocks::{Job, Outcome, blocks, join, unix_micros};
use crate::events::write_events;
use crate::logging::log;
use crate::options::{DemoArgs, Options};

/// The logger name of [`run_blocking_tasks`], as in the Python original.
const LOGGER: &str = "run_blocking_tasks";

/// Runs `blocks(0)` .. `blocks(tasks - 1)` on `executor` and waits for all of them, logging each
/// step as the Python original does: `starting`, `creating executor tasks`, `waiting for
/// executor tasks`, `results: [..]` (the squares in completion order) and `exiting`.
///
/// The same code runs on a [`ThreadPool`](smol_offload::ThreadPool) or a
/// [`ProcessPool`](smol_offload::ProcessPool): the executor is the only thing that changes.
/// The outcomes come back in completion order as [`wait`] saw it (the order in which the
/// tasks woke it), which can differ a little from the order of the `done` lines. The crate's
/// example runs it.
///
/// # Errors
///
/// When a task fails (its call panicked, its worker died, the pool shut down), the error names
/// every failed task and says why.
pub async fn run_blocking_tasks<E: Executor>(
    executor: &E,
    options: &Options,
) -> anyhow::Result<Vec<Outcome>> {
    let run_start_us = unix_micros();
    log(LOGGER, "starting");
    log(LOGGER, "creating executor tasks");
    let tasks: Vec<_> = (0..options.tasks as u64)
        .map(|n| {
            let job = Job {
                n,
                sleep_ms: options.sleep_ms,
                run_start_us,
            };
            executor.run(blocks, job)
        })
        .collect();
    log(LOGGER, "waiting for executor tasks");
    let waited = wait(tasks, ReturnWhen::AllCompleted).await;
    debug_assert!(waited.pending.is_empty());
    let (mut outcomes, mut failures) = (Vec::new(), Vec::new());
    for (n, result) in waited.done {
        match result {
            Ok(outcome) => outcomes.push(outcome),
            Err(err) => failures.push(format!("blocks({n}): {err}")),
        }
    }
    let (failed, tasks, failures) = (failures.len(), options.tasks, failures.join("; "));
    anyhow::ensure!(failed == 0, "{failed} of {tasks} tasks failed: {failures}");
    let results = python_list(outcomes.iter().map(|outcome| outcome.result));
    log(LOGGER, &format!("results: {results}"));
    log(LOGGER, "exiting");
    Ok(outcomes)
}

/// Formats numbers the way Python's `repr` prints a list of ints.
///
/// # Examples
///
/// ```
/// assert_eq!(blocks_demo::python_list([16, 4, 1, 0, 9, 25]), "[16, 4, 1, 0, 9, 25]");
/// assert_eq!(blocks_demo::python_list([]), "[]");
/// ```
pub fn python_list(values: impl IntoIterator<Item = u64>) -> String {
    format!("[{}]", join(values))
}

/// The body of `blocks-thread`, `blocks-process` and `blocks-remote` once they have their pool:
/// runs [`run_blocking_tasks`] on `pool` and writes the events file when `--events` asks for
/// one, each event tagged with `backend`.
///
/// # Errors
///
/// A task failed, or the events file could not be written.
pub fn run_demo(pool: &impl Executor, args: &DemoArgs, backend: &str) -> anyhow::Result<bool> {
    let outcomes = smol::block_on(run_blocking_tasks(pool, &args.run))?;
    if let Some(path) = &args.events {
        write_events(path, backend, &outcomes)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use smol_offload::{Task, ThreadPool};

    use super::*;

    /// A thread pool whose third submission panics instead of running its function.
    struct ThirdCallPanics {
        pool: ThreadPool,
        calls: AtomicUsize,
    }

    // `Executor` is sealed; this test double opts in through the hidden seal, which only the
    // workspace's own crates may name.
    impl smol_offload::__remote::executor::Sealed for ThirdCallPanics {}

    impl Executor for ThirdCallPanics {
        fn run<A, R>(&self, f: fn(A) -> R, arg: A) -> Task<R>
        where
            A: Serialize + DeserializeOwned + Send + 'static,
            R: Serialize + DeserializeOwned + Send + 'static,
        {
            let third = self.calls.fetch_add(1, Ordering::Relaxed) == 2;
            self.pool.spawn(move || {
                if third {
                    panic!("boom");
                }
                f(arg)
            })
        }

        fn workers(&self) -> usize {
            self.pool.workers()
        }

        fn stats(&self) -> smol_offload::PoolStats {
            self.pool.stats()
        }
    }

    #[test]
    fn a_failed_task_is_an_error_naming_it() {
        let executor = ThirdCallPanics {
            pool: ThreadPool::new(2).unwrap(),
            calls: AtomicUsize::new(0),
        };
        let options = Options {
            tasks: 4,
            sleep_ms: 1,
            ..Options::default()
        };
        let err = smol::block_on(run_blocking_tasks(&executor, &options)).unwrap_err();
        let text = err.to_string();
        let start = "1 of 4 tasks failed: blocks(2): the task panicked at ";
        assert!(text.starts_with(start), "{text}");
        assert!(
            text.contains("src/run.rs:") && text.ends_with(": boom"),
            "{text}"
        );
    }
}
