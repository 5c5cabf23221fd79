//! [`IterStream`]: a blocking iterator run on a pool (or a dedicated thread) and consumed as an
//! async [`Stream`](futures_core::Stream) through a bounded buffer.
//!
//! The cost that matters is per item, so both sides work in batches. The producer locks the
//! shared queue once per item and wakes the consumer only when it waits (the queue was empty);
//! the consumer swaps the whole queue for its own empty one under one lock and hands the items
//! out from there. Items count against `buffer` until the consumer *settles* them: when its
//! batch runs out or, if the producer waits for room, after half a buffer.
//!
//! A producer with a full buffer sleeps on a condition variable: a dedicated one as long as
//! needed, a pool one for at most [`POOL_WAIT`], after which it *parks* the iterator in the
//! shared state and ends its job; the consumer that makes room sends it to the pool again.
//! Every decision to sleep, park, wake or resume is taken under the one lock, so none is missed.
//! Before sleeping, both sides spin with crossbeam's `Backoff` (the consumer watching a flag, not
//! the lock the producer takes per item), and a producer with a full buffer keeps yielding for
//! up to [`PRODUCER_SPIN`]: on two CPUs the other side nearly always acts within microseconds,
//! and a sleep with its wake-up costs far more.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_utils::{Backoff, CachePadded};

use crate::cancel::CancelSource;
use crate::dedicated::spawn_thread;
use crate::error::{Error, ErrorKind};
use crate::thread_pool::ThreadPool;

type BoxedIter<T> = Box<dyn Iterator<Item = T> + Send>;

/// How long a producer with a full buffer keeps looking for room (spinning, then yielding)
/// before it sleeps: a little longer than a sleeping thread on a virtual machine takes to wake
/// (100 µs or more; taking turns to sleep ran the stream at a tenth of its speed). A slow
/// consumer costs it at most this per half buffer; a busy machine less ([`CONTENDED_YIELD`]).
const PRODUCER_SPIN: Duration = Duration::from_micros(200);

/// A `yield_now` that took longer than this ran another thread: the CPU is contended, and
/// looking on for room takes time from the consumer.
const CONTENDED_YIELD: Duration = Duration::from_micros(20);

/// How long a pool producer with a full buffer waits for room before it gives its thread back:
/// long enough for a consumer that keeps up, so that it does not pay a new pool job per half
/// buffer (with 0.5 ms the benchmark ran at a third of a dedicated thread's speed, from 10 ms at
/// its speed), and a consumer that stopped reading holds the thread at most this per buffer.
const POOL_WAIT: Duration = Duration::from_millis(10);

/// The items of a blocking iterator that runs on a [`ThreadPool`] or on a thread of its own,
/// as an async [`Stream`](futures_core::Stream) of `Result<T, Error>`: aiomisc's
/// `@threaded_iterable(max_size=N)`, `IteratorWrapper` and `IteratorWrapperSeparate`.
///
/// Made by [`ThreadPool::stream`], [`stream`] (on the default pool) and [`stream_dedicated`].
/// The iterator starts when the stream is first polled. Items arrive in order; at most `buffer`
/// of them wait for the consumer, and the iterator is not called again until there is room.
/// On a pool, a full buffer also gives the thread back: the iterator waits parked, and the
/// consumer sends it to the pool again once it has made room, so a few threads serve many slow
/// streams.
///
/// A panic in the iterator comes out as one `Err` whose [`is_panic`](Error::is_panic) is true,
/// and the stream ends. Dropping the stream closes it (Python's `await gen.close()`): the item
/// being produced is the last, and the iterator is dropped on the worker. The iterator can also
/// check [`cancelled()`](crate::cancelled), which turns true when the stream is dropped.
///
/// # Examples
///
/// ```
/// use futures_lite::StreamExt;
///
/// # smol::block_on(async {
/// let pool = smol_offload::ThreadPool::new(2)?;
/// let lines = pool.stream(
///     (1..=5).map(|n| format!("line {n}")), // a blocking file reader, say
///     2,
/// );
/// let lines: Vec<String> = lines.map(Result::unwrap).collect().await;
/// assert_eq!(lines.len(), 5);
/// assert_eq!(lines[4], "line 5");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct IterStream<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    /// The items taken from the shared queue in one go, handed out without any lock. The mutex
    /// is only reached with `get_mut`: it keeps the stream `Sync` for a `T` that is not.
    batch: Mutex<VecDeque<T>>,
    /// Items handed out since the consumer last settled them (see [`State::held`]).
    handed: usize,
}

// The stream never pins its items: they are plain values moved in and out of queues.
impl<T: Send + 'static> Unpin for IterStream<T> {}

/// Where the iterator runs.
enum Runner {
    Pool(ThreadPool),
    Dedicated(String),
}

struct Shared<T> {
    state: CachePadded<Mutex<State<T>>>,
    /// The producer sleeps here while the buffer is full.
    room: Condvar,
    buffer: usize,
    /// A full buffer lets the producer go on once down to this many items (half of it), so that
    /// a producer faster than its consumer is resumed once per half buffer, not per item.
    resume_at: usize,
    /// The stream was dropped: stop after the current item. Also read by
    /// [`cancelled()`](crate::cancelled), without the lock.
    closed: AtomicBool,
    /// A hint that the producer waits for room or is parked, read without the lock: the
    /// consumer then settles in the middle of its batch.
    producer_stopped: AtomicBool,
    /// A hint that `items` went from empty to not empty (or the stream ended) since the
    /// consumer took them: what a spinning consumer watches instead of the lock.
    queued: CachePadded<AtomicBool>,
    runner: Runner,
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

/// What the producer and the consumer share, under one lock.
struct State<T> {
    /// Produced items the consumer has not taken into its batch yet.
    items: VecDeque<T>,
    /// Items that count against `buffer`: those in `items`, and those the consumer took since
    /// it last settled (handed out or still in its batch). The producer calls `next()` only
    /// while this is below `buffer`.
    held: usize,
    /// How the stream ends, once the iterator has ended (after the items in `items`).
    end: Option<End>,
    /// The consumer, waiting for an item or the end.
    consumer: Option<Waker>,
    /// The iterator, while no thread runs it (before the first poll, and after a pool producer
    /// gave its thread back).
    parked: Option<BoxedIter<T>>,
    /// The producer sleeps on `room`.
    producer_waiting: bool,
}

/// The end of a stream, delivered after its last item.
enum End {
    /// The iterator returned `None`, or the error below was delivered.
    Done,
    /// The iterator panicked (or its thread could not start): one `Err`, then [`End::Done`].
    Failed(Error),
}

/// What the consumer does after it made room, once the lock is released.
enum Room<T> {
    Nothing,
    Resume(BoxedIter<T>),
    Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ends the stream with `end` unless it has ended, and wakes the consumer.
    fn finish(&self, end: End) {
        let consumer = {
            let mut state = self.lock();
            if state.end.is_none() {
                state.end = Some(end);
            }
            self.queued.store(true, Ordering::Release);
            state.consumer.take()
        };
        if let Some(consumer) = consumer {
            consumer.wake();
        }
    }

    /// Settles `handed` items and decides whether the producer may go on.
    fn settle(&self, state: &mut State<T>, handed: usize) -> Room<T> {
        state.held -= handed;
        if state.held > self.resume_at {
            return Room::Nothing;
        }
        let room = match state.parked.take() {
            Some(iter) => Room::Resume(iter),
            None if std::mem::take(&mut state.producer_waiting) => Room::Notify,
            None => return Room::Nothing,
        };
        self.producer_stopped.store(false, Ordering::Relaxed);
        room
    }
}

impl<T: Send> CancelSource for Shared<T> {
    fn is_cancelled(&self) -> bool {
        self.is_closed()
    }
}

impl<T: Send + 'static> IterStream<T> {
    fn new<I>(iter: I, buffer: usize, runner: Runner) -> IterStream<T>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        let parked: BoxedIter<T> = Box::new(iter.into_iter());
        IterStream::with_state(buffer.max(1), runner, Some(parked), None)
    }

    fn with_state(
        buffer: usize,
        runner: Runner,
        parked: Option<BoxedIter<T>>,
        end: Option<End>,
    ) -> IterStream<T> {
        // The two queues are swapped back and forth and hold at most `buffer` items each:
        // reserve it up front (within reason), so that no push reallocates.
        let capacity = buffer.min(1024);
        IterStream {
            shared: Arc::new(Shared {
                state: CachePadded::new(Mutex::new(State {
                    items: VecDeque::with_capacity(capacity),
                    held: 0,
                    end,
                    consumer: None,
                    parked,
                    producer_waiting: false,
                })),
                room: Condvar::new(),
                buffer,
                resume_at: buffer / 2,
                closed: AtomicBool::new(false),
                producer_stopped: AtomicBool::new(true),
                queued: CachePadded::new(AtomicBool::new(false)),
                runner,
                #[cfg(feature = "tracing")]
                span: tracing::Span::current(),
            }),
            batch: Mutex::new(VecDeque::with_capacity(capacity)),
            handed: 0,
        }
    }

    /// A stream that yields `err` and ends.
    fn failed(err: Error) -> IterStream<T> {
        IterStream::with_state(
            1,
            Runner::Dedicated(String::new()),
            None,
            Some(End::Failed(err)),
        )
    }
}

/// Resumes the producer as `room` says (with the lock released).
fn make_room<T: Send + 'static>(shared: &Arc<Shared<T>>, room: Room<T>) {
    match room {
        Room::Nothing => {}
        Room::Resume(iter) => resume(shared, iter),
        Room::Notify => shared.room.notify_one(),
    }
}

/// Sends the parked iterator to its runner.
fn resume<T: Send + 'static>(shared: &Arc<Shared<T>>, iter: BoxedIter<T>) {
    match &shared.runner {
        Runner::Pool(pool) => {
            let shared = shared.clone();
            pool.spawn(move || produce(&shared, iter)).detach();
        }
        Runner::Dedicated(name) => {
            let on_thread = shared.clone();
            if let Err(err) = spawn_thread(name, move || produce(&on_thread, iter)) {
                let err = Error::new(ErrorKind::Config(format!(
                    "could not start the dedicated thread {name:?} for a stream: {err}"
                )));
                shared.finish(End::Failed(err));
            }
        }
    }
}

/// Runs the iterator on a worker until it ends, the buffer is full (pool) or the stream closes.
fn produce<T: Send + 'static>(shared: &Arc<Shared<T>>, iter: BoxedIter<T>) {
    #[cfg(feature = "tracing")]
    let _entered = shared.span.enter();
    let _scope = crate::cancel::enter(shared.clone());
    let _end_on_unwind = EndOnUnwind(shared);
    let mut iter = Some(iter);
    // One `catch_unwind` for the whole run, not one per item.
    let fed = panic::catch_unwind(AssertUnwindSafe(|| feed(shared, &mut iter)));
    // Left here when the stream was closed or the iterator panicked.
    drop_quietly(iter);
    if let Err(payload) = fed {
        shared.finish(End::Failed(Error::from_panic(payload)));
    }
}

/// The producer's loop: one lock per item, held for no `next()`. It returns with the iterator
/// still in `slot` only when the stream was closed.
fn feed<T: Send + 'static>(shared: &Shared<T>, slot: &mut Option<BoxedIter<T>>) {
    let dedicated = matches!(shared.runner, Runner::Dedicated(_));
    let mut state = shared.lock();
    loop {
        if shared.is_closed() {
            return;
        }
        if state.held >= shared.buffer {
            // A dedicated thread is ours: it waits as long as it takes. A pool producer waits
            // a little, then gives its thread back; the consumer resumes the iterator.
            let deadline = (!dedicated).then(|| Instant::now() + POOL_WAIT);
            let room;
            (state, room) = wait_for_room(shared, state, deadline);
            if !room {
                state.parked = slot.take();
                shared.producer_stopped.store(true, Ordering::Relaxed);
                return;
            }
            continue;
        }
        drop(state);
        let Some(iter) = slot.as_mut() else {
            unreachable!("the producer holds the iterator while it runs");
        };
        let Some(item) = iter.next() else {
            drop_quietly(slot.take());
            shared.finish(End::Done);
            return;
        };
        state = shared.lock();
        state.items.push_back(item);
        state.held += 1;
        if state.items.len() == 1 {
            shared.queued.store(true, Ordering::Release);
        }
        // The consumer registers only when it found nothing: wake it once per empty queue.
        if let Some(consumer) = state.consumer.take() {
            drop(state);
            consumer.wake();
            state = shared.lock();
        }
    }
}

/// Sleeps until the consumer has made room or is gone (true), or `deadline` passed (false).
fn wait_for_room<'a, T>(
    shared: &'a Shared<T>,
    mut state: MutexGuard<'a, State<T>>,
    deadline: Option<Instant>,
) -> (MutexGuard<'a, State<T>>, bool) {
    // Look again a few times, backing off, then keep yielding for up to `PRODUCER_SPIN` (or
    // until a yield gave the CPU away for long), before sleeping on the condition variable.
    let backoff = Backoff::new();
    let mut spin_until = Some(Instant::now() + PRODUCER_SPIN);
    let room = loop {
        if state.held < shared.buffer || shared.is_closed() {
            break true;
        }
        if !backoff.is_completed() {
            drop(state);
            backoff.snooze();
            state = shared.lock();
            continue;
        }
        if let Some(until) = spin_until {
            drop(state);
            let yielded = Instant::now();
            std::thread::yield_now();
            let now = Instant::now();
            if now >= until || now - yielded > CONTENDED_YIELD {
                spin_until = None;
            }
            state = shared.lock();
            continue;
        }
        state.producer_waiting = true;
        shared.producer_stopped.store(true, Ordering::Relaxed);
        state = match deadline {
            None => shared
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => {
                    shared
                        .room
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                _ => break false,
            },
        };
    };
    state.producer_waiting = false;
    shared.producer_stopped.store(false, Ordering::Relaxed);
    (state, room)
}

/// Ends the stream if the producer unwinds (a bug here, not in the iterator, whose panics are
/// caught), so that the consumer gets an error and the end instead of waiting forever.
struct EndOnUnwind<'a, T>(&'a Shared<T>);

impl<T> Drop for EndOnUnwind<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let message = "the stream's producer failed: this is a bug in smol-offload".to_owned();
            let err = Error::new(ErrorKind::Panic(message));
            self.0.finish(End::Failed(err));
        }
    }
}

/// Drops `value` on this thread, catching a panic in its destructor.
fn drop_quietly<V>(value: V) {
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(value)));
}

impl<T: Send + 'static> futures_core::Stream for IterStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let batch = this.batch.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(item) = batch.pop_front() {
            this.handed += 1;
            // A producer waiting for room goes on after half a buffer, not only after the batch.
            let shared = &this.shared;
            if this.handed >= shared.buffer - shared.resume_at
                && shared.producer_stopped.load(Ordering::Relaxed)
            {
                let room = shared.settle(&mut shared.lock(), this.handed);
                this.handed = 0;
                make_room(shared, room);
            }
            return Poll::Ready(Some(Ok(item)));
        }
        // The batch ran out: settle it and take what the producer queued since, looking again
        // a few times, backing off, while it runs: it usually queues within microseconds.
        let shared = &this.shared;
        let backoff = Backoff::new();
        loop {
            let mut state = shared.lock();
            let room = shared.settle(&mut state, this.handed);
            this.handed = 0;
            std::mem::swap(&mut state.items, batch);
            shared.queued.store(false, Ordering::Relaxed);
            let poll = match batch.pop_front() {
                Some(item) => {
                    this.handed = 1;
                    Some(Poll::Ready(Some(Ok(item))))
                }
                // Every item came before the end: the producer queues them first.
                None => match state.end.take() {
                    Some(End::Failed(err)) => {
                        state.end = Some(End::Done);
                        Some(Poll::Ready(Some(Err(err))))
                    }
                    Some(End::Done) => {
                        state.end = Some(End::Done);
                        Some(Poll::Ready(None))
                    }
                    // Only a producer that runs can queue soon: spin for no other.
                    None if backoff.is_completed()
                        || shared.producer_stopped.load(Ordering::Relaxed) =>
                    {
                        match &state.consumer {
                            Some(waker) if waker.will_wake(cx.waker()) => {}
                            _ => state.consumer = Some(cx.waker().clone()),
                        }
                        Some(Poll::Pending)
                    }
                    None => None,
                },
            };
            drop(state);
            make_room(shared, room);
            if let Some(poll) = poll {
                return poll;
            }
            while !shared.queued.load(Ordering::Acquire) && !backoff.is_completed() {
                backoff.snooze();
            }
        }
    }
}

impl<T: Send + 'static> Drop for IterStream<T> {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.closed.store(true, Ordering::Release);
        let (parked, items) = {
            let mut state = shared.lock();
            state.producer_waiting = false;
            (state.parked.take(), std::mem::take(&mut state.items))
        };
        // A producer waiting for room wakes up to see `closed`.
        shared.room.notify_one();
        // A parked iterator is dropped on a worker too, like one that was running.
        if let Some(iter) = parked {
            match &shared.runner {
                Runner::Pool(pool) => pool.spawn(move || drop_quietly(iter)).detach(),
                Runner::Dedicated(_) => drop_quietly(iter),
            }
        }
        let batch = self.batch.get_mut().unwrap_or_else(PoisonError::into_inner);
        for item in items.into_iter().chain(batch.drain(..)) {
            drop_quietly(item);
        }
    }
}

impl<T: Send + 'static> fmt::Debug for IterStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The one place that locks `batch`.
        let batch = self.batch.try_lock().map_or(0, |batch| batch.len());
        let state = self.shared.lock();
        f.debug_struct("IterStream")
            .field("buffered", &(state.items.len() + batch))
            .field("buffer", &self.shared.buffer)
            .field("parked", &state.parked.is_some())
            .field("ended", &state.end.is_some())
            .finish()
    }
}

impl ThreadPool {
    /// Runs the blocking iterator `iter` on the pool and returns its items as an async stream,
    /// with at most `buffer` items waiting for the consumer: aiomisc's
    /// `@threaded_iterable(max_size=buffer)`.
    ///
    /// A `buffer` of 0 is taken as 1. See [`IterStream`] for ordering, back-pressure, panics
    /// and closing.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures_lite::StreamExt;
    ///
    /// # smol::block_on(async {
    /// let pool = smol_offload::ThreadPool::new(1)?;
    /// let mut squares = pool.stream((0..1000u64).map(|n| n * n), 16);
    /// assert_eq!(squares.next().await.transpose()?, Some(0));
    /// assert_eq!(squares.next().await.transpose()?, Some(1));
    /// drop(squares); // closes it: the pool stops calling the iterator
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn stream<I>(&self, iter: I, buffer: usize) -> IterStream<I::Item>
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Send + 'static,
    {
        IterStream::new(iter, buffer, Runner::Pool(self.clone()))
    }
}

/// [`ThreadPool::stream`] on the default pool (see [`spawn`](crate::spawn)).
///
/// # Examples
///
/// ```
/// use futures_lite::StreamExt;
///
/// # smol::block_on(async {
/// let words = smol_offload::stream(["a", "b", "c"], 2);
/// let words: Vec<_> = words.map(Result::unwrap).collect().await;
/// assert_eq!(words, ["a", "b", "c"]);
/// # });
/// ```
///
/// # Errors
///
/// When the default pool cannot be built (see [`default_pool`](crate::default_pool)), the
/// stream yields that error and ends.
pub fn stream<I>(iter: I, buffer: usize) -> IterStream<I::Item>
where
    I: IntoIterator,
    I::IntoIter: Send + 'static,
    I::Item: Send + 'static,
{
    match crate::default_pool() {
        Ok(pool) => pool.stream(iter, buffer),
        Err(err) => IterStream::failed(err),
    }
}

/// Runs the blocking iterator `iter` on a new thread named `name` and returns its items as an
/// async stream: aiomisc's `IteratorWrapperSeparate`, for an iterator that blocks for long
/// (a tail that waits for new lines, a socket reader) and would otherwise hold a pool thread.
///
/// The thread starts when the stream is first polled and waits for room when `buffer` items
/// are waiting; it ends with the iterator or when the stream is dropped (after the item being
/// produced). A `buffer` of 0 is taken as 1.
///
/// # Examples
///
/// ```
/// use futures_lite::StreamExt;
///
/// # smol::block_on(async {
/// let ticks = std::iter::repeat_with(|| {
///     std::thread::sleep(std::time::Duration::from_millis(1)); // blocks for a while
///     std::thread::current().name().map(str::to_owned)
/// });
/// let mut ticks = smol_offload::stream_dedicated("ticker", ticks.take(3), 1);
/// while let Some(name) = ticks.next().await {
///     assert_eq!(name?.as_deref(), Some("ticker"));
/// }
/// # Ok::<(), smol_offload::Error>(())
/// # }).unwrap();
/// ```
pub fn stream_dedicated<I>(name: impl Into<String>, iter: I, buffer: usize) -> IterStream<I::Item>
where
    I: IntoIterator,
    I::IntoIter: Send + 'static,
    I::Item: Send + 'static,
{
    IterStream::new(iter, buffer, Runner::Dedicated(name.into()))
}
