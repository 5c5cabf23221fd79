//! A worker process: set up after the fork, serve the parent's requests, then exit; and the
//! [`Claims`] word it shares with the parent, which says which jobs it started.

use std::io::{self, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::byte_buf::Backing;
use crate::panics::{self, Reporting};
use crate::process_pool::out_of_line::{self, OutArena};
use crate::process_pool::wire::{self, FdReader, OutOfLine};
use crate::sys::{self, ArenaView, CallStatus, ChildGuard, ErasedCall, SealedMapping, SharedWord};

/// Serves requests on `socket` until the parent closes it, then exits, claiming each job in
/// the word of the memfd `claims` (mapped, and closed, before any task runs). Runs in a process
/// just forked from the fork server `server`, which closed its copies of both; never returns.
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
    let code = i32::from(serve_requests(&stream, &claims).is_err());
    // Output written with `print!` sits in the worker's own buffer: flush it, since `_exit`
    // will not.
    let _ = std::io::stdout().flush();
    sys::exit_child(code)
}

/// The loop of a worker process: reads each request on `stream`, calls the function it names
/// (through [`ErasedCall::sent_by_parent`], which says why that is sound), and writes the
/// reply, until the parent closes the socket. Each job is claimed in `claims` first: one the
/// parent took back is skipped (its memfd still taken off the queue, to keep the others in order).
fn serve_requests(stream: &UnixStream, claims: &Claims) -> io::Result<()> {
    let mut input = BufReader::with_capacity(64 * 1024, FdReader::blocking(stream));
    let mut buffer = Vec::new();
    let mut reply = Vec::new();
    // The parent's request arena, mapped, and this worker's reply arena with the count of
    // replies written to it (see `out_of_line`).
    let mut request_arena: Option<Arc<ArenaView>> = None;
    let mut reply_arena = OutArena::default();
    let mut arena_replies_written = 0u64;
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what);
    let missing_fd = || invalid("shared request without its memfd");
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
            return Err(invalid("the claim word was written over"));
        }
        // An argument in the arena is read in place, and only for a job claimed: the parent
        // writes the arena again only once the job is answered (or taken back, and then it
        // is never read here).
        if request.in_arena {
            let size = request.shared_size()?;
            let in_arena = request_arena
                .as_ref()
                .and_then(|view| Backing::in_arena(view, size))
                .ok_or_else(|| invalid("an argument beyond the request arena"))?;
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
        let mut invoke = || call.invoke(reporting, arg, &mut reply);
        let status = wire::in_span(request.context, || match &backing {
            // A `ByteBuf` of an argument in shared memory reads it in place.
            Some(backing) => crate::byte_buf::with_backing(backing, invoke),
            None => invoke(),
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
        // else to a fresh memfd (else through the socket). One that is not mostly blocks of
        // bytes (a `Vec<u8>`, say) is decoded by the parent as a stream, which gives the memory
        // back as it goes; one that is (a `ByteBuf`) comes sealed, to be read in place.
        let len = wire::reply_payload(&reply).len();
        let fd = if out_of_line::fits_in_arena(len)
            && claims.arena_replies_read() == arena_replies_written
            && let Ok(new_arena) = reply_arena.write(wire::reply_payload(&reply))
        {
            arena_replies_written += 1;
            let new = new_arena.is_some();
            wire::move_reply_payload(&mut reply, OutOfLine::Arena { new });
            new_arena
        } else if len > out_of_line::THRESHOLD
            && status == CallStatus::Returned
            && crate::codec::last_block_bytes() < len / 2
        {
            wire::stream_reply_payload(&mut reply)
        } else {
            wire::share_reply_payload(&mut reply)
        };
        match fd {
            Some(fd) => wire::send_with_fd(stream, &reply, fd.as_fd())?,
            None => wire::send_all(stream, &reply)?,
        }
    }
    Ok(())
}

// [`Claims`]: one word of memory shared with a worker, which says which jobs it started, so
// that the parent can take back those it has not.
//
// Jobs have ids 0, 1, 2, ... in order, and the word holds the id of the next job the worker
// may start. The worker *claims* job `id` before it starts it, swapping the word from `id` to
// `id + 1`; the parent *revokes* the jobs not started, swapping the word from its value to the
// id of the next job it will send, and the worker skips, without a reply, a job the word moved
// past. Exactly one swap wins for each job. So the parent requeues the jobs a dead worker
// never started (only its running job fails), and moves jobs sent ahead to a busy worker onto
// an idle one, for one compare-and-swap per job in the worker.
//
// # A hostile worker
//
// No worker can make an access to the page fault: its memfd is sealed against shrinking and
// growing before the worker gets it (see `sys::SharedWord`), and the worker closes its
// descriptor once it mapped the page, out of reach of a task that truncates every descriptor
// it holds. A task can still write any value over the page at any time, so every value the
// parent reads from it is trusted only for the worker's own jobs:
//
// - *Which jobs it started* is trusted as far as it goes: a word below the truth makes the
// parent run elsewhere jobs that this worker ran (a second run, whose first result the
// parent never took), a word above it makes the parent count as started jobs that it never
// will (they fail with the worker, or wait for it as for any busy worker). Either way, only
// jobs sent to this worker. A word moved back to the running job's own id cannot be told
// from a worker that has yet to claim it, so the parent bounds what it costs instead: it
// takes jobs back from a worker it keeps only past one the word shows started
// ([`Claims::revoke_unstarted_after`]), and a job requeued after losing
// `job::MOST_LOSSES` workers is failed, not requeued: a task that rolls its word back and
// kills its worker runs a few times, not forever.
// - *A word past every job sent* is no claim any worker could make: the parent checks it at
// each reply ([`Claims::claimed_beyond`]), and kills the worker as one that sent a malformed
// reply. A worker's own loop checks that the word never goes back below the job it reads
// ([`Claims::was_revoked`]): it exits rather than skip its jobs forever.
// - *The count of arena replies read* (the second word) only tells the worker when it may
// write its reply arena again: a wrong count makes it overwrite a reply the parent has not
// copied out yet, and so garbles its own results.

/// The claim word of one worker, as the parent or the worker maps it.
#[derive(Debug)]
pub(crate) struct Claims {
    word: SharedWord,
}

impl Claims {
    /// A new claim word for a worker about to be forked, and the memfd to hand it.
    pub(crate) fn create() -> io::Result<(Claims, OwnedFd)> {
        let (word, fd) = SharedWord::create()?;
        Ok((Claims { word }, fd))
    }

    /// The worker's view of the word the parent created. Closes `fd`: the mapping keeps the
    /// page, and a descriptor the worker no longer holds is one that no task can misuse.
    pub(crate) fn map(fd: OwnedFd) -> io::Result<Claims> {
        let word = SharedWord::map(fd.as_fd())?;
        drop(fd);
        Ok(Claims { word })
    }

    /// For the worker: claims job `id` before starting it. `false` when the parent revoked it:
    /// skip it.
    pub(crate) fn claim(&self, id: u64) -> bool {
        self.word
            .get()
            .compare_exchange(id, id + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// For the worker, after [`claim`](Claims::claim) of job `id` failed: `true` when the
    /// parent revoked the job (the word is past it). `false` means that the word went back
    /// below `id`, which neither side's protocol ever does: something in this worker wrote
    /// over the page, and no job it reads from now on could be claimed.
    pub(crate) fn was_revoked(&self, id: u64) -> bool {
        self.word.get().load(Ordering::SeqCst) > id
    }

    /// For the parent: the word, when it says that the worker started jobs it was never sent
    /// (it is past `next_id`, the id of the next job the parent will send): no worker that
    /// follows the protocol can write that. `None` when the word is within bounds.
    pub(crate) fn claimed_beyond(&self, next_id: u64) -> Option<u64> {
        let word = self.word.get().load(Ordering::Relaxed);
        (word > next_id).then_some(word)
    }

    /// For the parent: records that it has read `count` replies out of the worker's reply
    /// arena, so that the worker may write the next one (see [`OutArena`](super::out_of_line::OutArena)). Kept in
    /// the second word of the page; a hostile worker that writes it fools only itself.
    pub(crate) fn set_arena_replies_read(&self, count: u64) {
        self.word.second().store(count, Ordering::Release);
    }

    /// For the worker: how many replies the parent has read out of its reply arena.
    pub(crate) fn arena_replies_read(&self) -> u64 {
        self.word.second().load(Ordering::Acquire)
    }

    /// For the parent: revokes every job not started yet, up to `next_id` (the id of the next
    /// job it will send, past all it sent). Returns the first id revoked: the jobs below it
    /// were started, those from it on never will be (`next_id` when every job was started).
    pub(crate) fn revoke_unstarted(&self, next_id: u64) -> u64 {
        self.revoke(next_id, 0).expect("every word is at least 0")
    }

    /// For the parent, taking back jobs from a worker it keeps: like
    /// [`revoke_unstarted`](Claims::revoke_unstarted), but only if the word shows job `started`
    /// started (it is past it) at the instant of the swap; `None`, and nothing revoked,
    /// otherwise. So a word moved back cannot make a running job run again elsewhere: only the
    /// worker's loss can, which is counted (see `job::MOST_LOSSES`).
    pub(crate) fn revoke_unstarted_after(&self, started: u64, next_id: u64) -> Option<u64> {
        self.revoke(next_id, started + 1)
    }

    /// Revokes the jobs from the word's value up to `next_id`, if the word is at least `floor`.
    fn revoke(&self, next_id: u64, floor: u64) -> Option<u64> {
        let word = self.word.get();
        let mut next_to_start = word.load(Ordering::SeqCst);
        loop {
            if next_to_start < floor {
                return None;
            }
            if next_to_start >= next_id {
                return Some(next_id);
            }
            match word.compare_exchange(next_to_start, next_id, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Some(next_to_start),
                // The worker claimed one meanwhile: try from the next.
                Err(now) => next_to_start = now,
            }
        }
    }
}

#[cfg(test)]
mod claim_tests {
    use super::*;

    #[test]
    fn claimed_jobs_are_never_revoked_and_revoked_ones_never_start() {
        let (parent, fd) = Claims::create().unwrap();
        let worker = Claims::map(fd).unwrap();
        // Jobs 0 to 4 sent; the worker starts 0 and 1.
        assert!(worker.claim(0));
        assert!(worker.claim(1));
        assert_eq!(parent.revoke_unstarted(5), 2, "2, 3 and 4 are taken back");
        for id in 2..5 {
            assert!(!worker.claim(id), "job {id} was revoked");
        }
        // The next jobs sent start from 5.
        assert!(worker.claim(5));
        assert_eq!(
            parent.revoke_unstarted(6),
            6,
            "all started: nothing to take back"
        );
        assert!(worker.claim(6), "a job sent later starts as usual");
    }

    #[test]
    fn the_arena_count_is_a_word_of_its_own() {
        let (parent, fd) = Claims::create().unwrap();
        let worker = Claims::map(fd).unwrap();
        assert_eq!(worker.arena_replies_read(), 0);
        parent.set_arena_replies_read(3);
        assert_eq!(worker.arena_replies_read(), 3);
        assert!(worker.claim(0), "the claim word is untouched");
        assert_eq!(parent.revoke_unstarted(1), 1);
        assert_eq!(worker.arena_replies_read(), 3);
    }

    #[test]
    fn no_holder_of_the_claim_page_can_shrink_or_grow_it() {
        let (parent, fd) = Claims::create().unwrap();
        let hostile = fd.try_clone().unwrap();
        let worker = Claims::map(fd).unwrap();
        for size in [0, 1, 1 << 30] {
            assert_eq!(
                nix::unistd::ftruncate(&hostile, size),
                Err(nix::errno::Errno::EPERM),
                "{size} bytes"
            );
        }
        // Nor add a seal (against writes, say) that would stop the other side.
        let write = nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::F_SEAL_FUTURE_WRITE);
        assert!(nix::fcntl::fcntl(&hostile, write).is_err());
        assert!(worker.claim(0));
        assert_eq!(parent.revoke_unstarted(1), 1);
    }

    #[test]
    fn a_page_that_can_shrink_is_refused() {
        let fd =
            nix::sys::memfd::memfd_create(c"unsealed", nix::sys::memfd::MFdFlags::empty()).unwrap();
        nix::unistd::ftruncate(&fd, 4096).unwrap();
        let err = Claims::map(fd).unwrap_err();
        assert!(
            err.to_string().contains("sealed against shrinking"),
            "{err}"
        );
    }

    #[test]
    fn a_word_written_over_is_told_from_a_revocation() {
        let (parent, fd) = Claims::create().unwrap();
        let worker = Claims::map(fd).unwrap();
        assert!(worker.claim(0) && worker.claim(1));
        assert_eq!(parent.claimed_beyond(2), None, "two jobs sent, two started");
        assert_eq!(parent.revoke_unstarted(4), 2);
        assert!(!worker.claim(2) && worker.was_revoked(2), "revoked");
        assert_eq!(parent.claimed_beyond(4), None);
        // Garbage over the word: past every job sent, or back below the next job.
        worker.word.get().store(u64::MAX, Ordering::SeqCst);
        assert_eq!(parent.claimed_beyond(4), Some(u64::MAX));
        worker.word.get().store(1, Ordering::SeqCst);
        assert!(!worker.claim(4) && !worker.was_revoked(4), "written over");
        assert_eq!(parent.claimed_beyond(4), None, "within bounds: trusted");
    }

    #[test]
    fn a_job_the_word_does_not_show_started_is_not_taken_from_a_worker_kept() {
        let (parent, fd) = Claims::create().unwrap();
        let worker = Claims::map(fd).unwrap();
        // Jobs 0 to 3 sent; the worker has not claimed job 0.
        assert_eq!(parent.revoke_unstarted_after(0, 4), None, "nothing revoked");
        assert!(worker.claim(0), "job 0 starts as usual");
        assert_eq!(
            parent.revoke_unstarted_after(0, 4),
            Some(1),
            "1 to 3 taken back"
        );
        assert!(!worker.claim(1) && worker.was_revoked(1));
        // Job 4 sent and claimed; its task moves the word back to make it look unstarted.
        assert!(worker.claim(4));
        worker.word.get().store(4, Ordering::SeqCst);
        assert_eq!(parent.revoke_unstarted_after(4, 6), None, "job 4 stays");
        // Taking back from a lost worker trusts the word as far as it goes.
        assert_eq!(parent.revoke_unstarted(6), 4);
    }

    #[test]
    fn a_claim_and_a_revocation_race_and_exactly_one_wins() {
        for _ in 0..200 {
            let (parent, fd) = Claims::create().unwrap();
            let worker = Claims::map(fd).unwrap();
            let claimed = std::thread::scope(|scope| {
                let claiming = scope.spawn(|| (0..8).take_while(|&id| worker.claim(id)).count());
                let revoked_from = parent.revoke_unstarted(8);
                let claimed = claiming.join().unwrap();
                assert_eq!(revoked_from, claimed as u64);
                claimed
            });
            assert!(claimed <= 8);
        }
    }
}
