//! [`IterStream`]: a blocking iterator run on a pool (or a dedicated thread) and consumed as an
//! async [`Stream`](futures_core::Stream) through a bounded buffer.
//!
//! The producer and the consumer share one small state under a mutex: the buffer of produced
//! items, the consumer's waker, and, while no thread produces, the *parked* iterator. A pool
//! producer runs `next()` until the buffer is full, then parks the iterator and ends its job, so
//! a slow consumer never holds a pool thread; the consumer, when it takes an item out of a full
//! buffer, finds the parked iterator and submits a new job with it. A dedicated producer owns its
//! thread anyway, so it waits on a condition variable for room instead.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::cancel::CancelSource;
use crate::error::{Error, ErrorKind};
use crate::thread_pool::ThreadPool;

type BoxedIter<T> = Box<dyn Iterator<Item = T> + Send>;

/// The items of a blocking iterator that runs on a [`ThreadPool`] or on a thread of its own,
/// as an async [`Stream`](futures_core::Stream) of `Result<T, Error>`: aiomisc's
/// `@threaded_iterable(max_size=N)`, `IteratorWrapper` and `IteratorWrapperSeparate`.
///
/// Made by [`ThreadPool::stream`], [`stream`] (on the default pool) and [`stream_dedicated`].
/// The iterator starts when the stream is first polled. Items arrive in order; at most `buffer`
/// of them wait for the consumer, and the iterator is not called again until there is room.
/// On a pool, a full buffer also gives the thread back: the iterator waits parked, and the next
/// item the consumer takes sends it to the pool again, so a few threads serve many slow
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
}

/// Where the iterator runs.
enum Runner {
    Pool(ThreadPool),
    Dedicated(String),
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// The stream was dropped: stop after the current item.
    closed: AtomicBool,
    /// A dedicated producer waits here for room, or for the stream to close.
    room: Condvar,
    buffer: usize,
    /// Once the buffer was full, the producer goes on when the consumer has brought it down to
    /// this many items: about half the buffer, so that a producer faster than its consumer is
    /// resumed once per half buffer, not once per item.
    resume_at: usize,
    runner: Runner,
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

struct State<T> {
    items: VecDeque<Result<T, Error>>,
    /// The iterator, while no thread runs it.
    parked: Option<BoxedIter<T>>,
    /// The last item is in `items`: the iterator ended or panicked.
    ended: bool,
    /// A dedicated producer waits on `room` for the buffer to go down to `resume_at`.
    producer_waiting: bool,
    waker: Option<Waker>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Send> CancelSource for Shared<T> {
    fn is_cancelled(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl<T: Send + 'static> IterStream<T> {
    fn new<I>(iter: I, buffer: usize, runner: Runner) -> IterStream<T>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        IterStream {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    items: VecDeque::new(),
                    parked: Some(Box::new(iter.into_iter())),
                    ended: false,
                    producer_waiting: false,
                    waker: None,
                }),
                closed: AtomicBool::new(false),
                room: Condvar::new(),
                buffer: buffer.max(1),
                resume_at: buffer.max(1) / 2,
                runner,
                #[cfg(feature = "tracing")]
                span: tracing::Span::current(),
            }),
        }
    }

    /// A stream that yields `err` and ends.
    fn failed(err: Error) -> IterStream<T> {
        let stream = IterStream::new(std::iter::empty(), 1, Runner::Dedicated(String::new()));
        let mut state = stream.shared.lock();
        state.parked = None;
        state.items.push_back(Err(err));
        state.ended = true;
        drop(state);
        stream
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
            // `std` panics on a name with a NUL byte instead of returning an error.
            let started = if name.contains('\0') {
                Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a thread name cannot contain a NUL byte",
                ))
            } else {
                std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || produce(&on_thread, iter))
                    .map(drop)
            };
            if let Err(err) = started {
                let mut state = shared.lock();
                state
                    .items
                    .push_back(Err(Error::new(ErrorKind::Config(format!(
                        "could not start the dedicated thread {name:?} for a stream: {err}"
                    )))));
                state.ended = true;
            }
        }
    }
}

/// Runs the iterator on a worker until it ends, the buffer is full (pool) or the stream closes.
fn produce<T: Send + 'static>(shared: &Arc<Shared<T>>, mut iter: BoxedIter<T>) {
    #[cfg(feature = "tracing")]
    let _entered = shared.span.enter();
    let _scope = crate::cancel::enter(shared.clone());
    let dedicated = matches!(shared.runner, Runner::Dedicated(_));
    loop {
        {
            let mut state = shared.lock();
            if dedicated && state.items.len() >= shared.buffer {
                while state.items.len() > shared.resume_at && !shared.closed.load(Ordering::Acquire)
                {
                    state.producer_waiting = true;
                    state = shared
                        .room
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                state.producer_waiting = false;
            }
            if shared.closed.load(Ordering::Acquire) {
                drop(state);
                drop_quietly(iter);
                return;
            }
            if state.items.len() >= shared.buffer {
                // Full: give the thread back; the consumer resumes the iterator.
                state.parked = Some(iter);
                return;
            }
        }
        match panic::catch_unwind(AssertUnwindSafe(|| iter.next())) {
            Ok(Some(item)) => deliver(shared, Some(Ok(item)), false),
            Ok(None) => {
                drop_quietly(iter);
                deliver(shared, None, true);
                return;
            }
            Err(payload) => {
                let err = Error::from_panic(payload);
                drop_quietly(iter);
                deliver(shared, Some(Err(err)), true);
                return;
            }
        }
    }
}

/// Hands `item` to the consumer (and, when `last`, the end of the stream) and wakes it.
fn deliver<T>(shared: &Shared<T>, item: Option<Result<T, Error>>, last: bool) {
    let waker = {
        let mut state = shared.lock();
        if let Some(item) = item {
            state.items.push_back(item);
        }
        state.ended = last;
        state.waker.take()
    };
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Drops `value` on this thread, catching a panic in its destructor.
fn drop_quietly<V>(value: V) {
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(value)));
}

impl<T: Send + 'static> futures_core::Stream for IterStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let shared = &self.shared;
        let mut state = shared.lock();
        let item = state.items.pop_front();
        let finished = item.is_none() && state.ended;
        if item.is_none() && !finished {
            match &mut state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
        }
        // The first poll starts the iterator; later, it goes on once the buffer is down to
        // `resume_at` (the producer only stops on a full buffer).
        let has_room = state.items.len() <= shared.resume_at;
        let resumed = if has_room { state.parked.take() } else { None };
        let wake_producer = has_room && state.producer_waiting;
        if wake_producer {
            state.producer_waiting = false;
        }
        drop(state);
        if let Some(iter) = resumed {
            resume(shared, iter);
        } else if wake_producer {
            shared.room.notify_one();
        }
        match item {
            Some(item) => Poll::Ready(Some(item)),
            None if finished => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

impl<T: Send + 'static> Drop for IterStream<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        let mut state = self.shared.lock();
        let parked = state.parked.take();
        let items = std::mem::take(&mut state.items);
        drop(state);
        self.shared.room.notify_all();
        drop_quietly(items);
        // A parked iterator is dropped on a worker too, like one that was running.
        if let Some(iter) = parked {
            match &self.shared.runner {
                Runner::Pool(pool) => pool.spawn(move || drop_quietly(iter)).detach(),
                Runner::Dedicated(_) => drop_quietly(iter),
            }
        }
    }
}

impl<T: Send + 'static> fmt::Debug for IterStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("IterStream")
            .field("buffered", &state.items.len())
            .field("buffer", &self.shared.buffer)
            .field("parked", &state.parked.is_some())
            .field("ended", &state.ended)
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
