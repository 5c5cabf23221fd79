//! Whether debug mode is on, and its threshold: the state that the rest of debug mode reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The default threshold: 100 ms, as asyncio's `loop.slow_callback_duration`.
pub const DEFAULT_THRESHOLD: Duration = Duration::from_millis(100);

/// The shortest threshold: shorter ones are raised to it, so that the watchdog never spins.
pub(super) const MIN_THRESHOLD: Duration = Duration::from_millis(1);

pub(super) static ENABLED: AtomicBool = AtomicBool::new(false);
pub(super) static THRESHOLD_NANOS: AtomicU64 = AtomicU64::new(DEFAULT_THRESHOLD.as_nanos() as u64);

/// True while debug mode is on.
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The threshold in force.
pub(crate) fn threshold() -> Duration {
    Duration::from_nanos(THRESHOLD_NANOS.load(Ordering::Relaxed))
}

/// Turns debug mode off. Polls already being timed are still reported when they return; the
/// watchdog thread, if it was started, sleeps until debug mode is turned on again.
pub fn disable() {
    ENABLED.store(false, Ordering::SeqCst);
}
