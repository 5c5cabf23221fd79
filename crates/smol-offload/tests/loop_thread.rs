//! `LoopThread`: submissions from many threads and loops, `spawn_local`, `block_on` and its
//! deadlock guard, a stop that drains, and a thread that ends with its last handle.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Instant;

use common::{WATCHDOG, block_on, gate};
use smol_offload::{LoopThread, ThreadPool};

fn current_name() -> String {
    thread::current().name().unwrap_or("<unnamed>").to_owned()
}

/// The names (`comm`) of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

#[test]
fn ten_thousand_tasks_from_eight_threads_and_two_loops_each_resolve_once_on_the_loop() {
    const PER_SUBMITTER: usize = 1_000;
    let target = LoopThread::new("target-loop").unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    // Each submitter checks every answer: the value it sent back, from the loop thread.
    let submit = |target: LoopThread, ran: Arc<AtomicUsize>, base: usize| async move {
        let tasks: Vec<_> = (0..PER_SUBMITTER)
            .map(|i| {
                let n = base + i;
                let ran = ran.clone();
                if n.is_multiple_of(2) {
                    target.spawn(async move {
                        ran.fetch_add(1, Ordering::SeqCst);
                        (n, current_name())
                    })
                } else {
                    target.call(move || {
                        ran.fetch_add(1, Ordering::SeqCst);
                        (n, current_name())
                    })
                }
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let (n, name) = task.await.unwrap();
            assert_eq!(n, base + i);
            assert_eq!(name, "target-loop");
        }
    };
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (target, ran) = (target.clone(), ran.clone());
            thread::spawn(move || block_on(submit(target, ran, t * PER_SUBMITTER)))
        })
        .collect();
    let loops: Vec<_> = (8..10)
        .map(|l| LoopThread::new(format!("submitter-{l}")).unwrap())
        .collect();
    let from_loops: Vec<_> = loops
        .iter()
        .enumerate()
        .map(|(l, other)| other.spawn(submit(target.clone(), ran.clone(), (8 + l) * PER_SUBMITTER)))
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    block_on(async {
        for task in from_loops {
            task.await.unwrap();
        }
        target.stop().await.unwrap();
    });
    assert_eq!(ran.load(Ordering::SeqCst), 10 * PER_SUBMITTER);
}

#[test]
fn spawn_local_keeps_an_rc_on_the_loop_across_awaits() {
    let owner = LoopThread::new("rc-owner").unwrap();
    let total = block_on(owner.spawn_local(|| async {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut children = Vec::new();
        for n in 1..=4 {
            let log = log.clone();
            children.push(async move {
                smol::future::yield_now().await;
                log.borrow_mut().push((n, current_name()));
            });
        }
        for child in children {
            child.await;
        }
        let entries = log.borrow();
        assert!(entries.iter().all(|(_, name)| name == "rc-owner"));
        entries.iter().map(|(n, _)| n).sum::<i32>()
    }))
    .unwrap();
    assert_eq!(total, 10);
}

#[test]
fn a_panic_is_an_error_and_the_loop_goes_on() {
    let target = LoopThread::new("panicky").unwrap();
    fn boom() -> u8 {
        panic!("boom on the loop")
    }
    let err = block_on(target.spawn(async { boom() })).unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.panic_message(), Some("boom on the loop"));
    let local = block_on(target.spawn_local(|| -> std::future::Ready<()> { panic!("in make") }));
    assert_eq!(local.unwrap_err().panic_message(), Some("in make"));
    assert_eq!(block_on(target.call(|| 5)).unwrap(), 5);
}

#[test]
fn block_on_works_from_a_pool_worker_and_refuses_on_the_loop_itself() {
    let service = LoopThread::new("service").unwrap();
    let pool = ThreadPool::new(2).unwrap();
    let from_pool = service.clone();
    let answer =
        block_on(pool.spawn(move || from_pool.block_on(async { (current_name(), 40 + 2) })))
            .unwrap()
            .unwrap();
    assert_eq!(answer, ("service".to_owned(), 42));

    let on_itself = service.clone();
    let start = Instant::now();
    let refused = block_on(service.call(move || on_itself.block_on(async { 1 }))).unwrap();
    let err = refused.unwrap_err();
    assert!(err.is_deadlock(), "{err}");
    assert!(start.elapsed() < WATCHDOG);
    let message = err.to_string();
    assert!(message.contains("\"service\""), "{message}");
    assert!(message.contains("await the future instead"), "{message}");

    // stop() awaited on the loop itself is refused too, but the stop begins.
    let on_itself = service.clone();
    let stop_err = block_on(service.call(move || on_itself.stop())).unwrap();
    assert!(block_on(stop_err).unwrap_err().is_deadlock());
    assert!(block_on(service.call(|| ())).unwrap_err().is_shutdown());
}

#[test]
fn stop_drains_a_thousand_queued_futures_and_refuses_what_comes_after() {
    let target = LoopThread::new("drainer").unwrap();
    // Holds the loop thread: everything below queues behind it.
    let (open, holder) = hold_the_loop(&target);
    let ran = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..1_000)
        .map(|n| {
            let ran = ran.clone();
            target.spawn(async move {
                smol::future::yield_now().await;
                ran.fetch_add(1, Ordering::SeqCst);
                n
            })
        })
        .collect();
    let stop = target.stop();
    let refused = target.spawn(async { "submitted after stop" });
    assert!(refused.is_finished(), "refused at once");
    let err = block_on(refused).unwrap_err();
    assert!(err.is_shutdown(), "{err}");
    assert!(err.to_string().contains("\"drainer\" is stopping"), "{err}");
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    drop(open);
    block_on(stop).unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1_000);
    assert!(!thread_names().iter().any(|name| name == "drainer"));
    block_on(async {
        holder.await.unwrap();
        for (n, task) in queued.into_iter().enumerate() {
            assert_eq!(task.await.unwrap(), n);
        }
    });
    assert!(block_on(target.call(|| ())).unwrap_err().is_shutdown());
    // A second stop through a clone resolves as well.
    block_on(target.clone().stop()).unwrap();
}

#[test]
fn a_task_dropped_before_its_future_runs_cancels_it() {
    let target = LoopThread::new("canceller").unwrap();
    let (open, holder) = hold_the_loop(&target);
    let ran = Arc::new(AtomicUsize::new(0));
    let ran_in_task = ran.clone();
    drop(target.spawn(async move { ran_in_task.fetch_add(1, Ordering::SeqCst) }));
    let ran_in_local = ran.clone();
    drop(target.spawn_local(move || async move { ran_in_local.fetch_add(1, Ordering::SeqCst) }));
    drop(open);
    block_on(async {
        holder.await.unwrap();
        target.stop().await.unwrap();
    });
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

thread_local! {
    static ON_EXIT: RefCell<Option<std::sync::mpsc::Sender<()>>> = const { RefCell::new(None) };
}

#[test]
fn dropping_the_last_handle_ends_the_thread() {
    let target = LoopThread::new("dropped-loop").unwrap();
    let (exit_tx, exited) = std::sync::mpsc::channel::<()>();
    block_on(target.call(move || ON_EXIT.with(|slot| *slot.borrow_mut() = Some(exit_tx)))).unwrap();
    assert!(thread_names().iter().any(|name| name == "dropped-loop"));
    let clone = target.clone();
    drop(target);
    assert_eq!(
        block_on(clone.call(|| 1)).unwrap(),
        1,
        "a clone keeps it running"
    );
    // Queued work still runs after the last drop.
    let (done_tx, done) = std::sync::mpsc::channel();
    clone
        .spawn(async move { done_tx.send(current_name()).unwrap() })
        .detach();
    drop(clone);
    assert_eq!(done.recv_timeout(WATCHDOG).unwrap(), "dropped-loop");
    // The sender in the thread's locals is dropped as the thread exits.
    assert_eq!(
        exited.recv_timeout(WATCHDOG),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
    );
    let deadline = Instant::now() + WATCHDOG;
    while thread_names().iter().any(|name| name == "dropped-loop") {
        assert!(Instant::now() < deadline, "the loop thread is still there");
        thread::yield_now();
    }
}

#[test]
fn a_name_with_a_nul_byte_is_refused() {
    let err = LoopThread::new("bad\0name").unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not start the loop thread: a thread name cannot contain a NUL byte"
    );
}

#[test]
fn handles_and_streams_can_cross_threads() {
    fn shareable<T: Clone + Send + Sync + std::fmt::Debug>() {}
    fn sendable<T: Send + Sync + Unpin + std::fmt::Debug>() {}
    shareable::<LoopThread>();
    sendable::<smol_offload::IterStream<String>>();
}

#[test]
fn a_started_future_runs_to_its_end_when_its_task_is_dropped() {
    let target = LoopThread::new("runs-on").unwrap();
    let (open, closed) = gate();
    let (started_tx, started) = std::sync::mpsc::channel();
    let (finished_tx, finished) = std::sync::mpsc::channel();
    let task = target.spawn(async move {
        started_tx.send(()).unwrap();
        let _ = closed.recv().await; // waits without blocking the loop
        finished_tx.send("finished").unwrap();
    });
    started.recv_timeout(WATCHDOG).unwrap();
    assert!(task.is_started());
    drop(task);
    // The loop is free meanwhile: other work goes on while the dropped future waits.
    assert_eq!(block_on(target.call(|| 7)).unwrap(), 7);
    drop(open);
    assert_eq!(finished.recv_timeout(WATCHDOG), Ok("finished"));
    block_on(target.stop()).unwrap();
}

/// Holds the loop with a closure until the returned gate opens, so that what is submitted
/// next waits in its queue.
fn hold_the_loop(target: &LoopThread) -> (async_channel::Sender<()>, smol_offload::Task<()>) {
    let (open, closed) = gate();
    let (started_tx, started) = std::sync::mpsc::channel();
    let holder = target.call(move || {
        started_tx.send(()).unwrap();
        let _ = closed.recv_blocking();
    });
    started.recv_timeout(WATCHDOG).unwrap();
    (open, holder)
}

/// Sends the name of the thread it is dropped on.
struct ReportsItsDrop(std::sync::mpsc::Sender<String>);

impl Drop for ReportsItsDrop {
    fn drop(&mut self) {
        let _ = self.0.send(current_name());
    }
}

#[test]
fn cancelling_a_queued_future_means_it_never_runs_and_is_dropped_on_the_loop() {
    let target = LoopThread::new("cancel-queued").unwrap();
    let (open, holder) = hold_the_loop(&target);
    let (dropped_tx, dropped) = std::sync::mpsc::channel();
    let guard = ReportsItsDrop(dropped_tx);
    let queued = target.spawn(async move {
        let _guard = guard;
        unreachable!("a cancelled future never runs")
    });
    assert!(!queued.is_started());
    assert!(!queued.is_finished());
    assert_eq!(format!("{queued:?}"), "Task { state: \"queued\" }");
    let err = block_on(queued.cancel()).unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    drop(open);
    assert_eq!(dropped.recv_timeout(WATCHDOG).unwrap(), "cancel-queued");
    block_on(async {
        holder.await.unwrap();
        target.stop().await.unwrap();
    });
}

#[test]
fn cancelling_a_running_future_waits_for_its_result() {
    let target = LoopThread::new("cancel-running").unwrap();
    let (open, closed) = gate();
    let (started_tx, started) = std::sync::mpsc::channel();
    let running = target.spawn(async move {
        started_tx.send(()).unwrap();
        let _ = closed.recv().await;
        "ran to its end"
    });
    started.recv_timeout(WATCHDOG).unwrap();
    assert!(running.is_started());
    assert_eq!(format!("{running:?}"), "Task { state: \"running\" }");
    let cancelling = thread::spawn(move || block_on(running.cancel()));
    drop(open);
    assert_eq!(cancelling.join().unwrap().unwrap(), "ran to its end");
    block_on(target.stop()).unwrap();
}

#[test]
fn a_timeout_cancels_a_queued_future_and_lets_a_running_one_end() {
    let target = LoopThread::new("timeouts").unwrap();
    let (open, holder) = hold_the_loop(&target);
    let ran = Arc::new(AtomicUsize::new(0));
    let ran_in_task = ran.clone();
    let queued = target.spawn(async move { ran_in_task.fetch_add(1, Ordering::SeqCst) });
    let err = block_on(queued.timeout(std::time::Duration::from_millis(1))).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    drop(open);
    block_on(holder).unwrap();

    let (open, closed) = gate();
    let (started_tx, started) = std::sync::mpsc::channel();
    let (finished_tx, finished) = std::sync::mpsc::channel();
    let running = target.spawn(async move {
        started_tx.send(()).unwrap();
        let _ = closed.recv().await;
        finished_tx.send(()).unwrap();
    });
    started.recv_timeout(WATCHDOG).unwrap();
    let err = block_on(running.timeout(std::time::Duration::from_millis(1))).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    drop(open);
    finished.recv_timeout(WATCHDOG).unwrap();
    block_on(target.stop()).unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the queued future never ran");
}

#[test]
fn a_detached_queued_future_still_runs_and_a_finished_task_says_so() {
    let target = LoopThread::new("detached").unwrap();
    let (open, holder) = hold_the_loop(&target);
    let (ran_tx, ran) = std::sync::mpsc::channel();
    target
        .spawn(async move { ran_tx.send(current_name()).unwrap() })
        .detach();
    let answer = target.spawn(async { 5 });
    drop(open);
    assert_eq!(ran.recv_timeout(WATCHDOG).unwrap(), "detached");
    block_on(holder).unwrap();
    // The loop runs in order: once `holder` and the detached future ran, so does `answer` soon.
    block_on(target.call(|| ())).unwrap();
    assert!(answer.is_finished());
    assert!(answer.is_started());
    assert_eq!(format!("{answer:?}"), "Task { state: \"finished\" }");
    assert_eq!(block_on(answer).unwrap(), 5);
    block_on(target.stop()).unwrap();
}

#[test]
fn stop_counts_out_cancelled_futures_and_panics() {
    let target = LoopThread::new("stop-counts").unwrap();
    let (open, holder) = hold_the_loop(&target);
    let cancelled: Vec<_> = (0..50).map(|n| target.spawn(async move { n })).collect();
    drop(cancelled);
    let panicked = target.spawn(async { panic!("in a drained future") });
    let stopping = target.clone();
    let stopped = thread::spawn(move || block_on(stopping.stop()));
    drop(open);
    stopped.join().unwrap().unwrap();
    block_on(holder).unwrap();
    let err = block_on(panicked).unwrap_err();
    assert_eq!(err.panic_message(), Some("in a drained future"));
}

#[test]
fn tasks_dropped_while_their_futures_start_never_stop_one_mid_way() {
    // Each task is dropped as its future may be starting: either the future never runs, or it
    // runs to its end, past an await where a late cancellation would have stopped it.
    let target = LoopThread::new("drop-race").unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    // Every other task is dropped only once its future has started, for sure; each future
    // then waits for its gate, which opens only after its task was dropped.
    let deadline = Instant::now() + WATCHDOG;
    for n in 0..2_000 {
        let (started_in_task, ended_in_task) = (started.clone(), ended.clone());
        let (open, closed) = gate();
        let task = target.spawn(async move {
            started_in_task.fetch_add(1, Ordering::SeqCst);
            let _ = closed.recv().await;
            ended_in_task.fetch_add(1, Ordering::SeqCst);
        });
        if n % 2 == 1 {
            while !task.is_started() {
                assert!(Instant::now() < deadline, "the future never started");
                thread::yield_now();
            }
        }
        drop(task);
        drop(open);
    }
    block_on(target.stop()).unwrap();
    let (started, ended) = (started.load(Ordering::SeqCst), ended.load(Ordering::SeqCst));
    assert!(started >= 1_000, "{started} started");
    assert_eq!(started, ended, "a started future was stopped at its await");
}
