//! The core crate's log-file subscriber for the tracing tests, shared with these tests.

#[path = "../../../smol-offload/tests/common/log_file.rs"]
mod core;

#[allow(unused_imports)]
pub(crate) use core::*;
