//! `ThreadPool`: results, worker names and count, cancellation, detach, stats, sharing across
//! threads and event loops, rayon inside tasks, executor-agnostic wakers, timeouts and dropping
//! the pool with work in flight.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread::{self, ThreadId};
use std::time::Duration;

use smol::prelude::*;
use smol_offload::{Error, Executor, PoolStats, Task, ThreadPool};

mod common;

use common::{WATCHDOG, block_on, gate, hold_a_worker, names_of_all_workers, watchdog};

fn current_name() -> String {
    thread::current()
        .name()
        .expect("pool threads have names")
        .to_owned()
}

fn stats(pool: &ThreadPool) -> (u64, u64, u64, u64) {
    let PoolStats {
        queued,
        running,
        completed,
        cancelled,
        ..
    } = pool.stats();
    (queued, running, completed, cancelled)
}

#[test]
fn spawn_returns_the_closure_value() {
    let pool = ThreadPool::new(2).unwrap();
    block_on(async {
        assert_eq!(pool.spawn(|| 6 * 7).await.unwrap(), 42);
        assert_eq!(
            pool.spawn(|| "text".repeat(3)).await.unwrap(),
            "texttexttext"
        );
        let big: Vec<u64> = pool.spawn(|| (0..10_000).collect()).await.unwrap();
        assert_eq!(big.len(), 10_000);
        assert_eq!(big.iter().sum::<u64>(), 49_995_000);
        let inner: Result<u8, String> = pool.spawn(|| Err("inner".to_owned())).await.unwrap();
        assert_eq!(inner, Err("inner".to_owned()));
        pool.spawn(|| ()).await.unwrap();
    });
}

#[test]
fn closure_captures_move_to_the_worker_and_back() {
    let pool = ThreadPool::new(2).unwrap();
    let data: Vec<u32> = (1..=100).collect();
    let (data, sum) = block_on(pool.spawn(move || {
        let sum: u32 = data.iter().sum();
        (data, sum)
    }))
    .unwrap();
    assert_eq!(sum, 5050);
    assert_eq!(data.len(), 100);
}

#[test]
fn workers_are_named_smol_offload_i_by_default() {
    let pool = ThreadPool::new(3).unwrap();
    let names = names_of_all_workers(&pool, 3);
    let expected: HashSet<String> = (0..3).map(|i| format!("smol-offload-{i}")).collect();
    assert_eq!(names, expected);
}

#[test]
fn workers_take_custom_names() {
    let pool = ThreadPool::builder()
        .workers(2)
        .thread_name(|i| format!("Thread-{}", i + 1))
        .build()
        .unwrap();
    let names = names_of_all_workers(&pool, 2);
    let expected: HashSet<String> = ["Thread-1", "Thread-2"].map(str::to_owned).into();
    assert_eq!(names, expected);
}

#[test]
fn zero_workers_is_a_build_error() {
    let err = ThreadPool::new(0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a pool needs at least one worker, got 0: ask for 1 or more, or leave the count out for one per CPU"
    );
    assert!(!err.needs_init());
    let err = ThreadPool::builder().workers(0).build().unwrap_err();
    assert_eq!(
        err.to_string(),
        "a pool needs at least one worker, got 0: ask for 1 or more, or leave the count out for one per CPU"
    );
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
    assert!(boxed.source().is_none());
}

#[test]
fn builder_without_workers_has_one_per_cpu() {
    let cpus = thread::available_parallelism().unwrap().get();
    let pool = ThreadPool::builder().build().unwrap();
    assert_eq!(pool.workers(), cpus);
    assert_eq!(pool.stats().workers, cpus);
    assert_eq!(Executor::workers(&pool), cpus);
}

#[test]
fn builder_stack_size_is_usable() {
    let pool = ThreadPool::builder()
        .workers(1)
        .stack_size(8 << 20)
        .build()
        .unwrap();
    // Half a megabyte on the stack would be close to the edge on a small stack.
    let sum = block_on(pool.spawn(|| {
        let buffer = [1u8; 512 << 10];
        std::hint::black_box(&buffer)
            .iter()
            .map(|&b| u64::from(b))
            .sum::<u64>()
    }))
    .unwrap();
    assert_eq!(sum, 512 << 10);
}

#[test]
fn a_burst_never_uses_more_than_n_threads() {
    const TASKS: usize = 10_000;
    let pool = ThreadPool::new(3).unwrap();
    let tasks: Vec<Task<(ThreadId, String)>> = (0..TASKS)
        .map(|_| pool.spawn(|| (thread::current().id(), current_name())))
        .collect();
    let (ids, names) = block_on(async {
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for task in tasks {
            let (id, name) = task.await.unwrap();
            ids.insert(id);
            names.insert(name);
        }
        (ids, names)
    });
    assert!(
        (1..=3).contains(&ids.len()),
        "{} threads ran the burst",
        ids.len()
    );
    assert_eq!(ids.len(), names.len());
    assert!(names.iter().all(|name| name.starts_with("smol-offload-")));
    assert!(!ids.contains(&thread::current().id()));
    assert_eq!(pool.stats().completed, TASKS as u64);
}

#[test]
fn blocked_tasks_occupy_exactly_n_threads() {
    const N: usize = 4;
    let pool = ThreadPool::new(N).unwrap();
    let barrier = Arc::new(Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let barrier = barrier.clone();
            pool.spawn(move || {
                barrier.wait();
                thread::current().id()
            })
        })
        .collect();
    // More work queued behind the barrier: it must reuse the same threads.
    let burst: Vec<_> = (0..1_000)
        .map(|_| pool.spawn(|| thread::current().id()))
        .collect();
    let (blocked, all) = block_on(async {
        let mut blocked = HashSet::new();
        for task in tasks {
            blocked.insert(task.await.unwrap());
        }
        let mut all = blocked.clone();
        for task in burst {
            all.insert(task.await.unwrap());
        }
        (blocked, all)
    });
    assert_eq!(blocked.len(), N);
    assert_eq!(all, blocked);
}

#[test]
fn a_task_dropped_before_it_starts_never_runs() {
    let pool = ThreadPool::new(1).unwrap();
    let (busy, open) = hold_a_worker(&pool, "busy");

    let ran = Arc::new(AtomicBool::new(false));
    let dropped = {
        let ran = ran.clone();
        pool.spawn(move || ran.store(true, Ordering::SeqCst))
    };
    assert!(!dropped.is_started());
    drop(dropped);

    drop(open);
    block_on(async {
        assert_eq!(busy.await.unwrap(), "busy");
        // One worker takes jobs in submission order: once this one ran, the dropped one was
        // taken off the queue and skipped.
        pool.spawn(|| ()).await.unwrap();
    });
    assert!(!ran.load(Ordering::SeqCst), "a dropped task ran");
    let (queued, running, completed, cancelled) = stats(&pool);
    assert_eq!((queued, running, completed, cancelled), (0, 0, 2, 1));
}

#[test]
fn many_dropped_tasks_never_run() {
    let pool = ThreadPool::new(2).unwrap();
    let (open, closed) = gate();
    let (started_tx, started) = mpsc::channel();
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let closed = closed.clone();
            let started_tx = started_tx.clone();
            pool.spawn(move || {
                started_tx.send(()).unwrap();
                let _ = closed.recv_blocking();
            })
        })
        .collect();
    for _ in 0..2 {
        started.recv_timeout(WATCHDOG).unwrap();
    }
    let runs = Arc::new(AtomicUsize::new(0));
    for _ in 0..1_000 {
        let runs = runs.clone();
        drop(pool.spawn(move || runs.fetch_add(1, Ordering::SeqCst)));
    }
    drop(open);
    block_on(async {
        for task in busy {
            task.await.unwrap();
        }
        // Both workers must pass a barrier after the dropped jobs: they were all taken off.
        let barrier = Arc::new(Barrier::new(2));
        let after: Vec<_> = (0..2)
            .map(|_| {
                let barrier = barrier.clone();
                pool.spawn(move || {
                    barrier.wait();
                })
            })
            .collect();
        for task in after {
            task.await.unwrap();
        }
    });
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(pool.stats().cancelled, 1_000);
    assert_eq!(pool.stats().queued, 0);
}

#[test]
fn cancel_before_start_gives_cancelled_and_skips_the_work() {
    let pool = ThreadPool::new(1).unwrap();
    let (open, closed) = gate();
    let busy = pool.spawn(move || {
        let _ = closed.recv_blocking();
        1
    });
    let ran = Arc::new(AtomicBool::new(false));
    let queued = {
        let ran = ran.clone();
        pool.spawn(move || {
            ran.store(true, Ordering::SeqCst);
            2
        })
    };
    block_on(async {
        let err = queued.cancel().await.unwrap_err();
        assert!(err.is_cancelled(), "{err}");
        assert!(!err.is_panic() && !err.is_timeout() && !err.is_shutdown());
        assert_eq!(err.panic_message(), None);
        assert_eq!(err.to_string(), "the task was cancelled");
        drop(open);
        assert_eq!(busy.await.unwrap(), 1);
        pool.spawn(|| ()).await.unwrap();
    });
    assert!(!ran.load(Ordering::SeqCst), "a cancelled task ran");
    assert_eq!(pool.stats().cancelled, 1);
}

#[test]
fn cancel_after_start_gives_the_value() {
    let pool = ThreadPool::new(1).unwrap();
    let (task, open) = hold_a_worker(&pool, "finished anyway");
    assert!(task.is_started());
    assert!(!task.is_finished());
    block_on(async {
        // Cancelling cannot stop running work: it waits for it.
        let cancelled = task.cancel();
        drop(open);
        assert_eq!(cancelled.await.unwrap(), "finished anyway");
    });
}

#[test]
fn cancel_after_finish_gives_the_value() {
    let pool = ThreadPool::new(1).unwrap();
    block_on(async {
        let task = pool.spawn(|| 5);
        // Same worker, submission order: once this ran, `task` had finished.
        pool.spawn(|| ()).await.unwrap();
        assert!(task.is_finished());
        assert_eq!(task.cancel().await.unwrap(), 5);
    });
}

#[test]
fn detached_tasks_still_run() {
    const TASKS: usize = 200;
    let pool = ThreadPool::new(2).unwrap();
    let (sender, receiver) = mpsc::channel();
    for i in 0..TASKS {
        let sender = sender.clone();
        pool.spawn(move || sender.send(i).unwrap()).detach();
    }
    drop(sender);
    let mut seen: Vec<usize> = (0..TASKS)
        .map(|_| receiver.recv_timeout(WATCHDOG).unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..TASKS).collect::<Vec<_>>());
}

#[test]
fn detached_task_queued_behind_busy_worker_still_runs() {
    let pool = ThreadPool::new(1).unwrap();
    let (open, closed) = gate();
    pool.spawn(move || {
        let _ = closed.recv_blocking();
    })
    .detach();
    let (sender, receiver) = mpsc::channel();
    pool.spawn(move || sender.send("ran").unwrap()).detach();
    assert!(
        receiver.try_recv().is_err(),
        "ran while the worker was busy"
    );
    drop(open);
    assert_eq!(receiver.recv_timeout(WATCHDOG).unwrap(), "ran");
}

#[test]
fn task_state_is_observable() {
    let pool = ThreadPool::new(1).unwrap();
    let (open, closed) = gate();
    let (started_tx, started) = mpsc::channel();
    let running = pool.spawn(move || {
        started_tx.send(()).unwrap();
        let _ = closed.recv_blocking();
        1
    });
    let queued = pool.spawn(|| 2);
    started.recv_timeout(WATCHDOG).unwrap();
    assert_eq!(format!("{running:?}"), "Task { state: \"running\" }");
    assert_eq!(format!("{queued:?}"), "Task { state: \"queued\" }");
    assert!(!queued.is_started() && !queued.is_finished());
    drop(open);
    block_on(async {
        assert_eq!(running.await.unwrap(), 1);
        pool.spawn(|| ()).await.unwrap();
    });
    assert!(queued.is_started() && queued.is_finished());
    assert_eq!(format!("{queued:?}"), "Task { state: \"finished\" }");
    assert_eq!(block_on(queued).unwrap(), 2);
}

#[test]
fn stats_follow_the_tasks() {
    let pool = ThreadPool::new(1).unwrap();
    assert_eq!(pool.stats().workers, 1);
    assert_eq!(stats(&pool), (0, 0, 0, 0));

    let (started_tx, started) = mpsc::channel();
    let (open_a, closed_a) = gate();
    let (open_b, closed_b) = gate();
    let a = {
        let started_tx = started_tx.clone();
        pool.spawn(move || {
            started_tx.send('a').unwrap();
            let _ = closed_a.recv_blocking();
            'a'
        })
    };
    assert_eq!(started.recv_timeout(WATCHDOG).unwrap(), 'a');
    assert_eq!(stats(&pool), (0, 1, 0, 0));

    let b = pool.spawn(move || {
        started_tx.send('b').unwrap();
        let _ = closed_b.recv_blocking();
        'b'
    });
    let c = pool.spawn(|| 'c');
    assert_eq!(stats(&pool), (2, 1, 0, 0));
    drop(c); // cancelled, but counted only when a worker takes it off the queue
    assert_eq!(stats(&pool), (2, 1, 0, 0));

    drop(open_a);
    assert_eq!(block_on(a).unwrap(), 'a');
    assert_eq!(started.recv_timeout(WATCHDOG).unwrap(), 'b');
    assert_eq!(stats(&pool), (1, 1, 1, 0));

    drop(open_b);
    assert_eq!(block_on(b).unwrap(), 'b');
    assert_eq!(block_on(pool.spawn(|| 'd')).unwrap(), 'd');
    let snapshot = pool.stats();
    assert_eq!(
        (
            snapshot.workers,
            snapshot.queued,
            snapshot.running,
            snapshot.completed,
            snapshot.cancelled
        ),
        (1, 0, 0, 3, 1)
    );
    assert_eq!(
        snapshot.to_string(),
        "workers=1 queued=0 running=0 completed=3 cancelled=1"
    );
    assert!(format!("{pool:?}").starts_with("ThreadPool"));
}

#[test]
fn stats_are_shared_by_clones() {
    let pool = ThreadPool::new(2).unwrap();
    let clone = pool.clone();
    block_on(async {
        for i in 0..50 {
            assert_eq!(clone.spawn(move || i).await.unwrap(), i);
        }
    });
    assert_eq!(pool.stats().completed, 50);
    assert_eq!(pool.stats(), clone.stats());
}

#[test]
fn many_threads_and_loops_share_one_pool() {
    const THREADS: usize = 4;
    const TASKS: usize = 1_000;
    let pool = ThreadPool::new(3).unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let pool = pool.clone();
            thread::spawn(move || {
                block_on(async {
                    // Half awaited as they are submitted, half all at once.
                    for i in 0..TASKS / 2 {
                        let value = pool.spawn(move || t * 1_000_000 + i).await.unwrap();
                        assert_eq!(value, t * 1_000_000 + i);
                    }
                    let tasks: Vec<_> = (TASKS / 2..TASKS)
                        .map(|i| pool.spawn(move || t * 1_000_000 + i))
                        .collect();
                    for (i, task) in (TASKS / 2..TASKS).zip(tasks) {
                        assert_eq!(task.await.unwrap(), t * 1_000_000 + i);
                    }
                });
                t
            })
        })
        .collect();
    let finished: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(finished, (0..THREADS).collect::<Vec<_>>());
    assert_eq!(pool.stats().completed, (THREADS * TASKS) as u64);
    assert_eq!(pool.stats().queued, 0);
}

#[test]
fn a_multi_threaded_smol_executor_shares_the_pool() {
    let pool = ThreadPool::new(2).unwrap();
    let executor = Arc::new(smol::Executor::new());
    let (stop, stopped) = async_channel::unbounded::<()>();
    let runners: Vec<_> = (0..3)
        .map(|_| {
            let executor = executor.clone();
            let stopped = stopped.clone();
            thread::spawn(move || block_on(executor.run(stopped.recv())))
        })
        .collect();
    let tasks: Vec<smol::Task<u64>> = (0..500u64)
        .map(|i| {
            let pool = pool.clone();
            executor.spawn(async move { pool.spawn(move || i * i).await.unwrap() })
        })
        .collect();
    block_on(async {
        for (i, task) in (0..500u64).zip(tasks) {
            assert_eq!(task.await, i * i);
        }
    });
    drop(stop);
    for runner in runners {
        assert!(
            runner.join().unwrap().is_err(),
            "the runner stopped on close"
        );
    }
}

#[test]
fn a_task_can_be_awaited_on_another_thread() {
    let pool = ThreadPool::new(2).unwrap();
    let tasks: Vec<Task<usize>> = (0..100).map(|i| pool.spawn(move || i + 1)).collect();
    let sum = thread::spawn(move || {
        block_on(async {
            let mut sum = 0;
            for task in tasks {
                sum += task.await.unwrap();
            }
            sum
        })
    })
    .join()
    .unwrap();
    assert_eq!(sum, 5050);
}

#[test]
fn handles_are_clone_send_sync_and_tasks_send() {
    fn clone_send_sync<T: Clone + Send + Sync + 'static>() {}
    fn send<T: Send + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    clone_send_sync::<ThreadPool>();
    send::<Task<u8>>();
    send::<Task<Vec<String>>>();
    send::<Error>();
    error::<Error>();
    error::<smol_offload::BuildError>();
}

#[test]
fn rayon_inside_a_task_runs_on_the_same_pool() {
    use rayon::prelude::*;

    let pool = ThreadPool::builder()
        .workers(3)
        .thread_name(|i| format!("par-{i}"))
        .build()
        .unwrap();
    let (threads, names, sum) = block_on(pool.spawn(|| {
        let names: HashSet<Option<String>> = (0..10_000u32)
            .into_par_iter()
            .map(|_| thread::current().name().map(str::to_owned))
            .collect();
        let sum: u64 = (1..=100_000u64).into_par_iter().sum();
        (rayon::current_num_threads(), names, sum)
    }))
    .unwrap();
    assert_eq!(threads, 3, "par_iter saw another rayon pool");
    assert_eq!(sum, 5_000_050_000);
    assert!(!names.is_empty());
    for name in &names {
        let name = name.as_deref().unwrap_or("<unnamed>");
        assert!(name.starts_with("par-"), "par_iter ran on thread {name}");
    }
}

#[test]
fn rayon_join_inside_many_tasks_does_not_deadlock() {
    fn fib(n: u32) -> u64 {
        if n < 2 {
            return u64::from(n);
        }
        let (a, b) = rayon::join(|| fib(n - 1), || fib(n - 2));
        a + b
    }
    let pool = ThreadPool::new(2).unwrap();
    let tasks: Vec<_> = (0..20).map(|_| pool.spawn(|| fib(15))).collect();
    block_on(async {
        for task in tasks {
            assert_eq!(task.await.unwrap(), 610);
        }
    });
}

/// Awaits a task that certainly needs a wake-up: it is pending when first polled, because its
/// work waits for a gate that opens only after that poll.
async fn after_a_wake_up(pool: ThreadPool, value: u32) -> u32 {
    let (open, closed) = gate();
    let mut task = pool.spawn(move || {
        let _ = closed.recv_blocking();
        value
    });
    assert!(futures_lite::future::poll_once(&mut task).await.is_none());
    drop(open);
    task.await.unwrap()
}

#[test]
fn tasks_resolve_under_any_executor() {
    let pool = ThreadPool::new(2).unwrap();

    let value = smol::block_on(watchdog().or(after_a_wake_up(pool.clone(), 1)));
    assert_eq!(value, 1);

    let value = futures_lite::future::block_on(watchdog().or(after_a_wake_up(pool.clone(), 2)));
    assert_eq!(value, 2);

    let local = smol::LocalExecutor::new();
    let value = futures_lite::future::block_on(local.run(async {
        let inner = local.spawn(watchdog().or(after_a_wake_up(pool.clone(), 3)));
        inner.await
    }));
    assert_eq!(value, 3);

    let executor = smol::Executor::new();
    let spawned = executor.spawn(watchdog().or(after_a_wake_up(pool.clone(), 4)));
    assert_eq!(smol::block_on(executor.run(spawned)), 4);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let value = runtime.block_on(watchdog().or(after_a_wake_up(pool.clone(), 5)));
    assert_eq!(value, 5);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let work = watchdog().or(after_a_wake_up(pool.clone(), 6));
    let value = runtime
        .block_on(async { tokio::spawn(work).await })
        .unwrap();
    assert_eq!(value, 6);
}

#[test]
fn many_tasks_each_need_a_wake_up() {
    let pool = ThreadPool::new(1).unwrap();
    for i in 0..200 {
        assert_eq!(block_on(after_a_wake_up(pool.clone(), i)), i);
    }
}

#[test]
fn timeout_on_a_blocked_task_gives_a_timeout_error() {
    let pool = ThreadPool::new(1).unwrap();
    let (open, closed) = gate();
    let (started_tx, started) = mpsc::channel();
    let finished = Arc::new(AtomicBool::new(false));
    let task = {
        let finished = finished.clone();
        pool.spawn(move || {
            started_tx.send(()).unwrap();
            let _ = closed.recv_blocking();
            finished.store(true, Ordering::SeqCst);
        })
    };
    started.recv_timeout(WATCHDOG).unwrap();
    let err = block_on(task.timeout(Duration::from_millis(20))).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(!err.is_cancelled() && !err.is_panic());
    assert!(err.to_string().contains("did not finish within"), "{err}");
    // The running work goes on to the end, and the worker is free after.
    drop(open);
    assert_eq!(block_on(pool.spawn(|| 8)).unwrap(), 8);
    assert!(finished.load(Ordering::SeqCst));
}

#[test]
fn timeout_on_a_queued_task_cancels_it() {
    let pool = ThreadPool::new(1).unwrap();
    let (open, closed) = gate();
    let busy = pool.spawn(move || {
        let _ = closed.recv_blocking();
    });
    let ran = Arc::new(AtomicBool::new(false));
    let queued = {
        let ran = ran.clone();
        pool.spawn(move || ran.store(true, Ordering::SeqCst))
    };
    let err = block_on(queued.timeout(Duration::from_millis(20))).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    drop(open);
    block_on(async {
        busy.await.unwrap();
        pool.spawn(|| ()).await.unwrap();
    });
    assert!(!ran.load(Ordering::SeqCst), "a timed-out queued task ran");
    assert_eq!(pool.stats().cancelled, 1);
}

#[test]
fn a_fast_task_under_a_generous_timeout_gives_its_value() {
    let pool = ThreadPool::new(2).unwrap();
    block_on(async {
        for i in 0..200u32 {
            assert_eq!(
                pool.spawn(move || i * 3).timeout(WATCHDOG).await.unwrap(),
                i * 3
            );
        }
    });
}

#[test]
fn dropping_the_pool_lets_submitted_tasks_finish() {
    const TASKS: usize = 50;
    let pool = ThreadPool::new(2).unwrap();
    let (open, closed) = gate();
    let (started_tx, started) = mpsc::channel();
    let tasks: Vec<Task<usize>> = (0..TASKS)
        .map(|i| {
            let closed = closed.clone();
            let started_tx = started_tx.clone();
            pool.spawn(move || {
                let _ = started_tx.send(());
                let _ = closed.recv_blocking();
                i
            })
        })
        .collect();
    // Two tasks run, the rest wait in the queue, when the last handle goes.
    started.recv_timeout(WATCHDOG).unwrap();
    started.recv_timeout(WATCHDOG).unwrap();
    drop(pool);
    drop(open);
    block_on(async {
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap(), i);
        }
    });
}

#[test]
fn dropping_one_clone_keeps_the_pool() {
    let pool = ThreadPool::new(2).unwrap();
    let clone = pool.clone();
    drop(pool);
    assert_eq!(block_on(clone.spawn(|| "alive")).unwrap(), "alive");
    assert_eq!(clone.workers(), 2);
}

#[test]
fn executor_run_takes_a_fn_and_an_argument() {
    fn square(n: u64) -> u64 {
        n * n
    }
    async fn squares(executor: &impl Executor) -> Vec<u64> {
        let tasks: Vec<_> = (0..10u64).map(|n| executor.run(square, n)).collect();
        let mut values = Vec::new();
        for task in tasks {
            values.push(task.await.unwrap());
        }
        values
    }
    let pool = ThreadPool::new(2).unwrap();
    let values = block_on(squares(&pool));
    assert_eq!(values, (0..10u64).map(square).collect::<Vec<_>>());
    let name = block_on(pool.run(|()| current_name(), ())).unwrap();
    assert!(name.starts_with("smol-offload-"), "{name}");
}

#[test]
fn a_result_nobody_awaits_is_dropped_not_leaked() {
    let pool = ThreadPool::new(1).unwrap();
    let value = Arc::new("result");
    let (open, closed) = gate();
    let (started_tx, started) = mpsc::channel();
    let running = {
        let value = value.clone();
        pool.spawn(move || {
            started_tx.send(()).unwrap();
            let _ = closed.recv_blocking();
            value
        })
    };
    let queued = {
        let value = value.clone();
        pool.spawn(move || value)
    };
    let detached = {
        let value = value.clone();
        pool.spawn(move || value)
    };
    started.recv_timeout(WATCHDOG).unwrap();
    drop(running); // started: runs to the end, its value is dropped
    drop(queued); // not started: its closure, and what it captured, is dropped
    detached.detach(); // runs, nobody reads the value
    drop(open);
    // One worker, submission order: once this ran, the three before it are done.
    block_on(pool.spawn(|| ())).unwrap();
    assert_eq!(Arc::strong_count(&value), 1, "a result or a capture leaked");
}

#[test]
fn the_last_handle_can_be_dropped_on_a_worker() {
    let pool = ThreadPool::new(2).unwrap();
    let inner = pool.clone();
    let (open, closed) = gate();
    let task = pool.spawn(move || {
        let _ = closed.recv_blocking();
        // By now the test has dropped its handle: this is the last one.
        let workers = inner.workers();
        drop(inner);
        workers
    });
    drop(pool);
    drop(open);
    assert_eq!(block_on(task).unwrap(), 2);
}

#[test]
fn a_task_never_starts_inside_another_tasks_rayon_join() {
    // A worker waiting in `rayon::join` for a half that another worker stole must not pick up
    // an unrelated task meanwhile: that task would run nested on the first task's stack, and
    // the first task could not finish before it (a deadlock if it waits for the first).
    let pool = ThreadPool::new(2).unwrap();
    let (stolen_tx, stolen) = mpsc::channel();
    let (queued_tx, queued) = mpsc::channel::<()>();
    let (open, closed) = gate();
    let first_done = Arc::new(AtomicBool::new(false));
    let first = {
        let first_done = first_done.clone();
        pool.spawn(move || {
            rayon::join(
                // Returns once the other half runs on the other worker and `second` is queued.
                move || queued.recv_timeout(WATCHDOG).unwrap(),
                move || {
                    stolen_tx.send(()).unwrap();
                    let _ = closed.recv_blocking();
                },
            );
            first_done.store(true, Ordering::SeqCst);
        })
    };
    stolen.recv_timeout(WATCHDOG).unwrap();
    let second = {
        let first_done = first_done.clone();
        pool.spawn(move || first_done.load(Ordering::SeqCst))
    };
    queued_tx.send(()).unwrap();
    // Give `second` its chance: a pool that nests it runs it now, inside `first`; a pool that
    // does not cannot start it before `first` ends, whatever the time given.
    let early = block_on(
        smol_offload::wait([second], smol_offload::ReturnWhen::FirstCompleted)
            .timeout(Duration::from_millis(500)),
    );
    drop(open);
    block_on(first).unwrap();
    let after_first = match (
        early.done.into_iter().next(),
        early.pending.into_iter().next(),
    ) {
        (Some((_, result)), _) => result.unwrap(),
        (None, Some((_, task))) => block_on(task).unwrap(),
        (None, None) => unreachable!("the task is in done or in pending"),
    };
    assert!(
        after_first,
        "a task started nested inside another task's rayon::join, before that task ended"
    );
}
