//! [`WorkerLink`]: the parent's end of one worker process, with the jobs sent to it, and
//! [`Loan`], the link lent to one task while the worker is idle. Whoever owns a link, the
//! dispatcher or a task, sends requests and reads replies; only the dispatcher closes it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use async_io::Async;
use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags};

use crate::process_pool::job::Job;
use crate::process_pool::out_of_line::{self, OutArena};
use crate::process_pool::server::Spawned;
use crate::process_pool::wire::FdReader;
use crate::process_pool::wire::{self, Malformed, OutOfLine, Reply, ReplyReader};
use crate::process_pool::worker::Claims;
use crate::sys::{self, CallStatus, ErasedCall};

/// A job sent to a worker, kept until its reply comes: if the worker dies before it starts the
/// job, the job goes to another worker.
pub(crate) struct InFlight {
    id: u64,
    pub(crate) job: Job,
    /// Whether its argument is in the worker's request arena, which is not to be written
    /// again until the worker ran the job (or it was taken back).
    in_arena: bool,
}

/// What the bytes read from a worker hold next.
pub(crate) enum Incoming {
    /// The reply to the oldest job in flight, with that job and how long it took, as far as the
    /// parent can tell.
    Reply(Job, Reply, Duration),
    /// No complete reply yet.
    Nothing,
    /// Bytes that are no reply to the job the worker runs: the worker cannot be trusted.
    Corrupt(Malformed),
    /// The pool's initializer returned: the worker may take jobs.
    Initialized,
    /// The pool's initializer panicked (or could not decode its argument), saying this: the
    /// worker is of no use.
    InitializerFailed(String),
}

/// The parent's end of one worker.
pub(crate) struct WorkerLink {
    pub(crate) pid: u32,
    /// Registered with the smol reactor, for a task awaiting a reply to sleep on, but in
    /// blocking mode: reads pass `MSG_DONTWAIT`, and writes block.
    pub(crate) stream: Arc<Async<UnixStream>>,
    /// Readable once the worker process has exited: its socket may outlive it (a process the
    /// task forked holds a copy) or end while it lives (the task closed it).
    pub(crate) pidfd: Arc<OwnedFd>,
    /// Which of the jobs sent it started: see [`take_back_unstarted`](Self::take_back_unstarted).
    claims: Claims,
    replies: ReplyReader,
    /// The jobs sent to it, in order: it runs the first and has not started the others.
    pub(crate) in_flight: VecDeque<InFlight>,
    /// When the first job in flight began (as far as the parent can tell).
    head_since: Instant,
    /// Request frames to send in one write.
    outbox: Vec<u8>,
    /// The memfds of the shared arguments in the outbox, each with the bytes of its frame.
    attached: Vec<(std::ops::Range<usize>, OwnedFd)>,
    /// The worker's request arena, which this side writes.
    arena: OutArena,
    /// How many replies the worker was told were read out of its reply arena.
    arena_replies_read: u64,
    next_id: u64,
    /// How many more jobs it may be sent, with `max_tasks_per_worker`; `None`: no limit.
    tasks_left: Option<usize>,
    /// The id of the initializer's request while the worker runs it: it takes no job until
    /// the initializer returned.
    initializing: Option<u64>,
}

impl WorkerLink {
    /// Wraps a freshly forked worker's socket and pidfd.
    pub(crate) fn new(spawned: Spawned) -> io::Result<WorkerLink> {
        Ok(WorkerLink {
            pid: spawned.pid,
            stream: Arc::new(Async::new_nonblocking(spawned.stream)?),
            pidfd: spawned.pidfd,
            claims: spawned.claims,
            replies: ReplyReader::default(),
            in_flight: VecDeque::new(),
            head_since: Instant::now(),
            outbox: Vec::new(),
            attached: Vec::new(),
            arena: OutArena::default(),
            arena_replies_read: 0,
            next_id: 0,
            tasks_left: None,
            initializing: None,
        })
    }

    /// Queues the request that runs the pool's initializer `call(arg)`, for the next
    /// [`flush`](WorkerLink::flush); the worker takes no job until its reply.
    pub(crate) fn initialize(&mut self, call: ErasedCall, options: wire::CallOptions, arg: &[u8]) {
        debug_assert!(self.in_flight.is_empty(), "initialized before any job");
        let id = self.next_id;
        self.next_id += 1;
        wire::write_request(&mut self.outbox, id, call, options, None, arg);
        self.initializing = Some(id);
        self.head_since = Instant::now();
    }

    /// When it was sent the initializer, while it runs it.
    pub(crate) fn initializing_since(&self) -> Option<Instant> {
        self.initializing.map(|_| self.head_since)
    }

    /// True while the worker runs the pool's initializer.
    pub(crate) fn is_initializing(&self) -> bool {
        self.initializing.is_some()
    }

    /// Limits the jobs it will be sent to `budget`, after which it is to be replaced.
    pub(crate) fn limit_tasks(&mut self, budget: Option<usize>) {
        self.tasks_left = budget;
    }

    /// Whether it may be sent one more job.
    pub(crate) fn can_take(&self) -> bool {
        self.initializing.is_none() && self.tasks_left != Some(0)
    }

    /// True once it ran every job it may be sent: it is to be replaced.
    pub(crate) fn is_spent(&self) -> bool {
        self.tasks_left == Some(0) && self.in_flight.is_empty()
    }

    /// When the job it runs began, as far as the parent can tell (never earlier than it did);
    /// `None` while it is idle.
    pub(crate) fn running_since(&self) -> Option<Instant> {
        (!self.in_flight.is_empty()).then_some(self.head_since)
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Idle, and it may be sent a job.
    pub(crate) fn is_free(&self) -> bool {
        self.is_idle() && self.can_take()
    }

    /// Queues `job`'s request for the next [`flush`](WorkerLink::flush).
    pub(crate) fn assign(&mut self, job: Job) {
        debug_assert!(self.can_take(), "a spent worker was sent a job");
        if let Some(left) = &mut self.tasks_left {
            *left = left.saturating_sub(1);
        }
        let id = self.next_id;
        self.next_id += 1;
        let place = self.place_argument(&job.arg);
        let in_arena = matches!(place, Some((OutOfLine::Arena { .. }, _)));
        match place {
            Some((place, fd)) => {
                let start = self.outbox.len();
                let (size, context) = (job.arg.len(), job.context.get());
                let len = wire::write_shared_request(
                    &mut self.outbox,
                    id,
                    job.call,
                    job.options,
                    context,
                    size,
                    place,
                );
                if let Some(fd) = fd {
                    self.attached.push((start..start + len, fd));
                }
            }
            None => wire::write_request(
                &mut self.outbox,
                id,
                job.call,
                job.options,
                job.context.get(),
                &job.arg,
            ),
        }
        if self.in_flight.is_empty() {
            self.head_since = Instant::now();
        }
        self.in_flight.push_back(InFlight { id, job, in_arena });
    }

    /// Puts a large argument in the worker's request arena when it fits and no job in flight has
    /// its argument there (see [`OutArena`]), else in a fresh sealed memfd. Returns where, with
    /// the descriptor to attach; `None` through the socket (short, or no memfd could be made).
    fn place_argument(&mut self, arg: &[u8]) -> Option<(OutOfLine, Option<OwnedFd>)> {
        if arg.len() <= out_of_line::THRESHOLD {
            return None;
        }
        if out_of_line::fits_in_arena(arg.len())
            && !self.in_flight.iter().any(|job| job.in_arena)
            && let Ok(fd) = self.arena.write(arg)
        {
            return Some((OutOfLine::Arena { new: fd.is_some() }, fd));
        }
        let fd = sys::sealed_memfd(arg).ok()?;
        Some((OutOfLine::Sealed, Some(fd)))
    }

    /// Sends the queued requests, blocking until the socket took them all.
    ///
    /// An error means the worker is gone, and that the last request queued did not reach it.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        let (stream, outbox) = (self.stream.get_ref(), &self.outbox);
        let mut sent = 0;
        let result = self
            .attached
            .drain(..)
            .try_for_each(|(frame, fd)| {
                wire::send_all(stream, &outbox[sent..frame.start])?;
                wire::send_with_fd(stream, &outbox[frame.clone()], fd.as_fd())?;
                sent = frame.end;
                Ok(())
            })
            .and_then(|()| wire::send_all(stream, &outbox[sent..]));
        self.outbox.clear();
        self.attached.clear();
        result
    }

    /// Takes the last job assigned back, after a [`flush`](WorkerLink::flush) that failed: it
    /// never reached the worker.
    pub(crate) fn take_back_last(&mut self) -> Option<Job> {
        // Its id was never sent: the next job takes it, as the worker expects.
        self.next_id = self.in_flight.back()?.id;
        self.split_off_from(self.next_id).pop()
    }

    /// For a worker being lost: takes back, in order, the jobs sent to it that it has not
    /// started, and never will (see [`Claims`]); those left in flight were started. Call it
    /// with every request flushed and the replies read. The oldest in flight, taken back,
    /// counts the loss (`Job::lost`): for all its word tells, the worker may have been running
    /// it (it starts a job only after its reply to the one before, which was read).
    pub(crate) fn take_back_unstarted(&mut self) -> Vec<Job> {
        debug_assert!(self.outbox.is_empty(), "requests not sent yet");
        let first_revoked = self.claims.revoke_unstarted(self.next_id);
        let mut unstarted = self.split_off_from(first_revoked);
        if self.in_flight.is_empty()
            && let Some(oldest) = unstarted.first_mut()
        {
            oldest.lost += 1;
        }
        unstarted
    }

    /// For a worker the pool keeps: takes back, in order, the jobs sent ahead to it that it has
    /// not started, but only once it started the oldest in flight, which stays whatever its
    /// word says (see [`Claims::revoke_unstarted_after`]). Call it with every request flushed.
    pub(crate) fn take_back_sent_ahead(&mut self) -> Vec<Job> {
        debug_assert!(self.outbox.is_empty(), "requests not sent yet");
        let Some(oldest) = self.in_flight.front() else {
            return Vec::new();
        };
        match self.claims.revoke_unstarted_after(oldest.id, self.next_id) {
            Some(first_revoked) => self.split_off_from(first_revoked),
            None => Vec::new(),
        }
    }

    /// Takes the jobs from id `first` on out of flight: revoked or never sent, it will never run
    /// them, and they do not count against its budget.
    fn split_off_from(&mut self, first: u64) -> Vec<Job> {
        let started = self
            .in_flight
            .iter()
            .take_while(|in_flight| in_flight.id < first)
            .count();
        let unstarted = self.in_flight.split_off(started);
        if let Some(left) = &mut self.tasks_left {
            *left += unstarted.len();
        }
        unstarted
            .into_iter()
            .map(|in_flight| in_flight.job)
            .collect()
    }

    /// Reads what the socket holds without blocking. Returns `false` at the end of the stream
    /// or on an error: the worker is gone, once the replies already read are taken.
    pub(crate) fn receive(&mut self) -> bool {
        self.receive_up_to(usize::MAX)
    }

    /// Like [`receive`](WorkerLink::receive), but stops once `limit` bytes wait to be taken.
    pub(crate) fn receive_up_to(&mut self, limit: usize) -> bool {
        let mut input = FdReader::available(self.stream.get_ref());
        let open = matches!(self.replies.fill(&mut input, limit), Ok(true));
        for fd in input.fds {
            self.replies.push_fd(fd);
        }
        if input.overflowed {
            self.replies
                .refuse("more descriptors than shared-memory replies");
        }
        open
    }

    /// For a worker that runs nothing: true when it sent nothing since its last reply and its
    /// socket is open, as it should be; false when it must be read (and let go) before it is
    /// sent a job. Costs one system call: a one-byte peek that finds the socket empty.
    pub(crate) fn is_silent(&self) -> bool {
        if !self.replies.is_empty() {
            return false;
        }
        let mut byte = [0; 1];
        let peeked = socket::recv(
            self.stream.get_ref().as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK,
        );
        // Bytes (`Ok(1)`) or the end of the stream (`Ok(0)`) speak; so does an error, to be safe:
        // the dispatcher reads the worker and finds out.
        matches!(peeked, Err(Errno::EAGAIN))
    }

    /// The next reply among the bytes [`receive`](WorkerLink::receive) read.
    pub(crate) fn next_incoming(&mut self) -> Incoming {
        let expected = self
            .initializing
            .or_else(|| self.in_flight.front().map(|in_flight| in_flight.id));
        let mut reply = self.replies.next_reply(expected);
        if let Ok(Some(_)) = reply
            && let Some(word) = self.claims.claimed_beyond(self.next_id)
        {
            // Checked at each reply: a worker that wrote over its claim page would skip every
            // job sent to it from now on, and those would wait forever. Its job fails with it.
            let why = format!(
                "a claim word of {word}, past the {} jobs it was sent (it wrote over the memory \
                 it shares with the pool)",
                self.next_id
            );
            self.replies.refuse(&why);
            reply = Err(Malformed(why));
        }
        if self.replies.take_request_arena_retained() {
            // The worker still reads the arena: this side lets go of it, and the next large
            // argument makes a new one.
            self.arena = OutArena::default();
        }
        let arena_replies_read = self.replies.arena_replies_read();
        if arena_replies_read != self.arena_replies_read {
            // Copied out of the worker's arena: it may write the next reply there.
            self.arena_replies_read = arena_replies_read;
            self.claims.set_arena_replies_read(arena_replies_read);
        }
        match reply {
            Ok(Some(reply)) if self.initializing.is_some() => {
                self.initializing = None;
                match reply.status {
                    CallStatus::Returned => Incoming::Initialized,
                    _ => Incoming::InitializerFailed(
                        String::from_utf8_lossy(&reply.payload.as_slice()).into_owned(),
                    ),
                }
            }
            Ok(Some(reply)) => {
                let done = self.in_flight.pop_front().expect("checked just above");
                let now = Instant::now();
                let took = now - self.head_since;
                self.head_since = now;
                Incoming::Reply(done.job, reply, took)
            }
            Ok(None) => Incoming::Nothing,
            Err(malformed) => Incoming::Corrupt(malformed),
        }
    }
}

// [`Loan`]: an idle worker lent to one task, whose submitting thread writes the request and
// whose awaiting thread reads the reply (see [`LoanAssist`](super::shared::LoanAssist)): a lone
// call costs two wake-ups, as a bare pipe, where the dispatcher adds two more. The dispatcher
// watches lent workers for their end, and takes a loan back when jobs are queued (a task
// nobody polls cannot keep its worker from them) or the pool closes. A loan's lock comes first
// in the pool's lock order (see [`shared`](super::shared)).

/// The longest reply a task reads itself, on the thread that awaits it.
const DIRECT_REPLY_LIMIT: usize = 64 * 1024;

/// The largest payload in shared memory that a task maps and decodes itself: one `mmap`, and
/// at most one copy (none for a [`ByteBuf`](crate::ByteBuf), read in place), cost less than the
/// two thread wake-ups of a detour through the dispatcher.
const DIRECT_SHARED_LIMIT: usize = 4 * 1024 * 1024;

/// Sets `slot` to `waker`, if given and not one that wakes the same task.
pub(crate) fn remember(slot: &mut Option<Waker>, waker: Option<&Waker>) {
    if let Some(waker) = waker
        && !slot.as_ref().is_some_and(|old| old.will_wake(waker))
    {
        *slot = Some(waker.clone());
    }
}

/// A worker lent to one task, until its reply is read.
pub(crate) struct Loan {
    state: Mutex<LoanState>,
}

/// What a loan holds, under its lock.
pub(crate) struct LoanState {
    /// The worker, sent its job; `None` before and once it went back to the pool.
    pub(crate) worker: Option<WorkerLink>,
    /// The waker the task registered last: it is woken when the worker's socket has data.
    pub(crate) waker: Option<Waker>,
}

/// What [`LoanState::read_reply`] found.
pub(crate) enum LoanRead {
    /// Nothing to do yet: the waker given (or the one remembered) is woken when there is. Or
    /// the dispatcher took the worker back already, and completes the job.
    Pending,
    /// The loan is over: take the worker back to the pool. It carries the job's reply when the
    /// task read it; without one, the dispatcher reads it (a long reply), or fails the job (the
    /// worker ended or broke its stream).
    Over(Option<(Job, Reply)>),
}

impl Loan {
    /// A loan with no worker yet: lock it, register it, send the request, then put the worker
    /// in it.
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
    /// Reads what the worker sent, without blocking. `waker` (or, without one, the waker
    /// remembered from an earlier call) is woken when the socket has more.
    pub(crate) fn read_reply(&mut self, waker: Option<&Waker>) -> LoanRead {
        remember(&mut self.waker, waker);
        let LoanState {
            worker,
            waker: last_waker,
        } = self;
        let Some(link) = worker.as_mut() else {
            return LoanRead::Pending;
        };
        loop {
            let open = link.receive_up_to(DIRECT_REPLY_LIMIT);
            // A long reply is read and decoded on the dispatcher's thread, not on the thread
            // of an event loop; one whose payload is in shared memory too above
            // `DIRECT_SHARED_LIMIT`, although its frame is short.
            let limit = if link.replies.next_frame_is_shared() {
                DIRECT_SHARED_LIMIT
            } else {
                DIRECT_REPLY_LIMIT
            };
            if link.replies.next_frame_len() > Some(limit) {
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
                // The worker died or broke its stream (never lent while it runs the
                // initializer): the dispatcher finds out, and fails the job with how it ended.
                _ => LoanRead::Over(None),
            };
        }
    }
}
