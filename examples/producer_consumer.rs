//! A producer thread feeding an event loop that offloads the handling of each message:
//! article 003's producer/consumer, where a plain thread takes messages from a `deque` and submits
//! `thread_example(msg)` to an event loop with `run_coroutine_threadsafe`.
//!
//! Here the producer is a `std::thread` that sends into an `async_channel` with
//! `send_blocking` (no busy loop polling a deque), and the consumer is a task on the main
//! loop: for each message it starts a task on the same loop that runs the blocking handler on
//! a `ThreadPool` of 3. When the producer is done it drops its sender, the channel closes, and
//! the consumer waits for the handlers still running. (Submitting to a loop that runs in
//! another thread, the article's `new_loop` + `run_coroutine_threadsafe`, is `LoopThread`: see
//! the `loop_in_thread` example.)
//!
//! Article 003 is one of the Python asyncio articles summarised at the end of
//! `docs/asyncio-migration.md`.
//!
//! Run with `cargo run --release --example producer_consumer`.

use std::time::{Duration, Instant};

use smol::LocalExecutor;
use smol_offload::ThreadPool;

const MESSAGES: u64 = 20;

/// The article's `thread_example(name)`: slow, blocking handling of one message.
fn thread_example(name: String) -> String {
    std::thread::sleep(Duration::from_millis(40));
    format!("result: {name}")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let pool = ThreadPool::new(3)?;
    let (sender, receiver) = async_channel::bounded::<String>(4);

    let producer = std::thread::Builder::new()
        .name("producer".into())
        .spawn(move || {
            for i in 0..MESSAGES {
                std::thread::sleep(Duration::from_millis(5 + i % 3 * 5));
                let message = format!("Zarten{i}");
                println!("[{:>6.1?}] produced {message}", started.elapsed());
                sender.send_blocking(message).expect("the consumer hung up");
            }
            // Dropping `sender` closes the channel: the consumer's loop ends.
        })?;

    let executor = LocalExecutor::new();
    let results = smol::block_on(executor.run(async {
        let mut handlers = Vec::new();
        while let Ok(message) = receiver.recv().await {
            println!("[{:>6.1?}] handling {message}", started.elapsed());
            let task = pool.spawn(move || thread_example(message));
            handlers.push(executor.spawn(async move {
                let result = task.await?;
                println!("[{:>6.1?}] {result}", started.elapsed());
                Ok::<_, smol_offload::Error>(result)
            }));
        }
        let mut results = Vec::new();
        for handler in handlers {
            results.push(handler.await?);
        }
        Ok::<_, smol_offload::Error>(results)
    }))?;
    producer.join().expect("the producer panicked");

    let expected: Vec<String> = (0..MESSAGES)
        .map(|i| format!("result: Zarten{i}"))
        .collect();
    assert_eq!(results, expected);
    println!(
        "[{:>6.1?}] {} messages produced, handled and collected in order; pool: {}",
        started.elapsed(),
        results.len(),
        pool.stats()
    );
    Ok(())
}
