//! Per-worker payload arenas: one memfd for each direction between the parent and a worker,
//! made once and written again for every payload of a middling size, instead of a fresh
//! sealed memfd per payload (see [`out_of_line`](super::out_of_line)).
//!
//! A fresh memfd costs, per payload, `memfd_create`, the allocation and zeroing of its pages
//! as it is written, the seals, `mmap` and the page faults of reading it, `munmap`, and the
//! freeing of its pages. An arena's pages are allocated once and stay: a payload costs one
//! copy into the writer's mapping of it and one `pread` out of it.
//!
//! - **Who writes what.** The parent writes arguments into its *request arena*, the worker
//!   results into its *reply arena*; each side makes its arena at its first use and attaches
//!   the descriptor to the frame that first uses it ([`OutArena::write`]). A frame whose payload
//!   is in an arena carries the payload's size in place of the payload.
//! - **The writer maps its arena, and only writes through the mapping.** An arena is a memfd of
//!   [`ARENA_MAX`] bytes sealed against shrinking and growing, so no access through a mapping
//!   can fault past its end, whatever the other side does to the file. The worker closes its
//!   descriptor of the parent's arena once it has mapped it. `pwrite` would do
//!   without the mapping, but it costs about three times a `memcpy` on shared memory.
//! - **The parent copies a reply out with `pread`** ([`InArena::read`]) before anything reads
//!   it, and never maps the worker's arena. A hostile worker can write anything into its arena
//!   at any time, or hand over another file: the parent reads at most [`ARENA_MAX`] bytes, into
//!   memory of its own, through the kernel, so that can change the bytes it gets or make the
//!   read fail (the reply is then malformed), never touch the parent's memory otherwise. A
//!   descriptor that is not a memfd is refused, so that a read can never wait.
//! - **The worker reads an argument in place** in its read-only mapping of the parent's arena
//!   (`sys::ArenaView`): it trusts the parent, which writes the arena only when no job in flight
//!   has its argument there. A `ByteBuf` of the argument that outlives its call (the function
//!   kept it) would see the next argument: the worker then drops its view (the `ByteBuf` keeps
//!   the old mapping) and says so in its reply (`ARENA_RETAINED`), and the parent makes a new
//!   arena for the next large argument, never writing the old one again.
//! - **When an arena may be written again.** The parent writes a new argument only when no job
//!   in flight on that worker has its argument in the arena (the worker reads a claimed job's
//!   argument before running it, and never reads one whose job was taken back). The worker
//!   writes a new result only once the parent has read its last one: the parent counts the
//!   arena replies it has read in the second word of the worker's claim page, and the worker
//!   compares it with the count it wrote. When an arena is busy, the payload takes a fresh
//!   sealed memfd instead, as a payload above [`ARENA_MAX`] always does.
//! - **Size.** An arena's pages are allocated when first written, so it holds as much memory
//!   as the largest payload written to it, at most [`ARENA_MAX`]: a worker holds at most two. Above that size
//!   the fixed costs of a fresh memfd are small beside the copy, and a sealed memfd can be read
//!   in place, without the copy (a large `ByteBuf` result costs no second copy of itself).
//! - **A worker that dies mid-write** leaves its arena half written: its reply never comes,
//!   and the parent closes the arena with the worker's link.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::process_pool::out_of_line::THRESHOLD;
use crate::sys::{self, ArenaMapping};

/// The largest payload that goes through an arena; a larger one takes a fresh sealed memfd.
pub(crate) const ARENA_MAX: usize = 4 * 1024 * 1024;

/// Whether a payload of `len` bytes goes through an arena (when the arena is free).
pub(crate) fn fits(len: usize) -> bool {
    len > THRESHOLD && len <= ARENA_MAX
}

/// The arena this side writes: made at its first use, [`ARENA_MAX`] bytes of address space
/// whose pages are allocated as they are first written, and kept.
#[derive(Debug, Default)]
pub(crate) struct OutArena {
    mapping: Option<ArenaMapping>,
}

impl OutArena {
    /// Writes `payload` at the start of the arena, making the arena first if there is none.
    /// Returns the descriptor to attach to the frame when the arena is new (the other side
    /// keeps it for the frames that follow), `None` when the other side has it already.
    ///
    /// # Errors
    ///
    /// The memfd could not be made or mapped (out of memory or descriptors), or `payload` is
    /// larger than [`ARENA_MAX`]: send the payload another way.
    pub(crate) fn write(&mut self, payload: &[u8]) -> io::Result<Option<OwnedFd>> {
        if payload.len() > ARENA_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a payload larger than the arena",
            ));
        }
        let new = self.mapping.is_none();
        if new {
            self.mapping = Some(ArenaMapping::create(ARENA_MAX)?);
        }
        let mapping = self.mapping.as_mut().expect("made just above");
        let written = mapping.write(payload);
        debug_assert!(written, "the arena holds ARENA_MAX bytes");
        if !new {
            return Ok(None);
        }
        match mapping.fd().try_clone_to_owned() {
            Ok(fd) => Ok(Some(fd)),
            Err(err) => {
                // The other side never got it: the next payload makes another.
                self.mapping = None;
                Err(err)
            }
        }
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
    fn a_writer_refuses_a_payload_larger_than_the_arena() {
        let mut writer = OutArena::default();
        assert!(writer.write(&bytes(ARENA_MAX + 1, 0)).is_err());
        assert!(writer.write(&bytes(10, 0)).unwrap().is_some(), "still new");
    }

    #[test]
    fn a_reader_refuses_sizes_beyond_the_file_and_the_limit() {
        let mut reader = InArena::default();
        assert!(reader.read(10).is_err(), "no arena yet");
        // A hostile worker's arena: a memfd of 1000 bytes, which it may shrink at any time.
        let fd =
            nix::sys::memfd::memfd_create(c"short", nix::sys::memfd::MFdFlags::empty()).unwrap();
        nix::unistd::ftruncate(&fd, 1000).unwrap();
        let writer = fd.try_clone().unwrap();
        reader.replace(fd).unwrap();
        assert_eq!(reader.read(1000).unwrap(), vec![0; 1000]);
        let short = reader.read(1001).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::InvalidData);
        assert!(short.to_string().contains("after 1000 of its 1001 bytes"));
        nix::unistd::ftruncate(&writer, 0).unwrap();
        assert!(reader.read(1).is_err(), "shrunk");
        nix::unistd::ftruncate(&writer, 2 * ARENA_MAX as libc::off_t).unwrap();
        let huge = reader.read(ARENA_MAX + 1).unwrap_err();
        assert!(huge.to_string().contains("above its"), "{huge}");
    }

    #[test]
    fn nobody_can_shrink_an_arena_under_its_writer() {
        let mut writer = OutArena::default();
        let fd = writer.write(&bytes(100, 0)).unwrap().unwrap();
        assert!(nix::unistd::ftruncate(&fd, 0).is_err(), "sealed");
        assert!(writer.write(&bytes(ARENA_MAX, 1)).unwrap().is_none());
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
