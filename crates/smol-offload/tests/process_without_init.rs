//! `ProcessPool::new` without `smol_offload::init()`: it starts the fork server itself while the
//! process has one thread, and refuses with a clear error once other threads run.
//!
//! This test has its own `main` (`harness = false`): libtest would start threads before any
//! test runs. The refusal runs in a child process, started by re-running this binary.

use std::process::Command;

use smol_offload::{Executor, ProcessPool};

const REFUSAL_ARG: &str = "--refusal-child";
const MAIN_RETURNS_ARG: &str = "--main-returns-child";

/// One check of this binary: its outcome, or what went wrong.
type Check = fn() -> Result<(), String>;

fn double(n: u32) -> u32 {
    n * 2
}

/// No `init()`, one thread: the pool starts the server itself, and later pools reuse it even
/// after threads were started.
fn lazy_start() -> Result<(), String> {
    let pool = ProcessPool::new(2).map_err(|err| format!("lazy start failed: {err}"))?;
    let value = smol::block_on(pool.run(double, 21)).map_err(|err| err.to_string())?;
    if value != 42 {
        return Err(format!("expected 42, got {value}"));
    }
    // The pool's dispatcher thread now runs: a second pool must reuse the running server.
    let second = ProcessPool::new(1).map_err(|err| format!("second pool failed: {err}"))?;
    let value = smol::block_on(second.run(double, 5)).map_err(|err| err.to_string())?;
    if value != 10 {
        return Err(format!("expected 10, got {value}"));
    }
    Ok(())
}

/// Writes to a pipe whose read end is closed; the error's kind, if the write failed.
fn write_to_a_closed_pipe(_: ()) -> Option<String> {
    use std::io::Write;
    let (reader, mut writer) = std::io::pipe().ok()?;
    drop(reader);
    let err = writer.write_all(b"nobody reads this").err()?;
    Some(format!("{:?}", err.kind()))
}

/// A task that writes to a closed pipe gets `EPIPE`, as under `init_for_tests!()`: its worker
/// ignores `SIGPIPE` and lives on.
fn broken_pipe() -> Result<(), String> {
    let pool = ProcessPool::new(1).map_err(|err| format!("pool failed: {err}"))?;
    let kind =
        smol::block_on(pool.run(write_to_a_closed_pipe, ())).map_err(|err| err.to_string())?;
    if kind.as_deref() != Some("BrokenPipe") {
        return Err(format!("expected a BrokenPipe error, got {kind:?}"));
    }
    Ok(())
}

/// In the child: a thread runs before the first pool, so the pool must refuse.
fn refusal_child() -> ! {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || stopped.recv());
    let code = match ProcessPool::new(1) {
        Ok(_) => {
            eprintln!("a pool was built in a threaded process without init()");
            1
        }
        Err(err) if err.needs_init() => {
            println!("{err}");
            0
        }
        Err(err) => {
            eprintln!("wrong error: {err}");
            1
        }
    };
    drop(stop);
    let _ = thread.join();
    std::process::exit(code)
}

fn refusal() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|err| err.to_string())?;
    let output = Command::new(exe)
        .arg(REFUSAL_ARG)
        .output()
        .map_err(|err| err.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("child failed ({}): {stderr}", output.status));
    }
    let expected = "process pools need smol_offload::init() at the start of main: \
                    this process already runs 2 threads";
    if stdout.trim() != expected {
        return Err(format!("unexpected message {stdout:?}"));
    }
    Ok(())
}

/// In the child: `main` returns the refusal with `?`, as a user's `main` would.
fn main_returns_child() -> Result<(), Box<dyn std::error::Error>> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let _thread = std::thread::spawn(move || stopped.recv());
    let _pool = ProcessPool::new(1)?;
    drop(stop);
    Ok(())
}

/// An error returned from `main` prints its message (its `Debug` form), not a struct.
fn main_prints_the_message() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|err| err.to_string())?;
    let output = Command::new(exe)
        .arg(MAIN_RETURNS_ARG)
        .output()
        .map_err(|err| err.to_string())?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() != Some(1) {
        return Err(format!("child ended with {}: {stderr}", output.status));
    }
    let expected = "Error: process pools need smol_offload::init() at the start of main: \
                    this process already runs 2 threads\n";
    if stderr != expected {
        return Err(format!("unexpected stderr {stderr:?}"));
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == REFUSAL_ARG) {
        refusal_child();
    }
    if args.iter().any(|arg| arg == MAIN_RETURNS_ARG) {
        return main_returns_child();
    }
    let checks: [(&str, Check); 4] = [
        ("lazy_start", lazy_start),
        ("broken_pipe", broken_pipe),
        ("refusal", refusal),
        ("main_prints_the_message", main_prints_the_message),
    ];
    // Enough of libtest's command line for `cargo test` and `cargo nextest`: `--list` names the
    // tests (none of them is ignored), and a name runs only the tests it matches.
    if args.iter().any(|arg| arg == "--list") {
        if !args.iter().any(|arg| arg == "--ignored") {
            for (name, _) in checks {
                println!("{name}: test");
            }
        }
        return Ok(());
    }
    let exact = args.iter().any(|arg| arg == "--exact");
    let filter = args.iter().find(|arg| !arg.starts_with("--"));
    let selected = checks.iter().filter(|(name, _)| match filter {
        Some(filter) if exact => name == filter,
        Some(filter) => name.contains(filter.as_str()),
        None => true,
    });
    let (mut passed, mut failed) = (0, 0);
    for (name, check) in selected {
        match check() {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(message) => {
                println!("test {name} ... FAILED: {message}");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
