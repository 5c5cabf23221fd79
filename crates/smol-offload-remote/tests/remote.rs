//! `RemotePool` against a real `redis-server` on loopback: each test starts its own private
//! instance on a free port and its own worker processes (this test binary run again in worker
//! mode), and kills them all when it ends, also when it fails.

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::process::{Child, Command};
use std::time::Duration;

use common::{Workers, block_on, in_child};
use redis_server::{RedisServer, record, skip_without_redis_server};
use smol_offload::{Executor, ProcessPool, ThreadPool, gather};
use smol_offload_remote::{Delivery, RemotePool, RemoteWorker};

#[ctor::ctor]
fn init() {
    smol_offload::init();
}

const KEY: &str = "remote-test-key-0123456789abcdef";
const WORKER_MARKER: &str = "SMOL_OFFLOAD_TEST_REMOTE_WORKER";

/// Starts this test binary again as a remote worker: `processes` local processes, serving
/// `queue`, with index `index` (the jobs can read it to say which worker ran them).
fn start_worker(
    exe: &std::path::Path,
    redis: &RedisServer,
    queue: &str,
    processes: usize,
    index: usize,
) -> Child {
    worker_command(exe, redis, queue, processes, index)
        .spawn()
        .unwrap()
}

/// The command of [`start_worker`], for more settings.
fn worker_command(
    exe: &std::path::Path,
    redis: &RedisServer,
    queue: &str,
    processes: usize,
    index: usize,
) -> Command {
    let mut command = common::worker_command(
        exe,
        "remote_worker_main",
        WORKER_MARKER,
        &redis.url(),
        queue,
    );
    command
        .env("TEST_PROCESSES", processes.to_string())
        .env("TEST_WORKER_INDEX", index.to_string());
    command
}

fn start_workers(redis: &RedisServer, queue: &str, count: usize, processes: usize) -> Workers {
    let exe = std::env::current_exe().unwrap();
    Workers(
        (0..count)
            .map(|index| start_worker(&exe, redis, queue, processes, index))
            .collect(),
    )
}

/// The body of every worker process: serve until killed.
#[test]
#[ignore = "runs as a remote worker in a child process, started by the tests"]
fn remote_worker_main() {
    if !in_child(WORKER_MARKER) {
        return;
    }
    let url = std::env::var(WORKER_MARKER).unwrap();
    let queue = std::env::var("TEST_QUEUE").unwrap();
    let processes = std::env::var("TEST_PROCESSES").unwrap().parse().unwrap();
    let prefetch = std::env::var("TEST_PREFETCH").map_or(1, |n| n.parse().unwrap());
    RemoteWorker::builder(&url)
        .queue(&queue)
        .workers(processes)
        .prefetch(prefetch)
        .key(KEY)
        .visibility_timeout(Duration::from_secs(1))
        .serve()
        .unwrap();
    println!("remote_worker_main: done");
}

fn pool(redis: &RedisServer, queue: &str) -> RemotePool {
    RemotePool::builder(&redis.url())
        .queue(queue)
        .key(KEY)
        .build()
        .unwrap()
}

fn blocks(n: u64) -> (u64, u64) {
    std::thread::sleep(Duration::from_millis(100));
    (n, n * n)
}

fn square(n: u64) -> u64 {
    n * n
}

fn fails(message: String) -> u32 {
    panic!("{message}")
}

/// Tells the test through Redis which process runs it (`pid worker-index`) and hangs, the first
/// time; returns its pid the next time.
fn report_and_hang((url, key): (String, String)) -> u32 {
    let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
    let attempt: u64 = redis::cmd("INCR")
        .arg(format!("{key}:attempts"))
        .query(&mut connection)
        .unwrap();
    if attempt == 1 {
        let index = std::env::var("TEST_WORKER_INDEX").unwrap();
        let line = format!("{} {index}", std::process::id());
        redis::cmd("RPUSH")
            .arg(&key)
            .arg(line)
            .query::<()>(&mut connection)
            .unwrap();
        std::thread::sleep(Duration::from_secs(600));
    }
    std::process::id()
}

/// Blocks until the stream `key` has had `count` entries (from its start), without polling.
fn wait_for_entries(connection: &mut redis::Connection, key: &str, count: usize) {
    let mut seen = 0;
    let mut last = "0".to_owned();
    while seen < count {
        let read: redis::streams::StreamReadReply = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(60_000)
            .arg("STREAMS")
            .arg(key)
            .arg(&last)
            .query(connection)
            .unwrap();
        for entry in read.keys.into_iter().flat_map(|key| key.ids) {
            seen += 1;
            last = entry.id;
        }
    }
}

fn pop(connection: &mut redis::Connection, key: &str) -> String {
    let (_, value): (String, String) = redis::cmd("BLPOP")
        .arg(key)
        .arg(60)
        .query(connection)
        .unwrap();
    value
}

async fn run_blocking_tasks(executor: &impl Executor) -> Vec<(u64, u64)> {
    let tasks = (0..6).map(|n| executor.run(blocks, n));
    gather(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn blocks_gives_the_same_results_remote_as_local() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let _workers = start_workers(&redis, "blocks", 3, 1);
    let remote = pool(&redis, "blocks");
    let threads = ThreadPool::new(3).unwrap();
    let processes = ProcessPool::new(3).unwrap();
    let expected = block_on(run_blocking_tasks(&threads));
    assert_eq!(block_on(run_blocking_tasks(&processes)), expected);
    assert_eq!(block_on(run_blocking_tasks(&remote)), expected);
    let panicked = block_on(remote.run(fails, "remote boom".to_owned())).unwrap_err();
    assert!(panicked.is_panic(), "{panicked}");
    assert_eq!(panicked.panic_message(), Some("remote boom"));
    let location = panicked.panic_location().unwrap_or_default();
    assert!(location.contains("tests/remote.rs"), "{location}");
    // Three jobs held at once by the three single-process workers: all of them have joined.
    let url = redis.url();
    let held: Vec<_> = (0..3)
        .map(|_| {
            remote.run(
                gated,
                (url.clone(), "blocks-report".into(), "blocks-gate".into()),
            )
        })
        .collect();
    let mut connection = redis.connection();
    let runners: std::collections::HashSet<String> = (0..3)
        .map(|_| pop(&mut connection, "blocks-report"))
        .collect();
    assert_eq!(runners.len(), 3, "{runners:?}");
    let fleet = remote.fleet().unwrap();
    assert_eq!(fleet.workers, 3, "{fleet:?}");
    assert_eq!(fleet.hosts.len(), 3, "{fleet:?}");
    assert_eq!(fleet.taken, 3, "{fleet:?}");
    for _ in 0..3 {
        open_gate(&mut connection, "blocks-gate");
    }
    block_on(gather(held));
}

#[test]
fn ten_thousand_tasks_on_two_workers_each_resolve_once() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let _workers = start_workers(&redis, "many", 2, 2);
    let remote = pool(&redis, "many");
    let n = 10_000u64;
    let results = block_on(gather((0..n).map(|i| remote.run(square, i))));
    assert_eq!(results.len() as u64, n);
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), (i as u64) * (i as u64));
    }
    let stats = remote.stats();
    assert_eq!((stats.completed, stats.queued), (n, 0), "{stats}");
}

#[test]
fn a_killed_worker_host_has_its_job_retried_on_the_other() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let mut workers = start_workers(&redis, "retry", 2, 1);
    let remote = pool(&redis, "retry");
    let task = remote.run(report_and_hang, (redis.url(), "retry-pids".to_owned()));
    let mut connection = redis.connection();
    let line = pop(&mut connection, "retry-pids");
    let (first_pid, index) = line.split_once(' ').unwrap();
    // Kill the whole worker (its processes die with it), as a machine that goes away.
    let _ = workers.0[index.parse::<usize>().unwrap()].kill();
    let second_pid = block_on(task).unwrap();
    assert_ne!(second_pid.to_string(), first_pid);
}

#[test]
fn a_killed_worker_process_fails_its_task_at_most_once() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let _workers = start_workers(&redis, "once", 1, 1);
    let remote = RemotePool::builder(&redis.url())
        .queue("once")
        .key(KEY)
        .delivery(Delivery::AtMostOnce)
        .build()
        .unwrap();
    let task = remote.run(report_and_hang, (redis.url(), "once-pids".to_owned()));
    let mut connection = redis.connection();
    let line = pop(&mut connection, "once-pids");
    let pid: i32 = line.split_once(' ').unwrap().0.parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let err = block_on(task).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.worker_pid(), Some(pid as u32));
    // The worker replaced its process and goes on.
    assert_eq!(block_on(remote.run(square, 5)).unwrap(), 25);
}

#[test]
fn a_job_with_a_bad_signature_is_refused() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let honest = pool(&redis, "forged");
    // A forger with another key gets past the fleet's key check: the fleet's fingerprint is
    // deleted while it starts, and put back.
    let mut connection = redis.connection();
    let fingerprint: String = redis::cmd("GETDEL")
        .arg("smol-offload:forged:fingerprint")
        .query(&mut connection)
        .unwrap();
    let forger = RemotePool::builder(&redis.url())
        .queue("forged")
        .key("another-key-0123456789abcdef")
        .build()
        .unwrap();
    redis::cmd("SET")
        .arg("smol-offload:forged:fingerprint")
        .arg(fingerprint)
        .query::<()>(&mut connection)
        .unwrap();
    let _workers = start_workers(&redis, "forged", 1, 1);
    let forged = forger.run(record, (redis.url(), "forged-ran".to_owned(), 1));
    let refusal = pop(&mut connection, "smol-offload:forged:refusals");
    assert!(refusal.contains("signature"), "{refusal}");
    drop(forged);
    // Garbage written straight to the stream is refused too.
    redis::cmd("XADD")
        .arg("smol-offload:forged:jobs")
        .arg("*")
        .arg("job")
        .arg("garbage")
        .query::<()>(&mut connection)
        .unwrap();
    let refusal = pop(&mut connection, "smol-offload:forged:refusals");
    assert!(refusal.contains("not a signed message"), "{refusal}");
    // A job of the fleet still runs, and the forged one never did.
    assert_eq!(
        block_on(honest.run(record, (redis.url(), "forged-ran".to_owned(), 2))).unwrap(),
        2
    );
    assert_eq!(what_ran(&mut connection, "forged-ran"), [2]);
}

#[test]
fn a_job_from_another_build_is_refused() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    // The same code in an executable with one more byte: another build, by its hash.
    let dir = std::env::temp_dir().join(format!("smol-offload-remote-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let other = dir.join("other-build");
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    bytes.push(0);
    std::fs::write(&other, bytes).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let _workers = Workers(vec![start_worker(&other, &redis, "build", 1, 0)]);
    let remote = pool(&redis, "build");
    let err = block_on(remote.run(square, 3)).unwrap_err();
    assert!(err.to_string().contains("another build"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cancelled_queued_job_never_runs() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let remote = pool(&redis, "cancel");
    let url = redis.url();
    let victim = remote.run(record, (url.clone(), "cancel-ran".to_owned(), 1));
    let err = block_on(victim.cancel()).unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    let marker = remote.run(record, (url.clone(), "cancel-ran".to_owned(), 2));
    // The pool writes in order: once the marker's job is on the stream, so is the withdrawal.
    let mut connection = redis.connection();
    wait_for_entries(&mut connection, "smol-offload:cancel:jobs", 2);
    let _workers = start_workers(&redis, "cancel", 1, 1);
    assert_eq!(block_on(marker).unwrap(), 2);
    assert_eq!(what_ran(&mut connection, "cancel-ran"), [2]);
}

#[test]
fn an_unreachable_broker_or_a_missing_key_is_a_clear_build_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let err = RemotePool::builder(&url).key(KEY).build().unwrap_err();
    assert!(
        err.to_string().contains("could not reach the redis broker"),
        "{err}"
    );
    if std::env::var_os(smol_offload_remote::env::KEY_VARIABLE).is_none() {
        let err = RemotePool::connect(&url).unwrap_err();
        assert!(err.to_string().contains("signing key"), "{err}");
    }
}

/// Tells the test through Redis that it runs (`pid worker-index`), then waits for the gate.
fn gated((url, report, gate): (String, String, String)) -> u32 {
    let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
    let index = std::env::var("TEST_WORKER_INDEX").unwrap();
    redis::cmd("RPUSH")
        .arg(&report)
        .arg(format!("{} {index}", std::process::id()))
        .query::<()>(&mut connection)
        .unwrap();
    let _: (String, String) = redis::cmd("BLPOP")
        .arg(&gate)
        .arg(0)
        .query(&mut connection)
        .unwrap();
    std::process::id()
}

/// What the `record` calls logged to the list `key`, in order.
fn what_ran(connection: &mut redis::Connection, key: &str) -> Vec<u32> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(connection)
        .unwrap()
}

fn open_gate(connection: &mut redis::Connection, gate: &str) {
    redis::cmd("RPUSH")
        .arg(gate)
        .arg("open")
        .query::<()>(connection)
        .unwrap();
}

#[test]
fn sigterm_stops_a_worker_after_the_job_it_holds() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let mut workers = start_workers(&redis, "term", 1, 1);
    let remote = pool(&redis, "term");
    let url = redis.url();
    let held = remote.run(
        gated,
        (url, "term-report".to_owned(), "term-gate".to_owned()),
    );
    let mut connection = redis.connection();
    pop(&mut connection, "term-report");
    let serve_pid = workers.0[0].id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    open_gate(&mut connection, "term-gate");
    assert!(block_on(held).is_ok());
    let status = workers.0[0].wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_task_past_the_pool_timeout_fails_and_its_job_never_runs() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let _workers = start_workers(&redis, "timeout", 1, 1);
    let url = redis.url();
    let plain = pool(&redis, "timeout");
    let busy = plain.run(
        gated,
        (
            url.clone(),
            "timeout-report".to_owned(),
            "timeout-gate".to_owned(),
        ),
    );
    let mut connection = redis.connection();
    pop(&mut connection, "timeout-report");
    // The only process is busy: this job waits in the queue past its pool's timeout.
    let impatient = RemotePool::builder(&url)
        .queue("timeout")
        .key(KEY)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let late = impatient.run(record, (url.clone(), "timeout-ran".to_owned(), 1));
    let err = block_on(late).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // And through `Task::timeout` on a pool without one.
    let err = block_on(
        plain
            .run(record, (url.clone(), "timeout-ran".to_owned(), 2))
            .timeout(Duration::from_millis(200)),
    )
    .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // A pool writes in order: once its next job is on the stream, so is the withdrawal. (The
    // impatient pool's job also carries its expiry, past by now, which workers check.)
    let third = plain.run(record, (url.clone(), "timeout-ran".to_owned(), 3));
    wait_for_entries(&mut connection, "smol-offload:timeout:jobs", 4);
    open_gate(&mut connection, "timeout-gate");
    block_on(busy).unwrap();
    // The queue is first in, first out: once this one ran, the two withdrawn jobs were seen.
    assert_eq!(block_on(third).unwrap(), 3);
    assert_eq!(what_ran(&mut connection, "timeout-ran"), [3]);
}

#[test]
fn dropping_the_last_handle_resolves_every_pending_task() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let remote = pool(&redis, "dropped");
    let clone = remote.clone();
    let tasks: Vec<_> = (0..10).map(|n| clone.run(square, n)).collect();
    drop(remote);
    assert!(!tasks[0].is_finished(), "a clone still holds the pool");
    drop(clone);
    for task in tasks {
        let err = block_on(task).unwrap_err();
        assert!(err.is_shutdown(), "{err}");
    }
}

#[test]
fn a_killed_worker_host_fails_its_task_at_most_once() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let mut workers = start_workers(&redis, "host-once", 2, 1);
    let remote = RemotePool::builder(&redis.url())
        .queue("host-once")
        .key(KEY)
        .delivery(Delivery::AtMostOnce)
        .build()
        .unwrap();
    let task = remote.run(report_and_hang, (redis.url(), "host-once-pids".to_owned()));
    let mut connection = redis.connection();
    let line = pop(&mut connection, "host-once-pids");
    let index: usize = line.split_once(' ').unwrap().1.parse().unwrap();
    let serve_pid = workers.0[index].id();
    let _ = workers.0[index].kill();
    let err = block_on(task).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.worker_pid(), Some(serve_pid));
    let attempts: u32 = redis::cmd("GET")
        .arg("host-once-pids:attempts")
        .query(&mut connection)
        .unwrap();
    assert_eq!(attempts, 1, "at most once: the job never ran again");
}

#[test]
fn a_killed_worker_process_has_its_job_retried_at_least_once() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let _workers = start_workers(&redis, "again", 1, 1);
    let remote = pool(&redis, "again");
    let task = remote.run(report_and_hang, (redis.url(), "again-pids".to_owned()));
    let mut connection = redis.connection();
    let line = pop(&mut connection, "again-pids");
    let pid: i32 = line.split_once(' ').unwrap().0.parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The worker lives on and runs the job again at once, in the process that replaced it.
    let second = block_on(task).unwrap();
    assert_ne!(second as i32, pid);
    let attempts: u32 = redis::cmd("GET")
        .arg("again-pids:attempts")
        .query(&mut connection)
        .unwrap();
    assert_eq!(attempts, 2);
}

fn always_dies(_: ()) -> u32 {
    std::process::abort()
}

#[test]
fn a_job_that_always_kills_its_process_fails_after_three_runs() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let _workers = start_workers(&redis, "poison", 1, 1);
    let remote = pool(&redis, "poison");
    let err = block_on(remote.run(always_dies, ())).unwrap_err();
    assert!(err.to_string().contains("ran 3 times"), "{err}");
    assert!(err.to_string().contains("kills its worker"), "{err}");
    // The worker still serves.
    assert_eq!(block_on(remote.run(square, 4)).unwrap(), 16);
}

/// Waits, without a time limit of its own (the watchdog has one), until `ready` holds.
fn wait_until(mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "waited a minute");
        std::thread::yield_now();
    }
}

#[test]
fn a_remote_task_is_started_once_a_worker_claims_it() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let remote = pool(&redis, "started");
    let url = redis.url();
    let task = remote.run(
        gated,
        (url, "started-report".to_owned(), "started-gate".to_owned()),
    );
    let mut connection = redis.connection();
    wait_for_entries(&mut connection, "smol-offload:started:jobs", 1);
    assert!(!task.is_started(), "no worker yet");
    let _workers = start_workers(&redis, "started", 1, 1);
    pop(&mut connection, "started-report");
    // A job that has run for a millisecond is announced by its worker: the pool hears of it.
    wait_until(|| task.is_started());
    assert!(!task.is_finished());
    assert_eq!(remote.stats().running, 1, "{}", remote.stats());
    open_gate(&mut connection, "started-gate");
    assert!(block_on(task).is_ok());
}

/// The client id and job id of the first job on `queue`'s stream, and its entry id.
fn first_job(connection: &mut redis::Connection, queue: &str) -> (String, u64, String) {
    let key = format!("smol-offload:{queue}:jobs");
    wait_for_entries(connection, &key, 1);
    let read: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query(connection)
        .unwrap();
    let entry = &read.ids[0];
    let bytes: Vec<u8> = entry.get("job").unwrap();
    // A signed message is (body, signature); a job's body opens with its client and id.
    let ((body, _), _): ((Vec<u8>, Vec<u8>), _) = postcard::take_from_bytes(&bytes).unwrap();
    let ((client, id), _): ((String, u64), _) = postcard::take_from_bytes(&body).unwrap();
    (client, id, entry.id.clone())
}

#[test]
fn cancelling_a_job_a_worker_claimed_first_waits_for_its_result() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let remote = pool(&redis, "claimed");
    let url = redis.url();
    let task = remote.run(record, (url, "claimed-ran".to_owned(), 7));
    let mut connection = redis.connection();
    let (client, id, entry) = first_job(&mut connection, "claimed");
    // A worker claimed the job and vanished before its started notice reached the pool.
    redis::cmd("SET")
        .arg(format!("smol-offload:claimed:claim:{client}:{id}"))
        .arg(format!("{entry} 1 vanished-host:1"))
        .query::<()>(&mut connection)
        .unwrap();
    let mut cancelling = Box::pin(task.cancel());
    assert!(block_on(futures_lite::future::poll_once(&mut cancelling)).is_none());
    // The withdrawal lost the claim: the task counts as started, and is not cancelled.
    wait_until(|| remote.stats().running == 1);
    // The job is taken over (at least once) by a worker that joins now, and its result is
    // what cancelling gives.
    let _workers = start_workers(&redis, "claimed", 1, 1);
    assert_eq!(block_on(cancelling).unwrap(), 7);
    assert_eq!(what_ran(&mut connection, "claimed-ran"), [7]);
}

#[test]
fn cancelling_a_job_before_any_worker_claims_it_withdraws_it() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let remote = pool(&redis, "withdrawn");
    let url = redis.url();
    let task = remote.run(record, (url.clone(), "withdrawn-ran".to_owned(), 1));
    let mut connection = redis.connection();
    let (client, id, _) = first_job(&mut connection, "withdrawn");
    let err = block_on(task.cancel()).unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    // The pool won the claim: no worker can take it any more.
    let claim: String = redis::cmd("GET")
        .arg(format!("smol-offload:withdrawn:claim:{client}:{id}"))
        .query(&mut connection)
        .unwrap();
    assert_eq!(claim, "cancelled");
    let stats = remote.stats();
    assert_eq!(
        (stats.cancelled, stats.running, stats.queued),
        (1, 0, 0),
        "{stats}"
    );
    let _workers = start_workers(&redis, "withdrawn", 1, 1);
    assert_eq!(
        block_on(remote.run(record, (url, "withdrawn-ran".to_owned(), 2))).unwrap(),
        2
    );
    assert_eq!(what_ran(&mut connection, "withdrawn-ran"), [2]);
}

#[test]
fn a_killed_prefetching_worker_host_has_every_job_it_held_retried() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let exe = std::env::current_exe().unwrap();
    let holder = worker_command(&exe, &redis, "prefetch", 1, 0)
        .env("TEST_PREFETCH", "4")
        .spawn()
        .unwrap();
    let mut workers = Workers(vec![holder]);
    let remote = pool(&redis, "prefetch");
    let hanging = remote.run(report_and_hang, (redis.url(), "prefetch-pids".to_owned()));
    let mut connection = redis.connection();
    let line = pop(&mut connection, "prefetch-pids");
    let first_pid = line.split_once(' ').unwrap().0.to_owned();
    // Held by the same worker, behind the hanging job: claimed, so started, but not run.
    let waiting: Vec<_> = (0..3).map(|n| remote.run(square, n)).collect();
    wait_until(|| waiting.iter().all(|task| task.is_started()));
    assert!(waiting.iter().all(|task| !task.is_finished()));
    assert_eq!(remote.fleet().unwrap().taken, 4);
    // The whole worker goes away; the other takes over all four after the visibility timeout.
    workers.0.push(start_worker(&exe, &redis, "prefetch", 1, 1));
    let _ = workers.0[0].kill();
    let second_pid = block_on(hanging).unwrap();
    assert_ne!(second_pid.to_string(), first_pid);
    let squares: Vec<u64> = block_on(gather(waiting))
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(squares, [0, 1, 4]);
}

#[test]
fn cancelling_a_running_remote_job_gives_its_result_not_cancelled() {
    if skip_without_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let _workers = start_workers(&redis, "running", 1, 1);
    let remote = pool(&redis, "running");
    let url = redis.url();
    let task = remote.run(
        gated,
        (url, "running-report".to_owned(), "running-gate".to_owned()),
    );
    let mut connection = redis.connection();
    pop(&mut connection, "running-report");
    // The job runs: whether or not its started notice has come yet, cancelling cannot stop
    // it, so it waits for the job and gives its result.
    let mut cancelling = Box::pin(task.cancel());
    assert!(block_on(futures_lite::future::poll_once(&mut cancelling)).is_none());
    open_gate(&mut connection, "running-gate");
    let pid = block_on(cancelling).unwrap();
    assert_ne!(pid, std::process::id());
    let stats = remote.stats();
    assert_eq!((stats.completed, stats.cancelled), (1, 0), "{stats}");
}

const SIGNALS_MARKER: &str = "SMOL_OFFLOAD_TEST_SERVE_SIGNALS";

/// What `signal` does to this process now, from `/proc/self/status`: `"caught"` by a handler,
/// `"ignored"`, or `"default"`.
fn disposition(signal: nix::sys::signal::Signal) -> &'static str {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = |field: &str| {
        let line = status.lines().find(|line| line.starts_with(field)).unwrap();
        u64::from_str_radix(line[field.len()..].trim(), 16).unwrap()
    };
    let bit = 1u64 << (signal as i32 - 1);
    if mask("SigCgt:") & bit != 0 {
        "caught"
    } else if mask("SigIgn:") & bit != 0 {
        "ignored"
    } else {
        "default"
    }
}

#[test]
fn serve_gives_back_sigint_and_sigterm_when_it_returns() {
    use std::os::unix::process::ExitStatusExt;
    let redis = RedisServer::start();
    let name = "child_serve_gives_back_sigint_and_sigterm";
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SIGNALS_MARKER, redis.url())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!(
        "{}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(stdout.contains("dispositions restored"), "{report}");
    // Ctrl-C stops the program again once the worker has stopped.
    assert_eq!(
        output.status.signal(),
        Some(nix::sys::signal::Signal::SIGINT as i32),
        "{report}"
    );
}

/// A program that embeds a worker, stops it with its flag, then expects `SIGINT` and `SIGTERM`
/// to do what they did before: here the default action and being ignored.
#[test]
#[ignore = "runs in a child process, started by serve_gives_back_sigint_and_sigterm_when_it_returns"]
fn child_serve_gives_back_sigint_and_sigterm() {
    use nix::sys::signal::{SigHandler, Signal, raise, signal};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !in_child(SIGNALS_MARKER) {
        return;
    }
    let url = std::env::var(SIGNALS_MARKER).unwrap();
    // SAFETY: `SigIgn` installs no handler code.
    unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) }.unwrap();
    let before = [disposition(Signal::SIGINT), disposition(Signal::SIGTERM)];
    assert_eq!(before, ["default", "ignored"]);
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stop = stop.clone();
        // Stops the worker once it is serving: once it catches `SIGINT`.
        std::thread::spawn(move || {
            while disposition(Signal::SIGINT) != "caught" {
                std::thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    RemoteWorker::builder(&url)
        .queue("signals")
        .workers(1)
        .key(KEY)
        .stop_flag(stop)
        .serve()
        .unwrap();
    stopper.join().unwrap();
    let after = [disposition(Signal::SIGINT), disposition(Signal::SIGTERM)];
    assert_eq!(
        after, before,
        "SIGINT and SIGTERM, before and after serve()"
    );
    println!("dispositions restored");
    raise(Signal::SIGINT).unwrap();
    println!("still alive after SIGINT");
}
