//! Debug mode: slow polls named after they return, polls reported by the watchdog while they
//! still run, a stuck `block_on` body, and offloaded work starved in a pool's queue.
//!
//! Debug mode is process-global: every test takes the [`serial`] lock and installs its own
//! callback, and reports are read from that callback, never from stderr.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use smol_offload::debug::{self, DebugMode, Report, ReportKind};
use smol_offload::{Executor, ProcessPool, ThreadPool};

mod common;

use common::{WATCHDOG, hold_a_worker};

#[ctor::ctor]
fn start_fork_server() {
    smol_offload::init();
}

/// One test at a time: they all change the one debug mode of the process.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Turns debug mode on with `threshold`; every report goes to the returned list and, as it
/// comes, to the returned channel.
fn capture(threshold: Duration) -> (Arc<Mutex<Vec<Report>>>, mpsc::Receiver<Report>) {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let (sender, receiver) = mpsc::channel();
    let sink = reports.clone();
    let sender = Mutex::new(sender);
    DebugMode::new()
        .threshold(threshold)
        .on_report(move |report| {
            sink.lock().unwrap().push(report.clone());
            let _ = sender.lock().unwrap().send(report.clone());
        })
        .enable();
    (reports, receiver)
}

fn slow_polls(reports: &[Report]) -> Vec<&Report> {
    reports
        .iter()
        .filter(|report| matches!(report.kind, ReportKind::SlowPoll { .. }))
        .collect()
}

/// Waits for the first report that `wanted` accepts.
fn wait_for(receiver: &mpsc::Receiver<Report>, wanted: impl Fn(&Report) -> bool) -> Report {
    loop {
        let report = receiver
            .recv_timeout(WATCHDOG)
            .expect("the expected report never came");
        if wanted(&report) {
            return report;
        }
    }
}

#[test]
fn a_slow_poll_is_reported_once_after_it_returns_naming_the_task() {
    let _serial = serial();
    let (reports, _) = capture(Duration::from_millis(50));
    smol::block_on(debug::watch_named("slow-handler", async {
        std::thread::sleep(Duration::from_millis(150));
    }));
    debug::disable();
    let reports = reports.lock().unwrap();
    let slow = slow_polls(&reports);
    assert_eq!(slow.len(), 1, "{reports:#?}");
    assert_eq!(slow[0].task, "slow-handler");
    assert!(
        slow[0].elapsed >= Duration::from_millis(150),
        "{:?}",
        slow[0]
    );
    assert_eq!(slow[0].threshold, Duration::from_millis(50));
    assert_eq!(
        Some(slow[0].thread.as_str()),
        std::thread::current().name(),
        "the poll ran on this thread"
    );
    assert!(
        slow[0].to_string().starts_with("task \"slow-handler\" "),
        "{}",
        slow[0]
    );
}

#[test]
fn quick_polls_are_not_reported() {
    let _serial = serial();
    // A threshold far above the polls, so that a preempted thread on a busy machine is no report.
    let (reports, _) = capture(Duration::from_millis(250));
    smol::block_on(debug::watch_named("quick", async {
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(1));
            futures_lite::future::yield_now().await;
        }
    }));
    debug::disable();
    assert!(reports.lock().unwrap().is_empty(), "{reports:#?}");
}

#[test]
fn an_unnamed_task_is_named_by_where_it_was_wrapped() {
    let _serial = serial();
    let (reports, _) = capture(Duration::from_millis(20));
    let line = line!() + 1;
    let task = debug::watch(async { std::thread::sleep(Duration::from_millis(60)) });
    smol::block_on(task);
    debug::disable();
    let reports = reports.lock().unwrap();
    let slow = slow_polls(&reports);
    assert_eq!(slow.len(), 1, "{reports:#?}");
    assert_eq!(slow[0].location.file(), file!());
    assert_eq!(slow[0].location.line(), line);
    assert!(slow[0].task.starts_with(&format!("{}:{line}:", file!())));
}

#[test]
fn the_watchdog_reports_a_poll_that_has_not_returned_yet() {
    let _serial = serial();
    let (stuck_tx, stuck_rx) = mpsc::channel();
    let stuck_tx = Mutex::new(stuck_tx);
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = reports.clone();
    DebugMode::new()
        .threshold(Duration::from_millis(50))
        .on_report(move |report| {
            sink.lock().unwrap().push(report.clone());
            if report.kind == ReportKind::Stuck {
                let _ = stuck_tx.lock().unwrap().send(report.clone());
            }
        })
        .enable();
    // The poll blocks until the watchdog has reported it: it can only return if the report
    // came while it was still running.
    let stuck = smol::block_on(debug::watch_named("deadlocked", async {
        stuck_rx.recv_timeout(WATCHDOG)
    }))
    .expect("the watchdog did not report the running poll");
    debug::disable();
    assert_eq!(stuck.task, "deadlocked");
    assert!(stuck.elapsed >= Duration::from_millis(50), "{stuck:?}");
    assert!(stuck.to_string().contains("not returned yet"), "{stuck}");
    // Once more when it returns, marked as reported before.
    let reports = reports.lock().unwrap();
    let slow = slow_polls(&reports);
    assert_eq!(slow.len(), 1, "{reports:#?}");
    assert_eq!(slow[0].kind, ReportKind::SlowPoll { was_stuck: true });
    assert_eq!(slow[0].task, "deadlocked");
}

#[test]
fn a_stuck_block_on_body_outside_any_watched_task_is_reported() {
    let _serial = serial();
    let (_, receiver) = capture(Duration::from_millis(50));
    let (release, stuck) = mpsc::channel::<()>();
    let watcher = std::thread::spawn(move || {
        let report = wait_for(&receiver, |report| report.kind == ReportKind::Stuck);
        release.send(()).unwrap();
        report
    });
    let line = line!() + 1;
    debug::block_on(async {
        // Blocking code straight in the body, in no watched task.
        stuck.recv_timeout(WATCHDOG).unwrap();
    });
    debug::disable();
    let report = watcher.join().unwrap();
    assert!(report.task.starts_with("block_on at "), "{report:?}");
    assert_eq!(report.location.line(), line);
}

#[test]
fn a_slow_task_inside_a_watched_block_on_is_reported_once_under_its_own_name() {
    let _serial = serial();
    let (reports, _) = capture(Duration::from_millis(300));
    debug::block_on(async {
        let ex = smol::LocalExecutor::new();
        let slow = ex.spawn(debug::watch_named("inner", async {
            std::thread::sleep(Duration::from_millis(600));
        }));
        ex.run(slow).await;
    });
    debug::disable();
    let reports = reports.lock().unwrap();
    let slow = slow_polls(&reports);
    assert_eq!(slow.len(), 1, "{reports:#?}");
    assert_eq!(slow[0].task, "inner");
}

#[test]
fn a_panicking_callback_does_not_break_the_poll() {
    let _serial = serial();
    DebugMode::new()
        .threshold(Duration::from_millis(10))
        .on_report(|_| panic!("callback failure"))
        .enable();
    let value = smol::block_on(debug::watch(async {
        std::thread::sleep(Duration::from_millis(40));
        7
    }));
    debug::disable();
    assert_eq!(value, 7);
}

#[test]
fn debug_mode_off_reports_nothing() {
    let _serial = serial();
    let (reports, _) = capture(Duration::from_millis(10));
    debug::disable();
    assert!(!debug::is_enabled());
    smol::block_on(debug::watch(async {
        std::thread::sleep(Duration::from_millis(40));
    }));
    assert!(reports.lock().unwrap().is_empty(), "{reports:#?}");
}

#[test]
fn work_starved_in_a_thread_pool_queue_is_reported_with_the_pool_stats() {
    let _serial = serial();
    let pool = ThreadPool::builder()
        .name("uploads")
        .workers(1)
        .build()
        .unwrap();
    let (held, gate) = hold_a_worker(&pool, ());
    let (_, receiver) = capture(Duration::from_millis(50));
    let (waiting, queue_report) = smol::block_on(debug::watch_named("submitter", async {
        let waiting = pool.spawn(|| 5);
        // Polls of this task stay short: wait for the report on another thread.
        let report = blocking::unblock(move || {
            wait_for(&receiver, |report| {
                matches!(report.kind, ReportKind::QueueWait { .. })
            })
        })
        .await;
        (waiting, report)
    }));
    debug::disable();
    drop(gate);
    assert_eq!(smol::block_on(waiting).unwrap(), 5);
    smol::block_on(held).unwrap();
    let ReportKind::QueueWait { pool: kind, stats } = queue_report.kind else {
        unreachable!()
    };
    assert_eq!(kind, "ThreadPool");
    assert_eq!(queue_report.pool_name.as_deref(), Some("uploads"));
    assert!(
        queue_report
            .to_string()
            .contains(r#"queue of ThreadPool "uploads""#)
    );
    assert_eq!((stats.workers, stats.running, stats.queued), (1, 1, 1));
    assert_eq!(queue_report.task, "submitter");
    assert_eq!(queue_report.location.file(), file!());
    assert!(queue_report.elapsed >= Duration::from_millis(50));
}

#[test]
fn work_that_starts_at_once_is_not_reported_as_starved() {
    let _serial = serial();
    let pool = ThreadPool::new(2).unwrap();
    let (reports, _) = capture(Duration::from_secs(1));
    let sum: u32 = smol::block_on(async {
        let mut sum = 0;
        for n in 0..50 {
            sum += pool.spawn(move || n).await.unwrap();
        }
        sum
    });
    // Past one threshold, the watchdog has looked at every submission.
    std::thread::sleep(Duration::from_millis(1200));
    debug::disable();
    assert_eq!(sum, (0..50).sum());
    assert!(reports.lock().unwrap().is_empty(), "{reports:#?}");
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn work_starved_in_a_process_pool_queue_is_reported_with_the_pool_stats() {
    let _serial = serial();
    let pool = ProcessPool::new(1).unwrap();
    let (_, receiver) = capture(Duration::from_millis(50));
    let report = smol::block_on(async {
        // The only worker sleeps far longer than the threshold: the second call waits.
        let busy = pool.run(sleep_ms, 3_000);
        let queued = pool.run(sleep_ms, 1);
        let report = blocking::unblock(move || {
            wait_for(&receiver, |report| {
                matches!(report.kind, ReportKind::QueueWait { .. })
            })
        })
        .await;
        assert_eq!(busy.await.unwrap(), 3_000);
        assert_eq!(queued.await.unwrap(), 1);
        report
    });
    debug::disable();
    let ReportKind::QueueWait { pool: kind, stats } = report.kind else {
        unreachable!()
    };
    assert_eq!(kind, "ProcessPool");
    assert_eq!(report.pool_name.as_deref(), Some("unnamed"));
    assert_eq!(stats.workers, 1);
    assert!(stats.queued >= 1, "{stats}");
    assert_eq!(report.location.file(), file!());
}

#[test]
fn extreme_thresholds_neither_spin_nor_overflow() {
    let _serial = serial();
    for threshold in [Duration::ZERO, Duration::MAX] {
        let (reports, _) = capture(threshold);
        smol::block_on(debug::watch_named("tiny", async {
            std::thread::sleep(Duration::from_millis(5));
        }));
        // Let the watchdog compute its deadlines with this threshold.
        std::thread::sleep(Duration::from_millis(20));
        debug::disable();
        let reports = reports.lock().unwrap();
        let slow = slow_polls(&reports);
        if threshold == Duration::ZERO {
            // Raised to 1 ms: the 5 ms poll is slow.
            assert_eq!(slow.len(), 1, "{reports:#?}");
            assert_eq!(slow[0].threshold, Duration::from_millis(1));
        } else {
            assert!(reports.is_empty(), "{reports:#?}");
        }
    }
    // The watchdog survived both: it still reports a stuck poll.
    let (_, receiver) = capture(Duration::from_millis(20));
    let (release, stuck) = mpsc::channel::<()>();
    let watcher = std::thread::spawn(move || {
        wait_for(&receiver, |report| report.kind == ReportKind::Stuck);
        release.send(()).unwrap();
    });
    smol::block_on(debug::watch(async {
        stuck.recv_timeout(WATCHDOG).unwrap();
    }));
    debug::disable();
    watcher.join().unwrap();
}

#[test]
fn work_on_the_default_pool_is_named_by_the_spawn_call() {
    let _serial = serial();
    let workers = smol_offload::default_pool().unwrap().workers();
    // Hold every worker of the default pool, so the next task waits.
    let (hold, gate) = common::gate();
    let (started_tx, started) = mpsc::channel();
    let held: Vec<_> = (0..workers)
        .map(|_| {
            let gate = gate.clone();
            let started_tx = started_tx.clone();
            smol_offload::spawn(move || {
                started_tx.send(()).unwrap();
                let _ = gate.recv_blocking();
            })
        })
        .collect();
    for _ in 0..workers {
        started.recv_timeout(WATCHDOG).unwrap();
    }
    let (_, receiver) = capture(Duration::from_millis(50));
    let line = line!() + 1;
    let waiting = smol_offload::spawn(|| 3);
    let report = wait_for(&receiver, |report| {
        matches!(report.kind, ReportKind::QueueWait { .. })
    });
    debug::disable();
    drop(hold);
    assert_eq!(smol::block_on(waiting).unwrap(), 3);
    for task in held {
        smol::block_on(task).unwrap();
    }
    assert_eq!(report.location.file(), file!());
    assert_eq!(report.location.line(), line);
    // Submitted outside any watched task: named by the call.
    assert_eq!(report.task, format!("{}", report.location));
}
