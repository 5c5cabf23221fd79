//! [`init_for_tests!`](crate::init_for_tests): starts the fork server in a binary whose `main`
//! is not yours.

/// Starts the fork server before `main`, in a test binary or any other binary whose `main` is
/// not yours: write `smol_offload::init_for_tests!();` once, at the top level of the file.
///
/// A test binary's `main` belongs to the test harness, which starts its threads before any test
/// runs, too late to call [`init`](crate::init) safely. The macro defines a constructor
/// function that calls `init` while the process still has one thread, as the `ctor` crate does
/// (this crate re-exports the version it needs: add no dependency of your own). A
/// [`ProcessPool`](crate::ProcessPool) in any test of the binary then forks its workers from
/// the server.
///
/// # Examples
///
/// In `tests/process_pool.rs` of your crate:
///
/// ```
/// use smol_offload::{Executor, ProcessPool};
///
/// smol_offload::init_for_tests!();
///
/// fn square(n: u64) -> u64 {
///     n * n
/// }
///
/// #[test]
/// fn squares_in_a_worker_process() {
///     let pool = ProcessPool::new(2).unwrap();
///     assert_eq!(smol::block_on(pool.run(square, 7)).unwrap(), 49);
/// }
/// # fn main() {
/// #     // Like a test harness, run a thread before the pool: only the constructor's `init` helps.
/// #     let (stop, stopped) = std::sync::mpsc::channel::<()>();
/// #     let harness = std::thread::spawn(move || stopped.recv());
/// #     let pool = ProcessPool::new(1).unwrap();
/// #     assert_eq!(smol::block_on(pool.run(square, 7)).unwrap(), 49);
/// #     drop(stop);
/// #     harness.join().unwrap().unwrap_err();
/// # }
/// ```
// The example is a test file: its `#[test]` is what a user writes, and the hidden `main` runs it.
#[allow(clippy::test_attr_in_doctest)]
#[macro_export]
macro_rules! init_for_tests {
    () => {
        /// Starts smol-offload's fork server before `main` (see `smol_offload::init_for_tests`).
        #[$crate::__private::ctor]
        fn __smol_offload_start_fork_server() {
            $crate::init();
        }
    };
}
