//! A long blocking job on a thread of its own, stopped cooperatively: aiomisc's
//! `@threaded_separate` with its stop `Event`, on `smol_offload::spawn_dedicated` and
//! `smol_offload::cancelled()`.
//!
//! The article runs `blocking_function()` on the pool and `long_blocking_function(event)` on a
//! new thread side by side with `gather`, and sets the event after 10 seconds with
//! `loop.call_later`. Here a "second" is 20 ms, and no event is passed around: the long job
//! checks `cancelled()`, which turns true once its task is cancelled (or dropped, or timed
//! out); `task.cancel().await` then waits for it to return and gives its result.
//!
//! Run with `cargo run --release --example threaded_separate`.

use std::time::Duration;

use smol::Timer;
use smol_offload::{Task, cancelled, spawn_dedicated};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// One "second" of the article.
const SECOND: Duration = Duration::from_millis(20);

/// `@aiomisc.threaded def blocking_function(): time.sleep(1)`, on the default pool.
fn blocking_function() -> Task<Option<String>> {
    smol_offload::spawn(|| {
        std::thread::sleep(SECOND);
        std::thread::current().name().map(str::to_owned)
    })
}

/// `@aiomisc.threaded_separate def long_blocking_function(event)`: runs until asked to stop,
/// and returns how many rounds it made.
fn long_blocking_function() -> Task<u32> {
    spawn_dedicated("long-blocking", || {
        let mut rounds = 0;
        while !cancelled() {
            println!("Running");
            rounds += 1;
            std::thread::sleep(SECOND);
        }
        println!("Exiting");
        rounds
    })
}

fn main() -> Result<()> {
    smol::block_on(async {
        let long = long_blocking_function();
        // loop.call_later(10, stop_event.set), and gather the two.
        let stopper = async {
            Timer::after(SECOND * 10).await;
            long.cancel().await
        };
        let (pool_thread, rounds) = futures_lite::future::zip(blocking_function(), stopper).await;
        let (pool_thread, rounds) = (pool_thread?, rounds?);
        println!("blocking_function ran on {pool_thread:?}; the long job made {rounds} rounds");
        assert!(pool_thread.is_some_and(|name| name.starts_with("smol-offload-")));
        assert!(rounds >= 1, "the long job ran until it was stopped");

        // Dropping the task asks just as well; the thread sees it and ends.
        let (started_tx, started) = async_channel::bounded(1);
        let (ended_tx, ended) = async_channel::bounded(1);
        let watcher = spawn_dedicated("watcher", move || {
            started_tx.send_blocking(()).unwrap();
            while !cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            ended_tx.send_blocking("stopped").unwrap();
        });
        started.recv().await?; // a task dropped before it starts would never run at all
        drop(watcher);
        assert_eq!(ended.recv().await?, "stopped");
        assert!(!cancelled(), "outside any task, nothing is cancelled");
        Ok(())
    })
}
