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

    /// The worker's view of the word the parent created.
    pub(crate) fn map(fd: &OwnedFd) -> io::Result<Claims> {
        Ok(Claims {
            word: SharedWord::map(fd)?,
        })
    }

    /// For the worker: claims job `id` before starting it. `false` when the parent revoked it:
    /// skip it.
    pub(crate) fn claim(&self, id: u64) -> bool {
        self.word
            .get()
            .compare_exchange(id, id + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
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
        let word = self.word.get();
        let mut next_to_start = word.load(Ordering::SeqCst);
        loop {
            if next_to_start >= next_id {
                return next_id;
            }
            match word.compare_exchange(next_to_start, next_id, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next_to_start,
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
        let worker = Claims::map(&fd).unwrap();
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
        let worker = Claims::map(&fd).unwrap();
        assert_eq!(worker.arena_replies_read(), 0);
        parent.set_arena_replies_read(3);
        assert_eq!(worker.arena_replies_read(), 3);
        assert!(worker.claim(0), "the claim word is untouched");
        assert_eq!(parent.revoke_unstarted(1), 1);
        assert_eq!(worker.arena_replies_read(), 3);
    }

    #[test]
    fn a_claim_and_a_revocation_race_and_exactly_one_wins() {
        for _ in 0..200 {
            let (parent, fd) = Claims::create().unwrap();
            let worker = Claims::map(&fd).unwrap();
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
