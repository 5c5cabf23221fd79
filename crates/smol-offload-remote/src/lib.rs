//! Remote workers: the same [`Executor`](crate::Executor) on worker processes of other
//! machines, through a Redis broker.
//!
//! A [`RemotePool`] puts signed jobs on a Redis stream; workers, which run the same executable
//! in worker mode ([`serve`] or [`RemoteWorker`]), take them through a consumer group, run them
//! in a local [`ProcessPool`](crate::ProcessPool), and push signed replies to the pool's reply
//! list. `docs/remote.md` in the repository states the threat model and the delivery
//! semantics.

#![deny(unsafe_code)]

// What this crate builds on from the core, under the paths its modules name them by.
use smol_offload::__remote::{codec, error, executor, panics, process_pool, stats, task};
use smol_offload::Error;
// The core's items that the modules' doc links name as `crate::…`.
#[allow(unused_imports)]
use smol_offload::{Executor, ProcessPool, Task, ThreadPool, init};

// Imports flow one way: identity, security, keys, tls, broker → settings → envelope → client → pool →
// answer_link → serve.
mod answer_link;
mod broker;
mod client;
pub(crate) mod envelope;
mod identity;
mod keys;
mod pool;
mod security;
mod serve;
mod settings;
mod sys;
mod tls;

pub use pool::{Delivery, FleetStats, RemotePool, RemotePoolBuilder};
pub use security::KEY_VARIABLE;
pub use settings::DEFAULT_QUEUE;
pub use tls::{TLS_CA_VARIABLE, TLS_CERT_VARIABLE, TLS_KEY_VARIABLE};

/// Set this environment variable (to anything) to log, on workers, each job they run and, on
/// clients, which worker (`host:pid`) ran each job. Refused jobs are always logged.
pub const LOG_VARIABLE: &str = "SMOL_OFFLOAD_REMOTE_LOG";
pub use serve::{RemoteWorker, serve};

impl smol_offload::__remote::executor::Sealed for RemotePool {}
