//! User serde code in process tasks: its panics and its own error messages come back in the
//! task's `Error`, at each of the four stages a value crosses (the argument encoded in the
//! caller and decoded in the worker, the result encoded in the worker and decoded in the
//! caller), and cost neither the caller, nor the worker, nor the pool.

use serde::{Deserialize, Serialize};
use smol_offload::{Executor, ProcessPool, ThreadPool};

mod common;

use common::block_on;

#[ctor::ctor]
fn start_fork_server() {
    smol_offload::init();
}

fn square(n: u64) -> u64 {
    n * n
}

/// Its `Serialize` panics, in any process: nothing about it can cross.
#[derive(Debug)]
struct PanicsOnDeparture(u8);

impl Serialize for PanicsOnDeparture {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("PanicsOnDeparture cannot leave")
    }
}

impl<'de> Deserialize<'de> for PanicsOnDeparture {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u8::deserialize(deserializer).map(PanicsOnDeparture)
    }
}

fn takes_panics_on_departure(value: PanicsOnDeparture) -> u8 {
    value.0
}

fn returns_panics_on_departure(n: u8) -> PanicsOnDeparture {
    PanicsOnDeparture(n)
}

/// Serializes fine, refuses to be deserialized with its own words, after reading its byte (so
/// that the refusal crosses postcard's own visitor code on its way out).
#[derive(Debug, Serialize)]
struct BadDe(u8);

impl<'de> Deserialize<'de> for BadDe {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let byte = u8::deserialize(deserializer)?;
        Err(serde::de::Error::custom(format!(
            "BadDe refuses to deserialize {byte}"
        )))
    }
}

/// Deserializes fine, refuses to be serialized with its own words.
#[derive(Debug, Deserialize)]
struct BadSer(u8);

impl Serialize for BadSer {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(format!(
            "BadSer refuses to serialize {}",
            self.0
        )))
    }
}

/// The refusals nested inside derived types, as they would be in real code.
#[derive(Debug, Serialize, Deserialize)]
enum Envelope {
    Letters(Vec<Option<(String, BadDe)>>),
}

#[derive(Debug, Serialize, Deserialize)]
struct Parcel {
    label: String,
    inside: Option<BadSer>,
}

fn takes_bad_de(_: BadDe) -> u8 {
    unreachable!("the argument cannot be decoded in the worker")
}

fn returns_bad_de(n: u8) -> BadDe {
    BadDe(n)
}

fn returns_bad_ser(n: u8) -> BadSer {
    BadSer(n)
}

fn takes_envelope(_: Envelope) -> u8 {
    unreachable!("the argument cannot be decoded in the worker")
}

fn returns_parcel(n: u8) -> Parcel {
    Parcel {
        label: "fragile".into(),
        inside: Some(BadSer(n)),
    }
}

fn quiet_panics_in_this_process() {
    // Only this test binary's own expected panics; the workers print nothing by default.
    std::panic::set_hook(Box::new(|_| {}));
}

#[test]
fn a_panic_serializing_the_argument_is_the_tasks_error() {
    quiet_panics_in_this_process();
    let pool = ProcessPool::new(1).unwrap();
    // `run` itself returns: the panic does not unwind into the caller.
    let task = pool.run(takes_panics_on_departure, PanicsOnDeparture(1));
    let err = block_on(task).unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.panic_message(), Some("PanicsOnDeparture cannot leave"));
    // In the worker, serializing the result.
    let err = block_on(pool.run(returns_panics_on_departure, 2)).unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.panic_message(), Some("PanicsOnDeparture cannot leave"));
    assert_eq!(
        block_on(pool.run(square, 3)).unwrap(),
        9,
        "the pool goes on"
    );
}

#[test]
fn thread_pools_run_the_same_values_without_encoding_them() {
    let pool = ThreadPool::new(1).unwrap();
    let value = block_on(pool.run(takes_panics_on_departure, PanicsOnDeparture(5))).unwrap();
    assert_eq!(value, 5);
}

#[test]
fn user_error_messages_survive_every_stage() {
    let pool = ProcessPool::new(1).unwrap();
    let pid = pool.pids()[0];
    block_on(async {
        // The argument, serialized in the caller.
        let err = pool.run(square_of_bad_ser, BadSer(4)).await.unwrap_err();
        assert!(err.is_codec(), "{err}");
        assert_eq!(
            err.to_string(),
            "could not serialize the argument: BadSer refuses to serialize 4"
        );
        // The argument, deserialized in the worker.
        let err = pool.run(takes_bad_de, BadDe(5)).await.unwrap_err();
        assert!(err.is_codec(), "{err}");
        assert!(err.to_string().contains("in the worker"), "{err}");
        assert!(
            err.to_string().ends_with("BadDe refuses to deserialize 5"),
            "{err}"
        );
        // The result, serialized in the worker.
        let err = pool.run(returns_bad_ser, 6).await.unwrap_err();
        assert!(err.is_codec(), "{err}");
        assert_eq!(
            err.to_string(),
            "could not serialize the result in the worker: BadSer refuses to serialize 6"
        );
        // The result, deserialized in the caller.
        let err = pool.run(returns_bad_de, 7).await.unwrap_err();
        assert!(err.is_codec(), "{err}");
        assert_eq!(
            err.to_string(),
            "could not deserialize the result: BadDe refuses to deserialize 7"
        );
        // Nested in derived types, both ways.
        let letters = Envelope::Letters(vec![None, Some(("hi".into(), BadDe(8)))]);
        let err = pool.run(takes_envelope, letters).await.unwrap_err();
        assert!(
            err.to_string().ends_with("BadDe refuses to deserialize 8"),
            "{err}"
        );
        let err = pool.run(returns_parcel, 9).await.unwrap_err();
        assert!(
            err.to_string().ends_with("BadSer refuses to serialize 9"),
            "{err}"
        );
        assert_eq!(pool.run(square, 5).await.unwrap(), 25);
    });
    assert_eq!(pool.pids(), [pid], "the worker survived every failure");
}

fn square_of_bad_ser(value: BadSer) -> u64 {
    square(u64::from(value.0))
}
