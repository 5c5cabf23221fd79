//! The [`Executor`] trait: one call that runs on threads or on processes.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{PoolStats, Task};

/// A pool that runs `f(arg)` somewhere else and gives back a [`Task`] to await.
///
/// This is the one-line switch of Python's `loop.run_in_executor(executor, f, arg)`: code that
/// takes `&impl Executor` runs unchanged on a [`ThreadPool`](crate::ThreadPool) or a
/// [`ProcessPool`](crate::ProcessPool). The function is a plain `fn` pointer (non-capturing
/// closures coerce to one) and whatever it needs travels in `arg`, so that a process pool can
/// send both to another process: `A` and `R` are serde types.
///
/// # Examples
///
/// ```
/// use smol_offload::{Executor, ThreadPool};
///
/// async fn squares(executor: &impl Executor) -> Vec<u64> {
///     let tasks: Vec<_> = (0..4u64).map(|n| executor.run(|n| n * n, n)).collect();
///     let mut results = Vec::new();
///     for task in tasks {
///         results.push(task.await.unwrap());
///     }
///     results
/// }
///
/// # smol::block_on(async {
/// let pool = ThreadPool::new(2)?;
/// assert_eq!(squares(&pool).await, [0, 1, 4, 9]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
///
/// # Shutting down
///
/// The two pools differ in one way when their last handle is dropped with work still queued: a
/// [`ThreadPool`](crate::ThreadPool) runs the queued work to the end, like Python's
/// `shutdown(wait=True)`, while a [`ProcessPool`](crate::ProcessPool) lets the running tasks
/// finish and fails the queued ones with an error whose
/// [`is_shutdown`](crate::Error::is_shutdown) is true, so that its worker processes end
/// promptly. Keep a handle alive until the tasks you care about are done.
///
/// Process arguments must be serde types: a closure or a reference does not compile.
///
/// ```compile_fail,E0277
/// use smol_offload::{Executor, ThreadPool};
/// let pool = ThreadPool::new(1).unwrap();
/// let text = String::from("borrowed");
/// let _ = pool.run(|s: &str| s.len(), text.as_str());
/// ```
///
/// And so does a value that serde cannot serialize, such as an open file:
///
/// ```compile_fail,E0277
/// use smol_offload::{Executor, ThreadPool};
/// let pool = ThreadPool::new(1).unwrap();
/// let file = std::fs::File::open("Cargo.toml").unwrap();
/// let _ = pool.run(|_file: std::fs::File| 0u8, file);
/// ```
///
/// The trait is sealed: the pools of this crate and of `smol-offload-remote` implement it, and
/// no other type can, as only the pools make [`Task`]s.
pub trait Executor: Sealed {
    /// Runs `f(arg)` on one of the pool's workers.
    ///
    /// Awaiting the task gives `f`'s value, or an [`Error`](crate::Error) if `f` panicked, its
    /// worker died, a value could not cross to the worker, or the pool shut down.
    fn run<A, R>(&self, f: fn(A) -> R, arg: A) -> Task<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static;

    /// How many tasks the pool runs at once.
    fn workers(&self) -> usize;

    /// A snapshot of the pool's queued, running and completed tasks, for logs.
    fn stats(&self) -> PoolStats;
}

/// The supertrait that seals [`Executor`]: public only through the hidden module the remote
/// crate builds on, so no other crate implements it.
pub trait Sealed {}

impl<E: Executor + ?Sized> Sealed for &E {}

impl<E: Executor + ?Sized> Executor for &E {
    fn run<A, R>(&self, f: fn(A) -> R, arg: A) -> Task<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        (**self).run(f, arg)
    }

    fn workers(&self) -> usize {
        (**self).workers()
    }

    fn stats(&self) -> PoolStats {
        (**self).stats()
    }
}
