//! The core crate's test helpers (`crates/smol-offload/tests/common`), shared with these tests.

#[path = "../../../smol-offload/tests/common/mod.rs"]
mod core;

#[allow(unused_imports)]
pub(crate) use core::*;

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The test binary `exe` (this one, or a copy) started again as a remote worker: it runs only
/// the `#[ignore]`d test `entry`, which finds the broker's URL in the environment variable
/// `marker` and its queue in `TEST_QUEUE`. Its standard output is dropped; callers add their
/// own settings before they spawn it.
#[allow(dead_code)]
pub(crate) fn worker_command(
    exe: &Path,
    entry: &str,
    marker: &str,
    url: &str,
    queue: &str,
) -> Command {
    let mut command = Command::new(exe);
    command
        .args([
            "--exact",
            entry,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(marker, url)
        .env("TEST_QUEUE", queue)
        .stdout(Stdio::null());
    command
}

/// Worker processes of a test, killed and reaped when dropped, also when the test fails.
#[allow(dead_code)]
pub(crate) struct Workers(pub(crate) Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
