//! Blocking iterators as async streams: order, the bounded buffer, closing by drop, many slow
//! streams on few threads, panics.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use common::{WATCHDOG, block_on, gate};
use futures_lite::StreamExt;
use smol_offload::{IterStream, ThreadPool, cancelled, stream, stream_dedicated};

fn named_pool(workers: usize, prefix: &'static str) -> ThreadPool {
    ThreadPool::builder()
        .workers(workers)
        .thread_name(move |i| format!("{prefix}-{i}"))
        .build()
        .unwrap()
}

async fn collect_ok<T: Send + 'static>(stream: IterStream<T>) -> Vec<T> {
    stream.map(Result::unwrap).collect().await
}

#[test]
fn items_arrive_in_order_on_a_pool_the_default_pool_and_a_dedicated_thread() {
    let expected: Vec<u32> = (0..10_000).collect();
    let pool = ThreadPool::new(2).unwrap();
    assert_eq!(block_on(collect_ok(pool.stream(0..10_000u32, 8))), expected);
    assert_eq!(block_on(collect_ok(stream(0..10_000u32, 1))), expected);
    assert_eq!(
        block_on(collect_ok(stream_dedicated("producer", 0..10_000u32, 3))),
        expected
    );
    // A buffer of 0 is taken as 1, and an empty iterator ends at once.
    assert_eq!(
        block_on(collect_ok(pool.stream(0..5u32, 0))),
        [0, 1, 2, 3, 4]
    );
    assert!(block_on(collect_ok(pool.stream(std::iter::empty::<u8>(), 4))).is_empty());
}

#[test]
fn a_dedicated_stream_runs_on_its_named_thread() {
    let names = std::iter::repeat_with(|| std::thread::current().name().map(str::to_owned));
    let names = block_on(collect_ok(stream_dedicated("tailer", names.take(4), 2)));
    assert_eq!(names, vec![Some("tailer".to_owned()); 4]);
}

#[test]
fn a_consumer_that_reads_ten_and_waits_bounds_the_producer_to_the_buffer() {
    let pool = ThreadPool::new(1).unwrap();
    let produced = Arc::new(AtomicUsize::new(0));
    let counter = produced.clone();
    let numbers = (0..).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let mut numbers = pool.stream(numbers, 4);
    block_on(async {
        for expected in 0..10u64 {
            assert_eq!(numbers.next().await.unwrap().unwrap(), expected);
        }
        // The pool has one thread and a FIFO queue: once this job runs, the producer job
        // submitted by the last read has filled the buffer and parked.
        pool.spawn(|| ()).await.unwrap();
    });
    let count = produced.load(Ordering::SeqCst);
    assert!(count <= 10 + 4 + 1, "produced {count} items ahead");
    assert!(count >= 10, "produced {count}");
    // The parked producer gave its thread back.
    assert_eq!(block_on(pool.spawn(|| 7)).unwrap(), 7);
    assert_eq!(block_on(numbers.next()).unwrap().unwrap(), 10);
}

/// An endless iterator that reports its drop, with the name of the dropping thread.
struct Endless {
    next: u64,
    dropped: mpsc::Sender<String>,
}

impl Iterator for Endless {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        self.next += 1;
        Some(self.next - 1)
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        let _ = self.dropped.send(name);
    }
}

#[test]
fn dropping_a_parked_stream_drops_its_iterator_on_a_worker() {
    let pool = named_pool(1, "parked");
    let (dropped_tx, dropped) = mpsc::channel();
    let mut numbers = pool.stream(
        Endless {
            next: 0,
            dropped: dropped_tx,
        },
        2,
    );
    block_on(async {
        assert_eq!(numbers.next().await.unwrap().unwrap(), 0);
        pool.spawn(|| ()).await.unwrap(); // the producer has parked
    });
    drop(numbers);
    assert_eq!(dropped.recv_timeout(WATCHDOG).unwrap(), "parked-0");
}

#[test]
fn dropping_a_stream_stops_the_running_iterator_after_its_item_and_drops_it_on_the_worker() {
    let pool = named_pool(1, "running");
    let (dropped_tx, dropped) = mpsc::channel();
    let (in_next_tx, in_next) = mpsc::channel();
    let (saw_cancel_tx, saw_cancel) = mpsc::channel();
    let (open, closed) = gate();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let mut endless = Endless {
        next: 0,
        dropped: dropped_tx,
    };
    let items = std::iter::from_fn(move || {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        if n == 1 {
            // The second item blocks until the test has dropped the stream.
            in_next_tx.send(()).unwrap();
            let _ = closed.recv_blocking();
            saw_cancel_tx.send(cancelled()).unwrap();
        }
        endless.next()
    });
    let mut numbers = pool.stream(items, 8);
    assert_eq!(block_on(numbers.next()).unwrap().unwrap(), 0);
    in_next.recv_timeout(WATCHDOG).unwrap();
    drop(numbers);
    drop(open);
    assert_eq!(saw_cancel.recv_timeout(WATCHDOG), Ok(true));
    assert_eq!(dropped.recv_timeout(WATCHDOG).unwrap(), "running-0");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "no item after the one being produced"
    );
}

#[test]
fn dropping_a_dedicated_stream_ends_its_thread_s_iterator() {
    let (dropped_tx, dropped) = mpsc::channel();
    let mut numbers = stream_dedicated(
        "endless",
        Endless {
            next: 0,
            dropped: dropped_tx,
        },
        3,
    );
    assert_eq!(block_on(numbers.next()).unwrap().unwrap(), 0);
    drop(numbers);
    assert_eq!(dropped.recv_timeout(WATCHDOG).unwrap(), "endless");
}

#[test]
fn fifty_slow_streams_all_make_progress_on_two_threads() {
    let pool = ThreadPool::new(2).unwrap();
    let mut streams: Vec<_> = (0..50u64)
        .map(|s| pool.stream((0..).map(move |n| (s, n)), 2))
        .collect();
    block_on(async {
        // Round-robin: each stream is read only after the 49 others, so each producer sits on
        // a full buffer most of the time. Two pinned threads would serve two streams only.
        for round in 0..5u64 {
            for (s, stream) in streams.iter_mut().enumerate() {
                assert_eq!(stream.next().await.unwrap().unwrap(), (s as u64, round));
            }
        }
    });
}

#[test]
fn a_panic_is_one_error_then_the_end() {
    let pool = ThreadPool::new(1).unwrap();
    let items = (0..10u32).map(|n| if n == 3 { panic!("bad item {n}") } else { n });
    let results: Vec<_> = block_on(pool.stream(items, 4).collect::<Vec<_>>());
    assert_eq!(results.len(), 4, "{results:?}");
    for (n, result) in results[..3].iter().enumerate() {
        assert_eq!(*result.as_ref().unwrap(), n as u32);
    }
    let err = results[3].as_ref().unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.panic_message(), Some("bad item 3"));
    // The pool goes on.
    assert_eq!(block_on(pool.spawn(|| 1)).unwrap(), 1);

    let items = (0..10u32).map(|n| if n == 1 { panic!("separate") } else { n });
    let results: Vec<_> = block_on(stream_dedicated("panics", items, 4).collect::<Vec<_>>());
    assert_eq!(results.len(), 2);
    assert!(results[1].as_ref().unwrap_err().is_panic());
}

/// The state letter (`R`, `S`, ...) of this process's thread named `name`, if there is one.
fn thread_state(name: &str) -> Option<char> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .find_map(|entry| {
            let dir = entry.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if comm.trim_end() != name {
                return None;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // "pid (comm) S ...": the state follows the last ')'.
            stat.rsplit_once(')')?.1.trim_start().chars().next()
        })
}

#[test]
fn a_dedicated_producer_sleeps_with_at_most_the_buffer_ahead() {
    let produced = Arc::new(AtomicUsize::new(0));
    let counter = produced.clone();
    let numbers = (0..).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let mut numbers = stream_dedicated("bounded-prod", numbers, 4);
    block_on(async {
        for expected in 0..10u64 {
            assert_eq!(numbers.next().await.unwrap().unwrap(), expected);
        }
    });
    // The iterator never blocks: once its thread sleeps, it waits for room.
    let deadline = std::time::Instant::now() + WATCHDOG;
    while thread_state("bounded-prod") != Some('S') {
        assert!(
            std::time::Instant::now() < deadline,
            "the producer never slept"
        );
        std::thread::yield_now();
    }
    let count = produced.load(Ordering::SeqCst);
    assert!((10..=10 + 4 + 1).contains(&count), "produced {count}");
    drop(numbers);
}

/// An item that counts its drops.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn dropping_a_stream_drops_every_item_it_did_not_hand_out() {
    let pool = ThreadPool::new(1).unwrap();
    let produced = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let (counter, on_drop) = (produced.clone(), dropped.clone());
    let items = std::iter::repeat_with(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        Counted(on_drop.clone())
    });
    let mut items = pool.stream(items, 8);
    block_on(async {
        // The first read takes a batch of several items; the rest of it is still unread.
        drop(items.next().await.unwrap().unwrap());
        pool.spawn(|| ()).await.unwrap(); // the producer has filled the buffer and parked
        drop(items.next().await.unwrap().unwrap());
    });
    drop(items);
    // One thread, FIFO: once this runs, the producer's job (and the parked iterator's drop) is
    // over, and with it the last owner of anything the stream held.
    block_on(pool.spawn(|| ())).unwrap();
    let produced = produced.load(Ordering::SeqCst);
    assert!((2..=2 + 8 + 1).contains(&produced), "produced {produced}");
    assert_eq!(dropped.load(Ordering::SeqCst), produced);
}

#[test]
fn an_ended_stream_keeps_returning_none() {
    let pool = ThreadPool::new(1).unwrap();
    let mut numbers = pool.stream(0..3u8, 2);
    block_on(async {
        for expected in 0..3 {
            assert_eq!(numbers.next().await.unwrap().unwrap(), expected);
        }
        assert!(numbers.next().await.is_none());
        assert!(numbers.next().await.is_none());
    });
    let items = (0..3u8).map(|n| if n == 1 { panic!("second") } else { n });
    let mut failing = pool.stream(items, 2);
    block_on(async {
        assert_eq!(failing.next().await.unwrap().unwrap(), 0);
        assert!(failing.next().await.unwrap().unwrap_err().is_panic());
        assert!(failing.next().await.is_none());
        assert!(failing.next().await.is_none());
    });
}

#[test]
fn a_stream_is_send_sync_and_unpin_for_any_send_item() {
    fn check<S: Send + Sync + Unpin>() {}
    // `Cell` is `Send` but not `Sync`: the stream must not need more than `Send` of its items.
    check::<IterStream<std::cell::Cell<u8>>>();
    check::<IterStream<Vec<u8>>>();
}
