//! A worker process: set up after the fork, serve the parent's requests, then exit.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use crate::panics::{self, Reporting};
use crate::process_pool::claim::Claims;
use crate::sys::{self, ArenaView, CallStatus, ChildGuard, ErasedCall, SealedMapping};

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
    let code = match serve_requests(&stream, &claims) {
        Ok(()) => 0,
        Err(_) => 1,
    };
    // Output written with `print!` sits in the worker's own buffer: flush it, since `_exit`
    // will not.
    let _ = std::io::stdout().flush();
    sys::exit_child(code)
}

/// The loop of a worker process: reads each request its parent sends on `stream`, calls the
/// function it names, and writes the reply, until the parent closes the socket. Words read
/// from the socket become a call through [`ErasedCall::sent_by_parent`], which says why that
/// is sound.
///
/// Each job is claimed in `claims` before it starts: one the parent took back first is skipped
/// (its shared argument's memfd is still taken off the queue, to keep the others in order).
fn serve_requests(
    stream: &std::os::unix::net::UnixStream,
    claims: &crate::process_pool::claim::Claims,
) -> io::Result<()> {
    use crate::byte_buf::Backing;
    use crate::process_pool::arena::{self, OutArena};
    use crate::process_pool::out_of_line::{self, FdReader};
    use crate::process_pool::wire::{self, OutOfLine};
    use std::io::BufReader;
    use std::os::fd::AsFd;
    use std::sync::Arc;

    let mut input = BufReader::with_capacity(64 * 1024, FdReader::blocking(stream));
    let mut buffer = Vec::new();
    let mut reply = Vec::new();
    // The parent's request arena, mapped, and this worker's reply arena with the count of
    // replies written to it (see `process_pool::arena`).
    let mut request_arena: Option<Arc<ArenaView>> = None;
    let mut reply_arena = OutArena::default();
    let mut arena_replies_written = 0u64;
    let missing_fd = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "shared request without its memfd",
        )
    };
    while let Some(request) = wire::read_request(&mut input, &mut buffer)? {
        // The descriptors that came with the frame's bytes are in by now, in order: a sealed
        // argument's memfd, or the parent's new request arena.
        if request.new_arena {
            let fd = input.get_mut().fds.pop_front().ok_or_else(missing_fd)?;
            request_arena = Some(Arc::new(ArenaView::map(fd)?));
        }
        // A sealed argument is mapped until the call is over (a `ByteBuf` may keep it longer).
        let mut backing = if request.shared {
            let size = request.shared_size()?;
            let fd = input.get_mut().fds.pop_front().ok_or_else(missing_fd)?;
            Some(Arc::new(Backing::Sealed(SealedMapping::new(fd, size)?)))
        } else {
            None
        };
        if !claims.claim(request.id) {
            if claims.was_revoked(request.id) {
                // The parent took the job back before it started: it runs elsewhere.
                continue;
            }
            // The word went back below this job: something in this worker (a task) wrote over
            // the claim page, and no job could be claimed again. Exit: the parent then runs
            // elsewhere the jobs that never started, instead of waiting for them forever.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the claim word was written over",
            ));
        }
        // An argument in the arena is read in place, and only for a job claimed: the parent
        // writes the arena again only once the job is answered (or taken back, and then it
        // is never read here).
        if request.in_arena {
            let size = request.shared_size()?;
            let in_arena = request_arena
                .as_ref()
                .and_then(|view| Backing::in_arena(view, size))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "an argument beyond the request arena",
                    )
                })?;
            backing = Some(Arc::new(in_arena));
        }
        let arg = backing.as_deref().map_or(request.arg, Backing::as_slice);
        let call = ErasedCall::sent_by_parent(request.call);
        wire::begin_reply(&mut reply, request.id);
        let reporting = if request.options.print_panics {
            Reporting::Labelled
        } else {
            Reporting::Quiet
        };
        // With the `tracing` feature, the task's records carry its id and where it came from.
        let status = crate::process_pool::context::in_span(request.context, || {
            crate::byte_buf::with_backing(backing.as_ref(), || {
                call.invoke(reporting, arg, &mut reply)
            })
        });
        drop(backing);
        wire::finish_reply(&mut reply, status);
        // A result larger than the parent accepts fails here, as the task's error, rather than
        // be refused there as a malformed reply.
        wire::refuse_oversized_reply(&mut reply, request.id);
        // A `ByteBuf` of the argument outlived the call (the function kept it somewhere): it
        // still reads the arena, which the parent must then never write again. Only this
        // loop's own reference is left otherwise.
        if request_arena
            .as_ref()
            .is_some_and(|view| Arc::strong_count(view) > 1)
        {
            request_arena = None;
            wire::retain_request_arena(&mut reply);
        }
        // A large result goes to the reply arena once the parent has read the last one there,
        // else to a fresh sealed memfd (else through the socket).
        let payload = wire::reply_payload(&reply);
        if arena::fits(payload.len())
            && claims.arena_replies_read() == arena_replies_written
            && let Ok(new_arena) = reply_arena.write(payload)
        {
            arena_replies_written += 1;
            let new = new_arena.is_some();
            wire::move_reply_payload(&mut reply, OutOfLine::Arena { new });
            match new_arena {
                Some(fd) => out_of_line::send_with_fd(stream, &reply, fd.as_fd())?,
                None => out_of_line::send_all(stream, &reply)?,
            }
            continue;
        }
        // A large returned value that is not mostly blocks of bytes (a `Vec<u8>`, say) is
        // decoded by the parent as a stream, which gives the memory back as it goes; one that
        // is (a `ByteBuf`) comes sealed, to be read in place.
        let large = wire::reply_payload(&reply).len() > out_of_line::THRESHOLD;
        let streamed = large
            && status == CallStatus::Returned
            && crate::codec::last_block_bytes() < wire::reply_payload(&reply).len() / 2;
        let shared = if streamed {
            wire::stream_reply_payload(&mut reply)
        } else {
            wire::share_reply_payload(&mut reply)
        };
        match shared {
            Some(fd) => out_of_line::send_with_fd(stream, &reply, fd.as_fd())?,
            None => out_of_line::send_all(stream, &reply)?,
        }
    }
    Ok(())
}
