//! A process pool you can trust with stuck, leaky and bursty work: a stuck task killed by
//! `Task::timeout` and by the pool's `task_timeout`, workers recycled with
//! `max_tasks_per_worker`, a "model" loaded once per worker by an `initializer`, and a producer
//! kept in step with the workers by `queue_limit` and `ready()`. It checks every result and
//! exits non-zero when one is wrong.
//!
//! Run with `cargo run --release --example process_pool_limits`.

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use smol_offload::{Executor, ProcessPool};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Stands for a model loaded once in each worker by the pool's initializer.
static MODEL: OnceLock<Vec<u64>> = OnceLock::new();

fn load_model(size: usize) {
    MODEL
        .set((0..size as u64).collect())
        .expect("loaded once per worker");
}

/// A task that uses what the initializer loaded, and says which worker ran it.
fn predict(n: u64) -> (u32, u64) {
    let model = MODEL.get().expect("the initializer ran first");
    (std::process::id(), model[(n as usize) % model.len()] * 2)
}

/// A task that never ends on its own.
fn stuck(_: ()) -> u64 {
    std::thread::sleep(Duration::from_secs(3600));
    0
}

fn main() -> Result<()> {
    smol_offload::init();
    let pool = ProcessPool::builder()
        .workers(2)
        .initializer(load_model, 1000)
        .max_tasks_per_worker(50)
        .task_timeout(Duration::from_secs(2))
        .queue_limit(16)
        .build()?;
    smol::block_on(async {
        // 1. A stuck task given 100 ms: its worker is killed, the pool goes on at once.
        let started = Instant::now();
        let err = pool
            .run(stuck, ())
            .timeout(Duration::from_millis(100))
            .await
            .unwrap_err();
        check(err.is_timeout(), "Task::timeout gives is_timeout")?;
        let (_, value) = pool.run(predict, 21).await?;
        check(
            value == 42,
            "the next task runs on a fresh, initialized worker",
        )?;
        println!(
            "timed out a stuck task and ran the next in {:?}",
            started.elapsed()
        );

        // 2. Stuck tasks nobody times out: the pool's task_timeout kills them, detached too.
        pool.run(stuck, ()).detach();
        let err = pool.run(stuck, ()).await.unwrap_err();
        check(err.is_timeout(), "task_timeout gives is_timeout")?;
        println!("the pool's task_timeout stopped two stuck tasks: {err}");
        // 3. A producer that waits for room: at most 16 tasks queued, 500 submitted.
        let mut tasks = Vec::new();
        let mut most_queued = 0;
        for n in 0..500u64 {
            pool.ready().await;
            most_queued = most_queued.max(pool.stats().queued);
            tasks.push(pool.run(predict, n));
        }
        let mut workers = HashSet::new();
        for (n, task) in tasks.into_iter().enumerate() {
            let (pid, value) = task.await?;
            check(value == (n as u64 % 1000) * 2, "every task's value")?;
            workers.insert(pid);
        }
        check(most_queued <= 16, "the queue stays within its limit")?;
        // 4. 50 tasks per worker: 500 tasks needed at least 10 workers.
        check(workers.len() >= 10, "workers are recycled")?;
        println!(
            "500 tasks on {} recycled workers, at most {most_queued} queued; pids now {:?}",
            workers.len(),
            pool.pids()
        );
        Ok(())
    })
}

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("wrong: {what}").into())
    }
}
