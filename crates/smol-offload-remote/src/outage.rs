//! [`Outage`]: a time the broker could not be reached, with the waits between attempts to
//! reconnect (exponential backoff) and how long it has lasted, against the reconnect limit.

use std::time::{Duration, Instant};

/// How long a pool and a worker keep reconnecting to a broker that went away before the
/// tasks waiting on it fail.
pub const DEFAULT_RECONNECT_LIMIT: Duration = Duration::from_secs(30);

/// The first wait before connecting again; each next one doubles, up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(50);
/// The longest wait between two attempts to connect.
const LONGEST_WAIT: Duration = Duration::from_secs(2);

/// A broker outage: since when, and how long the next wait is.
pub(crate) struct Outage {
    since: Instant,
    next_wait: Duration,
}

impl Outage {
    pub(crate) fn begin() -> Outage {
        Outage {
            since: Instant::now(),
            next_wait: FIRST_WAIT,
        }
    }

    /// Whether it has lasted `limit` or longer.
    pub(crate) fn exceeds(&self, limit: Duration) -> bool {
        self.since.elapsed() >= limit
    }

    /// Sleeps before the next attempt, twice as long as the last time (up to two seconds).
    pub(crate) fn wait(&mut self) {
        std::thread::sleep(self.next_wait);
        self.next_wait = (self.next_wait * 2).min(LONGEST_WAIT);
    }
}

/// The error of a task that waited on a broker unreachable past the reconnect limit.
pub(crate) fn gave_up(address: &str, limit: Duration, last_error: &str) -> String {
    format!(
        "the redis broker at {address} stayed unreachable for longer than the reconnect limit \
         ({limit:?}); the task's outcome is unknown: submit it again if it is idempotent. \
         Last error: {last_error}"
    )
}
