//! The dispatcher: one thread per pool, blocked in `poll(2)` on the pool's eventfd and the
//! workers' sockets and pidfds, that hands queued jobs to workers, turns replies into task
//! results, and replaces workers that die. While nothing is queued, it lends its idle workers
//! out before it sleeps (see [`Loan`](super::worker_link::Loan)); a job queued then wakes it,
//! once for a burst (see [`shared`](super::shared)).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::Async;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::error::{Error, ErrorKind};
use crate::process_pool::dying::{Cause, Dying, SHUTDOWN_GRACE};
use crate::process_pool::job::{Job, MOST_LOSSES};
use crate::process_pool::server::{self, ServerLink};
use crate::process_pool::shared::Shared;
use crate::process_pool::wire::{CallOptions, Reply};
use crate::process_pool::worker_link::Loan;
use crate::process_pool::worker_link::{Incoming, WorkerLink};
use crate::sys;

/// A task shorter than this is short: the pool may send short tasks ahead to busy workers.
const SHORT_TASK: Duration = Duration::from_micros(200);
/// How many tasks a worker may hold at once, the one it runs included, when tasks are short.
const PIPELINE_DEPTH: usize = 16;
/// The largest argument sent to a busy worker. The dispatcher writes with blocking sends, and a
/// busy worker is not reading: what is sent ahead must fit in the socket's buffer (16 frames of
/// at most 4 KiB), or the dispatcher and a worker writing its reply would wait for each other.
const SEND_AHEAD_LIMIT: usize = 4 * 1024;

/// Forks `count` workers on the server. If one cannot be forked, those forked already are
/// killed and reaped before the error is returned.
pub(crate) fn spawn_workers(link: &ServerLink, count: usize) -> io::Result<Vec<WorkerLink>> {
    let mut pids = Vec::with_capacity(count);
    // On an error, the workers made so far are dropped (their sockets closed) on the way out.
    let workers: io::Result<Vec<WorkerLink>> = (0..count)
        .map(|_| {
            let spawned = server::spawn_worker(link)?;
            pids.push(spawned.pid);
            WorkerLink::new(spawned)
        })
        .collect();
    if workers.is_err() {
        for pid in pids {
            // Killed first, so that the reap does not wait.
            sys::kill_worker_group(pid);
            let _ = link.reap(pid);
        }
    }
    workers
}

/// What the dispatcher watches while it sleeps, besides its eventfd.
enum Watched {
    /// One of its own workers, by index: its socket and its pidfd.
    Own(usize),
    /// A worker lent out while idle, or a loan: its pidfd, and its socket for its end only,
    /// unless jobs wait.
    Lent(Option<Arc<Loan>>),
    /// A dying worker, by index: its pidfd.
    Dying(usize),
}

/// The dispatcher's state and loop.
///
/// A worker runs one task at a time. To spare a round trip per task when tasks are tiny, the
/// dispatcher sends tasks ahead (up to [`PIPELINE_DEPTH`] per worker), but only while the tasks
/// it has seen are short and the queue is deep: a task sent ahead counts as started, so with
/// slow tasks or a short queue every task waits in the pool's queue, where dropping it cancels
/// it. If a worker dies, the task it was running fails and the ones sent ahead go to others.
pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
    link: &'static ServerLink,
    workers: Vec<WorkerLink>,
    /// Jobs that were sent to a worker that died before starting them: they go first.
    retry: VecDeque<Job>,
    /// A moving average of how long a task takes, reply to reply.
    typical_task: Option<Duration>,
    /// Replies read but not yet delivered to their tasks.
    replies: Vec<(Job, Reply)>,
    /// Workers let go of and not reaped yet.
    dying: Vec<Dying>,
    /// Replacements still to fork, after a fork failed.
    respawn: Respawn,
    /// Workers in a row whose initializer panicked.
    init_failures: u32,
    /// Once the pool is closed: the workers with a job in flight seen stopped (`SIGSTOP`),
    /// and since when.
    stopped: Vec<(u32, Instant)>,
}

/// How often a closed pool looks for stopped workers among those that still run a job.
const STOPPED_CHECK: Duration = Duration::from_millis(500);

/// The first wait before forking again after a failed fork; it doubles with each failure in a
/// row, up to [`RESPAWN_MAX_DELAY`].
const RESPAWN_FIRST_DELAY: Duration = Duration::from_millis(50);
const RESPAWN_MAX_DELAY: Duration = Duration::from_secs(5);
/// Failed forks in a row after which a pool left without any worker gives up.
const RESPAWN_ATTEMPTS: u32 = 5;
/// Initializer failures in a row after which a pool left without any worker gives up.
const INIT_ATTEMPTS: u32 = 5;

/// The workers a pool misses because forking them failed, and when to try again.
#[derive(Default)]
struct Respawn {
    missing: usize,
    /// Failed forks in a row.
    failures: u32,
    /// When to try again, after a failure.
    at: Option<Instant>,
    /// What the last failure said.
    error: Option<String>,
}

impl Respawn {
    fn failed(&mut self, error: &io::Error) {
        self.failures += 1;
        self.at = Some(Instant::now() + Respawn::delay_after(self.failures));
        self.error = Some(error.to_string());
    }

    /// How long to wait after `failures` failed forks in a row (at least one).
    fn delay_after(failures: u32) -> Duration {
        RESPAWN_FIRST_DELAY
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(RESPAWN_MAX_DELAY)
    }

    fn succeeded(&mut self) {
        self.missing -= 1;
        self.failures = 0;
        self.at = None;
    }
}

impl Dispatcher {
    pub(crate) fn new(
        shared: Arc<Shared>,
        link: &'static ServerLink,
        workers: Vec<WorkerLink>,
    ) -> Dispatcher {
        let workers: Vec<WorkerLink> = workers
            .into_iter()
            .map(|worker| new_worker(&shared, worker))
            .collect();
        shared.change_pids(|pids| *pids = workers.iter().map(|worker| worker.pid).collect());
        // Lent out from the start, so that the first task goes straight to a worker; kept
        // home while they run the pool's initializer.
        let (initializing, ready): (Vec<WorkerLink>, Vec<WorkerLink>) =
            workers.into_iter().partition(WorkerLink::is_initializing);
        shared.lock().idle = ready;
        Dispatcher {
            shared,
            link,
            workers: initializing,
            retry: VecDeque::new(),
            typical_task: None,
            replies: Vec::new(),
            dying: Vec::new(),
            respawn: Respawn::default(),
            init_failures: 0,
            stopped: Vec::new(),
        }
    }

    /// Runs until the last pool handle is dropped and the jobs sent to workers are done.
    pub(crate) fn run(mut self) {
        // Whether an idle worker lent out ended while the dispatcher slept.
        let mut idle_ended = false;
        loop {
            let closed = self.shared.is_closed();
            if closed {
                self.reclaim_loans(self.loans());
            }
            // Idle workers stay lent out unless they are needed or one of them ended: taking
            // them back would open a window in which a submitter finds none.
            let jobs_wait =
                !self.retry.is_empty() || self.shared.queued() > 0 || self.has_jobs_sent_ahead();
            self.take_back_workers(closed || jobs_wait || idle_ended);
            self.kill_abandoned();
            self.kill_overdue();
            self.retire_spent();
            if closed {
                self.fail_waiting_jobs(Shared::refusal);
                // It waits for the jobs its workers run, but not forever for a stopped worker:
                // it looks for them every `STOPPED_CHECK`.
                self.kill_stopped_workers();
                if self.all_home() && self.workers.iter().all(WorkerLink::is_idle) {
                    break;
                }
            } else {
                if self.respawn.at.is_some_and(|at| at <= Instant::now()) {
                    self.fork_missing_workers();
                }
                self.hand_out_jobs();
            }
            if self.workers.is_empty()
                && self.all_home()
                && (closed || self.respawn.failures >= RESPAWN_ATTEMPTS)
            {
                if !closed {
                    let error = self.respawn.error.take().unwrap_or_default();
                    self.shared.break_pool(Some(format!(
                        "none of its worker processes could be kept alive ({error}); \
                         build a new pool once the cause is fixed"
                    )));
                }
                self.fail_waiting_jobs(Shared::refusal);
                break;
            }
            let sleep = self.prepare_to_sleep(closed);
            // Results are delivered only now that idle workers are lent out again, so that a
            // task submitted as soon as its awaiting thread wakes goes straight to a worker.
            self.deliver_results();
            let Some(sleep) = sleep else {
                continue;
            };
            let ready = match sleep.wait(&self.shared) {
                Ok(ready) => ready,
                Err(err) => {
                    self.shared.break_pool(Some(format!(
                        "its dispatcher thread could not wait for its workers ({err})"
                    )));
                    self.fail_waiting_jobs(Shared::refusal);
                    break;
                }
            };
            self.shared.wake_on_submit(false);
            idle_ended = false;
            let mut ready_loans = Vec::new();
            // Indices go down, dying workers (listed last) first: a worker let go of meanwhile
            // moves the last of its list into its place, which was already seen.
            for (what, exited) in ready.into_iter().rev() {
                match what {
                    Watched::Own(worker) => {
                        self.read_replies(worker, exited);
                    }
                    Watched::Lent(Some(loan)) => ready_loans.push(loan),
                    Watched::Lent(None) => idle_ended = true,
                    Watched::Dying(index) => self.reap(index),
                }
            }
            let now = Instant::now();
            self.dying
                .iter_mut()
                .for_each(|dying| dying.kill_if_late(now));
            self.reclaim_loans(ready_loans);
        }
        self.shut_down_workers();
    }

    /// Reaps the dying worker at `index`, which exited, and fails the job it was running.
    fn reap(&mut self, index: usize) {
        let dying = self.dying.swap_remove(index);
        for (job, error) in dying.reap(self.link) {
            self.shared.counters.completed();
            job.completion.fail(error);
        }
    }

    /// Completes the tasks whose replies were read.
    fn deliver_results(&mut self) {
        for (job, reply) in self.replies.drain(..) {
            self.shared.counters.completed();
            job.completion.finish(reply);
        }
    }

    /// True when no worker is on loan or waiting to be taken back.
    fn all_home(&self) -> bool {
        let state = self.shared.lock();
        state.loans.is_empty() && state.returned.is_empty() && state.idle.is_empty()
    }

    /// Takes back the workers given back, and those lent out while idle if `idle_too`.
    fn take_back_workers(&mut self, idle_too: bool) {
        let mut state = self.shared.lock();
        let mut taken = std::mem::take(&mut state.returned);
        if idle_too {
            taken.append(&mut state.idle);
        }
        drop(state);
        for worker in taken {
            self.take_home(worker);
        }
    }

    /// Holds `worker` again and reads what it holds: it may have died, or have its reply there.
    fn take_home(&mut self, worker: WorkerLink) {
        self.workers.push(worker);
        self.read_replies(self.workers.len() - 1, false);
    }

    /// The loans in progress, listed under the queue lock, which is released on return: a
    /// loan's lock comes first.
    fn loans(&self) -> Vec<Arc<Loan>> {
        self.shared.lock().loans.clone()
    }

    /// Takes the workers of `loans` that still hold one away from their tasks, and reads them.
    fn reclaim_loans(&mut self, loans: impl IntoIterator<Item = Arc<Loan>>) {
        for loan in loans {
            let mut lent = loan.lock();
            let Some(worker) = lent.worker.take() else {
                continue;
            };
            // Under the loan's lock, as the loan's task gives a worker back.
            self.shared.lock().forget(&loan);
            drop(lent);
            self.take_home(worker);
        }
    }

    /// Lends the idle workers out if nothing is queued, and lists what to watch while asleep.
    /// Returns `None` when there is more to do first.
    fn prepare_to_sleep(&mut self, closed: bool) -> Option<Sleep> {
        let mut state = self.shared.lock();
        if !state.returned.is_empty() {
            return None;
        }
        let jobs_wait = !state.jobs.is_empty() || !self.retry.is_empty();
        // Jobs sent ahead wait behind running ones: idle workers stay home to take them (see
        // `hand_out_jobs`), and a loan that ends comes home too.
        let sent_ahead = self.has_jobs_sent_ahead();
        self.shared.set_jobs_sent_ahead(sent_ahead);
        if !closed && !jobs_wait && !sent_ahead {
            state
                .idle
                .extend(self.workers.extract_if(.., |worker| worker.is_free()));
            if !state.idle.is_empty() || !state.loans.is_empty() {
                self.shared.wake_on_submit(true);
            }
        } else if !closed
            && jobs_wait
            && (!state.idle.is_empty() || self.workers.iter().any(WorkerLink::is_free))
        {
            // Jobs came in after the idle workers were taken back and handed jobs: go round
            // again to take them back and hand these out too.
            return None;
        } else if self.workers.iter().any(WorkerLink::is_idle) {
            // An idle worker at home: a job submitted now must wake the dispatcher.
            self.shared.wake_on_submit(true);
        }
        let mut watched = Vec::with_capacity(
            self.workers.len() + state.idle.len() + state.loans.len() + self.dying.len(),
        );
        for (index, worker) in self.workers.iter().enumerate() {
            watched.push(Watch::worker(worker, Watched::Own(index)));
        }
        for worker in &state.idle {
            watched.push(Watch::worker(worker, Watched::Lent(None)));
        }
        let loans = state.loans.clone();
        drop(state);
        for loan in loans {
            if let Some((stream, pidfd)) = loan.watch() {
                watched.push(Watch(Some(stream), pidfd, Watched::Lent(Some(loan))));
            }
        }
        for (index, dying) in self.dying.iter().enumerate() {
            watched.push(Watch(None, dying.pidfd.clone(), Watched::Dying(index)));
        }
        // A closed pool forks nothing, and looks for stopped workers while jobs run.
        let wake_at = if !closed {
            self.respawn.at
        } else if self.workers.iter().all(WorkerLink::is_idle) {
            None
        } else {
            Some(Instant::now() + STOPPED_CHECK)
        };
        let deadline = self
            .dying
            .iter()
            .filter_map(Dying::kill_at)
            .chain(self.next_task_deadline())
            .chain(wake_at)
            .min();
        Some(Sleep {
            watched,
            jobs_wait: jobs_wait || sent_ahead,
            deadline,
        })
    }

    /// The next job to send: one a dead worker left, else the oldest queued one that was not
    /// cancelled (which is then marked started).
    ///
    /// A job for a busy worker must be small (`ahead`): see [`SEND_AHEAD_LIMIT`].
    fn next_job(&mut self, ahead: bool) -> Option<Job> {
        let fits = |job: &Job| !ahead || job.arg.len() <= SEND_AHEAD_LIMIT;
        while let Some(job) = self.retry.pop_front() {
            if job.completion.is_abandoned() {
                // Sent ahead to a worker that died, and given up on since: nobody waits for it.
                self.shared.counters.completed();
                job.completion.fail(Error::new(ErrorKind::Cancelled));
            } else if fits(&job) {
                return Some(job);
            } else {
                self.retry.push_front(job);
                return None;
            }
        }
        while let Some(job) = self.shared.pop_if(fits) {
            if job.completion.start() {
                return Some(job);
            }
            self.shared.counters.cancelled();
        }
        None
    }

    fn hand_out_jobs(&mut self) {
        self.fill_up_to(1);
        // A worker is idle while another holds jobs sent ahead that it has not started: take
        // them back, so that no job waits behind a running one while a worker is free. (Not
        // from a worker that has yet to claim the oldest job sent to it: that is a moment, and
        // the next pass, at the next reply, takes them.)
        if self.workers.iter().any(WorkerLink::is_free) && self.has_jobs_sent_ahead() {
            for worker in &mut self.workers {
                if worker.in_flight.len() > 1 {
                    self.retry.extend(worker.take_back_sent_ahead());
                }
            }
            self.fill_up_to(1);
        }
        let short_tasks = self
            .typical_task
            .is_some_and(|typical| typical < SHORT_TASK);
        let backlog = self.retry.len() + self.shared.queued();
        if short_tasks && backlog >= 2 * self.workers.len() {
            for depth in 2..=PIPELINE_DEPTH {
                if !self.fill_up_to(depth) {
                    break;
                }
            }
        }
        for index in (0..self.workers.len()).rev() {
            if self.workers[index].flush().is_err() {
                // The worker closed its socket: take the replies it sent before, then let it
                // go; the job it ran fails with how it ended.
                if self.read_replies(index, false) {
                    self.let_go(index, Cause::ClosedLink);
                }
            }
        }
    }

    /// Sends one job to each worker that may take one and holds fewer than `depth`: at depth 1,
    /// to each idle worker, so that work spreads before it queues up; deeper, jobs sent ahead.
    /// Returns `false` once no job is left to send.
    fn fill_up_to(&mut self, depth: usize) -> bool {
        for index in 0..self.workers.len() {
            if self.workers[index].in_flight.len() < depth && self.workers[index].can_take() {
                let Some(job) = self.next_job(depth > 1) else {
                    return false;
                };
                self.workers[index].assign(job);
            }
        }
        true
    }

    /// Puts `jobs` first in line, in their order.
    fn retry_first(&mut self, jobs: Vec<Job>) {
        jobs.into_iter()
            .rev()
            .for_each(|job| self.retry.push_front(job));
    }

    /// True when a worker holds jobs sent ahead, behind the one it runs.
    fn has_jobs_sent_ahead(&self) -> bool {
        self.workers.iter().any(|worker| worker.in_flight.len() > 1)
    }

    /// Reads the replies of the worker at `index`, and lets it go if it broke its stream or
    /// `exited`. Returns `false` when it let the worker go.
    fn read_replies(&mut self, index: usize, exited: bool) -> bool {
        let open = self.workers[index].receive();
        loop {
            match self.workers[index].next_incoming() {
                Incoming::Reply(job, reply, took) => {
                    self.typical_task = Some(match self.typical_task {
                        Some(typical) => (typical * 7 + took) / 8,
                        None => took,
                    });
                    self.replies.push((job, reply));
                }
                Incoming::Nothing => break,
                Incoming::Corrupt(malformed) => {
                    self.let_go(index, Cause::Malformed(malformed));
                    return false;
                }
                Incoming::Initialized => self.init_failures = 0,
                Incoming::InitializerFailed(message) => {
                    let what = format!("panicked: {message}");
                    self.initializer_failed(index, &what, Cause::Stopped);
                    return false;
                }
            }
        }
        if exited {
            self.let_go(index, Cause::Exited);
        } else if !open {
            self.let_go(index, Cause::ClosedLink);
        } else {
            return true;
        }
        false
    }

    /// Kills the workers whose running job was abandoned by its task (timed out, cancelled, or
    /// dropped with `kill_on_drop`), and forks their replacements: the next jobs need not wait
    /// for work nobody wants. Abandoned jobs sent ahead are taken back instead, with the others
    /// sent ahead (start claims): they run only if the worker reaches them first.
    fn kill_abandoned(&mut self) {
        for index in (0..self.workers.len()).rev() {
            let abandoned_ahead = self.workers[index]
                .in_flight
                .iter()
                .skip(1)
                .any(|waiting| waiting.job.completion.is_abandoned());
            if abandoned_ahead {
                // The others go first to the next worker free; `next_job` drops abandoned ones.
                let unstarted = self.workers[index].take_back_sent_ahead();
                self.retry_first(unstarted);
            }
            let abandoned = self.workers[index]
                .in_flight
                .front()
                .is_some_and(|running| running.job.completion.is_abandoned());
            if abandoned {
                self.let_go(index, Cause::Abandoned);
            }
        }
    }

    /// With `max_tasks_per_worker`: lets the workers that ran all their tasks go (their socket
    /// closes and they exit) and forks their replacements.
    fn retire_spent(&mut self) {
        for index in (0..self.workers.len()).rev() {
            if self.workers[index].is_spent() {
                self.let_go(index, Cause::Stopped);
            }
        }
    }

    /// With a `task_timeout`: kills the workers whose running job outlived it, on loan or not,
    /// and forks their replacements. Each such job fails with a timeout.
    fn kill_overdue(&mut self) {
        let Some(limit) = self.shared.options.task_timeout else {
            return;
        };
        let now = Instant::now();
        let overdue = |since: Instant| since + limit <= now;
        let loans = self.loans().into_iter();
        self.reclaim_loans(loans.filter(|loan| loan.running_since().is_some_and(overdue)));
        for index in (0..self.workers.len()).rev() {
            if self.workers[index].running_since().is_some_and(overdue) {
                self.let_go(index, Cause::Overdue(limit));
            } else if self.workers[index]
                .initializing_since()
                .is_some_and(overdue)
            {
                // The limit holds for the initializer too: one that hangs counts as failed.
                let what = format!("did not return within {limit:?}");
                self.initializer_failed(index, &what, Cause::Abandoned);
            }
        }
    }

    /// With a `task_timeout`: when the first running job, on loan or not, outlives it.
    fn next_task_deadline(&self) -> Option<Instant> {
        let limit = self.shared.options.task_timeout?;
        let loans = self.loans();
        let own = self.workers.iter().filter_map(|worker| {
            worker
                .running_since()
                .or_else(|| worker.initializing_since())
        });
        let lent = loans.iter().filter_map(|loan| loan.running_since());
        own.chain(lent).min().map(|since| since + limit)
    }

    /// Lets the worker at `index` go for `cause`: it is killed now or soon (see [`Dying`]), the
    /// job it was running fails once it is reaped, the jobs sent ahead go to others first, and
    /// a replacement is forked unless the pool is closing.
    fn let_go(&mut self, index: usize, cause: Cause) {
        self.discard(index, cause);
        if !self.shared.is_closed() {
            self.spawn_replacement();
        }
    }

    /// The initializer of the worker at `index` failed (`what` says how): lets it go for `cause`,
    /// and forks its replacement after [`Respawn`]'s delay. With no other worker, the waiting
    /// jobs fail with the initializer's message; after [`INIT_ATTEMPTS`] the pool breaks.
    fn initializer_failed(&mut self, index: usize, what: &str, cause: Cause) {
        let pid = self.workers[index].pid;
        self.discard(index, cause);
        self.init_failures += 1;
        let reason = format!("its initializer in worker process {pid} {what}");
        if self.shared.is_closed() {
            return;
        }
        self.respawn.missing += 1;
        let at = Instant::now() + Respawn::delay_after(self.init_failures);
        self.respawn.at = Some(self.respawn.at.map_or(at, |other| other.max(at)));
        self.respawn.error = Some(reason.clone());
        if self.init_failures >= INIT_ATTEMPTS {
            // Counted with the fork failures: the pool breaks once no worker is left.
            self.respawn.failures = self.respawn.failures.max(RESPAWN_ATTEMPTS);
        }
        if self.workers.is_empty() && self.all_home() {
            self.fail_waiting_jobs(|_| Error::new(ErrorKind::InitializerFailed(reason.clone())));
        }
    }

    /// Lets the worker at `index` go for `cause`, without forking a replacement: see
    /// [`let_go`](Dispatcher::let_go).
    fn discard(&mut self, index: usize, cause: Cause) {
        let mut worker = self.workers.swap_remove(index);
        let pid = worker.pid;
        // The jobs it never started go to others first (taken back before anything else, so
        // that a worker still alive cannot start them), the one it ran fails, unless it lost
        // too many workers (its own task may be killing them, see `MOST_LOSSES`).
        let (given_up, unstarted): (Vec<Job>, Vec<Job>) = worker
            .take_back_unstarted()
            .into_iter()
            .partition(|job| job.lost >= MOST_LOSSES);
        self.retry_first(unstarted);
        let running = worker
            .in_flight
            .drain(..)
            .map(|running| running.job)
            .collect();
        // Killed (if the cause says so) before its socket closes, which would let it exit.
        let mut dying = Dying::new(pid, worker.pidfd.clone(), running, cause);
        dying.given_up = given_up;
        self.dying.push(dying);
        drop(worker);
        self.shared
            .change_pids(|pids| pids.retain(|&other| other != pid));
    }

    /// In a closed pool, lets go of the workers that run a job but have been stopped
    /// (`SIGSTOP`, or `SIGTTIN` from reading the terminal) for [`SHUTDOWN_GRACE`]: killed, their
    /// job fails.
    fn kill_stopped_workers(&mut self) {
        let now = Instant::now();
        let before = std::mem::take(&mut self.stopped);
        for index in (0..self.workers.len()).rev() {
            let worker = &self.workers[index];
            if worker.is_idle() || !is_stopped(worker.pid) {
                continue;
            }
            let pid = worker.pid;
            let since = before
                .iter()
                .find(|&&(other, _)| other == pid)
                .map_or(now, |&(_, since)| since);
            if now - since >= SHUTDOWN_GRACE {
                self.let_go(index, Cause::StoppedAfterClose);
            } else {
                self.stopped.push((pid, since));
            }
        }
    }

    /// Forks a worker to replace one that was let go of, now or, after failures, later.
    fn spawn_replacement(&mut self) {
        self.respawn.missing += 1;
        if self.respawn.at.is_none() {
            self.fork_missing_workers();
        }
    }

    /// Forks the workers the pool misses; on a failure, tries again after [`Respawn`]'s delay.
    fn fork_missing_workers(&mut self) {
        while self.respawn.missing > 0 {
            let forked = server::spawn_worker(self.link).and_then(|spawned| {
                let (pid, pidfd) = (spawned.pid, spawned.pidfd.clone());
                WorkerLink::new(spawned).inspect_err(|_| {
                    // Its socket is closed: it exits at once.
                    let dying = Dying::new(pid, pidfd, Vec::new(), Cause::ClosedLink);
                    self.dying.push(dying);
                })
            });
            match forked {
                Ok(worker) => {
                    let pid = worker.pid;
                    self.workers.push(new_worker(&self.shared, worker));
                    self.shared.change_pids(|pids| pids.push(pid));
                    self.respawn.succeeded();
                }
                Err(err) => return self.respawn.failed(&err),
            }
        }
    }

    /// Fails every job that no worker holds (queued, or left by a dead worker) with the error
    /// that `error` makes: [`Shared::refusal`], or the initializer's failure.
    fn fail_waiting_jobs(&mut self, error: impl Fn(&Shared) -> Error) {
        for job in self.retry.drain(..) {
            self.shared.counters.completed();
            job.completion.fail(error(&self.shared));
        }
        while let Some(job) = self.shared.pop() {
            self.shared.counters.cancelled();
            job.completion.fail(error(&self.shared));
        }
    }

    /// Closes every worker's socket (each exits at the end of its stream) and reaps them,
    /// killing those that do not exit within [`SHUTDOWN_GRACE`].
    fn shut_down_workers(&mut self) {
        // Only after a failure can workers still be out: take them all back.
        self.reclaim_loans(self.loans());
        self.take_back_workers(true);
        self.deliver_results();
        for worker in std::mem::take(&mut self.workers) {
            let in_flight = worker.in_flight;
            drop(worker.stream);
            let mut dying = Dying::new(worker.pid, worker.pidfd, Vec::new(), Cause::Stopped);
            if !in_flight.is_empty() {
                // Only when the dispatcher itself failed: do not wait for its tasks.
                dying.kill_now();
            }
            self.dying.push(dying);
            for in_flight in in_flight {
                in_flight
                    .job
                    .completion
                    .fail(Error::new(ErrorKind::Shutdown));
            }
        }
        self.shared.change_pids(Vec::clear);
        self.reap_all_dying();
    }

    /// Waits for every dying worker to exit and reaps it, killing those whose deadline passes;
    /// gives up on those still there [`SHUTDOWN_GRACE`] after they were all killed (the fork
    /// server reaps them when the application exits).
    fn reap_all_dying(&mut self) {
        let mut give_up_at: Option<Instant> = None;
        while !self.dying.is_empty() {
            let now = Instant::now();
            self.dying
                .iter_mut()
                .for_each(|dying| dying.kill_if_late(now));
            let deadline = match self.dying.iter().filter_map(Dying::kill_at).min() {
                Some(kill_at) => kill_at,
                None => *give_up_at.get_or_insert(now + SHUTDOWN_GRACE),
            };
            if deadline <= now && give_up_at.is_some_and(|at| at <= now) {
                break;
            }
            let mut fds: Vec<PollFd<'_>> = self
                .dying
                .iter()
                .map(|dying| PollFd::new(dying.pidfd.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, timeout_until(deadline)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
            let exited: Vec<bool> = fds.iter().map(has_events).collect();
            drop(fds);
            for (index, exited) in exited.into_iter().enumerate().rev() {
                if exited {
                    self.reap(index);
                }
            }
        }
        for mut dying in self.dying.drain(..) {
            for job in dying.take_running() {
                job.completion.fail(Error::new(ErrorKind::Shutdown));
            }
        }
    }
}

/// A freshly forked worker, set up as the pool's options say.
fn new_worker(shared: &Shared, mut worker: WorkerLink) -> WorkerLink {
    worker.limit_tasks(shared.options.max_tasks_per_worker);
    if let Some(initializer) = &shared.options.initializer {
        // Sent with the next flush, before any job.
        let options = CallOptions {
            print_panics: shared.options.print_panics,
        };
        worker.initialize(initializer.call, options, &initializer.arg);
    }
    worker
}

/// One entry of what the dispatcher sleeps on: a worker's socket (`None` for a dying worker),
/// its pidfd, and which it is.
struct Watch(Option<Arc<Async<UnixStream>>>, Arc<OwnedFd>, Watched);

impl Watch {
    fn worker(worker: &WorkerLink, what: Watched) -> Watch {
        Watch(Some(worker.stream.clone()), worker.pidfd.clone(), what)
    }
}

/// What the dispatcher sleeps on.
struct Sleep {
    watched: Vec<Watch>,
    /// Jobs wait for a worker: a reply on loan ends the loan.
    jobs_wait: bool,
    /// When to wake up at the latest: a dying worker to kill, a task's time limit, a fork to
    /// try again, or a look for stopped workers.
    deadline: Option<Instant>,
}

impl Sleep {
    /// Sleeps in `poll` until the eventfd or a watched worker has something, or the deadline;
    /// returns, in order, the watched entries whose socket or pidfd showed something, each
    /// with whether its process exited.
    ///
    /// Lent workers' sockets are watched for their end only, so that a reply their task reads
    /// does not wake the dispatcher, unless jobs wait: then a reply ends the loan, so that a
    /// task nobody polls cannot keep its worker from the queue.
    fn wait(self, shared: &Shared) -> io::Result<Vec<(Watched, bool)>> {
        let mut fds = Vec::with_capacity(2 * self.watched.len() + 1);
        fds.push(PollFd::new(shared.wake.as_fd(), PollFlags::POLLIN));
        for Watch(stream, pidfd, what) in &self.watched {
            if let Some(stream) = stream {
                let events = match what {
                    // `poll` reports POLLHUP without being asked: the worker's end closed.
                    Watched::Lent(_) if !self.jobs_wait => PollFlags::empty(),
                    _ => PollFlags::POLLIN,
                };
                fds.push(PollFd::new(stream.get_ref().as_fd(), events));
            }
            fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
        }
        let timeout = self.deadline.map_or(PollTimeout::NONE, timeout_until);
        while let Err(err) = poll(&mut fds, timeout) {
            if err != nix::errno::Errno::EINTR {
                return Err(err.into());
            }
        }
        let events: Vec<bool> = fds.iter().map(has_events).collect();
        drop(fds);
        let mut events = events.into_iter();
        if events.next() == Some(true) {
            let _ = shared.wake.read();
        }
        let ready = self
            .watched
            .into_iter()
            .filter_map(|Watch(stream, _, what)| {
                let socket = stream.is_some() && events.next() == Some(true);
                let exited = events.next() == Some(true);
                (socket || exited).then_some((what, exited))
            });
        Ok(ready.collect())
    }
}

/// Whether process `pid` is stopped, from the state in `/proc/PID/stat`.
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.trim_start().chars().next());
        matches!(state, Some('T' | 't'))
    })
}

/// Whether `poll` reported anything for `fd`.
fn has_events(fd: &PollFd<'_>) -> bool {
    fd.revents().is_some_and(|events| !events.is_empty())
}

/// A `poll` timeout that ends at `deadline`, rounded up to the millisecond so that `poll` does
/// not return just before it.
fn timeout_until(deadline: Instant) -> PollTimeout {
    timeout_of(deadline.saturating_duration_since(Instant::now()))
}

/// A `poll` timeout of `left`, rounded up to the millisecond.
fn timeout_of(left: Duration) -> PollTimeout {
    let millis = left.as_micros().div_ceil(1000);
    PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A bug in the dispatcher must not leave tasks waiting forever: refuse new work and
            // fail the queued jobs. Jobs held by workers fail as their promises drop, and the
            // workers exit when their sockets close.
            self.shared.break_pool(None);
            self.fail_waiting_jobs(Shared::refusal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_forks_back_off_doubling_up_to_a_cap() {
        let delays: Vec<Duration> = (1..=12).map(Respawn::delay_after).collect();
        assert_eq!(delays[0], RESPAWN_FIRST_DELAY);
        for pair in delays.windows(2) {
            assert!(
                pair[1] == 2 * pair[0] || pair[1] == RESPAWN_MAX_DELAY,
                "{pair:?}"
            );
        }
        assert_eq!(delays[11], RESPAWN_MAX_DELAY, "the cap is reached");
        assert_eq!(Respawn::delay_after(u32::MAX), RESPAWN_MAX_DELAY);

        let mut respawn = Respawn {
            missing: 1,
            ..Respawn::default()
        };
        respawn.failed(&io::Error::from_raw_os_error(libc::EAGAIN));
        assert!(respawn.at.is_some());
        assert!(respawn.error.as_deref().unwrap().contains("os error 11"));
        respawn.succeeded();
        assert_eq!(
            (respawn.missing, respawn.failures, respawn.at),
            (0, 0, None)
        );
    }

    #[test]
    fn a_poll_timeout_never_ends_before_its_deadline() {
        // Rounded up: 300 µs wait a whole millisecond, not zero (which would spin).
        assert_eq!(i32::from(timeout_of(Duration::from_micros(300))), 1);
        assert_eq!(i32::from(timeout_of(Duration::from_micros(1001))), 2);
        assert_eq!(i32::from(timeout_of(Duration::ZERO)), 0);
        assert_eq!(
            timeout_of(Duration::from_secs(10_000_000)),
            PollTimeout::MAX
        );
        let past = Instant::now() - Duration::from_secs(1);
        assert_eq!(i32::from(timeout_until(past)), 0);
    }
}
