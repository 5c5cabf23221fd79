//! A function whose code lies in a shared library that the workers do not have: loaded with
//! `dlopen` after the fork server started, it lies at an address that is unmapped (or anything
//! else) in a process worker; and a remote job can name only code of the executable, the one
//! object its build identity covers. `run` refuses such a function with an error naming the
//! library, instead of sending a worker to that address, and the pool goes on. (The remote
//! pool's refusal is tested in its own crate.)
//!
//! The library is a real shared object, built by the test with the same `rustc` (`RUSTC`, or
//! `rustc` on the `PATH`).

use smol_offload::{Executor, ProcessPool};

mod common;
#[path = "common/shared_library.rs"]
mod shared_library;

use common::block_on;
use shared_library::{build_library, load_prepare, load_triple};

smol_offload::init_for_tests!();

fn square(n: u64) -> u64 {
    n * n
}

#[test]
fn a_function_of_a_library_loaded_after_init_is_refused_naming_the_library() {
    let pool = ProcessPool::new(1).unwrap();
    let library = build_library("after_init");
    let triple = load_triple(&library.path);
    // Real code, here.
    assert_eq!(triple(2), 6);
    let pids = pool.pids();
    let err = block_on(pool.run(triple, 2)).unwrap_err();
    assert!(!err.is_worker_died(), "the worker was sent there: {err}");
    let message = err.to_string();
    assert!(
        message.contains(library.path.to_str().unwrap()),
        "the error must name the library: {message}"
    );
    // The pool goes on, with the same worker.
    assert_eq!(block_on(pool.run(square, 7)).unwrap(), 49);
    assert_eq!(pool.pids(), pids);
}

#[test]
fn an_initializer_of_a_library_loaded_after_init_is_refused_by_build() {
    let library = build_library("initializer");
    let prepare = load_prepare(&library.path);
    prepare(1);
    let err = ProcessPool::builder()
        .workers(1)
        .initializer(prepare, 1)
        .build()
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("the initializer") && message.contains(library.path.to_str().unwrap()),
        "the error must name the initializer and the library: {message}"
    );
}
