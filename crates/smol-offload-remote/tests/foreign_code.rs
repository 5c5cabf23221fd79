//! A function whose code lies in a shared library: a remote job names its function by an
//! offset in the executable, the one object its build identity covers, so `RemotePool::run`
//! refuses code of any shared library with an error naming it, and sends nothing.
//!
//! The library is a real shared object, built by the test with the same `rustc` (`RUSTC`, or
//! `rustc` on the `PATH`).

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;
#[path = "../../smol-offload/tests/common/shared_library.rs"]
mod shared_library;

use common::block_on;
use redis_server::{RedisServer, skip_without_redis_server};
use shared_library::{build_library, load_triple};
use smol_offload::Executor;
use smol_offload_remote::RemotePool;

smol_offload::init_for_tests!();

#[test]
fn a_function_of_any_shared_library_is_refused_by_a_remote_pool() {
    if skip_without_redis_server() {
        return;
    }
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
