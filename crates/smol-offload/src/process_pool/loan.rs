//! [`Loan`]: an idle worker lent to one task, which reads the worker's reply itself.
//!
//! A task submitted while a worker is idle and nothing is queued skips the dispatcher: the
//! submitting thread writes the request to the idle worker itself, and the task reads the
//! reply on the thread that awaits it, sleeping on the worker's socket through the smol
//! reactor (see [`LoanAssist`](super::assist::LoanAssist)). A lone call then costs what a bare pipe
//! costs: one wake-up of the worker and one of the awaiting thread, where going through the
//! dispatcher adds two more.
//!
//! The dispatcher stays in charge. It watches lent workers for their end (a worker that dies
//! on loan is replaced as usual), and takes a loan back (reading the reply itself) when jobs
//! are queued, so that a task nobody polls cannot keep its worker from them, or when the pool
//! closes. A task that is dropped or detached gives its loan back at once.
//!
//! Locks: a loan's lock comes first in the pool's lock order (see [`shared`](super::shared)):
//! it may be held while taking the queue lock, never the reverse.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};

use async_io::Async;

use crate::process_pool::job::Job;
use crate::process_pool::wire::Reply;
use crate::process_pool::worker_link::{Incoming, WorkerLink};

/// The longest reply a task reads itself, on the thread that awaits it.
const DIRECT_REPLY_LIMIT: usize = 64 * 1024;

/// The largest payload in shared memory that a task maps and decodes itself, on the thread
/// that awaits it. Its frame is short; mapping it costs one `mmap` that populates its pages,
/// and decoding it costs nothing for a [`ByteBuf`](crate::ByteBuf) (read in place) and one
/// copy for a `Vec<u8>` (a fraction of a millisecond at this size): less than the two thread
/// wake-ups that a detour through the dispatcher adds.
const DIRECT_SHARED_LIMIT: usize = 4 * 1024 * 1024;

/// A worker lent to one task, until its reply is read.
pub(crate) struct Loan {
    state: Mutex<LoanState>,
}

/// What a loan holds, under its lock.
pub(crate) struct LoanState {
    /// `None` once the worker went back to the pool.
    worker: Option<WorkerLink>,
    /// The waker the task registered last: it is woken when the worker's socket has data.
    waker: Option<Waker>,
}

/// What [`LoanState::read_reply`] found.
pub(crate) enum LoanRead {
    /// Nothing to do yet: the waker given (or the one remembered) is woken when there is.
    Pending,
    /// The loan is over: take the worker back to the pool. It carries the job's reply when the
    /// task read it; without one, the dispatcher reads it (a long reply), or fails the job (the
    /// worker ended or broke its stream).
    Over(Option<(Job, Reply)>),
    /// The dispatcher already took the worker back: it completes the job.
    Gone,
}

impl Loan {
    /// A loan with no worker yet: lock it, register it, send the request, then
    /// [`hold`](LoanState::hold) the worker.
    pub(crate) fn new() -> Arc<Loan> {
        Arc::new(Loan {
            state: Mutex::new(LoanState {
                worker: None,
                waker: None,
            }),
        })
    }

    /// Locks the loan (first in the lock order).
    pub(crate) fn lock(&self) -> MutexGuard<'_, LoanState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the job of the worker on loan began, while the loan lasts and the job runs.
    pub(crate) fn running_since(&self) -> Option<std::time::Instant> {
        self.lock()
            .worker
            .as_ref()
            .and_then(WorkerLink::running_since)
    }

    /// The worker's socket and pidfd, while the loan lasts: the dispatcher watches them.
    pub(crate) fn watch(&self) -> Option<(Arc<Async<UnixStream>>, Arc<OwnedFd>)> {
        self.lock()
            .worker
            .as_ref()
            .map(|worker| (worker.stream.clone(), worker.pidfd.clone()))
    }
}

impl LoanState {
    /// Puts `worker`, which was sent its job, on loan.
    pub(crate) fn hold(&mut self, worker: WorkerLink) {
        self.worker = Some(worker);
    }

    /// Takes the worker off the loan, to give it back to the pool.
    pub(crate) fn take(&mut self) -> Option<WorkerLink> {
        self.worker.take()
    }

    /// Forgets the task's waker: nobody awaits the task any more.
    pub(crate) fn forget_waker(&mut self) {
        self.waker = None;
    }

    /// Reads what the worker sent, without blocking. `waker` (or, without one, the waker
    /// remembered from an earlier call) is woken when the socket has more.
    pub(crate) fn read_reply(&mut self, waker: Option<&Waker>) -> LoanRead {
        if let Some(waker) = waker
            && !self.waker.as_ref().is_some_and(|old| old.will_wake(waker))
        {
            self.waker = Some(waker.clone());
        }
        let LoanState {
            worker,
            waker: last_waker,
        } = self;
        let Some(link) = worker.as_mut() else {
            return LoanRead::Gone;
        };
        loop {
            let open = link.receive_up_to(DIRECT_REPLY_LIMIT);
            // A long reply is read and decoded on the dispatcher's thread, not on the thread
            // of an event loop; one whose payload is in shared memory too above
            // `DIRECT_SHARED_LIMIT`, although its frame is short.
            let limit = if link.next_reply_is_shared() {
                DIRECT_SHARED_LIMIT
            } else {
                DIRECT_REPLY_LIMIT
            };
            if link.next_reply_len() > Some(limit) {
                return LoanRead::Over(None);
            }
            return match link.next_incoming() {
                Incoming::Reply(job, reply, _) => LoanRead::Over(Some((job, reply))),
                Incoming::Nothing if open => {
                    // Called without a waker (from `is_finished`), the last one is armed again.
                    let Some(waker) = last_waker.as_ref() else {
                        return LoanRead::Pending;
                    };
                    // Ready means the socket became readable since the last look: read again.
                    // Pending means `waker` is woken when it does.
                    if link
                        .stream
                        .poll_readable(&mut Context::from_waker(waker))
                        .is_pending()
                    {
                        return LoanRead::Pending;
                    }
                    continue;
                }
                // The worker died or broke its stream: the dispatcher fails the job with how it
                // ended, and forks a replacement.
                Incoming::Nothing | Incoming::Corrupt(_) => LoanRead::Over(None),
                // Never lent while it runs the initializer: the dispatcher deals with it.
                Incoming::Initialized | Incoming::InitializerFailed(_) => LoanRead::Over(None),
            };
        }
    }
}
