//! A second event loop running forever in its own thread, fed from the main thread: the third
//! article's `new_loop.run_forever()` in a `Thread`, with `call_soon_threadsafe` (plain
//! callbacks) and `run_coroutine_threadsafe` (coroutines), on `LoopThread`.
//!
//! The article's times are seconds; here one "second" is 50 ms. The plain callbacks
//! (`more_work(6)`, `more_work(3)`) block the loop thread, so they run one after the other; the
//! coroutines (`do_some_work(6)`, `do_some_work(4)`) sleep asynchronously, so they overlap and
//! the shorter one finishes first. Unlike the article, the main thread also awaits the results
//! from its own loop, and stops the second loop cleanly at the end.
//!
//! Run with `cargo run --release --example loop_in_thread`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smol::Timer;
use smol_offload::LoopThread;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// One "second" of the article.
const SECOND: Duration = Duration::from_millis(50);

type Log = Arc<Mutex<Vec<String>>>;

fn note(log: &Log, start: Instant, line: String) {
    println!("[{:>6.1?}] {line}", start.elapsed());
    log.lock().unwrap().push(line);
}

/// The article's `more_work(x)`: a plain function that blocks for `x` seconds.
fn more_work(x: u32, log: &Log, start: Instant) -> u32 {
    note(log, start, format!("More work {x}"));
    std::thread::sleep(SECOND * x);
    note(log, start, format!("Finished more work {x}"));
    x
}

/// The article's `do_some_work(x)`: a coroutine that sleeps `x` seconds without blocking.
async fn do_some_work(x: u32, log: Log, start: Instant) -> u32 {
    note(&log, start, format!("Waiting {x}"));
    Timer::after(SECOND * x).await;
    note(&log, start, format!("Done after {x}s"));
    x
}

fn main() -> Result<()> {
    let start = Instant::now();
    // new_loop = asyncio.new_event_loop(); Thread(target=start_loop, args=(new_loop,)).start()
    let new_loop = LoopThread::new("new_loop")?;
    println!("TIME: {:?}", start.elapsed());

    // The synchronous way: new_loop.call_soon_threadsafe(more_work, 6), then (more_work, 3).
    let sync_log = Log::default();
    let six = {
        let log = sync_log.clone();
        new_loop.call(move || more_work(6, &log, start))
    };
    let three = {
        let log = sync_log.clone();
        new_loop.call(move || more_work(3, &log, start))
    };
    println!("here"); // the main thread was not blocked
    let (six, three) = smol::block_on(async { (six.await, three.await) });
    assert_eq!((six?, three?), (6, 3));
    // Blocking callbacks run one after the other, in the order they were submitted.
    assert_eq!(
        *sync_log.lock().unwrap(),
        [
            "More work 6",
            "Finished more work 6",
            "More work 3",
            "Finished more work 3"
        ]
    );

    // The asynchronous way: asyncio.run_coroutine_threadsafe(do_some_work(6), new_loop), (4).
    let async_log = Log::default();
    let began = Instant::now();
    let six = new_loop.spawn(do_some_work(6, async_log.clone(), start));
    let four = new_loop.spawn(do_some_work(4, async_log.clone(), start));
    let (six, four) = smol::block_on(async { (six.await, four.await) });
    assert_eq!((six?, four?), (6, 4));
    println!(
        "both coroutines took {:.1?}: they overlapped on one thread",
        began.elapsed()
    );
    // Coroutines overlap: the shorter one, submitted second, is done first.
    let log = async_log.lock().unwrap().clone();
    assert_eq!(
        log,
        ["Waiting 6", "Waiting 4", "Done after 4s", "Done after 6s"]
    );

    // The article leaves the loop running forever; here it stops once its work is done.
    smol::block_on(new_loop.stop())?;
    assert!(
        new_loop.call(|| ()).is_finished(),
        "a stopped loop refuses at once"
    );
    println!("new_loop stopped after {:.1?}", start.elapsed());
    Ok(())
}
