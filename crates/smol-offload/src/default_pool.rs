//! The default [`ThreadPool`] behind the free function [`spawn`].

use std::sync::OnceLock;

use crate::error::{BuildError, BuildErrorKind, Error, ErrorKind};
use crate::{Task, ThreadPool};

/// The environment variable that sets the size of the default pool.
pub const THREADS_VARIABLE: &str = "SMOL_OFFLOAD_THREADS";

static DEFAULT: OnceLock<Result<ThreadPool, String>> = OnceLock::new();

/// Runs `f` on the default thread pool, created on first use.
///
/// The default pool has one thread per CPU, or `SMOL_OFFLOAD_THREADS` threads when that
/// variable is set. A value that is not a positive whole number is not silently replaced: every
/// task spawned on the default pool then fails with an error that quotes it.
///
/// # Examples
///
/// ```
/// # smol::block_on(async {
/// let sum = smol_offload::spawn(|| (1..=100u32).sum::<u32>()).await?;
/// assert_eq!(sum, 5050);
/// # Ok::<(), smol_offload::Error>(())
/// # }).unwrap();
/// ```
#[track_caller]
pub fn spawn<F, T>(f: F) -> Task<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match default_entry() {
        Ok(pool) => pool.spawn(f),
        Err(message) => Task::ready(Err(Error::new(ErrorKind::Config(message.clone())))),
    }
}

/// The default thread pool used by [`spawn`], created on first use.
///
/// # Errors
///
/// `SMOL_OFFLOAD_THREADS` is set to something other than a positive whole number, or the
/// threads could not be started.
pub fn default_pool() -> Result<ThreadPool, Error> {
    default_entry()
        .clone()
        .map_err(|message| Error::new(ErrorKind::Config(message)))
}

fn default_entry() -> &'static Result<ThreadPool, String> {
    DEFAULT.get_or_init(|| {
        let workers = workers_from_env(std::env::var_os(THREADS_VARIABLE))?;
        let mut builder = ThreadPool::builder().name("default");
        if let Some(workers) = workers {
            builder = builder.workers(workers);
        }
        builder.build().map_err(|err| err.to_string())
    })
}

/// Reads the pool size from the variable's value: `None` when unset.
fn workers_from_env(value: Option<std::ffi::OsString>) -> Result<Option<usize>, String> {
    let Some(value) = value else { return Ok(None) };
    let text = value.to_string_lossy();
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(BuildError::new(BuildErrorKind::Environment {
            variable: THREADS_VARIABLE,
            value: text.into_owned(),
        })
        .to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_means_one_per_cpu() {
        assert_eq!(workers_from_env(None), Ok(None));
    }

    #[test]
    fn positive_numbers_are_taken() {
        assert_eq!(workers_from_env(Some("3".into())), Ok(Some(3)));
        assert_eq!(workers_from_env(Some(" 12 ".into())), Ok(Some(12)));
    }

    #[test]
    fn zero_and_garbage_are_refused_with_the_value() {
        let zero = workers_from_env(Some("0".into())).unwrap_err();
        assert_eq!(
            zero,
            "SMOL_OFFLOAD_THREADS must be a positive whole number of workers, got \"0\": \
             set it to 1 or more, or unset it for one per CPU"
        );
        let garbage = workers_from_env(Some("many".into())).unwrap_err();
        assert!(garbage.contains("\"many\""), "{garbage}");
        assert!(workers_from_env(Some("-2".into())).is_err());
    }
}
