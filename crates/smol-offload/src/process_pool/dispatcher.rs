//! The parent side of a process pool: one thread, blocked in `poll(2)` on an eventfd and the
//! workers' sockets, that hands queued jobs to idle workers and turns replies into task results.
//!
//! Submitters push a job on the queue and write the eventfd only when the dispatcher is about
//! to sleep with an idle worker, so a burst of submissions costs one wake-up, not one each.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{MsgFlags, recv};
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, WorkerExit};
use crate::process_pool::server::{self, ServerLink};
use crate::process_pool::wire::{self, Reply, ReplyReader};
use crate::stats::Counters;
use crate::sys::{CallStatus, ErasedCall};
use crate::task::Promise;

/// One submitted call, waiting for a worker.
pub(crate) struct Job {
    pub(crate) call: ErasedCall,
    pub(crate) arg: Vec<u8>,
    pub(crate) completion: Box<dyn Completion>,
}

/// The typed end of a job: decides whether it may start and decodes its reply.
pub(crate) trait Completion: Send {
    fn start(&self) -> bool;
    fn finish(self: Box<Self>, reply: Reply);
    fn fail(self: Box<Self>, error: Error);
}

impl<R: DeserializeOwned + Send> Completion for Promise<R> {
    fn start(&self) -> bool {
        Promise::start(self)
    }

    fn finish(self: Box<Self>, reply: Reply) {
        let text = || String::from_utf8_lossy(&reply.payload).into_owned();
        let result = match reply.status {
            // The user's `Deserialize` runs here, on the dispatcher: its panic is the task's.
            CallStatus::Returned => panic::catch_unwind(AssertUnwindSafe(|| {
                postcard::from_bytes(&reply.payload).map_err(|err| {
                    Error::codec("deserialize the result", err.to_string(), Some(err))
                })
            }))
            .unwrap_or_else(|payload| Err(Error::from_panic(payload))),
            CallStatus::Panicked => Err(Error::new(ErrorKind::Panic(text()))),
            CallStatus::BadArgument => Err(Error::codec(
                "deserialize the argument in the worker",
                text(),
                None,
            )),
            CallStatus::BadResult => Err(Error::codec(
                "serialize the result in the worker",
                text(),
                None,
            )),
        };
        // An unread value (its task was dropped) is dropped here, and its destructor may panic.
        let _ = panic::catch_unwind(AssertUnwindSafe(move || self.complete(result)));
    }

    fn fail(self: Box<Self>, error: Error) {
        self.complete(Err(error));
    }
}

/// What the pool's handles and its dispatcher share.
pub(crate) struct Shared {
    queue: Mutex<VecDeque<Job>>,
    wake: EventFd,
    /// Set by the dispatcher just before it sleeps with an idle worker: the next submitter
    /// must wake it.
    sleeping_idle: AtomicBool,
    closed: AtomicBool,
    /// Set when no worker could be kept alive: the pool refuses work.
    broken: AtomicBool,
    pids: Mutex<Vec<u32>>,
    pub(crate) counters: Counters,
}

impl Shared {
    pub(crate) fn new() -> io::Result<Shared> {
        Ok(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
            sleeping_idle: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            pids: Mutex::new(Vec::new()),
            counters: Counters::default(),
        })
    }

    /// Queues a job, waking the dispatcher if it sleeps with an idle worker.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        {
            // `broken` is set under this lock before the queue is drained for the last time,
            // so no job can slip in after that drain.
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            if self.broken.load(Ordering::Acquire) {
                return Err(job);
            }
            self.counters.submitted();
            queue.push_back(job);
        }
        if self.sleeping_idle.swap(false, Ordering::SeqCst) {
            self.wake_dispatcher();
        }
        Ok(())
    }

    /// Tells the dispatcher that the last pool handle is gone.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake_dispatcher();
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn wake_dispatcher(&self) {
        // A full eventfd counter still wakes the poller; nothing else can fail here.
        let _ = self.wake.write(1);
    }

    /// Refuses new work from now on; the caller then fails what is queued.
    fn break_pool(&self) {
        let _queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        self.broken.store(true, Ordering::Release);
    }

    /// The oldest queued job, if `fits` accepts it.
    fn pop_if(&self, fits: impl Fn(&Job) -> bool) -> Option<Job> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.front().is_some_and(fits) {
            queue.pop_front()
        } else {
            None
        }
    }

    fn pop(&self) -> Option<Job> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    fn has_queued(&self) -> bool {
        self.queued() > 0
    }

    fn queued(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A task shorter than this is short: the pool may send short tasks ahead to busy workers.
const SHORT_TASK: Duration = Duration::from_micros(200);
/// How many tasks a worker may hold at once, the one it runs included, when tasks are short.
const PIPELINE_DEPTH: usize = 16;
/// The largest argument sent to a busy worker. The dispatcher writes with blocking sends, and a
/// busy worker is not reading: what is sent ahead must fit in the socket's buffer (16 frames of
/// at most 4 KiB), or the dispatcher and a worker writing its reply would wait for each other.
const SEND_AHEAD_LIMIT: usize = 4 * 1024;

/// A job sent to a worker, kept until its reply comes: if the worker dies before it starts the
/// job, the job goes to another worker.
struct InFlight {
    id: u64,
    job: Job,
}

/// A worker as the dispatcher sees it.
struct Worker {
    pid: u32,
    stream: UnixStream,
    replies: ReplyReader,
    /// The jobs sent to it, in order: it runs the first and has not started the others.
    in_flight: VecDeque<InFlight>,
    /// When the first job in flight began (as far as the dispatcher can tell).
    head_since: Instant,
    /// Request frames to send in one write.
    outbox: Vec<u8>,
}

impl Worker {
    fn new((pid, stream): (u32, UnixStream)) -> Worker {
        Worker {
            pid,
            stream,
            replies: ReplyReader::default(),
            in_flight: VecDeque::new(),
            head_since: Instant::now(),
            outbox: Vec::new(),
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

/// Forks `count` workers on the server.
pub(crate) fn spawn_workers(link: &ServerLink, count: usize) -> io::Result<Vec<(u32, UnixStream)>> {
    (0..count).map(|_| server::spawn_worker(link)).collect()
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
    workers: Vec<Worker>,
    /// Jobs that were sent to a worker that died before starting them: they go first.
    retry: VecDeque<Job>,
    /// A moving average of how long a task takes, reply to reply.
    typical_task: Option<Duration>,
    next_id: u64,
}

impl Dispatcher {
    pub(crate) fn new(
        shared: Arc<Shared>,
        link: &'static ServerLink,
        workers: Vec<(u32, UnixStream)>,
    ) -> Dispatcher {
        *shared.pids.lock().unwrap_or_else(PoisonError::into_inner) =
            workers.iter().map(|(pid, _)| *pid).collect();
        let workers = workers.into_iter().map(Worker::new).collect();
        Dispatcher {
            shared,
            link,
            workers,
            retry: VecDeque::new(),
            typical_task: None,
            next_id: 0,
        }
    }

    /// Runs until the last pool handle is dropped and the jobs sent to workers are done.
    pub(crate) fn run(mut self) {
        loop {
            let closed = self.shared.closed.load(Ordering::SeqCst);
            if closed {
                self.fail_waiting_jobs();
                if self
                    .workers
                    .iter()
                    .all(|worker| worker.in_flight.is_empty())
                {
                    break;
                }
            } else {
                self.hand_out_jobs();
            }
            if self.workers.is_empty() {
                self.shared.break_pool();
                self.fail_waiting_jobs();
                break;
            }
            let idle = self
                .workers
                .iter()
                .any(|worker| worker.in_flight.is_empty());
            if !closed && idle {
                self.shared.sleeping_idle.store(true, Ordering::SeqCst);
                if self.shared.has_queued() {
                    self.shared.sleeping_idle.store(false, Ordering::SeqCst);
                    continue;
                }
            }
            let ready = match self.wait_for_events() {
                Ok(ready) => ready,
                Err(_) => {
                    self.shared.break_pool();
                    self.fail_waiting_jobs();
                    break;
                }
            };
            self.shared.sleeping_idle.store(false, Ordering::SeqCst);
            for index in ready.into_iter().rev() {
                self.read_replies(index);
            }
        }
        self.shut_down_workers();
    }

    /// Sleeps in `poll` until the eventfd or a worker has something; returns the indices of the
    /// workers to read.
    fn wait_for_events(&self) -> io::Result<Vec<usize>> {
        let ready = {
            let mut fds = Vec::with_capacity(self.workers.len() + 1);
            fds.push(PollFd::new(self.shared.wake.as_fd(), PollFlags::POLLIN));
            for worker in &self.workers {
                fds.push(PollFd::new(worker.stream.as_fd(), PollFlags::POLLIN));
            }
            loop {
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => break,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(err) => return Err(err.into()),
                }
            }
            fds.iter()
                .map(|fd| fd.revents().is_some_and(|events| !events.is_empty()))
                .collect::<Vec<_>>()
        };
        if ready[0] {
            let _ = self.shared.wake.read();
        }
        Ok((0..self.workers.len())
            .filter(|&index| ready[index + 1])
            .collect())
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
            if self.workers[index].in_flight.is_empty() {
                let Some(job) = self.next_job(false) else {
                    break;
                };
                self.assign(index, job);
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
                        self.assign(index, job);
                    }
                }
            }
        }
        for index in (0..self.workers.len()).rev() {
            let worker = &mut self.workers[index];
            if worker.outbox.is_empty() {
                continue;
            }
            let sent = send_all(&worker.stream, &worker.outbox);
            worker.outbox.clear();
            if sent.is_err() {
                // The worker is gone: its first job fails with its exit status.
                self.replace_worker(index, false);
            }
        }
    }

    fn assign(&mut self, index: usize, job: Job) {
        let id = self.next_id;
        self.next_id += 1;
        let worker = &mut self.workers[index];
        wire::write_request(&mut worker.outbox, id, job.call, &job.arg);
        if worker.in_flight.is_empty() {
            worker.head_since = Instant::now();
        }
        worker.in_flight.push_back(InFlight { id, job });
    }

    fn read_replies(&mut self, index: usize) {
        let worker = &mut self.workers[index];
        let open = worker.replies.fill(&mut Available(&worker.stream));
        loop {
            let expected = worker.in_flight.front().map(|in_flight| in_flight.id);
            match worker.replies.next_reply() {
                Ok(Some(reply)) if Some(reply.id) == expected => {
                    let done = worker.in_flight.pop_front().expect("checked just above");
                    let now = Instant::now();
                    let took = now - worker.head_since;
                    worker.head_since = now;
                    self.typical_task = Some(match self.typical_task {
                        Some(typical) => (typical * 7 + took) / 8,
                        None => took,
                    });
                    self.shared.counters.completed();
                    done.job.completion.finish(reply);
                }
                Ok(None) => break,
                // A reply to no job, or a corrupt frame: this worker cannot be trusted.
                Ok(Some(_)) | Err(_) => {
                    self.replace_worker(index, true);
                    return;
                }
            }
        }
        if !matches!(open, Ok(true)) {
            self.replace_worker(index, false);
        }
    }

    /// The worker at `index` died or broke its stream (`kill` it then): fail the job it was
    /// running with how it ended, give the jobs sent ahead to others, and fork a replacement
    /// unless the pool is closing.
    fn replace_worker(&mut self, index: usize, kill: bool) {
        let mut dead = self.workers.swap_remove(index);
        drop(dead.stream);
        if kill {
            let pid = nix::unistd::Pid::from_raw(dead.pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let exit = self.link.reap(dead.pid).unwrap_or(WorkerExit::Unknown);
        if let Some(running) = dead.in_flight.pop_front() {
            self.shared.counters.completed();
            let error = Error::new(ErrorKind::WorkerDied {
                pid: dead.pid,
                exit,
            });
            running.job.completion.fail(error);
        }
        for (position, waiting) in dead.in_flight.into_iter().enumerate() {
            self.retry.insert(position, waiting.job);
        }
        let mut pids = self
            .shared
            .pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pids.retain(|&pid| pid != dead.pid);
        if !self.shared.closed.load(Ordering::SeqCst)
            && let Ok(spawned) = server::spawn_worker(self.link)
        {
            pids.push(spawned.0);
            self.workers.push(Worker::new(spawned));
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
        for worker in std::mem::take(&mut self.workers) {
            drop(worker.stream);
            if !worker.in_flight.is_empty() {
                // Only when the dispatcher itself failed: do not wait for its tasks.
                let pid = nix::unistd::Pid::from_raw(worker.pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = self.link.reap(worker.pid);
            for in_flight in worker.in_flight {
                in_flight
                    .job
                    .completion
                    .fail(Error::new(ErrorKind::Shutdown));
            }
        }
        self.shared
            .pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
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
