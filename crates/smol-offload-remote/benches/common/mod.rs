//! The core crate's benchmark helpers (`crates/smol-offload/benches/common`), shared with the
//! remote benchmark.

#[path = "../../../smol-offload/benches/common/mod.rs"]
mod core;

#[allow(unused_imports)]
pub(crate) use core::*;
