//! Payloads too large for the socket: the argument or the result is written to a sealed memfd,
//! and the frame carries its size instead, with the descriptor attached (`SCM_RIGHTS`).
//!
//! A descriptor travels with the bytes of its own frame, so a reader that keeps the
//! descriptors it receives in order finds each one by the time the frame that needs it is
//! complete. The receiver checks the seals before it maps the memory, so that no other holder
//! of the file can change the bytes while they are read, or shrink the file under the mapping
//! (which would fault the reader). The parent, which maps what a possibly hostile worker sends,
//! also checks that the file is an ordinary memfd whose every page was written (mapping holes
//! would allocate them in the parent), and refuses one larger than
//! [`MAX_RESULT`](super::wire::MAX_RESULT) before anything else (see `sys::SealedMapping`).

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::sys;

/// A payload longer than this goes through shared memory, not through the socket.
pub(crate) const THRESHOLD: usize = 128 * 1024;

/// The most descriptors a reader keeps before frames claim them: more means a broken or
/// hostile peer. A worker may legitimately have sent one shared reply for each of the tasks
/// sent ahead to it (at most 16) by the time the parent reads them all at once.
pub(crate) const MAX_WAITING_FDS: usize = 32;

/// Reads a socket like `read`, keeping the descriptors that arrive with the bytes, in order.
pub(crate) struct FdReader<'a> {
    socket: &'a UnixStream,
    flags: MsgFlags,
    space: Vec<u8>,
    /// Descriptors received and not yet claimed by a frame, oldest first.
    pub(crate) fds: VecDeque<OwnedFd>,
    /// Set when more than [`MAX_WAITING_FDS`] arrived: the extra ones were closed at once, so
    /// that a hostile peer cannot fill this process's descriptor table.
    pub(crate) overflowed: bool,
}

impl<'a> FdReader<'a> {
    /// A reader that waits for bytes (the worker's).
    pub(crate) fn blocking(socket: &'a UnixStream) -> FdReader<'a> {
        FdReader::new(socket, MsgFlags::empty())
    }

    /// A reader that returns `WouldBlock` when the socket is empty (the parent's).
    pub(crate) fn available(socket: &'a UnixStream) -> FdReader<'a> {
        FdReader::new(socket, MsgFlags::MSG_DONTWAIT)
    }

    fn new(socket: &'a UnixStream, flags: MsgFlags) -> FdReader<'a> {
        FdReader {
            socket,
            flags: flags | MsgFlags::MSG_CMSG_CLOEXEC,
            space: nix::cmsg_space!([RawFd; MAX_WAITING_FDS]),
            fds: VecDeque::new(),
            overflowed: false,
        }
    }
}

impl Read for FdReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut iov = [IoSliceMut::new(buf)];
        let message = recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut self.space),
            self.flags,
        )?;
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for fd in fds.into_iter().map(sys::own_received_fd) {
                    if self.fds.len() < MAX_WAITING_FDS {
                        self.fds.push_back(fd);
                    } else {
                        self.overflowed = true;
                    }
                }
            }
        }
        Ok(message.bytes)
    }
}

/// Sends `bytes` with `fd` attached to them, blocking until the socket took them all.
pub(crate) fn send_with_fd(
    socket: &UnixStream,
    bytes: &[u8],
    fd: BorrowedFd<'_>,
) -> io::Result<()> {
    let fds = [fd.as_raw_fd()];
    let sent = loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(bytes)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(0) if !bytes.is_empty() => return Err(io::ErrorKind::WriteZero.into()),
            Ok(sent) => break sent,
            Err(nix::errno::Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    };
    send_all(socket, &bytes[sent..])
}

/// Sends `bytes`, blocking until the socket took them all.
pub(crate) fn send_all(socket: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match nix::sys::socket::send(socket.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}
