//! A worker process: set up after the fork, serve the parent's requests (the loop itself is
//! `sys::serve_requests`, beside the `unsafe` it needs), then exit.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use crate::panics;
use crate::process_pool::claim::Claims;
use crate::sys::{self, ChildGuard};

/// Serves requests on `socket` until the parent closes it, then exits, claiming each job in
/// the claim word of the memfd `claims` before starting it (the page is mapped, and the
/// descriptor closed, before any task runs). Runs in a process just forked from the fork server
/// `server`, which closed its own copies of both descriptors; never returns.
pub(crate) fn serve(socket: OwnedFd, claims: OwnedFd, server: u32) -> ! {
    let _guard = ChildGuard;
    // Its own process group: the pool kills the group when the worker ends, taking what a task
    // forked with it, and signals sent to the application's group do not reach it. The server
    // does the same on its side; an error here means the server already did.
    let _ = sys::lead_own_group(0);
    if sys::die_with_parent(server).is_err()
        || sys::ignore_interrupts().is_err()
        || sys::ignore_broken_pipes().is_err()
    {
        sys::exit_child(1);
    }
    sys::set_process_name(c"smol-offload-wk");
    // Panics here are labelled with this worker's pid, and a task's are quiet unless its pool
    // asked to print them.
    panics::install_in_worker();
    let Ok(claims) = Claims::map(claims) else {
        sys::exit_child(1);
    };
    let stream = UnixStream::from(socket);
    // The loop that reads calls from the socket lives in `sys`, which says why that is sound.
    let code = match sys::serve_requests(&stream, &claims) {
        Ok(()) => 0,
        Err(_) => 1,
    };
    // Output written with `print!` sits in the worker's own buffer: flush it, since `_exit`
    // will not.
    let _ = std::io::stdout().flush();
    sys::exit_child(code)
}
