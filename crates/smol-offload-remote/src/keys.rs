//! The Redis keys of one queue, all under the prefix `smol-offload:{queue}`.

/// The names of a queue's keys.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// The consumer group that every worker of a queue joins.
pub(crate) const GROUP: &str = "workers";

impl Keys {
    pub(crate) fn new(queue: &str) -> Keys {
        Keys {
            prefix: format!("smol-offload:{queue}"),
        }
    }

    /// The stream of jobs.
    pub(crate) fn jobs(&self) -> String {
        format!("{}:jobs", self.prefix)
    }

    /// The list a client's replies are pushed to.
    pub(crate) fn replies(&self, client: &str) -> String {
        format!("{}:reply:{client}", self.prefix)
    }

    /// The claim on one job: who took it first, or that its client cancelled it. It doubles as
    /// the fleet's seen-set against replayed jobs.
    pub(crate) fn claim(&self, client: &str, id: u64) -> String {
        format!("{}:claim:{client}:{id}", self.prefix)
    }

    /// The hash of live workers: `host:pid` to `processes expiry_ms`.
    pub(crate) fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// The fingerprint of the fleet's signing key (see [`Security::fingerprint`]), recorded by
    /// the first pool or worker of the queue.
    ///
    /// [`Security::fingerprint`]: crate::security::Security::fingerprint
    pub(crate) fn fingerprint(&self) -> String {
        format!("{}:fingerprint", self.prefix)
    }

    /// The set of the workers that could not verify the job of one stream entry.
    pub(crate) fn unverified(&self, entry: &str) -> String {
        format!("{}:unverified:{entry}", self.prefix)
    }

    /// The list of the latest refused jobs and why, newest first, for operators.
    pub(crate) fn refusals(&self) -> String {
        format!("{}:refusals", self.prefix)
    }
}
