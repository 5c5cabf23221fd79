//! [`Shared`]: what a pool's handles, its loans and its dispatcher share, and what runs on the
//! callers' threads: the submit path, and the [`Assist`]s of a task (the work its awaiting side
//! does itself when polled): [`LoanAssist`] reads the reply of a worker lent to the task (see
//! [`Loan`](super::worker_link::Loan)); [`RoomAssist`] (and [`Ready`]) wait for room in a full
//! queue.
//!
//! # Where every worker is
//!
//! Held by the dispatcher, in [`State::idle`] (lent out idle, for a submitter to take), in
//! [`State::returned`] (given back to the dispatcher) or on a loan registered in
//! [`State::loans`]: one place at a time. A worker moves between a loan and these lists with
//! both the loan's lock and the queue lock held, so the dispatcher never loses track of one.
//!
//! # Lock order
//!
//! 1. a loan's lock ([`Loan::lock`]);
//! 2. the queue lock ([`Shared::lock`], the [`State`]);
//! 3. the pid list ([`Shared::pids`]).
//!
//! A lock may be taken while holding one above it in this list, never the reverse. The one
//! exception is [`Shared::submit`] locking a loan it has just created under the queue lock:
//! nobody else can reach that loan yet. The fork server's link has its own lock, shared by
//! every pool of the process, taken only to fork or reap a worker (by the dispatcher, or by
//! `build` on the caller's thread) and never under any of the locks above. A reap is asked for
//! only once the worker has exited, so that lock is never held while a worker runs.
//!
//! # Backpressure
//!
//! With [`queue_limit`](super::ProcessPoolBuilder::queue_limit), a job submitted while the
//! queue is full is not queued, and [`Executor::run`](crate::Executor::run) stays synchronous:
//! its task holds the job, as a [`RoomAssist`], and submits it when polled once there is room;
//! until then, dropping the task drops the job. A producer that awaits [`Ready`] before each
//! `run` holds at most one job outside the queue. A task detached while it waits for room
//! cannot be polled any more: its job goes to an overflow list that moves into the queue, in
//! order, as room frees.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::error::{Error, ErrorKind};
use crate::process_pool::job::Job;
use crate::process_pool::out_of_line;
use crate::process_pool::worker_link::WorkerLink;
use crate::process_pool::worker_link::{Loan, LoanRead, remember};
use crate::stats::{self, Counters, Kind, PoolMetrics};
use crate::task::{Abandon, Assist};

/// What the pool's handles, its loans and its dispatcher share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// The eventfd the dispatcher sleeps on.
    pub(super) wake: EventFd,
    /// Set by the dispatcher, under the state lock, when it sleeps while nothing is queued and
    /// workers are lent out: the next job queued must wake it.
    wake_on_submit: AtomicBool,
    closed: AtomicBool,
    /// Set by the dispatcher, under the state lock, while jobs sent ahead to a busy worker
    /// wait behind the one it runs: a worker given back then goes to the dispatcher, which
    /// hands it those jobs.
    jobs_sent_ahead: AtomicBool,
    /// Set when no worker could be kept alive: the pool refuses work.
    broken: AtomicBool,
    /// Why the pool broke, said to every task it refuses.
    broken_reason: Mutex<Option<String>>,
    pids: Mutex<Vec<u32>>,
    pub(crate) counters: Counters,
    pub(crate) options: PoolOptions,
}

/// Where the jobs and the workers the dispatcher does not hold are.
#[derive(Default)]
pub(super) struct State {
    /// Jobs waiting for a worker, oldest first.
    pub(super) jobs: VecDeque<Job>,
    /// Idle workers the dispatcher lent out while nothing is queued: a submitter may take one.
    pub(super) idle: Vec<WorkerLink>,
    /// Workers given back to the dispatcher: with a job still in flight, or while jobs wait.
    pub(super) returned: Vec<WorkerLink>,
    /// Workers on loan to a task.
    pub(super) loans: Vec<Arc<Loan>>,
    /// With a queue limit: jobs of detached tasks that waited for room, oldest first. They
    /// move into `jobs` as room frees, ahead of any later submission.
    pub(super) overflow: VecDeque<Job>,
    /// With a queue limit: who waits for room in the queue (tasks and `ready()` futures), by
    /// the id they registered with, oldest first. One is woken for each place that frees.
    pub(super) room_waiters: BTreeMap<u64, Waker>,
    /// Waiters woken for a free place that have not looked at the queue since: each stands
    /// for one free place, so that no more are woken than there are places. One that is
    /// dropped without looking passes its place on to the next waiter.
    pub(super) woken_waiters: HashSet<u64>,
    /// The id of the next waiter for room.
    pub(super) next_waiter: u64,
}

impl State {
    /// Removes `loan` from the loans in progress.
    pub(super) fn forget(&mut self, loan: &Arc<Loan>) {
        self.loans.retain(|other| !Arc::ptr_eq(other, loan));
    }
}

/// How [`Shared::submit`] placed a job.
pub(crate) enum Placed {
    /// In the queue, for the dispatcher.
    Queued,
    /// Sent straight to an idle worker, lent to the task until it reads the reply.
    Lent(Arc<Loan>),
    /// Not placed: the queue is at its limit. The waker given, if any, is woken when room
    /// frees.
    Full(Job),
}

/// The largest argument sent through the socket straight to an idle worker from the
/// submitting thread: the send blocks, but an idle worker's empty socket buffer takes it at once.
const DIRECT_SEND_LIMIT: usize = 64 * 1024;

/// Whether an argument of `len` bytes may be sent straight to an idle worker from the
/// submitting thread: one short enough for the socket, or one for shared memory, whose frame
/// is short (written into a memfd outside the queue's lock). Others go through the dispatcher.
fn sent_directly(len: usize) -> bool {
    len <= DIRECT_SEND_LIMIT || len > out_of_line::THRESHOLD
}

impl Shared {
    #[cfg(test)]
    pub(crate) fn new() -> io::Result<Shared> {
        Shared::with_options(PoolOptions::default())
    }

    pub(crate) fn with_options(options: PoolOptions) -> io::Result<Shared> {
        Ok(Shared {
            state: Mutex::new(State::default()),
            wake: EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
            wake_on_submit: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            jobs_sent_ahead: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            broken_reason: Mutex::new(None),
            pids: Mutex::new(Vec::new()),
            counters: Counters::new(PoolMetrics::new(
                options.name.as_deref().unwrap_or(stats::UNNAMED),
                Kind::Process,
            )),
            options,
        })
    }

    /// The queue lock (second in the lock order).
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a job straight to an idle worker if nothing is queued, else queues it, waking the
    /// dispatcher if it sleeps with workers lent out. Gives the job back if the pool is broken.
    ///
    /// The job's task must not have been handed out yet: a job sent straight away is started
    /// without asking whether it was cancelled.
    pub(crate) fn submit(&self, job: Job) -> Result<Placed, Job> {
        self.submit_or_wait(job, None)
    }

    /// Like [`submit`](Shared::submit), but when the queue is at its limit, gives the job back
    /// as [`Placed::Full`] and registers `waker` (as waiter `waiter`) to be woken when room
    /// frees. Also gives the job back once the pool is closed.
    pub(crate) fn submit_or_wait(
        &self,
        job: Job,
        waiter: Option<(u64, &Waker)>,
    ) -> Result<Placed, Job> {
        let mut state = self.lock();
        // `broken` is set under this lock before the queue is drained for the last time, so no
        // job can slip in after that drain.
        if self.broken.load(Ordering::Acquire) || self.is_closed() {
            return Err(job);
        }
        if let Some(limit) = self.options.queue_limit
            && (state.jobs.len() >= limit || !state.overflow.is_empty())
        {
            if let Some((id, waker)) = waiter {
                state.woken_waiters.remove(&id);
                register_waiter(&mut state, id, waker);
            }
            return Ok(Placed::Full(job));
        }
        let was_woken = waiter.is_some_and(|(id, _)| state.woken_waiters.remove(&id));
        self.counters.submitted();
        if state.jobs.is_empty()
            && sent_directly(job.arg.len())
            && let Some(worker) = state.idle.pop()
        {
            // Woken for a place it does not take: the place goes to the next waiter.
            let wakers = if was_woken {
                self.room_wakers(&mut state)
            } else {
                Vec::new()
            };
            let placed = self.lend(state, worker, job);
            wakers.into_iter().for_each(Waker::wake);
            return Ok(placed);
        }
        state.jobs.push_back(job);
        drop(state);
        self.wake_if_armed();
        Ok(Placed::Queued)
    }

    /// Sends `job` to the idle `worker` from this thread, and lends the worker to the job's task.
    fn lend(&self, mut state: MutexGuard<'_, State>, mut worker: WorkerLink, job: Job) -> Placed {
        let started = job.completion.start();
        debug_assert!(started, "nobody holds the task yet");
        // Registered before the queue lock is released, so that the dispatcher always knows
        // where every worker is, and locked until the request is sent, so that it cannot take
        // the worker back in between (locked under the queue lock: nobody else can reach it).
        let loan = Loan::new();
        let mut lent = loan.lock();
        state.loans.push(loan.clone());
        // Counted under the lock, as the dispatcher's picks are, so that `stats()` never counts
        // a job that went straight to a worker as queued.
        self.counters.picked();
        drop(state);
        // An idle worker says nothing until it is sent a job: bytes from it now come from what
        // an earlier task left running (a thread, a process it forked), and this job would fail
        // for them. Looked at outside the queue lock, as the job is assigned (a large argument
        // is copied into a memfd here); nobody else can reach the worker or its loan meanwhile.
        let job = if worker.is_silent() {
            worker.assign(job);
            if worker.flush().is_ok() {
                lent.worker = Some(worker);
                if self.options.task_timeout.is_some() {
                    // The dispatcher sleeps without a deadline for this job: it must arm one.
                    self.wake_dispatcher();
                }
                return Placed::Lent(loan.clone());
            }
            // The worker is gone and the job never reached it.
            worker.take_back_last().expect("a job was assigned")
        } else {
            job
        };
        // Queue the job for another worker, and let the dispatcher replace this one: it reads
        // what the worker sent, and lets it go.
        let mut state = self.lock();
        state.forget(&loan);
        state.returned.push(worker);
        // Queued after all: counted as submitted once more.
        self.counters.submitted();
        state.jobs.push_front(job);
        drop(state);
        drop(lent);
        self.wake_dispatcher();
        Placed::Queued
    }

    /// Takes back the worker of a loan that ended: it is lent again if it is idle and nothing
    /// is queued, else the dispatcher gets it.
    pub(crate) fn give_back(&self, loan: &Arc<Loan>, worker: WorkerLink) {
        let mut state = self.lock();
        state.forget(loan);
        if worker.is_free()
            && state.jobs.is_empty()
            && !self.jobs_sent_ahead.load(Ordering::SeqCst)
            && !self.is_closed()
        {
            state.idle.push(worker);
        } else {
            state.returned.push(worker);
            drop(state);
            self.wake_dispatcher();
        }
    }

    /// Tells the dispatcher that the last pool handle is gone.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake_dispatcher();
        self.wake_all_waiters();
    }

    /// The pids of the pool's current workers (last in the lock order).
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn wake_dispatcher(&self) {
        // A full eventfd counter still wakes the poller; nothing else can fail here.
        let _ = self.wake.write(1);
    }

    /// Wakes the dispatcher if it asked to be woken by the next job queued.
    fn wake_if_armed(&self) {
        if self.wake_on_submit.swap(false, Ordering::SeqCst) {
            self.wake_dispatcher();
        }
    }

    /// Refuses new work from now on, saying `reason` if given; the caller then fails what is
    /// queued with [`refusal`](Shared::refusal).
    pub(super) fn break_pool(&self, reason: Option<String>) {
        let state = self.lock();
        if let Some(reason) = reason {
            *self.broken_reason() = Some(reason);
        }
        self.broken.store(true, Ordering::Release);
        drop(state);
        self.wake_all_waiters();
    }

    /// The error of a job the pool refuses or gives up on: it was closed, or it broke.
    pub(crate) fn refusal(&self) -> Error {
        let reason = self.broken_reason().clone();
        Error::new(reason.map_or(ErrorKind::Shutdown, ErrorKind::Broken))
    }

    fn broken_reason(&self) -> MutexGuard<'_, Option<String>> {
        self.broken_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// True once the last pool handle is gone.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Asks the next submitter that queues a job to wake the dispatcher (it is going to sleep
    /// with workers lent out), or not (it is awake). Armed under the queue lock.
    pub(super) fn wake_on_submit(&self, wake: bool) {
        self.wake_on_submit.store(wake, Ordering::SeqCst);
    }

    /// Says whether jobs sent ahead wait behind running ones. Called under the queue lock.
    pub(super) fn set_jobs_sent_ahead(&self, waiting: bool) {
        self.jobs_sent_ahead.store(waiting, Ordering::SeqCst);
    }

    /// Changes the list of the workers' pids, and the `smol_offload_workers` gauge with it.
    pub(super) fn change_pids(&self, change: impl FnOnce(&mut Vec<u32>)) {
        let mut pids = self.pids.lock().unwrap_or_else(PoisonError::into_inner);
        let before = pids.len();
        change(&mut pids);
        self.counters.metrics.workers_changed(before, pids.len());
    }

    /// The pool's name, given to its builder, else `"unnamed"`.
    pub(crate) fn name(&self) -> &str {
        self.options.name.as_deref().unwrap_or(stats::UNNAMED)
    }

    /// The oldest queued job, if `fits` accepts it, counted as picked.
    pub(super) fn pop_if(&self, fits: impl Fn(&Job) -> bool) -> Option<Job> {
        let mut state = self.lock();
        let job = match state.jobs.front() {
            Some(job) if fits(job) => state.jobs.pop_front(),
            _ => None,
        };
        if job.is_some() {
            // Counted under the lock, so that `stats()` never sees room refilled first.
            self.counters.picked();
        }
        self.made_room(state);
        job
    }

    pub(super) fn pop(&self) -> Option<Job> {
        self.pop_if(|_| true)
    }

    /// After a job left the queue: moves jobs of detached tasks in from the overflow, and
    /// wakes those waiting for room if there is some.
    fn made_room(&self, mut state: MutexGuard<'_, State>) {
        let Some(limit) = self.options.queue_limit else {
            return;
        };
        while state.jobs.len() < limit
            && let Some(job) = state.overflow.pop_front()
        {
            self.counters.submitted();
            state.jobs.push_back(job);
        }
        let wakers = self.room_wakers(&mut state);
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Takes the wakers of the oldest waiters for room, one per free place in the queue less
    /// the waiters woken already that have not looked yet, and marks them woken: wake them
    /// once the lock is released.
    fn room_wakers(&self, state: &mut State) -> Vec<Waker> {
        let Some(limit) = self.options.queue_limit else {
            return Vec::new();
        };
        let free = if state.overflow.is_empty() {
            limit.saturating_sub(state.jobs.len())
        } else {
            0
        };
        let wanted = free.saturating_sub(state.woken_waiters.len());
        let mut wakers = Vec::with_capacity(wanted.min(state.room_waiters.len()));
        while wakers.len() < wanted
            && let Some((id, waker)) = state.room_waiters.pop_first()
        {
            state.woken_waiters.insert(id);
            wakers.push(waker);
        }
        wakers
    }

    /// Whether a job submitted now would be queued (or lent) rather than wait for room; if not,
    /// registers `waker` as waiter `id`. True too once the pool is closed or broken: a
    /// submission then fails at once.
    pub(crate) fn has_room(&self, id: u64, waker: &Waker) -> bool {
        let Some(limit) = self.options.queue_limit else {
            return true;
        };
        let mut state = self.lock();
        let was_woken = state.woken_waiters.remove(&id);
        if state.jobs.len() < limit && state.overflow.is_empty()
            || self.broken.load(Ordering::Acquire)
            || self.is_closed()
        {
            // A `Ready` takes no place itself, and its owner may never submit: the place it
            // was woken for is offered to the next waiter too (at worst, one of the two finds
            // it taken and waits again).
            if was_woken {
                let wakers = self.room_wakers(&mut state);
                drop(state);
                wakers.into_iter().for_each(Waker::wake);
            }
            return true;
        }
        register_waiter(&mut state, id, waker);
        false
    }

    /// A new id for a waiter for room.
    pub(crate) fn new_waiter(&self) -> u64 {
        let mut state = self.lock();
        state.next_waiter += 1;
        state.next_waiter
    }

    /// Forgets waiter `id`, which no longer waits for room. If it was woken for a free place
    /// and never took it, the place goes to the next waiter.
    pub(crate) fn forget_waiter(&self, id: u64) {
        if self.options.queue_limit.is_some() {
            let mut state = self.lock();
            state.room_waiters.remove(&id);
            if state.woken_waiters.remove(&id) {
                self.made_room(state);
            }
        }
    }

    /// Queues the job of a detached task that was waiting for room: it goes into the queue,
    /// in order, as room frees. Fails it with the pool's shutdown if the pool is closed.
    pub(crate) fn push_overflow(&self, job: Job) {
        let mut state = self.lock();
        if self.broken.load(Ordering::Acquire) || self.is_closed() {
            drop(state);
            job.completion.fail(self.refusal());
            return;
        }
        state.overflow.push_back(job);
        // Room may have freed since the task last looked.
        self.made_room(state);
        self.wake_if_armed();
    }

    /// Wakes every waiter for room: the pool is closing or broke, and their submissions fail.
    fn wake_all_waiters(&self) {
        let mut state = self.lock();
        state.woken_waiters.clear();
        let waiters = std::mem::take(&mut state.room_waiters);
        drop(state);
        waiters.into_values().for_each(Waker::wake);
    }

    pub(super) fn queued(&self) -> usize {
        self.lock().jobs.len()
    }
}

/// Registers `waker` as waiter `id` for room, replacing what `id` registered before
/// (`clone_from` keeps a waker that wakes the same task).
fn register_waiter(state: &mut State, id: u64, waker: &Waker) {
    let waiters = state.room_waiters.entry(id);
    waiters
        .and_modify(|old| old.clone_from(waker))
        .or_insert_with(|| waker.clone());
}

/// The pool's side of [`Task::timeout`](crate::Task::timeout) and [`Task::cancel`](crate::Task::cancel)
/// on a started task: the dispatcher kills the worker whose running job is abandoned.
impl Abandon for Shared {
    fn on_drop(&self) -> bool {
        self.options.kill_on_drop
    }

    fn abandon(&self) {
        // A worker on loan comes back to the dispatcher as its task drops its assist, which
        // wakes the dispatcher again: it looks for abandoned jobs whenever it is awake.
        self.wake_dispatcher();
    }
}

/// The settings of one process pool: what its [`ProcessPoolBuilder`](super::ProcessPoolBuilder)
/// chose besides the number of workers, shared by the submit path and the dispatcher.
#[derive(Debug, Default)]
pub(crate) struct PoolOptions {
    /// The pool's label in metrics and debug mode's reports.
    pub(crate) name: Option<String>,
    /// Dropping a started task kills its worker.
    pub(crate) kill_on_drop: bool,
    /// The longest a task may run before the dispatcher kills its worker.
    pub(crate) task_timeout: Option<std::time::Duration>,
    /// How many tasks a worker runs before it is replaced.
    pub(crate) max_tasks_per_worker: Option<usize>,
    /// What every new worker runs before its first task.
    pub(crate) initializer: Option<Initializer>,
    /// How many jobs may wait in the queue; `None`: no limit.
    pub(crate) queue_limit: Option<usize>,
    /// Workers print the panics of the initializer as they happen, as they print those of
    /// tasks (which carry the option in each request).
    pub(crate) print_panics: bool,
}

/// A function and its encoded argument, run once in every new worker before its first task.
#[derive(Debug)]
pub(crate) struct Initializer {
    pub(crate) call: crate::sys::ErasedCall,
    pub(crate) arg: Vec<u8>,
}

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
        if let Waiting::Lent(lent) = &*state {
            return lent.assist(waker);
        }
        let Waiting::Job(job, mut last) = std::mem::replace(&mut *state, Waiting::Placed) else {
            return;
        };
        remember(&mut last, waker);
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
                LoanRead::Pending => None,
                LoanRead::Over(done) => {
                    // Given back under the loan's lock, so that the dispatcher always knows
                    // where the worker is.
                    let worker = loan.worker.take().expect("the worker is on loan");
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
        loan.waker = None;
        if let Some(worker) = loan.worker.take() {
            self.shared.give_back(&self.loan, worker);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The submit and give-back paths, with a socket pair standing in for each worker.

    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::process_pool::job::Completion;
    use crate::process_pool::server::Spawned;
    use crate::process_pool::wire::CallOptions;
    use crate::process_pool::wire::{self, Reply};
    use crate::process_pool::worker::Claims;
    use crate::process_pool::worker_link::Incoming;
    use crate::sys::{self, CallStatus};
    use crate::task::Assist;

    /// What happened to the test's jobs, in order.
    type Log = Arc<Mutex<Vec<String>>>;

    struct Recorded {
        name: &'static str,
        log: Log,
    }

    impl Completion for Recorded {
        fn start(&self) -> bool {
            self.log
                .lock()
                .unwrap()
                .push(format!("start {}", self.name));
            true
        }

        fn finish(self: Box<Self>, reply: Reply) {
            let payload = String::from_utf8(reply.payload.as_slice().to_vec()).unwrap();
            self.log
                .lock()
                .unwrap()
                .push(format!("finish {} {payload}", self.name));
        }

        fn fail(self: Box<Self>, error: Error) {
            self.log
                .lock()
                .unwrap()
                .push(format!("fail {} {error}", self.name));
        }
    }

    fn double(n: u32) -> u32 {
        n * 2
    }

    fn job(name: &'static str, log: &Log) -> Job {
        Job {
            call: sys::erase(double),
            options: CallOptions::default(),
            context: Default::default(),
            arg: name.as_bytes().to_vec(),
            lost: 0,
            completion: Box::new(Recorded {
                name,
                log: log.clone(),
            }),
        }
    }

    /// A worker link whose other end the test holds, as the worker would.
    fn worker() -> (WorkerLink, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let spawned = Spawned {
            pid: std::process::id(),
            stream: ours,
            claims: Claims::create().unwrap().0,
            pidfd: Arc::new(sys::pidfd_open(std::process::id()).unwrap()),
        };
        (WorkerLink::new(spawned).unwrap(), theirs)
    }

    /// A pool's shared state with one idle worker, a log for its jobs, and the worker's end
    /// of its socket.
    fn with_idle_worker() -> (Shared, Log, UnixStream) {
        let shared = Shared::new().unwrap();
        let (link, worker_end) = worker();
        shared.lock().idle.push(link);
        (shared, Log::default(), worker_end)
    }

    /// Reads one request as the worker would, and answers it with `payload`.
    fn answer(worker_end: &UnixStream, payload: &str) {
        let mut buffer = Vec::new();
        let mut input = worker_end;
        let request = wire::read_request(&mut input, &mut buffer)
            .unwrap()
            .unwrap();
        let mut reply = Vec::new();
        wire::begin_reply(&mut reply, request.id);
        reply.extend_from_slice(payload.as_bytes());
        wire::finish_reply(&mut reply, CallStatus::Returned);
        std::io::Write::write_all(&mut &*worker_end, &reply).unwrap();
    }

    /// How many times the dispatcher was woken since the last call.
    fn wake_ups(shared: &Shared) -> u64 {
        shared.wake.read().unwrap_or(0)
    }

    fn lent(placed: Placed) -> Arc<Loan> {
        match placed {
            Placed::Lent(loan) => loan,
            Placed::Queued | Placed::Full(_) => panic!("the job was not lent"),
        }
    }

    #[test]
    fn submit_lends_an_idle_worker_when_nothing_is_queued() {
        let (shared, log, worker_end) = with_idle_worker();
        let loan = lent(shared.submit(job("a", &log)).unwrap());
        {
            let state = shared.lock();
            assert!(state.idle.is_empty() && state.jobs.is_empty());
            assert_eq!(state.loans.len(), 1);
            assert!(Arc::ptr_eq(&state.loans[0], &loan));
        }
        assert!(loan.watch().is_some(), "the loan holds the worker");
        // The request was written by the submitting thread, and the dispatcher not woken.
        let mut buffer = Vec::new();
        let request = wire::read_request(&mut &worker_end, &mut buffer)
            .unwrap()
            .unwrap();
        assert_eq!(request.arg, b"a");
        assert_eq!(wake_ups(&shared), 0);
        assert_eq!(*log.lock().unwrap(), ["start a"]);
    }

    /// Submits a job whose argument is `len` bytes to an idle worker, and reads the request as
    /// the worker would: returns whether it came sealed (else in the arena), after checking its
    /// bytes.
    fn send_large_argument(len: usize) -> bool {
        let (shared, log, worker_end) = with_idle_worker();
        let mut big = job("big", &log);
        big.arg = (0..len).map(|i| (i % 251) as u8).collect();
        let expected = big.arg.clone();
        lent(shared.submit(big).unwrap());
        // The submitting thread sent a short frame with a memfd attached, and did not wake the
        // dispatcher.
        let mut input = wire::FdReader::blocking(&worker_end);
        let mut buffer = Vec::new();
        let request = wire::read_request(&mut input, &mut buffer)
            .unwrap()
            .unwrap();
        assert_eq!(request.shared_size().unwrap(), len);
        let fd = input.fds.pop_front().expect("a memfd");
        assert!(input.fds.is_empty());
        let bytes = if request.shared {
            assert!(!request.in_arena && !request.new_arena);
            sys::SealedMapping::new(fd, len)
                .unwrap()
                .as_slice()
                .to_vec()
        } else {
            assert!(request.in_arena && request.new_arena, "a new arena");
            let mut arena = crate::process_pool::out_of_line::InArena::default();
            arena.replace(fd).unwrap();
            arena.read(len).unwrap()
        };
        assert!(bytes == expected, "the argument's bytes");
        assert_eq!(wake_ups(&shared), 0);
        request.shared
    }

    #[test]
    fn a_large_argument_goes_straight_to_an_idle_worker_through_its_arena() {
        use crate::process_pool::out_of_line::ARENA_MAX;
        assert!(!send_large_argument(out_of_line::THRESHOLD + 1));
        assert!(!send_large_argument(ARENA_MAX));
    }

    #[test]
    fn an_argument_too_large_for_the_arena_goes_in_a_sealed_memfd() {
        use crate::process_pool::out_of_line::ARENA_MAX;
        assert!(send_large_argument(ARENA_MAX + 1));
    }

    #[test]
    fn an_argument_too_long_for_the_socket_and_too_short_for_shared_memory_is_queued() {
        let (shared, log, _worker_end) = with_idle_worker();
        let mut middling = job("middling", &log);
        middling.arg = vec![7; DIRECT_SEND_LIMIT + 1];
        assert!(middling.arg.len() <= out_of_line::THRESHOLD);
        assert!(matches!(shared.submit(middling).unwrap(), Placed::Queued));
        assert_eq!(shared.queued(), 1);
    }

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct CountWakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn each_freed_place_wakes_one_waiter_and_one_that_gives_up_passes_it_on() {
        let options = PoolOptions {
            queue_limit: Some(2),
            ..PoolOptions::default()
        };
        let shared = Shared::with_options(options).unwrap();
        let log = Log::default();
        // No worker: the jobs stay queued, and the queue is full.
        for name in ["a", "b"] {
            assert!(matches!(shared.submit(job(name, &log)), Ok(Placed::Queued)));
        }
        let counts: Vec<Arc<CountWakes>> = (0..50).map(|_| Arc::default()).collect();
        let wakers: Vec<Waker> = counts.iter().map(|count| count.clone().into()).collect();
        let ids: Vec<u64> = wakers
            .iter()
            .map(|waker| {
                let id = shared.new_waiter();
                assert!(!shared.has_room(id, waker), "the queue is full");
                id
            })
            .collect();
        let woken = || -> Vec<usize> {
            counts
                .iter()
                .enumerate()
                .filter(|(_, count)| count.0.load(Ordering::SeqCst) > 0)
                .map(|(n, count)| {
                    assert_eq!(count.0.load(Ordering::SeqCst), 1, "waiter {n} woken once");
                    n
                })
                .collect()
        };
        // A place frees: the oldest waiter is woken, and only it.
        assert!(shared.pop().is_some());
        assert_eq!(woken(), [0]);
        // A second frees before the first looked: the next waiter.
        assert!(shared.pop().is_some());
        assert_eq!(woken(), [0, 1]);
        // The first is dropped without looking: its place goes to the next one.
        shared.forget_waiter(ids[0]);
        assert_eq!(woken(), [0, 1, 2]);
        // The two woken tasks take the two places.
        for (n, name) in [(1, "c"), (2, "d")] {
            let placed = shared.submit_or_wait(job(name, &log), Some((ids[n], &wakers[n])));
            assert!(matches!(placed, Ok(Placed::Queued)));
        }
        // The queue is full again: the 47 others still sleep until the next place frees.
        assert_eq!(woken(), [0, 1, 2]);
        assert!(shared.pop().is_some());
        assert_eq!(woken(), [0, 1, 2, 3]);
        // A woken waiter that finds the place taken by then waits again, and is woken again
        // (a second wake-up) when the next place frees.
        assert!(matches!(shared.submit(job("e", &log)), Ok(Placed::Queued)));
        assert!(!shared.has_room(ids[3], &wakers[3]));
        assert!(shared.pop().is_some());
        assert_eq!(
            counts[3].0.load(Ordering::SeqCst),
            2,
            "the oldest waiter first"
        );
        assert_eq!(counts[4].0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_woken_waiter_whose_job_goes_straight_to_an_idle_worker_passes_its_place_on() {
        let options = PoolOptions {
            queue_limit: Some(1),
            ..PoolOptions::default()
        };
        let shared = Shared::with_options(options).unwrap();
        let log = Log::default();
        assert!(matches!(shared.submit(job("a", &log)), Ok(Placed::Queued)));
        let counts: Vec<Arc<CountWakes>> = (0..3).map(|_| Arc::default()).collect();
        let wakers: Vec<Waker> = counts.iter().map(|count| count.clone().into()).collect();
        let ids: Vec<u64> = wakers
            .iter()
            .map(|waker| {
                let id = shared.new_waiter();
                assert!(!shared.has_room(id, waker));
                id
            })
            .collect();
        let wake_ups = || -> Vec<usize> {
            counts
                .iter()
                .map(|count| count.0.load(Ordering::SeqCst))
                .collect()
        };
        assert!(shared.pop().is_some());
        assert_eq!(wake_ups(), [1, 0, 0]);
        // A worker went idle meanwhile: the first waiter's job goes to it, not to the queue,
        // and the free place goes on to the next waiter.
        let (link, _worker_end) = worker();
        shared.lock().idle.push(link);
        let placed = shared.submit_or_wait(job("b", &log), Some((ids[0], &wakers[0])));
        assert!(matches!(placed, Ok(Placed::Lent(_))));
        assert_eq!(wake_ups(), [1, 1, 0]);
        // It takes the place; the last one still sleeps.
        let placed = shared.submit_or_wait(job("c", &log), Some((ids[1], &wakers[1])));
        assert!(matches!(placed, Ok(Placed::Queued)));
        assert_eq!(wake_ups(), [1, 1, 0]);
    }

    /// Sends the reply to request `id`, as a worker would; `retained` says that the worker
    /// keeps reading the request arena.
    fn reply_to(worker_end: &UnixStream, id: u64, retained: bool) {
        let mut reply = Vec::new();
        wire::begin_reply(&mut reply, id);
        reply.extend_from_slice(b"ok");
        wire::finish_reply(&mut reply, CallStatus::Returned);
        if retained {
            wire::retain_request_arena(&mut reply);
        }
        wire::send_all(worker_end, &reply).unwrap();
    }

    #[test]
    fn the_request_arena_is_written_again_only_once_the_job_using_it_is_answered() {
        let (mut link, worker_end) = worker();
        let log = Log::default();
        let large = |name: &'static str| {
            let mut job = job(name, &log);
            job.arg = vec![name.as_bytes()[0]; out_of_line::THRESHOLD + 1];
            job
        };
        let mut input = wire::FdReader::blocking(&worker_end);
        let mut buffer = Vec::new();
        // Where each request's argument went: (in the arena, with a new arena, sealed).
        let mut next_request = |link: &mut WorkerLink, name| {
            link.assign(large(name));
            link.flush().unwrap();
            let request = wire::read_request(&mut input, &mut buffer)
                .unwrap()
                .unwrap();
            let placed = (request.in_arena, request.new_arena, request.shared);
            if request.new_arena || request.shared {
                assert!(input.fds.pop_front().is_some(), "its descriptor");
            }
            placed
        };
        let answered = |link: &mut WorkerLink| {
            assert!(link.receive());
            assert!(matches!(link.next_incoming(), Incoming::Reply(..)));
        };
        // Job 0 makes the arena; job 1, sent ahead while 0 runs, finds it busy.
        assert_eq!(next_request(&mut link, "a"), (true, true, false));
        assert_eq!(next_request(&mut link, "b"), (false, false, true));
        reply_to(&worker_end, 0, false);
        answered(&mut link);
        // Job 0 answered: job 2 writes the same arena again.
        assert_eq!(next_request(&mut link, "c"), (true, false, false));
        reply_to(&worker_end, 1, false);
        answered(&mut link);
        assert_eq!(next_request(&mut link, "d"), (false, false, true), "2 runs");
        // The worker keeps reading the arena after job 2: job 4 gets a new one.
        reply_to(&worker_end, 2, true);
        answered(&mut link);
        reply_to(&worker_end, 3, false);
        answered(&mut link);
        assert_eq!(next_request(&mut link, "e"), (true, true, false));
    }

    #[test]
    fn a_queued_job_wakes_a_sleeping_dispatcher_once() {
        let shared = Shared::new().unwrap();
        let log = Log::default();
        // Awake (not armed): queueing does not wake it.
        assert!(matches!(
            shared.submit(job("a", &log)).unwrap(),
            Placed::Queued
        ));
        assert_eq!(wake_ups(&shared), 0);
        // Asleep with workers lent out: the next job wakes it, the one after does not.
        shared.wake_on_submit(true);
        for name in ["b", "c"] {
            assert!(matches!(
                shared.submit(job(name, &log)).unwrap(),
                Placed::Queued
            ));
        }
        assert_eq!(wake_ups(&shared), 1);
        assert_eq!(shared.queued(), 3);
        assert!(
            log.lock().unwrap().is_empty(),
            "queued jobs have not started"
        );
    }

    #[test]
    fn an_idle_worker_does_not_let_a_job_jump_the_queue() {
        let shared = Shared::new().unwrap();
        let log = Log::default();
        assert!(matches!(
            shared.submit(job("first", &log)).unwrap(),
            Placed::Queued
        ));
        let (link, _worker_end) = worker();
        shared.lock().idle.push(link);
        assert!(matches!(
            shared.submit(job("second", &log)).unwrap(),
            Placed::Queued
        ));
        let names: Vec<String> = std::iter::from_fn(|| shared.pop())
            .map(|job| String::from_utf8(job.arg).unwrap())
            .collect();
        assert_eq!(names, ["first", "second"]);
    }

    #[test]
    fn a_reply_read_on_loan_lends_the_idle_worker_again() {
        let (shared, log, worker_end) = with_idle_worker();
        let shared = Arc::new(shared);
        let loan = lent(shared.submit(job("a", &log)).unwrap());
        let assist = LoanAssist {
            loan: loan.clone(),
            shared: shared.clone(),
        };
        answer(&worker_end, "42");
        assist.assist(None);
        assert_eq!(*log.lock().unwrap(), ["start a", "finish a 42"]);
        let state = shared.lock();
        assert!(state.loans.is_empty() && state.returned.is_empty());
        assert_eq!(
            state.idle.len(),
            1,
            "idle and nothing queued: lent out again"
        );
        drop(state);
        assert_eq!(wake_ups(&shared), 0);
        assert!(loan.watch().is_none(), "the loan is over");
    }

    #[test]
    fn a_reply_in_shared_memory_is_read_on_loan() {
        let (shared, log, worker_end) = with_idle_worker();
        let shared = Arc::new(shared);
        let loan = lent(shared.submit(job("a", &log)).unwrap());
        let assist = LoanAssist {
            loan: loan.clone(),
            shared: shared.clone(),
        };
        // The worker answers with a payload too long for the socket, in a sealed memfd.
        let mut buffer = Vec::new();
        let request = wire::read_request(&mut &worker_end, &mut buffer)
            .unwrap()
            .unwrap();
        let big = "x".repeat(out_of_line::THRESHOLD + 1);
        let mut reply = Vec::new();
        wire::begin_reply(&mut reply, request.id);
        reply.extend_from_slice(big.as_bytes());
        wire::finish_reply(&mut reply, CallStatus::Returned);
        let fd = wire::share_reply_payload(&mut reply).expect("a shared payload");
        wire::send_with_fd(&worker_end, &reply, fd.as_fd()).unwrap();
        // The awaiting thread maps and delivers it: the dispatcher is not woken.
        assist.assist(None);
        assert_eq!(
            *log.lock().unwrap(),
            ["start a".to_owned(), format!("finish a {big}")]
        );
        assert_eq!(shared.lock().idle.len(), 1, "lent out again");
        assert_eq!(wake_ups(&shared), 0);
    }

    #[test]
    fn a_reply_read_on_loan_while_jobs_wait_returns_the_worker_to_the_dispatcher() {
        let (shared, log, worker_end) = with_idle_worker();
        let shared = Arc::new(shared);
        let loan = lent(shared.submit(job("a", &log)).unwrap());
        assert!(matches!(
            shared.submit(job("b", &log)).unwrap(),
            Placed::Queued
        ));
        answer(&worker_end, "1");
        LoanAssist {
            loan,
            shared: shared.clone(),
        }
        .assist(None);
        let state = shared.lock();
        assert!(state.loans.is_empty() && state.idle.is_empty());
        assert_eq!(
            state.returned.len(),
            1,
            "jobs wait: the dispatcher takes it"
        );
        drop(state);
        assert_eq!(wake_ups(&shared), 1);
    }

    #[test]
    fn a_task_dropped_on_loan_gives_its_busy_worker_to_the_dispatcher() {
        let (shared, log, _worker_end) = with_idle_worker();
        let shared = Arc::new(shared);
        let loan = lent(shared.submit(job("a", &log)).unwrap());
        drop(LoanAssist {
            loan,
            shared: shared.clone(),
        });
        let state = shared.lock();
        assert!(state.loans.is_empty() && state.idle.is_empty());
        assert_eq!(state.returned.len(), 1);
        assert!(!state.returned[0].is_idle(), "its job is still in flight");
        drop(state);
        assert_eq!(wake_ups(&shared), 1);
        assert_eq!(
            *log.lock().unwrap(),
            ["start a"],
            "the dispatcher completes it"
        );
    }

    #[test]
    fn a_job_its_worker_shows_unstarted_is_taken_back_only_from_a_worker_lost_and_counts_it() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let (claims, fd) = Claims::create().unwrap();
        let worker_side = Claims::map(fd).unwrap();
        let spawned = Spawned {
            pid: std::process::id(),
            stream: ours,
            claims,
            pidfd: Arc::new(sys::pidfd_open(std::process::id()).unwrap()),
        };
        let mut link = WorkerLink::new(spawned).unwrap();
        let log = Log::default();
        for name in ["a", "b", "c"] {
            link.assign(job(name, &log));
        }
        link.flush().unwrap();
        // The word shows `a` unstarted (not claimed yet, or moved back by its task: the parent
        // cannot tell): a worker kept keeps all three.
        assert!(link.take_back_sent_ahead().is_empty());
        assert_eq!(link.in_flight.len(), 3);
        // Lost, it gives all three back, and `a`, the one it may have run, counts the loss.
        let back = link.take_back_unstarted();
        let lost: Vec<u32> = back.iter().map(|job| job.lost).collect();
        assert_eq!(lost, [1, 0, 0]);
        assert!(link.in_flight.is_empty());
        // Sent again (as ids 3 to 5) and `a` claimed: `b` and `c` come back, uncounted.
        for job in back {
            link.assign(job);
        }
        link.flush().unwrap();
        assert!(worker_side.claim(3));
        let back = link.take_back_sent_ahead();
        let lost: Vec<u32> = back.iter().map(|job| job.lost).collect();
        assert_eq!(lost, [0, 0]);
        assert_eq!(link.in_flight.len(), 1, "`a` runs on");
        assert!(link.take_back_unstarted().is_empty(), "`a` was started");
    }

    #[test]
    fn a_worker_gone_before_its_request_queues_the_job_first() {
        let shared = Shared::new().unwrap();
        let log = Log::default();
        let (link, worker_end) = worker();
        drop(worker_end);
        shared.lock().idle.push(link);
        assert!(matches!(
            shared.submit(job("a", &log)).unwrap(),
            Placed::Queued
        ));
        let state = shared.lock();
        assert!(state.loans.is_empty() && state.idle.is_empty());
        assert_eq!(state.returned.len(), 1, "the dispatcher replaces it");
        assert_eq!(state.jobs.len(), 1);
        drop(state);
        assert_eq!(wake_ups(&shared), 1);
    }

    /// Submits job `b` to the worker of `shared`, idle but with bytes from it pending (on its
    /// socket or read already): the job waits in the queue, unsent, and the worker goes back
    /// to the dispatcher, which finds the bytes malformed.
    fn assert_not_sent_to(shared: &Shared, log: &Log, worker_end: &UnixStream) {
        assert!(matches!(
            shared.submit(job("b", log)).unwrap(),
            Placed::Queued
        ));
        let mut state = shared.lock();
        assert!(state.loans.is_empty() && state.idle.is_empty());
        assert_eq!(state.jobs.len(), 1, "the job waits for another worker");
        assert_eq!(state.returned.len(), 1, "the dispatcher lets the worker go");
        let mut worker = state.returned.pop().unwrap();
        drop(state);
        worker_end.set_nonblocking(true).unwrap();
        let mut byte = [0; 1];
        let sent = std::io::Read::read(&mut &*worker_end, &mut byte);
        assert_eq!(
            sent.unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "nothing was sent to the worker"
        );
        worker.receive();
        assert!(matches!(worker.next_incoming(), Incoming::Corrupt(_)));
        assert_eq!(wake_ups(shared), 1);
    }

    #[test]
    fn an_idle_worker_that_sent_bytes_is_sent_no_job() {
        let (shared, log, worker_end) = with_idle_worker();
        // Written by what an earlier task left running in the worker.
        std::io::Write::write_all(&mut &worker_end, b"garbage").unwrap();
        assert_not_sent_to(&shared, &log, &worker_end);
        assert_eq!(*log.lock().unwrap(), ["start b"]);
    }

    #[test]
    fn bytes_read_on_loan_after_the_reply_keep_the_worker_from_the_next_job() {
        let (shared, log, worker_end) = with_idle_worker();
        let shared = Arc::new(shared);
        let loan = lent(shared.submit(job("a", &log)).unwrap());
        // The reply, and garbage right behind it, read in one go by the awaiting thread.
        answer(&worker_end, "1");
        std::io::Write::write_all(&mut &worker_end, b"garbage").unwrap();
        LoanAssist {
            loan,
            shared: shared.clone(),
        }
        .assist(None);
        assert_eq!(shared.lock().idle.len(), 1, "lent out again, idle");
        assert_not_sent_to(&shared, &log, &worker_end);
        assert_eq!(*log.lock().unwrap(), ["start a", "finish a 1", "start b"]);
    }

    #[test]
    fn a_broken_pool_gives_the_job_back() {
        let shared = Shared::new().unwrap();
        let log = Log::default();
        shared.break_pool(None);
        let refused = shared.submit(job("a", &log)).err().expect("refused");
        assert_eq!(refused.arg, b"a");
        assert_eq!(shared.queued(), 0);
    }
}
