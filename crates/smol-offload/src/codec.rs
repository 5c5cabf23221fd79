//! The codec of process tasks: postcard, keeping the text of the errors that user serde code
//! raises.
//!
//! postcard's error type drops the message given to `serde::ser::Error::custom` and
//! `serde::de::Error::custom`: a type that refuses to be deserialized with "BadDe refuses to
//! deserialize" would only read "Serde Deserialization Error". So values go through a thin
//! adapter around postcard's serializer and deserializer whose error type keeps the message.
//! Where postcard calls back into the adapter (a nested value, a visitor, a sequence's
//! elements), an error must become postcard's own again: its text waits in a slot shared by
//! the whole call, and is taken back out when postcard's error comes up. The bytes are
//! postcard's, unchanged.
//!
//! The adapter costs a few calls per value, which adds up over a `Vec<u8>` encoded byte by
//! byte. So a value is first encoded or decoded by postcard alone, and only when that fails is
//! it done again through the adapter, to find the user's message: the user's `Serialize` or
//! `Deserialize` runs twice then, and only then.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};
use serde::ser::{self, Serialize, Serializer};

/// Why a value could not be encoded or decoded.
#[derive(Debug)]
pub struct CodecError {
    /// The user's own message, or postcard's.
    pub message: String,
    /// postcard's error, when the failure was postcard's and not the user's.
    pub source: Option<postcard::Error>,
}

/// Appends the postcard encoding of `value` to `out`; on failure, `out` is as it was.
pub(crate) fn encode_into<T>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError>
where
    T: Serialize + ?Sized,
{
    let start = out.len();
    BLOCK_BYTES.set(0);
    let mut serializer = postcard::Serializer {
        output: Append(&mut *out),
    };
    if value.serialize(&mut serializer).is_ok() {
        return Ok(());
    }
    out.truncate(start);
    let slot = Slot::default();
    let mut serializer = postcard::Serializer {
        output: Append(&mut *out),
    };
    let result = value
        .serialize(Capture {
            inner: &mut serializer,
            slot: &slot,
        })
        .map(drop);
    result.map_err(|failure| {
        out.truncate(start);
        slot.finish(failure)
    })
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

/// Decodes a `T` from the start of `bytes`.
pub(crate) fn decode<'de, T>(bytes: &'de [u8]) -> Result<T, CodecError>
where
    T: de::Deserialize<'de>,
{
    if let Ok(value) = postcard::from_bytes(bytes) {
        return Ok(value);
    }
    let slot = Slot::default();
    let mut deserializer = postcard::Deserializer::from_bytes(bytes);
    T::deserialize(Capture {
        inner: &mut deserializer,
        slot: &slot,
    })
    .map_err(|failure| slot.finish(failure))
}

/// Decodes a `T` from the `len` bytes that `reader` yields, as they come: only the runs of bytes
/// that the value borrows (a byte slice, copied then) are held whole, in a buffer of `len`
/// bytes whose pages are allocated only where they are written. Decoded through the adapter at
/// once, so that a user's message is kept without reading the bytes twice.
pub(crate) fn decode_stream<T>(reader: impl std::io::Read, len: usize) -> Result<T, CodecError>
where
    T: de::DeserializeOwned,
{
    let mut borrowed = vec![0u8; len];
    let flavor = StreamFlavor {
        reader,
        chunk: vec![0; STREAM_CHUNK],
        start: 0,
        end: 0,
        borrowed: &mut borrowed,
    };
    let mut deserializer = postcard::Deserializer::from_flavor(flavor);
    let slot = Slot::default();
    T::deserialize(Capture {
        inner: &mut deserializer,
        slot: &slot,
    })
    .map_err(|failure| slot.finish(failure))
}

/// How much a [`StreamFlavor`] reads at a time.
const STREAM_CHUNK: usize = 256 * 1024;

/// postcard's input from a reader: single bytes come out of a chunk read ahead; a run of bytes
/// the value borrows is copied into the next bytes of `borrowed` (as postcard's own `IOReader`
/// does, which reads every single byte through the reader instead).
struct StreamFlavor<'de, R> {
    reader: R,
    chunk: Vec<u8>,
    /// The bytes of `chunk` not taken yet.
    start: usize,
    end: usize,
    /// Where borrowed runs go: as long as the whole input, so that they always fit.
    borrowed: &'de mut [u8],
}

impl<R: std::io::Read> StreamFlavor<'_, R> {
    /// Reads the next chunk, once the last one is taken.
    fn refill(&mut self) -> postcard::Result<()> {
        loop {
            match self.reader.read(&mut self.chunk) {
                Ok(0) => return Err(postcard::Error::DeserializeUnexpectedEnd),
                Ok(n) => {
                    (self.start, self.end) = (0, n);
                    return Ok(());
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(postcard::Error::DeserializeUnexpectedEnd),
            }
        }
    }
}

impl<'de, R: std::io::Read + 'de> postcard::de_flavors::Flavor<'de> for StreamFlavor<'de, R> {
    type Remainder = ();
    type Source = ();

    #[inline]
    fn pop(&mut self) -> postcard::Result<u8> {
        if self.start == self.end {
            self.refill()?;
        }
        let byte = self.chunk[self.start];
        self.start += 1;
        Ok(byte)
    }

    fn try_take_n(&mut self, ct: usize) -> postcard::Result<&'de [u8]> {
        if ct > self.borrowed.len() {
            return Err(postcard::Error::DeserializeUnexpectedEnd);
        }
        let (taken, rest) = std::mem::take(&mut self.borrowed).split_at_mut(ct);
        self.borrowed = rest;
        let ahead = (self.end - self.start).min(ct);
        taken[..ahead].copy_from_slice(&self.chunk[self.start..self.start + ahead]);
        self.start += ahead;
        self.reader
            .read_exact(&mut taken[ahead..])
            .map_err(|_| postcard::Error::DeserializeUnexpectedEnd)?;
        Ok(taken)
    }

    fn try_take_n_temp<'a>(&'a mut self, ct: usize) -> postcard::Result<&'a [u8]>
    where
        'de: 'a,
    {
        // Within the chunk read ahead: lent from there, nothing copied.
        if self.end - self.start >= ct {
            let taken = &self.chunk[self.start..self.start + ct];
            self.start += ct;
            return Ok(taken);
        }
        self.try_take_n(ct)
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// How many bytes the last [`encode_into`] on this thread wrote as whole blocks (byte
    /// slices, strings), not one value at a time.
    static BLOCK_BYTES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many bytes the last encoding on this thread wrote as whole blocks: a result that is
/// mostly blocks (a `ByteBuf`) is best read in place, one that is not best decoded as a
/// stream.
pub(crate) fn last_block_bytes() -> usize {
    BLOCK_BYTES.get()
}

/// Lets postcard append to a buffer it borrows: a byte with `push`, a slice with one copy.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        BLOCK_BYTES.set(BLOCK_BYTES.get() + bytes.len());
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Where a user's message waits while the error crosses postcard's own code.
#[derive(Default)]
struct Slot(RefCell<Option<String>>);

impl Slot {
    /// Turns a failure into postcard's error `E`, keeping its message in the slot.
    fn lower<E>(&self, failure: Failure<E>) -> E
    where
        E: ser::Error,
    {
        match failure {
            Failure::Inner(err) => err,
            Failure::Custom(message) => {
                let err = E::custom(&message);
                *self.0.borrow_mut() = Some(message);
                err
            }
        }
    }

    /// [`lower`](Slot::lower) for deserialization errors.
    fn lower_de<E>(&self, failure: Failure<E>) -> E
    where
        E: de::Error,
    {
        match failure {
            Failure::Inner(err) => err,
            Failure::Custom(message) => {
                let err = E::custom(&message);
                *self.0.borrow_mut() = Some(message);
                err
            }
        }
    }

    /// Turns an error that came out of postcard into a failure, with the user's message if one
    /// waits in the slot.
    fn lift<E>(&self, err: E) -> Failure<E> {
        match self.0.borrow_mut().take() {
            Some(message) => Failure::Custom(message),
            None => Failure::Inner(err),
        }
    }

    fn finish(&self, failure: Failure<postcard::Error>) -> CodecError {
        match failure {
            Failure::Inner(err) => match self.0.borrow_mut().take() {
                Some(message) => CodecError {
                    message,
                    source: None,
                },
                None => CodecError {
                    message: err.to_string(),
                    source: Some(err),
                },
            },
            Failure::Custom(message) => CodecError {
                message,
                source: None,
            },
        }
    }
}

/// The adapter's error: the wrapped format's own, or a message from user code.
#[derive(Debug)]
enum Failure<E> {
    Inner(E),
    Custom(String),
}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Inner(err) => err.fmt(f),
            Failure::Custom(message) => f.write_str(message),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for Failure<E> {}

impl<E: fmt::Debug + fmt::Display> ser::Error for Failure<E> {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Failure::Custom(message.to_string())
    }
}

impl<E: fmt::Debug + fmt::Display> de::Error for Failure<E> {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Failure::Custom(message.to_string())
    }
}

/// A serializer or deserializer of the wrapped format, with the adapter's error type.
struct Capture<'a, S> {
    inner: S,
    slot: &'a Slot,
}

/// A value handed to the wrapped serializer: serializes itself through the adapter.
struct Wrap<'a, T: ?Sized> {
    value: &'a T,
    slot: &'a Slot,
}

impl<T: Serialize + ?Sized> Serialize for Wrap<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value
            .serialize(Capture {
                inner: serializer,
                slot: self.slot,
            })
            .map_err(|failure| self.slot.lower(failure))
    }
}

macro_rules! forward_scalars {
    ($($method:ident($type:ty)),* $(,)?) => {
        $(
            fn $method(self, value: $type) -> Result<Self::Ok, Self::Error> {
                self.inner.$method(value).map_err(|err| self.slot.lift(err))
            }
        )*
    };
}

impl<'a, S: Serializer> Serializer for Capture<'a, S> {
    type Ok = S::Ok;
    type Error = Failure<S::Error>;
    type SerializeSeq = Compound<'a, S::SerializeSeq>;
    type SerializeTuple = Compound<'a, S::SerializeTuple>;
    type SerializeTupleStruct = Compound<'a, S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<'a, S::SerializeTupleVariant>;
    type SerializeMap = Compound<'a, S::SerializeMap>;
    type SerializeStruct = Compound<'a, S::SerializeStruct>;
    type SerializeStructVariant = Compound<'a, S::SerializeStructVariant>;

    forward_scalars!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_none(self) -> Result<Self::Ok, Self::Error> {
        self.inner
            .serialize_none()
            .map_err(|err| self.slot.lift(err))
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Self::Ok, Self::Error> {
        let slot = self.slot;
        self.inner
            .serialize_some(&Wrap { value, slot })
            .map_err(|err| slot.lift(err))
    }

    fn serialize_unit(self) -> Result<Self::Ok, Self::Error> {
        self.inner
            .serialize_unit()
            .map_err(|err| self.slot.lift(err))
    }

    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<Self::Ok, Self::Error> {
        self.inner
            .serialize_unit_variant(name, index, variant)
            .map_err(|err| self.slot.lift(err))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<Self::Ok, Self::Error> {
        let slot = self.slot;
        self.inner
            .serialize_newtype_struct(name, &Wrap { value, slot })
            .map_err(|err| slot.lift(err))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Self::Ok, Self::Error> {
        let slot = self.slot;
        self.inner
            .serialize_newtype_variant(name, index, variant, &Wrap { value, slot })
            .map_err(|err| slot.lift(err))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, Self::Error> {
        let slot = self.slot;
        self.inner
            .serialize_seq(len)
            .map(|inner| Compound { inner, slot })
            .map_err(|err| slot.lift(err))
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, Self::Error> {
        let slot = self.slot;
        self.inner
            .serialize_tuple(len)
            .map(|inner| Compound { inner, slot })
            .map_err(|err| slot.lift(err))
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, Self::Error> {
        let slot = self.slot;
        self.inner
            .serialize_tuple_struct(name, len)
            .map(|inner| Compound { inner, slot })
            .map_err(|err| slot.lift(err))
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Self::Error> {
        let slot = self.slot;
        self.inner
            .serialize_tuple_variant(name, index, variant, len)
            .map(|inner| Compound { inner, slot })
            .map_err(|err| slot.lift(err))
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, Self::Error> {
        let slot = self.slot;
        self.inner
            .serialize_map(len)
            .map(|inner| Compound { inner, slot })
            .map_err(|err| slot.lift(err))
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, Self::Error> {
        let slot = self.slot;
        self.inner
            .serialize_struct(name, len)
            .map(|inner| Compound { inner, slot })
            .map_err(|err| slot.lift(err))
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, Self::Error> {
        let slot = self.slot;
        self.inner
            .serialize_struct_variant(name, index, variant, len)
            .map(|inner| Compound { inner, slot })
            .map_err(|err| slot.lift(err))
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A sequence, tuple, map or struct being serialized through the adapter.
struct Compound<'a, C> {
    inner: C,
    slot: &'a Slot,
}

macro_rules! compound {
    ($trait:ident, $($method:ident($($key:ident: $key_type:ty),*)),*) => {
        impl<C: ser::$trait> ser::$trait for Compound<'_, C> {
            type Ok = C::Ok;
            type Error = Failure<C::Error>;

            $(
                fn $method<T: Serialize + ?Sized>(
                    &mut self,
                    $($key: $key_type,)*
                    value: &T,
                ) -> Result<(), Self::Error> {
                    let slot = self.slot;
                    self.inner
                        .$method($($key,)* &Wrap { value, slot })
                        .map_err(|err| slot.lift(err))
                }
            )*

            fn end(self) -> Result<Self::Ok, Self::Error> {
                self.inner.end().map_err(|err| self.slot.lift(err))
            }
        }
    };
}

compound!(SerializeSeq, serialize_element());
compound!(SerializeTuple, serialize_element());
compound!(SerializeTupleStruct, serialize_field());
compound!(SerializeTupleVariant, serialize_field());
compound!(SerializeMap, serialize_key(), serialize_value());
compound!(SerializeStruct, serialize_field(key: &'static str));
compound!(SerializeStructVariant, serialize_field(key: &'static str));

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $arg_type:ty),*)),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(
                self,
                $($arg: $arg_type,)*
                visitor: V,
            ) -> Result<V::Value, Self::Error> {
                let slot = self.slot;
                self.inner
                    .$method($($arg,)* Visit { visitor, slot })
                    .map_err(|err| slot.lift(err))
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Capture<'_, D> {
    type Error = Failure<D::Error>;

    forward_deserialize!(
        deserialize_any(),
        deserialize_bool(),
        deserialize_i8(),
        deserialize_i16(),
        deserialize_i32(),
        deserialize_i64(),
        deserialize_i128(),
        deserialize_u8(),
        deserialize_u16(),
        deserialize_u32(),
        deserialize_u64(),
        deserialize_u128(),
        deserialize_f32(),
        deserialize_f64(),
        deserialize_char(),
        deserialize_str(),
        deserialize_string(),
        deserialize_bytes(),
        deserialize_byte_buf(),
        deserialize_option(),
        deserialize_unit(),
        deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str),
        deserialize_seq(),
        deserialize_tuple(len: usize),
        deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_map(),
        deserialize_struct(name: &'static str, fields: &'static [&'static str]),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
        deserialize_identifier(),
        deserialize_ignored_any(),
    );

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// The user's visitor, called by the wrapped deserializer: what it is given goes on through
/// the adapter.
struct Visit<'a, V> {
    visitor: V,
    slot: &'a Slot,
}

macro_rules! forward_visits {
    ($($method:ident($type:ty)),* $(,)?) => {
        $(
            fn $method<E: de::Error>(self, value: $type) -> Result<Self::Value, E> {
                let slot = self.slot;
                self.visitor
                    .$method::<Failure<E>>(value)
                    .map_err(|failure| slot.lower_de(failure))
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Visit<'_, V> {
    type Value = V::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(formatter)
    }

    forward_visits!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        let slot = self.slot;
        self.visitor
            .visit_none::<Failure<E>>()
            .map_err(|failure| slot.lower_de(failure))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        let slot = self.slot;
        self.visitor
            .visit_unit::<Failure<E>>()
            .map_err(|failure| slot.lower_de(failure))
    }

    fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
        let slot = self.slot;
        self.visitor
            .visit_some(Capture { inner, slot })
            .map_err(|failure| slot.lower_de(failure))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
        let slot = self.slot;
        self.visitor
            .visit_newtype_struct(Capture { inner, slot })
            .map_err(|failure| slot.lower_de(failure))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, inner: A) -> Result<Self::Value, A::Error> {
        let slot = self.slot;
        self.visitor
            .visit_seq(Capture { inner, slot })
            .map_err(|failure| slot.lower_de(failure))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, inner: A) -> Result<Self::Value, A::Error> {
        let slot = self.slot;
        self.visitor
            .visit_map(Capture { inner, slot })
            .map_err(|failure| slot.lower_de(failure))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, inner: A) -> Result<Self::Value, A::Error> {
        let slot = self.slot;
        self.visitor
            .visit_enum(Capture { inner, slot })
            .map_err(|failure| slot.lower_de(failure))
    }
}

/// The user's seed, called by the wrapped deserializer.
struct Seed<'a, S> {
    seed: S,
    slot: &'a Slot,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
        let slot = self.slot;
        self.seed
            .deserialize(Capture { inner, slot })
            .map_err(|failure| slot.lower_de(failure))
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Capture<'_, A> {
    type Error = Failure<A::Error>;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        let slot = self.slot;
        self.inner
            .next_element_seed(Seed { seed, slot })
            .map_err(|err| slot.lift(err))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for Capture<'_, A> {
    type Error = Failure<A::Error>;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let slot = self.slot;
        self.inner
            .next_key_seed(Seed { seed, slot })
            .map_err(|err| slot.lift(err))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        let slot = self.slot;
        self.inner
            .next_value_seed(Seed { seed, slot })
            .map_err(|err| slot.lift(err))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'a, 'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Capture<'a, A> {
    type Error = Failure<A::Error>;
    type Variant = Capture<'a, A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), Self::Error> {
        let slot = self.slot;
        self.inner
            .variant_seed(Seed { seed, slot })
            .map(|(value, inner)| (value, Capture { inner, slot }))
            .map_err(|err| slot.lift(err))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Capture<'_, A> {
    type Error = Failure<A::Error>;

    fn unit_variant(self) -> Result<(), Self::Error> {
        self.inner.unit_variant().map_err(|err| self.slot.lift(err))
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        let slot = self.slot;
        self.inner
            .newtype_variant_seed(Seed { seed, slot })
            .map_err(|err| slot.lift(err))
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let slot = self.slot;
        self.inner
            .tuple_variant(len, Visit { visitor, slot })
            .map_err(|err| slot.lift(err))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let slot = self.slot;
        self.inner
            .struct_variant(fields, Visit { visitor, slot })
            .map_err(|err| slot.lift(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        wide: i128,
        unsigned: u128,
        ratio: f64,
        letter: char,
        bytes: Vec<u8>,
        shapes: Vec<Shape>,
        map: BTreeMap<String, (u8, Option<()>)>,
        nothing: (),
    }

    fn everything() -> Everything {
        Everything {
            flag: true,
            wide: -1 << 100,
            unsigned: 1 << 100,
            ratio: 0.25,
            letter: 'λ',
            bytes: vec![1, 2, 3],
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
            // Read something first, so that the error crosses a visitor of postcard's.
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
        let err = decode::<Nested>(&[0, 2, 0, 1, 1, 5]).unwrap_err();
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
        // A wrong type from serde's derive speaks in serde's words, which postcard dropped.
        let err = decode::<Shape>(&[9]).unwrap_err();
        assert!(
            err.message.contains("variant index 0 <= i < 4"),
            "{}",
            err.message
        );
    }
}
