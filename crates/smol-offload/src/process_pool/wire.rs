//! What crosses the sockets: length-prefixed frames between the parent and a worker, small
//! postcard messages between the parent and the fork server, and the socket I/O that carries
//! them with the descriptors they need ([`FdReader`], [`send_all`], [`send_with_fd`]).
//!
//! A request frame is `len: u32 | id: u64 | flags: u8 | trampoline: u64 | function: u64 |
//! argument`, a reply frame is `len: u32 | id: u64 | status: u8 | payload`, all little-endian,
//! where `len` counts the bytes after itself. The argument and a returned value are
//! postcard-encoded. A request's flags carry its [`CallOptions`].
//!
//! With the `tracing` feature, a request also carries its [`TaskContext`] (the `CONTEXT` flag):
//! `task_id: u64 | name_len: u8 | name` between the header and the argument (the submitting
//! span's name, at most [`MAX_SPAN_NAME`] bytes of UTF-8, empty when no span was current).
//! Without the feature no request has it, and frames are as above.
//!
//! A payload longer than [`out_of_line::THRESHOLD`] travels in shared memory (see
//! [`out_of_line`]), and its frame carries its size as a `u64` in place of it: a fresh sealed
//! memfd, attached to the frame's bytes; at most [`ARENA_MAX`](out_of_line::ARENA_MAX) bytes,
//! the sender's per-worker arena when it is free, attached to the first frame that uses it; a
//! large result, a memfd to read as a stream. The request flags and reply status bits below say
//! which; a reply's `ARENA_RETAINED` bit says that the worker keeps reading the parent's request
//! arena, which the parent must never write again.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
#[cfg(feature = "tracing")]
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

use crate::byte_buf::Backing;
use crate::process_pool::out_of_line::{self, InArena, StreamPayload};
use crate::sys::{self, CallStatus, ErasedCall, SealedMapping, invalid_data};

const REQUEST_HEADER: usize = 8 + 1 + 8 + 8;
/// Request flag: print the call's panic in the worker as it happens.
const PRINT_PANICS: u8 = 1;
/// Request flag: the argument is in the memfd attached to the frame, which holds its size.
const SHARED_ARGUMENT: u8 = 2;
/// Request flag: a [`TaskContext`] comes between the header and the argument.
const CONTEXT: u8 = 4;
/// Request flag: the argument is in the parent's request arena; the frame holds its size.
const ARENA_ARGUMENT: u8 = 8;
/// Request flag: the descriptor attached to the frame is the parent's new request arena.
const NEW_ARENA: u8 = 16;
/// The longest span name a request carries, in bytes: a longer one is cut at a character
/// boundary.
pub(crate) const MAX_SPAN_NAME: usize = u8::MAX as usize;
/// Reply status bit: the payload is in the memfd attached to the frame, which holds its size.
const SHARED_REPLY: u8 = 0x80;
/// Reply status bit: the payload is in the worker's reply arena; the frame holds its size.
const ARENA_REPLY: u8 = 0x40;
/// Reply status bit, with [`ARENA_REPLY`]: the descriptor attached to the frame is the
/// worker's new reply arena.
const NEW_ARENA_REPLY: u8 = 0x20;
/// The status bits that say where a reply's payload is.
const OUT_OF_LINE_REPLY: u8 = SHARED_REPLY | ARENA_REPLY | NEW_ARENA_REPLY;
/// Reply status bit: the worker keeps reading the parent's request arena (a `ByteBuf` of the
/// argument outlived the call): the parent must never write it again, and makes another.
const ARENA_RETAINED: u8 = 0x10;

/// Where a payload that does not go through the socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutOfLine {
    /// In a fresh sealed memfd, attached to the frame.
    Sealed,
    /// In the sender's arena; its descriptor is attached to the frame when it is `new`.
    Arena { new: bool },
    /// A result in a fresh memfd, not sealed, attached to the frame, which the parent decodes
    /// as a stream (see [`StreamPayload`](super::out_of_line::StreamPayload)).
    Stream,
}

impl OutOfLine {
    /// Whether a descriptor goes with the frame.
    pub(crate) fn attaches_fd(self) -> bool {
        self != OutOfLine::Arena { new: false }
    }
}

/// How the worker runs one call, besides the call itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CallOptions {
    /// Print a panic of the call to the worker's stderr, naming the worker.
    pub(crate) print_panics: bool,
}

/// Where a process task was submitted, for the worker's log records (feature `tracing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskContext<'a> {
    /// The task's id, unique in the application.
    pub task_id: u64,
    /// The name of the span current at submission; empty when there was none.
    pub span_name: &'a str,
}

/// A span name as it crosses: at most [`MAX_SPAN_NAME`] bytes, cut at a character boundary.
fn bounded(name: &str) -> &str {
    let mut end = name.len().min(MAX_SPAN_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

const REPLY_HEADER: usize = 8 + 1;
/// The largest frame accepted: a bigger length means a corrupt stream.
const MAX_FRAME: usize = u32::MAX as usize;
/// The largest result a reply may carry, however it travels: what a frame holds, as for an
/// argument. A worker's sealed memfd is mapped by the parent, so this is also the most memory
/// one reply can make the parent map; the worker must have written all of it first (see
/// `sys::SealedMapping`). A worker refuses a larger result of its own as the task's error
/// ([`refuse_oversized_reply`]); a larger one announced is a malformed reply, never mapped.
pub(crate) const MAX_RESULT: usize = MAX_FRAME;

/// Appends a request frame to `out`, with `context` when there is one.
#[inline]
pub(crate) fn write_request(
    out: &mut Vec<u8>,
    id: u64,
    call: ErasedCall,
    options: CallOptions,
    context: Option<TaskContext<'_>>,
    arg: &[u8],
) {
    let name = context.map(|context| bounded(context.span_name));
    let context_len = name.map_or(0, |name| 8 + 1 + name.len());
    let len = u32::try_from(REQUEST_HEADER + context_len + arg.len())
        .expect("argument checked by the pool");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.push(flag(options.print_panics, PRINT_PANICS) | flag(context.is_some(), CONTEXT));
    for word in call.to_wire() {
        out.extend_from_slice(&word.to_le_bytes());
    }
    if let (Some(context), Some(name)) = (context, name) {
        out.extend_from_slice(&context.task_id.to_le_bytes());
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
    out.extend_from_slice(arg);
}

/// `bit` if `on`, else no bit.
#[inline]
fn flag(on: bool, bit: u8) -> u8 {
    if on { bit } else { 0 }
}

/// Appends a request frame whose argument of `size` bytes is in shared memory, `place`, and
/// returns the frame's length: these bytes must be sent with the memfd attached, if
/// [`place.attaches_fd()`](OutOfLine::attaches_fd).
pub(crate) fn write_shared_request(
    out: &mut Vec<u8>,
    id: u64,
    call: ErasedCall,
    options: CallOptions,
    context: Option<TaskContext<'_>>,
    size: usize,
    place: OutOfLine,
) -> usize {
    let start = out.len();
    write_request(
        out,
        id,
        call,
        options,
        context,
        &(size as u64).to_le_bytes(),
    );
    out[start + 12] |= match place {
        OutOfLine::Sealed | OutOfLine::Stream => SHARED_ARGUMENT,
        OutOfLine::Arena { new: false } => ARENA_ARGUMENT,
        OutOfLine::Arena { new: true } => ARENA_ARGUMENT | NEW_ARENA,
    };
    out.len() - start
}

/// The largest argument a request can carry (less a context's bytes, with the `tracing`
/// feature: `MAX_CONTEXT` is kept free for them).
pub const MAX_ARGUMENT: usize = MAX_FRAME - REQUEST_HEADER - MAX_CONTEXT;

/// The most bytes a [`TaskContext`] takes in a frame (none without the `tracing` feature,
/// which sends none).
const MAX_CONTEXT: usize = if cfg!(feature = "tracing") {
    8 + 1 + MAX_SPAN_NAME
} else {
    0
};

/// A request as the worker reads it.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) id: u64,
    /// The words of the call, as [`ErasedCall::to_wire`] gave them: only the worker's loop
    /// in `sys` may turn them back into a call, because only it knows where they came from.
    pub(crate) call: [u64; 2],
    pub(crate) options: CallOptions,
    /// Where the task was submitted, when the request says (feature `tracing`).
    pub(crate) context: Option<TaskContext<'a>>,
    /// The encoded argument, borrowed from the read buffer; for a shared argument, its size.
    pub(crate) arg: &'a [u8],
    /// Whether the argument is in the memfd that came with the frame.
    pub(crate) shared: bool,
    /// Whether the argument is in the parent's request arena.
    pub(crate) in_arena: bool,
    /// Whether a descriptor came with the frame: the parent's new request arena.
    pub(crate) new_arena: bool,
}

impl Request<'_> {
    /// The size of a shared argument (sealed or in the arena), as the frame gives it.
    pub(crate) fn shared_size(&self) -> io::Result<usize> {
        let size = <[u8; 8]>::try_from(self.arg)
            .map_err(|_| invalid_data("shared request of the wrong length"))?;
        usize::try_from(u64::from_le_bytes(size))
            .map_err(|_| invalid_data("shared argument too large"))
    }
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
        return Err(invalid_data("request frame too short"));
    }
    // Read as the bytes come, not allocated up front: a corrupt length costs no memory.
    buffer.clear();
    input.take(len as u64).read_to_end(buffer)?;
    if buffer.len() < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let word = |at: usize| u64::from_le_bytes(buffer[at..at + 8].try_into().expect("8 bytes"));
    let flags = buffer[8];
    let (context, arg) = if flags & CONTEXT != 0 {
        let (context, arg) = read_context(&buffer[REQUEST_HEADER..])?;
        (Some(context), arg)
    } else {
        (None, &buffer[REQUEST_HEADER..])
    };
    let request = Request {
        id: word(0),
        options: CallOptions {
            print_panics: flags & PRINT_PANICS != 0,
        },
        call: [word(9), word(17)],
        context,
        arg,
        shared: flags & SHARED_ARGUMENT != 0,
        in_arena: flags & ARENA_ARGUMENT != 0,
        new_arena: flags & NEW_ARENA != 0,
    };
    Ok(Some(request))
}

/// Splits a request's body into its [`TaskContext`] and its argument.
fn read_context(body: &[u8]) -> io::Result<(TaskContext<'_>, &[u8])> {
    let too_short = || invalid_data("request context too short");
    let (task_id, rest) = body.split_first_chunk::<8>().ok_or_else(too_short)?;
    let (&name_len, rest) = rest.split_first().ok_or_else(too_short)?;
    let (name, arg) = rest
        .split_at_checked(name_len.into())
        .ok_or_else(too_short)?;
    let span_name =
        std::str::from_utf8(name).map_err(|_| invalid_data("request span name is not UTF-8"))?;
    let context = TaskContext {
        task_id: u64::from_le_bytes(*task_id),
        span_name,
    };
    Ok((context, arg))
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

/// Turns the reply frame finished in `out` for request `id` into a `BadResult` whose message
/// says so, if its payload is larger than [`MAX_RESULT`]: the parent would refuse it.
pub(crate) fn refuse_oversized_reply(out: &mut Vec<u8>, id: u64) {
    refuse_reply_above(out, id, MAX_RESULT);
}

fn refuse_reply_above(out: &mut Vec<u8>, id: u64, limit: usize) {
    let size = reply_payload(out).len();
    if size <= limit {
        return;
    }
    begin_reply(out, id);
    let message = format!("the result takes {size} bytes, more than the {limit} a result may");
    out.extend_from_slice(message.as_bytes());
    finish_reply(out, CallStatus::BadResult);
}

/// Marks the reply frame finished in `out`: the worker keeps reading the parent's request
/// arena, which the parent must not write again.
pub(crate) fn retain_request_arena(out: &mut [u8]) {
    out[12] |= ARENA_RETAINED;
}

/// Turns the reply frame finished in `out` into one whose payload is in a new sealed memfd,
/// if the payload is longer than [`out_of_line::THRESHOLD`]: returns the memfd, to send with
/// the frame. `None` leaves the frame as it was (also when the memfd could not be made: the
/// payload then goes through the socket).
pub(crate) fn share_reply_payload(out: &mut Vec<u8>) -> Option<OwnedFd> {
    let size = out.len() - REPLY_PAYLOAD;
    if size <= out_of_line::THRESHOLD {
        return None;
    }
    let fd = crate::sys::sealed_memfd(&out[REPLY_PAYLOAD..]).ok()?;
    move_reply_payload(out, OutOfLine::Sealed);
    Some(fd)
}

/// Like [`share_reply_payload`], but for a returned value that the parent is to decode as a
/// stream: the memfd is not sealed, so that the parent can give its pages back as it reads.
pub(crate) fn stream_reply_payload(out: &mut Vec<u8>) -> Option<OwnedFd> {
    let fd = crate::sys::payload_memfd(&out[REPLY_PAYLOAD..]).ok()?;
    move_reply_payload(out, OutOfLine::Stream);
    Some(fd)
}

/// The payload of the reply frame finished in `out`, which goes elsewhere (see
/// [`move_reply_payload`]).
pub(crate) fn reply_payload(out: &[u8]) -> &[u8] {
    &out[REPLY_PAYLOAD..]
}

/// Turns the reply frame finished in `out` into one whose payload, now written elsewhere
/// (`place`), is replaced by its size.
pub(crate) fn move_reply_payload(out: &mut Vec<u8>, place: OutOfLine) {
    let size = out.len() - REPLY_PAYLOAD;
    out.truncate(REPLY_PAYLOAD);
    out.extend_from_slice(&(size as u64).to_le_bytes());
    let len = u32::try_from(out.len() - 4).expect("a short frame");
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[12] |= match place {
        OutOfLine::Sealed => SHARED_REPLY,
        OutOfLine::Arena { new: false } => ARENA_REPLY,
        OutOfLine::Arena { new: true } => ARENA_REPLY | NEW_ARENA_REPLY,
        OutOfLine::Stream => SHARED_REPLY | ARENA_REPLY,
    };
}

/// A reply as the parent reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub(crate) id: u64,
    pub(crate) status: CallStatus,
    pub(crate) payload: Payload,
}

/// The payload of a reply: read from the socket, or from shared memory (mapped from the sealed
/// memfd that came with it, or copied out of the worker's arena).
#[derive(Debug)]
pub(crate) enum Payload {
    Inline(Vec<u8>),
    Shared(Arc<Backing>),
    /// A returned value to decode as a stream (never another status).
    Stream(StreamPayload),
}

impl Payload {
    /// The bytes; a streamed payload is read whole for it (decode it as a stream instead).
    pub(crate) fn as_slice(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Payload::Inline(bytes) => bytes.into(),
            Payload::Shared(mapping) => mapping.as_slice().into(),
            Payload::Stream(stream) => stream.read_all().unwrap_or_default().into(),
        }
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Payload {}

impl<T: AsRef<[u8]> + ?Sized> PartialEq<T> for Payload {
    fn eq(&self, other: &T) -> bool {
        *self.as_slice() == *other.as_ref()
    }
}

/// `Err(Malformed(format!(...)))`.
macro_rules! malformed {
    ($($why:tt)*) => {
        Err(Malformed(format!($($why)*)))
    };
}

/// Cuts reply frames out of the bytes read from a non-blocking socket.
#[derive(Debug, Default)]
pub(crate) struct ReplyReader {
    buffer: Vec<u8>,
    /// Descriptors that came with the bytes, for the shared replies among them, oldest first.
    fds: VecDeque<OwnedFd>,
    /// Set once a shared reply turned out malformed: its descriptor is gone, so the verdict
    /// is kept rather than found again.
    broken: Option<Malformed>,
    /// The worker's reply arena, once a reply brought it.
    arena: InArena,
    /// How many replies were read out of the arena.
    arena_replies_read: u64,
    /// Set when a reply said that the worker keeps reading the parent's request arena.
    request_arena_retained: bool,
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

    /// How many replies were read out of the worker's arena: the worker may write its next one
    /// once it learns this count (see [`OutArena`](super::out_of_line::OutArena)).
    pub(crate) fn arena_replies_read(&self) -> u64 {
        self.arena_replies_read
    }

    /// True (once) when a reply read since the last call said that the worker keeps reading the
    /// parent's request arena: the parent must make another one.
    pub(crate) fn take_request_arena_retained(&mut self) -> bool {
        std::mem::take(&mut self.request_arena_retained)
    }

    /// Marks the stream malformed for good, for what the bytes alone do not show.
    pub(crate) fn refuse(&mut self, why: &str) {
        self.broken.get_or_insert_with(|| Malformed(why.to_owned()));
    }

    /// True when it holds no byte, descriptor or verdict that a reply has not taken.
    pub(crate) fn is_empty(&self) -> bool {
        self.buffer.is_empty() && self.fds.is_empty() && self.broken.is_none()
    }

    /// Keeps a descriptor that came with the bytes read, for the shared reply that claims it.
    pub(crate) fn push_fd(&mut self, fd: OwnedFd) {
        self.fds.push_back(fd);
    }

    /// Whether the frame that comes next claims to be a reply whose payload is in shared
    /// memory, once its status byte is in (only a hint to choose who reads it:
    /// [`next_reply`](Self::next_reply) checks the frame).
    pub(crate) fn next_frame_is_shared(&self) -> bool {
        self.buffer
            .get(12)
            .is_some_and(|status| status & OUT_OF_LINE_REPLY != 0)
    }

    /// The length of the frame that comes next, once its length prefix was read; for a reply
    /// whose payload is in shared memory, once its size is in, the length it would have had.
    pub(crate) fn next_frame_len(&self) -> Option<usize> {
        let prefix = self.buffer.get(..4)?;
        let len = 4 + u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if self.next_frame_is_shared() {
            let size = self.buffer.get(REPLY_PAYLOAD..REPLY_PAYLOAD + 8)?;
            let size = u64::from_le_bytes(size.try_into().expect("8 bytes"));
            return Some(REPLY_PAYLOAD.saturating_add(usize::try_from(size).unwrap_or(usize::MAX)));
        }
        Some(len)
    }

    /// The next complete reply, if the buffer holds one. `expected` is the id of the request
    /// the worker runs (`None` when it was sent none).
    ///
    /// The header is checked as soon as its bytes are in, before the rest of the frame: bytes
    /// while no request is in flight, a length too short for a header, another id or an
    /// unknown status make the stream malformed at once. So `Ok(None)` means that the bytes
    /// read so far are the start of a valid reply to `expected`, and the reader never waits
    /// for bytes that a valid frame would not have.
    pub(crate) fn next_reply(&mut self, expected: Option<u64>) -> Result<Option<Reply>, Malformed> {
        if let Some(broken) = &self.broken {
            return Err(broken.clone());
        }
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let Some(expected) = expected else {
            return malformed!("{} bytes while it was running no task", self.buffer.len());
        };
        let Some(prefix) = self.buffer.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len < REPLY_HEADER {
            return malformed!("a frame of {len} bytes, shorter than a reply header");
        }
        // The id, byte by byte as they come: a wrong first byte is enough.
        let id_in = &self.buffer[4..self.buffer.len().min(12)];
        if id_in != &expected.to_le_bytes()[..id_in.len()] {
            let which = match <[u8; 8]>::try_from(id_in) {
                Ok(id) => format!("request {}", u64::from_le_bytes(id)),
                Err(_) => format!("a request whose id starts {id_in:02x?}"),
            };
            return malformed!("a reply to {which} while it ran request {expected}");
        }
        if self.fds.len() > MAX_WAITING_FDS {
            return malformed!("{} descriptors that no reply claimed", self.fds.len());
        }
        let Some(&status) = self.buffer.get(12) else {
            return Ok(None);
        };
        let place = match status & OUT_OF_LINE_REPLY {
            0 => None,
            SHARED_REPLY => Some(OutOfLine::Sealed),
            bits if bits == SHARED_REPLY | ARENA_REPLY => Some(OutOfLine::Stream),
            ARENA_REPLY => Some(OutOfLine::Arena { new: false }),
            bits if bits == ARENA_REPLY | NEW_ARENA_REPLY => Some(OutOfLine::Arena { new: true }),
            _ => return malformed!("an unknown reply status {status}"),
        };
        let shared = place.is_some();
        let retained = status & ARENA_RETAINED != 0;
        let status = CallStatus::from_byte(status & !(OUT_OF_LINE_REPLY | ARENA_RETAINED))
            .ok_or_else(|| Malformed(format!("an unknown reply status {status}")))?;
        if place == Some(OutOfLine::Stream) && status != CallStatus::Returned {
            return malformed!("a streamed reply with status {status:?}");
        }
        if shared && len != REPLY_HEADER + 8 {
            return malformed!("a shared-memory reply frame of {len} bytes");
        }
        if self.buffer.len() < 4 + len {
            return Ok(None);
        }
        let payload = match place {
            None => Payload::Inline(self.buffer[REPLY_PAYLOAD..4 + len].to_vec()),
            // Its descriptor is gone once taken: the verdict is kept.
            Some(place) => match self.read_shared(place) {
                Ok(payload) => payload,
                Err(malformed) => return Err(self.broken.insert(malformed).clone()),
            },
        };
        self.buffer.drain(..4 + len);
        self.request_arena_retained |= retained;
        Ok(Some(Reply {
            id: expected,
            status,
            payload,
        }))
    }
}

impl ReplyReader {
    /// The payload in shared memory, `place`, of the complete reply frame the buffer starts
    /// with, and the descriptor that came with it, if any.
    fn read_shared(&mut self, place: OutOfLine) -> Result<Payload, Malformed> {
        let fd = if place.attaches_fd() {
            let missing = || Malformed("a shared-memory reply without its descriptor".to_owned());
            Some(self.fds.pop_front().ok_or_else(missing)?)
        } else {
            None
        };
        let size = u64::from_le_bytes(self.buffer[REPLY_PAYLOAD..][..8].try_into().expect("8"));
        self.read_payload(place, fd, size)
            .map_err(|err| Malformed(format!("a shared-memory reply that is unusable: {err}")))
    }

    /// The `size` bytes of a payload in shared memory, `place`, with the descriptor `fd`.
    fn read_payload(
        &mut self,
        place: OutOfLine,
        fd: Option<OwnedFd>,
        size: u64,
    ) -> io::Result<Payload> {
        let size_in_memory = usize::try_from(size).map_err(|_| invalid_data("too large"));
        let backing = match (place, fd) {
            (OutOfLine::Stream, Some(fd)) => {
                let max = MAX_RESULT as u64;
                return Ok(Payload::Stream(StreamPayload::receive(fd, size, max)?));
            }
            // The limit is checked before anything else: the parent maps this memory.
            (OutOfLine::Sealed, Some(_)) if size > MAX_RESULT as u64 => {
                return Err(invalid_data(format!(
                    "a sealed result of {size} bytes, above the {MAX_RESULT}-byte limit"
                )));
            }
            (OutOfLine::Sealed, Some(fd)) => {
                Backing::Sealed(SealedMapping::new(fd, size_in_memory?)?)
            }
            (OutOfLine::Arena { .. }, fd) => {
                if let Some(fd) = fd {
                    self.arena.replace(fd)?;
                }
                let bytes = self.arena.read(size_in_memory?)?;
                self.arena_replies_read += 1;
                Backing::Copied(bytes)
            }
            (OutOfLine::Sealed | OutOfLine::Stream, None) => {
                return Err(invalid_data("no descriptor"));
            }
        };
        Ok(Payload::Shared(Arc::new(backing)))
    }
}

/// Why the bytes a worker sent are no valid reply: a worker that sends them cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
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

// The socket I/O of frames: every frame is written whole, and its descriptor, if any, goes
// with its bytes.

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
        write_request(&mut frame, 7, call, loud, None, b"arg");
        write_request(&mut frame, 8, call, CallOptions::default(), None, b"");
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
    fn a_request_without_context_is_the_plain_frame() {
        // Byte for byte what a build without the `tracing` feature sends.
        let call = crate::sys::erase(some_function);
        let mut frame = Vec::new();
        write_request(&mut frame, 7, call, CallOptions::default(), None, b"arg");
        let mut expected = (REQUEST_HEADER as u32 + 3).to_le_bytes().to_vec();
        expected.extend_from_slice(&7u64.to_le_bytes());
        expected.push(0);
        for word in call.to_wire() {
            expected.extend_from_slice(&word.to_le_bytes());
        }
        expected.extend_from_slice(b"arg");
        assert_eq!(frame, expected);
    }

    #[test]
    fn a_context_crosses_between_the_header_and_the_argument() {
        let call = crate::sys::erase(some_function);
        let context = TaskContext {
            task_id: 41,
            span_name: "submitter",
        };
        let mut frame = Vec::new();
        let loud = CallOptions { print_panics: true };
        write_request(&mut frame, 7, call, loud, Some(context), b"arg");
        let shared_len = write_shared_request(
            &mut frame,
            8,
            call,
            loud,
            Some(context),
            1 << 20,
            OutOfLine::Sealed,
        );
        assert_eq!(shared_len, 4 + REQUEST_HEADER + 8 + 1 + 9 + 8);
        for new in [true, false] {
            let place = OutOfLine::Arena { new };
            write_shared_request(&mut frame, 9, call, loud, None, 300_000, place);
        }
        let mut input = &frame[..];
        let mut buffer = Vec::new();
        let first = read_request(&mut input, &mut buffer).unwrap().unwrap();
        assert_eq!(
            (first.id, first.context, first.arg),
            (7, Some(context), &b"arg"[..])
        );
        assert_eq!(first.options, loud);
        assert!(!first.shared);
        let second = read_request(&mut input, &mut buffer).unwrap().unwrap();
        assert_eq!((second.context, second.shared), (Some(context), true));
        assert_eq!(second.shared_size().unwrap(), 1 << 20);
        assert!(!second.in_arena && !second.new_arena);
        for new in [true, false] {
            let in_arena = read_request(&mut input, &mut buffer).unwrap().unwrap();
            assert_eq!((in_arena.context, in_arena.shared), (None, false));
            assert_eq!((in_arena.in_arena, in_arena.new_arena), (true, new));
            assert_eq!(in_arena.shared_size().unwrap(), 300_000);
        }
        assert!(read_request(&mut input, &mut buffer).unwrap().is_none());
    }

    #[test]
    fn a_long_span_name_is_cut_at_a_character_boundary() {
        let call = crate::sys::erase(some_function);
        let name = "é".repeat(200);
        let context = TaskContext {
            task_id: 1,
            span_name: &name,
        };
        let mut frame = Vec::new();
        write_request(
            &mut frame,
            0,
            call,
            CallOptions::default(),
            Some(context),
            b"",
        );
        let mut buffer = Vec::new();
        let request = read_request(&mut &frame[..], &mut buffer).unwrap().unwrap();
        let sent = request.context.unwrap().span_name;
        assert_eq!(sent.len(), MAX_SPAN_NAME - 1, "127 two-byte characters");
        assert!(name.starts_with(sent));
    }

    #[test]
    fn a_malformed_context_is_an_error() {
        let call = crate::sys::erase(some_function);
        let context = TaskContext {
            task_id: 1,
            span_name: "span",
        };
        let mut frame = Vec::new();
        write_request(
            &mut frame,
            0,
            call,
            CallOptions::default(),
            Some(context),
            b"",
        );
        // A name that is not UTF-8.
        let mut bad_name = frame.clone();
        let at = bad_name.len() - 4;
        bad_name[at] = 0xff;
        let mut buffer = Vec::new();
        let err = read_request(&mut &bad_name[..], &mut buffer).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A name longer than the frame.
        let mut long_name = frame.clone();
        long_name[4 + REQUEST_HEADER + 8] = 200;
        let err = read_request(&mut &long_name[..], &mut buffer).unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
        // The flag without room for a task id.
        let mut plain = Vec::new();
        write_request(&mut plain, 0, call, CallOptions::default(), None, b"abc");
        plain[12] |= CONTEXT;
        assert!(read_request(&mut &plain[..], &mut buffer).is_err());
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
            let expected = [1, 2].get(replies.len()).copied();
            while let Some(reply) = reader.next_reply(expected).unwrap() {
                replies.push(reply);
            }
        }
        assert_eq!(replies.len(), 2);
        assert_eq!(
            replies[0],
            Reply {
                id: 1,
                status: CallStatus::Returned,
                payload: Payload::Inline(b"ok".to_vec())
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
        assert_eq!(reader.next_reply(Some(7)).unwrap(), None);
        reader.fill(&mut input, usize::MAX).unwrap();
        assert_eq!(
            reader.next_reply(Some(7)).unwrap().unwrap().payload,
            [5; 40_000]
        );
    }

    #[test]
    fn corrupt_reply_is_an_error() {
        let mut reader = ReplyReader::default();
        reader.fill(&mut &[1, 0, 0, 0, 9][..], usize::MAX).unwrap();
        assert!(reader.next_reply(Some(0)).is_err());
    }

    /// The header of a reply to request `id` with `status`, announcing `len` bytes after the
    /// length.
    fn header(len: u32, id: u64, status: u8) -> Vec<u8> {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.push(status);
        bytes
    }

    fn read(bytes: &[u8], expected: Option<u64>) -> Result<Option<Reply>, Malformed> {
        let mut reader = ReplyReader::default();
        reader.fill(&mut &bytes[..], usize::MAX).unwrap();
        reader.next_reply(expected)
    }

    #[test]
    fn a_huge_length_with_a_wrong_id_is_malformed_at_once() {
        // What 64 random bytes look like: a length near 900 MB, and an id nobody sent.
        let mut bytes = header(900_000_000, 0x1234_5678_9abc_def0, 0);
        bytes.extend_from_slice(&[0xa5; 51]);
        let err = read(&bytes, Some(3)).unwrap_err();
        assert!(err.0.contains("request 3"), "{err}");
    }

    #[test]
    fn the_header_is_checked_as_its_bytes_come_in() {
        // Bytes while no request is in flight.
        assert!(read(&[0], None).is_err());
        // A length too short for a header, with only the length in.
        assert!(read(&header(3, 0, 0)[..4], Some(0)).is_err());
        // A wrong id, before the status byte is in.
        assert!(read(&header(100, 9, 0)[..12], Some(0)).is_err());
        // An unknown status, before the payload is in.
        let err = read(&header(100, 0, 200), Some(0)).unwrap_err();
        assert!(err.0.contains("status 200"), "{err}");
        // A valid header announcing a long payload: wait for it.
        assert_eq!(read(&header(100, 0, 1), Some(0)).unwrap(), None);
        assert_eq!(read(&header(100, 0, 1)[..7], Some(0)).unwrap(), None);
    }

    /// Whether `bytes` could be the start of a valid reply to `expected` (a reference for the
    /// property tests, written apart from the reader).
    fn starts_a_valid_reply(bytes: &[u8], expected: Option<u64>) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let Some(expected) = expected else {
            return false;
        };
        let mut frame = u32::MAX.to_le_bytes().to_vec();
        frame.extend_from_slice(&expected.to_le_bytes());
        let len_ok = bytes.len() < 4
            || u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize >= REPLY_HEADER;
        let id_ok = bytes
            .iter()
            .zip(&frame)
            .skip(4)
            .all(|(byte, wanted)| byte == wanted);
        let status_ok = bytes
            .get(12)
            .is_none_or(|&status| CallStatus::from_byte(status).is_some());
        len_ok && id_ok && status_ok
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Feeds `bytes` to a reader in chunks of the given sizes, expecting replies to
        /// `first_id`, `first_id + 1`, ...; returns the replies cut, and how the reader ended.
        fn feed(
            bytes: &[u8],
            chunks: &[usize],
            first_id: Option<u64>,
        ) -> (Vec<Reply>, Result<(), Malformed>, ReplyReader) {
            let mut reader = ReplyReader::default();
            let mut replies = Vec::new();
            let mut rest = bytes;
            let mut chunks = chunks.iter().cycle();
            let expected = |replies: &Vec<Reply>| first_id.map(|id| id + replies.len() as u64);
            while !rest.is_empty() {
                let size = (*chunks.next().unwrap()).clamp(1, rest.len());
                let (chunk, after) = rest.split_at(size);
                rest = after;
                reader.fill(&mut &chunk[..], usize::MAX).unwrap();
                loop {
                    match reader.next_reply(expected(&replies)) {
                        Ok(Some(reply)) => replies.push(reply),
                        Ok(None) => break,
                        Err(malformed) => return (replies, Err(malformed), reader),
                    }
                }
                // Never more memory than the bytes fed call for, whatever a length says.
                let fed = bytes.len() - rest.len();
                assert!(reader.buffer.capacity() <= 2 * fed + 64 * 1024);
            }
            (replies, Ok(()), reader)
        }

        proptest! {
            #[test]
            fn garbage_is_cut_or_refused_but_never_waited_on(
                bytes in proptest::collection::vec(any::<u8>(), 0..512),
                chunks in proptest::collection::vec(1usize..64, 1..8),
                first_id in proptest::option::of(0u64..4),
            ) {
                let (replies, ended, reader) = feed(&bytes, &chunks, first_id);
                if ended.is_ok() {
                    // What is left waiting must be the start of a valid reply.
                    let expected = first_id.map(|id| id + replies.len() as u64);
                    prop_assert!(starts_a_valid_reply(&reader.buffer, expected));
                }
            }

            #[test]
            fn a_random_frame_after_its_header_is_refused(
                tail in proptest::collection::vec(any::<u8>(), 13..128),
                expected in any::<u64>(),
            ) {
                // 64 random bytes: refused once the header is in, unless it is a valid one.
                let (_, ended, _) = feed(&tail, &[tail.len()], Some(expected));
                let valid = starts_a_valid_reply(&tail[..13], Some(expected));
                prop_assert_eq!(ended.is_err(), !valid);
            }

            #[test]
            fn valid_replies_come_out_whole_from_any_split(
                replies in proptest::collection::vec(
                    (0u8..4, proptest::collection::vec(any::<u8>(), 0..300)),
                    0..6,
                ),
                chunks in proptest::collection::vec(1usize..100, 1..8),
            ) {
                let mut stream = Vec::new();
                for (id, (status, payload)) in replies.iter().enumerate() {
                    let mut frame = Vec::new();
                    begin_reply(&mut frame, id as u64);
                    frame.extend_from_slice(payload);
                    finish_reply(&mut frame, CallStatus::from_byte(*status).unwrap());
                    stream.extend_from_slice(&frame);
                }
                let (cut, ended, reader) = feed(&stream, &chunks, Some(0));
                prop_assert!(ended.is_ok());
                prop_assert!(reader.buffer.is_empty());
                prop_assert_eq!(cut.len(), replies.len());
                for (reply, (status, payload)) in cut.iter().zip(&replies) {
                    prop_assert_eq!(reply.status as u8, *status);
                    prop_assert_eq!(&reply.payload, payload);
                }
            }

            #[test]
            fn the_worker_reads_any_request_bytes_without_panicking(
                bytes in proptest::collection::vec(any::<u8>(), 0..256),
                huge in any::<bool>(),
            ) {
                let mut bytes = bytes;
                if huge && bytes.len() >= 4 {
                    // A length prefix of about 4 GB: nothing is allocated for it up front.
                    bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
                }
                let mut input = &bytes[..];
                let mut buffer = Vec::new();
                while let Ok(Some(_)) = read_request(&mut input, &mut buffer) {}
                prop_assert!(buffer.capacity() <= 2 * bytes.len() + 64 * 1024);
            }

            #[test]
            fn any_body_of_a_request_with_context_is_read_or_refused(
                flags in any::<u8>(),
                body in proptest::collection::vec(any::<u8>(), 0..300),
            ) {
                // A valid header announcing a context, then anything.
                let mut frame = ((REQUEST_HEADER + body.len()) as u32).to_le_bytes().to_vec();
                frame.extend_from_slice(&[0; 8]);
                frame.push(flags | CONTEXT);
                frame.extend_from_slice(&[0; 16]);
                frame.extend_from_slice(&body);
                let mut buffer = Vec::new();
                if let Ok(Some(request)) = read_request(&mut &frame[..], &mut buffer) {
                    let context = request.context.unwrap();
                    prop_assert!(context.span_name.len() <= MAX_SPAN_NAME);
                    prop_assert_eq!(
                        8 + 1 + context.span_name.len() + request.arg.len(),
                        body.len()
                    );
                }
            }

            #[test]
            fn a_context_and_argument_round_trip(
                task_id in any::<u64>(),
                span_name in ".{0,300}",
                arg in proptest::collection::vec(any::<u8>(), 0..64),
                print_panics in any::<bool>(),
            ) {
                let call = crate::sys::erase(some_function);
                let context = TaskContext { task_id, span_name: &span_name };
                let options = CallOptions { print_panics };
                let mut frame = Vec::new();
                write_request(&mut frame, 3, call, options, Some(context), &arg);
                let mut buffer = Vec::new();
                let request = read_request(&mut &frame[..], &mut buffer).unwrap().unwrap();
                let sent = request.context.unwrap();
                prop_assert_eq!(sent.task_id, task_id);
                prop_assert!(sent.span_name.len() <= MAX_SPAN_NAME);
                prop_assert!(span_name.starts_with(sent.span_name));
                if span_name.len() <= MAX_SPAN_NAME {
                    prop_assert_eq!(sent.span_name, span_name.as_str());
                }
                prop_assert_eq!((request.id, request.options, request.arg), (3, options, &arg[..]));
            }
        }
    }

    /// A memfd of `size` bytes, never written, sealed as a worker seals a reply.
    fn sealed_holes(size: u64) -> OwnedFd {
        use nix::fcntl::{FcntlArg, SealFlag, fcntl};
        let fd =
            nix::sys::memfd::memfd_create(c"holes", nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING)
                .unwrap();
        nix::unistd::ftruncate(&fd, size as libc::off_t).unwrap();
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).unwrap();
        fd
    }

    #[test]
    fn a_sealed_reply_beyond_the_limit_is_refused_before_it_is_mapped() {
        for (size, why) in [
            (MAX_RESULT as u64 + 1, "above the 4294967295-byte limit"),
            (1 << 40, "above the"),
            (1 << 20, "only 0 were ever written"),
        ] {
            let mut bytes = header(REPLY_HEADER as u32 + 8, 0, SHARED_REPLY);
            bytes.extend_from_slice(&size.to_le_bytes());
            let mut reader = ReplyReader::default();
            reader.fill(&mut &bytes[..], usize::MAX).unwrap();
            reader.push_fd(sealed_holes(size));
            let err = reader.next_reply(Some(0)).unwrap_err();
            assert!(err.0.contains(why), "{size} bytes: {err}");
        }
    }

    #[test]
    fn a_worker_refuses_a_result_larger_than_the_parent_takes() {
        let mut reply = Vec::new();
        begin_reply(&mut reply, 9);
        reply.extend_from_slice(&[7; 100]);
        finish_reply(&mut reply, CallStatus::Returned);
        let fits = reply.clone();
        refuse_reply_above(&mut reply, 9, 100);
        assert_eq!(reply, fits, "at the limit: unchanged");
        refuse_reply_above(&mut reply, 9, 99);
        let read = read(&reply, Some(9)).unwrap().unwrap();
        assert_eq!(read.status, CallStatus::BadResult);
        assert_eq!(
            read.payload,
            b"the result takes 100 bytes, more than the 99 a result may".to_vec()
        );
    }

    #[test]
    fn control_messages_round_trip() {
        let bytes = postcard::to_allocvec(&ServerReply::Killed { pid: 12, signal: 9 }).unwrap();
        let back: ServerReply = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, ServerReply::Killed { pid: 12, signal: 9 });
    }
}

// What a process task carries from where it was submitted into its worker's log records, with
// the `tracing` feature: [`Carried`] is taken at submission and sent in the request, and
// [`in_span`] runs the call inside the worker's span around the call.
//
// A span cannot cross into another process (its id means something only to the subscriber
// that made it, and its field values were handed to that subscriber, not kept where they could
// be read back), so what crosses is what names it: the submitting span's name, and a task id,
// unique in the application. The application logs the id at submission, as a `DEBUG` event of
// target `smol_offload::task` inside the submitting span (with its fields, as the subscriber
// records them); the worker runs the call inside an `INFO` span `smol_offload_task` of the same
// target with fields `task_id` and `submitted_in`, so that every record of the task names both
// and joins the application's record on `task_id`. Without the feature, [`Carried`] is empty.

/// What a job carries into its worker: its [`TaskContext`] with the `tracing` feature, nothing
/// without.
#[derive(Clone, Copy, Debug, Default)]
pub struct Carried(#[cfg(feature = "tracing")] Option<TaskContext<'static>>);

impl Carried {
    /// The context of a task submitted now, from the current span: a new task id, and the
    /// span's name. Logs the id in the current span (a `DEBUG` event).
    #[inline(always)]
    pub(crate) fn capture() -> Carried {
        Carried::capture_for("process")
    }
}

#[cfg(feature = "tracing")]
impl Carried {
    /// `capture` for a task of the pool kind `what`, which the event's
    /// message names: "`what` task submitted".
    pub fn capture_for(what: &'static str) -> Carried {
        static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);
        let task_id = NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed);
        let span_name = tracing::Span::current()
            .metadata()
            .map_or("", |metadata| metadata.name());
        tracing::debug!(
            target: "smol_offload::task",
            task_id,
            "{what} task submitted"
        );
        Carried(Some(TaskContext { task_id, span_name }))
    }

    /// The context that a task submitted in another process (a remote pool's client) sent
    /// with its job, for the worker process that runs it.
    pub fn received(task_id: u64, span_name: &str) -> Carried {
        Carried(Some(TaskContext {
            task_id,
            span_name: interned(span_name),
        }))
    }

    /// The context to send with the request, if any.
    pub fn get(self) -> Option<TaskContext<'static>> {
        self.0
    }
}

#[cfg(not(feature = "tracing"))]
impl Carried {
    /// Nothing: without the `tracing` feature no context crosses.
    #[inline(always)]
    pub fn capture_for(_: &'static str) -> Carried {
        Carried()
    }

    /// Nothing: without the `tracing` feature no context crosses.
    #[inline(always)]
    pub fn received(_: u64, _: &str) -> Carried {
        Carried()
    }

    /// None: without the `tracing` feature no context crosses.
    #[inline(always)]
    pub fn get(self) -> Option<TaskContext<'static>> {
        None
    }
}

/// `name`, cut to what a request carries, as a `&'static str`: span names are the static
/// names of the client program's span call sites, a small set, so each distinct one is kept
/// once for the life of the process; past [`MAX_INTERNED`] of them (a client that is not the
/// same program, or a hostile one), further names are dropped (empty) rather than kept.
#[cfg(feature = "tracing")]
fn interned(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, PoisonError};

    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let name = bounded(name);
    if name.is_empty() {
        return "";
    }
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    let names = names.get_or_insert_with(HashSet::new);
    if let Some(&known) = names.get(name) {
        return known;
    }
    if names.len() >= MAX_INTERNED {
        return "";
    }
    let kept: &'static str = Box::leak(name.into());
    names.insert(kept);
    kept
}

/// The most distinct span names received from other processes that a process keeps.
#[cfg(feature = "tracing")]
const MAX_INTERNED: usize = 1024;

/// In a worker, runs `call` inside the span that a task's records carry, for the request's
/// `context` (directly when there is none).
#[cfg(feature = "tracing")]
pub(crate) fn in_span<T>(context: Option<TaskContext<'_>>, call: impl FnOnce() -> T) -> T {
    let Some(context) = context else {
        return call();
    };
    let span = tracing::info_span!(
        target: "smol_offload::task",
        "smol_offload_task",
        task_id = context.task_id,
        submitted_in = tracing::field::Empty,
    );
    if !context.span_name.is_empty() {
        span.record("submitted_in", context.span_name);
    }
    span.in_scope(call)
}

/// Runs `call`: without the `tracing` feature, no request has a context.
#[cfg(not(feature = "tracing"))]
#[inline(always)]
pub(crate) fn in_span<T>(_: Option<TaskContext<'_>>, call: impl FnOnce() -> T) -> T {
    call()
}

#[cfg(all(test, feature = "tracing"))]
mod context_tests {
    use super::*;

    #[test]
    fn received_span_names_are_kept_once_and_cut_to_what_a_request_carries() {
        let first = interned("received_span");
        let again = interned(&String::from("received_span"));
        assert_eq!(first, "received_span");
        assert!(std::ptr::eq(first, again), "kept once");
        let long = "é".repeat(MAX_SPAN_NAME);
        let cut = interned(&long);
        assert!(cut.len() <= MAX_SPAN_NAME && long.starts_with(cut), "{cut}");
        assert_eq!(interned(""), "");
        let context = Carried::received(9, "received_span").get().unwrap();
        assert_eq!((context.task_id, context.span_name), (9, "received_span"));
    }
}
