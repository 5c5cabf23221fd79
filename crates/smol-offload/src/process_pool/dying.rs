//! [`Dying`]: a worker the pool let go of, from the moment it looked broken until it is reaped.
//!
//! Nothing here waits for a process that may still run: a worker whose socket ended may live
//! on (its task closed the socket, or a process it forked holds a copy), so the fork server,
//! whose link every pool shares, is asked to reap it only once its pidfd says it exited. A
//! worker that does not exit by a deadline is killed, with its process group. The job it was
//! running fails once it is reaped, with how it ended: a signal, an exit code, or why the pool
//! killed it.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, WorkerExit};
use crate::process_pool::job::Job;
use crate::process_pool::server::ServerLink;
use crate::process_pool::wire::Malformed;
use crate::sys;

/// How long a worker whose socket ended may take to exit on its own before it is killed. A
/// worker that dies closes its socket a moment before its pidfd becomes readable: the grace
/// lets the pool report the real cause (a signal, `abort`, `exit`) instead of its own kill.
const CLOSED_LINK_GRACE: Duration = Duration::from_millis(200);

/// How long a worker has to exit once the pool closed its socket at shutdown.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the pool let a worker go.
#[derive(Debug)]
pub(crate) enum Cause {
    /// Its pidfd says it exited.
    Exited,
    /// Its socket ended, or a write to it failed: it is exiting, or it closed the socket and
    /// lives on. It gets [`CLOSED_LINK_GRACE`] to exit, then is killed.
    ClosedLink,
    /// It sent bytes that are no reply: it is killed at once.
    Malformed(Malformed),
    /// The pool's dispatcher stopped it (it had nothing to run): killed if it does not exit
    /// within [`SHUTDOWN_GRACE`].
    Stopped,
    /// The task of the job it runs gave up on it (timed out, cancelled, or dropped with
    /// `kill_on_drop`): it is killed at once.
    Abandoned,
    /// The job it runs outlived the pool's `task_timeout`: it is killed at once, and the job
    /// fails with a timeout.
    Overdue(Duration),
    /// Its pool was dropped while it ran a job, and it stayed stopped (`SIGSTOP`): killed at
    /// once.
    StoppedAfterClose,
}

/// A worker on its way out, kept until it is reaped.
#[derive(Debug)]
pub(crate) struct Dying {
    pub(crate) pid: u32,
    pub(crate) pidfd: Arc<OwnedFd>,
    /// The jobs it started (one, unless it lost a reply): they fail with how it ended.
    running: Vec<Job>,
    /// The job it may have been running, as far as its claim word tells, that the pool gives
    /// up on: its workers were lost `job::MOST_LOSSES` times. It fails with how this one ended.
    pub(crate) given_up: Vec<Job>,
    /// Why the pool killed it, once it did: said instead of how it ended.
    killed_for: Option<WorkerExit>,
    /// When to kill it if it has not exited by then.
    kill_at: Option<Instant>,
    /// What the job it was running fails with instead of how the worker ended, when the pool
    /// killed it for that job's sake.
    fails_with: Option<KilledFor>,
}

/// Why the pool killed a worker for its running job's sake.
#[derive(Clone, Copy, Debug)]
enum KilledFor {
    /// Its task gave up on it: it fails as cancelled (nobody reads it).
    Abandoned,
    /// It outlived the pool's `task_timeout`: it fails as timed out.
    Overdue(Duration),
}

impl Dying {
    /// Lets worker `pid` go for `cause`, killing it (and its process group) now if the cause
    /// says so. The pid is not reaped yet, so it and its group are still this worker's.
    pub(crate) fn new(pid: u32, pidfd: Arc<OwnedFd>, running: Vec<Job>, cause: Cause) -> Dying {
        let mut dying = Dying {
            pid,
            pidfd,
            running,
            given_up: Vec::new(),
            killed_for: None,
            kill_at: None,
            fails_with: None,
        };
        match cause {
            // Killed all the same, for the processes its task forked (see `reap`).
            Cause::Exited => {}
            Cause::ClosedLink => dying.kill_at = Some(Instant::now() + CLOSED_LINK_GRACE),
            Cause::Malformed(malformed) => {
                dying.kill(WorkerExit::MalformedReply(malformed.0));
            }
            Cause::Stopped => dying.kill_at = Some(Instant::now() + SHUTDOWN_GRACE),
            Cause::Abandoned => {
                // Nobody reads the error: the task already resolved.
                dying.kill(WorkerExit::Signal(libc::SIGKILL));
                dying.fails_with = Some(KilledFor::Abandoned);
            }
            Cause::Overdue(limit) => {
                dying.kill(WorkerExit::Signal(libc::SIGKILL));
                dying.fails_with = Some(KilledFor::Overdue(limit));
            }
            Cause::StoppedAfterClose => dying.kill(WorkerExit::StoppedAfterClose),
        }
        dying
    }

    /// The instant it must be killed at, unless it exits first.
    pub(crate) fn kill_at(&self) -> Option<Instant> {
        self.kill_at
    }

    /// Kills it if its deadline passed (it lives on with its socket closed).
    pub(crate) fn kill_if_late(&mut self, now: Instant) {
        if self.kill_at.is_some_and(|at| at <= now) {
            self.kill(WorkerExit::ClosedLink);
        }
    }

    /// Kills it now, whatever its deadline (it was not killed yet).
    pub(crate) fn kill_now(&mut self) {
        self.kill(WorkerExit::ClosedLink);
    }

    fn kill(&mut self, reason: WorkerExit) {
        sys::kill_worker_group(self.pid);
        self.killed_for = Some(reason);
        self.kill_at = None;
    }

    /// Reaps the worker, which has exited (its pidfd is readable), and returns the jobs it was
    /// running, each with the error it fails with.
    ///
    /// Its process group is killed first: what its tasks forked does not outlive it (a
    /// process that left the group, with `setsid`, escapes).
    pub(crate) fn reap(self, link: &ServerLink) -> Vec<(Job, Error)> {
        sys::kill_worker_group(self.pid);
        let reaped = link.reap(self.pid);
        // Once the pool killed it, the reason is the cause: the worker may have exited on its
        // own in the instant before the kill (at the end of its socket), but it was broken.
        let exit = match (reaped, self.killed_for) {
            (_, Some(reason)) => reason,
            (Ok(exit), None) => exit,
            (Err(_), None) => WorkerExit::Unknown,
        };
        let errors = errors(self.pid, &exit, self.fails_with, self.running.len());
        let mut failed: Vec<(Job, Error)> = self.running.into_iter().zip(errors).collect();
        for job in self.given_up {
            let (times, pid, exit) = (job.lost, self.pid, exit.clone());
            failed.push((job, Error::new(ErrorKind::WorkerLost { times, pid, exit })));
        }
        failed
    }

    /// Takes the jobs it was running back, to fail them otherwise (the dispatcher gives up).
    pub(crate) fn take_running(&mut self) -> Vec<Job> {
        let mut jobs = std::mem::take(&mut self.running);
        jobs.append(&mut self.given_up);
        jobs
    }
}

/// The errors of the `count` jobs that worker `pid` had started, oldest first, once it ended
/// with `exit`.
///
/// A malformed reply stood where the reply of the oldest was expected: it alone is said to have
/// sent it. The worker started the others only after those bytes (it writes a job's reply
/// before it starts the next), so they fail for them, saying so.
fn errors(pid: u32, exit: &WorkerExit, fails_with: Option<KilledFor>, count: usize) -> Vec<Error> {
    (0..count)
        .map(|position| {
            let exit = match exit {
                WorkerExit::MalformedReply(detail) if position > 0 => {
                    WorkerExit::MalformedEarlierReply(detail.clone())
                }
                exit => exit.clone(),
            };
            let kind = match fails_with {
                Some(KilledFor::Abandoned) => ErrorKind::Cancelled,
                Some(KilledFor::Overdue(limit)) => ErrorKind::Timeout(limit),
                None => ErrorKind::WorkerDied { pid, exit },
            };
            Error::new(kind)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_job_a_malformed_reply_stood_for_is_blamed_for_it() {
        // The worker sent bytes that were no reply to its oldest job, then (the stream being
        // read later) started two more: those ran after the bytes were sent.
        let exit = WorkerExit::MalformedReply("an unknown reply status 9".to_owned());
        let errors: Vec<String> = errors(42, &exit, None, 3)
            .iter()
            .map(Error::to_string)
            .collect();
        assert_eq!(
            errors[0],
            "worker process 42 sent a malformed reply (an unknown reply status 9) and was killed \
             while running the task"
        );
        for later in &errors[1..] {
            assert!(!later.contains("sent a malformed reply"), "{later}");
            assert!(
                later.contains("worker process 42")
                    && later.contains("an earlier task")
                    && later.contains("an unknown reply status 9"),
                "{later}"
            );
        }
    }

    #[test]
    fn every_job_a_dead_worker_started_fails_with_how_it_ended() {
        let exit = WorkerExit::Signal(libc::SIGKILL);
        for error in errors(42, &exit, None, 2) {
            assert_eq!(error.worker_pid(), Some(42));
            assert_eq!(error.worker_signal(), Some(libc::SIGKILL));
        }
        let overdue = Some(KilledFor::Overdue(Duration::from_secs(1)));
        assert!(errors(42, &exit, overdue, 2).iter().all(Error::is_timeout));
    }
}
