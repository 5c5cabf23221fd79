//! How `blocks-compare` finds and runs the backend binaries, `blocks-thread` and
//! `blocks-process`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context as _;

use crate::compare::RunReport;
use crate::events::read_events;
use crate::options::Options;

/// One backend binary of the demo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The backend's name in reports: `thread` or `process`.
    pub name: &'static str,
    /// The binary's name, looked for next to the running executable.
    pub binary: &'static str,
    /// The environment variable that overrides the binary's path.
    pub env_var: &'static str,
}

/// `blocks-thread`, overridden by `BLOCKS_THREAD_BIN`.
pub const THREAD: Backend = Backend {
    name: "thread",
    binary: "blocks-thread",
    env_var: "BLOCKS_THREAD_BIN",
};

/// `blocks-process`, overridden by `BLOCKS_PROCESS_BIN`.
pub const PROCESS: Backend = Backend {
    name: "process",
    binary: "blocks-process",
    env_var: "BLOCKS_PROCESS_BIN",
};

/// What running a backend gave: its report and everything it wrote to stderr (its log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launched {
    /// The run's wall time, events or failure.
    pub report: RunReport,
    /// The binary's stderr.
    pub log: String,
}

impl Backend {
    /// The binary to run: the path in [`env_var`](Backend::env_var) if set and not empty,
    /// otherwise [`binary`](Backend::binary) in the directory of the running executable (where
    /// cargo puts every binary of a package).
    ///
    /// # Errors
    ///
    /// The running executable's path is unknown.
    pub fn locate(&self) -> anyhow::Result<PathBuf> {
        self.locate_with(std::env::var_os(self.env_var))
    }

    fn locate_with(&self, overridden: Option<OsString>) -> anyhow::Result<PathBuf> {
        if let Some(path) = overridden.filter(|path| !path.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        let exe = std::env::current_exe().context("cannot find the running executable")?;
        let dir = exe
            .parent()
            .context("the running executable has no directory")?;
        Ok(dir.join(format!("{}{}", self.binary, std::env::consts::EXE_SUFFIX)))
    }

    /// Runs `binary` with the run flags of `options` and `--events events`, and reads the
    /// events it wrote. A run that could not start, failed, or wrote unreadable events comes
    /// back with its [`failure`](RunReport::failure) set, never as an error.
    pub fn run(&self, binary: &Path, options: &Options, events: &Path) -> Launched {
        let _ = std::fs::remove_file(events);
        let started = Instant::now();
        let output = Command::new(binary)
            .args(options.run_args())
            .arg("--events")
            .arg(events)
            .output();
        let wall = started.elapsed();
        let mut report = RunReport {
            backend: self.name.to_owned(),
            wall,
            events: Vec::new(),
            failure: None,
        };
        let output = match output {
            Ok(output) => output,
            Err(err) => {
                report.failure = Some(format!(
                    "cannot run {}: {err} (build it with `cargo build --release --bin {}`, or set {})",
                    binary.display(),
                    self.binary,
                    self.env_var
                ));
                return Launched {
                    report,
                    log: String::new(),
                };
            }
        };
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.status.success() {
            let last_line = log.lines().last().unwrap_or("no output");
            report.failure = Some(format!(
                "{} {}: {last_line}",
                binary.display(),
                output.status
            ));
        } else {
            match read_events(events) {
                Ok(read) => report.events = read,
                Err(err) => report.failure = Some(format!("{err:#}")),
            }
        }
        Launched { report, log }
    }
}

/// A fresh directory for the runs' events files, removed with everything in it when dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `blocks-compare-<pid>-<k>` in the system's temporary directory.
    ///
    /// # Errors
    ///
    /// The directory could not be created.
    pub fn new() -> anyhow::Result<ScratchDir> {
        static CREATED: AtomicUsize = AtomicUsize::new(0);
        let k = CREATED.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("blocks-compare-{}-{k}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_wins_unless_empty() {
        assert_eq!(
            PROCESS
                .locate_with(Some("/opt/blocks-process".into()))
                .unwrap(),
            PathBuf::from("/opt/blocks-process")
        );
        let beside = PROCESS.locate_with(Some(OsString::new())).unwrap();
        let exe_dir = std::env::current_exe().unwrap();
        assert_eq!(beside.parent(), exe_dir.parent());
        assert_eq!(beside.file_name().unwrap(), "blocks-process");
    }

    #[test]
    fn a_missing_binary_is_a_failed_run() {
        let scratch = ScratchDir::new().unwrap();
        let launched = THREAD.run(
            Path::new("/nonexistent/blocks-thread"),
            &Options::default(),
            &scratch.path().join("thread.jsonl"),
        );
        let failure = launched.report.failure.unwrap();
        assert!(
            failure.starts_with("cannot run /nonexistent/blocks-thread: "),
            "{failure}"
        );
        assert!(failure.contains("BLOCKS_THREAD_BIN"), "{failure}");
    }

    #[test]
    fn a_failing_binary_is_a_failed_run() {
        let scratch = ScratchDir::new().unwrap();
        let launched = PROCESS.run(
            Path::new("/bin/false"),
            &Options::default(),
            &scratch.path().join("process.jsonl"),
        );
        assert_eq!(launched.report.backend, "process");
        let failure = launched.report.failure.unwrap();
        assert!(
            failure.starts_with("/bin/false exit status: 1"),
            "{failure}"
        );
    }

    #[test]
    fn scratch_dir_is_removed_on_drop() {
        let path = {
            let scratch = ScratchDir::new().unwrap();
            std::fs::write(scratch.path().join("x"), "x").unwrap();
            scratch.path().to_owned()
        };
        assert!(!path.exists());
    }
}
