//! Debug mode off costs nothing: no watchdog thread, no timer. And `SMOL_OFFLOAD_DEBUG` turns it
//! on for `debug::block_on`, or is refused with a message. In its own binary, so that no other
//! test has turned debug mode on first.

use std::time::Duration;

use smol_offload::debug;

mod common;

use common::{in_child, run_child};

/// The names of the threads of this process, from `/proc/self/task/*/comm`.
fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap_or_default())
        .collect()
}

const CHILD: &str = "SMOL_OFFLOAD_TEST_DEBUG_CHILD";

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_debug_mode_off_starts_no_thread() {
    if !in_child(CHILD) {
        return;
    }
    // smol's reactor thread starts with the first block_on, debug mode or not.
    smol::block_on(async {});
    let before = threads();
    debug::block_on(async {
        debug::watch(async { std::thread::sleep(Duration::from_millis(20)) }).await;
        debug::watch_named("named", async {}).await;
    });
    assert!(!debug::is_enabled());
    let after = threads();
    assert_eq!(after.len(), before.len(), "{before:?} then {after:?}");
    assert!(
        !after.iter().any(|name| name.starts_with("smol-offload")),
        "{after:?}"
    );
    println!("child_debug_mode_off_starts_no_thread: done");
}

#[test]
fn debug_mode_off_starts_no_thread() {
    // In a child process of its own, where no other test runs threads meanwhile.
    run_child(
        "child_debug_mode_off_starts_no_thread",
        CHILD,
        &[(debug::DEBUG_VARIABLE, None)],
    );
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_env_variable_turns_debug_mode_on() {
    if !in_child(CHILD) {
        return;
    }
    let threshold_seen = debug::block_on(async { debug::is_enabled() });
    assert!(threshold_seen);
    println!("child_env_variable_turns_debug_mode_on: done");
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_env_variable_garbage_is_refused() {
    if !in_child(CHILD) {
        return;
    }
    let panic = std::panic::catch_unwind(|| debug::block_on(async {})).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    let value = std::env::var(debug::DEBUG_VARIABLE).unwrap();
    assert_eq!(
        *message,
        format!(
            "SMOL_OFFLOAD_DEBUG must be 1 or a threshold such as 50ms or 1s, got {value:?}: \
             unset it to leave debug mode off"
        )
    );
    assert!(!debug::is_enabled());
    println!("child_env_variable_garbage_is_refused: done");
}

#[test]
fn the_environment_variable_turns_debug_mode_on_or_is_refused() {
    for value in ["1", "20ms", "0.5s"] {
        run_child(
            "child_env_variable_turns_debug_mode_on",
            CHILD,
            &[(debug::DEBUG_VARIABLE, Some(value))],
        );
    }
    for value in ["0", "on", "fast"] {
        run_child(
            "child_env_variable_garbage_is_refused",
            CHILD,
            &[(debug::DEBUG_VARIABLE, Some(value))],
        );
    }
}
