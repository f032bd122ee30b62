//! The real node: a one-node cluster at the current Kubernetes release
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
//! containerd with runc and CNI, kube-proxy, a CSI driver with the
//! external-provisioner and csi-snapshotter sidecars, the snapshot
//! controller) and a Garage S3 on the node's address, started by
//! `tests/env/node-up.sh` once per test process, on first use. The kubestow
//! image (`just image`) is imported into containerd; every kubestow pod runs
//! it.
//!
//! The node's network names and addresses are fixed (see node-up.sh), so one
//! node runs per machine: a leftover from a killed run is taken down first.
//! It is taken down when the test process exits, unless
//! `KUBESTOW_KEEP_TEST_ENV` is set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::Instant;

use super::process::{deathsig_command, spawn_supervised};
use super::{KEEP_ENV, off_runtime};

/// Where node-up.sh keeps its state; fixed, like its network names.
const NODE_DIR: &str = "/tmp/kubestow-node-it";
/// The image tag pods use (node-up.sh imports the tar under this name).
pub const IMAGE: &str = "localhost/kubestow:dev";

/// A running node cluster.
pub struct Node {
    dir: PathBuf,
    s3: BTreeMap<String, String>,
}

static NODE: LazyLock<Node> = LazyLock::new(|| off_runtime(Node::start));

/// The node cluster, started on first use (about a minute).
pub fn get() -> &'static Node {
    &NODE
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    repo_root().join("tests/env/node-up.sh")
}

/// The image archive `just image` writes.
pub fn image_tar() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("image/kubestow-image.tar")
}

impl Node {
    fn start() -> Node {
        let started = Instant::now();
        let tar = image_tar();
        assert!(
            tar.is_file(),
            "node tests: no image archive at {}; run `just image` (`just test` does)",
            tar.display()
        );
        let dir = PathBuf::from(NODE_DIR);
        if dir.exists() {
            eprintln!("node env: taking down a leftover node in {NODE_DIR}");
            let _ = node_script(&dir, "down").status();
        }
        let log = PathBuf::from(format!("{NODE_DIR}.up.log"));
        let out = std::fs::File::create(&log).expect("node-up log");
        let status = node_script(&dir, "up")
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .status()
            .expect("running tests/env/node-up.sh up");
        // Registered before the check, so a half-started node goes too.
        if std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
            eprintln!(
                "node env: kept after the run; `KUBESTOW_NODE_DIR={NODE_DIR} just node down` stops it"
            );
        } else {
            down_at_exit();
        }
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            panic!(
                "node env: node-up.sh up failed ({status}); last lines of {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let s3 = std::fs::read_to_string(dir.join("s3.env"))
            .expect("node-up.sh writes s3.env")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        eprintln!("node env: ready in {:.1?}", started.elapsed());
        Node { dir, s3 }
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// `kubectl --kubeconfig=<admin>`.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig().display()));
        cmd
    }

    /// S3 settings of the node's Garage: `AWS_ENDPOINT_URL` (on the node
    /// IP, reachable from pods and from this host), `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `STOW_BUCKET`.
    pub fn s3(&self, key: &str) -> &str {
        self.s3
            .get(key)
            .unwrap_or_else(|| panic!("node env: {key} missing from s3.env"))
    }

    /// The host directory that holds a CSI volume's data.
    pub fn csi_volume_dir(&self, handle: &str) -> PathBuf {
        self.dir.join("csi/volumes").join(handle)
    }

    /// containerd's socket, for `ctr`.
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd/containerd.sock")
    }

    /// Runs a node-up.sh subcommand and returns its stdout.
    pub fn script(&self, cmd: &str) -> String {
        let out = node_script(&self.dir, cmd)
            .output()
            .expect("running node-up.sh");
        assert!(
            out.status.success(),
            "node-up.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn node_script(dir: &Path, cmd: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg(script())
        .arg(cmd)
        .env("KUBESTOW_NODE_DIR", dir)
        .env("KUBESTOW_IMAGE_TAR", image_tar())
        .env("KUBESTOW_IMAGE", IMAGE)
        .stdin(Stdio::null());
    c
}

/// `node-up.sh down` when this process exits: a shell waiting for its
/// parent-death signal, as the other servers' clean-up does.
fn down_at_exit() {
    let script = r#"trap 'kill $! 2>/dev/null; KUBESTOW_NODE_DIR="$1" bash "$0" down >"$1.down.log" 2>&1; exit 0' TERM
while :; do sleep 86400 & wait $!; done"#;
    let mut cmd = deathsig_command("TERM", Path::new("/bin/sh"));
    cmd.arg("-c")
        .arg(script)
        .arg(script_path_string())
        .arg(NODE_DIR)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Err(e) = spawn_supervised(cmd) {
        eprintln!("node env: cannot start the clean-up process: {e}");
    }
}

fn script_path_string() -> String {
    script().display().to_string()
}
