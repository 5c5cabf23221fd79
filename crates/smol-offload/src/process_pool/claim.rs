//! [`Claims`]: how the parent knows which jobs a worker started, and takes back those it has
//! not, through one word of memory they share.
//!
//! A worker gets its jobs in order, with ids 0, 1, 2, ... The shared word holds the id of the
//! next job the worker may start. Before it starts job `id`, the worker *claims* it: it swaps
//! the word from `id` to `id + 1`, atomically. The parent *revokes* the jobs it sent and the
//! worker has not started by swapping the word, atomically too, from its current value to the
//! id of the next job it will send: a worker that then reads one of those requests finds the
//! word moved past it, and skips it without a reply. Exactly one of the two swaps wins for each
//! job, so a revoked job never starts, and a job the worker claimed is never revoked.
//!
//! The parent uses it to requeue the jobs that provably never started when a worker dies (only
//! the job it was running fails), and to move jobs sent ahead to a busy worker onto an idle
//! one. It costs the worker one compare-and-swap per job, with no system call.
//!
//! # A hostile worker
//!
//! The page is memory the parent maps and a worker can write, so it is made so that no worker
//! can make an access to it fault: the memfd is sealed against shrinking and growing before the
//! worker gets it (see `sys::SharedWord`), and the worker closes its descriptor as soon as it
//! has mapped the page, so that a task that truncates every descriptor it holds does not even
//! reach it. A task can still write the page through the worker's own mapping, at any time and
//! with any value, so every value the parent reads from it is the worker's word, trusted only
//! for the worker's own jobs:
//!
//! - *Which jobs it started* is trusted as far as it goes: a word below the truth makes the
//!   parent run elsewhere jobs that this worker ran (a second run, whose first result the
//!   parent never took), a word above it makes the parent count as started jobs that it never
//!   will (they fail with the worker, or wait for it as for any busy worker). Either way, only
//!   jobs sent to this worker. A word moved back to the running job's own id cannot be told
//!   from a worker that has yet to claim it, so the parent bounds what it costs instead: it
//!   takes jobs back from a worker it keeps only past one the word shows started
//!   ([`Claims::revoke_unstarted_after`]), and a job requeued after losing
//!   `job::MOST_LOSSES` workers is failed, not requeued: a task that rolls its word back and
//!   kills its worker runs a few times, not forever.
//! - *A word past every job sent* is no claim any worker could make: the parent checks it at
//!   each reply ([`Claims::claimed_beyond`]), and kills the worker as one that sent a malformed
//!   reply. A worker's own loop checks that the word never goes back below the job it reads
//!   ([`Claims::was_revoked`]): it exits rather than skip its jobs forever.
//! - *The count of arena replies read* (the second word) only tells the worker when it may
//!   write its reply arena again: a wrong count makes it overwrite a reply the parent has not
//!   copied out yet, and so garbles its own results.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use crate::sys::SharedWord;

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
        let word = SharedWord::map(std::os::fd::AsFd::as_fd(&fd))?;
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
    /// arena, so that the worker may write the next one (see [`arena`](super::arena)). Kept in
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
    /// [`revoke_unstarted`](Claims::revoke_unstarted), but only if the word says that job
    /// `started` was started (it is past it), at the instant of the swap; `None`, and nothing
    /// revoked, otherwise. A worker that moved its word back to make its running job look
    /// unstarted cannot have it taken back and run again elsewhere this way: only the loss of
    /// the worker can, which is counted (see `job::MOST_LOSSES`).
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
mod tests {
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
