//! [`LoanAssist`]: the [`Assist`] of a task whose job went straight to an idle worker. It reads
//! the worker's reply on the thread that awaits the task, and gives the worker back to the pool.

use std::sync::Arc;
use std::task::Waker;

use crate::process_pool::loan::{Loan, LoanRead};
use crate::process_pool::shared::Shared;
use crate::task::Assist;

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
