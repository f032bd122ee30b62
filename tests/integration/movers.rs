//! PVC data through mover Jobs, end to end: the real apiserver and
//! controller-manager (Job, StatefulSet, PV binder, garbage collector),
//! Garage, the real binary as orchestrator, and the test stand-ins for the
//! kubelet (which runs the movers as local `kubestow` processes) and a CSI
//! driver.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use http::Method;
use kube::api::{Api, DynamicObject, GroupVersionKind, WatchEvent, WatchParams};
use kube::discovery::ApiResource;
use kubestow::volume::compare::compare_trees;
use serde_json::{Value, json};

use crate::standin::{self, Fault, TestCsi, TestKubelet, call, get_opt, list, wait_for};
use crate::{binary, env};

const PASSWORD: &str = "movers-test-password";
const MIB: usize = 1 << 20;
const MANAGED: &str = "app.kubernetes.io/managed-by=kubestow";

/// A namespace with its own CSI driver, storage class, node and kubelet.
pub(crate) struct Stage {
    pub client: kube::Client,
    pub ns: String,
    root: tempfile::TempDir,
    pub csi: TestCsi,
    pub kubelet: TestKubelet,
    pub repo: String,
}

impl Stage {
    /// `snapshots`: the driver has a VolumeSnapshotClass. `repo`: a
    /// repository URL, else a fresh Garage bucket.
    pub async fn new(hint: &str, snapshots: bool, repo: Option<String>) -> Stage {
        let (client, ns) = env::namespace(hint).await;
        let repo = match repo {
            Some(r) => r,
            None => format!("s3://{}/", env::bucket(hint).await.1),
        };
        let root = tempfile::tempdir().unwrap();
        let driver = format!("{ns}.csi.test");
        let csi = TestCsi::start(client.clone(), root.path(), &driver).await;
        standin::storage_class(&client, &ns, &driver, "Delete").await;
        if snapshots {
            standin::snapshot_class(&client, &ns, &driver).await;
        }
        let node = format!("{ns}-node");
        let kubelet = TestKubelet::start(
            client.clone(),
            root.path(),
            &[&node],
            &[&ns],
            Path::new(env!("CARGO_BIN_EXE_kubestow")),
        )
        .await;
        Stage {
            client,
            ns,
            root,
            csi,
            kubelet,
            repo,
        }
    }

    fn cmd(&self, mode: &str) -> Command {
        let mut cmd = binary::command();
        cmd.arg(mode)
            .env("STOW_REPOSITORY", &self.repo)
            .env("STOW_PASSWORD", PASSWORD)
            .env("STOW_INIT", "true")
            .env("STOW_NAMESPACES", &self.ns)
            .env("STOW_IMAGE", "kubestow:test");
        cmd
    }

    fn api(&self, plural: &str) -> String {
        match plural {
            "jobs" => format!("/apis/batch/v1/namespaces/{}/jobs", self.ns),
            "statefulsets" => format!("/apis/apps/v1/namespaces/{}/statefulsets", self.ns),
            "volumesnapshots" => format!(
                "/apis/snapshot.storage.k8s.io/v1/namespaces/{}/volumesnapshots",
                self.ns
            ),
            p => format!("/api/v1/namespaces/{}/{p}", self.ns),
        }
    }

    async fn create(&self, plural: &str, body: Value) {
        call(&self.client, Method::POST, &self.api(plural), Some(body))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A claim of this stage's storage class, 1 GiB.
    async fn claim(&self, name: &str) {
        self.create(
            "persistentvolumeclaims",
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": name},
                   "spec": {"storageClassName": self.ns, "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}}}}),
        )
        .await;
    }

    /// StatefulSet `db` with `replicas` pods, each with claim `data-db-<i>`;
    /// returns once every pod runs.
    pub async fn statefulset(&self, replicas: u32) {
        self.create(
            "statefulsets",
            json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "db"},
                "spec": {
                    "serviceName": "db", "replicas": replicas,
                    "podManagementPolicy": "Parallel",
                    "selector": {"matchLabels": {"app": "db"}},
                    "template": {
                        "metadata": {"labels": {"app": "db"}},
                        "spec": {"containers": [{"name": "db", "image": "postgres:16",
                                 "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql"}]}]},
                    },
                    "volumeClaimTemplates": [{
                        "metadata": {"name": "data"},
                        "spec": {"storageClassName": self.ns, "accessModes": ["ReadWriteOnce"],
                                 "resources": {"requests": {"storage": "1Gi"}}},
                    }],
                },
            }),
        )
        .await;
        self.wait_running("app=db", replicas as usize).await;
    }

    async fn wait_running(&self, selector: &str, n: usize) {
        let path = format!("{}?labelSelector={selector}", self.api("pods"));
        wait_for(
            &format!("{n} running pods {selector} in {}", self.ns),
            Duration::from_secs(120),
            async || {
                let pods = list(&self.client, &path).await.map_err(|e| e.to_string())?;
                let running = pods
                    .iter()
                    .filter(|p| p["status"]["phase"] == "Running")
                    .count();
                (running == n)
                    .then_some(())
                    .ok_or(format!("{running} running"))
            },
        )
        .await;
    }

    /// The kubestow-owned objects left in the namespace.
    async fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for plural in [
            "jobs",
            "volumesnapshots",
            "persistentvolumeclaims",
            "secrets",
            "serviceaccounts",
            "pods",
        ] {
            let path = format!("{}?labelSelector={MANAGED}", self.api(plural));
            if let Ok(items) = list(&self.client, &path).await {
                for i in items {
                    out.push(format!(
                        "{plural}/{}",
                        i["metadata"]["name"].as_str().unwrap()
                    ));
                }
            }
        }
        out
    }

    /// Waits until every temporary object is gone, snapshot copies too.
    async fn wait_clean(&self) {
        wait_for(
            &format!("temporary objects in {} to be deleted", self.ns),
            Duration::from_secs(90),
            async || {
                let left = self.leftovers().await;
                let snaps = self.csi.snapshot_dirs();
                if left.is_empty() && snaps.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{left:?}, snapshot dirs {snaps:?}"))
                }
            },
        )
        .await;
    }

    /// Deletes the namespace and waits until it is gone (and with it the
    /// claims, whose volumes the driver then deletes).
    async fn delete_namespace(&self) {
        let path = format!("/api/v1/namespaces/{}", self.ns);
        standin::delete(&self.client, &path, None).await.unwrap();
        wait_for(
            &format!("namespace {} to be deleted", self.ns),
            Duration::from_secs(180),
            async || match get_opt(&self.client, &path).await {
                Ok(None) => Ok(()),
                Ok(Some(ns)) => Err(format!("{}", ns["status"])),
                Err(e) => Err(e.to_string()),
            },
        )
        .await;
    }

    fn log_hint(&self) -> String {
        let logs = self.root.path().join("logs");
        let mut out = String::new();
        for e in fs::read_dir(logs).into_iter().flatten().flatten() {
            out.push_str(&format!("--- {}\n", e.path().display()));
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

fn ok(run: &binary::Run, st: &Stage) {
    assert_eq!(
        run.code,
        Some(0),
        "stderr:\n{}\nstdout:\n{}\nmover logs:\n{}",
        run.stderr,
        run.stdout,
        st.log_hint()
    );
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    kubestow::repo::fixture::bytes(len, seed)
}

/// Known data of mixed sizes with links, modes and owners; `sparse` adds a
/// 256 MiB file with three islands of data.
fn fill(dir: &Path, seed: u64, sparse: bool) {
    fs::create_dir_all(dir.join("base/16384")).unwrap();
    for i in 0..6u64 {
        fs::write(
            dir.join(format!("base/16384/{i}")),
            random(1000 + (i as usize) * 77_777, seed * 100 + i),
        )
        .unwrap();
    }
    fs::write(dir.join("wal.bin"), random(3 * MIB + seed as usize, seed)).unwrap();
    fs::write(dir.join("PG_VERSION"), b"16\n").unwrap();
    fs::write(dir.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("wal.bin", dir.join("wal-link")).unwrap();
    fs::hard_link(dir.join("PG_VERSION"), dir.join("PG_VERSION.hard")).unwrap();
    fs::set_permissions(dir.join("base"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(dir.join("wal.bin"), Some(999), Some(999)).unwrap();
    if sparse {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(dir.join("sparse.img")).unwrap();
        f.set_len(256 * MIB as u64).unwrap();
        for (at, what) in [
            (0u64, "head"),
            (100 * MIB as u64, "middle"),
            (256 * MIB as u64 - 4, "tail"),
        ] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(what.as_bytes()).unwrap();
        }
    }
}

/// `cp -a` keeps what the comparison looks at (and holes).
fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

fn count(run: &binary::Run, key: &str) -> u64 {
    run.summary["counts"][key].as_u64().unwrap_or(0)
}

fn bytes(run: &binary::Run, key: &str) -> u64 {
    run.summary["bytes"][key].as_u64().unwrap_or(0)
}

/// Back up a 3-replica StatefulSet through `source`, change one file and
/// back up again, delete the namespace, restore, compare every volume.
async fn statefulset_round_trip(source: &str, snapshots: bool, expect: Value) {
    let st = Stage::new(&format!("movers-{source}"), snapshots, None).await;
    st.statefulset(3).await;
    let originals = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for i in 0..3u64 {
        let dir = st.csi.pvc_dir(&st.ns, &format!("data-db-{i}")).await;
        fill(&dir, i, i == 0);
        dirs.push(dir);
    }
    // auto: an unmounted claim is read through a mover that mounts it.
    let loose = source == "auto";
    if loose {
        st.claim("loose").await;
        let dir = st.csi.pvc_dir(&st.ns, "loose").await;
        fill(&dir, 7, false);
        dirs.push(dir);
    }

    let mut backup = st.cmd("backup");
    backup
        .env("STOW_VOLUME_SOURCE", source)
        .env("STOW_CHANNELS", "2");
    let first = binary::run(backup).await;
    ok(&first, &st);
    let volumes = if loose { 4 } else { 3 };
    assert_eq!(count(&first, "volumes"), volumes, "{}", first.stdout);
    assert_eq!(first.summary["details"]["volumes"]["sources"], expect);
    st.wait_clean().await;

    // One changed file of 1 MiB: the second backup uploads about that.
    fs::write(dirs[1].join("base/16384/changed"), random(MIB, 4242)).unwrap();
    let mut backup = st.cmd("backup");
    backup
        .env("STOW_VOLUME_SOURCE", source)
        .env("STOW_CHANNELS", "2");
    let second = binary::run(backup).await;
    ok(&second, &st);
    let new = bytes(&second, "volume_new");
    assert!(
        (MIB as u64..2 * MIB as u64).contains(&new),
        "second backup stored {new} new volume bytes for a 1 MiB change: {}",
        second.stdout
    );
    st.wait_clean().await;
    for (i, dir) in dirs.iter().enumerate() {
        copy_tree(dir, &originals.path().join(i.to_string()));
    }

    st.delete_namespace().await;
    for dir in &dirs {
        assert!(!dir.exists(), "{} outlived its volume", dir.display());
    }

    let mut restore = st.cmd("restore");
    restore.env("STOW_CHANNELS", "2");
    let restored = binary::run(restore).await;
    ok(&restored, &st);
    assert_eq!(
        count(&restored, "volumes_restored"),
        volumes,
        "{}",
        restored.stdout
    );
    st.wait_running("app=db", 3).await;
    let mut claims: Vec<String> = (0..3).map(|i| format!("data-db-{i}")).collect();
    if loose {
        claims.push("loose".into());
    }
    for (i, claim) in claims.iter().enumerate() {
        let dir = st.csi.pvc_dir(&st.ns, claim).await;
        assert!(!dirs.contains(&dir), "{claim} kept its old volume");
        let diffs = compare_trees(&originals.path().join(i.to_string()), &dir);
        assert!(diffs.is_empty(), "{claim}: {diffs:#?}");
    }
    // The movers filled the claims before the StatefulSet existed.
    let sts = call(
        &st.client,
        Method::GET,
        &format!("{}/db", st.api("statefulsets")),
        None,
    )
    .await
    .unwrap();
    let sts_created: jiff::Timestamp = sts["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let restores: Vec<_> = st
        .kubelet
        .runs()
        .into_iter()
        .filter(|r| r.pod.contains("-restore-"))
        .collect();
    assert_eq!(restores.len(), volumes as usize, "{restores:?}");
    for r in &restores {
        let started = jiff::Timestamp::try_from(r.started).unwrap();
        // creationTimestamp has whole seconds.
        assert!(
            started < sts_created + jiff::SignedDuration::from_secs(1),
            "mover {} started after the StatefulSet was created",
            r.pod
        );
        assert_eq!(r.exit_code, Some(0), "{r:?}");
    }
    st.wait_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_round_trip_through_snapshots() {
    statefulset_round_trip("snapshot", true, json!({"snapshot": 3})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_round_trip_through_the_kubelet() {
    statefulset_round_trip("kubelet", false, json!({"kubelet": 3})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_round_trip_auto() {
    // No snapshot class: the mounted claims go through the kubelet, the
    // unmounted one through a mover that mounts it.
    statefulset_round_trip("auto", false, json!({"kubelet": 3, "claim": 1})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_bound_the_mover_jobs_in_flight() {
    let st = Stage::new("movers-channels", true, None).await;
    for i in 0..6 {
        st.claim(&format!("c{i}")).await;
        let dir = st.csi.pvc_dir(&st.ns, &format!("c{i}")).await;
        fs::write(dir.join("data"), random(2 * MIB, i)).unwrap();
    }
    let gvk = GroupVersionKind::gvk("batch", "v1", "Job");
    let jobs: Api<DynamicObject> =
        Api::namespaced_with(st.client.clone(), &st.ns, &ApiResource::from_gvk(&gvk));
    let stream = jobs
        .watch(&WatchParams::default().labels(MANAGED), "0")
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new((
        BTreeSet::<String>::new(),
        0usize,
        BTreeSet::<String>::new(),
    )));
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let mut s = seen.lock().unwrap();
                match ev {
                    Ok(WatchEvent::Added(j)) => {
                        let name = j.metadata.name.unwrap();
                        s.0.insert(name.clone());
                        s.2.insert(name);
                        s.1 = s.1.max(s.0.len());
                    }
                    Ok(WatchEvent::Deleted(j)) => {
                        s.0.remove(&j.metadata.name.unwrap());
                    }
                    _ => {}
                }
            }
        })
    };
    let mut backup = st.cmd("backup");
    backup.env("STOW_CHANNELS", "2");
    let run = binary::run(backup).await;
    ok(&run, &st);
    assert_eq!(count(&run, "volumes"), 6);
    tokio::time::sleep(Duration::from_secs(1)).await;
    watcher.abort();
    let (live, max, all) = seen.lock().unwrap().clone();
    assert_eq!(all.len(), 6, "one mover Job per claim: {all:?}");
    assert!(
        max <= 2,
        "{max} mover Jobs existed at once with STOW_CHANNELS=2"
    );
    assert!(max >= 1);
    assert!(live.is_empty(), "Jobs left: {live:?}");
    st.wait_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_mover_is_retried_and_resumes() {
    // Not under /tmp: movers mount an emptyDir there, and the test kubelet
    // maps the path into it, as a container would see it.
    let repo_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let repo_path = repo_dir.path().join("repo");
    let st = Stage::new(
        "movers-crash",
        true,
        Some(format!("file://{}", repo_path.display())),
    )
    .await;
    st.claim("big").await;
    let dir = st.csi.pvc_dir(&st.ns, "big").await;
    let size = 64 * MIB;
    fs::write(dir.join("data.bin"), random(size, 77)).unwrap();
    // Kill the first mover once it has checkpointed two packs to the index
    // (STOW_RESUME_BUFFER, default 10 MiB: every pack).
    let index = repo_path.join("index");
    st.kubelet.set_fault(move |pod| {
        let index = index.clone();
        (pod.attempt == 0
            && pod
                .job_name
                .as_deref()
                .is_some_and(|j| j.contains("-backup-")))
        .then(|| {
            Fault::KillWhen(Arc::new(move || {
                fs::read_dir(&index).map(|d| d.count()).unwrap_or(0) >= 2
            }))
        })
    });
    // Throttled so the mover is still uploading when its second pack is
    // indexed: the kill then always lands mid-run, however fast the disk.
    let mut backup = st.cmd("backup");
    backup.env("STOW_RATE_LIMIT", "16MiB");
    let run = binary::run(backup).await;
    ok(&run, &st);
    let movers: Vec<_> = st
        .kubelet
        .runs()
        .into_iter()
        .filter(|r| {
            r.job_name
                .as_deref()
                .is_some_and(|j| j.contains("-backup-"))
        })
        .collect();
    assert_eq!(
        movers.iter().map(|r| r.exit_code).collect::<Vec<_>>(),
        vec![Some(137), Some(0)],
        "{movers:?}"
    );
    // The retry reused what the killed attempt had checkpointed.
    let new = bytes(&run, "volume_new");
    assert!(
        new < (size as u64) * 3 / 4,
        "the retry stored {new} of {size} bytes again: {}",
        run.stdout
    );
    let mut check = st.cmd("check");
    check.env("STOW_CHECK_READ_DATA", "all");
    ok(&binary::run(check).await, &st);
    st.wait_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_never_gets_ready_fails_only_its_claim() {
    let st = Stage::new("movers-unready", true, None).await;
    for name in ["a", "b", "c"] {
        st.claim(name).await;
        let dir = st.csi.pvc_dir(&st.ns, name).await;
        fs::write(dir.join("f"), name.repeat(1000)).unwrap();
    }
    st.csi.set_never_ready(|_, pvc| pvc == "b");
    let mut backup = st.cmd("backup");
    backup
        .env("STOW_SNAPSHOT_TIMEOUT", "3s")
        .env("STOW_CHANNELS", "3");
    let run = binary::run(backup).await;
    assert_eq!(run.code, Some(3), "{}\n{}", run.stderr, run.stdout);
    assert_eq!(run.summary["status"], "partial");
    let errors = run.summary["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["item"], format!("volume {}/b", st.ns));
    let msg = errors[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("not ready to use after 3s") && msg.contains("STOW_SNAPSHOT_TIMEOUT"),
        "{msg}"
    );
    assert_eq!(count(&run, "volumes"), 2);
    // The other claims landed in a complete snapshot.
    let list = binary::run(st.cmd("list")).await;
    ok(&list, &st);
    assert!(
        list.stdout.contains(&format!("{}/a", st.ns)),
        "{}",
        list.stdout
    );
    st.wait_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_orchestrator_removes_its_temporary_objects() {
    let st = Stage::new("movers-sigterm", true, None).await;
    // `waiting`: its snapshot never gets ready. `stuck`: a volume bound
    // to a node that does not exist, so its mover never starts.
    st.claim("waiting").await;
    st.csi.pvc_dir(&st.ns, "waiting").await;
    st.csi.set_never_ready(|_, pvc| pvc == "waiting");
    let pv = format!("{}-stuck", st.ns);
    call(
        &st.client,
        Method::POST,
        "/api/v1/persistentvolumes",
        Some(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                     "csi": {"driver": "elsewhere.csi.test", "volumeHandle": pv},
                     "claimRef": {"namespace": st.ns, "name": "stuck"},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": ["nowhere"]}]}]}}},
        })),
    )
    .await
    .unwrap();
    st.create(
        "persistentvolumeclaims",
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "stuck"},
               "spec": {"storageClassName": "", "volumeName": pv, "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    wait_for(
        "claim stuck to be Bound",
        Duration::from_secs(60),
        async || {
            let c = call(
                &st.client,
                Method::GET,
                &format!("{}/stuck", st.api("persistentvolumeclaims")),
                None,
            )
            .await
            .map_err(|e| e.to_string())?;
            (c["status"]["phase"] == "Bound")
                .then_some(())
                .ok_or(format!("{}", c["status"]))
        },
    )
    .await;

    let mut cmd = st.cmd("backup");
    cmd.env("STOW_CHANNELS", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Both kinds of temporary object exist: then stop the orchestrator.
    wait_for(
        "a VolumeSnapshot and a mover Job",
        Duration::from_secs(60),
        async || {
            let left = st.leftovers().await;
            let has = |p: &str| left.iter().any(|l| l.starts_with(p));
            (has("volumesnapshots/") && has("jobs/") && has("secrets/"))
                .then_some(())
                .ok_or(format!("{left:?}"))
        },
    )
    .await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let run = tokio::task::spawn_blocking(move || {
        binary::Run::from_output(child.wait_with_output().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(run.code, Some(1), "{}\n{}", run.stderr, run.stdout);
    assert_eq!(run.summary["status"], "cancelled", "{}", run.stdout);
    st.wait_clean().await;
    let _ = standin::delete(&st.client, &format!("/api/v1/persistentvolumes/{pv}"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_that_keeps_failing_fails_only_its_claim() {
    let st = Stage::new("movers-failing", false, None).await;
    for name in ["good", "bad"] {
        st.claim(name).await;
        let dir = st.csi.pvc_dir(&st.ns, name).await;
        fs::write(dir.join("f"), name.repeat(1000)).unwrap();
    }
    // Every attempt of the mover of `bad` dies, like an OOM kill each time.
    let bad_job = job_suffix(&st, "bad");
    st.kubelet.set_fault(move |pod| {
        (pod.job_name
            .as_deref()
            .is_some_and(|j| j.ends_with(&bad_job)))
        .then(|| Fault::KillWhen(Arc::new(|| true)))
    });
    let mut backup = st.cmd("backup");
    backup.env("STOW_CHANNELS", "2");
    let run = binary::run(backup).await;
    assert_eq!(run.code, Some(3), "{}\n{}", run.stderr, run.stdout);
    let errors = run.summary["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["item"], format!("volume {}/bad", st.ns));
    let msg = errors[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("failed after its retries") && msg.contains("137"),
        "{msg}"
    );
    assert_eq!(count(&run, "volumes"), 1);
    // Three attempts: the Job's backoff limit of 2 retries.
    let attempts = st
        .kubelet
        .runs()
        .iter()
        .filter(|r| {
            r.job_name
                .as_deref()
                .is_some_and(|j| j.ends_with(&job_suffix(&st, "bad")))
        })
        .count();
    assert_eq!(attempts, 3);
    let list = binary::run(st.cmd("list")).await;
    assert!(
        list.stdout.contains(&format!("{}/good", st.ns)),
        "{}",
        list.stdout
    );
    st.wait_clean().await;
}

/// The end of the name of a claim's backup mover Job
/// (`kubestow-<run tag>-backup-<hash of namespace/claim>`); the run tag is
/// not known in advance.
fn job_suffix(st: &Stage, claim: &str) -> String {
    let h = blake3::hash(format!("{}/{claim}", st.ns).as_bytes());
    format!("-backup-{}", &h.to_hex()[..8])
}
