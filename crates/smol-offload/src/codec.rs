//! The codec of process tasks: postcard's wire format, written and read by a serializer and a
//! deserializer of the crate's own, whose error keeps the text of the errors user serde code
//! raises.
//!
//! postcard's error type is a small `Copy` enum that drops the message given to
//! `serde::ser::Error::custom` and `serde::de::Error::custom`: a type that refuses to be
//! deserialized with "BadDe refuses to deserialize" would only read "Serde Deserialization Error".
//! Nothing in postcard 1.x lets a caller get the message back: user code calls `custom` on the
//! error type of the serializer it is handed, and postcard hands every nested value its own.
//! Wrapping postcard took a forwarding adapter of every serde method (the serializer and its
//! seven compounds, the deserializer, a visitor, a seed, the four access traits: about 700 lines
//! of code, where a format implements each method once in about 630), slow enough over a
//! `Vec<u8>` that values went through postcard alone first and, on failure, a second time
//! through the adapter. Formats that keep the message (MessagePack through `rmp-serde`, CBOR
//! through `ciborium`) would change the bytes on the wire and write each byte above 127 of a
//! `Vec<u8>` in two. postcard's format itself is small and specified (varints, zigzag,
//! length-prefixed blocks): writing it directly, with an error that is a [`CodecError`], keeps
//! the message at once, runs user code once, and lets the codec do two things postcard's API
//! cannot:
//!
//! - count the bytes that the crate's [`ByteBuf`](crate::ByteBuf)s wrote, so that a worker
//!   knows a large result is best read in place ([`last_block_bytes`]);
//! - hand a visitor that asks for owned bytes (`deserialize_byte_buf`, as
//!   `serde_bytes::ByteBuf` does) a vector read straight from a streamed result, without a
//!   second copy ([`decode_stream`]).
//!
//! The bytes are postcard's, byte for byte (the tests compare them with postcard's own), and
//! postcard's error kinds name what is wrong with malformed input.

use std::cell::Cell;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Take};

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize, Serializer};

/// Why a value could not be encoded or decoded.
#[derive(Debug)]
pub struct CodecError {
    /// The user's own message, or postcard's.
    pub message: String,
    /// The format's error, when the failure was the bytes' and not the user's.
    pub source: Option<postcard::Error>,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CodecError {}

/// Inside the codec the error is boxed, so that the `Result` returned for every byte of a
/// `Vec<u8>` stays two words wide and comes back in registers (postcard's own error is one
/// byte), not through memory.
impl ser::Error for Box<CodecError> {
    fn custom<T: fmt::Display>(message: T) -> Box<CodecError> {
        let message = message.to_string();
        Box::new(CodecError {
            message,
            source: None,
        })
    }
}

impl de::Error for Box<CodecError> {
    fn custom<T: fmt::Display>(message: T) -> Box<CodecError> {
        ser::Error::custom(message)
    }
}

/// The error for malformed bytes, of postcard's kind `err`.
#[cold]
fn malformed(err: postcard::Error) -> Box<CodecError> {
    let message = err.to_string();
    Box::new(CodecError {
        message,
        source: Some(err),
    })
}

type Result<T, E = Box<CodecError>> = std::result::Result<T, E>;

fn unbox<T>(result: Result<T>) -> Result<T, CodecError> {
    result.map_err(|err| *err)
}

thread_local! {
    /// Set by [`serialize_in_place`] for the `serialize_bytes` call it makes.
    static IN_PLACE_NEXT: Cell<bool> = const { Cell::new(false) };
    /// How many bytes the last [`encode_into`] on this thread wrote for the crate's `ByteBuf`s.
    static IN_PLACE_BYTES: Cell<usize> = const { Cell::new(0) };
}

/// Serializes `bytes` as one block that is best read in place where it lands (the crate's
/// `ByteBuf` does so); with any serializer, the same as `serialize_bytes`.
pub(crate) fn serialize_in_place<S: Serializer>(
    bytes: &[u8],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    IN_PLACE_NEXT.set(true);
    let result = serializer.serialize_bytes(bytes);
    IN_PLACE_NEXT.set(false);
    result
}

/// How many bytes the last encoding on this thread wrote for the crate's `ByteBuf`s: a result
/// that is mostly those is best read in place, any other best decoded as a stream (a
/// `serde_bytes::ByteBuf` is then read straight into its own vector).
pub(crate) fn last_block_bytes() -> usize {
    IN_PLACE_BYTES.get()
}

/// Appends the postcard encoding of `value` to `out`; on failure, `out` is as it was.
pub(crate) fn encode_into<T>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError>
where
    T: Serialize + ?Sized,
{
    let start = out.len();
    IN_PLACE_BYTES.set(0);
    let result = value.serialize(&mut Encoder(&mut *out));
    if result.is_err() {
        out.truncate(start);
    }
    unbox(result)
}

/// The postcard encoding of `value`.
pub fn encode<T>(value: &T) -> Result<Vec<u8>, CodecError>
where
    T: Serialize + ?Sized,
{
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Writes postcard's format to the end of a vector.
struct Encoder<'a>(&'a mut Vec<u8>);

impl Encoder<'_> {
    #[inline]
    fn varint(&mut self, mut n: u128) -> Result<()> {
        while n >= 0x80 {
            self.0.push(n as u8 | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
        Ok(())
    }

    #[inline]
    fn signed(&mut self, n: i128) -> Result<()> {
        self.varint(((n << 1) ^ (n >> 127)) as u128)
    }

    #[inline]
    fn block(&mut self, bytes: &[u8]) -> Result<()> {
        self.varint(bytes.len() as u128)?;
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    #[inline]
    fn length(&mut self, len: Option<usize>) -> Result<()> {
        let len = len.ok_or_else(|| malformed(postcard::Error::SerializeSeqLengthUnknown))?;
        self.varint(len as u128)
    }
}

/// Integers wider than a byte: varints, zigzag-encoded when signed.
macro_rules! varints {
    ($($method:ident($type:ty) => $write:ident),* $(,)?) => {$(
        #[inline]
        fn $method(self, v: $type) -> Result<()> {
            self.$write(v.into())
        }
    )*};
}

/// Where a compound starts: its length for sequences and maps, its variant index for enum
/// variants, nothing for tuples and structs, whose shape the type knows.
macro_rules! starts {
    ($($method:ident($($arg:tt: $type:ty),*) $(=> $head:ident($value:expr))?;)*) => {$(
        #[inline]
        fn $method(self, $($arg: $type),*) -> Result<Self> {
            $(self.$head($value)?;)?
            Ok(self)
        }
    )*};
}

impl Serializer for &mut Encoder<'_> {
    type Ok = ();
    type Error = Box<CodecError>;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<()> {
        self.serialize_u8(v.into())
    }
    #[inline]
    fn serialize_i8(self, v: i8) -> Result<()> {
        self.serialize_u8(v as u8)
    }
    #[inline]
    fn serialize_u8(self, v: u8) -> Result<()> {
        self.0.push(v);
        Ok(())
    }
    varints!(
        serialize_i16(i16) => signed,
        serialize_i32(i32) => signed,
        serialize_i64(i64) => signed,
        serialize_i128(i128) => signed,
        serialize_u16(u16) => varint,
        serialize_u32(u32) => varint,
        serialize_u64(u64) => varint,
        serialize_u128(u128) => varint,
    );
    #[inline]
    fn serialize_f32(self, v: f32) -> Result<()> {
        self.0.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_f64(self, v: f64) -> Result<()> {
        self.0.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_char(self, v: char) -> Result<()> {
        self.block(v.encode_utf8(&mut [0; 4]).as_bytes())
    }
    #[inline]
    fn serialize_str(self, v: &str) -> Result<()> {
        self.block(v.as_bytes())
    }
    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        if IN_PLACE_NEXT.replace(false) {
            IN_PLACE_BYTES.set(IN_PLACE_BYTES.get() + v.len());
        }
        self.block(v)
    }
    #[inline]
    fn serialize_none(self) -> Result<()> {
        self.serialize_u8(0)
    }
    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        self.serialize_u8(1)?;
        value.serialize(self)
    }
    #[inline]
    fn serialize_unit(self) -> Result<()> {
        Ok(())
    }
    #[inline]
    fn serialize_unit_struct(self, _: &'static str) -> Result<()> {
        Ok(())
    }
    #[inline]
    fn serialize_unit_variant(self, _: &'static str, index: u32, _: &'static str) -> Result<()> {
        self.varint(index.into())
    }
    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<()> {
        value.serialize(self)
    }
    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<()> {
        self.varint(index.into())?;
        value.serialize(self)
    }
    starts! {
        serialize_seq(len: Option<usize>) => length(len);
        serialize_map(len: Option<usize>) => length(len);
        serialize_tuple(_: usize);
        serialize_tuple_struct(_: &'static str, _: usize);
        serialize_struct(_: &'static str, _: usize);
        serialize_tuple_variant(_: &'static str, index: u32, _: &'static str, _: usize)
            => varint(index.into());
        serialize_struct_variant(_: &'static str, index: u32, _: &'static str, _: usize)
            => varint(index.into());
    }
    #[inline]
    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The parts of sequences, tuples, maps and structs: each written in turn, nothing around them.
macro_rules! compound {
    ($($trait:ident: $($method:ident($($key:ty),*)),+;)*) => {$(
        impl ser::$trait for &mut Encoder<'_> {
            type Ok = ();
            type Error = Box<CodecError>;
            $(
                #[inline]
                fn $method<T: Serialize + ?Sized>(&mut self, $(_: $key,)* value: &T) -> Result<()> {
                    value.serialize(&mut **self)
                }
            )+
            #[inline]
            fn end(self) -> Result<()> {
                Ok(())
            }
        }
    )*};
}

compound! {
    SerializeSeq: serialize_element();
    SerializeTuple: serialize_element();
    SerializeTupleStruct: serialize_field();
    SerializeTupleVariant: serialize_field();
    SerializeMap: serialize_key(), serialize_value();
    SerializeStruct: serialize_field(&'static str);
    SerializeStructVariant: serialize_field(&'static str);
}

/// Decodes a `T` from the start of `bytes`.
pub(crate) fn decode<'de, T>(bytes: &'de [u8]) -> Result<T, CodecError>
where
    T: de::Deserialize<'de>,
{
    unbox(T::deserialize(&mut Decoder(Slice(bytes))))
}

/// Decodes a `T` from the `len` bytes that `reader` yields, as they come. A value that asks
/// for owned bytes or an owned string (`serde_bytes::ByteBuf`, `String`) gets a vector read
/// straight from `reader`; only the runs of bytes that the value borrows (a byte slice, copied
/// then) are held whole, in a buffer of `len` bytes whose pages are allocated only where they
/// are written.
pub(crate) fn decode_stream<T>(reader: impl Read, len: usize) -> Result<T, CodecError>
where
    T: de::DeserializeOwned,
{
    let mut borrowed = vec![0u8; len];
    let input = Stream {
        reader: BufReader::with_capacity(STREAM_CHUNK, reader.take(len as u64)),
        borrowed: &mut borrowed,
    };
    unbox(T::deserialize(&mut Decoder(input)))
}

/// Where a [`Decoder`] reads: a slice, or a stream.
trait Input<'de> {
    /// The next byte.
    fn byte(&mut self) -> Result<u8>;
    /// The next `len` bytes, for as long as the input lives.
    fn take(&mut self, len: usize) -> Result<&'de [u8]>;
    /// The next `len` bytes as a vector of their own, if that costs no more than [`take`]
    /// (which is called otherwise).
    ///
    /// [`take`]: Input::take
    fn take_owned(&mut self, _len: usize) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    /// How many bytes are left, at most.
    fn left(&self) -> usize;
}

fn unexpected_end() -> Box<CodecError> {
    malformed(postcard::Error::DeserializeUnexpectedEnd)
}

struct Slice<'de>(&'de [u8]);

impl<'de> Input<'de> for Slice<'de> {
    #[inline]
    fn byte(&mut self) -> Result<u8> {
        let (&byte, rest) = self.0.split_first().ok_or_else(unexpected_end)?;
        self.0 = rest;
        Ok(byte)
    }

    #[inline]
    fn take(&mut self, len: usize) -> Result<&'de [u8]> {
        let (taken, rest) = self.0.split_at_checked(len).ok_or_else(unexpected_end)?;
        self.0 = rest;
        Ok(taken)
    }

    #[inline]
    fn left(&self) -> usize {
        self.0.len()
    }
}

/// How much a [`Stream`] reads ahead.
const STREAM_CHUNK: usize = 256 * 1024;

/// Input from a reader: single bytes come out of a buffer read ahead; an owned run of bytes is
/// read straight into its own vector; a run the value borrows is copied into the next bytes of
/// `borrowed`.
struct Stream<'de, R> {
    reader: BufReader<Take<R>>,
    /// Where borrowed runs go: as long as the whole input, so that they always fit.
    borrowed: &'de mut [u8],
}

impl<R: Read> Stream<'_, R> {
    /// Fills `out`; the reader ends where the input does.
    fn read_into(&mut self, out: &mut [u8]) -> Result<()> {
        self.reader.read_exact(out).map_err(|_| unexpected_end())
    }
}

impl<'de, R: Read> Input<'de> for Stream<'de, R> {
    fn byte(&mut self) -> Result<u8> {
        if let Some(&byte) = self.reader.buffer().first() {
            self.reader.consume(1);
            return Ok(byte);
        }
        let mut byte = [0];
        self.read_into(&mut byte)?;
        Ok(byte[0])
    }

    fn take(&mut self, len: usize) -> Result<&'de [u8]> {
        if len > self.left() {
            return Err(unexpected_end());
        }
        let (taken, rest) = std::mem::take(&mut self.borrowed).split_at_mut(len);
        self.borrowed = rest;
        self.read_into(taken)?;
        Ok(taken)
    }

    fn take_owned(&mut self, len: usize) -> Result<Option<Vec<u8>>> {
        if len > self.left() {
            return Err(unexpected_end());
        }
        let mut owned = vec![0; len];
        self.read_into(&mut owned)?;
        Ok(Some(owned))
    }

    fn left(&self) -> usize {
        let unread = usize::try_from(self.reader.get_ref().limit()).unwrap_or(usize::MAX);
        unread.saturating_add(self.reader.buffer().len())
    }
}

/// Reads postcard's format from an [`Input`].
struct Decoder<I>(I);

impl<'de, I: Input<'de>> Decoder<I> {
    /// A varint of at most `bits` bits.
    fn varint(&mut self, bits: u32) -> Result<u128> {
        let most = bits.div_ceil(7);
        let mut n = 0;
        for i in 0..most {
            let byte = self.0.byte()?;
            n |= u128::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if i == most - 1 && byte >= 1 << (bits % 7) {
                    break;
                }
                return Ok(n);
            }
        }
        Err(malformed(postcard::Error::DeserializeBadVarint))
    }

    /// A zigzag-encoded varint of at most `bits` bits.
    fn signed(&mut self, bits: u32) -> Result<i128> {
        let n = self.varint(bits)?;
        Ok((n >> 1) as i128 ^ -((n & 1) as i128))
    }

    fn length(&mut self) -> Result<usize> {
        usize::try_from(self.varint(64)?).map_err(|_| unexpected_end())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut bytes = [0; N];
        for byte in &mut bytes {
            *byte = self.0.byte()?;
        }
        Ok(bytes)
    }

    fn counted(&mut self, len: usize) -> Counted<'_, I> {
        Counted { decoder: self, len }
    }
}

fn bad_utf8<E>(_: E) -> Box<CodecError> {
    malformed(postcard::Error::DeserializeBadUtf8)
}

fn wont_implement<T>() -> Result<T> {
    Err(malformed(postcard::Error::WontImplement))
}

/// Integers wider than a byte: varints, zigzag-encoded when signed.
macro_rules! integers {
    ($($method:ident => $visit:ident($read:ident, $bits:expr, $type:ty)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.$visit(self.$read($bits)? as $type)
        }
    )*};
}

/// Methods whose body is a call on the visitor, or a refusal: besides the visitor, their
/// arguments are those named; the body sees the decoder and the visitor as named.
macro_rules! visits {
    ($($method:ident($($arg:tt: $type:ty),*) => |$d:tt, $v:tt| $body:expr;)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $type,)* visitor: V) -> Result<V::Value> {
            let ($d, $v) = (self, visitor);
            $body
        }
    )*};
}

impl<'de, I: Input<'de>> Deserializer<'de> for &mut Decoder<I> {
    type Error = Box<CodecError>;

    integers!(
        deserialize_i16 => visit_i16(signed, 16, i16),
        deserialize_i32 => visit_i32(signed, 32, i32),
        deserialize_i64 => visit_i64(signed, 64, i64),
        deserialize_i128 => visit_i128(signed, 128, i128),
        deserialize_u16 => visit_u16(varint, 16, u16),
        deserialize_u32 => visit_u32(varint, 32, u32),
        deserialize_u64 => visit_u64(varint, 64, u64),
        deserialize_u128 => visit_u128(varint, 128, u128),
    );

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.0.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            _ => Err(malformed(postcard::Error::DeserializeBadBool)),
        }
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let bad_char = || malformed(postcard::Error::DeserializeBadChar);
        let len = self.length()?;
        let mut bytes = [0; 4];
        for byte in bytes.get_mut(..len).ok_or_else(bad_char)? {
            *byte = self.0.byte()?;
        }
        let text = std::str::from_utf8(&bytes[..len]).map_err(|_| bad_char())?;
        visitor.visit_char(text.chars().next().ok_or_else(bad_char)?)
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.length()?;
        visitor.visit_borrowed_str(std::str::from_utf8(self.0.take(len)?).map_err(bad_utf8)?)
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.length()?;
        match self.0.take_owned(len)? {
            Some(bytes) => visitor.visit_string(String::from_utf8(bytes).map_err(bad_utf8)?),
            None => visitor
                .visit_borrowed_str(std::str::from_utf8(self.0.take(len)?).map_err(bad_utf8)?),
        }
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.length()?;
        visitor.visit_borrowed_bytes(self.0.take(len)?)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.length()?;
        match self.0.take_owned(len)? {
            Some(bytes) => visitor.visit_byte_buf(bytes),
            None => visitor.visit_borrowed_bytes(self.0.take(len)?),
        }
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.0.byte()? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            _ => Err(malformed(postcard::Error::DeserializeBadOption)),
        }
    }
    visits! {
        deserialize_i8() => |d, v| v.visit_i8(d.0.byte()? as i8);
        deserialize_u8() => |d, v| v.visit_u8(d.0.byte()?);
        deserialize_f32() => |d, v| v.visit_f32(f32::from_le_bytes(d.array()?));
        deserialize_f64() => |d, v| v.visit_f64(f64::from_le_bytes(d.array()?));
        deserialize_unit() => |_d, v| v.visit_unit();
        deserialize_unit_struct(_: &'static str) => |_d, v| v.visit_unit();
        deserialize_newtype_struct(_: &'static str) => |d, v| v.visit_newtype_struct(d);
        deserialize_seq() => |d, v| {
            let len = d.length()?;
            v.visit_seq(d.counted(len))
        };
        deserialize_map() => |d, v| {
            let len = d.length()?;
            v.visit_map(d.counted(len))
        };
        deserialize_tuple(len: usize) => |d, v| v.visit_seq(d.counted(len));
        deserialize_tuple_struct(_: &'static str, len: usize) => |d, v| v.visit_seq(d.counted(len));
        deserialize_struct(_: &'static str, fields: &'static [&'static str])
            => |d, v| v.visit_seq(d.counted(fields.len()));
        deserialize_enum(_: &'static str, _: &'static [&'static str]) => |d, v| v.visit_enum(d);
        deserialize_any() => |_d, _v| wont_implement();
        deserialize_identifier() => |_d, _v| wont_implement();
        deserialize_ignored_any() => |_d, _v| wont_implement();
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

impl<'de, I: Input<'de>> de::EnumAccess<'de> for &mut Decoder<I> {
    type Error = Box<CodecError>;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let index = self.varint(32)? as u32;
        let index: de::value::U32Deserializer<Box<CodecError>> = index.into_deserializer();
        Ok((seed.deserialize(index)?, self))
    }
}

impl<'de, I: Input<'de>> de::VariantAccess<'de> for &mut Decoder<I> {
    type Error = Box<CodecError>;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(self.counted(len))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_seq(self.counted(fields.len()))
    }
}

/// The elements of a sequence, or the entries of a map, that remain.
struct Counted<'a, I> {
    decoder: &'a mut Decoder<I>,
    len: usize,
}

impl<'de, I: Input<'de>> Counted<'_, I> {
    fn next_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(&mut *self.decoder).map(Some)
    }

    /// The count, unless the input is too short for it (a hostile count is no reason to
    /// reserve memory).
    fn size_hint(&self) -> Option<usize> {
        (self.len <= self.decoder.0.left()).then_some(self.len)
    }
}

impl<'de, I: Input<'de>> de::SeqAccess<'de> for Counted<'_, I> {
    type Error = Box<CodecError>;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        self.next_seed(seed)
    }
    fn size_hint(&self) -> Option<usize> {
        Counted::size_hint(self)
    }
}

impl<'de, I: Input<'de>> de::MapAccess<'de> for Counted<'_, I> {
    type Error = Box<CodecError>;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        self.next_seed(seed)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.decoder)
    }
    fn size_hint(&self) -> Option<usize> {
        Counted::size_hint(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Unit,
        Newtype(u32),
        Tuple(i8, String),
        Struct { name: String, sides: Option<u16> },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Everything {
        flag: bool,
        small: (i16, i32, i64, u16, u32, u64),
        wide: i128,
        unsigned: u128,
        ratio: (f32, f64),
        letter: char,
        bytes: Vec<u8>,
        block: serde_bytes::ByteBuf,
        shapes: Vec<Shape>,
        map: BTreeMap<String, (u8, Option<()>)>,
        nothing: (),
    }

    fn everything() -> Everything {
        Everything {
            flag: true,
            small: (i16::MIN, -70_000, i64::MAX, u16::MAX, 300, u64::MAX),
            wide: -1 << 100,
            unsigned: u128::MAX,
            ratio: (-0.5, 0.25),
            letter: 'λ',
            bytes: vec![1, 2, 3],
            block: serde_bytes::ByteBuf::from(vec![4; 200]),
            shapes: vec![
                Shape::Unit,
                Shape::Newtype(7),
                Shape::Tuple(-3, "three".into()),
                Shape::Struct {
                    name: "square".into(),
                    sides: Some(4),
                },
            ],
            map: [("a".to_owned(), (1, None)), ("b".to_owned(), (2, Some(())))].into(),
            nothing: (),
        }
    }

    #[test]
    fn bytes_are_postcards_and_values_round_trip() {
        let value = everything();
        let bytes = encode(&value).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&value).unwrap());
        assert_eq!(decode::<Everything>(&bytes).unwrap(), value);
        let streamed: Everything = decode_stream(&bytes[..], bytes.len()).unwrap();
        assert_eq!(streamed, value);
    }

    proptest! {
        /// On any input, this decoder and postcard's agree: the same value, or both refuse.
        #[test]
        fn decodes_whatever_postcard_decodes(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            agree::<(Option<Shape>, char, bool, String)>(&bytes)?;
            agree::<(i16, i64, u128, u32, i8, Vec<u16>)>(&bytes)?;
            agree::<BTreeMap<u8, (i8, Option<u64>)>>(&bytes)?;
        }

        #[test]
        fn encodes_integers_as_postcard_does(
            n in any::<i128>(),
            m in any::<u64>(),
            s in any::<i16>(),
        ) {
            let value = (n, m, s, n as u128, m as i64);
            prop_assert_eq!(encode(&value).unwrap(), postcard::to_allocvec(&value).unwrap());
        }
    }

    fn agree<T>(bytes: &[u8]) -> Result<(), TestCaseError>
    where
        T: de::DeserializeOwned + PartialEq + fmt::Debug,
    {
        let theirs = postcard::from_bytes::<T>(bytes).ok();
        prop_assert_eq!(&decode::<T>(bytes).ok(), &theirs);
        prop_assert_eq!(&decode_stream::<T>(bytes, bytes.len()).ok(), &theirs);
        Ok(())
    }

    #[test]
    fn postcards_varint_limits_hold() {
        // u16::MAX is 3 bytes; one more bit in the last byte is too many.
        assert_eq!(decode::<u16>(&[0xff, 0xff, 0x03]).unwrap(), u16::MAX);
        let err = decode::<u16>(&[0xff, 0xff, 0x04]).unwrap_err();
        assert_eq!(err.source, Some(postcard::Error::DeserializeBadVarint));
        let err = decode::<u32>(&[0xff; 6]).unwrap_err();
        assert_eq!(err.source, Some(postcard::Error::DeserializeBadVarint));
        let err = decode::<Vec<u8>>(&[0x80]).unwrap_err();
        assert_eq!(err.source, Some(postcard::Error::DeserializeUnexpectedEnd));
    }

    #[test]
    fn only_the_crates_byte_bufs_count_as_read_in_place() {
        let ours = crate::ByteBuf::from(vec![1; 100]);
        let theirs = serde_bytes::ByteBuf::from(vec![2; 50]);
        let bytes = encode(&(&ours, &theirs, "text")).unwrap();
        assert_eq!(last_block_bytes(), 100);
        assert_eq!(
            bytes,
            postcard::to_allocvec(&(&ours, &theirs, "text")).unwrap()
        );
        // Elsewhere the marker is left unset, and counts nothing.
        postcard::to_allocvec(&ours).unwrap();
        encode(&theirs).unwrap();
        assert_eq!(last_block_bytes(), 0);
    }

    #[test]
    fn a_stream_hands_owned_bytes_over_and_stops_at_its_end() {
        let value = (
            String::from("label"),
            serde_bytes::ByteBuf::from(vec![9; 300_000]),
        );
        let bytes = encode(&value).unwrap();
        let back: (String, serde_bytes::ByteBuf) = decode_stream(&bytes[..], bytes.len()).unwrap();
        assert_eq!(back, value);
        // A length beyond the stream is refused before anything is allocated for it.
        let err =
            decode_stream::<serde_bytes::ByteBuf>(&[0xff, 0xff, 0xff, 0x7f][..], 4).unwrap_err();
        assert_eq!(err.source, Some(postcard::Error::DeserializeUnexpectedEnd));
        let err = decode_stream::<(String, serde_bytes::ByteBuf)>(&bytes[..1000], bytes.len())
            .unwrap_err();
        assert_eq!(err.source, Some(postcard::Error::DeserializeUnexpectedEnd));
    }

    /// Refuses both ways, with its own words.
    #[derive(Debug)]
    struct Stubborn;

    impl Serialize for Stubborn {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom("Stubborn refuses to serialize"))
        }
    }

    impl<'de> Deserialize<'de> for Stubborn {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let _ = u8::deserialize(deserializer)?;
            Err(de::Error::custom("Stubborn refuses to deserialize"))
        }
    }

    #[derive(Debug, Serialize, Deserialize)]
    enum Nested {
        Deep(Vec<Option<(u8, Stubborn)>>),
    }

    #[test]
    fn user_messages_survive_nesting() {
        let err = encode(&Stubborn).unwrap_err();
        assert_eq!(err.message, "Stubborn refuses to serialize");
        assert!(err.source.is_none());
        let nested = Nested::Deep(vec![None, Some((1, Stubborn))]);
        let mut out = vec![9];
        let err = encode_into(&nested, &mut out).unwrap_err();
        assert_eq!(err.message, "Stubborn refuses to serialize");
        assert_eq!(out, [9], "a failed encoding leaves the buffer as it was");

        let err = decode::<Stubborn>(&[5]).unwrap_err();
        assert_eq!(err.message, "Stubborn refuses to deserialize");
        // Variant 0, a sequence of two, `None`, then `Some((1, <u8 for Stubborn>))`.
        let bytes = [0, 2, 0, 1, 1, 5];
        let err = decode::<Nested>(&bytes).unwrap_err();
        assert_eq!(err.message, "Stubborn refuses to deserialize");
        let err = decode_stream::<Nested>(&bytes[..], bytes.len()).unwrap_err();
        assert_eq!(err.message, "Stubborn refuses to deserialize");
    }

    #[test]
    fn postcards_own_errors_keep_their_source() {
        let err = decode::<u32>(&[]).unwrap_err();
        assert!(err.source.is_some());
        assert_eq!(
            err.message,
            postcard::Error::DeserializeUnexpectedEnd.to_string()
        );
        // A wrong type from serde's derive speaks in serde's words, which postcard drops.
        let err = decode::<Shape>(&[9]).unwrap_err();
        assert!(
            err.message.contains("variant index 0 <= i < 4"),
            "{}",
            err.message
        );
    }
}
