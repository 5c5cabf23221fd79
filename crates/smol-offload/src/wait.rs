//! [`wait`] and [`gather`]: await many tasks at once, as with `asyncio.wait` and
//! `asyncio.gather`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use concurrent_queue::ConcurrentQueue;

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
    let slots: Vec<Option<Task<T>>> = tasks.into_iter().map(Some).collect();
    let ready = Arc::new(ReadyQueue {
        indexes: ConcurrentQueue::unbounded(),
        waker: AtomicWaker::new(),
    });
    // Every task starts out queued, so that the first poll polls them all.
    let wakers = (0..slots.len())
        .map(|index| {
            let _ = ready.indexes.push(index);
            Arc::new(SlotWaker {
                index,
                queued: AtomicBool::new(true),
                ready: Arc::clone(&ready),
            })
        })
        .collect();
    Wait {
        remaining: slots.len(),
        slots,
        wakers,
        ready,
        done: Vec::new(),
        failed: false,
        when,
        timer: None,
    }
}

/// The future returned by [`wait`].
///
/// Each task holds a waker of its own, which puts the task's position on a shared queue and
/// wakes the waiting future, as `FuturesUnordered` does: a wake-up costs the tasks that
/// finished, not a look at every task.
#[must_use = "futures do nothing unless awaited"]
pub struct Wait<T> {
    slots: Vec<Option<Task<T>>>,
    /// The waker of each slot.
    wakers: Vec<Arc<SlotWaker>>,
    ready: Arc<ReadyQueue>,
    /// How many slots still hold a task.
    remaining: usize,
    done: Vec<(usize, Result<T, Error>)>,
    /// Whether a result in `done` is an error.
    failed: bool,
    when: ReturnWhen,
    timer: Option<async_io::Timer>,
}

/// The positions of the tasks that woke since the last poll, and the waker of the future.
struct ReadyQueue {
    indexes: ConcurrentQueue<usize>,
    waker: AtomicWaker,
}

/// The waker one task of a [`Wait`] holds.
struct SlotWaker {
    index: usize,
    /// True while `index` is on the queue, so that a task that wakes often is queued once.
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            // An unbounded queue that is never closed always takes the push.
            let _ = self.ready.indexes.push(self.index);
        }
        self.ready.waker.wake();
    }
}

impl<T> Wait<T> {
    /// Returns after `limit` at the latest, with the unfinished tasks in `pending`.
    pub fn timeout(mut self, limit: Duration) -> Wait<T> {
        self.timer = Some(async_io::Timer::after(limit));
        self
    }

    /// Polls the task at `index` with its own waker, and moves its result to `done` if ready.
    fn poll_slot(&mut self, index: usize) {
        let Some(task) = &mut self.slots[index] else {
            return;
        };
        let waker = Waker::from(Arc::clone(&self.wakers[index]));
        if let Poll::Ready(result) = Pin::new(task).poll(&mut Context::from_waker(&waker)) {
            self.failed |= result.is_err();
            self.done.push((index, result));
            self.slots[index] = None;
            self.remaining -= 1;
        }
    }

    /// Polls every task that woke since the last call.
    fn collect_finished(&mut self) {
        while let Ok(index) = self.ready.indexes.pop() {
            // Cleared before the poll: a wake-up during or after it queues the task again.
            self.wakers[index].queued.store(false, Ordering::Release);
            self.poll_slot(index);
        }
    }

    fn should_return(&self) -> bool {
        let all_done = self.remaining == 0;
        match self.when {
            ReturnWhen::AllCompleted => all_done,
            ReturnWhen::FirstCompleted => all_done || !self.done.is_empty(),
            ReturnWhen::FirstError => all_done || self.failed,
        }
    }

    fn finish(&mut self) -> Waited<T> {
        let pending = self
            .slots
            .iter_mut()
            .enumerate()
            .filter_map(|(index, slot)| slot.take().map(|task| (index, task)))
            .collect();
        self.remaining = 0;
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
        // Registered first: a task that finishes after its slot was polled wakes this waker.
        this.ready.waker.register(cx.waker());
        this.collect_finished();
        if this.should_return() {
            return Poll::Ready(this.finish());
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
            .field("pending", &self.remaining)
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
    let mut done = wait(tasks, ReturnWhen::AllCompleted).await.done;
    done.sort_unstable_by_key(|&(index, _)| index);
    done.into_iter().map(|(_, result)| result).collect()
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
