//! The client side of a [`RemotePool`](crate::RemotePool): the table of jobs awaiting a reply,
//! one submit thread that writes jobs and cancellations to the broker in batches, and one reply
//! thread that blocks on the client's reply list and completes tasks by job id.
//!
//! A broker that goes away is not an error: both threads reconnect with backoff, the submit
//! thread writes its batch again, and the reply thread, once reconnected, checks that each
//! pending job is still on the broker (its stream entry or its claim) and submits again the
//! jobs it lost (at most once: fails those that may have run). Tasks fail only when the broker
//! stays unreachable past the reconnect limit.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::task::Waker;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::LOG_VARIABLE;
use crate::broker::Broker;
use crate::envelope::{Outcome, ReplyEnvelope, Signed};
use crate::error::{Error, ErrorKind, WorkerExit};
use crate::fingerprint;
use crate::keys::Keys;
use crate::metrics::PoolMetrics;
use crate::outage::{self, Outage};
use crate::process_pool::raw::{Completion, Reply};
use crate::security::Security;
use crate::stats::Counters;
use crate::sys::CallStatus;
use crate::task::{Assist, Promise};

/// The typed end of a remote job.
pub(crate) trait RemoteCompletion: Send {
    fn is_cancelled(&self) -> bool;
    /// A worker claimed the job: the task counts as started.
    fn start(&self);
    fn into_completion(self: Box<Self>) -> Box<dyn Completion>;
}

impl<R: DeserializeOwned + Send + 'static> RemoteCompletion for Promise<R> {
    fn is_cancelled(&self) -> bool {
        Promise::is_cancelled(self)
    }

    fn start(&self) {
        // False when the task was dropped meanwhile: nobody asks then.
        let _ = Promise::start(self);
    }

    fn into_completion(self: Box<Self>) -> Box<dyn Completion> {
        self
    }
}

struct Pending {
    completion: Box<dyn RemoteCompletion>,
    /// The signed job, to submit again if the broker loses it.
    job: Arc<[u8]>,
    /// Its stream entry, once the broker took it.
    entry: Option<String>,
    deadline: Option<(Instant, Duration)>,
    /// A worker claimed the job (its started notice came, or it won the claim over a
    /// withdrawal): the pool's statistics count it as running.
    started: bool,
}

#[derive(Default)]
struct Table {
    pending: HashMap<u64, Pending>,
    deadlines: BTreeSet<(Instant, u64)>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Pending> {
        let pending = self.pending.remove(&id)?;
        if let Some((at, _)) = pending.deadline {
            self.deadlines.remove(&(at, id));
        }
        Some(pending)
    }
}

/// The most replies the reply thread takes in one round trip.
const REPLY_BATCH: usize = 512;

/// A batch of encoded replies, as one pop takes them.
type Replies = Vec<Vec<u8>>;

/// What the submit thread sends to the broker.
enum Command {
    Submit {
        id: u64,
        job: Arc<[u8]>,
    },
    /// Claim the job as cancelled, if no worker claimed it first; the answer settles a task
    /// still waiting in the table (see [`Client::withdraw`]).
    Withdraw(u64),
    /// Wake the reply thread: a nearer deadline, or the pool closed.
    Wake,
}

/// What a pool does when the broker goes away.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Recovery {
    /// How long the broker may stay unreachable before the tasks waiting on it fail.
    pub(crate) reconnect_limit: Duration,
    /// The pool's jobs run at most once: a job the broker lost, which may have run, fails.
    pub(crate) at_most_once: bool,
}

/// Everything the pool's handles, tasks and two threads share.
pub(crate) struct Client {
    pub(crate) keys: Keys,
    pub(crate) id: String,
    reply_key: String,
    pub(crate) security: Security,
    pub(crate) broker: Broker,
    claim_ttl_ms: u64,
    recovery: Recovery,
    table: Mutex<Table>,
    commands: Mutex<mpsc::Sender<Command>>,
    closed: AtomicBool,
    pub(crate) counters: Counters,
    next_id: AtomicU64,
    /// The number of worker processes the fleet had when last asked.
    pub(crate) fleet_workers: AtomicUsize,
    /// Log which worker ran each job (`SMOL_OFFLOAD_REMOTE_LOG` is set).
    log_tasks: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts the submit and reply threads.
    pub(crate) fn start(
        keys: Keys,
        id: String,
        security: Security,
        broker: Broker,
        claim_ttl_ms: u64,
        recovery: Recovery,
        metrics: Arc<PoolMetrics>,
    ) -> Result<Arc<Client>, String> {
        let submit_connection = broker.connect()?;
        let reply_connection = broker.connect()?;
        let (sender, receiver) = mpsc::channel();
        let client = Arc::new(Client {
            reply_key: keys.replies(&id),
            keys,
            id,
            security,
            broker,
            claim_ttl_ms,
            recovery,
            table: Mutex::new(Table::default()),
            commands: Mutex::new(sender),
            closed: AtomicBool::new(false),
            counters: Counters::new(metrics),
            next_id: AtomicU64::new(0),
            fleet_workers: AtomicUsize::new(0),
            log_tasks: std::env::var_os(LOG_VARIABLE).is_some(),
        });
        let submitter = client.clone();
        std::thread::Builder::new()
            .name("smol-offload-remote-submit".into())
            .spawn(move || submitter.submit_loop(submit_connection, receiver))
            .map_err(|err| format!("could not start the remote submit thread: {err}"))?;
        let replier = client.clone();
        std::thread::Builder::new()
            .name("smol-offload-remote-reply".into())
            .spawn(move || replier.reply_loop(reply_connection))
            .map_err(|err| format!("could not start the remote reply thread: {err}"))?;
        Ok(client)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, command: Command) {
        // The submit thread ends only after the pool closed; then there is nothing to send.
        let _ = self
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(command);
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a job and hands it to the submit thread. On a closed pool, the job fails with
    /// a shutdown error.
    pub(crate) fn submit(
        &self,
        id: u64,
        job: Vec<u8>,
        completion: Box<dyn RemoteCompletion>,
        timeout: Option<Duration>,
    ) {
        let deadline = timeout.map(|limit| (Instant::now() + limit, limit));
        let job: Arc<[u8]> = job.into();
        let nearest = {
            let mut table = self.table();
            if self.closed.load(Ordering::Acquire) {
                drop(table);
                completion
                    .into_completion()
                    .fail(Error::new(ErrorKind::Shutdown));
                return;
            }
            table.pending.insert(
                id,
                Pending {
                    completion,
                    job: job.clone(),
                    entry: None,
                    deadline,
                    started: false,
                },
            );
            deadline.is_some_and(|(at, _)| {
                table.deadlines.insert((at, id));
                table.deadlines.first() == Some(&(at, id))
            })
        };
        self.counters.submitted();
        self.send(Command::Submit { id, job });
        if nearest {
            self.send(Command::Wake);
        }
    }

    /// The task of job `id` was dropped: if it still waits for a reply and was cancelled (not
    /// detached), forget it and tell the fleet not to start it.
    fn forget_if_cancelled(&self, id: u64) {
        let mut table = self.table();
        if table
            .pending
            .get(&id)
            .is_some_and(|pending| pending.completion.is_cancelled())
        {
            let pending = table.remove(id);
            drop(table);
            if let Some(pending) = pending {
                self.picked(&pending);
            }
            self.counters.cancelled();
            self.send(Command::Withdraw(id));
        }
    }

    /// [`Task::cancel`](crate::Task::cancel) of job `id`, not known to be started: asks the
    /// broker whether a worker claimed it. If none did, the job never runs and its task
    /// resolves as cancelled; if one did, the task counts as started and waits for the reply.
    /// Returns false if the job is no longer pending.
    fn withdraw(&self, id: u64) -> bool {
        if !self.table().pending.contains_key(&id) {
            return false;
        }
        self.send(Command::Withdraw(id));
        true
    }

    /// Acts on the broker's answer to withdrawing job `id`: `previous` is the claim it found.
    fn withdrawn(&self, id: u64, previous: Option<String>) {
        let mut table = self.table();
        match previous.as_deref() {
            None | Some("cancelled") => {
                let Some(pending) = table.remove(id) else {
                    return;
                };
                drop(table);
                self.picked(&pending);
                self.counters.cancelled();
                pending
                    .completion
                    .into_completion()
                    .fail(Error::new(ErrorKind::Cancelled));
            }
            Some(_) => {
                if let Some(pending) = table.pending.get_mut(&id) {
                    self.mark_started(pending);
                }
            }
        }
    }

    fn mark_started(&self, pending: &mut Pending) {
        if !pending.started {
            pending.started = true;
            self.counters.picked();
            pending.completion.start();
        }
    }

    /// Counts a task that leaves the table as picked, unless it was counted when it started.
    fn picked(&self, pending: &Pending) {
        if !pending.started {
            self.counters.picked();
        }
    }

    /// Ends a task taken out of the table with `err`, counting it as completed.
    fn fail(&self, pending: Pending, err: Error) {
        self.picked(&pending);
        self.counters.completed();
        pending.completion.into_completion().fail(err);
    }

    /// The last handle was dropped: every pending task fails with a shutdown error, the fleet
    /// is told not to start their jobs, and both threads end.
    pub(crate) fn close(&self) {
        let pending: Vec<(u64, Pending)> = {
            let mut table = self.table();
            self.closed.store(true, Ordering::Release);
            table.deadlines.clear();
            table.pending.drain().collect()
        };
        for (id, pending) in pending {
            self.send(Command::Withdraw(id));
            self.fail(pending, Error::new(ErrorKind::Shutdown));
        }
        self.send(Command::Wake);
        // Closing the channel ends the submit thread once it has written the above.
        let (orphan, _) = mpsc::channel();
        *self.commands.lock().unwrap_or_else(PoisonError::into_inner) = orphan;
    }

    fn fail_all(&self, message: &str) {
        let pending: Vec<Pending> = {
            let mut table = self.table();
            table.deadlines.clear();
            table.pending.drain().map(|(_, pending)| pending).collect()
        };
        for pending in pending {
            self.fail(pending, Error::new(ErrorKind::Remote(message.to_owned())));
        }
    }

    fn submit_loop(
        self: Arc<Self>,
        connection: redis::Connection,
        commands: mpsc::Receiver<Command>,
    ) {
        let mut connection = Some(connection);
        let jobs_key = self.keys.jobs();
        while let Ok(first) = commands.recv() {
            let mut batch = vec![first];
            while batch.len() < 512 {
                match commands.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            let mut pipe = redis::pipe();
            for command in &batch {
                match command {
                    Command::Submit { job, .. } => {
                        pipe.cmd("XADD")
                            .arg(&jobs_key)
                            .arg("*")
                            .arg("job")
                            .arg(&job[..]);
                    }
                    Command::Withdraw(id) => {
                        pipe.cmd("SET")
                            .arg(self.keys.claim(&self.id, *id))
                            .arg("cancelled")
                            .arg("NX")
                            .arg("GET")
                            .arg("PX")
                            .arg(self.claim_ttl_ms);
                    }
                    Command::Wake => {
                        pipe.cmd("RPUSH")
                            .arg(&self.reply_key)
                            .arg(&[] as &[u8])
                            .ignore();
                    }
                }
            }
            // A broker that went away takes the same batch again once it is back: a job
            // written twice is run once (its claim refuses the second entry as a replay), and
            // a withdrawal written twice finds its own claim.
            let mut outage: Option<Outage> = None;
            loop {
                let result = match &mut connection {
                    Some(open) => pipe
                        .query::<Vec<Option<String>>>(open)
                        .map_err(|err| self.broker.unreachable(&err)),
                    None => self.broker.connect().and_then(|mut open| {
                        let result = pipe
                            .query::<Vec<Option<String>>>(&mut open)
                            .map_err(|err| self.broker.unreachable(&err));
                        connection = Some(open);
                        result
                    }),
                };
                match result {
                    Ok(answers) => {
                        self.written(&batch, answers);
                        break;
                    }
                    Err(message) => {
                        connection = None;
                        let outage = outage.get_or_insert_with(Outage::begin);
                        if self.closed.load(Ordering::Acquire)
                            || outage.exceeds(self.recovery.reconnect_limit)
                        {
                            let message = outage::gave_up(
                                &self.broker.address,
                                self.recovery.reconnect_limit,
                                &message,
                            );
                            self.fail_batch(&batch, &message);
                            break;
                        }
                        outage.wait();
                    }
                }
            }
        }
    }

    /// The broker took a batch: notes each job's stream entry, and acts on the withdrawals.
    /// `answers` has one answer per submission and withdrawal, in order.
    fn written(&self, batch: &[Command], answers: Vec<Option<String>>) {
        let mut answers = answers.into_iter();
        let mut withdrawals = Vec::new();
        {
            let mut table = self.table();
            for command in batch {
                match command {
                    Command::Submit { id, .. } => {
                        let entry = answers.next().flatten();
                        if let Some(pending) = table.pending.get_mut(id) {
                            pending.entry = entry;
                        }
                    }
                    Command::Withdraw(id) => withdrawals.push((*id, answers.next().flatten())),
                    Command::Wake => {}
                }
            }
        }
        for (id, previous) in withdrawals {
            self.withdrawn(id, previous);
        }
    }

    /// The broker did not take a batch before the reconnect limit: its jobs fail, saying so.
    /// (A task awaiting a withdrawal in it waits on: its job may run, or the reply thread
    /// finds the broker gone.)
    fn fail_batch(&self, batch: &[Command], message: &str) {
        let message = format!("could not submit the task: {message}");
        let failed: Vec<Pending> = {
            let mut table = self.table();
            batch
                .iter()
                .filter_map(|command| match command {
                    Command::Submit { id, .. } => table.remove(*id),
                    _ => None,
                })
                .collect()
        };
        for pending in failed {
            self.fail(pending, Error::new(ErrorKind::Remote(message.clone())));
        }
    }

    fn reply_loop(self: Arc<Self>, connection: redis::Connection) {
        /// The longest one blocking pop waits, so that a silently dead link is noticed.
        const LONGEST_WAIT: Duration = Duration::from_secs(30);
        let mut connection = Some(connection);
        // The connection's read timeout, set only when it changes (without task deadlines,
        // once per connection), not before each pop.
        let mut read_timeout = None;
        let mut outage: Option<Outage> = None;
        while !self.closed.load(Ordering::Acquire) {
            let Some(open) = &mut connection else {
                let _ = self.expire_overdue();
                let down = outage.get_or_insert_with(Outage::begin);
                let reconnected = self.broker.connect().and_then(|mut open| {
                    // A broker that came back empty lost the fleet's key fingerprint too: it
                    // is recorded again before a member with another key could record its own.
                    fingerprint::join_fleet(&mut open, &self.broker, &self.keys, &self.security)?;
                    self.recover(&mut open)
                        .map_err(|err| self.broker.unreachable(&err))?;
                    Ok(open)
                });
                match reconnected {
                    Ok(open) => {
                        connection = Some(open);
                        read_timeout = None;
                        outage = None;
                    }
                    Err(message) => {
                        if down.exceeds(self.recovery.reconnect_limit) {
                            self.fail_all(&outage::gave_up(
                                &self.broker.address,
                                self.recovery.reconnect_limit,
                                &message,
                            ));
                        }
                        down.wait();
                    }
                }
                continue;
            };
            let wait = self
                .expire_overdue()
                .unwrap_or(LONGEST_WAIT)
                .min(LONGEST_WAIT);
            let timeout = wait + Duration::from_secs(10);
            if read_timeout != Some(timeout) {
                let _ = open.set_read_timeout(Some(timeout));
                read_timeout = Some(timeout);
            }
            // Every reply waiting, up to a batch, in one round trip.
            let popped: redis::RedisResult<Option<(Vec<u8>, Replies)>> = redis::cmd("BLMPOP")
                .arg(wait.as_secs_f64().max(0.001))
                .arg(1)
                .arg(&self.reply_key)
                .arg("LEFT")
                .arg("COUNT")
                .arg(REPLY_BATCH)
                .query(open);
            match popped {
                Ok(Some((_, replies))) => {
                    for bytes in replies.iter().filter(|bytes| !bytes.is_empty()) {
                        self.handle_reply(bytes);
                    }
                }
                Ok(None) => {}
                // The pending tasks wait on: reconnecting checks their jobs (`recover`).
                Err(_) => connection = None,
            }
        }
        if let Some(open) = &mut connection {
            let _ = redis::cmd("DEL").arg(&self.reply_key).query::<()>(open);
        }
    }

    /// After a reconnect: checks that each pending job the broker took is still there (its
    /// stream entry, or its claim, which a worker sets before running it and which outlives
    /// its reply), and submits again the jobs it lost, as a broker that came back empty or
    /// from an older copy does. At most once, such a job may have run: its task fails.
    ///
    /// One transaction takes the replies waiting and checks every job, so that a job answered
    /// meanwhile is seen with its reply: a job answered (its entry deleted, its claim set)
    /// without a reply had it popped by a connection that broke before delivering it.
    fn recover(&self, open: &mut redis::Connection) -> redis::RedisResult<()> {
        let taken: Vec<(u64, String)> = self
            .table()
            .pending
            .iter()
            .filter_map(|(&id, pending)| Some((id, pending.entry.clone()?)))
            .collect();
        let jobs_key = self.keys.jobs();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("LRANGE").arg(&self.reply_key).arg(0).arg(-1);
        pipe.cmd("DEL").arg(&self.reply_key).ignore();
        for (id, entry) in &taken {
            pipe.cmd("GET").arg(self.keys.claim(&self.id, *id));
            pipe.cmd("XRANGE").arg(&jobs_key).arg(entry).arg(entry);
        }
        let found: Vec<redis::Value> = pipe.query(open)?;
        let mut found = found.into_iter();
        let replies: Replies = redis::from_redis_value(found.next().unwrap_or(redis::Value::Nil))?;
        for bytes in replies.iter().filter(|bytes| !bytes.is_empty()) {
            self.handle_reply(bytes);
        }
        let mut lost = Vec::new();
        for (id, entry) in taken {
            let claim: Option<String> =
                redis::from_redis_value(found.next().unwrap_or(redis::Value::Nil))?;
            let queued =
                matches!(found.next(), Some(redis::Value::Array(items)) if !items.is_empty());
            match (queued, claim.as_deref()) {
                // Waiting, held by a worker, or being withdrawn.
                (true, _) | (false, Some("cancelled")) => {}
                (false, claim) => lost.push((id, entry, claim.is_some())),
            }
        }
        for (id, entry, claimed) in lost {
            if claimed && !self.recovery.at_most_once {
                // Its claim would refuse the job written again as a replay.
                redis::cmd("DEL")
                    .arg(self.keys.claim(&self.id, id))
                    .query::<()>(open)?;
            }
            self.lost(id, &entry);
        }
        Ok(())
    }

    /// The broker lost job `id`, last written as stream entry `entry`, or its reply.
    fn lost(&self, id: u64, entry: &str) {
        let mut table = self.table();
        let Some(pending) = table.pending.get_mut(&id) else {
            return;
        };
        if pending.entry.as_deref() != Some(entry) {
            return; // written again meanwhile
        }
        if self.recovery.at_most_once {
            let pending = table.remove(id);
            drop(table);
            if let Some(pending) = pending {
                let message = format!(
                    "the redis broker at {} lost the job or its reply while the task was \
                     pending (it came back without its data, or the connection broke); a \
                     worker may have run it, so its outcome is unknown, and at most once it is \
                     not submitted again",
                    self.broker.address
                );
                self.fail(pending, Error::new(ErrorKind::Remote(message)));
            }
        } else {
            pending.entry = None;
            let job = pending.job.clone();
            drop(table);
            self.send(Command::Submit { id, job });
        }
    }

    /// Fails the tasks whose deadline passed; returns how long until the next deadline.
    fn expire_overdue(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let next = {
            let mut table = self.table();
            while let Some(&(at, id)) = table.deadlines.first() {
                if at > now {
                    break;
                }
                if let Some(pending) = table.remove(id) {
                    expired.push((id, pending));
                }
            }
            table.deadlines.first().map(|&(at, _)| at - now)
        };
        for (id, pending) in expired {
            self.send(Command::Withdraw(id));
            let limit = pending.deadline.map(|(_, limit)| limit).unwrap_or_default();
            self.fail(pending, Error::new(ErrorKind::Timeout(limit)));
        }
        next
    }

    fn handle_reply(&self, bytes: &[u8]) {
        let reply: ReplyEnvelope = match Signed::open(bytes, &self.security) {
            Ok(reply) => reply,
            Err(why) => {
                eprintln!(
                    "smol-offload: remote pool ignored a reply on {}: {why}",
                    self.reply_key
                );
                return;
            }
        };
        let mut table = self.table();
        if reply.outcome == Outcome::Started {
            if let Some(pending) = table.pending.get_mut(&reply.id) {
                self.mark_started(pending);
            }
            return;
        }
        let Some(pending) = table.remove(reply.id) else {
            return; // cancelled, timed out, or answered twice (at-least-once)
        };
        drop(table);
        if self.log_tasks {
            eprintln!(
                "smol-offload remote pool {}: job {} ran on worker {}",
                self.id, reply.id, reply.worker
            );
        }
        self.picked(&pending);
        self.counters.completed();
        let completion = pending.completion.into_completion();
        match reply.outcome {
            Outcome::Call { status, payload } => match CallStatus::from_byte(status) {
                Some(status) => completion.finish(Reply::inline(reply.id, status, payload)),
                None => completion.fail(Error::new(ErrorKind::Remote(format!(
                    "worker {} replied with an unknown status {status}",
                    reply.worker
                )))),
            },
            Outcome::WorkerDied { pid, signal, code } => {
                let exit = match (signal, code) {
                    (Some(signal), _) => WorkerExit::Signal(signal),
                    (None, Some(code)) => WorkerExit::Code(code),
                    (None, None) => WorkerExit::Unknown,
                };
                completion.fail(Error::new(ErrorKind::WorkerDied { pid, exit }));
            }
            Outcome::Refused(message) | Outcome::Failed(message) => {
                completion.fail(Error::new(ErrorKind::Remote(message)))
            }
            Outcome::Started => unreachable!("handled above"),
        }
    }
}

/// The [`Assist`] of a remote task: it does no work, but its drop tells the pool that the task
/// was dropped, so that a cancelled job is withdrawn from the fleet.
pub(crate) struct RemoteAssist {
    pub(crate) id: u64,
    pub(crate) client: Arc<Client>,
}

impl Assist for RemoteAssist {
    fn assist(&self, _: Option<&Waker>) {}

    fn withdraw(&self) -> bool {
        self.client.withdraw(self.id)
    }
}

impl Drop for RemoteAssist {
    fn drop(&mut self) {
        self.client.forget_if_cancelled(self.id);
    }
}
