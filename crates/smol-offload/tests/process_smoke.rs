//! A first look at the process pool: values, panics, pids.

use smol_offload::{Executor, ProcessPool};

#[ctor::ctor]
fn start_fork_server() {
    smol_offload::init();
}

fn square(n: u64) -> u64 {
    n * n
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn boom(message: String) -> u8 {
    panic!("{message}")
}

#[test]
fn values_come_back() {
    let pool = ProcessPool::new(2).unwrap();
    smol::block_on(async {
        assert_eq!(pool.run(square, 12).await.unwrap(), 144);
        let pid = pool.run(pid, ()).await.unwrap();
        assert_ne!(pid, std::process::id());
        assert!(pool.pids().contains(&pid), "{pid} not in {:?}", pool.pids());
        let err = pool.run(boom, "kaput".to_string()).await.unwrap_err();
        assert_eq!(err.panic_message(), Some("kaput"));
        assert_eq!(pool.run(square, 3).await.unwrap(), 9);
    });
}
