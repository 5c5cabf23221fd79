//! The worker side: [`serve`] and [`RemoteWorker`] pull jobs from a queue's stream into a local
//! [`ProcessPool`], only as many as it has idle processes, and push the replies back.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use crate::error::{BuildError, BuildErrorKind};
use crate::process_pool::ProcessPool;
use crate::process_pool::raw::RawReply;
use crate::remote::broker::Broker;
use crate::remote::envelope::{
    self, JobContext, JobEnvelope, Outcome, Refusal, ReplyEnvelope, Signed,
};
use crate::remote::identity;
use crate::remote::keys::{GROUP, Keys};
use crate::remote::pool::{DEFAULT_QUEUE, DEFAULT_REPLAY_WINDOW};
use crate::remote::security::Security;
use crate::remote::tls::TlsFiles;
use crate::sys;

/// How long replies wait in a client's list for a client that went away.
const REPLY_TTL_MS: u64 = 3_600_000;
/// How often a worker tells the broker it is alive, and the longest a pull blocks.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Serves the default queue of the broker at `url` with `workers` local worker processes,
/// until the process gets `SIGTERM` or `SIGINT`; the signing key comes from
/// `SMOL_OFFLOAD_REMOTE_KEY`, and for a `rediss://` url the TLS files from the
/// `SMOL_OFFLOAD_REMOTE_TLS_*` variables. See [`RemoteWorker`] for the other settings.
///
/// Call [`init`](crate::init) first thing in `main`, as for any process pool.
///
/// # Errors
///
/// No signing key, a bad URL, an unreachable broker at start, or worker processes that could
/// not be forked.
pub fn serve(url: &str, workers: usize) -> Result<(), BuildError> {
    RemoteWorker::builder(url).workers(workers).serve()
}

/// A worker of a remote fleet: the settings of [`serve`].
///
/// The worker joins the queue's consumer group, takes a job only when one of its processes is
/// idle, checks the job's signature, build and age, runs it in its local
/// [`ProcessPool`] (a crash kills one process, which is replaced), and pushes the signed reply
/// to the client. A job taken by a worker that died is taken over by another after the
/// visibility timeout. On `SIGTERM` (or `SIGINT`) the worker stops taking jobs, finishes those
/// it holds, and returns.
#[derive(Debug)]
#[must_use = "a worker does nothing until serve() is called"]
pub struct RemoteWorker {
    url: String,
    workers: Option<usize>,
    queue: String,
    key: Option<Vec<u8>>,
    trusted: bool,
    visibility_timeout: Duration,
    max_deliveries: u32,
    stop: Option<Arc<AtomicBool>>,
    tls: TlsFiles,
}

impl RemoteWorker {
    /// A worker of the broker at `url`, with one process per CPU, on the default queue.
    pub fn builder(url: &str) -> RemoteWorker {
        RemoteWorker {
            url: url.to_owned(),
            workers: None,
            queue: DEFAULT_QUEUE.to_owned(),
            key: None,
            trusted: false,
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: 3,
            stop: None,
            tls: TlsFiles::default(),
        }
    }

    /// The number of local worker processes, which is also how many jobs it holds at once.
    pub fn workers(mut self, workers: usize) -> RemoteWorker {
        self.workers = Some(workers);
        self
    }

    /// The queue to serve (default `"default"`).
    pub fn queue(mut self, queue: &str) -> RemoteWorker {
        self.queue = queue.to_owned();
        self
    }

    /// The fleet's signing key, instead of `SMOL_OFFLOAD_REMOTE_KEY`.
    pub fn key(mut self, key: impl AsRef<[u8]>) -> RemoteWorker {
        self.key = Some(key.as_ref().to_vec());
        self
    }

    /// Runs unsigned jobs when no key is set: anyone who can write to the broker can then
    /// run code in this process. Only for a trusted network.
    pub fn trusted_network(mut self) -> RemoteWorker {
        self.trusted = true;
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

    /// Stops like on `SIGTERM` once `flag` is set, for embedding a worker in a larger program.
    pub fn stop_flag(mut self, flag: Arc<AtomicBool>) -> RemoteWorker {
        self.stop = Some(flag);
        self
    }

    /// Trusts only the certificate authorities in the PEM file at `path` for the broker's
    /// `rediss://` certificate, instead of the system's roots (and of
    /// [`TLS_CA_VARIABLE`](crate::remote::TLS_CA_VARIABLE)).
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> RemoteWorker {
        self.tls.ca = Some(path.into());
        self
    }

    /// Presents the certificate chain and private key in these PEM files to a `rediss://`
    /// broker that checks client certificates (mutual TLS), instead of the files named by
    /// [`TLS_CERT_VARIABLE`](crate::remote::TLS_CERT_VARIABLE) and
    /// [`TLS_KEY_VARIABLE`](crate::remote::TLS_KEY_VARIABLE).
    pub fn tls_client_cert(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> RemoteWorker {
        self.tls.cert = Some(cert.into());
        self.tls.key = Some(key.into());
        self
    }

    /// Serves until `SIGTERM`, `SIGINT` or the stop flag.
    ///
    /// # Errors
    ///
    /// See [`serve`].
    pub fn serve(self) -> Result<(), BuildError> {
        let fail = |message: String| BuildError::new(BuildErrorKind::Remote(message));
        let security = Security::choose(self.key.clone(), self.trusted).map_err(fail)?;
        let build = identity::build_identity().map_err(fail)?;
        let broker = Broker::open(&self.url, &self.tls).map_err(fail)?;
        let mut connection = broker.connect().map_err(fail)?;
        let keys = Keys::new(&self.queue);
        ensure_group(&mut connection, &keys).map_err(|err| fail(broker.unreachable(&err)))?;
        let pool = match self.workers {
            Some(workers) => ProcessPool::new(workers)?,
            None => ProcessPool::builder().build()?,
        };
        let stop = self.stop.clone().unwrap_or_default();
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(signal, stop.clone()).map_err(|err| {
                fail(format!(
                    "could not install the worker's signal handler: {err}"
                ))
            })?;
        }
        let shared = Arc::new(Runner {
            keys,
            security,
            broker,
            build,
            pool,
            name: identity::process_name(),
            window_ms: DEFAULT_REPLAY_WINDOW.as_millis() as u64,
            max_deliveries: self.max_deliveries,
            log_tasks: std::env::var_os(crate::remote::LOG_VARIABLE).is_some(),
            held: Mutex::new(HashSet::new()),
        });
        shared.pull_loop(connection, &stop, self.visibility_timeout);
        Ok(())
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

/// One job taken from the stream.
struct Taken {
    entry: String,
    bytes: Vec<u8>,
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
    log_tasks: bool,
    /// The stream entries this worker holds: it renews its claim on them at each heartbeat,
    /// so that no other worker takes over a job that is still running.
    held: Mutex<HashSet<String>>,
}

impl Runner {
    fn log(&self, message: &str) {
        eprintln!("smol-offload worker {}: {message}", self.name);
    }

    /// Takes jobs while processes are idle, hands them to one runner thread per process.
    fn pull_loop(
        self: &Arc<Self>,
        connection: redis::Connection,
        stop: &AtomicBool,
        visibility: Duration,
    ) {
        let processes = self.pool.workers();
        let (job_sender, job_receiver) = mpsc::channel::<Taken>();
        let job_receiver = Arc::new(Mutex::new(job_receiver));
        let (idle_sender, idle_receiver) = mpsc::channel::<()>();
        let mut threads = Vec::new();
        for index in 0..processes {
            let runner = self.clone();
            let jobs = job_receiver.clone();
            let idle = idle_sender.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("smol-offload-remote-run-{index}"))
                .spawn(move || runner.run_loop(&jobs, &idle));
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(err) => self.log(&format!("could not start a runner thread: {err}")),
            }
        }
        let mut idle = threads.len();
        let mut connection = Some(connection);
        let mut last_claim = Instant::now() - visibility;
        let mut last_beat = Instant::now() - HEARTBEAT - visibility;
        let jobs_key = self.keys.jobs();
        self.log(&format!(
            "serving {} with {processes} processes on the redis broker at {}",
            jobs_key, self.broker.address
        ));
        let beat_every = HEARTBEAT.min(visibility / 3);
        while !stop.load(Ordering::Relaxed) {
            while idle_receiver.try_recv().is_ok() {
                idle += 1;
            }
            let Some(open) = &mut connection else {
                match self.broker.connect() {
                    Ok(mut open) => match ensure_group(&mut open, &self.keys) {
                        Ok(()) => connection = Some(open),
                        Err(_) => std::thread::sleep(Duration::from_millis(200)),
                    },
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
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
                if idle_receiver.recv_timeout(beat_every).is_ok() {
                    idle += 1;
                }
                continue;
            }
            match self.take(open, idle, visibility, &mut last_claim, beat_every) {
                Ok(taken) => {
                    let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
                    for job in taken {
                        idle -= 1;
                        held.insert(job.entry.clone());
                        let _ = job_sender.send(job);
                    }
                }
                Err(err) => {
                    if err.code() == Some("NOGROUP") {
                        let _ = ensure_group(open, &self.keys);
                    } else {
                        self.log(&format!("lost the broker, reconnecting: {err}"));
                        connection = None;
                    }
                }
            }
        }
        self.log("stopping: finishing the jobs it holds");
        drop(job_sender);
        for thread in threads {
            let _ = thread.join();
        }
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
            let block = block.as_millis().max(1) as u64;
            let _ =
                open.set_read_timeout(Some(Duration::from_millis(block) + Duration::from_secs(10)));
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

    fn run_loop(&self, jobs: &Mutex<mpsc::Receiver<Taken>>, idle: &mpsc::Sender<()>) {
        let mut connection: Option<redis::Connection> = None;
        loop {
            let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
            let Ok(job) = job else { return };
            if connection.is_none() {
                connection = self.broker.connect().ok();
            }
            let entry = job.entry.clone();
            let handled = match &mut connection {
                Some(open) => self.handle(open, job),
                None => Ok(()),
            };
            self.held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&entry);
            if let Err(err) = handled {
                self.log(&format!("lost the broker while handling a job: {err}"));
                connection = None;
            }
            let _ = idle.send(());
        }
    }

    /// Checks, claims, runs and answers one job.
    fn handle(&self, open: &mut redis::Connection, job: Taken) -> redis::RedisResult<()> {
        let verified = match envelope::verify(
            &job.bytes,
            &self.security,
            &self.build,
            self.window_ms,
            identity::now_ms(),
        ) {
            Ok(verified) => verified,
            Err(Refusal::Untrusted(why)) => return self.refuse(open, &job, &why, None),
            Err(Refusal::Answer(envelope, why)) => {
                return self.refuse(open, &job, &why, Some(&envelope));
            }
        };
        let envelope = verified.envelope().clone();
        if envelope
            .expires_ms
            .is_some_and(|expiry| expiry < identity::now_ms())
        {
            // Its client stopped waiting; it withdrew the job, which this may not have seen.
            return self.acknowledge(open, &job, None);
        }
        let claim_key = self.keys.claim(&envelope.client, envelope.id);
        let ttl = self.window_ms + 60_000;
        let previous: Option<String> = redis::cmd("SET")
            .arg(&claim_key)
            .arg(format!("{} 1 {}", job.entry, self.name))
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl)
            .query(open)?;
        let mut attempt = 1;
        if let Some(previous) = previous {
            // `entry attempts host:pid`, or `cancelled`.
            let mut parts = previous.split(' ');
            let entry = parts.next();
            let attempts = parts.next().and_then(|n| n.parse::<u32>().ok());
            let holder = parts.next().unwrap_or("an unknown worker").to_owned();
            if previous == "cancelled" {
                return self.acknowledge(open, &job, None);
            }
            if entry != Some(job.entry.as_str()) {
                let why = format!(
                    "a replay of job {} of client {}",
                    envelope.id, envelope.client
                );
                return self.refuse(open, &job, &why, None);
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
                return self.acknowledge(open, &job, Some((&envelope, outcome)));
            }
            redis::cmd("SET")
                .arg(&claim_key)
                .arg(format!("{} {} {}", job.entry, attempts + 1, self.name))
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
        let call = sys::call_of_verified_job(&verified);
        let context = JobContext::carried(envelope.context.as_ref());
        let arg = verified.into_arg();
        let outcome = loop {
            let task = self.pool.run_raw(call, arg.clone(), context);
            match async_io::block_on(task) {
                Ok(RawReply { status, payload }) => {
                    break Outcome::Call {
                        status: status as u8,
                        payload,
                    };
                }
                Err(err) if err.is_worker_died() => {
                    let pid = err.worker_pid().unwrap_or(0);
                    self.log(&format!(
                        "worker process {pid} died running job {} (attempt {attempt}): {err}",
                        envelope.id
                    ));
                    if envelope.at_most_once {
                        break Outcome::WorkerDied {
                            pid,
                            signal: err.worker_signal(),
                            code: err.worker_exit_code(),
                        };
                    }
                    if attempt >= self.max_deliveries {
                        break Outcome::Failed(format!(
                            "the job ran {attempt} times and each time its worker process died \
                             (the last, {pid}, {}); it likely kills its worker",
                            err.worker_signal()
                                .map(|signal| format!("by signal {signal}"))
                                .unwrap_or_else(|| "by exiting".to_owned())
                        ));
                    }
                    // At least once: again at once, in the process that replaced it.
                    attempt += 1;
                    redis::cmd("SET")
                        .arg(&claim_key)
                        .arg(format!("{} {attempt} {}", job.entry, self.name))
                        .arg("XX")
                        .arg("KEEPTTL")
                        .query::<()>(open)?;
                }
                Err(err) => {
                    break Outcome::Failed(format!(
                        "worker {} could not run the job: {err}",
                        self.name
                    ));
                }
            }
        };
        self.acknowledge(open, &job, Some((&envelope, outcome)))
    }

    /// Acknowledges and deletes the stream entry, pushing the reply first if there is one.
    fn acknowledge(
        &self,
        open: &mut redis::Connection,
        job: &Taken,
        reply: Option<(&JobEnvelope, Outcome)>,
    ) -> redis::RedisResult<()> {
        let jobs_key = self.keys.jobs();
        let mut pipe = redis::pipe();
        if let Some((envelope, outcome)) = reply {
            let reply_key = self.keys.replies(&envelope.client);
            let reply = ReplyEnvelope {
                id: envelope.id,
                outcome,
                worker: self.name.clone(),
            };
            pipe.cmd("RPUSH")
                .arg(&reply_key)
                .arg(Signed::seal(&reply, &self.security))
                .ignore()
                .cmd("PEXPIRE")
                .arg(&reply_key)
                .arg(REPLY_TTL_MS)
                .ignore();
        }
        pipe.cmd("XACK")
            .arg(&jobs_key)
            .arg(GROUP)
            .arg(&job.entry)
            .ignore()
            .cmd("XDEL")
            .arg(&jobs_key)
            .arg(&job.entry)
            .ignore();
        pipe.query(open)
    }

    /// Logs a refused job, records it for operators, and acknowledges it; a job that was
    /// authenticated gets a reply saying why.
    fn refuse(
        &self,
        open: &mut redis::Connection,
        job: &Taken,
        why: &str,
        envelope: Option<&JobEnvelope>,
    ) -> redis::RedisResult<()> {
        let line = format!("refused stream entry {}: {why}", job.entry);
        self.log(&line);
        redis::pipe()
            .cmd("LPUSH")
            .arg(self.keys.refusals())
            .arg(format!("{}: {line}", self.name))
            .ignore()
            .cmd("LTRIM")
            .arg(self.keys.refusals())
            .arg(0)
            .arg(999)
            .ignore()
            .query::<()>(open)?;
        let reply = envelope.map(|envelope| (envelope, Outcome::Refused(why.to_owned())));
        self.acknowledge(open, job, reply)
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
