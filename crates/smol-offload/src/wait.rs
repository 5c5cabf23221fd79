//! [`wait`] and [`gather`]: await many tasks at once, as with `asyncio.wait` and
//! `asyncio.gather`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::{Error, Task};

/// When [`wait`] returns, like `asyncio.wait`'s `return_when`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnWhen {
    /// When every task has finished (`ALL_COMPLETED`).
    AllCompleted,
    /// When at least one task has finished (`FIRST_COMPLETED`).
    FirstCompleted,
    /// When a task finishes with an error, or when every task has finished
    /// (`FIRST_EXCEPTION`).
    FirstError,
}

/// What [`wait`] gives back: the tasks that finished, with their results, and the ones still
/// pending, which stay usable (await them, wait for them again, or drop them to cancel).
///
/// Every task appears once, in `done` or in `pending`, with its position in the input.
#[derive(Debug)]
pub struct Waited<T> {
    /// Finished tasks as `(position, result)`, in the order they were seen to finish.
    pub done: Vec<(usize, Result<T, Error>)>,
    /// Unfinished tasks as `(position, task)`, in input order.
    pub pending: Vec<(usize, Task<T>)>,
}

/// Waits for tasks the way `asyncio.wait` does: until all, the first, or the first failing one
/// finishes, and at most until the timeout set with [`Wait::timeout`].
///
/// # Examples
///
/// Take the first result and keep the others for later:
///
/// ```
/// use std::time::Duration;
/// use smol_offload::{ReturnWhen, ThreadPool, wait};
///
/// # smol::block_on(async {
/// let pool = ThreadPool::new(2)?;
/// let fast = pool.spawn(|| "fast");
/// let slow = pool.spawn(|| { std::thread::sleep(Duration::from_millis(200)); "slow" });
/// let waited = wait([fast, slow], ReturnWhen::FirstCompleted).await;
/// assert_eq!(waited.done.len(), 1);
/// assert_eq!(waited.done[0].0, 0);
/// let (_, slow) = waited.pending.into_iter().next().unwrap();
/// assert_eq!(slow.await?, "slow");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
///
/// With a timeout, whatever has not finished stays pending:
///
/// ```
/// use std::time::Duration;
/// use smol_offload::{ReturnWhen, ThreadPool, wait};
///
/// # smol::block_on(async {
/// let pool = ThreadPool::new(1)?;
/// let slow = pool.spawn(|| std::thread::sleep(Duration::from_millis(300)));
/// let waited = wait([slow], ReturnWhen::AllCompleted).timeout(Duration::from_millis(20)).await;
/// assert!(waited.done.is_empty());
/// assert_eq!(waited.pending.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub fn wait<T, I>(tasks: I, when: ReturnWhen) -> Wait<T>
where
    I: IntoIterator<Item = Task<T>>,
{
    Wait {
        slots: tasks.into_iter().map(Some).collect(),
        done: Vec::new(),
        when,
        timer: None,
        registered: None,
    }
}

/// The future returned by [`wait`].
#[must_use = "futures do nothing unless awaited"]
pub struct Wait<T> {
    slots: Vec<Option<Task<T>>>,
    done: Vec<(usize, Result<T, Error>)>,
    when: ReturnWhen,
    timer: Option<async_io::Timer>,
    /// The waker every pending task holds; the tasks are registered again only when it changes.
    registered: Option<Waker>,
}

impl<T> Wait<T> {
    /// Returns after `limit` at the latest, with the unfinished tasks in `pending`.
    pub fn timeout(mut self, limit: Duration) -> Wait<T> {
        self.timer = Some(async_io::Timer::after(limit));
        self
    }

    fn collect_finished(&mut self, cx: &mut Context<'_>) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(task) = slot else { continue };
            if !task.is_finished() {
                continue;
            }
            if let Poll::Ready(result) = Pin::new(task).poll(cx) {
                self.done.push((index, result));
                *slot = None;
            }
        }
    }

    fn should_return(&self) -> bool {
        let all_done = self.slots.iter().all(Option::is_none);
        match self.when {
            ReturnWhen::AllCompleted => all_done,
            ReturnWhen::FirstCompleted => all_done || !self.done.is_empty(),
            ReturnWhen::FirstError => all_done || self.done.iter().any(|(_, r)| r.is_err()),
        }
    }

    fn finish(&mut self) -> Waited<T> {
        let pending = self
            .slots
            .iter_mut()
            .enumerate()
            .filter_map(|(index, slot)| slot.take().map(|task| (index, task)))
            .collect();
        Waited {
            done: std::mem::take(&mut self.done),
            pending,
        }
    }
}

// Nothing in a `Wait` is ever pinned: the tasks and the timer are polled through `Pin::new`.
impl<T> Unpin for Wait<T> {}

impl<T> Future for Wait<T> {
    type Output = Waited<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Waited<T>> {
        let this = &mut *self;
        loop {
            this.collect_finished(cx);
            if this.should_return() {
                return Poll::Ready(this.finish());
            }
            let waker_changed = this
                .registered
                .as_ref()
                .is_none_or(|waker| !waker.will_wake(cx.waker()));
            if !waker_changed {
                break;
            }
            // Register with every pending task, then look again: a task that finished in
            // between would otherwise wake nobody.
            for task in this.slots.iter().flatten() {
                task.register(cx.waker());
            }
            this.registered = Some(cx.waker().clone());
        }
        if let Some(timer) = &mut this.timer
            && Pin::new(timer).poll(cx).is_ready()
        {
            return Poll::Ready(this.finish());
        }
        Poll::Pending
    }
}

impl<T> fmt::Debug for Wait<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wait")
            .field("pending", &self.slots.iter().flatten().count())
            .field("done", &self.done.len())
            .field("when", &self.when)
            .finish()
    }
}

/// Awaits every task and returns their results in the order the tasks were given, like
/// `asyncio.gather(..., return_exceptions=True)`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use smol_offload::{ThreadPool, gather};
///
/// # smol::block_on(async {
/// let pool = ThreadPool::new(3)?;
/// let tasks = (0..3u64).map(|n| pool.spawn(move || {
///     std::thread::sleep(Duration::from_millis(30 * (3 - n)));
///     n
/// }));
/// let results: Vec<u64> = gather(tasks).await.into_iter().collect::<Result<_, _>>()?;
/// assert_eq!(results, [0, 1, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub async fn gather<T, I>(tasks: I) -> Vec<Result<T, Error>>
where
    I: IntoIterator<Item = Task<T>>,
{
    let waited = wait(tasks, ReturnWhen::AllCompleted).await;
    let mut ordered: Vec<Option<Result<T, Error>>> = Vec::new();
    ordered.resize_with(waited.done.len(), || None);
    for (index, result) in waited.done {
        ordered[index] = Some(result);
    }
    ordered
        .into_iter()
        .map(|result| result.expect("every task finished"))
        .collect()
}

/// Awaits every task and returns their values in order, or the first error in input order,
/// like `asyncio.gather` without `return_exceptions`. All tasks are awaited either way, so no
/// work is left running unobserved.
///
/// # Examples
///
/// ```
/// use smol_offload::{ThreadPool, try_gather};
///
/// # smol::block_on(async {
/// let pool = ThreadPool::new(2)?;
/// let ok = try_gather((1..=3).map(|n| pool.spawn(move || n * 10))).await?;
/// assert_eq!(ok, [10, 20, 30]);
/// let err = try_gather([pool.spawn(|| 1), pool.spawn(|| panic!("boom"))]).await.unwrap_err();
/// assert_eq!(err.panic_message(), Some("boom"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub async fn try_gather<T, I>(tasks: I) -> Result<Vec<T>, Error>
where
    I: IntoIterator<Item = Task<T>>,
{
    gather(tasks).await.into_iter().collect()
}
