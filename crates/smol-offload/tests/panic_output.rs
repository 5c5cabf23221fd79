//! What a task's panic prints, and where its error says it happened: a worker process prints
//! nothing by default and names itself when asked to print; a thread pool's panic still goes
//! through the application's own hook; both pools' errors name `file:line:column`.
//!
//! Each scenario runs in a fresh child process (this binary again, one `child_*` test
//! selected), because the panic hook is process-global and its stderr is what is checked.

use std::process::Command;

use smol_offload::{Error, Executor, ProcessPool, ThreadPool};

mod common;

use common::{block_on, in_child};

#[ctor::ctor]
fn start_fork_server() {
    smol_offload::init();
}

const MARKER: &str = "SMOL_OFFLOAD_PANIC_OUTPUT_CHILD";

/// The line of the `panic!` in [`fails`].
const FAILS_LINE: u32 = line!() + 3;

fn fails(n: u32) -> u32 {
    panic!("task {n} gave up")
}

/// Runs the `child_*` test `name` in a child process and returns its stdout and stderr, after
/// checking that it passed and ran its body.
fn run_child_capturing(name: &str) -> (String, String) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MARKER, "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success() && stdout.contains(&format!("{name}: done")),
        "child {name} failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

/// Checks that `err` is the panic of `fails(n)`, located in this file.
fn assert_located(err: &Error, n: u32) {
    let message = format!("task {n} gave up");
    assert_eq!(err.panic_message(), Some(message.as_str()), "{err}");
    let location = err.panic_location().expect("the pool saw where");
    assert!(
        location.starts_with(&format!("{}:{FAILS_LINE}:", file!())),
        "{location}"
    );
    assert_eq!(
        err.to_string(),
        format!("the task panicked at {location}: {message}")
    );
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_process_task_panics_quietly() {
    if !in_child(MARKER) {
        return;
    }
    let pool = ProcessPool::new(1).unwrap();
    let err = block_on(pool.run(fails, 1)).unwrap_err();
    assert_located(&err, 1);
    println!("child_process_task_panics_quietly: done");
}

#[test]
fn a_worker_prints_no_panic_by_default() {
    let (_, stderr) = run_child_capturing("child_process_task_panics_quietly");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("gave up"), "{stderr}");
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_process_task_panics_loudly() {
    if !in_child(MARKER) {
        return;
    }
    let pool = ProcessPool::builder()
        .workers(1)
        .print_panics(true)
        .build()
        .unwrap();
    let err = block_on(pool.run(fails, 2)).unwrap_err();
    assert_located(&err, 2);
    println!("worker {}", pool.pids()[0]);
    println!("child_process_task_panics_loudly: done");
}

#[test]
fn a_worker_asked_to_print_panics_names_itself() {
    let (stdout, stderr) = run_child_capturing("child_process_task_panics_loudly");
    let pid = stdout
        .lines()
        // libtest may print "test <name> ... " on the same line first.
        .find_map(|line| Some(line.split_once("worker ")?.1.trim()))
        .expect("the child printed its worker's pid");
    let expected = format!(
        "smol-offload worker {pid} panicked at {}:{FAILS_LINE}:",
        file!()
    );
    assert!(stderr.contains(&expected), "{expected:?} in\n{stderr}");
    assert!(stderr.contains("task 2 gave up"), "{stderr}");
    assert!(!stderr.contains("thread 'main'"), "{stderr}");
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_thread_pool_panics_through_the_applications_hook() {
    if !in_child(MARKER) {
        return;
    }
    // The application's own hook, set before any pool: the pool's hook calls it.
    std::panic::set_hook(Box::new(|info| {
        let message = info.payload().downcast_ref::<String>().cloned();
        let message = message.or_else(|| {
            let text = info.payload().downcast_ref::<&str>()?;
            Some((*text).to_owned())
        });
        eprintln!("application hook: {}", message.unwrap_or_default());
    }));
    let pool = ThreadPool::new(1).unwrap();
    let err = block_on(pool.run(fails, 3)).unwrap_err();
    assert_located(&err, 3);
    // Off the pool, the application's hook alone, as before.
    let outside = std::thread::spawn(|| panic!("outside the pool")).join();
    assert!(outside.is_err());
    println!("child_thread_pool_panics_through_the_applications_hook: done");
}

#[test]
fn a_thread_pool_panic_still_reaches_the_applications_hook() {
    let (_, stderr) = run_child_capturing("child_thread_pool_panics_through_the_applications_hook");
    assert!(
        stderr.contains("application hook: task 3 gave up"),
        "{stderr}"
    );
    assert!(
        stderr.contains("application hook: outside the pool"),
        "{stderr}"
    );
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_panics_in_serde_code_on_the_callers_side_are_located() {
    if !in_child(MARKER) {
        return;
    }
    std::panic::set_hook(Box::new(|_| {}));
    let pool = ProcessPool::new(1).unwrap();
    let err = block_on(pool.run(takes_refusal, Refusal)).unwrap_err();
    let location = err.panic_location().expect("the pool saw where");
    assert!(
        location.starts_with(&format!("{}:{REFUSAL_LINE}:", file!())),
        "{location}"
    );
    assert_eq!(err.panic_message(), Some("Refusal panics on the way out"));
    println!("child_panics_in_serde_code_on_the_callers_side_are_located: done");
}

#[test]
fn panics_in_serde_code_on_the_callers_side_are_located() {
    run_child_capturing("child_panics_in_serde_code_on_the_callers_side_are_located");
}

/// Its `Serialize` panics, here in the caller.
#[derive(Debug, serde::Deserialize)]
struct Refusal;

/// The line of the `panic!` in `Refusal`'s `Serialize`.
const REFUSAL_LINE: u32 = line!() + 4;

impl serde::Serialize for Refusal {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("Refusal panics on the way out")
    }
}

fn takes_refusal(_: Refusal) -> u8 {
    unreachable!("the argument never leaves")
}

/// The line of the `panic!` in [`init_fails`].
const INIT_FAILS_LINE: u32 = line!() + 3;

fn init_fails(what: String) {
    panic!("could not load {what}")
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_initializer_panics_loudly() {
    if !in_child(MARKER) {
        return;
    }
    let pool = ProcessPool::builder()
        .workers(1)
        .print_panics(true)
        .initializer(init_fails, "the model".to_string())
        .build()
        .unwrap();
    let err = block_on(pool.run(fails, 3)).unwrap_err();
    assert!(err.is_initializer_failure(), "{err}");
    assert!(
        err.to_string().contains("could not load the model"),
        "{err}"
    );
    println!("child_initializer_panics_loudly: done");
}

#[test]
fn an_initializer_panic_is_printed_with_print_panics() {
    let (_, stderr) = run_child_capturing("child_initializer_panics_loudly");
    let expected = format!("panicked at {}:{INIT_FAILS_LINE}:", file!());
    assert!(stderr.contains(&expected), "{expected:?} in\n{stderr}");
    assert!(stderr.contains("smol-offload worker "), "{stderr}");
    assert!(stderr.contains("could not load the model"), "{stderr}");
    // The task never ran.
    assert!(!stderr.contains("task 3 gave up"), "{stderr}");
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_initializer_panics_quietly() {
    if !in_child(MARKER) {
        return;
    }
    let pool = ProcessPool::builder()
        .workers(1)
        .initializer(init_fails, "the model".to_string())
        .build()
        .unwrap();
    let err = block_on(pool.run(fails, 4)).unwrap_err();
    assert!(err.is_initializer_failure(), "{err}");
    println!("child_initializer_panics_quietly: done");
}

#[test]
fn an_initializer_panic_is_quiet_by_default() {
    let (_, stderr) = run_child_capturing("child_initializer_panics_quietly");
    assert!(!stderr.contains("could not load"), "{stderr}");
}

#[test]
#[ignore = "runs in a child process, started by the test that names it"]
fn child_pools_leave_the_panic_hook_alone_when_asked() {
    if !in_child(MARKER) {
        return;
    }
    smol_offload::leave_panic_hook_alone();
    // The application's own hook, set first; its allocation tells it apart from any other.
    let name = String::from("application hook");
    let hook: Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> =
        Box::new(move |info| eprintln!("{name}: called for {info}"));
    let address = std::ptr::from_ref(&*hook).cast::<()>();
    std::panic::set_hook(hook);
    let threads = ThreadPool::new(1).unwrap();
    let processes = ProcessPool::new(1).unwrap();
    let dedicated = smol_offload::spawn_dedicated("panics", || panic!("dedicated gave up"));
    let thread_err = block_on(threads.run(fails, 5)).unwrap_err();
    assert!(block_on(dedicated).unwrap_err().is_panic());
    assert_eq!(thread_err.panic_message(), Some("task 5 gave up"));
    assert_eq!(thread_err.panic_location(), None, "no hook saw where");
    // The worker process is the crate's own: its hook still tells where.
    assert_located(&block_on(processes.run(fails, 6)).unwrap_err(), 6);
    let still = std::panic::take_hook();
    assert_eq!(
        std::ptr::from_ref(&*still).cast::<()>(),
        address,
        "the application's hook is still the one installed"
    );
    println!("child_pools_leave_the_panic_hook_alone_when_asked: done");
}

#[test]
fn pools_leave_the_panic_hook_alone_when_asked() {
    let (_, stderr) = run_child_capturing("child_pools_leave_the_panic_hook_alone_when_asked");
    assert!(stderr.contains("application hook: called"), "{stderr}");
}
