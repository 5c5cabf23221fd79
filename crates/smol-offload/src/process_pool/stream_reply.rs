//! Large results decoded as a stream: a worker's result of more than
//! [`ARENA_MAX`](super::arena::ARENA_MAX) bytes that is not mostly one block of bytes (a
//! `Vec<u8>`, which serde encodes element by element, or a large structure) comes in a fresh
//! memfd that is *not* sealed against writes. The parent never maps it: it reads it with `pread`
//! through a small buffer while it decodes, and punches out (`fallocate(PUNCH_HOLE)`) the pages
//! it has passed, so that the memory of the encoded payload is given back as the decoded value
//! grows. A 64 MiB `Vec<u8>` result then costs the parent about its own size, where a sealed
//! memfd read in place costs the mapping and the vector.
//!
//! A result that is mostly the crate's `ByteBuf`s still comes sealed and is read in place (no
//! copy at all): the worker counts, as it encodes, the bytes they wrote. A `serde_bytes::ByteBuf`
//! owns its vector, so it is streamed, read straight into that vector.
//!
//! A hostile worker that keeps the descriptor can write the file while it is read, or shrink
//! it: that changes the bytes decoded, or makes the decoding fail, as any garbage in a result
//! does; it never reaches the parent's memory. The size a reply claims is checked against the
//! file's size and the largest frame, so that it cannot make the parent allocate more.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

use nix::fcntl::{FallocateFlags, fallocate};

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
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        if !crate::sys::is_memfd(std::os::fd::AsFd::as_fd(&fd)) {
            return Err(invalid("a streamed result that is no memfd".to_owned()));
        }
        let file = File::from(fd);
        let held = file.metadata()?.len();
        if size > held || size > max {
            return Err(invalid(format!(
                "a streamed result of {size} bytes in a file of {held}"
            )));
        }
        let size = usize::try_from(size).map_err(|_| invalid("too large".to_owned()))?;
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
mod tests {
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
