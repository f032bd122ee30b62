//! Mover Jobs on the real node: the volume sources, channels, and faults
//! injected into the real parts (the csi-snapshotter sidecar stopped, mover
//! containers killed through containerd, the orchestrator sent SIGTERM).
//!
//! The orchestrator runs here as a host process (the test binary's
//! `kubestow`, with the node's admin kubeconfig), so a test can signal it
//! and read its summary; its movers run the image on the node
//! (`STOW_IMAGE`) in a namespace of kubestow's own (`STOW_MOVER_NAMESPACE`).
//! Tenant namespaces are at Pod Security `restricted`. The chart-driven
//! flow, orchestrator in a pod, is in `node.rs`; the one chart test here
//! (a private CA reaching movers) runs on the current release only.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::binary::{Run, assert_success};
use crate::env::node::{
    apply, claim_dir, digest, kubectl, kubectl_json, namespace, noise, ok, random_password,
    wait_until,
};
use crate::env::{self, node};
use crate::node::{
    assert_nothing_at_home, assert_nothing_temporary, names, statefulset_of, statefulset_ready,
};

const MIB: usize = 1 << 20;

/// The orchestrator for one test: a repository of its own in the node's
/// Garage, a tenant namespace at `restricted`, and kubestow's namespace
/// (`home`) where its movers run.
struct Stage {
    app: String,
    home: String,
    repo: String,
    password: String,
}

impl Stage {
    /// `home_level`: the Pod Security level of kubestow's namespace.
    fn new(hint: &str, home_level: &str) -> Stage {
        let app = env::unique_name(hint);
        let home = env::unique_name(&format!("{hint}-ks"));
        namespace(&app, "restricted");
        namespace(&home, home_level);
        let n = node::get();
        Stage {
            repo: format!("s3://{}/{app}", n.s3("STOW_BUCKET")),
            app,
            home,
            password: random_password(),
        }
    }

    fn cmd(&self, mode: &str) -> Command {
        let n = node::get();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubestow"));
        cmd.env_clear()
            .arg(mode)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", n.kubeconfig())
            .env("RUST_LOG", "info")
            .env("STOW_IMAGE", node::IMAGE)
            // The node's kubelet runs with --root-dir under its state dir.
            .env("STOW_KUBELET_DIR", n.kubelet_dir())
            .env("STOW_REPOSITORY", &self.repo)
            .env("STOW_PASSWORD", &self.password)
            .env("STOW_NAMESPACES", &self.app)
            .env("STOW_MOVER_NAMESPACE", &self.home)
            .env("STOW_INIT", "true");
        for k in [
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            cmd.env(k, n.s3(k));
        }
        cmd
    }

    fn run(&self, mut cmd: Command) -> Run {
        Run::from_output(cmd.output().expect("running kubestow"))
    }

    /// A claim no pod mounts.
    fn claim(&self, name: &str, class: &str) {
        apply(&format!(
            r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}, namespace: {ns}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: {class}
  resources: {{requests: {{storage: 1Gi}}}}
"#,
            ns = self.app
        ));
        wait_until(
            &format!("claim {name} to be Bound"),
            Duration::from_secs(60),
            || {
                let c = kubectl_json(&["-n", &self.app, "get", "pvc", name]);
                (c["status"]["phase"] == "Bound").then_some(())
            },
        );
    }

    /// Waits until nothing temporary of kubestow's is left, in the tenant
    /// namespace, at home, and among cluster-scoped objects.
    fn wait_clean(&self) {
        let claims = self.claims_without_clones();
        wait_until(
            "kubestow's temporary objects to go",
            Duration::from_secs(90),
            || {
                std::panic::catch_unwind(|| {
                    assert_nothing_temporary(&self.app, &claims);
                    assert_nothing_at_home(&self.home, &self.app);
                })
                .ok()
            },
        );
    }

    fn claims_without_clones(&self) -> Vec<String> {
        let list = kubectl_json(&[
            "-n",
            &self.app,
            "get",
            "pvc",
            "-l",
            "app.kubernetes.io/managed-by!=kubestow",
        ]);
        let mut v: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    }
}

fn count(run: &Run, key: &str) -> u64 {
    run.summary["counts"][key].as_u64().unwrap_or(0)
}

/// What a [`JobWatch`] saw.
#[derive(Clone, Default)]
struct Seen {
    /// Every mover Job seen.
    all: BTreeSet<String>,
    /// The most mover Jobs running at once.
    max_live: usize,
    /// The mover Jobs still running when StatefulSet `web` first appeared.
    live_when_web_appeared: Option<Vec<String>>,
}

/// Polls the mover Jobs at home and StatefulSet `web` in the tenant
/// namespace from a thread until stopped.
struct JobWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JobWatch {
    fn start(st: &Stage) -> JobWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (home, app) = (st.home.clone(), st.app.clone());
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // The StatefulSet first: a mover seen live after it was
                    // seen absent was live when it appeared, or later.
                    let web = kubectl_json(&["-n", &app, "get", "statefulsets"]);
                    let web = web["items"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|i| i["metadata"]["name"] == "web"));
                    let items = kubectl_json(&["-n", &home, "get", "jobs"]);
                    let items = items["items"].as_array().cloned().unwrap_or_default();
                    let managed = |i: &Value| {
                        i["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubestow"
                    };
                    let live: Vec<String> = items
                        .iter()
                        .filter(|i| i["kind"] == "Job" && managed(i))
                        .filter(|j| {
                            j["status"]["completionTime"].is_null()
                                && j["status"]["failed"].as_u64() < Some(3)
                        })
                        .map(|j| j["metadata"]["name"].as_str().unwrap().to_owned())
                        .collect();
                    let mut s = seen.lock().unwrap();
                    s.max_live = s.max_live.max(live.len());
                    for j in items.iter().filter(|i| i["kind"] == "Job" && managed(i)) {
                        s.all
                            .insert(j["metadata"]["name"].as_str().unwrap().to_owned());
                    }
                    if web && s.live_when_web_appeared.is_none() {
                        s.live_when_web_appeared = Some(live);
                    }
                    drop(s);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        JobWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.seen.lock().unwrap().clone()
    }
}

/// `auto` on a driver without snapshots, tenant at `restricted`: the
/// mounted claims of a StatefulSet are read through the kubelet (a mover at
/// home, `privileged` as the README says, mounting only that volume's
/// directory), the claim no pod mounts through a read-only shadow volume
/// bound at home. A second backup after a 1 MiB change stores about 1 MiB.
/// The namespace is deleted and restored: the claims are filled at home and
/// handed over before the StatefulSet exists, and every byte is back. A
/// watch on the tenant namespace for the whole time sees no Secret, Job,
/// pod, ServiceAccount or claim of kubestow's.
#[test]
fn auto_reads_through_the_kubelet_and_the_claim_and_restores_before_the_workload() {
    let _shared = node::shared();
    let st = Stage::new("node-auto", "privileged");
    statefulset_of(&st.app, 3, "csi-plain");
    st.claim("loose", "csi-plain");
    let tenant = node::TenantWatch::start(&st.app);
    let mut claims: Vec<String> = (0..3).map(|i| format!("data-web-{i}")).collect();
    claims.push("loose".into());
    for (i, c) in claims.iter().enumerate() {
        let dir = claim_dir(&st.app, c);
        node::fill(&dir, 300 + i as u64, 2_000_000);
    }
    let mut backup = st.cmd("backup");
    backup
        .env("STOW_VOLUME_SOURCE", "auto")
        .env("STOW_CHANNELS", "2");
    let first = st.run(backup);
    assert_success(&first);
    assert_eq!(count(&first, "volumes"), 4, "{}", first.stdout);
    assert_eq!(
        first.summary["details"]["volumes"]["sources"],
        json!({"kubelet": 3, "claim": 1})
    );
    st.wait_clean();

    std::fs::write(
        claim_dir(&st.app, "data-web-1").join("db/changed"),
        noise(4242, MIB),
    )
    .unwrap();
    let mut backup = st.cmd("backup");
    backup
        .env("STOW_VOLUME_SOURCE", "auto")
        .env("STOW_CHANNELS", "2");
    let second = st.run(backup);
    assert_success(&second);
    let new = second.summary["bytes"]["volume_new"].as_u64().unwrap_or(0);
    assert!(
        (MIB as u64..2 * MIB as u64).contains(&new),
        "second backup stored {new} new volume bytes for a 1 MiB change: {}",
        second.stdout
    );
    st.wait_clean();
    let before: BTreeMap<String, _> = claims
        .iter()
        .map(|c| (c.clone(), digest(&claim_dir(&st.app, c))))
        .collect();

    kubectl(&[
        "delete",
        "namespace",
        &st.app,
        "--wait=true",
        "--timeout=180s",
    ]);
    let watch = JobWatch::start(&st);
    let mut restore = st.cmd("restore");
    restore.env("STOW_CHANNELS", "2");
    let restored = st.run(restore);
    let seen = watch.finish();
    assert_success(&restored);
    assert_eq!(
        count(&restored, "volumes_restored"),
        4,
        "{}",
        restored.stdout
    );
    statefulset_ready(&st.app, 3);
    for c in &claims {
        assert_eq!(before[c], digest(&claim_dir(&st.app, c)), "data of {c}");
    }
    // The movers finished before the StatefulSet was created.
    let restores: Vec<_> = seen
        .all
        .iter()
        .filter(|j| j.contains("-restore-"))
        .collect();
    assert_eq!(
        restores.len(),
        4,
        "one restore mover per claim: {:?}",
        seen.all
    );
    // Seen live: no restore mover was running when the StatefulSet first
    // showed up (the poll may miss the moment; the events below do not).
    if let Some(live) = &seen.live_when_web_appeared {
        assert!(
            live.is_empty(),
            "restore movers {live:?} still running when the StatefulSet appeared"
        );
    }
    // From the record: the Job controller's "Completed" event of every
    // restore mover is no later than the StatefulSet's creation (both in
    // whole seconds). Events outlive the Jobs kubestow deletes.
    let sts = kubectl_json(&["-n", &st.app, "get", "statefulset", "web"]);
    let created: jiff::Timestamp = sts["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let events = kubectl_json(&["-n", &st.home, "get", "events"]);
    let completed: Vec<(String, jiff::Timestamp)> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["involvedObject"]["kind"] == "Job"
                && e["reason"] == "Completed"
                && e["involvedObject"]["name"]
                    .as_str()
                    .is_some_and(|n| n.contains("-restore-"))
        })
        .filter_map(|e| {
            let at = e["lastTimestamp"].as_str().or(e["eventTime"].as_str())?;
            Some((
                e["involvedObject"]["name"].as_str()?.to_owned(),
                at.parse().ok()?,
            ))
        })
        .collect();
    assert_eq!(
        completed.len(),
        4,
        "a Completed event per restore mover: {completed:?}"
    );
    for (job, at) in completed {
        assert!(
            at <= created + jiff::SignedDuration::from_secs(1),
            "mover {job} completed at {at}, after the StatefulSet was created at {created}"
        );
    }
    st.wait_clean();
    let seen = tenant.finish();
    assert!(
        seen.is_empty(),
        "kubestow's objects in the tenant namespace: {seen:?}"
    );
    // Handed over: every volume has its own reclaim policy back, no marks.
    for c in &claims {
        let pvc = kubectl_json(&["-n", &st.app, "get", "pvc", c]);
        let pv = kubectl_json(&["get", "pv", pvc["spec"]["volumeName"].as_str().unwrap()]);
        assert_eq!(
            pv["spec"]["persistentVolumeReclaimPolicy"], "Delete",
            "{pv}"
        );
        assert!(
            pv["metadata"]["labels"]["kubestow.io/handover"].is_null(),
            "{pv}"
        );
    }
}

/// `STOW_CHANNELS=2` with five claims: never more than two mover Jobs
/// running at once, one Job per claim, none left.
#[test]
fn channels_bound_the_mover_jobs_in_flight() {
    let _shared = node::shared();
    let st = Stage::new("node-channels", "baseline");
    for i in 0..5u64 {
        let name = format!("c{i}");
        st.claim(&name, "csi-hostpath");
        std::fs::write(claim_dir(&st.app, &name).join("data"), noise(i, 2 * MIB)).unwrap();
    }
    let watch = JobWatch::start(&st);
    let mut backup = st.cmd("backup");
    backup.env("STOW_CHANNELS", "2");
    let run = st.run(backup);
    let Seen {
        all, max_live: max, ..
    } = watch.finish();
    assert_success(&run);
    assert_eq!(count(&run, "volumes"), 5);
    assert_eq!(all.len(), 5, "one mover Job per claim: {all:?}");
    assert!(
        (1..=2).contains(&max),
        "{max} mover Jobs ran at once with STOW_CHANNELS=2"
    );
    st.wait_clean();
}

/// Starts the csi-snapshotter again when the test ends, pass or fail.
struct SnapshotterBack;

impl Drop for SnapshotterBack {
    fn drop(&mut self) {
        node::get().script("start-csi-snapshotter");
    }
}

/// The csi-snapshotter sidecar is stopped, so the CSI claim's VolumeSnapshot
/// never becomes ready: that claim fails after STOW_SNAPSHOT_TIMEOUT, the
/// claim of the driver without snapshots is backed up, and the run says
/// "partial" with exit 3.
#[test]
fn a_snapshot_that_never_gets_ready_fails_only_its_claim() {
    let _exclusive = node::exclusive();
    let st = Stage::new("node-unready", "baseline");
    st.claim("a", "csi-plain");
    st.claim("b", "csi-hostpath");
    for name in ["a", "b"] {
        std::fs::write(claim_dir(&st.app, name).join("f"), name.repeat(1000)).unwrap();
    }
    node::get().script("stop-csi-snapshotter");
    let back = SnapshotterBack;
    let mut backup = st.cmd("backup");
    backup
        .env("STOW_SNAPSHOT_TIMEOUT", "5s")
        .env("STOW_CHANNELS", "2");
    let run = st.run(backup);
    assert_eq!(run.code, Some(3), "{}\n{}", run.stderr, run.stdout);
    assert_eq!(run.summary["status"], "partial");
    let errors = run.summary["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["item"], format!("volume {}/b", st.app));
    let msg = errors[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("not ready to use after 5s") && msg.contains("STOW_SNAPSHOT_TIMEOUT"),
        "{msg}"
    );
    assert_eq!(count(&run, "volumes"), 1);
    let list = st.run(st.cmd("list"));
    assert_success(&list);
    assert!(
        list.stdout.contains(&format!("{}/a", st.app)),
        "{}",
        list.stdout
    );
    // With the sidecar back, the snapshot it never took is cleaned up too.
    drop(back);
    st.wait_clean();
}

/// SIGTERM to the orchestrator while a mover uploads: it exits 1,
/// "cancelled", and its VolumeSnapshot (tenant), snapshot content, clone
/// claim, mover Job, Secret and ServiceAccount (home) go.
#[test]
fn sigterm_of_the_orchestrator_removes_its_temporary_objects() {
    let _shared = node::shared();
    let st = Stage::new("node-sigterm", "baseline");
    st.claim("big", "csi-hostpath");
    let dir = claim_dir(&st.app, "big");
    for i in 0..8u64 {
        std::fs::write(dir.join(format!("part-{i}")), noise(900 + i, 4 * MIB)).unwrap();
    }
    let mut cmd = st.cmd("backup");
    cmd.env("STOW_RATE_LIMIT", "2MiB")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    wait_until(
        "a VolumeSnapshot, a mover Job and its Secret",
        Duration::from_secs(120),
        || {
            let has = |ns: &str, kind: &str, selector: &str| {
                let mut args = vec!["-n", ns, "get", kind];
                if !selector.is_empty() {
                    args.extend(["-l", selector]);
                }
                kubectl_json(&args)["items"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
            };
            let managed = "app.kubernetes.io/managed-by=kubestow";
            // A run outside a pod has no Secret to refer movers to: its
            // password goes into a Secret at home, never the tenant's.
            (has(&st.app, "volumesnapshots", "")
                && has(&st.home, "jobs", managed)
                && has(&st.home, "secrets", managed))
            .then_some(())
        },
    );
    ok({
        let mut kill = Command::new("kill");
        kill.args(["-TERM", &child.id().to_string()]);
        kill
    });
    let run = Run::from_output(child.wait_with_output().unwrap());
    assert_eq!(run.code, Some(1), "{}\n{}", run.stderr, run.stdout);
    assert_eq!(run.summary["status"], "cancelled", "{}", run.stdout);
    st.wait_clean();
}

/// SIGKILLs, through containerd, every running mover container at `home`
/// whose Job name `which` picks (as the OOM killer would), until finished.
struct MoverKiller {
    stop: Arc<AtomicBool>,
    killed: Arc<Mutex<BTreeSet<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl MoverKiller {
    fn start(home: &str, which: impl Fn(&str) -> bool + Send + 'static) -> MoverKiller {
        let stop = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(Mutex::new(BTreeSet::new()));
        let thread = {
            let (stop, killed, home) = (stop.clone(), killed.clone(), home.to_owned());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for p in &node::kubestow_pods(&home) {
                        let job = p["metadata"]["labels"]["job-name"].as_str().unwrap_or("");
                        let status = &p["status"]["containerStatuses"][0];
                        let id = status["containerID"]
                            .as_str()
                            .unwrap_or("")
                            .trim_start_matches("containerd://");
                        if which(job)
                            && status["state"]["running"].is_object()
                            && !id.is_empty()
                            && node::kill_container(id)
                        {
                            killed
                                .lock()
                                .unwrap()
                                .insert(p["metadata"]["name"].as_str().unwrap().to_owned());
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        MoverKiller {
            stop,
            killed,
            thread,
        }
    }

    /// Stops; the pods it killed.
    fn finish(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.killed.lock().unwrap().clone()
    }
}

/// The end of the name of a claim's backup mover Job
/// (`kubestow-<run tag>-backup-<hash of namespace/claim>`).
fn job_suffix(ns: &str, claim: &str) -> String {
    let h = blake3::hash(format!("{ns}/{claim}").as_bytes());
    format!("-backup-{}", &h.to_hex()[..8])
}

/// Every attempt of one claim's mover is killed through containerd, like an
/// OOM kill each time: after the Job's retries that claim fails (exit 137
/// named), the other claim is backed up, and the run exits 3.
#[test]
fn a_mover_that_keeps_failing_fails_only_its_claim() {
    let _shared = node::shared();
    let st = Stage::new("node-failing", "baseline");
    for name in ["good", "bad"] {
        st.claim(name, "csi-hostpath");
        std::fs::write(claim_dir(&st.app, name).join("f"), name.repeat(1000)).unwrap();
    }
    // Enough data, throttled, that each attempt runs for seconds: the
    // killer below polls the pods and must see each one running.
    for i in 0..4u64 {
        std::fs::write(
            claim_dir(&st.app, "bad").join(format!("big-{i}")),
            noise(70 + i, 4 * MIB),
        )
        .unwrap();
    }
    let suffix = job_suffix(&st.app, "bad");
    let killer = MoverKiller::start(&st.home, move |job| job.ends_with(&suffix));
    let mut backup = st.cmd("backup");
    backup
        .env("STOW_CHANNELS", "2")
        .env("STOW_RATE_LIMIT", "4MiB");
    let run = st.run(backup);
    let killed = killer.finish();
    assert_eq!(run.code, Some(3), "{}\n{}", run.stderr, run.stdout);
    let errors = run.summary["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["item"], format!("volume {}/bad", st.app));
    let msg = errors[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("failed after its retries") && msg.contains("137"),
        "{msg}"
    );
    assert_eq!(count(&run, "volumes"), 1);
    // Three pods: the Job's backoff limit of 2 retries.
    assert_eq!(killed.len(), 3, "{killed:?}");
    let list = st.run(st.cmd("list"));
    assert!(
        list.stdout.contains(&format!("{}/good", st.app)),
        "{}",
        list.stdout
    );
    st.wait_clean();
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `scope=volume` hooks around each volume of a real volume backup (CSI
/// snapshots, movers on the node).
#[test]
fn volume_hooks_wrap_each_snapshot_and_exec_in_the_pod_that_mounts_it() {
    let _shared = node::shared();
    let st = Stage::new("node-hookvol", "baseline");
    let ns = st.app.clone();
    statefulset_of(&ns, 2, "csi-hostpath");

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let echo = |what: &str| format!("sh -c 'echo {what} >> {}'", log.display());
    // The exec reaches the pod's container through the kubelet; the pause
    // image has no `sync`, so it fails, naming the one pod that mounts the
    // claim.
    let exec = format!("timeout=20s scope=volume exec:{ns}/app=web/pause:sync");
    let run_backup = |exec_policy: &str| {
        let pre = format!(
            "{}\nscope=volume {}\n{exec_policy} {exec}",
            echo("run-pre"),
            echo("freeze:$KUBESTOW_VOLUME")
        );
        let post = format!(
            "scope=volume {}\n{}",
            echo("thaw:$KUBESTOW_VOLUME"),
            echo("run-post")
        );
        let mut cmd = st.cmd("backup");
        cmd.env("STOW_VOLUME_SOURCE", "snapshot")
            .env("STOW_PRE_HOOKS", pre)
            .env("STOW_POST_HOOKS", post);
        st.run(cmd)
    };
    let volumes = [format!("{ns}/data-web-0"), format!("{ns}/data-web-1")];
    let check_log = || {
        let got = lines(&log);
        assert_eq!(got.first().map(String::as_str), Some("run-pre"), "{got:?}");
        assert_eq!(got.last().map(String::as_str), Some("run-post"), "{got:?}");
        for v in &volumes {
            let freeze = got.iter().position(|l| *l == format!("freeze:{v}"));
            let thaw = got.iter().position(|l| *l == format!("thaw:{v}"));
            assert!(
                freeze.is_some() && thaw.is_some() && freeze < thaw,
                "{v}: {got:?}"
            );
        }
        assert_eq!(got.len(), 6, "{got:?}");
    };

    // on-error=continue: both volumes are backed up.
    let run = run_backup("on-error=continue");
    assert_eq!(run.code, Some(0), "{}\n{}", run.stderr, run.stdout);
    assert_eq!(run.summary["counts"]["volumes"], 2, "{}", run.stdout);
    check_log();
    for (i, v) in volumes.iter().enumerate() {
        let warned = run.stderr.lines().any(|l| {
            l.contains("hook failed; continuing")
                && l.contains(v.as_str())
                && l.contains(&format!("pod {ns}/web-{i}:"))
                && !l.contains(&format!("pod {ns}/web-{}:", 1 - i))
        });
        assert!(
            warned,
            "no exec failure for {v} in web-{i} only:\n{}",
            run.stderr
        );
    }

    // fail: each volume fails with its own pod's error; the thaws still run.
    std::fs::remove_file(&log).unwrap();
    let run = run_backup("");
    assert_eq!(run.code, Some(3), "{}\n{}", run.stderr, run.stdout);
    let errors = run.summary["errors"].as_array().unwrap();
    for (i, v) in volumes.iter().enumerate() {
        let e = errors
            .iter()
            .find(|e| e["item"] == format!("volume {v}"))
            .unwrap_or_else(|| panic!("no error for {v}: {errors:?}"));
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(&format!("pod {ns}/web-{i}: ")), "{msg}");
    }
    check_log();
    st.wait_clean();
}

/// The volume under a restored claim, and that volume.
fn volume_of(ns: &str, claim: &str) -> Value {
    let pvc = kubectl_json(&["-n", ns, "get", "pvc", claim]);
    kubectl_json(&["get", "pv", pvc["spec"]["volumeName"].as_str().unwrap()])
}

/// The volumes marked for a hand-over to claims of `ns`.
fn marked_for(ns: &str) -> Vec<Value> {
    kubectl_json(&["get", "pv", "-l", "kubestow.io/handover"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pv| {
            pv["metadata"]["annotations"]["kubestow.io/handover-to"]
                .as_str()
                .is_some_and(|t| t.starts_with(&format!("{ns}/")))
        })
        .cloned()
        .collect()
}

/// A restore killed at each step of the hand-over finishes when run again.
/// The crash is `STOW_TEST_EXIT_AFTER` (exit 1 right after the step, no
/// clean-up, as a kill would leave it): a stand-in for a kill, because a
/// signal from outside cannot land between two exact API calls. Killed
/// after `filled`, the volume is marked and `Retain` under the staging claim
/// at home and the tenant has no claim; killed after `rebound`, the tenant's
/// claim is bound and the volume still `Retain`. Run again, each ends with
/// the bytes identical, the volume's own policy back, nothing marked and no
/// volume Released; a filled volume is not filled again.
#[test]
fn a_restore_killed_during_the_hand_over_finishes_when_run_again() {
    let _shared = node::shared();
    let st = Stage::new("node-handover", "baseline");
    st.claim("data", "csi-hostpath");
    node::fill(&claim_dir(&st.app, "data"), 77, 3_000_000);
    let before = digest(&claim_dir(&st.app, "data"));
    let mut backup = st.cmd("backup");
    backup.env("STOW_VOLUME_SOURCE", "snapshot");
    assert_success(&st.run(backup));
    st.wait_clean();

    for step in ["filled", "rebound"] {
        let to = env::unique_name(&format!("node-ho-{step}"));
        namespace(&to, "restricted");
        let restore = |exit_after: Option<&str>| {
            let mut cmd = st.cmd("restore");
            cmd.env("STOW_NAMESPACE_MAP", format!("{}={to}", st.app));
            if let Some(s) = exit_after {
                cmd.env("STOW_TEST_EXIT_AFTER", s);
            }
            st.run(cmd)
        };
        let crashed = restore(Some(step));
        assert_eq!(
            crashed.code,
            Some(1),
            "{step}: {}\n{}",
            crashed.stderr,
            crashed.stdout
        );
        let marked = marked_for(&to);
        assert_eq!(marked.len(), 1, "{step}: one volume marked: {marked:?}");
        let pv = &marked[0];
        assert_eq!(
            pv["spec"]["persistentVolumeReclaimPolicy"], "Retain",
            "{step}: {pv}"
        );
        let target = kubectl_json(&["-n", &to, "get", "pvc"]);
        match step {
            "filled" => {
                assert!(names(&target).is_empty(), "no tenant claim yet: {target}");
                assert_eq!(pv["spec"]["claimRef"]["namespace"], st.home, "{pv}");
            }
            _ => {
                assert_eq!(names(&target), ["data"], "{target}");
                assert_eq!(target["items"][0]["status"]["phase"], "Bound");
                assert_eq!(pv["spec"]["claimRef"]["namespace"], to, "{pv}");
            }
        }
        let pv_name = pv["metadata"]["name"].as_str().unwrap().to_owned();

        let again = restore(None);
        assert_success(&again);
        // A volume filled before the crash is not filled again.
        assert!(
            !again.stderr.contains("filled at home"),
            "{step}: filled again:\n{}",
            again.stderr
        );
        let pv = volume_of(&to, "data");
        assert_eq!(
            pv["metadata"]["name"],
            pv_name.as_str(),
            "{step}: the same volume"
        );
        assert_eq!(
            pv["spec"]["persistentVolumeReclaimPolicy"], "Delete",
            "{step}: {pv}"
        );
        assert!(marked_for(&to).is_empty(), "{step}: still marked");
        assert_eq!(before, digest(&claim_dir(&to, "data")), "{step}: data");
        let released: Vec<_> = kubectl_json(&["get", "pv"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"]["phase"] == "Released")
            .map(|p| p["metadata"]["name"].clone())
            .collect();
        assert!(
            released.is_empty(),
            "{step}: volumes left Released: {released:?}"
        );
    }
    st.wait_clean();
}

/// kubestow's namespace at `restricted` refuses movers (they run as root
/// with DAC_OVERRIDE). Preflight names the namespace and its level, and a
/// backup stops there before any work (no snapshot taken). When the level
/// changes after preflight (here a volume pre-hook labels it), the
/// claim fails at once with the admission message from the Job's events,
/// not after STOW_MOVER_START_TIMEOUT.
#[test]
fn a_home_namespace_that_refuses_movers_is_named_with_its_admission_message() {
    let _shared = node::shared();
    let st = Stage::new("node-psa", "restricted");
    st.claim("data", "csi-hostpath");
    std::fs::write(claim_dir(&st.app, "data").join("f"), "x").unwrap();
    let snapshots = || names(&kubectl_json(&["-n", &st.app, "get", "volumesnapshots"]));

    let mut preflight = st.cmd("preflight");
    preflight.env("STOW_VOLUME_SOURCE", "snapshot");
    let pre = st.run(preflight);
    assert_eq!(pre.code, Some(1), "{}\n{}", pre.stderr, pre.stdout);
    let text = format!("{}{}", pre.stdout, pre.stderr);
    assert!(
        text.contains(&format!(
            "namespace {} enforces Pod Security `restricted`",
            st.home
        )) && text.contains("they need `baseline`"),
        "preflight does not name the namespace and its level:\n{text}"
    );
    let mut backup = st.cmd("backup");
    backup.env("STOW_VOLUME_SOURCE", "snapshot");
    let stopped = st.run(backup);
    assert_eq!(
        stopped.code,
        Some(1),
        "{}\n{}",
        stopped.stderr,
        stopped.stdout
    );
    assert!(
        stopped.stdout.contains("enforces Pod Security"),
        "{}",
        stopped.stdout
    );
    assert!(
        snapshots().is_empty(),
        "a snapshot was taken: {:?}",
        snapshots()
    );

    // Admitted at preflight, refused when the mover's pod is created.
    kubectl(&[
        "label",
        "namespace",
        &st.home,
        "--overwrite",
        "pod-security.kubernetes.io/enforce=baseline",
    ]);
    let n = node::get();
    // A volume-scope hook runs after preflight, right before the snapshot.
    let relabel = format!(
        "scope=volume kubectl --cache-dir=/tmp/kubestow-node-it/kubectl-cache --kubeconfig={} label namespace {} --overwrite pod-security.kubernetes.io/enforce=restricted",
        n.kubeconfig().display(),
        st.home
    );
    let mut backup = st.cmd("backup");
    backup
        .env("STOW_VOLUME_SOURCE", "snapshot")
        .env("STOW_PRE_HOOKS", relabel)
        .env("STOW_MOVER_START_TIMEOUT", "30m");
    let run = st.run(backup);
    assert_eq!(run.code, Some(3), "{}\n{}", run.stderr, run.stdout);
    let errors = run.summary["errors"].as_array().unwrap();
    let msg = errors[0]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("cannot create its pod") && msg.contains("violates PodSecurity"),
        "{msg}"
    );
    assert!(!msg.contains("did not start within"), "{msg}");
    st.wait_clean();
}

/// A restore whose volume fill fails (every attempt of the restore mover is
/// SIGKILLed through containerd, as an OOM kill would) does not create the
/// StatefulSet that mounts the claim, so nothing starts on an empty volume
/// (a StatefulSet would create the missing claim itself, empty), and says
/// so. Run again without the killer, it completes with the bytes identical.
#[test]
fn a_workload_whose_claim_was_not_filled_is_held_back_until_a_rerun() {
    let _shared = node::shared();
    let st = Stage::new("node-hold", "baseline");
    statefulset_of(&st.app, 1, "csi-hostpath");
    node::fill(&claim_dir(&st.app, "data-web-0"), 501, 2_000_000);
    let before = digest(&claim_dir(&st.app, "data-web-0"));
    let mut backup = st.cmd("backup");
    backup.env("STOW_VOLUME_SOURCE", "snapshot");
    assert_success(&st.run(backup));
    st.wait_clean();
    kubectl(&[
        "delete",
        "namespace",
        &st.app,
        "--wait=true",
        "--timeout=180s",
    ]);

    let killer = MoverKiller::start(&st.home, |job| job.contains("-restore-"));
    // Throttled (downloads too), so each attempt runs for seconds and the
    // killer sees it running.
    let mut restore = st.cmd("restore");
    restore.env("STOW_RATE_LIMIT", "512KiB");
    let first = st.run(restore);
    assert!(
        !killer.finish().is_empty(),
        "the killer never saw a restore mover"
    );
    assert_eq!(first.code, Some(3), "{}\n{}", first.stderr, first.stdout);
    let errors = first.summary["errors"].to_string();
    assert!(
        errors.contains("data-web-0") && errors.contains("web") && errors.contains("not created"),
        "the summary does not name the held workload: {errors}"
    );
    let sts = kubectl_json(&["-n", &st.app, "get", "statefulsets"]);
    assert!(names(&sts).is_empty(), "StatefulSet created: {sts}");
    let pods = kubectl_json(&["-n", &st.app, "get", "pods"]);
    assert!(names(&pods).is_empty(), "pods running: {pods}");
    let claims = kubectl_json(&["-n", &st.app, "get", "pvc"]);
    assert!(
        names(&claims).is_empty(),
        "an unfilled claim exists: {claims}"
    );

    let again = st.run(st.cmd("restore"));
    assert_success(&again);
    statefulset_ready(&st.app, 1);
    assert_eq!(before, digest(&claim_dir(&st.app, "data-web-0")));
    st.wait_clean();
}

/// The chart's `caBundle` on the node's Garage behind TLS with a private
/// CA: without it the backup fails on the certificate before touching
/// anything; with it (a ConfigMap at home) the orchestrator in its pod and
/// the mover Job it starts both reach S3 over TLS, so the volume is backed
/// up.
#[test]
fn a_private_ca_reaches_the_orchestrator_and_its_movers() {
    let _shared = node::shared();
    let n = node::get();
    let sys = env::unique_name("node-ca");
    let app = env::unique_name("node-ca-app");
    namespace(&sys, "baseline");
    namespace(&app, "restricted");
    statefulset_of(&app, 1, "csi-hostpath");
    crate::env::node::fill(&claim_dir(&app, "data-web-0"), 41, 500_000);
    kubectl(&[
        "-n",
        &sys,
        "create",
        "configmap",
        "s3-ca",
        &format!("--from-file=ca.crt={}", n.s3("S3_TLS_CA_FILE")),
    ]);
    let plans = json!([{
        "name": "tls",
        "schedule": {"type": "cron", "cron": "0 0 1 1 *"},
        "suspend": true,
        "namespaces": app,
        "init": true,
        "volumeSource": "snapshot",
    }]);
    let mut values = node::values(&sys, &random_password(), plans);
    values["env"]["AWS_ENDPOINT_URL"] = json!(n.s3("S3_TLS_ENDPOINT_URL"));
    values["job"] = json!({"backoffLimit": 0});
    node::helm("install", &sys, "ks", &values);

    node::create_job_from_cronjob(&sys, "ks-kubestow-tls", "without-ca");
    let (completed, _) = node::wait_finished(&sys, "without-ca");
    assert!(!completed, "a backup through an unknown CA must fail");
    let failed = node::termination_summary(&sys, "without-ca");
    assert_eq!(failed["status"], "failed", "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.to_ascii_lowercase().contains("certificate")
            && reason.contains(n.s3("S3_TLS_ENDPOINT_URL")),
        "{failed}"
    );

    values["caBundle"] = json!({"configMap": "s3-ca"});
    node::helm("upgrade", &sys, "ks", &values);
    node::create_job_from_cronjob(&sys, "ks-kubestow-tls", "with-ca");
    node::wait_job(&sys, "with-ca");
    let ok_run = node::termination_summary(&sys, "with-ca");
    assert_eq!(ok_run["status"], "success", "{ok_run}");
    assert_eq!(ok_run["counts"]["volumes"], 1, "{ok_run}");
    assert_nothing_at_home(&sys, &app);
}
