//! `wait` (all, first completed, first error, timeout), `gather` and `try_gather` over
//! thread-pool tasks, driven by gates rather than by timing.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::task::Poll;
use std::time::Duration;

use futures_lite::future;
use smol::prelude::*;
use smol_offload::{ReturnWhen, Task, ThreadPool, Waited, gather, try_gather, wait};

mod common;

use common::{WATCHDOG, block_on, gate, watchdog};

/// A task that returns `value` once the gate opens.
fn gated(pool: &ThreadPool, closed: &async_channel::Receiver<()>, value: u32) -> Task<u32> {
    let closed = closed.clone();
    pool.spawn(move || {
        let _ = closed.recv_blocking();
        value
    })
}

/// Spawns `value` on a one-worker pool and returns its task once it has certainly finished.
fn finished(pool: &ThreadPool, value: u32) -> Task<u32> {
    assert_eq!(pool.workers(), 1);
    let task = pool.spawn(move || value);
    // One worker takes jobs in submission order: once this ran, `task` had finished.
    block_on(pool.spawn(|| ())).unwrap();
    assert!(task.is_finished());
    task
}

/// Every input position appears once, in `done` or in `pending`, and `pending` is in input
/// order.
fn assert_partition<T>(waited: &Waited<T>, len: usize) {
    let mut seen = BTreeSet::new();
    for (index, _) in &waited.done {
        assert!(seen.insert(*index), "index {index} appears twice");
    }
    for (index, _) in &waited.pending {
        assert!(seen.insert(*index), "index {index} appears twice");
    }
    assert_eq!(seen, (0..len).collect(), "some index is missing");
    assert!(
        waited.pending.windows(2).all(|w| w[0].0 < w[1].0),
        "pending is not in input order"
    );
}

#[test]
fn all_completed_returns_every_result() {
    const TASKS: u32 = 500;
    let pool = ThreadPool::new(3).unwrap();
    let tasks: Vec<_> = (0..TASKS).map(|i| pool.spawn(move || i * 7)).collect();
    let waited = block_on(wait(tasks, ReturnWhen::AllCompleted));
    assert_partition(&waited, TASKS as usize);
    assert!(waited.pending.is_empty());
    assert_eq!(waited.done.len(), TASKS as usize);
    for (index, result) in waited.done {
        assert_eq!(result.unwrap(), index as u32 * 7);
    }
}

#[test]
fn all_completed_waits_for_the_last_one() {
    let pool = ThreadPool::new(2).unwrap();
    let (open, closed) = gate();
    let tasks = vec![pool.spawn(|| 1), gated(&pool, &closed, 2), pool.spawn(|| 3)];
    let mut waiting = wait(tasks, ReturnWhen::AllCompleted);
    // The gated task cannot finish: whatever happened to the others, this is pending.
    assert!(block_on(future::poll_once(&mut waiting)).is_none());
    drop(open);
    let waited = block_on(waiting);
    assert_partition(&waited, 3);
    assert!(waited.pending.is_empty());
    let mut done: Vec<(usize, u32)> = waited
        .done
        .into_iter()
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    done.sort_unstable();
    assert_eq!(done, [(0, 1), (1, 2), (2, 3)]);
}

#[test]
fn first_completed_returns_the_one_that_finished() {
    let pool = ThreadPool::new(4).unwrap();
    let (open, closed) = gate();
    let tasks = vec![
        gated(&pool, &closed, 0),
        gated(&pool, &closed, 1),
        pool.spawn(|| 2),
        gated(&pool, &closed, 3),
    ];
    let waited = block_on(wait(tasks, ReturnWhen::FirstCompleted));
    assert_partition(&waited, 4);
    assert_eq!(waited.done.len(), 1);
    let (index, result) = &waited.done[0];
    assert_eq!((*index, *result.as_ref().unwrap()), (2, 2));
    let pending: Vec<usize> = waited.pending.iter().map(|(i, _)| *i).collect();
    assert_eq!(pending, [0, 1, 3]);

    // The others stay usable.
    drop(open);
    block_on(async {
        for (index, task) in waited.pending {
            assert_eq!(task.await.unwrap(), index as u32);
        }
    });
}

#[test]
fn first_completed_then_wait_again_on_the_rest() {
    let pool = ThreadPool::new(3).unwrap();
    let (open_a, closed_a) = gate();
    let (open_b, closed_b) = gate();
    let tasks = vec![gated(&pool, &closed_a, 10), gated(&pool, &closed_b, 20)];
    drop(open_b);
    let first = block_on(wait(tasks, ReturnWhen::FirstCompleted));
    assert_eq!(first.done.len(), 1);
    assert_eq!(first.done[0].0, 1);
    assert_eq!(*first.done[0].1.as_ref().unwrap(), 20);
    let rest: Vec<Task<u32>> = first.pending.into_iter().map(|(_, task)| task).collect();
    let mut waiting = wait(rest, ReturnWhen::FirstCompleted);
    assert!(block_on(future::poll_once(&mut waiting)).is_none());
    drop(open_a);
    let second = block_on(waiting);
    assert!(second.pending.is_empty());
    assert_eq!(second.done.len(), 1);
    assert_eq!(second.done[0].0, 0);
    assert_eq!(*second.done[0].1.as_ref().unwrap(), 10);
}

#[test]
fn first_error_returns_early_with_the_error() {
    let pool = ThreadPool::new(4).unwrap();
    let (open, closed) = gate();
    let tasks = vec![
        gated(&pool, &closed, 0),
        pool.spawn(|| -> u32 { panic!("boom") }),
        gated(&pool, &closed, 2),
        gated(&pool, &closed, 3),
    ];
    let waited = block_on(wait(tasks, ReturnWhen::FirstError));
    assert_partition(&waited, 4);
    assert_eq!(waited.done.len(), 1);
    let (index, result) = &waited.done[0];
    assert_eq!(*index, 1);
    let err = result.as_ref().unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.panic_message(), Some("boom"));
    let pending: Vec<usize> = waited.pending.iter().map(|(i, _)| *i).collect();
    assert_eq!(pending, [0, 2, 3]);

    drop(open);
    block_on(async {
        for (index, task) in waited.pending {
            assert_eq!(task.await.unwrap(), index as u32);
        }
    });
}

#[test]
fn first_error_does_not_return_on_a_success() {
    let pool = ThreadPool::new(1).unwrap();
    let ok = finished(&pool, 1);
    let (open, closed) = gate();
    let failing = {
        let closed = closed.clone();
        pool.spawn(move || -> u32 {
            let _ = closed.recv_blocking();
            panic!("late failure")
        })
    };
    let mut waiting = wait(vec![ok, failing], ReturnWhen::FirstError);
    // One task has finished well and the other cannot finish yet: keep waiting.
    assert!(block_on(future::poll_once(&mut waiting)).is_none());
    drop(open);
    let waited = block_on(waiting);
    assert_partition(&waited, 2);
    assert!(waited.pending.is_empty());
    let mut done = waited.done;
    done.sort_by_key(|(i, _)| *i);
    assert_eq!(*done[0].1.as_ref().unwrap(), 1);
    assert_eq!(
        done[1].1.as_ref().unwrap_err().panic_message(),
        Some("late failure")
    );
}

#[test]
fn first_error_without_errors_waits_for_all() {
    let pool = ThreadPool::new(2).unwrap();
    let tasks: Vec<_> = (0..200u32).map(|i| pool.spawn(move || i)).collect();
    let waited = block_on(wait(tasks, ReturnWhen::FirstError));
    assert_partition(&waited, 200);
    assert!(waited.pending.is_empty());
    assert!(
        waited
            .done
            .iter()
            .all(|(i, r)| *r.as_ref().unwrap() == *i as u32)
    );
}

#[test]
fn timeout_returns_pending_tasks_that_stay_usable() {
    let pool = ThreadPool::new(1).unwrap();
    let done_first = finished(&pool, 7);
    let (open, closed) = gate();
    let slow = gated(&pool, &closed, 8);
    let queued = pool.spawn(|| 9);
    let waited = block_on(
        wait(vec![done_first, slow, queued], ReturnWhen::AllCompleted)
            .timeout(Duration::from_millis(30)),
    );
    assert_partition(&waited, 3);
    assert_eq!(waited.done.len(), 1);
    assert_eq!(waited.done[0].0, 0);
    assert_eq!(*waited.done[0].1.as_ref().unwrap(), 7);
    let pending: Vec<usize> = waited.pending.iter().map(|(i, _)| *i).collect();
    assert_eq!(pending, [1, 2]);

    drop(open);
    let values = block_on(async {
        let mut values = Vec::new();
        for (_, task) in waited.pending {
            values.push(task.await.unwrap());
        }
        values
    });
    assert_eq!(values, [8, 9]);
}

#[test]
fn timeout_with_nothing_finished_returns_everything_pending() {
    let pool = ThreadPool::new(2).unwrap();
    let (open, closed) = gate();
    let tasks: Vec<_> = (0..2).map(|i| gated(&pool, &closed, i)).collect();
    let waited =
        block_on(wait(tasks, ReturnWhen::FirstCompleted).timeout(Duration::from_millis(20)));
    assert!(waited.done.is_empty());
    assert_eq!(waited.pending.len(), 2);
    // Wait again on the same tasks, now without a limit.
    let tasks: Vec<Task<u32>> = waited.pending.into_iter().map(|(_, task)| task).collect();
    drop(open);
    let waited = block_on(wait(tasks, ReturnWhen::AllCompleted));
    let mut values: Vec<u32> = waited.done.into_iter().map(|(_, r)| r.unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, [0, 1]);
}

#[test]
fn a_generous_timeout_does_not_cut_a_finished_wait() {
    let pool = ThreadPool::new(2).unwrap();
    let tasks: Vec<_> = (0..100u32).map(|i| pool.spawn(move || i)).collect();
    let waited = block_on(wait(tasks, ReturnWhen::AllCompleted).timeout(WATCHDOG));
    assert!(waited.pending.is_empty());
    assert_eq!(waited.done.len(), 100);
}

#[test]
fn every_task_appears_once_with_its_index() {
    const TASKS: usize = 300;
    let pool = ThreadPool::new(4).unwrap();
    let (open, closed) = gate();
    let held = [5, 123, 299];
    let tasks: Vec<Task<u32>> = (0..TASKS)
        .map(|i| {
            if held.contains(&i) {
                gated(&pool, &closed, i as u32)
            } else {
                pool.spawn(move || i as u32)
            }
        })
        .collect();
    let waited = block_on(wait(tasks, ReturnWhen::FirstCompleted));
    assert_partition(&waited, TASKS);
    assert!(!waited.done.is_empty());
    for (index, result) in &waited.done {
        assert!(!held.contains(index), "held task {index} finished");
        assert_eq!(*result.as_ref().unwrap(), *index as u32);
    }
    let pending_indices: BTreeSet<usize> = waited.pending.iter().map(|(i, _)| *i).collect();
    assert!(held.iter().all(|i| pending_indices.contains(i)));

    // Wait on what is left with a short limit: the held tasks are still pending.
    let (indices, rest): (Vec<usize>, Vec<Task<u32>>) = waited.pending.into_iter().unzip();
    let again = block_on(wait(rest, ReturnWhen::AllCompleted).timeout(Duration::from_millis(20)));
    assert_partition(&again, indices.len());
    let still: BTreeSet<usize> = again.pending.iter().map(|(p, _)| indices[*p]).collect();
    assert!(held.iter().all(|i| still.contains(i)));
    for (position, result) in &again.done {
        assert_eq!(*result.as_ref().unwrap(), indices[*position] as u32);
    }

    drop(open);
    block_on(async {
        for (position, task) in again.pending {
            assert_eq!(task.await.unwrap(), indices[position] as u32);
        }
    });
}

#[test]
fn gather_keeps_submission_order_when_tasks_finish_in_reverse() {
    const TASKS: usize = 6;
    let pool = ThreadPool::new(TASKS).unwrap();
    // Task i waits for task i + 1 to end its work; the last one goes first.
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..TASKS).map(|_| mpsc::channel::<()>()).unzip();
    let mut senders: Vec<Option<mpsc::Sender<()>>> = senders.into_iter().map(Some).collect();
    let order = Arc::new(Mutex::new(Vec::new()));
    let everyone_running = Arc::new(Barrier::new(TASKS));
    let tasks: Vec<Task<usize>> = receivers
        .into_iter()
        .enumerate()
        .map(|(i, receiver)| {
            let release_previous = if i > 0 { senders[i - 1].take() } else { None };
            let order = order.clone();
            let everyone_running = everyone_running.clone();
            pool.spawn(move || {
                everyone_running.wait();
                if i + 1 < TASKS {
                    receiver.recv_timeout(WATCHDOG).unwrap();
                }
                order.lock().unwrap().push(i);
                if let Some(sender) = release_previous {
                    sender.send(()).unwrap();
                }
                i * 100
            })
        })
        .collect();
    let results = block_on(gather(tasks));
    let values: Vec<usize> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(values, (0..TASKS).map(|i| i * 100).collect::<Vec<_>>());
    assert_eq!(
        *order.lock().unwrap(),
        (0..TASKS).rev().collect::<Vec<_>>(),
        "the tasks did not finish in reverse order"
    );
}

#[test]
fn gather_keeps_order_for_many_tasks_with_errors() {
    const TASKS: usize = 1_000;
    let pool = ThreadPool::new(3).unwrap();
    let tasks: Vec<Task<usize>> = (0..TASKS)
        .map(|i| {
            pool.spawn(move || {
                if i % 97 == 0 {
                    panic!("failed {i}");
                }
                i
            })
        })
        .collect();
    let results = block_on(gather(tasks));
    assert_eq!(results.len(), TASKS);
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(value) => assert_eq!(value, i),
            Err(err) => {
                assert_eq!(i % 97, 0, "task {i}: {err}");
                assert_eq!(err.panic_message().unwrap(), format!("failed {i}").as_str());
            }
        }
    }
}

#[test]
fn try_gather_gives_the_values_in_order() {
    let pool = ThreadPool::new(3).unwrap();
    let values = block_on(try_gather((0..100u64).map(|i| pool.spawn(move || i * i)))).unwrap();
    assert_eq!(values, (0..100u64).map(|i| i * i).collect::<Vec<_>>());
}

#[test]
fn try_gather_returns_the_first_error_in_input_order() {
    let pool = ThreadPool::new(2).unwrap();
    let side = ThreadPool::new(1).unwrap();
    // The later failure is seen first: task 3 has failed before anyone waits, and task 1 fails
    // only after the gather has looked at every task once.
    let failed_first = side.spawn(|| -> u32 { panic!("fourth in input order") });
    block_on(side.spawn(|| ())).unwrap();
    assert!(failed_first.is_finished());
    let (open, closed) = gate();
    let tasks: Vec<Task<u32>> = vec![
        pool.spawn(|| 0),
        pool.spawn(move || {
            let _ = closed.recv_blocking();
            panic!("second in input order")
        }),
        pool.spawn(|| 2),
        failed_first,
    ];
    let gathering = try_gather(tasks);
    futures_lite::pin!(gathering);
    assert!(block_on(future::poll_once(&mut gathering)).is_none());
    drop(open);
    let err = block_on(gathering).unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.panic_message(), Some("second in input order"));
}

#[test]
fn empty_input_returns_at_once() {
    for when in [
        ReturnWhen::AllCompleted,
        ReturnWhen::FirstCompleted,
        ReturnWhen::FirstError,
    ] {
        let mut waiting = wait(Vec::<Task<u8>>::new(), when);
        let waited = block_on(future::poll_once(&mut waiting)).expect("ready on the first poll");
        assert!(waited.done.is_empty() && waited.pending.is_empty());
    }
    let results = block_on(future::poll_once(gather(Vec::<Task<u8>>::new())));
    assert!(results.expect("ready on the first poll").is_empty());
    let values = block_on(future::poll_once(try_gather(Vec::<Task<u8>>::new())));
    assert!(values.expect("ready on the first poll").unwrap().is_empty());
}

#[test]
fn wait_accepts_tasks_from_several_pools() {
    let a = ThreadPool::new(1).unwrap();
    let b = ThreadPool::new(1).unwrap();
    let tasks = vec![a.spawn(|| 1), b.spawn(|| 2), a.spawn(|| 3), b.spawn(|| 4)];
    let results = block_on(gather(tasks));
    let values: Vec<i32> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(values, [1, 2, 3, 4]);
}

#[test]
fn wait_wakes_under_another_executor() {
    let pool = ThreadPool::new(2).unwrap();
    let (open, closed) = gate();
    let tasks = vec![gated(&pool, &closed, 1), gated(&pool, &closed, 2)];
    let mut waiting = wait(tasks, ReturnWhen::AllCompleted);
    // Certainly pending at first: only the tasks' wake-ups can finish it.
    let waited = future::block_on(watchdog().or(async {
        assert!(future::poll_once(&mut waiting).await.is_none());
        drop(open);
        waiting.await
    }));
    assert!(waited.pending.is_empty());
    assert_eq!(waited.done.len(), 2);
}

/// Many tasks through `gather` and `wait`, finishing in bursts.
#[test]
fn gather_and_wait_handle_a_hundred_thousand_tasks() {
    let count: u64 = if cfg!(miri) { 50 } else { 100_000 };
    let pool = ThreadPool::new(2).unwrap();
    let results = block_on(gather((0..count).map(|n| pool.spawn(move || n * 2))));
    assert_eq!(results.len(), count as usize);
    for (n, result) in (0..count).zip(results) {
        assert_eq!(result.unwrap(), n * 2);
    }

    let tasks = (0..count).map(|n| pool.spawn(move || n));
    let waited = block_on(wait(tasks, ReturnWhen::FirstError));
    assert_eq!(waited.done.len(), count as usize);
    assert!(waited.pending.is_empty());
    let mut seen: Vec<usize> = waited.done.iter().map(|(index, _)| *index).collect();
    seen.sort_unstable();
    assert!(seen.iter().copied().eq(0..count as usize));
}

/// A waker that unparks the test's thread and counts its wake-ups.
struct Unpark {
    thread: std::thread::Thread,
    woken: std::sync::atomic::AtomicBool,
}

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.woken.store(true, std::sync::atomic::Ordering::Release);
        self.thread.unpark();
    }
}

/// A wake-up costs the tasks that finished, not a look at every task: 100 000 tasks finish
/// one at a time, and `wait` is polled after each. Looking at every pending task on each
/// wake-up would be 5 billion looks, and trip the watchdog.
#[test]
fn each_wake_up_costs_only_the_task_that_finished() {
    use std::sync::atomic::Ordering;
    let count: u64 = if cfg!(miri) { 50 } else { 100_000 };
    let pool = ThreadPool::new(1).unwrap();
    // One worker takes the tasks in order; task n waits for the n-th token.
    let (tokens, token) = async_channel::unbounded::<()>();
    let tasks = (0..count).map(|n| {
        let token = token.clone();
        pool.spawn(move || {
            token.recv_blocking().unwrap();
            n
        })
    });
    let mut waiting = wait(tasks, ReturnWhen::AllCompleted);
    let unpark = Arc::new(Unpark {
        thread: std::thread::current(),
        woken: false.into(),
    });
    let waker = std::task::Waker::from(Arc::clone(&unpark));
    let mut cx = std::task::Context::from_waker(&waker);
    let deadline = std::time::Instant::now() + WATCHDOG;
    assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
    for n in 0..count {
        tokens.send_blocking(()).unwrap();
        // Task n, and only it, can finish now: wait for its wake-up, then poll once.
        while !unpark.woken.swap(false, Ordering::AcqRel) {
            let now = std::time::Instant::now();
            assert!(now < deadline, "stuck at task {n} of {count}");
            std::thread::park_timeout(deadline - now);
        }
        match Pin::new(&mut waiting).poll(&mut cx) {
            Poll::Pending => assert!(n + 1 < count, "the last task finished, wait did not"),
            Poll::Ready(waited) => {
                assert_eq!(n + 1, count, "wait returned with {n} of {count} tasks done");
                let order: Vec<usize> = waited.done.iter().map(|(index, _)| *index).collect();
                assert!(order.into_iter().eq(0..count as usize));
            }
        }
    }
}
