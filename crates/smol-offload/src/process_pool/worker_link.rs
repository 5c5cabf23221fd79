//! [`WorkerLink`]: the parent's end of one worker process, with the jobs sent to it.
//!
//! A link is owned by one party at a time: the dispatcher, or a task that was lent the idle
//! worker (see [`loan`](super::loan)). Whoever owns it sends requests and reads replies; only
//! the dispatcher ever closes it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::Async;

use crate::process_pool::job::Job;
use crate::process_pool::out_of_line::{self, FdReader};
use crate::process_pool::server::Spawned;
use crate::process_pool::wire::{self, Malformed, Reply, ReplyReader};
use crate::sys;

/// A job sent to a worker, kept until its reply comes: if the worker dies before it starts the
/// job, the job goes to another worker.
pub(crate) struct InFlight {
    id: u64,
    pub(crate) job: Job,
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
}

/// The parent's end of one worker.
pub(crate) struct WorkerLink {
    pub(crate) pid: u32,
    /// Registered with the smol reactor, so that a task awaiting a reply can sleep on it. The
    /// socket stays in blocking mode: reads pass `MSG_DONTWAIT`, and writes block.
    pub(crate) stream: Arc<Async<UnixStream>>,
    /// Readable once the worker process has exited, whoever holds its socket: the dispatcher
    /// watches it, since the socket alone may outlive the worker (a process the task forked
    /// holds a copy) or end while it lives (the task closed it).
    pub(crate) pidfd: Arc<OwnedFd>,
    replies: ReplyReader,
    /// The jobs sent to it, in order: it runs the first and has not started the others.
    pub(crate) in_flight: VecDeque<InFlight>,
    /// When the first job in flight began (as far as the parent can tell).
    head_since: Instant,
    /// Request frames to send in one write.
    outbox: Vec<u8>,
    /// The memfds of the shared arguments in the outbox, each with the offset of its frame.
    attached: Vec<(usize, OwnedFd)>,
    next_id: u64,
}

impl WorkerLink {
    /// Wraps a freshly forked worker's socket and pidfd.
    pub(crate) fn new(spawned: Spawned) -> io::Result<WorkerLink> {
        Ok(WorkerLink {
            pid: spawned.pid,
            stream: Arc::new(Async::new_nonblocking(spawned.stream)?),
            pidfd: spawned.pidfd,
            replies: ReplyReader::default(),
            in_flight: VecDeque::new(),
            head_since: Instant::now(),
            outbox: Vec::new(),
            attached: Vec::new(),
            next_id: 0,
        })
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Queues `job`'s request for the next [`flush`](WorkerLink::flush).
    pub(crate) fn assign(&mut self, job: Job) {
        let id = self.next_id;
        self.next_id += 1;
        // A large argument goes through shared memory (through the socket if the memfd could
        // not be made).
        let shared = (job.arg.len() > out_of_line::THRESHOLD)
            .then(|| sys::sealed_memfd(&job.arg).ok())
            .flatten();
        match shared {
            Some(fd) => {
                let start = self.outbox.len();
                let size = job.arg.len();
                wire::write_shared_request(&mut self.outbox, id, job.call, job.options, size);
                self.attached.push((start, fd));
            }
            None => wire::write_request(&mut self.outbox, id, job.call, job.options, &job.arg),
        }
        if self.in_flight.is_empty() {
            self.head_since = Instant::now();
        }
        self.in_flight.push_back(InFlight { id, job });
    }

    /// Sends the queued requests, blocking until the socket took them all.
    ///
    /// An error means the worker is gone, and that the last request queued did not reach it.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        let stream = self.stream.get_ref();
        let mut sent = 0;
        let mut result = Ok(());
        for (start, fd) in self.attached.drain(..) {
            let end = start + wire::SHARED_REQUEST_FRAME;
            result = out_of_line::send_all(stream, &self.outbox[sent..start]).and_then(|()| {
                out_of_line::send_with_fd(stream, &self.outbox[start..end], fd.as_fd())
            });
            if result.is_err() {
                break;
            }
            sent = end;
        }
        if result.is_ok() {
            result = out_of_line::send_all(stream, &self.outbox[sent..]);
        }
        self.outbox.clear();
        self.attached.clear();
        result
    }

    /// Takes the last job assigned back, after a [`flush`](WorkerLink::flush) that failed: it
    /// never reached the worker.
    pub(crate) fn take_back_last(&mut self) -> Option<Job> {
        self.in_flight.pop_back().map(|in_flight| in_flight.job)
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
        open
    }

    /// The length of the reply frame being read, once its length prefix is in.
    pub(crate) fn next_reply_len(&self) -> Option<usize> {
        self.replies.next_frame_len()
    }

    /// The next reply among the bytes [`receive`](WorkerLink::receive) read.
    pub(crate) fn next_incoming(&mut self) -> Incoming {
        let expected = self.in_flight.front().map(|in_flight| in_flight.id);
        match self.replies.next_reply(expected) {
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
