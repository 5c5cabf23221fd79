//! [`IterStream`]: a blocking iterator run on a pool (or a dedicated thread) and consumed as an
//! async [`Stream`](futures_core::Stream) through a bounded buffer.
//!
//! The items travel through a lock-free queue that never holds more than `buffer` of them
//! (there is one producer, and it checks for room before each `next()`), and the consumer
//! sleeps on an `AtomicWaker`. A producer with a full buffer sleeps (`thread::park`) until the
//! consumer unparks it: a dedicated producer as long as needed, a pool producer for at most
//! [`POOL_WAIT`]. Then the pool producer *parks* the iterator (puts it in a slot) and ends its
//! job, so a slow consumer never holds a pool thread; once the consumer has brought the buffer
//! down to half, it takes the parked iterator and submits a new job with it. Both sides re-check
//! after a `SeqCst` fence, so a park and a take never miss each other.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::thread::Thread;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use concurrent_queue::ConcurrentQueue;

use crate::cancel::CancelSource;
use crate::error::{Error, ErrorKind};
use crate::thread_pool::ThreadPool;

type BoxedIter<T> = Box<dyn Iterator<Item = T> + Send>;

/// How long a pool producer with a full buffer waits for room before it gives its thread back.
/// A consumer that keeps up makes room well within it, so the iterator stays on its thread
/// instead of paying a new pool job (and a worker's wake-up) per half buffer; a consumer that
/// stopped reading borrows the thread for at most this long per buffer. (With 0.5 ms, the
/// benchmark's stream ran at a third of the speed of a dedicated thread, although no wait ran
/// out; from 10 ms on, it matched it. The cause was not pinned down.)
const POOL_WAIT: Duration = Duration::from_millis(10);

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
    /// Produced items not yet taken; never more than `buffer`.
    items: ConcurrentQueue<Result<T, Error>>,
    buffer: usize,
    /// Once the buffer was full, the producer goes on when the consumer has brought it down to
    /// this many items: about half the buffer, so that a producer faster than its consumer is
    /// resumed once per half buffer, not once per item.
    resume_at: usize,
    /// The consumer, waiting for an item.
    consumer: AtomicWaker,
    /// The last item is in `items`: the iterator ended or panicked.
    ended: AtomicBool,
    /// The stream was dropped: stop after the current item.
    closed: AtomicBool,
    /// The iterator, while no thread runs it (before the first poll, and while a pool producer
    /// waits for room).
    parked: Mutex<Option<BoxedIter<T>>>,
    is_parked: AtomicBool,
    /// The producer's thread, and whether it sleeps waiting for room.
    producer: Mutex<Option<Thread>>,
    producer_waiting: AtomicBool,
    runner: Runner,
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

impl<T> Shared<T> {
    fn park(&self, iter: BoxedIter<T>) {
        *self.parked.lock().unwrap_or_else(PoisonError::into_inner) = Some(iter);
        self.is_parked.store(true, Ordering::SeqCst);
    }

    fn take_parked(&self) -> Option<BoxedIter<T>> {
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        self.is_parked.store(false, Ordering::SeqCst);
        parked.take()
    }

    fn has_room(&self) -> bool {
        self.items.len() <= self.resume_at
    }

    fn push(&self, item: Result<T, Error>) {
        if self.items.push(item).is_err() {
            unreachable!("the only producer checks for room before producing an item");
        }
    }

    fn wake_producer(&self) {
        let producer = self.producer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(thread) = &*producer {
            thread.unpark();
        }
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
        let buffer = buffer.max(1);
        IterStream {
            shared: Arc::new(Shared {
                // At least 2: a queue of one is `concurrent-queue`'s single-slot kind, whose
                // push can fail while a pop of the only item is still in progress. The bound
                // that counts is `buffer`, checked by the producer before each item.
                items: ConcurrentQueue::bounded(buffer.max(2)),
                buffer,
                resume_at: buffer / 2,
                consumer: AtomicWaker::new(),
                ended: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                parked: Mutex::new(Some(Box::new(iter.into_iter()))),
                is_parked: AtomicBool::new(true),
                producer: Mutex::new(None),
                producer_waiting: AtomicBool::new(false),
                runner,
                #[cfg(feature = "tracing")]
                span: tracing::Span::current(),
            }),
        }
    }

    /// A stream that yields `err` and ends.
    fn failed(err: Error) -> IterStream<T> {
        let stream = IterStream::new(std::iter::empty(), 1, Runner::Dedicated(String::new()));
        drop(stream.shared.take_parked());
        stream.shared.push(Err(err));
        stream.shared.ended.store(true, Ordering::Release);
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
                shared.push(Err(Error::new(ErrorKind::Config(format!(
                    "could not start the dedicated thread {name:?} for a stream: {err}"
                )))));
                shared.ended.store(true, Ordering::Release);
                shared.consumer.wake();
            }
        }
    }
}

/// Runs the iterator on a worker until it ends, the buffer is full (pool) or the stream closes.
fn produce<T: Send + 'static>(shared: &Arc<Shared<T>>, mut iter: BoxedIter<T>) {
    #[cfg(feature = "tracing")]
    let _entered = shared.span.enter();
    let _scope = crate::cancel::enter(shared.clone());
    let _end_on_unwind = EndOnUnwind(shared);
    let dedicated = matches!(shared.runner, Runner::Dedicated(_));
    loop {
        if shared.closed.load(Ordering::Acquire) {
            drop_quietly(iter);
            return;
        }
        if shared.items.len() >= shared.buffer {
            if dedicated {
                // The thread is ours: sleep until the consumer has made room or is gone.
                wait_for_room(shared, None);
                continue;
            }
            // Full. A consumer that keeps up makes room soon: wait a little for it, rather than
            // pay a new pool job (and a worker's wake-up) for every half buffer.
            if wait_for_room(shared, Some(Instant::now() + POOL_WAIT)) {
                continue;
            }
            // Still full: give the thread back; the consumer resumes the iterator.
            shared.park(iter);
            fence(Ordering::SeqCst);
            // The consumer may have made room (or closed) before it could see the park.
            if (shared.has_room() || shared.closed.load(Ordering::SeqCst))
                && let Some(taken) = shared.take_parked()
            {
                iter = taken;
                continue;
            }
            return;
        }
        match panic::catch_unwind(AssertUnwindSafe(|| iter.next())) {
            Ok(Some(item)) => {
                shared.push(Ok(item));
                shared.consumer.wake();
            }
            Ok(None) => {
                drop_quietly(iter);
                shared.ended.store(true, Ordering::Release);
                shared.consumer.wake();
                return;
            }
            Err(payload) => {
                let err = Error::from_panic(payload);
                drop_quietly(iter);
                shared.push(Err(err));
                shared.ended.store(true, Ordering::Release);
                shared.consumer.wake();
                return;
            }
        }
    }
}

/// Sleeps until the consumer has made room or is gone (true), or `deadline` passed (false).
fn wait_for_room<T>(shared: &Shared<T>, deadline: Option<Instant>) -> bool {
    *shared
        .producer
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(std::thread::current());
    let room = loop {
        shared.producer_waiting.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if shared.has_room() || shared.closed.load(Ordering::SeqCst) {
            break true;
        }
        match deadline {
            None => std::thread::park(),
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => std::thread::park_timeout(left),
                _ => break false,
            },
        }
    };
    shared.producer_waiting.store(false, Ordering::SeqCst);
    // A pool thread goes on to other work: nobody must unpark it for this stream any more.
    *shared
        .producer
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = None;
    room
}

/// Ends the stream if the producer unwinds (a bug here, not in the iterator, whose panics are
/// caught), so that the consumer gets an error and the end instead of waiting forever.
struct EndOnUnwind<'a, T>(&'a Shared<T>);

impl<T> Drop for EndOnUnwind<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let message = "the stream's producer failed: this is a bug in smol-offload".to_owned();
            let _ = self
                .0
                .items
                .push(Err(Error::new(ErrorKind::Panic(message))));
            self.0.ended.store(true, Ordering::Release);
            self.0.consumer.wake();
        }
    }
}

/// Drops `value` on this thread, catching a panic in its destructor.
fn drop_quietly<V>(value: V) {
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(value)));
}

impl<T: Send + 'static> IterStream<T> {
    /// After the consumer took an item (or found none): resumes a parked iterator or wakes a
    /// sleeping producer when there is room.
    fn make_room(&self) {
        let shared = &self.shared;
        fence(Ordering::SeqCst);
        if !shared.has_room() {
            return;
        }
        if shared.is_parked.load(Ordering::SeqCst)
            && let Some(iter) = shared.take_parked()
        {
            resume(shared, iter);
        }
        if shared.producer_waiting.load(Ordering::SeqCst) {
            shared.producer_waiting.store(false, Ordering::SeqCst);
            shared.wake_producer();
        }
    }
}

impl<T: Send + 'static> futures_core::Stream for IterStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let shared = &self.shared;
        if let Ok(item) = shared.items.pop() {
            self.make_room();
            return Poll::Ready(Some(item));
        }
        // Read `ended` before the second look: if it was set, every item is in the queue.
        let ended = shared.ended.load(Ordering::Acquire);
        shared.consumer.register(cx.waker());
        if let Ok(item) = shared.items.pop() {
            self.make_room();
            return Poll::Ready(Some(item));
        }
        if ended || (shared.ended.load(Ordering::Acquire) && shared.items.is_empty()) {
            return Poll::Ready(None);
        }
        self.make_room();
        Poll::Pending
    }
}

impl<T: Send + 'static> Drop for IterStream<T> {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        // A parked iterator is dropped on a worker too, like one that was running.
        if let Some(iter) = shared.take_parked() {
            match &shared.runner {
                Runner::Pool(pool) => pool.spawn(move || drop_quietly(iter)).detach(),
                Runner::Dedicated(_) => drop_quietly(iter),
            }
        }
        shared.wake_producer();
        while let Ok(item) = shared.items.pop() {
            drop_quietly(item);
        }
    }
}

impl<T: Send + 'static> fmt::Debug for IterStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IterStream")
            .field("buffered", &self.shared.items.len())
            .field("buffer", &self.shared.buffer)
            .field("parked", &self.shared.is_parked.load(Ordering::SeqCst))
            .field("ended", &self.shared.ended.load(Ordering::SeqCst))
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
