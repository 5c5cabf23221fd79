//! A thread-pool closure that runs a coroutine on an event loop and waits for it: aiomisc's
//! `sync_wait_coroutine(loop, coro)` (anyio's `from_thread.run`), with `LoopThread::block_on`.
//!
//! The loop thread owns a small service (a counter here; a connection or a cache in real code).
//! Closures running on a `ThreadPool` call back into it with `block_on`, which blocks only
//! their worker thread. The loop thread can offload to the pool in turn and await the result,
//! so work goes loop → pool → loop without blocking the loop. Calling `block_on` on the loop's
//! own thread would wait for a future only that thread can run: it is refused at once with an
//! error whose `is_deadlock()` is true.
//!
//! Run with `cargo run --release --example sync_wait_coroutine`.

use std::cell::Cell;
use std::time::Duration;

use smol::Timer;
use smol_offload::{LoopThread, ThreadPool, try_gather};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

thread_local! {
    /// The service's state, which lives on the loop thread only.
    static REQUESTS: Cell<u32> = const { Cell::new(0) };
}

/// The article's `coro()`: starts, sleeps a little without blocking, is done.
async fn coro(caller: String) -> u32 {
    println!("Coroutine started (for {caller})");
    Timer::after(Duration::from_millis(20)).await;
    let count = REQUESTS.with(|requests| {
        requests.set(requests.get() + 1);
        requests.get()
    });
    println!("Coroutine done (request {count}, for {caller})");
    count
}

/// The article's `@threaded def in_thread(loop)`: blocking code that needs the loop.
fn in_thread(service: &LoopThread) -> Result<u32, smol_offload::Error> {
    let me = std::thread::current().name().unwrap_or("?").to_owned();
    println!("Thread started: {me}");
    let count = service.block_on(coro(me.clone()))?;
    println!("Thread finished: {me}");
    Ok(count)
}

fn main() -> Result<()> {
    let service = LoopThread::new("service-loop")?;
    let pool = ThreadPool::new(3)?;

    // Three pool closures each run a coroutine on the loop and wait for it.
    let tasks = (0..3).map(|_| {
        let service = service.clone();
        pool.spawn(move || in_thread(&service))
    });
    let mut counts = smol::block_on(try_gather(tasks))?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    counts.sort();
    assert_eq!(counts, [1, 2, 3], "each request counted once, on the loop");

    // The loop offloads to the pool, and the pool's closure calls back into the loop.
    let round_trip = {
        let (service_in_pool, pool) = (service.clone(), pool.clone());
        service.spawn(async move {
            let on_loop = std::thread::current().name().map(str::to_owned);
            let from_pool = pool.spawn(move || in_thread(&service_in_pool)).await??;
            Ok::<_, smol_offload::Error>((on_loop, from_pool))
        })
    };
    let (on_loop, count) = smol::block_on(round_trip)??;
    assert_eq!(on_loop.as_deref(), Some("service-loop"));
    assert_eq!(count, 4);

    // On the loop's own thread, block_on refuses instead of hanging.
    let on_itself = service.clone();
    let refused = smol::block_on(service.call(move || on_itself.block_on(coro("itself".into()))))?;
    let err = refused.expect_err("block_on on the loop itself must be refused");
    assert!(err.is_deadlock());
    println!("refused on the loop itself: {err}");

    smol::block_on(service.stop())?;
    Ok(())
}
