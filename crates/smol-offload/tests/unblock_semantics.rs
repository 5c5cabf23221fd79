//! The semantics suite of `blocking::unblock` (its `tests/unblock.rs`: sleep, chan, read, write,
//! seek, panic, drop), ported to `ThreadPool::spawn` and `smol_offload::spawn`.

use std::fs;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use futures_lite::future;
use smol_offload::{Task, ThreadPool};

mod common;

use common::{WATCHDOG, watched};

/// `future::block_on` with a watchdog: like the `blocking` tests it ports, the test thread does
/// not drive the reactor itself.
fn block_on<T>(future: impl Future<Output = T>) -> T {
    future::block_on(watched(future))
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "smol-offload-unblock-{}-{name}",
            std::process::id()
        ));
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// The work sleeps, so the first poll is pending and the value comes no sooner than the sleep.
fn check_sleep(spawn: impl Fn(Box<dyn FnOnce() + Send>) -> Task<()>) {
    let dur = Duration::from_millis(200);
    let (go, wait_for_go) = mpsc::channel::<()>();
    let start = Instant::now();
    block_on(async {
        let task = spawn(Box::new(move || {
            wait_for_go.recv_timeout(WATCHDOG).unwrap();
            thread::sleep(dur);
        }));
        futures_lite::pin!(task);
        // The work waits for `go`: it certainly has not finished yet.
        assert!(future::poll_once(&mut task).await.is_none());
        go.send(()).unwrap();
        task.await.unwrap();
    });
    assert!(start.elapsed() >= dur);
}

#[test]
fn sleep() {
    let pool = ThreadPool::new(2).unwrap();
    check_sleep(|work| pool.spawn(work));
}

#[test]
fn sleep_on_the_default_pool() {
    check_sleep(smol_offload::spawn);
}

#[test]
fn chan() {
    const N: i32 = if cfg!(miri) { 50 } else { 20_000 };

    let pool = ThreadPool::new(2).unwrap();
    block_on(async {
        let (sender, receiver) = mpsc::sync_channel::<i32>(100);
        let producer = thread::spawn(move || {
            for i in 0..N {
                sender.send(i).unwrap();
            }
        });

        // Each blocking `recv` goes to the pool; the receiver travels there and back.
        let mut receiver = receiver;
        for i in 0..N {
            let (back, value) = pool
                .spawn(move || {
                    let value = receiver.recv().ok();
                    (receiver, value)
                })
                .await
                .unwrap();
            receiver = back;
            assert_eq!(value, Some(i));
        }

        producer.join().unwrap();
        let (_, last) = pool
            .spawn(move || {
                let value = receiver.recv().ok();
                (receiver, value)
            })
            .await
            .unwrap();
        assert_eq!(last, None);
    });
}

#[test]
fn chan_on_the_default_pool() {
    const N: i32 = if cfg!(miri) { 50 } else { 5_000 };

    block_on(async {
        let (sender, receiver) = mpsc::sync_channel::<i32>(10);
        let producer = smol_offload::spawn(move || {
            for i in 0..N {
                sender.send(i).unwrap();
            }
        });
        let mut receiver = receiver;
        let mut received = Vec::new();
        loop {
            let (back, value) = smol_offload::spawn(move || {
                let value = receiver.recv_timeout(WATCHDOG);
                (receiver, value)
            })
            .await
            .unwrap();
            receiver = back;
            match value {
                Ok(value) => received.push(value),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("the producer stalled"),
            }
        }
        producer.await.unwrap();
        assert_eq!(received, (0..N).collect::<Vec<_>>());
    });
}

#[test]
fn read() {
    const N: usize = if cfg!(miri) { 20_000 } else { 4_000_000 };

    let pool = ThreadPool::new(2).unwrap();
    let file = TempFile::new("read");
    let expected = pattern(N);
    fs::write(&file.0, &expected).unwrap();
    let path = file.0.clone();
    let read = block_on(pool.spawn(move || {
        let mut bytes = Vec::new();
        fs::File::open(path)?.read_to_end(&mut bytes)?;
        Ok::<_, std::io::Error>(bytes)
    }))
    .unwrap()
    .unwrap();
    assert!(read == expected, "read {} bytes, not the file", read.len());
}

#[test]
fn write() {
    const N: usize = if cfg!(miri) { 20_000 } else { 4_000_000 };

    let pool = ThreadPool::new(2).unwrap();
    let file = TempFile::new("write");
    let bytes = pattern(N);
    let path = file.0.clone();
    let bytes = block_on(pool.spawn(move || {
        let mut out = fs::File::create(path)?;
        out.write_all(&bytes)?;
        out.sync_all()?;
        Ok::<_, std::io::Error>(bytes)
    }))
    .unwrap()
    .unwrap();
    assert!(fs::read(&file.0).unwrap() == bytes);
}

#[test]
fn seek() {
    let pool = ThreadPool::new(1).unwrap();
    let file = TempFile::new("seek");
    fs::write(&file.0, pattern(1_000)).unwrap();
    let handle = fs::File::open(&file.0).unwrap();
    block_on(async {
        // The open file moves to the worker for each call and comes back, as `Unblock` does.
        let (handle, at) = pool
            .spawn(move || {
                let mut handle = handle;
                let at = handle.seek(SeekFrom::Current(7));
                (handle, at)
            })
            .await
            .unwrap();
        assert_eq!(at.unwrap(), 7);
        let (handle, at) = pool
            .spawn(move || {
                let mut handle = handle;
                let at = handle.seek(SeekFrom::Current(8));
                (handle, at)
            })
            .await
            .unwrap();
        assert_eq!(at.unwrap(), 15);
        let byte = pool
            .spawn(move || {
                let mut handle = handle;
                let mut byte = [0u8];
                handle.read_exact(&mut byte).map(|()| byte[0])
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(byte, 15);
    });
}

#[test]
fn panic() {
    let pool = ThreadPool::new(1).unwrap();
    block_on(async {
        let err = pool
            .spawn::<_, ()>(|| panic!("expected failure"))
            .await
            .unwrap_err();
        // Make sure it's our panic and not an unrelated one.
        assert!(err.is_panic());
        assert_eq!(err.panic_message(), Some("expected failure"));

        let err = smol_offload::spawn::<_, ()>(|| panic!("expected failure {}", 2))
            .await
            .unwrap_err();
        assert_eq!(err.panic_message(), Some("expected failure 2"));
    });
}

#[test]
fn panic_releases_what_the_work_held() {
    // The counterpart of `panic_with_mut`: state handed to the work is not lost for good when
    // the work panics. Here a lock guard is released by unwinding, so the lock is usable again
    // (poisoned, as std reports), and the caller sees the work's own message.
    let pool = ThreadPool::new(1).unwrap();
    let state = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let shared = state.clone();
    let err = block_on(pool.spawn(move || {
        let mut guard = shared.lock().unwrap();
        guard.push(1);
        panic!("panicked while holding the lock")
    }))
    .unwrap_err();
    assert_eq!(err.panic_message(), Some("panicked while holding the lock"));
    assert!(state.is_poisoned());
    let values = state.lock().unwrap_or_else(|poison| poison.into_inner());
    assert_eq!(*values, [1]);
    assert_eq!(Arc::strong_count(&state), 1);
}

#[test]
fn drop_before_start_cancels() {
    let pool = ThreadPool::new(1).unwrap();
    let (go, wait_for_go) = mpsc::channel::<()>();
    let busy = pool.spawn(move || wait_for_go.recv_timeout(WATCHDOG).unwrap());
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    drop(pool.spawn(move || flag.store(true, Ordering::SeqCst)));
    go.send(()).unwrap();
    block_on(async {
        busy.await.unwrap();
        pool.spawn(|| ()).await.unwrap();
    });
    assert!(!ran.load(Ordering::SeqCst), "dropped work ran");
}

#[test]
fn drop_after_start_lets_the_work_finish() {
    let pool = ThreadPool::new(1).unwrap();
    let (started_tx, started) = mpsc::channel();
    let (go, wait_for_go) = mpsc::channel::<()>();
    let (done_tx, done) = mpsc::channel();
    let task = pool.spawn(move || {
        started_tx.send(()).unwrap();
        wait_for_go.recv_timeout(WATCHDOG).unwrap();
        done_tx.send("finished").unwrap();
        vec![0u8; 1024]
    });
    started.recv_timeout(WATCHDOG).unwrap();
    drop(task);
    go.send(()).unwrap();
    assert_eq!(done.recv_timeout(WATCHDOG).unwrap(), "finished");
    assert_eq!(block_on(pool.spawn(|| 1)).unwrap(), 1);
}

#[test]
fn drop_of_a_polled_task_still_cancels() {
    // Polling registers a waker but does not start the work: a later drop still cancels it.
    let pool = ThreadPool::new(1).unwrap();
    let (go, wait_for_go) = mpsc::channel::<()>();
    let busy = pool.spawn(move || wait_for_go.recv_timeout(WATCHDOG).unwrap());
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let mut queued = pool.spawn(move || flag.store(true, Ordering::SeqCst));
    assert!(block_on(future::poll_once(&mut queued)).is_none());
    drop(queued);
    go.send(()).unwrap();
    block_on(async {
        busy.await.unwrap();
        pool.spawn(|| ()).await.unwrap();
    });
    assert!(!ran.load(Ordering::SeqCst), "dropped work ran");
}
