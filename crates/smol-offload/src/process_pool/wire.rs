//! What crosses the sockets: length-prefixed frames between the parent and a worker, and small
//! postcard messages between the parent and the fork server.
//!
//! A request frame is `len: u32 | id: u64 | flags: u8 | trampoline: u64 | function: u64 |
//! argument`, a reply frame is `len: u32 | id: u64 | status: u8 | payload`, all little-endian,
//! where `len` counts the bytes after itself. The argument and a returned value are
//! postcard-encoded. A request's flags carry its [`CallOptions`].

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use crate::sys::{CallStatus, ErasedCall};

const REQUEST_HEADER: usize = 8 + 1 + 8 + 8;
/// Request flag: print the call's panic in the worker as it happens.
const PRINT_PANICS: u8 = 1;

/// How the worker runs one call, besides the call itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CallOptions {
    /// Print a panic of the call to the worker's stderr, naming the worker.
    pub(crate) print_panics: bool,
}
const REPLY_HEADER: usize = 8 + 1;
/// The largest frame accepted: a bigger length means a corrupt stream.
const MAX_FRAME: usize = u32::MAX as usize;

/// Appends a request frame to `out`.
pub(crate) fn write_request(
    out: &mut Vec<u8>,
    id: u64,
    call: ErasedCall,
    options: CallOptions,
    arg: &[u8],
) {
    let len = u32::try_from(REQUEST_HEADER + arg.len()).expect("argument checked by the pool");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.push(if options.print_panics {
        PRINT_PANICS
    } else {
        0
    });
    for word in call.to_wire() {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(arg);
}

/// The largest argument a request can carry.
pub(crate) const MAX_ARGUMENT: usize = MAX_FRAME - REQUEST_HEADER;

/// A request as the worker reads it.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) id: u64,
    /// The words of the call, as [`ErasedCall::to_wire`] gave them: only the worker's loop
    /// in `sys` may turn them back into a call, because only it knows where they came from.
    pub(crate) call: [u64; 2],
    pub(crate) options: CallOptions,
    /// The encoded argument, borrowed from the read buffer.
    pub(crate) arg: &'a [u8],
}

/// Reads one request frame; `Ok(None)` at a clean end of stream (the parent closed the socket).
pub(crate) fn read_request<'a>(
    input: &mut impl Read,
    buffer: &'a mut Vec<u8>,
) -> io::Result<Option<Request<'a>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len < REQUEST_HEADER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request frame too short",
        ));
    }
    buffer.resize(len, 0);
    input.read_exact(buffer)?;
    let word = |at: usize| u64::from_le_bytes(buffer[at..at + 8].try_into().expect("8 bytes"));
    let request = Request {
        id: word(0),
        options: CallOptions {
            print_panics: buffer[8] & PRINT_PANICS != 0,
        },
        call: [word(9), word(17)],
        arg: &buffer[REQUEST_HEADER..],
    };
    Ok(Some(request))
}

/// Starts a reply frame in `out` (cleared first): the payload is appended by the caller, then
/// [`finish_reply`] writes the length.
pub(crate) fn begin_reply(out: &mut Vec<u8>, id: u64) {
    out.clear();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(0);
}

/// The offset in a reply frame where the payload starts.
pub(crate) const REPLY_PAYLOAD: usize = 4 + REPLY_HEADER;

/// Fills in the length and the status of a reply frame begun with [`begin_reply`].
pub(crate) fn finish_reply(out: &mut [u8], status: CallStatus) {
    let len = u32::try_from(out.len() - 4).unwrap_or(u32::MAX);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[12] = status as u8;
}

/// A reply as the parent reads it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) id: u64,
    pub(crate) status: CallStatus,
    pub(crate) payload: Vec<u8>,
}

/// Cuts reply frames out of the bytes read from a non-blocking socket.
#[derive(Debug, Default)]
pub(crate) struct ReplyReader {
    buffer: Vec<u8>,
}

impl ReplyReader {
    /// Reads what `input` has without blocking, into the buffer, until the buffer holds `limit`
    /// bytes. Returns `Ok(false)` at the end of the stream (the worker is gone).
    pub(crate) fn fill(&mut self, input: &mut impl Read, limit: usize) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        while self.buffer.len() < limit {
            match input.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }

    /// The length of the frame that comes next, once its length prefix was read.
    pub(crate) fn next_frame_len(&self) -> Option<usize> {
        let prefix = self.buffer.get(..4)?;
        Some(4 + u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize)
    }

    /// The next complete reply, if the buffer holds one.
    pub(crate) fn next_reply(&mut self) -> io::Result<Option<Reply>> {
        if self.buffer.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buffer[..4].try_into().expect("4 bytes")) as usize;
        if len < REPLY_HEADER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply frame too short",
            ));
        }
        if self.buffer.len() < 4 + len {
            return Ok(None);
        }
        let id = u64::from_le_bytes(self.buffer[4..12].try_into().expect("8 bytes"));
        let status = CallStatus::from_byte(self.buffer[12])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown reply status"))?;
        let payload = self.buffer[REPLY_PAYLOAD..4 + len].to_vec();
        self.buffer.drain(..4 + len);
        Ok(Some(Reply {
            id,
            status,
            payload,
        }))
    }
}

/// What the parent asks of the fork server. A `Spawn` carries the worker's end of its socket
/// pair as an `SCM_RIGHTS` descriptor.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum ServerRequest {
    /// Fork a worker that serves the attached socket.
    Spawn,
    /// Wait for this worker, which is exiting, and report how it ended.
    Reap { pid: u32 },
}

/// What the fork server answers, one reply per request.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum ServerReply {
    /// The worker was forked with this pid.
    Spawned { pid: u32 },
    /// The worker exited with this code.
    Exited { pid: u32, code: i32 },
    /// The worker was ended by this signal.
    Killed { pid: u32, signal: i32 },
    /// The request failed with this OS error.
    Failed { errno: i32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some_function(n: u8) -> u8 {
        n
    }

    #[test]
    fn request_frame_round_trips() {
        let call = crate::sys::erase(some_function);
        let mut frame = Vec::new();
        let loud = CallOptions { print_panics: true };
        write_request(&mut frame, 7, call, loud, b"arg");
        write_request(&mut frame, 8, call, CallOptions::default(), b"");
        let mut input = &frame[..];
        let mut buffer = Vec::new();
        let first = read_request(&mut input, &mut buffer).unwrap().unwrap();
        assert_eq!(
            (first.id, first.call, first.arg),
            (7, call.to_wire(), &b"arg"[..])
        );
        assert_eq!(first.options, loud);
        let second = read_request(&mut input, &mut buffer).unwrap().unwrap();
        assert_eq!((second.id, second.arg.len()), (8, 0));
        assert_eq!(second.options, CallOptions::default());
        assert!(read_request(&mut input, &mut buffer).unwrap().is_none());
    }

    #[test]
    fn replies_are_cut_from_partial_reads() {
        let mut stream = Vec::new();
        for (id, status, payload) in [
            (1, CallStatus::Returned, &b"ok"[..]),
            (2, CallStatus::Panicked, b"boom"),
        ] {
            let mut frame = Vec::new();
            begin_reply(&mut frame, id);
            frame.extend_from_slice(payload);
            finish_reply(&mut frame, status);
            stream.extend_from_slice(&frame);
        }
        let mut reader = ReplyReader::default();
        let mut replies = Vec::new();
        for byte in stream {
            reader.fill(&mut &[byte][..], usize::MAX).unwrap();
            while let Some(reply) = reader.next_reply().unwrap() {
                replies.push(reply);
            }
        }
        assert_eq!(replies.len(), 2);
        assert_eq!(
            replies[0],
            Reply {
                id: 1,
                status: CallStatus::Returned,
                payload: b"ok".to_vec()
            }
        );
        assert_eq!(replies[1].status, CallStatus::Panicked);
        assert_eq!(replies[1].payload, b"boom");
    }

    #[test]
    fn reading_up_to_a_limit_leaves_the_rest() {
        let mut frame = Vec::new();
        begin_reply(&mut frame, 7);
        frame.extend_from_slice(&[5; 40_000]);
        finish_reply(&mut frame, CallStatus::Returned);
        let mut reader = ReplyReader::default();
        let mut input = &frame[..];
        assert!(reader.fill(&mut input, 100).unwrap());
        assert!(
            input.len() < frame.len() && !input.is_empty(),
            "read some, not all"
        );
        assert_eq!(reader.next_frame_len(), Some(frame.len()));
        assert_eq!(reader.next_reply().unwrap(), None);
        reader.fill(&mut input, usize::MAX).unwrap();
        assert_eq!(reader.next_reply().unwrap().unwrap().payload, [5; 40_000]);
    }

    #[test]
    fn corrupt_reply_is_an_error() {
        let mut reader = ReplyReader::default();
        reader.fill(&mut &[1, 0, 0, 0, 9][..], usize::MAX).unwrap();
        assert!(reader.next_reply().is_err());
    }

    #[test]
    fn control_messages_round_trip() {
        let bytes = postcard::to_allocvec(&ServerReply::Killed { pid: 12, signal: 9 }).unwrap();
        let back: ServerReply = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, ServerReply::Killed { pid: 12, signal: 9 });
    }
}
