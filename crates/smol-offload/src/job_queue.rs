//! The thread pool's own queue of jobs, drained by at most one rayon job per worker thread.
//!
//! Submitting a task pushes a boxed closure on a lock-free FIFO queue. Only when fewer *pumps*
//! (rayon jobs that run queued closures until the queue is empty) are running than the pool
//! has threads does a submission start a new pump. Under a burst, a submission is then one push,
//! with no rayon job to allocate and no sleeping thread to wake per task; when work trickles
//! in, each task still starts a pump and runs at once.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering, fence};

use concurrent_queue::ConcurrentQueue;

use crate::stats::{Counters, PoolMetrics};

/// A queued closure; it gets the pool's counters when it runs.
pub(crate) type Job = Box<dyn FnOnce(&Counters) + Send>;

pub(crate) struct JobQueue {
    jobs: ConcurrentQueue<Job>,
    /// Pumps running or about to run; never more than `workers`.
    pumps: AtomicUsize,
    workers: usize,
    pub(crate) counters: Counters,
}

impl JobQueue {
    pub(crate) fn new(workers: usize, metrics: Arc<PoolMetrics>) -> JobQueue {
        JobQueue {
            jobs: ConcurrentQueue::unbounded(),
            pumps: AtomicUsize::new(0),
            workers,
            counters: Counters::new(metrics),
        }
    }

    /// Queues `job` and makes sure a pump will run it.
    pub(crate) fn push(self: &Arc<Self>, job: Job, rayon: &rayon::ThreadPool) {
        self.counters.submitted();
        if self.jobs.push(job).is_err() {
            unreachable!("the queue is unbounded and never closed");
        }
        // Pairs with the fence in `pump`: either this load sees a pump leave, or that pump sees
        // this job.
        fence(Ordering::SeqCst);
        if self.take_pump_slot() {
            let queue = self.clone();
            rayon.spawn(move || queue.pump());
        }
    }

    /// Claims a place for one more pump, if fewer than `workers` run.
    fn take_pump_slot(&self) -> bool {
        self.pumps
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |pumps| {
                (pumps < self.workers).then_some(pumps + 1)
            })
            .is_ok()
    }

    /// Runs queued jobs, on a rayon worker, until the queue is empty.
    fn pump(&self) {
        if IN_TASK.get() {
            // Rayon runs injected jobs on a thread that waits inside a task (in `join`, say),
            // but a task must not start on top of another: it could wait for the task below it,
            // which cannot finish first. Give the slot back: the pump that runs the task below
            // takes the next job from the queue as soon as that task ends.
            self.pumps.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        IN_TASK.set(true);
        let mut slot = Slot {
            queue: self,
            held: true,
        };
        loop {
            while let Ok(job) = self.jobs.pop() {
                job(&self.counters);
            }
            slot.release();
            fence(Ordering::SeqCst);
            // A job pushed after the last pop may have found every pump slot taken: take one
            // back and run it, unless another pump already did.
            if self.jobs.is_empty() || !self.take_pump_slot() {
                return;
            }
            slot.held = true;
        }
    }
}

thread_local! {
    /// True on a pool thread while it runs queued jobs.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// A running pump's slot, given back even if a panic ever unwinds out of a job; the thread is
/// marked in a task until the pump ends.
struct Slot<'a> {
    queue: &'a JobQueue,
    held: bool,
}

impl Slot<'_> {
    fn release(&mut self) {
        if self.held {
            self.held = false;
            self.queue.pumps.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.release();
        IN_TASK.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_job_runs_once_with_at_most_workers_pumps() {
        let rayon = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let metrics = PoolMetrics::new("test", crate::stats::Kind::Thread);
        let queue = Arc::new(JobQueue::new(2, metrics));
        let ran = Arc::new(AtomicU64::new(0));
        let (done, finished) = std::sync::mpsc::channel();
        let total = 20_000u64;
        for n in 0..total {
            let ran = ran.clone();
            let done = done.clone();
            let job: Job = Box::new(move |_| {
                if ran.fetch_add(n + 1, Ordering::SeqCst) + n + 1 == total * (total + 1) / 2 {
                    done.send(()).unwrap();
                }
            });
            queue.push(job, &rayon);
            assert!(queue.pumps.load(Ordering::SeqCst) <= 2);
        }
        finished.recv().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), total * (total + 1) / 2);
    }
}
