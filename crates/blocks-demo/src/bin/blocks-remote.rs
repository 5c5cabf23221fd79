//! blocks(n) on remote workers through a Redis broker: the process demo's run and log, with
//! `host:pid` where `blocks-process` logs a pid. The workers are this binary again, in worker
//! mode.
//!
//! Run with `cargo run --release --bin blocks-remote` (needs `redis-server` on the `PATH`
//! unless `--redis URL` names a broker; `-- --help` for the flags).

use std::process::ExitCode;

use blocks_demo::options::run_main;
use blocks_demo::{LogStyle, RemoteArgs, remote, set_log_style};

fn main() -> ExitCode {
    // The style first: the workers' processes are forked from the server that `init` starts.
    set_log_style(LogStyle::Remote);
    run_main("blocks-remote", |args: RemoteArgs| {
        match (&args.serve, &args.redis) {
            (Some(queue), Some(url)) => remote::serve(url, queue),
            _ => remote::run(&args),
        }
    })
}
