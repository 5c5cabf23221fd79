//! Payloads too large for the socket, in shared memory: a fresh sealed memfd per payload, a
//! per-worker arena written again for every payload of a middling size ([`OutArena`],
//! [`InArena`]), or a large result read as a stream ([`StreamPayload`]). The frame carries the
//! payload's size instead of the payload.
//!
//! A descriptor travels (`SCM_RIGHTS`) with the bytes of its own frame, so a reader that keeps
//! the descriptors it receives in order finds each one by the time the frame that needs it is
//! complete (see [`FdReader`](super::wire::FdReader)). What the receiver checks before it maps
//! a sealed memfd, and why, is in `sys::SealedMapping`; the parent refuses one larger than
//! [`MAX_RESULT`](super::wire::MAX_RESULT) before anything else.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use nix::fcntl::{FallocateFlags, fallocate};

use crate::sys::{self, ArenaMapping, invalid_data};

/// A payload longer than this goes through shared memory, not through the socket.
pub(crate) const THRESHOLD: usize = 128 * 1024;

// Per-worker payload arenas: one memfd for each direction between the parent and a worker,
// made once and written again for every payload of a middling size, instead of a fresh
// sealed memfd per payload (above).
//
// A fresh memfd costs, per payload, `memfd_create`, the allocation and zeroing of its pages
// as it is written, the seals, `mmap` and the page faults of reading it, `munmap`, and the
// freeing of its pages. An arena's pages are allocated once and stay: a payload costs one
// copy into the writer's mapping of it and one `pread` out of it.
//
// - **Who writes what.** The parent writes arguments into its *request arena*, the worker
// results into its *reply arena*; each side makes its arena at its first use and attaches
// the descriptor to the frame that first uses it ([`OutArena::write`]). A frame whose payload
// is in an arena carries the payload's size in place of the payload.
// - **The writer maps its arena, and only writes through the mapping.** An arena is a memfd of
// [`ARENA_MAX`] bytes sealed against shrinking and growing, so no access through a mapping
// can fault past its end, whatever the other side does to the file. The worker closes its
// descriptor of the parent's arena once it has mapped it. `pwrite` would do
// without the mapping, but it costs about three times a `memcpy` on shared memory.
// - **The parent copies a reply out with `pread`** ([`InArena::read`]) before anything reads
// it, and never maps the worker's arena. A hostile worker can write anything into its arena
// at any time, or hand over another file: the parent reads at most [`ARENA_MAX`] bytes, into
// memory of its own, through the kernel, so that can change the bytes it gets or make the
// read fail (the reply is then malformed), never touch the parent's memory otherwise. A
// descriptor that is not a memfd is refused, so that a read can never wait.
// - **The worker reads an argument in place** in its read-only mapping of the parent's arena,
// trusting the parent's side of the protocol, and lets go of it when a `ByteBuf` of the
// argument outlives its call (`ARENA_RETAINED`): see `sys::ArenaView`.
// - **When an arena may be written again.** The parent writes a new argument only when no job
// in flight on that worker has its argument in the arena (the worker reads a claimed job's
// argument before running it, and never reads one whose job was taken back). The worker
// writes a new result only once the parent has read its last one: the parent counts the
// arena replies it has read in the second word of the worker's claim page, and the worker
// compares it with the count it wrote. When an arena is busy, the payload takes a fresh
// sealed memfd instead, as a payload above [`ARENA_MAX`] always does.
// - **Size.** An arena's pages are allocated when first written, so it holds as much memory
// as the largest payload written to it, at most [`ARENA_MAX`]: a worker holds at most two.
// Above that size the fixed costs of a fresh memfd are small beside the copy, and a sealed
// memfd can be read in place, without the copy (a large `ByteBuf` result costs no second copy
// of itself).
// - **A worker that dies mid-write** leaves its arena half written: its reply never comes,
// and the parent closes the arena with the worker's link.

/// The largest payload that goes through an arena; a larger one takes a fresh sealed memfd.
pub(crate) const ARENA_MAX: usize = 4 * 1024 * 1024;

/// Whether a payload of `len` bytes goes through an arena (when the arena is free).
pub(crate) fn fits_in_arena(len: usize) -> bool {
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
            let what = "a payload larger than the arena";
            return Err(io::Error::new(io::ErrorKind::InvalidInput, what));
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
            return Err(invalid_data("a payload arena that is no memfd"));
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
        let Some(fd) = &self.fd else {
            return Err(invalid_data("a payload in an arena never received"));
        };
        if size > ARENA_MAX {
            return Err(invalid_data(format!(
                "a payload of {size} bytes in an arena, above its {ARENA_MAX}-byte limit"
            )));
        }
        sys::read_from_start(fd.as_fd(), size)
    }
}

// Large results decoded as a stream: a worker's result of more than
// [`ARENA_MAX`] bytes that is not mostly one block of bytes (a
// `Vec<u8>`, which serde encodes element by element, or a large structure) comes in a fresh
// memfd that is *not* sealed against writes. The parent never maps it: it reads it with `pread`
// through a small buffer while it decodes, and punches out (`fallocate(PUNCH_HOLE)`) the pages
// it has passed, so that the memory of the encoded payload is given back as the decoded value
// grows. A 64 MiB `Vec<u8>` result then costs the parent about its own size, where a sealed
// memfd read in place costs the mapping and the vector.
//
// A result that is mostly the crate's `ByteBuf`s still comes sealed and is read in place (no
// copy at all): the worker counts, as it encodes, the bytes they wrote. A `serde_bytes::ByteBuf`
// owns its vector, so it is streamed, read straight into that vector.
//
// A hostile worker that keeps the descriptor can write the file while it is read, or shrink
// it: that changes the bytes decoded, or makes the decoding fail, as any garbage in a result
// does; it never reaches the parent's memory. The size a reply claims is checked against the
// file's size and the largest frame, so that it cannot make the parent allocate more.

/// How much of the file is punched out at a time, behind the decoder.
const CHUNK: usize = 1024 * 1024;

/// A result waiting in a memfd, to be decoded as a stream.
#[derive(Debug)]
pub(crate) struct StreamPayload {
    file: File,
    size: usize,
}

impl StreamPayload {
    /// Takes the memfd `fd` that came with a reply claiming `size` bytes in it, at most `max`
    /// (the largest result any reply may claim).
    ///
    /// # Errors
    ///
    /// The descriptor is no memfd (reading it might wait), or it holds fewer bytes than
    /// claimed, or more than a frame may.
    pub(crate) fn receive(fd: OwnedFd, size: u64, max: u64) -> io::Result<StreamPayload> {
        if !sys::is_memfd(fd.as_fd()) {
            return Err(invalid_data("a streamed result that is no memfd"));
        }
        let file = File::from(fd);
        let held = file.metadata()?.len();
        if size > held || size > max {
            return Err(invalid_data(format!(
                "a streamed result of {size} bytes in a file of {held}"
            )));
        }
        let size = usize::try_from(size).map_err(|_| invalid_data("too large"))?;
        Ok(StreamPayload { file, size })
    }

    /// How many bytes the result takes.
    pub(crate) fn len(&self) -> usize {
        self.size
    }

    /// A reader of the result from its start, which punches out what it has read (read it in
    /// large pieces: it is not buffered).
    pub(crate) fn reader(&self) -> impl Read + '_ {
        PunchingReader {
            payload: self,
            offset: 0,
            punched: 0,
        }
    }

    /// The whole result, copied out (without punching).
    pub(crate) fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0; self.size];
        self.file.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }
}

/// Reads a [`StreamPayload`] in order, and punches out the whole chunks it has passed.
struct PunchingReader<'a> {
    payload: &'a StreamPayload,
    offset: usize,
    /// Everything before this offset is punched out.
    punched: usize,
}

impl Read for PunchingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.payload.size - self.offset;
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let read = self
            .payload
            .file
            .read_at(&mut buf[..want], self.offset as u64)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a streamed result shorter than it said",
            ));
        }
        self.offset += read;
        // What the caller has now is never read again: give its pages back, a chunk at a time.
        let passed = self.offset / CHUNK * CHUNK;
        if passed > self.punched {
            // Best effort: a file that refuses (a hostile worker sealed it) only keeps its
            // memory until the payload is dropped.
            let _ = fallocate(
                &self.payload.file,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                self.punched as libc::off_t,
                (passed - self.punched) as libc::off_t,
            );
            self.punched = passed;
        }
        Ok(read)
    }
}

#[cfg(test)]
mod arena_tests {
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
        assert!(!fits_in_arena(THRESHOLD));
        assert!(fits_in_arena(THRESHOLD + 1));
        assert!(fits_in_arena(ARENA_MAX));
        assert!(!fits_in_arena(ARENA_MAX + 1));
    }
}

#[cfg(test)]
mod stream_reply_tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    /// The limit the parent passes: that of any result.
    const MAX: u64 = crate::process_pool::wire::MAX_RESULT as u64;

    fn memfd_with(bytes: &[u8]) -> (OwnedFd, File) {
        let fd =
            nix::sys::memfd::memfd_create(c"test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
        let mut file = File::from(fd.try_clone().unwrap());
        file.write_all(bytes).unwrap();
        (fd, file)
    }

    #[test]
    fn a_stream_is_read_whole_and_its_pages_are_given_back() {
        let bytes: Vec<u8> = (0..5 * CHUNK + 123).map(|i| (i % 253) as u8).collect();
        let (fd, file) = memfd_with(&bytes);
        let payload = StreamPayload::receive(fd, bytes.len() as u64, MAX).unwrap();
        let before = file.metadata().unwrap().blocks();
        let mut read = Vec::new();
        payload.reader().read_to_end(&mut read).unwrap();
        assert!(read == bytes, "read whole, in order");
        let after = file.metadata().unwrap().blocks();
        assert!(after * 4 < before, "{before} blocks before, {after} after");
    }

    #[test]
    fn a_stream_that_claims_more_than_its_file_or_is_no_memfd_is_refused() {
        let (fd, _file) = memfd_with(&[1; 100]);
        let err = StreamPayload::receive(fd, 101, MAX).unwrap_err();
        assert!(
            err.to_string().contains("101 bytes in a file of 100"),
            "{err}"
        );
        let (socket, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(StreamPayload::receive(OwnedFd::from(socket), 0, MAX).is_err());
    }

    #[test]
    fn a_stream_shrunk_while_it_is_read_ends_in_an_error() {
        let (fd, file) = memfd_with(&vec![7; 3 * CHUNK]);
        let payload = StreamPayload::receive(fd, 3 * CHUNK as u64, MAX).unwrap();
        let mut reader = payload.reader();
        let mut first = vec![0; 10];
        reader.read_exact(&mut first).unwrap();
        file.set_len(CHUNK as u64 + 5).unwrap();
        let mut rest = Vec::new();
        let err = reader.read_to_end(&mut rest).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(payload.len(), 3 * CHUNK);
    }
}
