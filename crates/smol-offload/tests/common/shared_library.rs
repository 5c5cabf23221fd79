//! A real shared object for the tests of functions outside the executable: built with the
//! same `rustc` as the tests (`RUSTC`, or `rustc` on the `PATH`), then opened with `dlopen`.
//! Shared by the core's and the remote crate's `foreign_code` tests.

#![allow(dead_code)]

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The library's source: Rust functions, exported under their own names.
const LIBRARY_SOURCE: &str = "
#[unsafe(no_mangle)]
pub fn triple(x: u64) -> u64 {
    x * 3
}

#[unsafe(no_mangle)]
pub fn prepare(_: u64) {}
";

/// A library built for one test, in a directory of its own, removed when dropped (also when
/// the test fails).
pub(crate) struct Library {
    dir: PathBuf,
    pub(crate) path: PathBuf,
}

impl Drop for Library {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Builds the library `lib{name}.so` with `rustc --crate-type cdylib`, in a directory of this
/// process's own, and returns it.
pub(crate) fn build_library(name: &str) -> Library {
    let dir = std::env::temp_dir().join(format!(
        "smol-offload-foreign-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join(format!("{name}.rs"));
    std::fs::write(&source, LIBRARY_SOURCE).unwrap();
    let library = dir.join(format!("lib{name}.so"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--edition", "2024", "--crate-type", "cdylib", "-o"])
        .arg(&library)
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "rustc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Library { dir, path: library }
}

/// Opens `library` with `dlopen` and returns the address of its function `name`. The library
/// stays loaded for the rest of the process.
fn load(library: &Path, name: &CStr) -> *mut libc::c_void {
    let path = CString::new(library.to_str().unwrap()).unwrap();
    // SAFETY: `path` is a NUL-terminated string that outlives the call; the library's
    // initializers are those of a Rust cdylib with no code of its own to run.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen of {} failed", library.display());
    // SAFETY: `handle` is the live handle just opened, and the name is NUL-terminated.
    let symbol = unsafe { libc::dlsym(handle, name.as_ptr()) };
    assert!(
        !symbol.is_null(),
        "no symbol {name:?} in {}",
        library.display()
    );
    symbol
}

/// The library's `triple`, loaded now.
pub(crate) fn load_triple(library: &Path) -> fn(u64) -> u64 {
    let symbol = load(library, c"triple");
    // SAFETY: `triple` is `pub fn triple(x: u64) -> u64`, compiled with the Rust ABI by the same
    // compiler as this test, and the library is never closed, so the address stays its code.
    unsafe { std::mem::transmute::<*mut libc::c_void, fn(u64) -> u64>(symbol) }
}

/// The library's `prepare`, loaded now.
pub(crate) fn load_prepare(library: &Path) -> fn(u64) {
    let symbol = load(library, c"prepare");
    // SAFETY: as in `load_triple`, for `pub fn prepare(_: u64)`.
    unsafe { std::mem::transmute::<*mut libc::c_void, fn(u64)>(symbol) }
}
