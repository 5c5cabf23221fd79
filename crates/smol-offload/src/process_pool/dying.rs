//! [`Dying`]: a worker the pool let go of, from the moment it looked broken until it is reaped.
//!
//! Nothing here ever waits for a process that may still run. A worker whose socket ended may
//! still be alive (its task closed the socket, or a process it forked holds a copy), so the
//! pool watches the worker's pidfd, which the kernel makes readable once the process has
//! exited, and asks the fork server to reap it only then: the server's `waitpid` returns at
//! once, and the server's link, which every pool of the process shares, is never held while a
//! worker runs. A worker that does not exit by a deadline is killed, with its process group.
//!
//! The job a dying worker was running fails only once the worker is reaped, with how it ended:
//! the signal or exit code it died of, or why the pool had to kill it.

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
    /// within `grace`.
    Stopped { grace: Duration },
}

/// A worker on its way out, kept until it is reaped.
#[derive(Debug)]
pub(crate) struct Dying {
    pub(crate) pid: u32,
    pub(crate) pidfd: Arc<OwnedFd>,
    /// The job it was running: it fails with how the worker ended.
    running: Option<Job>,
    /// Why the pool killed it, once it did: said instead of how it ended.
    killed_for: Option<WorkerExit>,
    /// When to kill it if it has not exited by then.
    kill_at: Option<Instant>,
}

impl Dying {
    /// Lets worker `pid` go for `cause`, killing it (and its process group) now if the cause
    /// says so. The pid is not reaped yet, so it and its group are still this worker's.
    pub(crate) fn new(pid: u32, pidfd: Arc<OwnedFd>, running: Option<Job>, cause: Cause) -> Dying {
        let mut dying = Dying {
            pid,
            pidfd,
            running,
            killed_for: None,
            kill_at: None,
        };
        match cause {
            // Killed all the same, for the processes its task forked (see `reap`).
            Cause::Exited => {}
            Cause::ClosedLink => dying.kill_at = Some(Instant::now() + CLOSED_LINK_GRACE),
            Cause::Malformed(malformed) => {
                dying.kill(WorkerExit::MalformedReply(malformed.0));
            }
            Cause::Stopped { grace } => dying.kill_at = Some(Instant::now() + grace),
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

    /// Kills it now, whatever its deadline.
    pub(crate) fn kill_now(&mut self) {
        if self.killed_for.is_none() {
            self.kill(WorkerExit::ClosedLink);
        }
    }

    fn kill(&mut self, reason: WorkerExit) {
        sys::kill_worker_group(self.pid);
        self.killed_for = Some(reason);
        self.kill_at = None;
    }

    /// Reaps the worker, which has exited (its pidfd is readable), and returns the job it was
    /// running with the error that job fails with.
    ///
    /// Its process group is killed first: what its tasks forked does not outlive it (a
    /// process that left the group, with `setsid`, escapes).
    pub(crate) fn reap(self, link: &ServerLink) -> Option<(Job, Error)> {
        sys::kill_worker_group(self.pid);
        let reaped = link.reap(self.pid);
        // Once the pool killed it, the reason is the cause: the worker may have exited on its
        // own in the instant before the kill (at the end of its socket), but it was broken.
        let exit = match (reaped, self.killed_for) {
            (_, Some(reason)) => reason,
            (Ok(exit), None) => exit,
            (Err(_), None) => WorkerExit::Unknown,
        };
        let pid = self.pid;
        self.running
            .map(|job| (job, Error::new(ErrorKind::WorkerDied { pid, exit })))
    }

    /// Takes the job it was running back, to fail it otherwise (the dispatcher gives up).
    pub(crate) fn take_running(&mut self) -> Option<Job> {
        self.running.take()
    }
}
