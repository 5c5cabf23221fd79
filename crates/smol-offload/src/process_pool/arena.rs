//! Per-worker payload arenas: one memfd for each direction between the parent and a worker,
//! made once and written again for every payload of a middling size, instead of a fresh
//! sealed memfd per payload (see [`out_of_line`](super::out_of_line)).
//!
//! A fresh memfd costs, per payload, `memfd_create`, the allocation and zeroing of its pages
//! as it is written, the seals, `mmap` and the page faults of reading it, `munmap`, and the
//! freeing of its pages. An arena's pages are allocated once and stay: a payload costs one
//! `pwrite` into it and one `pread` out of it.
//!
//! - **Who writes what.** The parent writes arguments into its *request arena*, the worker
//!   results into its *reply arena*; each side makes its arena at its first use and attaches
//!   the descriptor to the frame that first uses it ([`OutArena::write`]). A frame whose payload
//!   is in an arena carries the payload's size in place of the payload.
//! - **Nobody maps an arena.** The reader copies the payload out with `pread`
//!   ([`InArena::read`]) before anything else reads it. A hostile worker can write anything
//!   into its arena at any time, shrink it or grow it: the parent reads at most
//!   [`ARENA_MAX`] bytes, into memory of its own, through the kernel, so that can change the
//!   bytes it gets or make the read fail (the reply is then malformed), never touch the
//!   parent's memory otherwise. A descriptor that is not a memfd is refused, so that a read can
//!   never wait.
//! - **When an arena may be written again.** The parent writes a new argument only when no job
//!   in flight on that worker has its argument in the arena (the worker reads a claimed job's
//!   argument before running it, and never reads one whose job was taken back). The worker
//!   writes a new result only once the parent has read its last one: the parent counts the
//!   arena replies it has read in the second word of the worker's claim page, and the worker
//!   compares it with the count it wrote. When an arena is busy, the payload takes a fresh
//!   sealed memfd instead, as a payload above [`ARENA_MAX`] always does.
//! - **Size.** A memfd grows as it is written, so an arena is as large as the largest payload
//!   written to it, at most [`ARENA_MAX`]: a worker holds at most two of them. Above that size
//!   the fixed costs of a fresh memfd are small beside the copy, and a sealed memfd can be read
//!   in place, without the copy (a large `ByteBuf` result costs no second copy of itself).
//! - **A worker that dies mid-write** leaves its arena half written: its reply never comes,
//!   and the parent closes the arena with the worker's link.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::process_pool::out_of_line::THRESHOLD;
use crate::sys;

/// The largest payload that goes through an arena; a larger one takes a fresh sealed memfd.
pub(crate) const ARENA_MAX: usize = 4 * 1024 * 1024;

/// Whether a payload of `len` bytes goes through an arena (when the arena is free).
pub(crate) fn fits(len: usize) -> bool {
    len > THRESHOLD && len <= ARENA_MAX
}

/// The arena this side writes: made at its first use.
#[derive(Debug, Default)]
pub(crate) struct OutArena {
    fd: Option<OwnedFd>,
}

impl OutArena {
    /// Writes `payload` at the start of the arena, making the arena first if there is none.
    /// Returns the descriptor to attach to the frame when the arena is new (the other side
    /// keeps it for the frames that follow), `None` when the other side has it already.
    ///
    /// # Errors
    ///
    /// The memfd could not be made or written (out of memory or descriptors): send the payload
    /// another way.
    pub(crate) fn write(&mut self, payload: &[u8]) -> io::Result<Option<OwnedFd>> {
        debug_assert!(payload.len() <= ARENA_MAX, "an arena payload too large");
        let new = self.fd.is_none();
        if new {
            self.fd = Some(sys::arena_memfd()?);
        }
        let fd = self.fd.as_ref().expect("made just above");
        let result = sys::write_at_start(fd.as_fd(), payload).and_then(|()| {
            if new {
                fd.try_clone().map(Some)
            } else {
                Ok(None)
            }
        });
        if result.is_err() && new {
            // The other side never got it: the next payload makes another.
            self.fd = None;
        }
        result
    }
}

/// The arena the other side writes, as this side reads it.
#[derive(Debug, Default)]
pub(crate) struct InArena {
    fd: Option<OwnedFd>,
}

impl InArena {
    /// Keeps `fd`, which came with a frame that says it is the other side's new arena.
    ///
    /// # Errors
    ///
    /// `fd` is no memfd (a hostile peer): reading it might wait.
    pub(crate) fn replace(&mut self, fd: OwnedFd) -> io::Result<()> {
        if !sys::is_memfd(fd.as_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a payload arena that is no memfd",
            ));
        }
        self.fd = Some(fd);
        Ok(())
    }

    /// Copies the first `size` bytes of the arena out.
    ///
    /// # Errors
    ///
    /// No arena was received, `size` is more than [`ARENA_MAX`], or the arena holds fewer
    /// bytes: the frame that says so is malformed.
    pub(crate) fn read(&self, size: usize) -> io::Result<Vec<u8>> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let Some(fd) = &self.fd else {
            return Err(invalid("a payload in an arena never received".to_owned()));
        };
        if size > ARENA_MAX {
            return Err(invalid(format!(
                "a payload of {size} bytes in an arena, above its {ARENA_MAX}-byte limit"
            )));
        }
        sys::read_from_start(fd.as_fd(), size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn the_descriptor_goes_with_the_first_payload_only_and_the_arena_is_reused() {
        let mut writer = OutArena::default();
        let mut reader = InArena::default();
        let first = bytes(THRESHOLD + 1, 1);
        let fd = writer
            .write(&first)
            .unwrap()
            .expect("a new arena's descriptor");
        reader.replace(fd).unwrap();
        assert_eq!(reader.read(first.len()).unwrap(), first);
        // Larger (the file grows), then smaller (the first bytes are read, not the old tail).
        for (len, seed) in [(ARENA_MAX, 2), (THRESHOLD + 7, 3), (2 * THRESHOLD, 4)] {
            let payload = bytes(len, seed);
            assert!(writer.write(&payload).unwrap().is_none(), "sent once");
            assert_eq!(reader.read(len).unwrap(), payload);
        }
    }

    #[test]
    fn a_reader_refuses_sizes_beyond_the_arena_and_its_limit() {
        let mut writer = OutArena::default();
        let mut reader = InArena::default();
        assert!(reader.read(10).is_err(), "no arena yet");
        reader
            .replace(writer.write(&bytes(1000, 0)).unwrap().unwrap())
            .unwrap();
        let short = reader.read(1001).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::InvalidData);
        assert!(short.to_string().contains("after 1000 of its 1001 bytes"));
        let huge = reader.read(ARENA_MAX + 1).unwrap_err();
        assert!(huge.to_string().contains("above its"), "{huge}");
    }

    #[test]
    fn a_descriptor_that_is_no_memfd_is_refused() {
        let (socket, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = InArena::default()
            .replace(OwnedFd::from(socket))
            .unwrap_err();
        assert!(err.to_string().contains("no memfd"), "{err}");
        let file = std::fs::File::open("/dev/zero").unwrap();
        assert!(InArena::default().replace(OwnedFd::from(file)).is_err());
    }

    #[test]
    fn sizes_around_the_threshold_and_the_limit() {
        assert!(!fits(THRESHOLD));
        assert!(fits(THRESHOLD + 1));
        assert!(fits(ARENA_MAX));
        assert!(!fits(ARENA_MAX + 1));
    }
}
