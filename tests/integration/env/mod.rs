//! Shared integration-test environment: real etcd, kube-apiserver,
//! kube-controller-manager (Kubernetes 1.20.2 by default, or a current release:
//! see below) and Garage S3, all on 127.0.0.1, started lazily once per test
//! process and shared by every test.
//!
//! Tests get isolation from fresh names instead of fresh servers:
//!
//! ```ignore
//! let (kube, ns) = env::namespace("my-test").await;
//! let (s3, bucket) = env::bucket("my-test").await;
//! Command::new(kubestow)
//!     .env("KUBECONFIG", env::kubeconfig_path())
//!     .envs(env::s3_env())
//! ```
//!
//! Each `#[tokio::test]` has its own runtime, so the shared state holds no
//! runtime-bound objects: every helper builds fresh clients.
//!
//! Binaries come from `$KUBESTOW_CACHE` (default `~/.cache/kubestow`).
//! `KUBESTOW_TEST_K8S_VERSION` picks the Kubernetes release:
//!
//! - `1.20.2` (the default; the oldest release the chart supports):
//!   kube-apiserver and kube-controller-manager built by `just setup`
//!   (tests/env/setup.sh), etcd 3.4 from `PATH` (Debian's etcd-server);
//! - a current release, e.g. `1.37.2` (what `just test` runs second): the
//!   binaries `just setup-node` builds (tests/env/setup-node.sh; a version
//!   other than its default 1.37.2 needs `KUBESTOW_K8S_VERSION=<version>`
//!   there too) in `kubernetes-<version>/bin`, and its etcd 3.6.16 in
//!   `etcd-3.6.16/bin`; each directory must hold the `BUILD_SECONDS` that
//!   marks a finished build.
//!
//! The flags follow the release (no `--insecure-port` or controller-manager
//! `--port` after 1.23; no token Secrets for ServiceAccounts from 1.24 on).
//! Tests that depend on the release ask the cluster ([`server_version`]).
//!
//! Set `KUBESTOW_KEEP_TEST_ENV=1` to keep the state directory (logs of every
//! server) after the run; otherwise it is deleted when the test process
//! exits. Servers never outlive the test process (see `process`).

#![allow(dead_code)] // Not every test module uses every helper.

mod cluster;
mod garage;
pub mod node;
mod pki;
mod process;
mod pushgateway;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::Instant;

pub use cluster::Cluster;

use cluster::Etcd;
use garage::Garage;
use pki::Pki;

/// Env var: directory holding the built servers (same rule as setup.sh).
pub const CACHE_ENV: &str = "KUBESTOW_CACHE";
/// Env var: keep the state directory after the test process ends.
pub const KEEP_ENV: &str = "KUBESTOW_KEEP_TEST_ENV";

/// Env var: the Kubernetes release to test against, `1.20.2` (default) or a
/// current one built by `just setup-node`, e.g. `1.37.2`.
pub const K8S_VERSION_ENV: &str = "KUBESTOW_TEST_K8S_VERSION";

/// The default release, built by tests/env/setup.sh.
const LEGACY_K8S_VERSION: &str = "1.20.2";
/// Cache key of its build recipe; must match `K8S_DEBIAN_BUILD` in
/// tests/env/k8s-debian.sh (setup.sh's `K8S_BUILD`).
const LEGACY_K8S_BUILD: &str = "1.20.2-reflect2fix";
/// The oldest current release accepted: from here on no `--insecure-port`,
/// no controller-manager `--port` and no ServiceAccount token Secrets.
const CURRENT_MIN_MINOR: u32 = 24;
/// tests/env/setup-node.sh's default `K8S_VERSION` (for the set-up hint).
const NODE_DEFAULT_K8S_VERSION: &str = "1.37.2";
/// etcd for the current releases; must match `ETCD_VERSION` in
/// tests/env/setup-node.sh.
const CURRENT_ETCD_VERSION: &str = "3.6.16";
const GARAGE_VERSION: &str = "2.5.0";
const DIR_PREFIX: &str = "kubestow-it-";

/// Everything started for this test process.
pub struct TestEnv {
    dir: PathBuf,
    pki: Pki,
    etcd: Etcd,
    cluster: Cluster,
    second: OnceLock<Cluster>,
    garage: Garage,
    pushgateway: OnceLock<pushgateway::Pushgateway>,
    tls: OnceLock<tls::TlsFront>,
}

static ENV: LazyLock<TestEnv> = LazyLock::new(|| off_runtime(TestEnv::start));
static RELEASE: LazyLock<K8sRelease> = LazyLock::new(K8sRelease::from_env);
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The environment, started on first use (blocks ~10–30 s the first time).
pub fn get() -> &'static TestEnv {
    &ENV
}

/// The Kubernetes release under test, from `KUBESTOW_TEST_K8S_VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sRelease {
    /// `1.20.2`, `1.37.2`.
    pub version: String,
    /// The minor version: 20, 37.
    pub minor: u32,
}

impl K8sRelease {
    fn from_env() -> K8sRelease {
        let version = match std::env::var(K8S_VERSION_ENV) {
            Ok(v) if !v.trim().is_empty() => v.trim().trim_start_matches('v').to_owned(),
            _ => LEGACY_K8S_VERSION.to_owned(),
        };
        let parts: Vec<u32> = version
            .split('.')
            .map(|p| p.parse::<u32>())
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        let minor = match parts[..] {
            [1, minor, _] => minor,
            _ => panic!(
                "test env: {K8S_VERSION_ENV}={version:?} is not a Kubernetes version like \
                 {LEGACY_K8S_VERSION} or 1.37.2"
            ),
        };
        if version != LEGACY_K8S_VERSION && minor < CURRENT_MIN_MINOR {
            panic!(
                "test env: {K8S_VERSION_ENV}={version} is not supported: use \
                 {LEGACY_K8S_VERSION} (`just setup`) or a release from 1.{CURRENT_MIN_MINOR} on \
                 built by `just setup-node`, e.g. 1.37.2"
            );
        }
        K8sRelease { version, minor }
    }

    /// The default 1.20.2, built by `just setup`; every other release comes
    /// from `just setup-node`.
    pub fn is_legacy(&self) -> bool {
        self.version == LEGACY_K8S_VERSION
    }

    /// `--insecure-port` (apiserver) and `--port` (controller-manager) exist
    /// (removed in 1.24).
    pub fn has_insecure_ports(&self) -> bool {
        self.minor < CURRENT_MIN_MINOR
    }

    /// The token controller gives every ServiceAccount a token Secret
    /// (LegacyServiceAccountTokenNoAutoGeneration is on from 1.24).
    pub fn has_token_secrets(&self) -> bool {
        self.minor < CURRENT_MIN_MINOR
    }
}

/// The release the environment runs (read from `KUBESTOW_TEST_K8S_VERSION`;
/// starts nothing).
pub fn k8s_release() -> &'static K8sRelease {
    &RELEASE
}

/// What the main cluster's apiserver reports at `/version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// `v1.20.2`.
    pub git_version: String,
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    /// At least `1.<minor>`.
    pub fn at_least(&self, minor: u32) -> bool {
        self.major > 1 || (self.major == 1 && self.minor >= minor)
    }

    /// `1.20.2`: the form the chart's `--kube-version` takes.
    pub fn semver(&self) -> &str {
        self.git_version.trim_start_matches('v')
    }
}

/// Asks the main cluster its version.
pub async fn server_version() -> ServerVersion {
    cluster().server_version().await
}

/// The main cluster.
pub fn cluster() -> &'static Cluster {
    &get().cluster
}

/// A second, independent cluster: another apiserver + controller-manager on
/// the same etcd under another `--etcd-prefix` ("another cluster" for
/// restore/migration tests). Started on first use.
pub fn second_cluster() -> &'static Cluster {
    let env = get();
    env.second.get_or_init(|| {
        off_runtime(|| {
            let started = Instant::now();
            let cluster = Cluster::start(
                "second",
                "/kubestow-second",
                &env.dir.join("second"),
                &env.pki,
                &env.etcd,
            );
            eprintln!(
                "test env: second cluster ready in {:.1?}",
                started.elapsed()
            );
            cluster
        })
    })
}

/// The main cluster's server processes by name (kube-apiserver, etcd,
/// kube-controller-manager), for benchmarks that account their CPU time.
pub fn server_pids() -> [(&'static str, u32); 3] {
    let env = get();
    [
        ("kube-apiserver", env.cluster.apiserver.pid()),
        ("etcd", env.etcd.proc.pid()),
        (
            "kube-controller-manager",
            env.cluster.controller_manager.pid(),
        ),
    ]
}

/// Admin kubeconfig of the main cluster, for `KUBECONFIG=` in subprocesses.
pub fn kubeconfig_path() -> &'static Path {
    cluster().kubeconfig_path()
}

/// A fresh admin client for the main cluster.
pub async fn kube_client() -> kube::Client {
    cluster().client().await
}

/// Creates a fresh, settled namespace in the main cluster; see
/// [`Cluster::namespace`].
pub async fn namespace(hint: &str) -> (kube::Client, String) {
    cluster().namespace(hint).await
}

/// Creates a fresh bucket the test key owns and returns a client for it
/// (path-style, static credentials, region `garage`) and its name.
pub async fn bucket(hint: &str) -> (aws_sdk_s3::Client, String) {
    let env = get();
    let name = unique_name(hint);
    env.garage.create_bucket(&name).await;
    (env.garage.client(), name)
}

/// A fresh S3 client for the test key, without creating a bucket.
pub fn s3_client() -> aws_sdk_s3::Client {
    get().garage.client()
}

/// The environment variables that point an AWS SDK (e.g. the kubestow binary)
/// at Garage with the test key.
pub fn s3_env() -> Vec<(&'static str, String)> {
    let garage = &get().garage;
    vec![
        ("AWS_ENDPOINT_URL", garage.s3_url.clone()),
        ("AWS_ACCESS_KEY_ID", garage.key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret_key.clone()),
        ("AWS_REGION", garage::REGION.to_owned()),
    ]
}

/// Garage's S3 endpoint, `http://127.0.0.1:<port>`.
pub fn s3_endpoint() -> &'static str {
    &get().garage.s3_url
}

/// URL of a Prometheus Pushgateway, started on first use.
pub fn pushgateway_url() -> &'static str {
    let env = get();
    &env.pushgateway
        .get_or_init(|| pushgateway::Pushgateway::start(&env.dir.join("pushgateway")))
        .url
}

/// Garage behind TLS with a private CA (env::tls), started on first use.
pub fn s3_tls() -> &'static tls::TlsFront {
    let env = get();
    env.tls.get_or_init(|| {
        let backend = env.garage.s3_url.trim_start_matches("http://").to_owned();
        tls::TlsFront::start(&env.dir.join("s3-tls"), &backend)
    })
}

/// The per-process state directory (server logs live here).
pub fn state_dir() -> &'static Path {
    &get().dir
}

/// `t-<slug of hint>-<counter>`: a valid, process-unique DNS label and S3
/// bucket name.
pub fn unique_name(hint: &str) -> String {
    let mut slug: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    slug = slug
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    slug.truncate(40);
    let slug = slug.trim_end_matches('-');
    let slug = if slug.is_empty() { "x" } else { slug };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("t-{slug}-{n}")
}

impl TestEnv {
    fn start() -> TestEnv {
        let started = Instant::now();
        // Fail fast on a bad version or missing binaries, before starting anything.
        let release = k8s_release();
        binary::etcd();
        binary::kubernetes("kube-apiserver");
        binary::kubernetes("kube-controller-manager");
        binary::garage();
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("creating the test-env state directory")
            .keep();
        if std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
            eprintln!(
                "test env: state (and server logs) kept in {}",
                dir.display()
            );
        } else {
            process::remove_at_exit(&dir);
        }

        let pki = Pki::generate(&dir.join("pki"));
        let (etcd, cluster, garage) = std::thread::scope(|s| {
            let garage = s.spawn(|| Garage::start(&dir.join("garage")));
            let etcd = Etcd::start(&dir);
            let cluster = Cluster::start("main", "/kubestow-main", &dir.join("main"), &pki, &etcd);
            let garage = garage
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (etcd, cluster, garage)
        });
        eprintln!(
            "test env: Kubernetes {} ready in {:.1?} (state in {})",
            release.version,
            started.elapsed(),
            dir.display()
        );
        TestEnv {
            dir,
            pki,
            etcd,
            cluster,
            second: OnceLock::new(),
            garage,
            pushgateway: OnceLock::new(),
            tls: OnceLock::new(),
        }
    }
}

/// Runs blocking start-up code on a plain thread: it builds its own tokio
/// runtime, which must not happen inside a test's runtime.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Deletes state dirs of earlier test processes that are gone (normally the
/// exit-time clean-up does it; this catches a killed clean-up process).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn random_hex(bytes: usize) -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("system randomness");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Locating the servers built by `just setup`.
mod binary {
    use std::path::PathBuf;

    use super::process::{find_in_path, is_executable};
    use super::{
        CACHE_ENV, CURRENT_ETCD_VERSION, GARAGE_VERSION, K8S_VERSION_ENV, LEGACY_K8S_BUILD,
        NODE_DEFAULT_K8S_VERSION, k8s_release,
    };

    fn cache_dir() -> PathBuf {
        match std::env::var_os(CACHE_ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let home = std::env::var_os("HOME").expect("HOME is not set");
                PathBuf::from(home).join(".cache/kubestow")
            }
        }
    }

    fn require(path: PathBuf) -> PathBuf {
        if !is_executable(&path) {
            panic!(
                "test env: {} is missing; run `just setup` (tests/env/setup.sh) to install the \
                 test servers (cache dir: ${CACHE_ENV}, default ~/.cache/kubestow)",
                path.display()
            );
        }
        path
    }

    /// `bin/<name>` in a build directory of `just setup-node`, which holds
    /// `BUILD_SECONDS` once the build finished.
    fn require_node(dir: PathBuf, name: &str) -> PathBuf {
        let path = dir.join("bin").join(name);
        if !is_executable(&path) || !dir.join("BUILD_SECONDS").is_file() {
            let release = k8s_release();
            let how = if release.version == NODE_DEFAULT_K8S_VERSION {
                "`just setup-node k8s etcd`".to_owned()
            } else {
                format!(
                    "`KUBESTOW_K8S_VERSION={} just setup-node k8s etcd`",
                    release.version
                )
            };
            panic!(
                "test env: {} is missing (or its build did not finish: no BUILD_SECONDS); \
                 {K8S_VERSION_ENV}={} needs the binaries built by `just setup-node` \
                 (tests/env/setup-node.sh): run {how} (cache dir: ${CACHE_ENV}, default \
                 ~/.cache/kubestow)",
                path.display(),
                release.version
            );
        }
        path
    }

    pub(crate) fn kubernetes(name: &str) -> PathBuf {
        let release = k8s_release();
        if release.is_legacy() {
            require(
                cache_dir()
                    .join(format!("kubernetes-{LEGACY_K8S_BUILD}"))
                    .join("bin")
                    .join(name),
            )
        } else {
            require_node(
                cache_dir().join(format!("kubernetes-{}", release.version)),
                name,
            )
        }
    }

    pub(crate) fn garage() -> PathBuf {
        require(
            cache_dir()
                .join(format!("garage-{GARAGE_VERSION}"))
                .join("bin/garage"),
        )
    }

    pub(crate) fn etcd() -> PathBuf {
        if !k8s_release().is_legacy() {
            return require_node(
                cache_dir().join(format!("etcd-{CURRENT_ETCD_VERSION}")),
                "etcd",
            );
        }
        find_in_path("etcd").unwrap_or_else(|| {
            panic!(
                "test env: `etcd` is not on PATH; run `just setup` (tests/env/setup.sh), which \
                 installs Debian's etcd-server"
            )
        })
    }
}
