//! A function whose code lies in a shared library that the workers do not have: loaded with
//! `dlopen` after the fork server started, it lies at an address that is unmapped (or anything
//! else) in a process worker; and a remote job can name only code of the executable, the one
//! object its build identity covers. `run` refuses such a function with an error naming the
//! library, instead of sending a worker to that address, and the pool goes on.
//!
//! The library is a real shared object, built by the test with the same `rustc` (`RUSTC`, or
//! `rustc` on the `PATH`).

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

use smol_offload::{Executor, ProcessPool};

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use common::block_on;
use redis_server::RedisServer;
use smol_offload::RemotePool;

smol_offload::init_for_tests!();

fn square(n: u64) -> u64 {
    n * n
}

/// The library's source: Rust functions, exported under their own names.
const LIBRARY_SOURCE: &str = "
#[unsafe(no_mangle)]
pub fn triple(x: u64) -> u64 {
    x * 3
}

#[unsafe(no_mangle)]
pub fn prepare(_: u64) {}
";

/// A library built for one test, in a directory of its own, removed when dropped (also when
/// the test fails).
struct Library {
    dir: PathBuf,
    path: PathBuf,
}

impl Drop for Library {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Builds the library `lib{name}.so` with `rustc --crate-type cdylib`, in a directory of this
/// process's own, and returns it.
fn build_library(name: &str) -> Library {
    let dir = std::env::temp_dir().join(format!(
        "smol-offload-foreign-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join(format!("{name}.rs"));
    std::fs::write(&source, LIBRARY_SOURCE).unwrap();
    let library = dir.join(format!("lib{name}.so"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--edition", "2024", "--crate-type", "cdylib", "-o"])
        .arg(&library)
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "rustc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Library { dir, path: library }
}

/// Opens `library` with `dlopen` and returns the address of its function `name`. The library
/// stays loaded for the rest of the process.
fn load(library: &Path, name: &CStr) -> *mut libc::c_void {
    let path = CString::new(library.to_str().unwrap()).unwrap();
    // SAFETY: `path` is a NUL-terminated string that outlives the call; the library's
    // initializers are those of a Rust cdylib with no code of its own to run.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen of {} failed", library.display());
    // SAFETY: `handle` is the live handle just opened, and the name is NUL-terminated.
    let symbol = unsafe { libc::dlsym(handle, name.as_ptr()) };
    assert!(
        !symbol.is_null(),
        "no symbol {name:?} in {}",
        library.display()
    );
    symbol
}

/// The library's `triple`, loaded now.
fn load_triple(library: &Path) -> fn(u64) -> u64 {
    let symbol = load(library, c"triple");
    // SAFETY: `triple` is `pub fn triple(x: u64) -> u64`, compiled with the Rust ABI by the same
    // compiler as this test, and the library is never closed, so the address stays its code.
    unsafe { std::mem::transmute::<*mut libc::c_void, fn(u64) -> u64>(symbol) }
}

/// The library's `prepare`, loaded now.
fn load_prepare(library: &Path) -> fn(u64) {
    let symbol = load(library, c"prepare");
    // SAFETY: as in `load_triple`, for `pub fn prepare(_: u64)`.
    unsafe { std::mem::transmute::<*mut libc::c_void, fn(u64)>(symbol) }
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

#[test]
fn a_function_of_any_shared_library_is_refused_by_a_remote_pool() {
    let redis = RedisServer::start();
    let pool = RemotePool::builder(&redis.url())
        .key("foreign-code-test-key-0123456789")
        .build()
        .unwrap();
    let library = build_library("remote");
    let triple = load_triple(&library.path);
    let err = block_on(pool.run(triple, 2)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("remote workers") && message.contains(library.path.to_str().unwrap()),
        "the error must name the library: {message}"
    );
    // Nothing was sent: the queue is empty.
    assert_eq!(pool.fleet().unwrap().queue_length, 0);
}
