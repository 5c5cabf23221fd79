//! [`RemotePool`]: the same [`Executor`] on worker processes of other machines, through Redis.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{Client, Recovery, RemoteAssist};
use crate::codec;
use crate::envelope::{JobContext, JobEnvelope, Signed};
use crate::error::{BuildError, BuildErrorKind, Error, ErrorKind};
use crate::executor::Executor;
use crate::identity;
use crate::metrics::{self, Kind, PoolMetrics};
use crate::outage::DEFAULT_RECONNECT_LIMIT;
use crate::panics::{self, Reporting};
use crate::process_pool::raw::MAX_ARGUMENT;
use crate::settings::{FleetSettings, OpenFleet};
use crate::stats::PoolStats;
use crate::sys;
use crate::task::{self, Task};

/// How long the fleet remembers a job id against replays, and how old a job may get before
/// workers refuse it.
pub(crate) const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(3600);

/// What happens to a job whose worker died while running it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Delivery {
    /// Another worker runs it again, after the workers' visibility timeout (the default). A job
    /// may then run more than once: make it idempotent.
    #[default]
    AtLeastOnce,
    /// The task fails with an error whose [`is_worker_died`](crate::Error::is_worker_died) is
    /// true. A job never runs twice, and may not run to the end.
    AtMostOnce,
}

/// A pool of worker processes on other machines, reached through a Redis broker, behind the
/// same [`Executor`] as [`ThreadPool`](crate::ThreadPool) and [`ProcessPool`](crate::ProcessPool).
///
/// Workers run the same executable in worker mode (see [`serve`](crate::serve)); a job
/// names its function by its offset in that executable and carries the executable's SHA-256,
/// so a worker running another build refuses it (and `run` refuses a function whose code lies
/// in a shared library, with an error naming it: the identity does not cover that code). Jobs and replies are signed with HMAC-SHA256
/// under a key shared by the fleet (`SMOL_OFFLOAD_REMOTE_KEY`). Each pool has one submit thread
/// and one reply thread, which blocks on the pool's own reply list in Redis: no polling.
///
/// A panic in the remote function comes back as an error whose
/// [`is_panic`](crate::Error::is_panic) is true, with its message; a task whose worker process
/// died is run again elsewhere, or fails with [`is_worker_died`](crate::Error::is_worker_died)
/// under [`Delivery::AtMostOnce`]. Dropping a task before a worker took its job withdraws the
/// job, which then never runs; dropping the last handle fails every pending task with a
/// shutdown error and withdraws their jobs. A task [`is_started`](crate::Task::is_started) once
/// a worker has held its job for a millisecond (shorter jobs go from queued to finished);
/// [`cancel`](crate::Task::cancel) asks the broker whether a worker
/// claimed it first: if none did, the job never runs and the task is cancelled; if one did, it
/// waits for the job's result, as for a started thread task. If the broker goes away, the
/// pool reconnects and its tasks wait; they fail only if it stays unreachable past the
/// [`reconnect_limit`](RemotePoolBuilder::reconnect_limit).
///
/// # Examples
///
/// ```no_run
/// use smol_offload::Executor;
/// use smol_offload_remote::RemotePool;
///
/// fn square(n: u64) -> u64 {
///     n * n
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     smol_offload::init();
///     if std::env::args().any(|arg| arg == "--worker") {
///         // On each worker machine: the same binary, with the same SMOL_OFFLOAD_REMOTE_KEY.
///         return Ok(smol_offload_remote::serve("redis://broker:6379", 4)?);
///     }
///     let pool = RemotePool::connect("redis://broker:6379")?;
///     smol::block_on(async {
///         assert_eq!(pool.run(square, 7).await?, 49);
///         Ok(())
///     })
/// }
/// ```
#[derive(Clone)]
pub struct RemotePool {
    handle: Arc<Handle>,
}

struct Handle {
    client: Arc<Client>,
    name: String,
    build: [u8; 32],
    timeout: Option<Duration>,
    delivery: Delivery,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.client.close();
        let before = self.client.fleet_workers.swap(0, Ordering::Relaxed);
        self.client.counters.metrics.workers_changed(before, 0);
    }
}

/// The state of a queue's fleet, as the broker sees it now: see [`RemotePool::fleet`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetStats {
    /// Jobs in the queue, waiting or taken by a worker and not finished yet.
    pub queue_length: u64,
    /// Of those, the jobs a worker has taken.
    pub taken: u64,
    /// Worker processes of live workers, all hosts together.
    pub workers: usize,
    /// The live workers, as `host:pid`.
    pub hosts: Vec<String>,
}

impl RemotePool {
    /// A pool on the broker at `url` (`redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS, with the TLS files of the `SMOL_OFFLOAD_REMOTE_TLS_*` variables, or
    /// `redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/db]` for the master
    /// of a Redis Sentinel service), on the default queue, with the signing key from
    /// `SMOL_OFFLOAD_REMOTE_KEY`.
    ///
    /// # Errors
    ///
    /// A bad URL, no signing key, or an unreachable broker.
    pub fn connect(url: &str) -> Result<RemotePool, BuildError> {
        RemotePool::builder(url).build()
    }

    /// A builder for the queue name, signing key, default timeout and delivery policy.
    pub fn builder(url: &str) -> RemotePoolBuilder {
        RemotePoolBuilder {
            name: None,
            fleet: FleetSettings::new(url),
            timeout: None,
            delivery: Delivery::default(),
            reconnect_limit: DEFAULT_RECONNECT_LIMIT,
        }
    }

    /// Asks the broker how long the queue is and how many workers serve it.
    ///
    /// # Errors
    ///
    /// The broker could not be reached.
    pub fn fleet(&self) -> Result<FleetStats, Error> {
        let client = &self.handle.client;
        let remote = |message: String| Error::new(ErrorKind::Remote(message));
        let mut connection = client.broker.connect().map_err(remote)?;
        let jobs = client.keys.jobs();
        let (length, pending, workers): (u64, redis::Value, Vec<(String, String)>) = redis::pipe()
            .cmd("XLEN")
            .arg(&jobs)
            .cmd("XPENDING")
            .arg(&jobs)
            .arg(crate::keys::GROUP)
            .cmd("HGETALL")
            .arg(client.keys.workers())
            .query(&mut connection)
            .or_else(|_| {
                // No group yet (no worker ever started): nothing is taken.
                redis::pipe()
                    .cmd("XLEN")
                    .arg(&jobs)
                    .cmd("ECHO")
                    .arg(0)
                    .cmd("HGETALL")
                    .arg(client.keys.workers())
                    .query(&mut connection)
            })
            .map_err(|err| remote(client.broker.unreachable(&err)))?;
        let taken = match pending {
            redis::Value::Array(fields) => match fields.first() {
                Some(redis::Value::Int(count)) => *count as u64,
                _ => 0,
            },
            _ => 0,
        };
        let now = identity::now_ms();
        let mut stats = FleetStats {
            queue_length: length,
            taken,
            ..FleetStats::default()
        };
        for (host, value) in workers {
            let mut parts = value.split(' ').map(str::parse::<u64>);
            if let (Some(Ok(processes)), Some(Ok(expiry))) = (parts.next(), parts.next())
                && expiry >= now
            {
                stats.workers += processes as usize;
                stats.hosts.push(host);
            }
        }
        stats.hosts.sort();
        let before = client.fleet_workers.swap(stats.workers, Ordering::Relaxed);
        client
            .counters
            .metrics
            .workers_changed(before, stats.workers);
        Ok(stats)
    }

    /// The pool's name, given to [`RemotePoolBuilder::name`], else `"unnamed"`.
    pub fn name(&self) -> &str {
        &self.handle.name
    }

    /// This pool's tasks: `queued` counts those submitted and not answered yet, `workers` the
    /// fleet's worker processes when last asked (see [`fleet`](RemotePool::fleet)).
    pub fn stats(&self) -> PoolStats {
        let client = &self.handle.client;
        client
            .counters
            .snapshot(client.fleet_workers.load(Ordering::Relaxed))
    }
}

impl Executor for RemotePool {
    fn run<A, R>(&self, f: fn(A) -> R, arg: A) -> Task<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let call = sys::erase(f);
        if let Some(refusal) = call.remote_refusal() {
            return Task::ready(Err(Error::new(ErrorKind::ForeignCode(refusal))));
        }
        let arg = match panics::catch(Reporting::Chain, || codec::encode(&arg)) {
            Ok(Ok(bytes)) if bytes.len() <= MAX_ARGUMENT => bytes,
            Ok(Ok(bytes)) => {
                let detail = format!("{} bytes is more than a worker takes", bytes.len());
                return Task::ready(Err(Error::codec("serialize the argument", detail, None)));
            }
            Ok(Err(err)) => {
                return Task::ready(Err(Error::codec(
                    "serialize the argument",
                    err.message,
                    err.source,
                )));
            }
            Err(caught) => return Task::ready(Err(Error::from_caught(caught))),
        };
        let handle = &self.handle;
        let client = &handle.client;
        let id = client.next_id();
        let issued_ms = identity::now_ms();
        let envelope = JobEnvelope {
            client: client.id.clone(),
            id,
            build: handle.build,
            call: call.to_portable(),
            issued_ms,
            expires_ms: handle
                .timeout
                .map(|limit| issued_ms + limit.as_millis() as u64),
            at_most_once: handle.delivery == Delivery::AtMostOnce,
            arg,
            context: JobContext::capture(),
        };
        let job = Signed::seal(&envelope, &client.security);
        let (promise, task) = task::timed_pair::<R>(client.counters.metrics.timer());
        client.submit(id, job, Box::new(promise), handle.timeout);
        task.with_assist(Box::new(RemoteAssist {
            id,
            client: client.clone(),
        }))
    }

    /// The fleet's worker processes when last asked (at build and by
    /// [`fleet`](RemotePool::fleet)), and at least 1, so that code that sizes its work by it
    /// keeps working before the first worker joins.
    fn workers(&self) -> usize {
        self.handle
            .client
            .fleet_workers
            .load(Ordering::Relaxed)
            .max(1)
    }

    fn stats(&self) -> PoolStats {
        RemotePool::stats(self)
    }
}

impl fmt::Debug for RemotePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemotePool")
            .field("broker", &self.handle.client.broker.address)
            .field("client", &self.handle.client.id)
            .field("delivery", &self.handle.delivery)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Builds a [`RemotePool`]: `RemotePool::builder(url).queue("images").build()`.
#[must_use = "a builder does nothing until build() is called"]
pub struct RemotePoolBuilder {
    name: Option<String>,
    fleet: FleetSettings,
    timeout: Option<Duration>,
    delivery: Delivery,
    reconnect_limit: Duration,
}

impl fmt::Debug for RemotePoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemotePoolBuilder")
            .field("name", &self.name)
            .field("fleet", &self.fleet)
            .field("timeout", &self.timeout)
            .field("delivery", &self.delivery)
            .field("reconnect_limit", &self.reconnect_limit)
            .finish_non_exhaustive()
    }
}

impl RemotePoolBuilder {
    /// Names the pool: its `pool` label in metrics (feature `metrics`). Without it, the pool
    /// is `"unnamed"`.
    pub fn name(mut self, name: &str) -> RemotePoolBuilder {
        self.name = Some(name.to_owned());
        self
    }

    /// The queue's name (default `"default"`); workers must serve the same one.
    pub fn queue(mut self, queue: &str) -> RemotePoolBuilder {
        self.fleet.queue = queue.to_owned();
        self
    }

    /// The fleet's signing key, instead of `SMOL_OFFLOAD_REMOTE_KEY`.
    pub fn key(mut self, key: impl AsRef<[u8]>) -> RemotePoolBuilder {
        self.fleet.key = Some(key.as_ref().to_vec());
        self
    }

    /// Sends jobs unsigned, and accepts unsigned replies, when no key is set: for a broker
    /// that only trusted parties can write to.
    ///
    /// This pool calls nothing through an address it reads, but its unsigned jobs run only on
    /// workers that accept unsigned jobs
    /// ([`RemoteWorker::trusted_network`](crate::RemoteWorker::trusted_network)),
    /// whose soundness rests on the same promise; and any writer can forge an unsigned reply.
    /// Turning signatures off is an `unsafe` call on both sides, so that a review finds it.
    ///
    /// # Safety
    ///
    /// The caller guarantees that everyone who can write to the broker (this queue's job
    /// stream and this pool's reply list) may run arbitrary code in the workers' processes:
    /// an unsigned job names, by its offset in the executable, the address that a worker
    /// calls, so whoever writes one chooses what the worker jumps to.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use smol_offload_remote::RemotePool;
    ///
    /// // SAFETY: the broker listens on the loopback interface of a machine whose every user
    /// // may run code in the workers.
    /// let pool = unsafe { RemotePool::builder("redis://127.0.0.1:6379").trusted_network() };
    /// let pool = pool.build()?;
    /// # drop(pool);
    /// # Ok::<(), smol_offload::BuildError>(())
    /// ```
    ///
    /// Without an `unsafe` block, it does not compile:
    ///
    /// ```compile_fail,E0133
    /// let _pool = smol_offload_remote::RemotePool::builder("redis://127.0.0.1:6379").trusted_network();
    /// ```
    // Declares a contract for its callers; it does nothing unsafe itself.
    #[allow(unsafe_code)]
    pub unsafe fn trusted_network(mut self) -> RemotePoolBuilder {
        self.fleet.trusted = true;
        self
    }

    /// Fails each task with an error whose [`is_timeout`](crate::Error::is_timeout) is true
    /// when no reply came within `limit`; a job not started by then never starts.
    pub fn timeout(mut self, limit: Duration) -> RemotePoolBuilder {
        self.timeout = Some(limit);
        self
    }

    /// What happens to a job whose worker died (default [`Delivery::AtLeastOnce`]).
    pub fn delivery(mut self, delivery: Delivery) -> RemotePoolBuilder {
        self.delivery = delivery;
        self
    }

    /// How long the broker may stay unreachable before the tasks waiting on it fail (default
    /// [`DEFAULT_RECONNECT_LIMIT`](crate::DEFAULT_RECONNECT_LIMIT), 30 s). Until then the
    /// pool reconnects with backoff (50 ms doubling to 2 s) and its tasks wait; once back, it
    /// submits again the jobs the broker lost (at most once: fails those that may have run).
    /// Past the limit, the pending tasks fail with an error that says so, and so do the tasks
    /// submitted while the broker stays down.
    pub fn reconnect_limit(mut self, limit: Duration) -> RemotePoolBuilder {
        self.reconnect_limit = limit;
        self
    }

    /// Trusts only the certificate authorities in the PEM file at `path` for the broker's
    /// `rediss://` certificate, instead of the system's roots (and of
    /// [`TLS_CA_VARIABLE`](crate::env::TLS_CA_VARIABLE)).
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> RemotePoolBuilder {
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
    ) -> RemotePoolBuilder {
        self.fleet.tls.cert = Some(cert.into());
        self.fleet.tls.key = Some(key.into());
        self
    }

    /// Connects to the broker and starts the pool's two threads.
    ///
    /// # Errors
    ///
    /// A bad URL, no signing key (and no [`trusted_network`](Self::trusted_network)), a key
    /// other than the fleet's (see `docs/remote.md`), an
    /// executable that cannot be read to identify the build, an unreachable broker, wrong
    /// credentials, or TLS files that cannot be read or a broker certificate that does not
    /// verify.
    pub fn build(self) -> Result<RemotePool, BuildError> {
        let fail = |message: String| BuildError::new(BuildErrorKind::Remote(message));
        let fleet = self.fleet.open().map_err(fail)?;
        // The key is checked before the pool starts: a pool with another key sends no job.
        fleet
            .join(&mut fleet.broker.connect().map_err(fail)?)
            .map_err(fail)?;
        let OpenFleet {
            security,
            build,
            broker,
            keys,
        } = fleet;
        let name = self.name.unwrap_or_else(|| metrics::UNNAMED.to_owned());
        let client = Client::start(
            keys,
            identity::fresh_client_id(),
            security,
            broker,
            // The claim outlives the window in which a worker would accept the job.
            DEFAULT_REPLAY_WINDOW.as_millis() as u64 + 60_000,
            Recovery {
                reconnect_limit: self.reconnect_limit,
                at_most_once: self.delivery == Delivery::AtMostOnce,
            },
            PoolMetrics::new(&name, Kind::Remote),
        )
        .map_err(fail)?;
        let pool = RemotePool {
            handle: Arc::new(Handle {
                client,
                name,
                build,
                timeout: self.timeout,
                delivery: self.delivery,
            }),
        };
        let _ = pool.fleet(); // learn the worker count; the broker answered just now
        Ok(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_and_builders_can_cross_threads() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        fn sendable<T: Send + 'static>() {}
        shareable::<RemotePool>();
        sendable::<RemotePoolBuilder>();
        sendable::<Task<u64>>();
    }

    #[test]
    fn a_pool_without_a_key_or_with_a_bad_url_is_refused_before_connecting() {
        let err = RemotePool::builder("redis://127.0.0.1:1")
            .key("short")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("fewer than 16"), "{err}");
        let err = RemotePool::builder("http://nowhere")
            .key("0123456789abcdef0123")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("invalid redis url"), "{err}");
        let err = RemotePool::builder("rediss://127.0.0.1:1")
            .key("0123456789abcdef0123")
            .tls_ca_file("/nonexistent/ca.pem")
            .build()
            .unwrap_err();
        // Without the `tls` feature a rediss:// url is refused before its files are read.
        let expected = if cfg!(feature = "tls") {
            "/nonexistent/ca.pem"
        } else {
            "`tls` feature"
        };
        assert!(err.to_string().contains(expected), "{err}");
    }
}
