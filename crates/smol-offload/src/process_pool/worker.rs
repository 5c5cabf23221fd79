//! The loop of a worker process: read a request, call the function, write the reply, until the
//! parent closes the socket.

use std::io::{BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use crate::process_pool::claim::Claims;
use crate::process_pool::wire;
use crate::sys::{self, ChildGuard};

/// Serves requests on `socket` until the parent closes it, then exits, claiming each job in
/// the claim word of the memfd `claims` before starting it. Runs in a process just forked from
/// the fork server `server`; never returns.
pub(crate) fn serve(socket: OwnedFd, claims: OwnedFd, server: u32) -> ! {
    let _guard = ChildGuard;
    // Its own process group: the pool kills the group when the worker ends, taking what a task
    // forked with it, and signals sent to the application's group do not reach it. The server
    // does the same on its side; an error here means the server already did.
    let _ = sys::lead_own_group(0);
    if sys::die_with_parent(server).is_err() || sys::ignore_interrupts().is_err() {
        sys::exit_child(1);
    }
    sys::set_process_name(c"smol-offload-wk");
    let Ok(claims) = Claims::map(&claims) else {
        sys::exit_child(1);
    };
    let stream = UnixStream::from(socket);
    let code = match serve_requests(&stream, &claims) {
        Ok(()) => 0,
        Err(_) => 1,
    };
    // Output written with `print!` sits in the worker's own buffer: flush it, since `_exit`
    // will not.
    let _ = std::io::stdout().flush();
    sys::exit_child(code)
}

fn serve_requests(stream: &UnixStream, claims: &Claims) -> std::io::Result<()> {
    let mut input = BufReader::with_capacity(64 * 1024, stream);
    let mut output = stream;
    let mut buffer = Vec::new();
    let mut reply = Vec::new();
    while let Some(request) = wire::read_request(&mut input, &mut buffer)? {
        if !claims.claim(request.id) {
            // The parent took the job back before it started: it runs elsewhere.
            continue;
        }
        wire::begin_reply(&mut reply, request.id);
        let status = sys::invoke(request.call, request.arg, &mut reply);
        wire::finish_reply(&mut reply, status);
        output.write_all(&reply)?;
    }
    Ok(())
}
