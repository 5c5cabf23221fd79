//! [`WorkerLink`]: the parent's end of one worker process, with the jobs sent to it.
//!
//! A link is owned by one party at a time: the dispatcher, or a task that was lent the idle
//! worker (see [`loan`](super::loan)). Whoever owns it sends requests and reads replies; only
//! the dispatcher ever closes it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::Async;
use nix::sys::socket::{MsgFlags, recv};

use crate::process_pool::job::Job;
use crate::process_pool::server::Spawned;
use crate::process_pool::wire::{self, Malformed, Reply, ReplyReader};

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
        wire::write_request(&mut self.outbox, id, job.call, job.options, &job.arg);
        if self.in_flight.is_empty() {
            self.head_since = Instant::now();
        }
        self.in_flight.push_back(InFlight { id, job });
    }

    /// Sends the queued requests, blocking until the socket took them all.
    ///
    /// An error means the worker is gone, and that the last request queued did not reach it.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        let sent = send_all(self.stream.get_ref(), &self.outbox);
        self.outbox.clear();
        sent
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
        matches!(
            self.replies
                .fill(&mut Available(self.stream.get_ref()), limit),
            Ok(true)
        )
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

/// Reads what a socket has without blocking, leaving the socket itself blocking for writes.
struct Available<'a>(&'a UnixStream);

impl Read for Available<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(recv(self.0.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT)?)
    }
}

fn send_all(stream: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match nix::sys::socket::send(stream.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    let mut stream = stream;
    stream.flush()
}
