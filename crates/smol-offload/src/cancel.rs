//! [`cancelled()`]: how running thread work learns that nobody waits for it any more.
//!
//! Whoever runs work on a thread (a pool's job, a dedicated thread, a stream's producer) puts
//! the work's [`CancelSource`] in a thread-local slot for the time of the call, for
//! [`cancelled()`] to read.

use std::cell::RefCell;
use std::sync::Arc;

/// Something that knows whether the result of running work is still wanted.
pub(crate) trait CancelSource: Send + Sync {
    /// True once nobody waits for the result: the task was dropped, cancelled or timed out, or
    /// the stream was dropped.
    fn is_cancelled(&self) -> bool;
}

thread_local! {
    /// The source of the work this thread runs now, if any.
    static CURRENT: RefCell<Option<Arc<dyn CancelSource>>> = const { RefCell::new(None) };
}

/// True when the thread work calling it is no longer awaited: its [`Task`](crate::Task) was
/// dropped, cancelled with [`Task::cancel`](crate::Task::cancel) or timed out, or the stream it
/// produces items for was dropped.
///
/// It answers for the closure running on a [`ThreadPool`](crate::ThreadPool) (and so
/// [`spawn`](crate::spawn)), on a thread of [`spawn_dedicated`](crate::spawn_dedicated), and for
/// the iterator behind a stream ([`ThreadPool::stream`](crate::ThreadPool::stream)); elsewhere
/// (outside any task, on a loop thread, in a process worker) it is false. Started work runs to
/// its end, but a long loop can check `cancelled()` and return early, the way aiomisc's
/// `@threaded_separate` examples poll a stop `Event`, without passing one around.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// # smol::block_on(async {
/// let pool = smol_offload::ThreadPool::new(1)?;
/// let (started, running) = std::sync::mpsc::channel();
/// let work = pool.spawn(move || {
///     started.send(()).unwrap();
///     let mut rounds = 0u64;
///     while !smol_offload::cancelled() {
///         rounds += 1; // one slice of a long job
///         std::thread::sleep(Duration::from_millis(1));
///     }
///     rounds
/// });
/// running.recv()?;
/// // The closure sees the request, returns early, and its value still comes back.
/// let _rounds: u64 = work.cancel().await?;
/// assert!(!smol_offload::cancelled()); // not inside any task here
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub fn cancelled() -> bool {
    CURRENT.with(|current| {
        current
            .borrow()
            .as_ref()
            .is_some_and(|source| source.is_cancelled())
    })
}

/// Makes `source` the one [`cancelled()`] reads on this thread until the guard is dropped, when
/// the previous one comes back.
pub(crate) fn enter(source: Arc<dyn CancelSource>) -> Scope {
    let previous = CURRENT.with(|current| current.replace(Some(source)));
    Scope { previous }
}

/// Puts the previous source back when dropped, also when the work panics.
pub(crate) struct Scope {
    previous: Option<Arc<dyn CancelSource>>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|current| *current.borrow_mut() = previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Flag(AtomicBool);

    impl CancelSource for Flag {
        fn is_cancelled(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn false_outside_any_scope_and_restored_after_one() {
        assert!(!cancelled());
        let outer = Arc::new(Flag(AtomicBool::new(true)));
        let inner = Arc::new(Flag(AtomicBool::new(false)));
        {
            let _outer = enter(outer.clone());
            assert!(cancelled());
            {
                let _inner = enter(inner.clone());
                assert!(!cancelled());
                inner.0.store(true, Ordering::SeqCst);
                assert!(cancelled());
            }
            outer.0.store(false, Ordering::SeqCst);
            assert!(!cancelled());
        }
        assert!(!cancelled());
    }
}
