//! `RemotePool` and remote workers over TLS (`rediss://`) and with Redis ACL users, against a
//! real `redis-server` on loopback: certificates are made by the test (a private certificate
//! authority, a broker certificate for 127.0.0.1, a client certificate), and each test starts
//! its own broker and workers and kills them when it ends.

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::path::{Path, PathBuf};
use std::process::Child;

use common::{block_on, in_child};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use redis_server::{RedisServer, skip_without_redis_server};
use smol_offload::{Executor, gather};
use smol_offload_remote::env::{TLS_CA_VARIABLE, TLS_CERT_VARIABLE, TLS_KEY_VARIABLE};
use smol_offload_remote::{RemotePool, RemoteWorker};

#[ctor::ctor]
fn init() {
    smol_offload::init();
}

const KEY: &str = "remote-tls-test-key-0123456789abcdef";
const WORKER_MARKER: &str = "SMOL_OFFLOAD_TEST_REMOTE_TLS_WORKER";

/// A certificate authority: its certificate's PEM and what signs with its key.
struct Authority {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Authority {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` signed by this authority, for `usage`: its PEM and its key's.
    fn sign(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "smol-offload test");
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The test's PEM files in a directory of their own, removed when dropped.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(test: &str) -> Files {
        let dir = std::env::temp_dir().join(format!(
            "smol-offload-remote-tls-{}-{test}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A broker that speaks only TLS, with a certificate for 127.0.0.1 signed by a private
/// authority whose certificate is in `ca.pem`; with `verify_clients`, it also wants a client
/// certificate signed by that authority, written to `client.pem` and `client-key.pem`.
struct TlsBroker {
    redis: RedisServer,
    files: Files,
    authority: Authority,
}

impl TlsBroker {
    fn start(test: &str, verify_clients: bool) -> TlsBroker {
        let files = Files::new(test);
        let authority = Authority::new("smol-offload test authority");
        let (cert, key) = authority.sign(
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let ca = files.write("ca.pem", &authority.pem);
        let cert = files.write("broker.pem", &cert);
        let key = files.write("broker-key.pem", &key);
        if verify_clients {
            let (cert, key) = authority.sign(&["client"], ExtendedKeyUsagePurpose::ClientAuth);
            files.write("client.pem", &cert);
            files.write("client-key.pem", &key);
        }
        let redis = RedisServer::start_tls(&cert, &key, &ca, verify_clients);
        TlsBroker {
            redis,
            files,
            authority,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.files.dir.join(name)
    }
}

/// A remote worker (this test binary run again), killed when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a worker of `url` with two processes on `queue`; its TLS files come from the
/// environment variables in `tls`, as a deployed worker's would.
fn start_worker(url: &str, queue: &str, tls: &[(&str, &Path)]) -> Worker {
    let exe = std::env::current_exe().unwrap();
    let mut command =
        common::worker_command(&exe, "remote_tls_worker_main", WORKER_MARKER, url, queue);
    command
        .env_remove(TLS_CA_VARIABLE)
        .env_remove(TLS_CERT_VARIABLE)
        .env_remove(TLS_KEY_VARIABLE);
    for (variable, path) in tls {
        command.env(variable, path);
    }
    Worker(command.spawn().unwrap())
}

/// The body of every worker process: serve until killed.
#[test]
#[ignore = "runs as a remote worker in a child process, started by the tests"]
fn remote_tls_worker_main() {
    if !in_child(WORKER_MARKER) {
        return;
    }
    let url = std::env::var(WORKER_MARKER).unwrap();
    let queue = std::env::var("TEST_QUEUE").unwrap();
    RemoteWorker::builder(&url)
        .queue(&queue)
        .workers(2)
        .key(KEY)
        .serve()
        .unwrap();
}

fn square(n: u64) -> u64 {
    n * n
}

/// Runs 100 squares on `pool` and checks every result.
fn assert_runs_tasks(pool: &RemotePool) {
    let results = block_on(gather((0..100u64).map(|n| pool.run(square, n))));
    for (n, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), (n * n) as u64);
    }
}

/// These tests set the TLS variables only in the workers' environment: the test process
/// itself must not inherit them, or the refusals below would not be tested.
fn assert_no_tls_variables() {
    for variable in [TLS_CA_VARIABLE, TLS_CERT_VARIABLE, TLS_KEY_VARIABLE] {
        assert!(
            std::env::var_os(variable).is_none(),
            "unset {variable} to run these tests"
        );
    }
}

#[test]
fn a_pool_over_rediss_runs_tasks_on_a_worker_that_trusts_a_private_authority() {
    if skip_without_redis_server() {
        return;
    }
    assert_no_tls_variables();
    let broker = TlsBroker::start("runs", false);
    let url = broker.redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    // The worker trusts the authority through the environment, the pool through its builder.
    let _worker = start_worker(&url, "tls", &[(TLS_CA_VARIABLE, &broker.path("ca.pem"))]);
    let pool = RemotePool::builder(&url)
        .queue("tls")
        .key(KEY)
        .tls_ca_file(broker.path("ca.pem"))
        .build()
        .unwrap();
    assert_runs_tasks(&pool);
    assert_eq!(pool.fleet().unwrap().hosts.len(), 1);
}

#[test]
fn a_broker_certificate_from_an_untrusted_authority_is_refused() {
    if skip_without_redis_server() {
        return;
    }
    assert_no_tls_variables();
    let broker = TlsBroker::start("untrusted", false);
    let url = broker.redis.url();
    let other = Authority::new("another authority");
    let other_ca = broker.files.write("other-ca.pem", &other.pem);
    // Another private authority, and the system's roots (none of which signed it).
    for builder in [
        RemotePool::builder(&url).tls_ca_file(&other_ca),
        RemotePool::builder(&url),
    ] {
        let err = builder.key(KEY).build().unwrap_err().to_string();
        assert!(err.contains("could not reach the redis broker"), "{err}");
        assert!(
            err.contains("invalid peer certificate: UnknownIssuer"),
            "{err}"
        );
        assert!(err.contains(TLS_CA_VARIABLE), "{err}");
    }
    // A broker certificate for another host, signed by the trusted authority, is refused too.
    let (cert, key) = broker
        .authority
        .sign(&["broker.example"], ExtendedKeyUsagePurpose::ServerAuth);
    let cert = broker.files.write("wrong-host.pem", &cert);
    let key = broker.files.write("wrong-host-key.pem", &key);
    let wrong_host = RedisServer::start_tls(&cert, &key, &broker.path("ca.pem"), false);
    let err = RemotePool::builder(&wrong_host.url())
        .key(KEY)
        .tls_ca_file(broker.path("ca.pem"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("could not reach the redis broker"), "{err}");
    assert!(err.contains("certificate not valid for name"), "{err}");
    // A worker that does not trust the broker exits with the same error instead of serving.
    let err = RemoteWorker::builder(&url)
        .key(KEY)
        .tls_ca_file(&other_ca)
        .serve()
        .unwrap_err()
        .to_string();
    assert!(err.contains("could not reach the redis broker"), "{err}");
}

#[test]
fn a_broker_that_checks_client_certificates_takes_only_clients_that_have_one() {
    if skip_without_redis_server() {
        return;
    }
    assert_no_tls_variables();
    let broker = TlsBroker::start("mutual", true);
    let url = broker.redis.url();
    let without = RemotePool::builder(&url)
        .key(KEY)
        .tls_ca_file(broker.path("ca.pem"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        without.contains("could not reach the redis broker"),
        "{without}"
    );
    assert!(without.contains("CertificateRequired"), "{without}");
    let _worker = start_worker(
        &url,
        "mutual",
        &[
            (TLS_CA_VARIABLE, &broker.path("ca.pem")),
            (TLS_CERT_VARIABLE, &broker.path("client.pem")),
            (TLS_KEY_VARIABLE, &broker.path("client-key.pem")),
        ],
    );
    let pool = RemotePool::builder(&url)
        .queue("mutual")
        .key(KEY)
        .tls_ca_file(broker.path("ca.pem"))
        .tls_client_cert(broker.path("client.pem"), broker.path("client-key.pem"))
        .build()
        .unwrap();
    assert_runs_tasks(&pool);
}

#[test]
fn tls_settings_with_a_plain_url_and_unreadable_files_are_refused() {
    assert_no_tls_variables();
    let files = Files::new("settings");
    let ca = files.write("ca.pem", &Authority::new("unused").pem);
    let err = RemotePool::builder("redis://127.0.0.1:1")
        .key(KEY)
        .tls_ca_file(&ca)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a rediss:// one"), "{err}");
    let missing = files.dir.join("missing.pem");
    let err = RemotePool::builder("rediss://127.0.0.1:1")
        .key(KEY)
        .tls_ca_file(&missing)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("could not read the TLS certificate authority file"),
        "{err}"
    );
    assert!(err.contains("missing.pem"), "{err}");
}

#[test]
fn an_acl_user_with_a_password_runs_tasks_and_a_wrong_password_is_refused() {
    if skip_without_redis_server() {
        return;
    }
    // Only the user `fleet` may connect, with the rights docs/remote.md recommends: its own
    // keys, no dangerous commands; the default (password-less) user is off.
    let redis = RedisServer::start_with(&[
        "--user",
        "fleet",
        "on",
        ">fleet-password",
        "~smol-offload:*",
        "+@read",
        "+@write",
        "+@blocking",
        "+@connection",
        "+@transaction",
        "-@dangerous",
        "--user",
        "default",
        "off",
    ]);
    let url = format!("redis://fleet:fleet-password@127.0.0.1:{}", redis.port);
    let _worker = start_worker(&url, "acl", &[]);
    let pool = RemotePool::builder(&url)
        .queue("acl")
        .key(KEY)
        .build()
        .unwrap();
    assert_runs_tasks(&pool);
    assert_eq!(pool.fleet().unwrap().hosts.len(), 1);
    for wrong in [
        format!("redis://fleet:wrong-password@127.0.0.1:{}", redis.port),
        redis.url(),
    ] {
        let err = RemotePool::builder(&wrong)
            .key(KEY)
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("could not reach the redis broker"), "{err}");
        assert!(!err.contains("wrong-password"), "the password leaks: {err}");
    }
}
