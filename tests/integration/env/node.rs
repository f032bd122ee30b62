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
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

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

    /// The host directory that holds a CSI volume's data: each of the two
    /// driver instances keeps its own state directory.
    pub fn csi_volume_dir(&self, driver: &str, handle: &str) -> PathBuf {
        let state = if driver.starts_with("plain.") {
            "csi-plain"
        } else {
            "csi"
        };
        self.dir.join(state).join("volumes").join(handle)
    }

    /// The kubelet's root directory (`--root-dir`), for `STOW_KUBELET_DIR`.
    pub fn kubelet_dir(&self) -> PathBuf {
        self.dir.join("kubelet/root")
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

// Helpers for tests and the demo on the node: kubectl, Helm, Jobs, and the
// data in CSI volumes (written and read on the host, where the driver keeps
// it).

pub const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs a command that must succeed; returns stdout.
pub fn ok(mut cmd: Command) -> String {
    let out = cmd.output().expect("spawning a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn kubectl(args: &[&str]) -> String {
    let mut cmd = get().kubectl();
    cmd.args(args);
    ok(cmd)
}

pub fn kubectl_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(&all)).expect("kubectl printed JSON")
}

pub fn apply(manifest: &str) {
    let mut cmd = get().kubectl();
    cmd.args(["apply", "-f", "-"]);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl apply");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}\n{manifest}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn namespace(name: &str, level: &str) {
    apply(&format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {name}
  labels:
    pod-security.kubernetes.io/enforce: {level}
    pod-security.kubernetes.io/enforce-version: latest
"#
    ));
    wait_until(
        "the namespace's default ServiceAccount",
        Duration::from_secs(30),
        || {
            let mut c = get().kubectl();
            c.args(["-n", name, "get", "serviceaccount", "default"]);
            c.output().ok().filter(|o| o.status.success())
        },
    );
}

/// The host directory of a claim's CSI volume.
pub fn claim_dir(ns: &str, claim: &str) -> std::path::PathBuf {
    let pvc = kubectl_json(&["-n", ns, "get", "pvc", claim]);
    let pv = pvc["spec"]["volumeName"]
        .as_str()
        .unwrap_or_else(|| panic!("{ns}/{claim} is not bound: {pvc}"));
    let pv = kubectl_json(&["get", "pv", pv]);
    let handle = pv["spec"]["csi"]["volumeHandle"]
        .as_str()
        .unwrap_or_else(|| panic!("PV of {ns}/{claim} is not a CSI volume: {pv}"));
    get().csi_volume_dir(pv["spec"]["csi"]["driver"].as_str().unwrap_or(""), handle)
}

/// Pseudo-random bytes from a seed (xorshift), so data is incompressible
/// and differs per file.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a small tree with the shapes restores get wrong: nested
/// directories, odd modes, owners, a symlink, an empty file.
pub fn fill(dir: &Path, seed: u64, big: usize) {
    use std::os::unix::fs::{chown, symlink};
    std::fs::create_dir_all(dir.join("db/wal")).unwrap();
    std::fs::write(dir.join("db/data.bin"), noise(seed, big)).unwrap();
    std::fs::write(dir.join("db/wal/0001"), noise(seed + 1, 70_000)).unwrap();
    std::fs::write(dir.join("README"), format!("volume {seed}\n")).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    symlink("db/data.bin", dir.join("current")).unwrap();
    std::fs::set_permissions(
        dir.join("db/wal/0001"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(dir.join("db/wal"), std::fs::Permissions::from_mode(0o700)).unwrap();
    chown(dir.join("db"), Some(1000), Some(1000)).unwrap();
    chown(dir.join("db/wal/0001"), Some(1001), Some(1002)).unwrap();
}

/// Every entry under `dir`: type, mode, owner, size and content digest (or
/// link target). Times are left out: a restore sets them, but the CSI
/// driver's copy for a snapshot does too, so they prove nothing here.
pub fn digest(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                "dir".to_owned()
            } else {
                let data = std::fs::read(&p).unwrap();
                let d = ring::digest::digest(&ring::digest::SHA256, &data);
                format!("file {} {}", data.len(), hex::encode(d.as_ref()))
            };
            out.insert(
                rel,
                format!(
                    "{what} mode {:o} owner {}:{}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ),
            );
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

pub fn random_password() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 16];
    SystemRandom::new().fill(&mut b).unwrap();
    hex::encode(b)
}

/// Chart values for the node: the local image, the node's Garage, and the
/// given plans.
pub fn values(sys: &str, password: &str, plans: Value) -> Value {
    let n = get();
    json!({
        "image": {"repository": "localhost/kubestow", "tag": "dev", "pullPolicy": "Never"},
        "repository": format!("s3://{}/{sys}", n.s3("STOW_BUCKET")),
        "secret": {
            "password": password,
            "env": {
                "AWS_ACCESS_KEY_ID": n.s3("AWS_ACCESS_KEY_ID"),
                "AWS_SECRET_ACCESS_KEY": n.s3("AWS_SECRET_ACCESS_KEY"),
            },
        },
        "env": {"AWS_ENDPOINT_URL": n.s3("AWS_ENDPOINT_URL"), "AWS_REGION": n.s3("AWS_REGION")},
        "plans": plans,
        "restore": {"enabled": true},
    })
}

/// `helm install` / `helm upgrade` through tests/helm/release.py.
pub fn helm(action: &str, ns: &str, release: &str, values: &Value) -> u64 {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), values.to_string()).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm/release.py"))
        .arg(action)
        .arg(get().kubeconfig())
        .arg(ns)
        .arg(release)
        .arg(file.path());
    let out = ok(cmd);
    let res: Value = serde_json::from_str(out.trim()).expect("release.py prints JSON");
    assert_eq!(res["ok"], true, "helm {action}: {res}");
    res["revision"].as_u64().expect("a revision")
}

/// The manifest Helm applied for `revision` of `release`.
pub fn helm_manifest(ns: &str, release: &str, revision: u64) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm/release.py"))
        .args(["manifest"])
        .arg(get().kubeconfig())
        .args([ns, release, &revision.to_string()]);
    let res: Value = serde_json::from_str(ok(cmd).trim()).expect("release.py prints JSON");
    assert_eq!(res["ok"], true, "helm manifest: {res}");
    res["manifest"].as_str().unwrap().to_owned()
}

/// Waits for a Job to complete or fail: (completed, the Job).
pub fn wait_finished(ns: &str, job: &str) -> (bool, Value) {
    wait_until(&format!("Job {ns}/{job}"), JOB_TIMEOUT, || {
        let j = kubectl_json(&["-n", ns, "get", "job", job]);
        let conds = j["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conds
            .iter()
            .find(|c| c["status"] == "True" && (c["type"] == "Complete" || c["type"] == "Failed"))
            .map(|c| (c["type"] == "Complete", j.clone()))
    })
}

/// The termination message of a Job's last pod, parsed: where CI reads
/// the summary without the logs.
pub fn termination_summary(ns: &str, job: &str) -> Value {
    let pods = kubectl_json(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        &format!("job-name={job}"),
        "--sort-by=.metadata.creationTimestamp",
    ]);
    let last = pods["items"].as_array().unwrap().last().cloned();
    let message = last
        .as_ref()
        .and_then(|p| {
            p["status"]["containerStatuses"][0]["state"]["terminated"]["message"].as_str()
        })
        .unwrap_or_else(|| panic!("no termination message on the pods of {ns}/{job}: {pods}"));
    serde_json::from_str(message.trim()).unwrap_or_else(|e| {
        panic!("the termination message of {ns}/{job} is not JSON ({e}): {message}")
    })
}

/// Waits for a Job to finish; panics with its pods' logs if it failed.
pub fn wait_job(ns: &str, job: &str) -> Value {
    let done = wait_finished(ns, job);
    if !done.0 {
        let mut logs = get().kubectl();
        logs.args(["-n", ns, "logs", &format!("job/{job}"), "--tail=60"]);
        let out = logs.output().unwrap();
        panic!(
            "Job {ns}/{job} failed: {}\n{}",
            done.1["status"],
            String::from_utf8_lossy(&out.stdout)
        );
    }
    done.1
}

/// The summary a Job's pod printed last.
pub fn job_summary(ns: &str, job: &str) -> Value {
    let logs = kubectl(&["-n", ns, "logs", &format!("job/{job}")]);
    logs.lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v["status"].is_string())
        })
        .unwrap_or_else(|| panic!("no summary in the logs of {ns}/{job}:\n{logs}"))
}

/// Tests that inject a fault into a part every test shares (the
/// csi-snapshotter) hold this exclusively; every other node test holds it
/// shared, so a fault never lands in another test.
static FAULTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by a node test that injects no shared fault.
pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    FAULTS.read().unwrap_or_else(|e| e.into_inner())
}

/// Held by a node test that stops or breaks a shared part.
pub fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    FAULTS.write().unwrap_or_else(|e| e.into_inner())
}

/// `kubectl create job --from=cronjob/NAME JOB`. A current kubectl no longer
/// reads batch/v1beta1 CronJobs (the only kind 1.20 serves): there the Job
/// is made the same way by hand, from the CronJob's jobTemplate with the
/// annotation and owner kubectl sets.
pub fn create_job_from_cronjob(ns: &str, cronjob: &str, job: &str) {
    let cj = kubectl_json(&["-n", ns, "get", "cronjob", cronjob]);
    if cj["apiVersion"] == "batch/v1" {
        kubectl(&[
            "-n",
            ns,
            "create",
            "job",
            &format!("--from=cronjob/{cronjob}"),
            job,
        ]);
        return;
    }
    apply(&job_by_hand(ns, cronjob, job, &cj).to_string());
}

/// A Job as the CronJob controller makes one when the schedule fires: the
/// jobTemplate, owned by the CronJob, without the annotation of a manual
/// run. For schedule guards without waiting for the schedule.
pub fn create_scheduled_like_job(ns: &str, cronjob: &str, job: &str) {
    let cj = kubectl_json(&["-n", ns, "get", "cronjob", cronjob]);
    let mut made = job_by_hand(ns, cronjob, job, &cj);
    made["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("cronjob.kubernetes.io/instantiate");
    apply(&made.to_string());
}

/// The reasons of kubestow's Events on `kind` `name`, sorted (their times
/// have a resolution of a second).
pub fn event_reasons(ns: &str, kind: &str, name: &str) -> Vec<String> {
    let events = kubectl_json(&[
        "-n",
        ns,
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.kind={kind},involvedObject.name={name}"),
    ]);
    let mut reasons: Vec<String> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"]["component"] == "kubestow")
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    reasons.sort();
    reasons
}

/// The Job `kubectl create job --from=cronjob/NAME JOB` makes, built from
/// the CronJob `cj` (batch/v1beta1 too).
fn job_by_hand(ns: &str, cronjob: &str, job: &str, cj: &Value) -> Value {
    let template = &cj["spec"]["jobTemplate"];
    let mut annotations = template["metadata"]["annotations"].clone();
    if !annotations.is_object() {
        annotations = json!({});
    }
    annotations["cronjob.kubernetes.io/instantiate"] = json!("manual");
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job,
            "namespace": ns,
            "labels": template["metadata"]["labels"],
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": cj["apiVersion"], "kind": "CronJob", "name": cronjob,
                "uid": cj["metadata"]["uid"], "controller": true,
            }],
        },
        "spec": template["spec"],
    })
}

/// A restore Job from the chart's restore template (CronJob
/// `<release>-restore`), made as README "Restore" makes one: the Job that
/// `kubectl create job --from` would create (`--dry-run=client -o json`; on
/// 1.20 the same Job by hand), with this run's variables replacing any of
/// the same name, then created.
pub fn create_restore_job(ns: &str, template: &str, job: &str, run_env: &[(&str, &str)]) {
    let cj = kubectl_json(&["-n", ns, "get", "cronjob", template]);
    let mut manifest = if cj["apiVersion"] == "batch/v1" {
        kubectl_json(&[
            "-n",
            ns,
            "create",
            "job",
            job,
            &format!("--from=cronjob/{template}"),
            "--dry-run=client",
        ])
    } else {
        job_by_hand(ns, template, job, &cj)
    };
    let env = manifest["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array_mut()
        .expect("the template's container has env");
    env.retain(|e| !run_env.iter().any(|(k, _)| e["name"] == *k));
    env.extend(run_env.iter().map(|(k, v)| json!({"name": k, "value": v})));
    let mut cmd = get().kubectl();
    cmd.args(["create", "-f", "-"]);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl create");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl create restore Job {ns}/{job}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The mover pods in a namespace (they carry the run's label; the chart's
/// own Job pods do not).
pub fn kubestow_pods(ns: &str) -> Vec<Value> {
    kubectl_json(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/managed-by=kubestow,kubestow.io/run",
    ])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// SIGKILL to a container's process through containerd (`containerd://<id>`
/// or the bare id), as the OOM killer or a node fault would; true if the
/// signal was delivered.
pub fn kill_container(id: &str) -> bool {
    Command::new("ctr")
        .arg("-a")
        .arg(get().containerd_socket())
        .args(["-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL"])
        .arg(id.trim_start_matches("containerd://"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Watches a tenant namespace for the whole of a run and records anything
/// of kubestow's in it: Secrets, Jobs, pods, ServiceAccounts and claims
/// that carry kubestow's label or name. One `kubectl get --watch` per kind,
/// restarted if it ends (the namespace may be deleted and restored).
pub struct TenantWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    events: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    children: std::sync::Arc<std::sync::Mutex<Vec<std::process::Child>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const WATCHED: &[&str] = &[
    "secrets",
    "jobs",
    "pods",
    "serviceaccounts",
    "persistentvolumeclaims",
];

/// Whether an object is kubestow's: its label, or its name.
fn is_kubestows(obj: &Value) -> bool {
    obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubestow"
        || obj["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kubestow"))
}

impl TenantWatch {
    pub fn start(ns: &str) -> TenantWatch {
        use std::sync::atomic::Ordering;
        let mut w = TenantWatch {
            stop: Default::default(),
            seen: Default::default(),
            events: Default::default(),
            children: Default::default(),
            threads: Vec::new(),
        };
        for kind in WATCHED {
            let (stop, seen, events, children) = (
                w.stop.clone(),
                w.seen.clone(),
                w.events.clone(),
                w.children.clone(),
            );
            let (ns, kind) = (ns.to_owned(), kind.to_string());
            w.threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let mut cmd = get().kubectl();
                    cmd.args(["-n", &ns, "get", &kind, "--watch", "--output-watch-events"])
                        .args(["-o", "json"])
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::null());
                    let Ok(mut child) = cmd.spawn() else {
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    };
                    let out = child.stdout.take().unwrap();
                    children.lock().unwrap().push(child);
                    let stream =
                        serde_json::Deserializer::from_reader(std::io::BufReader::new(out))
                            .into_iter::<Value>();
                    for ev in stream {
                        let Ok(ev) = ev else { break };
                        events.fetch_add(1, Ordering::SeqCst);
                        let obj = &ev["object"];
                        if is_kubestows(obj) {
                            seen.lock().unwrap().push(format!(
                                "{} {kind} {}/{}",
                                ev["type"].as_str().unwrap_or(""),
                                ns,
                                obj["metadata"]["name"].as_str().unwrap_or("")
                            ));
                        }
                    }
                    if !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }));
        }
        // Each watch lists what exists first: wait until all have spoken
        // (a fresh namespace has at least its default ServiceAccount).
        wait_until(
            "the tenant watches to start",
            Duration::from_secs(30),
            || (w.events.load(Ordering::SeqCst) > 0).then_some(()),
        );
        w
    }

    /// Stops the watches; returns everything of kubestow's they saw.
    pub fn finish(mut self) -> Vec<String> {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::SeqCst);
        for c in self.children.lock().unwrap().iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for t in self.threads.drain(..) {
            // A watch started after the kill above ends at its first read
            // error or the next kill; don't wait on it forever.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                for c in self.children.lock().unwrap().iter_mut() {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let seen = self.seen.lock().unwrap().clone();
        assert!(
            self.events.load(Ordering::SeqCst) > 0,
            "the tenant watches saw nothing at all"
        );
        seen
    }
}
