//! [`ByteBuf`]: a byte buffer that crosses to and from worker processes as one block.

use std::cell::RefCell;
use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};

use crate::sys::{ArenaView, SealedMapping};

/// The bytes of a large payload, which the `ByteBuf`s decoded from it may read in place.
#[derive(Debug)]
pub(crate) enum Backing {
    /// A sealed memfd, mapped read-only: bytes nobody can change.
    Sealed(SealedMapping),
    /// A copy this process owns, read out of a per-worker arena (the parent reads the
    /// worker's arena so: a hostile worker may write it at any time).
    Copied(Vec<u8>),
    /// The first bytes of the parent's request arena, in a worker, read in place (see
    /// [`ArenaView`] for why nobody writes them meanwhile).
    Arena(Arc<ArenaView>, usize),
}

impl Backing {
    /// The first `len` bytes of `view`, if it holds that many.
    pub(crate) fn in_arena(view: &Arc<ArenaView>, len: usize) -> Option<Backing> {
        view.get(len)?;
        Some(Backing::Arena(view.clone(), len))
    }

    /// The bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Backing::Sealed(mapping) => mapping.as_slice(),
            Backing::Copied(bytes) => bytes,
            Backing::Arena(view, len) => view.get(*len).expect("checked by `in_arena`"),
        }
    }
}

/// A byte buffer for the arguments and results of process tasks: serde encodes a `Vec<u8>`
/// one element at a time, a `ByteBuf` as one block of bytes, copied with `memcpy`.
///
/// Large arguments and results of a [`ProcessPool`](crate::ProcessPool) do not go through the
/// worker's socket: up to 4 MiB they are written to a shared-memory file (a memfd) that each
/// worker keeps for the purpose (the worker reads an argument there in place, the parent copies
/// a result out once); above that, to a fresh sealed memfd whose descriptor is passed with the
/// request or the reply. A `ByteBuf` decoded from such a payload is not copied again: it reads
/// the payload's bytes in place (the sealed memory itself, mapped, for the largest ones), and
/// keeps them until it is dropped. (A large result that is mostly *not* blocks of bytes is
/// decoded as a stream instead, which gives its memory back as it goes, and a `ByteBuf` in it
/// is a copy.) Otherwise it is an ordinary `Vec<u8>`.
///
/// With other serde formats it behaves as `serde_bytes::ByteBuf` does: bytes where the format
/// has them, a sequence of numbers where it does not.
///
/// # Examples
///
/// ```no_run
/// use smol_offload::{ByteBuf, Executor, ProcessPool};
///
/// fn checksum(data: ByteBuf) -> u64 {
///     data.iter().map(|&b| u64::from(b)).sum()
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     smol_offload::init();
///     let pool = ProcessPool::new(2)?;
///     let data = ByteBuf::from(vec![1u8; 16 * 1024 * 1024]);
///     let sum = smol::block_on(pool.run(checksum, data))?;
///     assert_eq!(sum, 16 * 1024 * 1024);
///     Ok(())
/// }
/// ```
#[derive(Clone, Default)]
pub struct ByteBuf {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    Owned(Vec<u8>),
    /// Bytes read in place from a large payload that this buffer keeps alive (mapped, for a
    /// sealed memfd): where they lie in it.
    Mapped(Arc<Backing>, Range<usize>),
}

impl Default for Repr {
    fn default() -> Repr {
        Repr::Owned(Vec::new())
    }
}

/// A decoded buffer at least this long reads a shared payload in place; a shorter one is
/// copied, so that a few bytes do not keep a large payload mapped.
const IN_PLACE_MIN: usize = 16 * 1024;

thread_local! {
    /// The shared payload being decoded on this thread, if any.
    static BACKING: RefCell<Option<Arc<Backing>>> = const { RefCell::new(None) };
}

/// Runs `f`, a decoding from `mapping`'s bytes, so that the `ByteBuf`s it decodes can read
/// them in place. A payload that is not in shared memory needs none: a `ByteBuf` checks that
/// its bytes lie in the mapping before it reads them in place.
pub(crate) fn with_backing<T>(mapping: &Arc<Backing>, f: impl FnOnce() -> T) -> T {
    let outer = BACKING.replace(Some(mapping.clone()));
    let result = f();
    BACKING.set(outer);
    result
}

impl ByteBuf {
    /// An empty buffer.
    pub fn new() -> ByteBuf {
        ByteBuf::default()
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.repr {
            Repr::Owned(bytes) => bytes,
            Repr::Mapped(mapping, range) => &mapping.as_slice()[range.clone()],
        }
    }

    /// The bytes as a `Vec<u8>`: free for a buffer that owns its bytes, a copy for one that
    /// reads a shared payload in place.
    pub fn into_vec(self) -> Vec<u8> {
        match self.repr {
            Repr::Owned(bytes) => bytes,
            Repr::Mapped(..) => self.as_slice().to_vec(),
        }
    }

    /// The bytes, to change them: a buffer that reads a shared payload in place copies it
    /// first.
    pub fn to_mut(&mut self) -> &mut Vec<u8> {
        if let Repr::Mapped(..) = self.repr {
            self.repr = Repr::Owned(self.as_slice().to_vec());
        }
        match &mut self.repr {
            Repr::Owned(bytes) => bytes,
            Repr::Mapped(..) => unreachable!("copied just above"),
        }
    }

    /// True when the buffer reads a shared payload in place (it was decoded from a large
    /// argument or result of a process task), false when it owns its bytes.
    pub fn is_shared(&self) -> bool {
        matches!(self.repr, Repr::Mapped(..))
    }

    /// The buffer for `bytes` decoded from a payload: in place if `bytes` lie in the payload
    /// being decoded on this thread and are long enough, else a copy.
    fn decoded(bytes: &[u8]) -> ByteBuf {
        if bytes.len() >= IN_PLACE_MIN {
            let in_place = BACKING.with_borrow(|backing| {
                let mapping = backing.as_ref()?;
                let whole = mapping.as_slice().as_ptr_range();
                let part = bytes.as_ptr_range();
                let start = (part.start as usize).checked_sub(whole.start as usize)?;
                (part.end <= whole.end)
                    .then(|| Repr::Mapped(mapping.clone(), start..start + bytes.len()))
            });
            if let Some(repr) = in_place {
                return ByteBuf { repr };
            }
        }
        ByteBuf::from(bytes.to_vec())
    }
}

impl From<Vec<u8>> for ByteBuf {
    fn from(bytes: Vec<u8>) -> ByteBuf {
        ByteBuf {
            repr: Repr::Owned(bytes),
        }
    }
}

impl From<&[u8]> for ByteBuf {
    fn from(bytes: &[u8]) -> ByteBuf {
        ByteBuf::from(bytes.to_vec())
    }
}

impl From<ByteBuf> for Vec<u8> {
    fn from(buffer: ByteBuf) -> Vec<u8> {
        buffer.into_vec()
    }
}

impl Deref for ByteBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for ByteBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for ByteBuf {
    fn eq(&self, other: &ByteBuf) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for ByteBuf {}

impl std::hash::Hash for ByteBuf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl fmt::Debug for ByteBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteBuf")
            .field("len", &self.len())
            .field("shared", &self.is_shared())
            .finish()
    }
}

impl Serialize for ByteBuf {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Marked, so that a worker knows a result made of these is best read in place.
        crate::codec::serialize_in_place(self.as_slice(), serializer)
    }
}

impl<'de> de::Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ByteBuf, D::Error> {
        // `deserialize_bytes`: postcard then lends the bytes where they lie.
        deserializer.deserialize_bytes(ByteBufVisitor)
    }
}

struct ByteBufVisitor;

impl<'de> Visitor<'de> for ByteBufVisitor {
    type Value = ByteBuf;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a byte buffer")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, bytes: &'de [u8]) -> Result<ByteBuf, E> {
        Ok(ByteBuf::decoded(bytes))
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<ByteBuf, E> {
        Ok(ByteBuf::decoded(bytes))
    }

    fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<ByteBuf, E> {
        Ok(ByteBuf::from(bytes))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteBuf, E> {
        Ok(ByteBuf::from(text.as_bytes()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element()? {
            bytes.push(byte);
        }
        Ok(ByteBuf::from(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_one_block_of_postcard_bytes() {
        let buffer = ByteBuf::from(vec![1, 2, 3]);
        let bytes = crate::codec::encode(&buffer).unwrap();
        assert_eq!(bytes, [3, 1, 2, 3]);
        let back: ByteBuf = crate::codec::decode(&bytes).unwrap();
        assert_eq!(back, buffer);
        assert!(!back.is_shared());
    }

    #[test]
    fn decodes_in_place_from_a_shared_payload() {
        let big = ByteBuf::from((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let small = ByteBuf::from(vec![7; 10]);
        let bytes = crate::codec::encode(&(big.clone(), small.clone())).unwrap();
        let fd = crate::sys::sealed_memfd(&bytes).unwrap();
        let mapping = Arc::new(Backing::Sealed(
            SealedMapping::new(fd, bytes.len()).unwrap(),
        ));
        let (big_back, small_back): (ByteBuf, ByteBuf) = with_backing(&mapping, || {
            crate::codec::decode(mapping.as_slice()).unwrap()
        });
        assert!(big_back.is_shared(), "read in place");
        assert!(!small_back.is_shared(), "a few bytes are copied");
        assert_eq!((&big_back, &small_back), (&big, &small));
        drop(mapping);
        // The buffer keeps the mapping alive.
        assert_eq!(big_back.as_slice()[99_999], (99_999u32 % 256) as u8);
        let mut changed = big_back.clone();
        changed.to_mut()[0] = 200;
        assert!(!changed.is_shared() && big_back.is_shared());
        assert_eq!((changed[0], big_back[0]), (200, 0));
        assert_eq!(big_back.into_vec(), big.into_vec());
    }
}
