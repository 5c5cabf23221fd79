//! The [`Assist`]s of a process task: the work its awaiting side does itself when polled.
//! [`LoanAssist`] reads the reply of a worker lent to the task; [`RoomAssist`] (and [`Ready`])
//! wait for room in a full queue.
//!
//! Backpressure: with [`queue_limit`](super::ProcessPoolBuilder::queue_limit), at most that
//! many jobs wait in the pool's queue.
//!
//! [`Executor::run`](crate::Executor::run) stays synchronous. A job submitted while the queue
//! is full is not queued: its task holds it, as a [`RoomAssist`], and puts it in the queue
//! itself when it is polled and there is room (or sends it straight to a worker that is idle
//! by then). Until then the task has not started, and dropping it drops the job. A producer
//! that awaits [`Ready`] (`ProcessPool::ready`) before each `run` never holds more than one job
//! outside the queue, so the pool's memory stays flat however fast it submits.
//!
//! A task detached while it waits for room cannot be polled any more: its job goes to an
//! overflow list that moves into the queue, in order, as room frees. Only detached tasks grow
//! that list.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::process_pool::job::Job;
use crate::process_pool::shared::{Placed, Shared};
use crate::process_pool::worker_link::{Loan, LoanRead};
use crate::task::Assist;

/// The [`Assist`] of a task whose job waits for room in a full queue.
pub(crate) struct RoomAssist {
    shared: Arc<Shared>,
    /// The id this task waits for room under.
    waiter: u64,
    state: Mutex<Waiting>,
}

enum Waiting {
    /// The job, not submitted yet, and the waker given last: called without one (from
    /// `is_finished`), the task waits for room with that one.
    Job(Job, Option<Waker>),
    /// The job went straight to an idle worker: this task reads its reply.
    Lent(LoanAssist),
    /// The job is queued, or failed: the pool completes the task.
    Placed,
}

impl RoomAssist {
    pub(crate) fn new(shared: Arc<Shared>, job: Job) -> RoomAssist {
        RoomAssist {
            waiter: shared.new_waiter(),
            shared,
            state: Mutex::new(Waiting::Job(job, None)),
        }
    }

    fn state(&self) -> MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Assist for RoomAssist {
    fn assist(&self, waker: Option<&Waker>) {
        let mut state = self.state();
        if let Waiting::Job(..) = &*state {
            let Waiting::Job(job, mut last) = std::mem::replace(&mut *state, Waiting::Placed)
            else {
                unreachable!("matched just above");
            };
            if let Some(waker) = waker
                && !last.as_ref().is_some_and(|old| old.will_wake(waker))
            {
                last = Some(waker.clone());
            }
            let waiter = last.as_ref().map(|waker| (self.waiter, waker));
            match self.shared.submit_or_wait(job, waiter) {
                Ok(Placed::Full(job)) => *state = Waiting::Job(job, last),
                Ok(Placed::Queued) => {}
                Ok(Placed::Lent(loan)) => {
                    let lent = LoanAssist {
                        loan,
                        shared: self.shared.clone(),
                    };
                    // The loan reads the reply with the waker this task was last given: called
                    // from `is_finished`, `waker` is none.
                    lent.assist(last.as_ref());
                    *state = Waiting::Lent(lent);
                }
                Err(refused) => refused.completion.fail(self.shared.refusal()),
            }
            return;
        }
        if let Waiting::Lent(lent) = &*state {
            lent.assist(waker);
        }
    }
}

impl Drop for RoomAssist {
    /// The task was dropped, detached, or returned its result. A job still waiting for room
    /// is dropped with a dropped task, and goes to the overflow with a detached one.
    fn drop(&mut self) {
        self.shared.forget_waiter(self.waiter);
        let state = std::mem::replace(&mut *self.state(), Waiting::Placed);
        if let Waiting::Job(job, _) = state
            && !job.completion.is_cancelled()
        {
            self.shared.push_overflow(job);
        }
    }
}

/// The future of [`ProcessPool::ready`](super::ProcessPool::ready): resolves once the pool's
/// queue has room.
#[must_use = "futures do nothing unless awaited"]
pub struct Ready {
    shared: Arc<Shared>,
    waiter: u64,
}

impl Ready {
    pub(crate) fn new(shared: Arc<Shared>) -> Ready {
        Ready {
            waiter: shared.new_waiter(),
            shared,
        }
    }
}

impl Future for Ready {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.has_room(self.waiter, cx.waker()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        self.shared.forget_waiter(self.waiter);
    }
}

impl fmt::Debug for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ready").finish_non_exhaustive()
    }
}

// [`LoanAssist`]: the [`Assist`] of a task whose job went straight to an idle worker. It reads
// the worker's reply on the thread that awaits the task, and gives the worker back to the pool.

/// The [`Assist`] of a task on loan: reads the worker's reply on the awaiting thread.
pub(crate) struct LoanAssist {
    pub(crate) loan: Arc<Loan>,
    pub(crate) shared: Arc<Shared>,
}

impl Assist for LoanAssist {
    fn assist(&self, waker: Option<&Waker>) {
        let done = {
            let mut loan = self.loan.lock();
            match loan.read_reply(waker) {
                LoanRead::Pending | LoanRead::Gone => None,
                LoanRead::Over(done) => {
                    // Given back under the loan's lock, so that the dispatcher always knows
                    // where the worker is.
                    let worker = loan.take().expect("the worker is on loan");
                    self.shared.give_back(&self.loan, worker);
                    done
                }
            }
        };
        // The result is delivered once the loan's lock is released: delivering runs the user's
        // `Deserialize` and wakes the task, and neither should run under the lock.
        if let Some((job, reply)) = done {
            self.shared.counters.completed();
            job.completion.finish(reply);
        }
    }
}

impl Drop for LoanAssist {
    /// The task returned its result, or was dropped or detached: if the worker is still on
    /// loan, the dispatcher takes it back and completes the promise.
    fn drop(&mut self) {
        let mut loan = self.loan.lock();
        loan.forget_waker();
        if let Some(worker) = loan.take() {
            self.shared.give_back(&self.loan, worker);
        }
    }
}
