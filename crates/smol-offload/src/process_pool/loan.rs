//! Loans: a task submitted while a worker is idle and nothing is queued skips the dispatcher.
//!
//! The submitting thread writes the request to the idle worker itself, and the task reads the
//! reply itself on the thread that awaits it, sleeping on the worker's socket through the smol
//! reactor. A lone call then costs what a bare pipe costs: one wake-up of the worker and one of
//! the awaiting thread, where going through the dispatcher adds two more.
//!
//! The dispatcher stays in charge. It watches lent workers for their end (a worker that dies
//! on loan is replaced as usual), and takes a loan back (reading the reply itself) when jobs
//! are queued, so that a task nobody polls cannot keep its worker from them, or when the pool
//! closes. A task that is dropped or detached gives its loan back at once.
//!
//! Locks: a loan's lock may be held while taking the pool's queue lock, never the reverse.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};

use async_io::Async;

use crate::process_pool::dispatcher::{Job, Shared};
use crate::process_pool::wire::Reply;
use crate::process_pool::worker_link::{Incoming, WorkerLink};
use crate::task::Assist;

/// The longest reply a task reads itself, on the thread that awaits it.
const DIRECT_REPLY_LIMIT: usize = 64 * 1024;

/// A worker lent to one task, until its reply is read.
pub(crate) struct Loan {
    state: Mutex<LoanState>,
}

struct LoanState {
    /// `None` once the worker went back to the pool.
    worker: Option<WorkerLink>,
    /// The waker the task registered last: it is woken when the worker's socket has data.
    waker: Option<Waker>,
}

impl Loan {
    /// A loan with no worker yet: lock it, register it, send the request, then
    /// [`hold`](LentWorker::hold) the worker.
    pub(crate) fn new() -> Arc<Loan> {
        Arc::new(Loan {
            state: Mutex::new(LoanState {
                worker: None,
                waker: None,
            }),
        })
    }

    /// Locks the loan, to hand it a worker with [`hold`](LentWorker::hold).
    pub(crate) fn lock(&self) -> LentWorker<'_> {
        LentWorker(self.state())
    }

    /// Takes the worker away from the task, for the dispatcher: the loan is over.
    pub(crate) fn reclaim(self: &Arc<Loan>, shared: &Shared) -> Option<WorkerLink> {
        let mut state = self.state();
        let worker = state.worker.take()?;
        shared.end_loan(self);
        Some(worker)
    }

    /// The worker's socket, while the loan lasts: the dispatcher watches it.
    pub(crate) fn stream(&self) -> Option<Arc<Async<UnixStream>>> {
        self.state()
            .worker
            .as_ref()
            .map(|worker| worker.stream.clone())
    }

    fn state(&self) -> MutexGuard<'_, LoanState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A locked loan, before it holds its worker.
pub(crate) struct LentWorker<'a>(MutexGuard<'a, LoanState>);

impl LentWorker<'_> {
    /// Puts `worker`, which was sent its job, on loan.
    pub(crate) fn hold(&mut self, worker: WorkerLink) {
        self.0.worker = Some(worker);
    }
}

/// The [`Assist`] of a task on loan: reads the worker's reply on the awaiting thread.
pub(crate) struct LoanAssist {
    pub(crate) loan: Arc<Loan>,
    pub(crate) shared: Arc<Shared>,
}

impl Assist for LoanAssist {
    fn assist(&self, waker: Option<&Waker>) {
        // The result is delivered once the loan's lock is released: delivering runs the user's
        // `Deserialize` and wakes the task, and neither should run under the lock.
        if let Some((job, reply)) = self.read_reply(waker) {
            self.shared.counters.completed();
            job.completion.finish(reply);
        }
    }
}

impl LoanAssist {
    /// Reads what the worker sent; returns the job and its reply once the reply is in, after
    /// giving the worker back.
    fn read_reply(&self, waker: Option<&Waker>) -> Option<(Job, Reply)> {
        let mut state = self.loan.state();
        if let Some(waker) = waker
            && !state.waker.as_ref().is_some_and(|old| old.will_wake(waker))
        {
            state.waker = Some(waker.clone());
        }
        let LoanState {
            worker,
            waker: last_waker,
        } = &mut *state;
        // Without a worker, the dispatcher took it back: it completes the promise.
        let link = worker.as_mut()?;
        loop {
            let open = link.receive_up_to(DIRECT_REPLY_LIMIT);
            let done = match link.next_incoming() {
                Incoming::Reply(job, reply, _) => Some((job, reply)),
                // A long reply is read and decoded on the dispatcher's thread, not on the
                // thread of an event loop.
                Incoming::Nothing if link.next_reply_len() > Some(DIRECT_REPLY_LIMIT) => None,
                Incoming::Nothing if open => {
                    // Called without a waker (from `is_finished`), the last one is armed again.
                    let waker = last_waker.as_ref()?;
                    // Ready means the socket became readable since the last look: read again.
                    // Pending means `waker` is woken when it does.
                    if link
                        .stream
                        .poll_readable(&mut Context::from_waker(waker))
                        .is_pending()
                    {
                        return None;
                    }
                    continue;
                }
                // The worker died or broke its stream: the dispatcher fails the job with how it
                // ended, and forks a replacement.
                Incoming::Nothing | Incoming::Corrupt => None,
            };
            let link = worker.take().expect("the worker is on loan");
            self.shared.give_back(&self.loan, link);
            return done;
        }
    }
}

impl Drop for LoanAssist {
    /// The task returned its result, or was dropped or detached: if the worker is still on
    /// loan, the dispatcher takes it back and completes the promise.
    fn drop(&mut self) {
        let mut state = self.loan.state();
        state.waker = None;
        if let Some(link) = state.worker.take() {
            self.shared.give_back(&self.loan, link);
        }
    }
}
