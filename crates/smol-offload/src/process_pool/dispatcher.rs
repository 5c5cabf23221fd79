//! The dispatcher: one thread per pool, blocked in `poll(2)` on the pool's eventfd and the
//! workers' sockets, that hands queued jobs to idle workers, turns replies into task results,
//! and replaces workers that die.
//!
//! While nothing is queued, the dispatcher lends its idle workers out before it sleeps: a task
//! submitted then goes straight to a worker and reads its own reply (see
//! [`loan`](super::loan)), and the dispatcher is not woken at all. Otherwise submitters push a
//! job on the queue (see [`shared`](super::shared)) and write the eventfd only when the
//! dispatcher sleeps with workers lent out, so a burst of submissions costs one wake-up, not
//! one each.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use async_io::Async;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::error::{Error, ErrorKind, WorkerExit};
use crate::process_pool::job::Job;
use crate::process_pool::loan::Loan;
use crate::process_pool::server::{self, ServerLink};
use crate::process_pool::shared::Shared;
use crate::process_pool::wire::Reply;
use crate::process_pool::worker_link::{Incoming, WorkerLink};

/// A task shorter than this is short: the pool may send short tasks ahead to busy workers.
const SHORT_TASK: Duration = Duration::from_micros(200);
/// How many tasks a worker may hold at once, the one it runs included, when tasks are short.
const PIPELINE_DEPTH: usize = 16;
/// The largest argument sent to a busy worker. The dispatcher writes with blocking sends, and a
/// busy worker is not reading: what is sent ahead must fit in the socket's buffer (16 frames of
/// at most 4 KiB), or the dispatcher and a worker writing its reply would wait for each other.
const SEND_AHEAD_LIMIT: usize = 4 * 1024;

/// Forks `count` workers on the server.
pub(crate) fn spawn_workers(link: &ServerLink, count: usize) -> io::Result<Vec<WorkerLink>> {
    (0..count)
        .map(|_| WorkerLink::new(server::spawn_worker(link)?))
        .collect()
}

/// What the dispatcher watches while it sleeps, besides its eventfd.
enum Watched {
    /// One of its own workers, by index.
    Own(usize),
    /// A worker lent out while idle, or a loan: watched for its end only, unless jobs wait.
    Lent(Option<Arc<Loan>>),
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
}

impl Dispatcher {
    pub(crate) fn new(
        shared: Arc<Shared>,
        link: &'static ServerLink,
        workers: Vec<WorkerLink>,
    ) -> Dispatcher {
        *shared.pids_mut() = workers.iter().map(|worker| worker.pid).collect();
        // Lent out from the start, so that the first task goes straight to a worker.
        shared.lock().idle = workers;
        Dispatcher {
            shared,
            link,
            workers: Vec::new(),
            retry: VecDeque::new(),
            typical_task: None,
            replies: Vec::new(),
        }
    }

    /// Runs until the last pool handle is dropped and the jobs sent to workers are done.
    pub(crate) fn run(mut self) {
        // Whether an idle worker lent out ended while the dispatcher slept.
        let mut idle_ended = false;
        loop {
            let closed = self.shared.is_closed();
            if closed {
                self.reclaim_loans(|_| true);
            }
            // Idle workers stay lent out unless they are needed or one of them ended: taking
            // them back would open a window in which a submitter finds none.
            let jobs_wait = !self.retry.is_empty() || self.shared.queued() > 0;
            self.take_back_workers(closed || jobs_wait || idle_ended);
            if closed {
                self.fail_waiting_jobs();
                if self.all_home() && self.workers.iter().all(WorkerLink::is_idle) {
                    break;
                }
            } else {
                self.hand_out_jobs();
            }
            if self.workers.is_empty() && self.all_home() {
                self.shared.break_pool();
                self.fail_waiting_jobs();
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
                Err(_) => {
                    self.shared.break_pool();
                    self.fail_waiting_jobs();
                    break;
                }
            };
            self.shared.disarm_wake_on_submit();
            idle_ended = false;
            let mut ready_loans = Vec::new();
            for ((_, watched), ready) in sleep.watched.into_iter().zip(ready).rev() {
                if !ready {
                    continue;
                }
                match watched {
                    // Indices go down, so a worker replaced meanwhile does not shift the others.
                    Watched::Own(worker) => self.read_replies(worker),
                    Watched::Lent(Some(loan)) => ready_loans.push(loan),
                    Watched::Lent(None) => idle_ended = true,
                }
            }
            self.reclaim_loans(|loan| ready_loans.iter().any(|ready| Arc::ptr_eq(ready, loan)));
        }
        self.shut_down_workers();
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

    /// Takes back the workers given back, and those lent out while idle if `idle_too`, and
    /// reads what they hold: one may have died, or have its reply already there.
    fn take_back_workers(&mut self, idle_too: bool) {
        let taken: Vec<WorkerLink> = {
            let mut state = self.shared.lock();
            let mut taken: Vec<WorkerLink> = state.returned.drain(..).collect();
            if idle_too {
                taken.append(&mut state.idle);
            }
            taken
        };
        for worker in taken {
            self.workers.push(worker);
            self.read_replies(self.workers.len() - 1);
        }
    }

    /// Takes the workers of the loans `which` picks away from their tasks, and reads them.
    fn reclaim_loans(&mut self, which: impl Fn(&Arc<Loan>) -> bool) {
        let loans: Vec<Arc<Loan>> = self
            .shared
            .lock()
            .loans
            .iter()
            .filter(|loan| which(loan))
            .cloned()
            .collect();
        // The queue lock is not held here: a loan's lock comes first.
        for loan in loans {
            let worker = {
                let mut lent = loan.lock();
                let worker = lent.take();
                if worker.is_some() {
                    // Under the loan's lock, as the loan's task gives a worker back.
                    self.shared.end_loan(&loan);
                }
                worker
            };
            if let Some(worker) = worker {
                self.workers.push(worker);
                self.read_replies(self.workers.len() - 1);
            }
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
        if !closed && !jobs_wait {
            let mut index = 0;
            while index < self.workers.len() {
                if self.workers[index].is_idle() {
                    state.idle.push(self.workers.swap_remove(index));
                } else {
                    index += 1;
                }
            }
            if !state.idle.is_empty() || !state.loans.is_empty() {
                self.shared.arm_wake_on_submit();
            }
        } else if !closed
            && (!state.idle.is_empty() || self.workers.iter().any(WorkerLink::is_idle))
        {
            // Jobs came in after the idle workers were taken back and handed jobs: go round
            // again to take them back and hand these out too.
            return None;
        }
        let mut watched = Vec::with_capacity(self.workers.len() + state.idle.len());
        for (index, worker) in self.workers.iter().enumerate() {
            watched.push((worker.stream.clone(), Watched::Own(index)));
        }
        for worker in &state.idle {
            watched.push((worker.stream.clone(), Watched::Lent(None)));
        }
        let loans = state.loans.clone();
        drop(state);
        for loan in loans {
            if let Some(stream) = loan.stream() {
                watched.push((stream, Watched::Lent(Some(loan))));
            }
        }
        Some(Sleep { watched, jobs_wait })
    }
    /// The next job to send: one a dead worker left, else the oldest queued one that was not
    /// cancelled (which is then marked started).
    ///
    /// A job for a busy worker must be small (`ahead`): see [`SEND_AHEAD_LIMIT`].
    fn next_job(&mut self, ahead: bool) -> Option<Job> {
        let fits = |job: &Job| !ahead || job.arg.len() <= SEND_AHEAD_LIMIT;
        if self.retry.front().is_some_and(fits) {
            return self.retry.pop_front();
        }
        if !self.retry.is_empty() {
            return None;
        }
        while let Some(job) = self.shared.pop_if(fits) {
            self.shared.counters.picked();
            if job.completion.start() {
                return Some(job);
            }
            self.shared.counters.cancelled();
        }
        None
    }

    fn hand_out_jobs(&mut self) {
        // One job to each idle worker first, so that work spreads before it queues up.
        for index in 0..self.workers.len() {
            if self.workers[index].is_idle() {
                let Some(job) = self.next_job(false) else {
                    break;
                };
                self.workers[index].assign(job);
            }
        }
        let short_tasks = self
            .typical_task
            .is_some_and(|typical| typical < SHORT_TASK);
        let backlog = self.retry.len() + self.shared.queued();
        if short_tasks && backlog >= 2 * self.workers.len() {
            'fill: for depth in 2..=PIPELINE_DEPTH {
                for index in 0..self.workers.len() {
                    if self.workers[index].in_flight.len() < depth {
                        let Some(job) = self.next_job(true) else {
                            break 'fill;
                        };
                        self.workers[index].assign(job);
                    }
                }
            }
        }
        for index in (0..self.workers.len()).rev() {
            if self.workers[index].flush().is_err() {
                // The worker is gone: its first job fails with its exit status.
                self.replace_worker(index, false);
            }
        }
    }

    fn read_replies(&mut self, index: usize) {
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
                Incoming::Corrupt => {
                    self.replace_worker(index, true);
                    return;
                }
            }
        }
        if !open {
            self.replace_worker(index, false);
        }
    }

    /// The worker at `index` died or broke its stream (`kill` it then): fail the job it was
    /// running with how it ended, give the jobs sent ahead to others, and fork a replacement
    /// unless the pool is closing.
    fn replace_worker(&mut self, index: usize, kill: bool) {
        let dead = self.workers.swap_remove(index);
        let pid = dead.pid;
        let mut in_flight = dead.in_flight;
        drop(dead.stream);
        if kill {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let exit = self.link.reap(pid).unwrap_or(WorkerExit::Unknown);
        if let Some(running) = in_flight.pop_front() {
            self.shared.counters.completed();
            let error = Error::new(ErrorKind::WorkerDied { pid, exit });
            running.job.completion.fail(error);
        }
        for (position, waiting) in in_flight.into_iter().enumerate() {
            self.retry.insert(position, waiting.job);
        }
        let mut pids = self.shared.pids_mut();
        pids.retain(|&other| other != pid);
        if !self.shared.is_closed()
            && let Ok(spawned) = server::spawn_worker(self.link)
        {
            let new_pid = spawned.0;
            match WorkerLink::new(spawned) {
                Ok(worker) => {
                    pids.push(new_pid);
                    self.workers.push(worker);
                }
                // Its socket is closed: it exits at once.
                Err(_) => drop(self.link.reap(new_pid)),
            }
        }
    }

    /// Fails every job that no worker holds, with a shutdown error: the queued ones and those
    /// a dead worker left.
    fn fail_waiting_jobs(&mut self) {
        for job in self.retry.drain(..) {
            self.shared.counters.completed();
            job.completion.fail(Error::new(ErrorKind::Shutdown));
        }
        while let Some(job) = self.shared.pop() {
            self.shared.counters.picked();
            self.shared.counters.cancelled();
            job.completion.fail(Error::new(ErrorKind::Shutdown));
        }
    }

    /// Closes every worker's socket (each exits at the end of its stream) and reaps them.
    fn shut_down_workers(&mut self) {
        // Only after a failure can workers still be out: take them all back.
        self.reclaim_loans(|_| true);
        self.take_back_workers(true);
        self.deliver_results();
        for worker in std::mem::take(&mut self.workers) {
            let pid = worker.pid;
            let in_flight = worker.in_flight;
            drop(worker.stream);
            if !in_flight.is_empty() {
                // Only when the dispatcher itself failed: do not wait for its tasks.
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = self.link.reap(pid);
            for in_flight in in_flight {
                in_flight
                    .job
                    .completion
                    .fail(Error::new(ErrorKind::Shutdown));
            }
        }
        self.shared.pids_mut().clear();
    }
}

/// What the dispatcher sleeps on.
struct Sleep {
    watched: Vec<(Arc<Async<UnixStream>>, Watched)>,
    /// Jobs wait for a worker: a reply on loan ends the loan.
    jobs_wait: bool,
}

impl Sleep {
    /// Sleeps in `poll` until the eventfd or a watched worker has something; returns which of
    /// the watched workers are ready.
    ///
    /// Lent workers are watched for their end only, so that a reply their task reads does not
    /// wake the dispatcher, unless jobs wait: then a reply ends the loan, so that a task nobody
    /// polls cannot keep its worker from the queue.
    fn wait(&self, shared: &Shared) -> io::Result<Vec<bool>> {
        let mut fds = Vec::with_capacity(self.watched.len() + 1);
        fds.push(PollFd::new(shared.wake_fd(), PollFlags::POLLIN));
        for (stream, what) in &self.watched {
            let events = match what {
                // `poll` reports POLLHUP without being asked: the worker's end closed.
                Watched::Lent(_) if !self.jobs_wait => PollFlags::empty(),
                _ => PollFlags::POLLIN,
            };
            fds.push(PollFd::new(stream.get_ref().as_fd(), events));
        }
        loop {
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|events| !events.is_empty()))
            .collect();
        if ready[0] {
            shared.clear_wake();
        }
        Ok(ready[1..].to_vec())
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A bug in the dispatcher must not leave tasks waiting forever: refuse new work and
            // fail the queued jobs. Jobs held by workers fail as their promises drop, and the
            // workers exit when their sockets close.
            self.shared.break_pool();
            self.fail_waiting_jobs();
        }
    }
}
