//! Debug mode names the task that blocks the loop, like `asyncio.run(main(), debug=True)`:
//! `slow_coroutine` sleeps 0.5 s on the loop and is reported by name and duration; the same
//! program with the sleep offloaded to a `ThreadPool` gives no report.
//!
//! Run with `cargo run --release --example debug_slow_task`. Without the callback installed
//! below, the reports would go to stderr (or to `tracing` with the `tracing` feature), and
//! `SMOL_OFFLOAD_DEBUG=1` would turn debug mode on for `debug::block_on` without code.
//!
//! The Python original:
//!
//! ```python
//! async def slow_coroutine():
//!     time.sleep(0.5)  # Simulating slow I/O
//!
//! asyncio.run(slow_coroutine(), debug=True)
//! # Executing <Task finished ... coro=<slow_coroutine() ...>> took 0.501 seconds
//! ```

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smol_offload::ThreadPool;
use smol_offload::debug::{self, DebugMode, Report, ReportKind};

/// `time.sleep(0.5)` on the loop.
async fn slow_coroutine() {
    std::thread::sleep(Duration::from_millis(500)); // Simulating slow I/O
}

/// The same sleep, offloaded: the loop only awaits.
async fn offloaded_coroutine(pool: &ThreadPool) {
    pool.spawn(|| std::thread::sleep(Duration::from_millis(500)))
        .await
        .expect("the sleep does not panic");
}

fn main() -> ExitCode {
    let reports: Arc<Mutex<Vec<Report>>> = Arc::default();
    let sink = reports.clone();
    DebugMode::new() // threshold 100 ms, as asyncio's slow_callback_duration
        .on_report(move |report| {
            println!("   debug: {report}");
            sink.lock().unwrap().push(report.clone());
        })
        .enable();

    println!("1. time.sleep(0.5) on the loop:");
    debug::block_on(debug::watch_named("slow_coroutine", slow_coroutine()));
    let blocked = std::mem::take(&mut *reports.lock().unwrap());

    println!("2. the same sleep on a ThreadPool:");
    let pool = ThreadPool::new(1).expect("one thread starts");
    debug::block_on(debug::watch_named(
        "offloaded_coroutine",
        offloaded_coroutine(&pool),
    ));
    let offloaded = std::mem::take(&mut *reports.lock().unwrap());
    debug::disable();

    let named = blocked.iter().find(|report| {
        report.task == "slow_coroutine"
            && matches!(report.kind, ReportKind::SlowPoll { .. })
            && report.elapsed >= Duration::from_millis(500)
    });
    let mut ok = true;
    match named {
        Some(report) => println!(
            "   reported: slow_coroutine blocked the loop for {:.3} s",
            report.elapsed.as_secs_f64()
        ),
        None => {
            eprintln!("error: the blocking sleep was not reported as slow_coroutine: {blocked:#?}");
            ok = false;
        }
    }
    // The sleep itself on the loop would show as a poll of at least 0.5 s. A shorter report can
    // only be a machine so busy that the loop's thread waited for a CPU in the middle of a poll:
    // say so, but that is no failure of the offloading.
    let blocking_the_loop = |report: &&Report| {
        !matches!(report.kind, ReportKind::QueueWait { .. })
            && report.elapsed >= Duration::from_millis(400)
    };
    if offloaded.is_empty() {
        println!("   offloaded: no report, the loop stayed free");
    } else if let Some(report) = offloaded.iter().find(blocking_the_loop) {
        eprintln!("error: the offloaded sleep blocked the loop: {report}");
        ok = false;
    } else {
        println!(
            "   offloaded: {} short report(s), from a busy machine, not from the sleep",
            offloaded.len()
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
