//! The worker side: [`serve`] and [`RemoteWorker`] pull jobs from a queue's stream into a local
//! [`ProcessPool`], only as many as it has idle processes, and push the replies back.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::task::Poll;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;

use crate::answer_link::AnswerLink;
use crate::broker::Broker;
use crate::envelope::{
    self, JobContext, JobEnvelope, Outcome, Refusal, ReplyEnvelope, Signed, VerifiedJob,
};
use crate::error::{BuildError, BuildErrorKind};
use crate::fingerprint;
use crate::identity;
use crate::keys::{GROUP, Keys};
use crate::outage::Outage;
use crate::pool::DEFAULT_REPLAY_WINDOW;
use crate::process_pool::ProcessPool;
use crate::process_pool::raw::{Carried, RawReply};
use crate::security::Security;
use crate::settings::{FleetSettings, OpenFleet};
use crate::sys::{self, ErasedCall};
use crate::task::Task;

/// How long replies wait in a client's list for a client that went away.
const REPLY_TTL_MS: u64 = 3_600_000;
/// How often a worker tells the broker it is alive, and the longest a pull blocks.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a job runs before its worker tells its client that it started. Shorter jobs end
/// first and are never announced: the notices cost the many short jobs nothing, and a long
/// job shows as started within a few milliseconds.
const NOTICE_AFTER: Duration = Duration::from_millis(1);

/// Serves the default queue of the broker at `url` with `workers` local worker processes,
/// until the process gets `SIGTERM` or `SIGINT`; the signing key comes from
/// `SMOL_OFFLOAD_REMOTE_KEY`, and for a `rediss://` url the TLS files from the
/// `SMOL_OFFLOAD_REMOTE_TLS_*` variables. `url` takes the forms of
/// [`RemotePool::connect`](crate::RemotePool::connect)'s, `redis+sentinel://` among them. See
/// [`RemoteWorker`] for the other settings.
///
/// Call [`init`](crate::init) first thing in `main`, as for any process pool.
///
/// # Errors
///
/// No signing key, a key other than the fleet's (the broker records a fingerprint of the
/// fleet's key), a bad URL, an unreachable broker at start, or worker processes that could
/// not be forked.
pub fn serve(url: &str, workers: usize) -> Result<(), BuildError> {
    RemoteWorker::builder(url).workers(workers).serve()
}

/// A worker of a remote fleet: the settings of [`serve`].
///
/// The worker joins the queue's consumer group, takes a job only when one of its processes is
/// idle (or, with [`prefetch`](RemoteWorker::prefetch), up to that many jobs per process),
/// checks each job's signature, build and age, claims the jobs in one round trip per batch,
/// runs them in its local [`ProcessPool`] (a crash kills one process, which is replaced), and
/// pushes the signed replies to their clients, one round trip per batch of jobs that ended.
/// A job taken by a worker that died is taken over by another after the visibility timeout.
/// On `SIGTERM` (or `SIGINT`) the worker stops taking jobs, finishes those it holds, and
/// returns.
///
/// While [`serve`](RemoteWorker::serve) runs, it catches `SIGINT` and `SIGTERM` (a handler the
/// program installed before is still called) and, when it returns, gives them back the actions
/// they had, so that Ctrl-C ends the program again. Several workers serving at once in one
/// process share the handler: a signal stops them all, and the last to return restores.
#[derive(Debug)]
#[must_use = "a worker does nothing until serve() is called"]
pub struct RemoteWorker {
    fleet: FleetSettings,
    workers: Option<usize>,
    visibility_timeout: Duration,
    max_deliveries: u32,
    prefetch: usize,
    stop: Option<Arc<AtomicBool>>,
}

impl RemoteWorker {
    /// A worker of the broker at `url`, with one process per CPU, on the default queue.
    pub fn builder(url: &str) -> RemoteWorker {
        RemoteWorker {
            fleet: FleetSettings::new(url),
            workers: None,
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: 3,
            prefetch: 1,
            stop: None,
        }
    }

    /// The number of local worker processes, which is also how many jobs it holds at once.
    pub fn workers(mut self, workers: usize) -> RemoteWorker {
        self.workers = Some(workers);
        self
    }

    /// The queue to serve (default `"default"`).
    pub fn queue(mut self, queue: &str) -> RemoteWorker {
        self.fleet.queue = queue.to_owned();
        self
    }

    /// The fleet's signing key, instead of `SMOL_OFFLOAD_REMOTE_KEY`.
    pub fn key(mut self, key: impl AsRef<[u8]>) -> RemoteWorker {
        self.fleet.key = Some(key.as_ref().to_vec());
        self
    }

    /// Runs unsigned jobs, and sends unsigned replies, when no key is set: for a broker that
    /// only trusted parties can write to.
    ///
    /// A job names the function it runs by its offset in the executable, and the worker calls
    /// the address it names. The signature is what makes that sound: only a client holding
    /// the fleet's key, which computed the offset from a real function of this very build,
    /// can sign a job. Without signatures, whoever can write to the queue picks the address.
    ///
    /// # Safety
    ///
    /// The caller guarantees that everyone who can write to this queue's job stream on the
    /// broker may run arbitrary code in this worker's processes, and writes only jobs made by
    /// a [`RemotePool`](crate::RemotePool) of the same build: any other bytes may make a
    /// worker jump to an address of their choosing, which is undefined behaviour.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use smol_offload_remote::RemoteWorker;
    ///
    /// smol_offload::init();
    /// // SAFETY: the broker listens on the loopback interface of a machine whose every user
    /// // may run code in the workers.
    /// let worker = unsafe { RemoteWorker::builder("redis://127.0.0.1:6379").trusted_network() };
    /// worker.workers(2).serve()?;
    /// # Ok::<(), smol_offload::BuildError>(())
    /// ```
    ///
    /// Without an `unsafe` block, it does not compile:
    ///
    /// ```compile_fail,E0133
    /// let _worker = smol_offload_remote::RemoteWorker::builder("redis://127.0.0.1:6379")
    ///     .trusted_network();
    /// ```
    // Declares a contract for its callers; it does nothing unsafe itself.
    #[allow(unsafe_code)]
    pub unsafe fn trusted_network(mut self) -> RemoteWorker {
        self.fleet.trusted = true;
        self
    }

    /// How long a job may stay taken before another worker takes it over (default 30 s): this
    /// bounds how long the jobs of a worker that died wait. Make it longer than your longest
    /// job, or a job still running may be taken over and run a second time.
    pub fn visibility_timeout(mut self, timeout: Duration) -> RemoteWorker {
        self.visibility_timeout = timeout;
        self
    }

    /// How many times a job is handed out before it fails as killing its workers (default 3).
    pub fn max_deliveries(mut self, deliveries: u32) -> RemoteWorker {
        self.max_deliveries = deliveries.max(1);
        self
    }

    /// How many jobs the worker holds per process (default 1, at least 1): with more, it takes
    /// jobs in larger batches and keeps its processes busy while it talks to the broker, which
    /// is much faster for short jobs, like Celery's `worker_prefetch_multiplier`. A job held
    /// is claimed, so it counts as started (its [`Task::is_started`](crate::Task::is_started)
    /// becomes true a millisecond later) and cancelling it no longer withdraws it, even while
    /// it waits for a process behind the jobs held before it. Keep 1 for long jobs, so that an idle worker elsewhere takes
    /// them instead.
    pub fn prefetch(mut self, jobs_per_process: usize) -> RemoteWorker {
        self.prefetch = jobs_per_process.max(1);
        self
    }

    /// Stops like on `SIGTERM` once `flag` is set, for embedding a worker in a larger program.
    /// A `SIGTERM` or `SIGINT` while it serves sets the flag too.
    pub fn stop_flag(mut self, flag: Arc<AtomicBool>) -> RemoteWorker {
        self.stop = Some(flag);
        self
    }

    /// Trusts only the certificate authorities in the PEM file at `path` for the broker's
    /// `rediss://` certificate, instead of the system's roots (and of
    /// [`TLS_CA_VARIABLE`](crate::env::TLS_CA_VARIABLE)).
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> RemoteWorker {
        self.fleet.tls.ca = Some(path.into());
        self
    }

    /// Presents the certificate chain and private key in these PEM files to a `rediss://`
    /// broker that checks client certificates (mutual TLS), instead of the files named by
    /// [`TLS_CERT_VARIABLE`](crate::env::TLS_CERT_VARIABLE) and
    /// [`TLS_KEY_VARIABLE`](crate::env::TLS_KEY_VARIABLE).
    pub fn tls_client_cert(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> RemoteWorker {
        self.fleet.tls.cert = Some(cert.into());
        self.fleet.tls.key = Some(key.into());
        self
    }

    /// Serves until `SIGTERM`, `SIGINT` or the stop flag.
    ///
    /// # Errors
    ///
    /// See [`serve`].
    pub fn serve(self) -> Result<(), BuildError> {
        let fail = |message: String| BuildError::new(BuildErrorKind::Remote(message));
        let fleet = self.fleet.open().map_err(fail)?;
        let mut connection = fleet.broker.connect().map_err(fail)?;
        // Before it takes a job: a worker with another key would leave them all.
        fleet.join(&mut connection).map_err(fail)?;
        let OpenFleet {
            security,
            build,
            broker,
            keys,
        } = fleet;
        ensure_group(&mut connection, &keys).map_err(|err| fail(broker.unreachable(&err)))?;
        let pool = match self.workers {
            Some(workers) => ProcessPool::new(workers)?,
            None => ProcessPool::builder().build()?,
        };
        let stop = Stop {
            flag: self.stop.clone().unwrap_or_default(),
            _interrupts: sys::catch_interrupts().map_err(|err| {
                fail(format!(
                    "could not install the worker's signal handler: {err}"
                ))
            })?,
        };
        let capacity = pool.workers() * self.prefetch;
        let shared = Arc::new(Runner {
            keys,
            security,
            broker,
            build,
            pool,
            name: identity::process_name(),
            window_ms: DEFAULT_REPLAY_WINDOW.as_millis() as u64,
            max_deliveries: self.max_deliveries,
            capacity,
            log_tasks: std::env::var_os(crate::LOG_VARIABLE).is_some(),
            held: Mutex::new(HashSet::new()),
            visibility: self.visibility_timeout,
        });
        shared.pull_loop(connection, &stop, self.visibility_timeout);
        Ok(())
    }
}

/// When a worker stops: once its stop flag is set, or the process got `SIGINT` or `SIGTERM`
/// while it served. Dropped when `serve` returns, which gives the two signals back the actions
/// they had before.
struct Stop {
    flag: Arc<AtomicBool>,
    _interrupts: sys::CatchingInterrupts,
}

impl Stop {
    fn requested(&self) -> bool {
        if sys::interrupted() {
            // As before the signal was caught here: the program's flag says it too.
            self.flag.store(true, Ordering::Relaxed);
        }
        self.flag.load(Ordering::Relaxed)
    }
}

fn ensure_group(connection: &mut redis::Connection, keys: &Keys) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys.jobs())
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query(connection);
    match created {
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// The stream entries a worker could not act on because the broker went away, with its error:
/// they stay pending, and are taken over after the visibility timeout.
type Lost = (Vec<String>, redis::RedisError);

/// One job taken from the stream.
struct Taken {
    entry: String,
    bytes: Vec<u8>,
}

/// What the answering thread writes to the broker for one job: the reply to its client, if
/// any, the line of a refusal, if any, and the acknowledgement of its stream entry.
struct Answer {
    entry: String,
    reply: Option<(String, Vec<u8>)>,
    refusal: Option<String>,
}

/// A claimed job running in the local process pool.
struct Running {
    entry: String,
    envelope: JobEnvelope,
    call: ErasedCall,
    /// What it carries into the worker process, again on a retry.
    context: Carried,
    claim_key: String,
    attempt: u32,
    task: Task<RawReply>,
    /// When its started notice is due, until it has been sent.
    notice_due: Option<Instant>,
}

/// What the pulling thread hands to the answering thread.
enum Handed {
    Answer(Answer),
    Running(Box<Running>),
}

/// What a job's claim decided.
enum Claimed {
    Run(Box<Running>),
    Answer(Answer),
}

/// The pulling thread's hand-over to the answering thread: a queue and the waker of the
/// answering thread, which waits for new jobs and for the running ones at once.
#[derive(Default)]
struct Inbox {
    items: Mutex<Vec<Handed>>,
    closed: AtomicBool,
    waker: AtomicWaker,
}

impl Inbox {
    fn push(&self, items: impl IntoIterator<Item = Handed>) {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(items);
        self.waker.wake();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn take(&self) -> Vec<Handed> {
        std::mem::take(&mut *self.items.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

struct Runner {
    keys: Keys,
    security: Security,
    broker: Broker,
    build: [u8; 32],
    pool: ProcessPool,
    name: String,
    window_ms: u64,
    max_deliveries: u32,
    /// How many jobs the worker holds at once: its processes times the prefetch.
    capacity: usize,
    log_tasks: bool,
    /// The stream entries this worker holds: it renews its claim on them at each heartbeat,
    /// so that no other worker takes over a job that is still running.
    held: Mutex<HashSet<String>>,
    /// How long a job may go unrenewed before another worker takes it over; also how long a
    /// batch of answers is retried on a broker that went away.
    visibility: Duration,
}

impl Runner {
    fn log(&self, message: &str) {
        eprintln!("smol-offload worker {}: {message}", self.name);
    }

    fn unhold<'a>(&self, entries: impl IntoIterator<Item = &'a String>) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for entry in entries {
            held.remove(entry);
        }
    }

    /// Takes jobs while it holds fewer than its capacity, claims them in batches, and hands
    /// them to the answering thread, which runs them in the process pool and answers.
    fn pull_loop(
        self: &Arc<Self>,
        connection: redis::Connection,
        stop: &Stop,
        visibility: Duration,
    ) {
        let processes = self.pool.workers();
        let inbox = Arc::new(Inbox::default());
        let (idle_sender, idle_receiver) = mpsc::channel::<usize>();
        let answering = {
            let runner = self.clone();
            let inbox = inbox.clone();
            std::thread::Builder::new()
                .name("smol-offload-remote-answer".into())
                .spawn(move || runner.answer_loop(&inbox, &idle_sender))
        };
        let answering = match answering {
            Ok(thread) => thread,
            Err(err) => {
                self.log(&format!("could not start the answering thread: {err}"));
                return;
            }
        };
        let mut idle = self.capacity;
        let mut connection = Some(connection);
        let mut outage: Option<Outage> = None;
        let mut last_claim = Instant::now() - visibility;
        let mut last_beat = Instant::now() - HEARTBEAT - visibility;
        let jobs_key = self.keys.jobs();
        self.log(&format!(
            "serving {} with {processes} processes, holding up to {} jobs, on the redis broker \
             at {}",
            jobs_key, self.capacity, self.broker.address
        ));
        let beat_every = HEARTBEAT.min(visibility / 3);
        // A read blocks for up to `beat_every`: a broker silent for ten seconds more is lost.
        // Set once per connection, not before each read (a system call per job).
        let read_timeout =
            Duration::from_millis(beat_every.as_millis().max(1) as u64) + Duration::from_secs(10);
        if let Some(open) = &mut connection {
            let _ = open.set_read_timeout(Some(read_timeout));
        }
        while !stop.requested() {
            while let Ok(freed) = idle_receiver.try_recv() {
                idle += freed;
            }
            let Some(open) = &mut connection else {
                // A broker that came back empty lost the group too: it is created again.
                // A broker that came back empty lost the fleet's key fingerprint too: it is
                // recorded again (or, if a member with another key got there first, this
                // worker takes no job and says why).
                let reconnected = self.broker.connect().and_then(|mut open| {
                    ensure_group(&mut open, &self.keys)
                        .map_err(|err| self.broker.unreachable(&err))?;
                    fingerprint::join_fleet(&mut open, &self.broker, &self.keys, &self.security)?;
                    Ok(open)
                });
                match reconnected {
                    Ok(open) => {
                        let _ = open.set_read_timeout(Some(read_timeout));
                        connection = Some(open);
                        if outage.take().is_some() {
                            self.log("reconnected to the broker");
                        }
                    }
                    Err(err) => {
                        let first = outage.is_none();
                        if first {
                            self.log(&format!("cannot rejoin the fleet yet: {err}"));
                        }
                        outage.get_or_insert_with(Outage::begin).wait()
                    }
                }
                continue;
            };
            if last_beat.elapsed() >= beat_every {
                last_beat = Instant::now();
                if let Err(err) = self.beat(open, processes, beat_every) {
                    self.log(&format!("lost the broker, reconnecting: {err}"));
                    connection = None;
                    continue;
                }
            }
            if idle == 0 {
                if let Ok(freed) = idle_receiver.recv_timeout(beat_every) {
                    idle += freed;
                }
                continue;
            }
            let taken = match self.take(open, idle, visibility, &mut last_claim, beat_every) {
                Ok(taken) => taken,
                Err(err) => {
                    if err.code() == Some("NOGROUP") {
                        let _ = ensure_group(open, &self.keys);
                    } else {
                        self.log(&format!("lost the broker, reconnecting: {err}"));
                        connection = None;
                    }
                    continue;
                }
            };
            if taken.is_empty() {
                continue;
            }
            idle -= taken.len();
            let entries: Vec<String> = taken.iter().map(|job| job.entry.clone()).collect();
            self.held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(entries.iter().cloned());
            let (handed, left, lost) = self.check_and_claim(open, taken);
            inbox.push(handed);
            // Jobs it could not verify, handed back to the queue for the fleet's workers.
            self.unhold(&left);
            idle += left.len();
            if let Some((lost, err)) = lost {
                // Not answered: they stay pending on the stream, and are taken over (by this
                // worker or another) after the visibility timeout.
                self.log(&format!(
                    "lost the broker while claiming {} jobs: {err}",
                    lost.len()
                ));
                self.unhold(&lost);
                idle += lost.len();
                connection = None;
            }
        }
        self.log("stopping: finishing the jobs it holds");
        inbox.close();
        let _ = answering.join();
        if let Some(open) = &mut connection {
            let _ = redis::cmd("HDEL")
                .arg(self.keys.workers())
                .arg(&self.name)
                .query::<()>(open);
        }
        self.log("stopped");
    }

    /// Tells the broker this worker is alive, and renews its claim on the jobs it holds.
    fn beat(
        &self,
        open: &mut redis::Connection,
        processes: usize,
        every: Duration,
    ) -> redis::RedisResult<()> {
        // Generous, so that a loaded machine is not counted out: a dead worker drops out of the
        // count within ten seconds.
        let expiry = identity::now_ms() + (3 * every.as_millis() as u64).max(10_000);
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(self.keys.workers())
            .arg(&self.name)
            .arg(format!("{processes} {expiry}"))
            .ignore();
        let held: Vec<String> = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        if !held.is_empty() {
            pipe.cmd("XCLAIM")
                .arg(self.keys.jobs())
                .arg(GROUP)
                .arg(&self.name)
                .arg(0)
                .arg(&held)
                .arg("JUSTID")
                .ignore();
        }
        pipe.query(open)
    }

    /// Takes up to `idle` jobs: those of dead workers first, then new ones.
    fn take(
        &self,
        open: &mut redis::Connection,
        idle: usize,
        visibility: Duration,
        last_claim: &mut Instant,
        block: Duration,
    ) -> redis::RedisResult<Vec<Taken>> {
        use redis::streams::{StreamAutoClaimReply, StreamReadReply};
        let jobs_key = self.keys.jobs();
        let mut taken = Vec::new();
        if last_claim.elapsed() >= visibility / 2 {
            *last_claim = Instant::now();
            let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&jobs_key)
                .arg(GROUP)
                .arg(&self.name)
                .arg(visibility.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(idle)
                .query(open)?;
            let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            taken.extend(
                claimed
                    .claimed
                    .into_iter()
                    .filter(|entry| !held.contains(&entry.id))
                    .filter_map(entry_of),
            );
        }
        if taken.is_empty() {
            // The connection's read timeout is longer than this (see `pull_loop`).
            let block = block.as_millis().max(1) as u64;
            let read: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.name)
                .arg("COUNT")
                .arg(idle)
                .arg("BLOCK")
                .arg(block)
                .arg("STREAMS")
                .arg(&jobs_key)
                .arg(">")
                .query(open)?;
            for key in read.map(|read| read.keys).unwrap_or_default() {
                taken.extend(key.ids.into_iter().filter_map(entry_of));
            }
        }
        Ok(taken)
    }

    /// Checks a batch of jobs, claims the runnable ones in one round trip, and starts those
    /// this worker won in the process pool. Also returns the entries of the jobs it could not
    /// verify and left on the queue (see [`Runner::unverified`]), and those it could not claim
    /// because the broker went away, with the error.
    fn check_and_claim(
        &self,
        open: &mut redis::Connection,
        taken: Vec<Taken>,
    ) -> (Vec<Handed>, Vec<String>, Option<Lost>) {
        let now = identity::now_ms();
        let mut handed = Vec::with_capacity(taken.len());
        let mut runnable = Vec::with_capacity(taken.len());
        let mut unverified = Vec::new();
        for job in taken {
            match envelope::verify(&job.bytes, &self.security, &self.build, self.window_ms, now) {
                Ok(verified) => {
                    if verified
                        .envelope()
                        .expires_ms
                        .is_some_and(|expiry| expiry < now)
                    {
                        // Its client stopped waiting; it withdrew the job, which this may not
                        // have seen.
                        handed.push(Handed::Answer(Answer::silent(job.entry)));
                    } else {
                        runnable.push((job.entry, verified));
                    }
                }
                Err(Refusal::Untrusted(why)) => unverified.push((job.entry, why)),
                Err(Refusal::Answer(envelope, why)) => {
                    handed.push(Handed::Answer(self.refusal(
                        job.entry,
                        &why,
                        Some(&envelope),
                    )));
                }
            }
        }
        let left = match self.unverified(open, unverified) {
            Ok((refused, left)) => {
                handed.extend(refused);
                left
            }
            Err((entries, err)) => return (handed, Vec::new(), Some((entries, err))),
        };
        if runnable.is_empty() {
            return (handed, left, None);
        }
        let ttl = self.window_ms + 60_000;
        let mut claims = redis::pipe();
        for (entry, verified) in &runnable {
            let envelope = verified.envelope();
            claims
                .cmd("SET")
                .arg(self.keys.claim(&envelope.client, envelope.id))
                .arg(format!("{entry} 1 {}", self.name))
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(ttl);
        }
        let previous: Vec<Option<String>> = match claims.query(open) {
            Ok(previous) => previous,
            Err(err) => {
                let lost = runnable.into_iter().map(|(entry, _)| entry).collect();
                return (handed, left, Some((lost, err)));
            }
        };
        let mut lost: Option<Lost> = None;
        for ((entry, verified), previous) in runnable.into_iter().zip(previous) {
            let kept = entry.clone();
            match self.claimed(open, entry, verified, previous.as_deref()) {
                Ok(Claimed::Run(running)) => handed.push(Handed::Running(running)),
                Ok(Claimed::Answer(answer)) => handed.push(Handed::Answer(answer)),
                Err(err) => match &mut lost {
                    Some((entries, _)) => entries.push(kept),
                    None => lost = Some((vec![kept], err)),
                },
            }
        }
        (handed, left, lost)
    }

    /// The jobs this worker could not verify (forged, or signed with a key other than its
    /// own). A job is refused (acknowledged, deleted and recorded for operators) only once
    /// every live worker of the queue has failed to verify it; until then it stays pending and
    /// is handed back at once, for a worker that holds the fleet's key: a worker with the wrong
    /// key never drops the fleet's jobs. Returns the refusals and the entries left; on a
    /// broker error, every entry, which stays pending.
    fn unverified(
        &self,
        open: &mut redis::Connection,
        jobs: Vec<(String, String)>,
    ) -> Result<(Vec<Handed>, Vec<String>), Lost> {
        if jobs.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let ttl = self.window_ms + 60_000;
        let mut pipe = redis::pipe();
        for (entry, _) in &jobs {
            let key = self.keys.unverified(entry);
            pipe.cmd("SADD")
                .arg(&key)
                .arg(&self.name)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl)
                .ignore()
                .cmd("SMEMBERS")
                .arg(&key);
        }
        let answered = pipe.query::<Vec<HashSet<String>>>(open).and_then(|failed| {
            let workers = redis::cmd("HGETALL")
                .arg(self.keys.workers())
                .query::<Vec<(String, String)>>(open)?;
            Ok((workers, failed))
        });
        let (workers, failed) = match answered {
            Ok(answered) => answered,
            Err(err) => return Err((jobs.into_iter().map(|(entry, _)| entry).collect(), err)),
        };
        let now = identity::now_ms();
        let live: Vec<String> = workers
            .into_iter()
            .filter(|(_, value)| {
                value
                    .split(' ')
                    .nth(1)
                    .and_then(|expiry| expiry.parse::<u64>().ok())
                    .is_some_and(|expiry| expiry >= now)
            })
            .map(|(name, _)| name)
            .collect();
        let mut refused = Vec::new();
        let mut left = Vec::new();
        let mut first_why = None;
        for ((entry, why), failed) in jobs.into_iter().zip(failed) {
            if live.iter().all(|worker| failed.contains(worker)) {
                let why = format!("{why}; no live worker of the queue could verify it");
                refused.push(Handed::Answer(self.refusal(entry, &why, None)));
            } else {
                first_why.get_or_insert(why);
                left.push(entry);
            }
        }
        if let Some(why) = first_why {
            self.log(&format!(
                "could not verify {} jobs ({why}): left for the queue's other workers; is this \
                 worker's key the fleet's?",
                left.len()
            ));
            // Handed back at once: idle as long as the visibility timeout, without counting a
            // delivery, so that any worker takes them over now.
            let handed_back = redis::cmd("XCLAIM")
                .arg(self.keys.jobs())
                .arg(GROUP)
                .arg(&self.name)
                .arg(0)
                .arg(&left)
                .arg("IDLE")
                .arg(self.visibility.as_millis() as u64)
                .arg("JUSTID")
                .query::<()>(open);
            if let Err(err) = handed_back {
                return Err((left, err));
            }
        }
        Ok((refused, left))
    }

    /// Acts on a job's claim: `previous` is `None` when this worker won it, else the claim
    /// someone made before (`entry attempts host:pid`, or `cancelled`).
    fn claimed(
        &self,
        open: &mut redis::Connection,
        entry: String,
        verified: VerifiedJob,
        previous: Option<&str>,
    ) -> redis::RedisResult<Claimed> {
        let call = sys::call_of_verified_job(&verified);
        let envelope = verified.into_envelope();
        let claim_key = self.keys.claim(&envelope.client, envelope.id);
        let mut attempt = 1;
        if let Some(previous) = previous {
            let mut parts = previous.split(' ');
            let claimed_entry = parts.next();
            let attempts = parts.next().and_then(|n| n.parse::<u32>().ok());
            let holder = parts.next().unwrap_or("an unknown worker").to_owned();
            if previous == "cancelled" {
                return Ok(Claimed::Answer(Answer::silent(entry)));
            }
            if claimed_entry != Some(entry.as_str()) {
                let why = format!(
                    "a replay of job {} of client {}",
                    envelope.id, envelope.client
                );
                return Ok(Claimed::Answer(self.refusal(entry, &why, None)));
            }
            // Taken before by a worker that died.
            let attempts = attempts.unwrap_or(1);
            if envelope.at_most_once || attempts >= self.max_deliveries {
                let outcome = if envelope.at_most_once {
                    self.log(&format!(
                        "job {} of client {} was taken by {holder}, which stopped answering: \
                         at most once, so it fails",
                        envelope.id, envelope.client
                    ));
                    let pid = holder.rsplit(':').next().and_then(|pid| pid.parse().ok());
                    Outcome::WorkerDied {
                        pid: pid.unwrap_or(0),
                        signal: None,
                        code: None,
                    }
                } else {
                    Outcome::Failed(format!(
                        "the job was handed out {attempts} times and each worker died running \
                         it; it likely kills its worker"
                    ))
                };
                return Ok(Claimed::Answer(self.reply(entry, &envelope, outcome)));
            }
            redis::cmd("SET")
                .arg(&claim_key)
                .arg(format!("{entry} {} {}", attempts + 1, self.name))
                .arg("XX")
                .arg("KEEPTTL")
                .query::<()>(open)?;
            attempt = attempts + 1;
        }
        if self.log_tasks {
            self.log(&format!(
                "runs job {} of client {}",
                envelope.id, envelope.client
            ));
        }
        let context = JobContext::carried(envelope.context.as_ref());
        let task = self.pool.run_raw(call, envelope.arg.clone(), context);
        Ok(Claimed::Run(Box::new(Running {
            entry,
            envelope,
            call,
            context,
            claim_key,
            attempt,
            task,
            notice_due: Some(Instant::now() + NOTICE_AFTER),
        })))
    }

    /// Waits for the jobs it is handed to end, and answers them in batches: one round trip
    /// for all the replies and acknowledgements ready at once, and the started notices of the
    /// jobs that have run for [`NOTICE_AFTER`].
    fn answer_loop(&self, inbox: &Inbox, idle: &mpsc::Sender<usize>) {
        let mut connection = AnswerLink::default();
        let mut running: Vec<Box<Running>> = Vec::new();
        let mut timer = async_io::Timer::never();
        let mut timer_at: Option<Instant> = None;
        // One `block_on` for the thread's life, its blocking writes included: this thread then
        // waits for its jobs in the reactor itself. A `block_on` per batch would wake
        // async-io's helper thread each time it returns, which would then sit in the reactor
        // and relay every job's end to this thread: one more wake-up per answer.
        async_io::block_on(async {
            loop {
                let mut answers = Vec::new();
                let mut finished = Vec::new();
                let closed = futures_lite::future::poll_fn(|cx| {
                    inbox.waker.register(cx.waker());
                    let closed = inbox.closed.load(Ordering::Acquire);
                    for handed in inbox.take() {
                        match handed {
                            Handed::Answer(answer) => answers.push(answer),
                            Handed::Running(job) => running.push(job),
                        }
                    }
                    let mut index = 0;
                    while index < running.len() {
                        match Pin::new(&mut running[index].task).poll(cx) {
                            Poll::Ready(result) => {
                                finished.push((running.swap_remove(index), result))
                            }
                            Poll::Pending => index += 1,
                        }
                    }
                    if !answers.is_empty() || !finished.is_empty() {
                        return Poll::Ready(false);
                    }
                    if closed && running.is_empty() {
                        return Poll::Ready(true);
                    }
                    let due = running.iter().filter_map(|job| job.notice_due).min();
                    if due != timer_at {
                        timer_at = due;
                        match due {
                            Some(at) => timer.set_at(at),
                            None => timer = async_io::Timer::never(),
                        }
                    }
                    match Pin::new(&mut timer).poll(cx) {
                        Poll::Ready(_) => {
                            timer_at = None;
                            timer = async_io::Timer::never();
                            Poll::Ready(false)
                        }
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await;
                for (job, result) in finished {
                    match self.outcome(&mut connection, job, result) {
                        Claimed::Run(again) => running.push(again),
                        Claimed::Answer(answer) => answers.push(answer),
                    }
                }
                let now = Instant::now();
                let notices: Vec<(&str, Vec<u8>)> = running
                    .iter_mut()
                    .filter(|job| job.notice_due.is_some_and(|due| due <= now))
                    .map(|job| {
                        job.notice_due = None;
                        let notice = ReplyEnvelope {
                            id: job.envelope.id,
                            outcome: Outcome::Started,
                            worker: self.name.clone(),
                        };
                        (
                            job.envelope.client.as_str(),
                            Signed::seal(&notice, &self.security),
                        )
                    })
                    .collect();
                if !answers.is_empty() || !notices.is_empty() {
                    self.write_answers(&mut connection, &answers, &notices);
                }
                if !answers.is_empty() {
                    self.unhold(answers.iter().map(|answer| &answer.entry));
                    let _ = idle.send(answers.len());
                }
                if closed {
                    // Reads the last acknowledgements: closing a socket with replies unread
                    // resets the connection, which may drop the last answers before the broker
                    // has read them.
                    let _ = connection.ready(&self.broker, &|line: &str| self.log(line));
                    return;
                }
            }
        })
    }

    /// The answer to a job that ended in the process pool, or the job again when its process
    /// died and it may run once more.
    fn outcome(
        &self,
        connection: &mut AnswerLink,
        mut job: Box<Running>,
        result: Result<RawReply, crate::Error>,
    ) -> Claimed {
        let outcome = match result {
            Ok(RawReply { status, payload }) => Outcome::Call {
                status: status as u8,
                payload,
            },
            Err(err) if err.is_worker_died() => {
                let pid = err.worker_pid().unwrap_or(0);
                self.log(&format!(
                    "worker process {pid} died running job {} (attempt {}): {err}",
                    job.envelope.id, job.attempt
                ));
                if job.envelope.at_most_once {
                    Outcome::WorkerDied {
                        pid,
                        signal: err.worker_signal(),
                        code: err.worker_exit_code(),
                    }
                } else if job.attempt >= self.max_deliveries {
                    Outcome::Failed(format!(
                        "the job ran {} times and each time its worker process died (the last, \
                         {pid}, {}); it likely kills its worker",
                        job.attempt,
                        err.worker_signal()
                            .map(|signal| format!("by signal {signal}"))
                            .unwrap_or_else(|| "by exiting".to_owned())
                    ))
                } else {
                    // At least once: again at once, in the process that replaced it.
                    job.attempt += 1;
                    self.record_attempt(connection, &job);
                    job.task = self
                        .pool
                        .run_raw(job.call, job.envelope.arg.clone(), job.context);
                    return Claimed::Run(job);
                }
            }
            Err(err) => {
                Outcome::Failed(format!("worker {} could not run the job: {err}", self.name))
            }
        };
        Claimed::Answer(self.reply(job.entry, &job.envelope, outcome))
    }

    /// Counts one more run of `job` in its claim, so that a worker that takes it over knows.
    fn record_attempt(&self, connection: &mut AnswerLink, job: &Running) {
        let log = |line: &str| self.log(line);
        let recorded = connection.ready(&self.broker, &log).and_then(|open| {
            redis::cmd("SET")
                .arg(&job.claim_key)
                .arg(format!("{} {} {}", job.entry, job.attempt, self.name))
                .arg("XX")
                .arg("KEEPTTL")
                .query::<()>(open)
                .map_err(|err| err.to_string())
        });
        if let Err(err) = recorded {
            self.log(&format!("could not record a job's new attempt: {err}"));
            connection.lose();
        }
    }

    /// Sends a batch of started notices and answers in one pipeline, without waiting for the
    /// broker's acknowledgement (see [`AnswerLink`]): the notices and the replies, one push per
    /// client, the refusals, and the acknowledgement and deletion of every answered entry. If
    /// the broker went away, again on a new connection, with backoff, until the visibility
    /// timeout (by then the entries are taken over); if the connection breaks after sending,
    /// the entries stay pending and are taken over after the visibility timeout (at least
    /// once).
    fn write_answers(
        &self,
        connection: &mut AnswerLink,
        answers: &[Answer],
        notices: &[(&str, Vec<u8>)],
    ) {
        let jobs_key = self.keys.jobs();
        let mut pipe = redis::pipe();
        let mut replies: Vec<(&str, Vec<&[u8]>)> = Vec::new();
        for (client, bytes) in notices {
            match replies.iter_mut().find(|(to, _)| to == client) {
                Some((_, batch)) => batch.push(bytes),
                None => replies.push((client, vec![bytes])),
            }
        }
        for answer in answers {
            if let Some((client, bytes)) = &answer.reply {
                match replies.iter_mut().find(|(to, _)| to == client) {
                    Some((_, batch)) => batch.push(bytes),
                    None => replies.push((client, vec![bytes])),
                }
            }
        }
        for (client, batch) in replies {
            let reply_key = self.keys.replies(client);
            pipe.cmd("RPUSH")
                .arg(&reply_key)
                .arg(batch)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&reply_key)
                .arg(REPLY_TTL_MS)
                .ignore();
        }
        let refusals: Vec<&String> = answers
            .iter()
            .filter_map(|answer| answer.refusal.as_ref())
            .collect();
        if !refusals.is_empty() {
            pipe.cmd("LPUSH")
                .arg(self.keys.refusals())
                .arg(refusals)
                .ignore()
                .cmd("LTRIM")
                .arg(self.keys.refusals())
                .arg(0)
                .arg(999)
                .ignore();
        }
        let entries: Vec<&String> = answers.iter().map(|answer| &answer.entry).collect();
        if !entries.is_empty() {
            pipe.cmd("XACK")
                .arg(&jobs_key)
                .arg(GROUP)
                .arg(&entries)
                .ignore()
                .cmd("XDEL")
                .arg(&jobs_key)
                .arg(&entries)
                .ignore();
        }
        let log = |line: &str| self.log(line);
        let mut outage: Option<Outage> = None;
        loop {
            match connection.send(&self.broker, &pipe, &log) {
                Ok(()) => return,
                Err(err) => {
                    // Once at once, as a connection that broke since its last use is common.
                    let Some(down) = &mut outage else {
                        outage = Some(Outage::begin());
                        continue;
                    };
                    if down.exceeds(self.visibility) {
                        self.log(&format!(
                            "lost the broker while answering {} jobs; they will be taken over \
                             after the visibility timeout: {err}",
                            answers.len()
                        ));
                        return;
                    }
                    down.wait();
                }
            }
        }
    }

    /// The answer carrying `outcome` to the job's client.
    fn reply(&self, entry: String, envelope: &JobEnvelope, outcome: Outcome) -> Answer {
        let reply = ReplyEnvelope {
            id: envelope.id,
            outcome,
            worker: self.name.clone(),
        };
        Answer {
            entry,
            reply: Some((
                envelope.client.clone(),
                Signed::seal(&reply, &self.security),
            )),
            refusal: None,
        }
    }

    /// Logs a refused job and makes the answer that records it for operators and
    /// acknowledges it; a job that was authenticated gets a reply saying why.
    fn refusal(&self, entry: String, why: &str, envelope: Option<&JobEnvelope>) -> Answer {
        let line = format!("refused stream entry {entry}: {why}");
        self.log(&line);
        let mut answer = match envelope {
            Some(envelope) => self.reply(entry, envelope, Outcome::Refused(why.to_owned())),
            None => Answer::silent(entry),
        };
        answer.refusal = Some(format!("{}: {line}", self.name));
        answer
    }
}

impl Answer {
    /// Only the acknowledgement: a withdrawn or expired job.
    fn silent(entry: String) -> Answer {
        Answer {
            entry,
            reply: None,
            refusal: None,
        }
    }
}

/// The job bytes of a stream entry (entries without them, or deleted, are skipped).
fn entry_of(entry: redis::streams::StreamId) -> Option<Taken> {
    match entry.map.get("job") {
        Some(redis::Value::BulkString(bytes)) => Some(Taken {
            entry: entry.id,
            bytes: bytes.clone(),
        }),
        _ => Some(Taken {
            entry: entry.id,
            bytes: Vec::new(),
        }),
    }
}
