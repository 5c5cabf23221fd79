//! Remote workers for [`smol_offload`]: the same [`Executor`] on
//! worker processes of other machines, through a Redis broker.
//!
//! A [`RemotePool`] puts signed jobs on a Redis stream; workers, which run the same executable
//! in worker mode ([`serve`] or [`RemoteWorker`]), take them through a consumer group, run them
//! in a local [`ProcessPool`], and push signed replies to the pool's
//! reply list. `docs/remote.md` in this crate's folder states the threat model and the
//! delivery semantics.
//!
//! ```no_run
//! use smol_offload::Executor;
//! use smol_offload_remote::RemotePool;
//!
//! fn square(n: u64) -> u64 {
//!     n * n
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     smol_offload::init(); // first thing in main, as for any process pool
//!     if std::env::args().any(|arg| arg == "--worker") {
//!         // On each worker machine: the same binary, with the same SMOL_OFFLOAD_REMOTE_KEY.
//!         return Ok(smol_offload_remote::serve("redis://broker:6379", 4)?);
//!     }
//!     let pool = RemotePool::connect("redis://broker:6379")?;
//!     assert_eq!(smol::block_on(pool.run(square, 7))?, 49);
//!     Ok(())
//! }
//! ```
//!
//! # Brokers
//!
//! Wherever a broker URL is taken: `redis://[user:password@]host:port[/db]`, `rediss://` for
//! TLS, or, behind Redis Sentinel,
//! `redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/db]` (and
//! `rediss+sentinel://`): every new connection asks the sentinels for the master of `SERVICE`,
//! so that a pool or worker that reconnects follows a failover. See `docs/remote.md`.
//!
//! ```no_run
//! # fn square(n: u64) -> u64 { n * n }
//! use smol_offload::Executor;
//!
//! let url = "redis+sentinel://fleet:secret@sentinel-a:26379,sentinel-b:26379/jobs";
//! let pool = smol_offload_remote::RemotePool::connect(url)?;
//! assert_eq!(smol::block_on(pool.run(square, 7))?, 49);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Feature flags
//!
//! - `tls` (on by default): `rediss://` brokers, through rustls with ring (no system OpenSSL).
//!   Without it a `rediss://` url is refused with an error saying so.
//! - `tracing` (off by default): turns on `smol-offload`'s `tracing` feature; what a remote job
//!   logs on its worker is inside a span that names the submitting task.

#![deny(unsafe_code)]

// What this crate builds on from the core, under the paths its modules name them by.
use smol_offload::__remote::{codec, error, executor, metrics, panics, process_pool, stats, task};
use smol_offload::Error;
// The core's items that the modules' doc links name as `crate::…`.
#[allow(unused_imports)]
use smol_offload::{Executor, ProcessPool, Task, ThreadPool, init};

// Imports flow one way: identity, security, keys, tls, sentinel, broker, outage → fingerprint → settings → envelope → client → pool →
// answer_link → serve.
mod answer_link;
mod broker;
mod client;
pub(crate) mod envelope;
mod fingerprint;
mod identity;
mod keys;
mod outage;
mod pool;
mod security;
mod sentinel;
mod serve;
mod settings;
mod sys;
mod tls;

pub use outage::DEFAULT_RECONNECT_LIMIT;
pub use pool::{Delivery, FleetStats, RemotePool, RemotePoolBuilder};
pub use serve::{RemoteWorker, serve};
pub use settings::DEFAULT_QUEUE;

/// The names of the environment variables that pools and workers read.
pub mod env {
    pub use crate::security::KEY_VARIABLE;
    pub use crate::tls::{TLS_CA_VARIABLE, TLS_CERT_VARIABLE, TLS_KEY_VARIABLE};

    /// Set this environment variable (to anything) to log, on workers, each job they run and,
    /// on clients, which worker (`host:pid`) ran each job. Refused jobs are always logged.
    pub const LOG_VARIABLE: &str = "SMOL_OFFLOAD_REMOTE_LOG";
}
// The modules name it at the crate root.
use env::LOG_VARIABLE;

impl smol_offload::__remote::executor::Sealed for RemotePool {}
