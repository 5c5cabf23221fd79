//! The core crate's test helpers (`crates/smol-offload/tests/common`), shared with these tests.

#[path = "../../../smol-offload/tests/common/mod.rs"]
mod core;

#[allow(unused_imports)]
pub(crate) use core::*;
