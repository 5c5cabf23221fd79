//! The thread pool's own queue of jobs, drained by at most one rayon job per worker thread.
//!
//! Submitting a task pushes a boxed closure on a lock-free FIFO queue. Only when fewer *pumps*
//! (rayon jobs that run queued closures until the queue is empty) are running than the pool
//! has threads does a submission start a new pump. Under a burst, a submission is then one push,
//! with no rayon job to allocate and no sleeping thread to wake per task; when work trickles
//! in, each task still starts a pump and runs at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering, fence};

use concurrent_queue::ConcurrentQueue;

use crate::stats::Counters;

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
    pub(crate) fn new(workers: usize) -> JobQueue {
        JobQueue {
            jobs: ConcurrentQueue::unbounded(),
            pumps: AtomicUsize::new(0),
            workers,
            counters: Counters::default(),
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
        let mut pumps = self.pumps.load(Ordering::SeqCst);
        while pumps < self.workers {
            match self.pumps.compare_exchange_weak(
                pumps,
                pumps + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(actual) => pumps = actual,
            }
        }
        false
    }

    /// Runs queued jobs, on a rayon worker, until the queue is empty.
    fn pump(&self) {
        loop {
            while let Ok(job) = self.jobs.pop() {
                job(&self.counters);
            }
            self.pumps.fetch_sub(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            // A job pushed after the last pop may have found every pump slot taken: take one
            // back and run it, unless another pump already did.
            if self.jobs.is_empty() || !self.take_pump_slot() {
                return;
            }
        }
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
        let queue = Arc::new(JobQueue::new(2));
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
