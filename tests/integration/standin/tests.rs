//! The stand-ins against the real apiserver + controller-manager: the
//! controllers must accept what they do (PV binding, Job completion, retries).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};

use super::{
    Fault, TestCsi, TestKubelet, call, delete, get_opt, s, snapshot_class, storage_class, wait_for,
};
use crate::env;

const SNAPSHOTS: &str = "/apis/snapshot.storage.k8s.io/v1";

async fn create(client: &kube::Client, path: &str, body: Value) -> Value {
    call(client, Method::POST, path, Some(body))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn pvc(client: &kube::Client, ns: &str, name: &str, sc: &str, source: Option<Value>) {
    let mut body = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "storageClassName": sc,
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    });
    if let Some(source) = source {
        body["spec"]["dataSource"] = source;
    }
    create(
        client,
        &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims"),
        body,
    )
    .await;
}

async fn volume_snapshot(
    client: &kube::Client,
    ns: &str,
    name: &str,
    pvc: &str,
    class: Option<&str>,
) {
    let mut spec = json!({"source": {"persistentVolumeClaimName": pvc}});
    if let Some(class) = class {
        spec["volumeSnapshotClassName"] = json!(class);
    }
    let body = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": name},
        "spec": spec,
    });
    create(
        client,
        &format!("{SNAPSHOTS}/namespaces/{ns}/volumesnapshots"),
        body,
    )
    .await;
}

/// Waits until GET `path` answers 404.
async fn wait_gone(client: &kube::Client, what: &str, path: &str, timeout: Duration) {
    wait_for(
        &format!("{what} to disappear"),
        timeout,
        async || match get_opt(client, path).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(v) => Err(format!("still there: {}", v["status"])),
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standin_csi_provisions_snapshots_restores_and_deletes() {
    let (client, ns) = env::namespace("standin-csi").await;
    let root = tempfile::tempdir().unwrap();
    let driver = format!("{}.csi.test", env::unique_name("driver"));
    let (sc, vsc) = (env::unique_name("sc"), env::unique_name("vsc"));
    storage_class(&client, &sc, &driver, "Delete").await;
    snapshot_class(&client, &vsc, &driver).await;
    let csi = TestCsi::start(client.clone(), root.path(), &driver).await;
    assert_eq!(csi.driver(), driver);

    // Provisioning; the controller-manager's binder binds the pre-bound pair.
    pvc(&client, &ns, "data", &sc, None).await;
    let data = csi.pvc_dir(&ns, "data").await;
    let claim = call(
        &client,
        Method::GET,
        &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/data"),
        None,
    )
    .await
    .unwrap();
    let pv_name = s(&claim, "/spec/volumeName").to_owned();
    let pv = call(
        &client,
        Method::GET,
        &format!("/api/v1/persistentvolumes/{pv_name}"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(pv_name, format!("pvc-{}", s(&claim, "/metadata/uid")));
    assert_eq!(s(&pv, "/spec/csi/driver"), driver);
    assert_eq!(s(&pv, "/status/phase"), "Bound");
    assert_eq!(
        pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
        json!(driver)
    );
    assert_eq!(data, csi.pv_dir(&pv_name));

    std::fs::write(data.join("file.txt"), "before").unwrap();
    std::fs::set_permissions(
        data.join("file.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink("file.txt", data.join("link")).unwrap();

    // Snapshot: a point-in-time copy, published like the external-snapshotter.
    volume_snapshot(&client, &ns, "snap", "data", Some(&vsc)).await;
    let vs_path = format!("{SNAPSHOTS}/namespaces/{ns}/volumesnapshots/snap");
    let vs = wait_for(
        "VolumeSnapshot snap to be ready",
        Duration::from_secs(30),
        async || {
            let vs = call(&client, Method::GET, &vs_path, None)
                .await
                .map_err(|e| e.to_string())?;
            if vs["status"]["readyToUse"] == true {
                Ok(vs)
            } else {
                Err(vs["status"].to_string())
            }
        },
    )
    .await;
    std::fs::write(data.join("file.txt"), "after").unwrap();
    assert_eq!(vs["status"]["restoreSize"], "1Gi");
    let content_name = s(&vs, "/status/boundVolumeSnapshotContentName").to_owned();
    let content_path = format!("{SNAPSHOTS}/volumesnapshotcontents/{content_name}");
    let content = call(&client, Method::GET, &content_path, None)
        .await
        .unwrap();
    assert_eq!(content["status"]["readyToUse"], true);
    assert_eq!(content["status"]["restoreSize"], 1u64 << 30);
    assert_eq!(
        content["spec"]["volumeSnapshotRef"]["uid"],
        vs["metadata"]["uid"]
    );
    let snap_dir = root.path().join("snapshots").join(&content_name);
    assert_eq!(csi.snapshot_dirs(), vec![snap_dir.clone()]);
    assert_eq!(
        std::fs::read_to_string(snap_dir.join("file.txt")).unwrap(),
        "before"
    );
    let mode = std::fs::metadata(snap_dir.join("file.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    assert_eq!(
        std::fs::read_link(snap_dir.join("link")).unwrap(),
        Path::new("file.txt")
    );

    // Restore: a PVC from the snapshot starts as its copy.
    let source =
        json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"});
    pvc(&client, &ns, "restored", &sc, Some(source)).await;
    let restored = csi.pvc_dir(&ns, "restored").await;
    assert_eq!(
        std::fs::read_to_string(restored.join("file.txt")).unwrap(),
        "before"
    );

    // A snapshot that never becomes ready, found through the default class.
    csi.set_never_ready(|_, pvc| pvc == "restored");
    volume_snapshot(&client, &ns, "stuck", "restored", None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stuck = call(
        &client,
        Method::GET,
        &format!("{SNAPSHOTS}/namespaces/{ns}/volumesnapshots/stuck"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(stuck["status"]["readyToUse"], Value::Null, "{stuck}");

    // Deleting the snapshot deletes its content and copy.
    delete(&client, &vs_path, None).await.unwrap();
    wait_gone(
        &client,
        "VolumeSnapshotContent",
        &content_path,
        Duration::from_secs(30),
    )
    .await;
    assert!(!snap_dir.exists(), "{} still exists", snap_dir.display());

    // Deleting the PVC releases the PV (reclaim Delete): PV and disk go.
    delete(
        &client,
        &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/data"),
        None,
    )
    .await
    .unwrap();
    wait_gone(
        &client,
        "PV of PVC data",
        &format!("/api/v1/persistentvolumes/{pv_name}"),
        Duration::from_secs(60),
    )
    .await;
    assert!(!data.exists(), "{} still exists", data.display());
}

/// A cluster with both stand-ins, a PVC `data` holding a file, and a Secret
/// `stow` with the repository password.
struct Cluster {
    client: kube::Client,
    ns: String,
    node: String,
    root: tempfile::TempDir,
    _csi: TestCsi,
    kubelet: TestKubelet,
}

async fn cluster(hint: &str) -> Cluster {
    let (client, ns) = env::namespace(hint).await;
    let root = tempfile::tempdir().unwrap();
    let driver = format!("{}.csi.test", env::unique_name("driver"));
    let sc = env::unique_name("sc");
    storage_class(&client, &sc, &driver, "Delete").await;
    let csi = TestCsi::start(client.clone(), root.path(), &driver).await;
    let node = env::unique_name("node");
    let binary = Path::new(env!("CARGO_BIN_EXE_kubestow"));
    let kubelet = TestKubelet::start(client.clone(), root.path(), &[&node], &[&ns], binary).await;
    pvc(&client, &ns, "data", &sc, None).await;
    std::fs::write(csi.pvc_dir(&ns, "data").await.join("hello.txt"), "hello").unwrap();
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "stow"},
        "stringData": {"STOW_PASSWORD": "standin-password"},
    });
    create(&client, &format!("/api/v1/namespaces/{ns}/secrets"), secret).await;
    Cluster {
        client,
        ns,
        node,
        root,
        _csi: csi,
        kubelet,
    }
}

/// A Job backing up PVC `data` into a file repository on the node's
/// hostPath `/srv/repo`, through the mount paths a real pod would see.
async fn backup_job(c: &Cluster, name: &str, backoff_limit: u32, restart: &str) {
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {"spec": {
                "restartPolicy": restart,
                // Not kubestow: succeeds at once.
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [{
                    "name": "mover",
                    "image": "kubestow:test",
                    "command": ["/kubestow"],
                    "env": [
                        {"name": "STOW_MODE", "value": "volume-backup"},
                        {"name": "STOW_INIT", "value": "true"},
                        {"name": "STOW_REPOSITORY", "value": format!("file:///repo/{name}")},
                        {"name": "STOW_VOLUME_PATH", "value": "/data"},
                        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "STOW_VOLUME_NAME", "value": "$(NS)/data"},
                        {"name": "RUST_LOG", "value": "info"},
                    ],
                    "envFrom": [{"secretRef": {"name": "stow"}}],
                    "volumeMounts": [
                        {"name": "data", "mountPath": "/data", "readOnly": true},
                        {"name": "repo", "mountPath": "/repo"},
                    ],
                }],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "repo", "hostPath": {"path": "/srv/repo", "type": "DirectoryOrCreate"}},
                ],
            }},
        },
    });
    create(
        &c.client,
        &format!("/apis/batch/v1/namespaces/{}/jobs", c.ns),
        job,
    )
    .await;
}

/// Waits for the Job's Complete or Failed condition; returns the Job.
async fn job_finished(c: &Cluster, name: &str, timeout: Duration) -> Value {
    let path = format!("/apis/batch/v1/namespaces/{}/jobs/{name}", c.ns);
    wait_for(
        &format!("Job {}/{name} to finish", c.ns),
        timeout,
        async || {
            let job = call(&c.client, Method::GET, &path, None)
                .await
                .map_err(|e| e.to_string())?;
            let done = job["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"
                });
            if done {
                Ok(job)
            } else {
                Err(job["status"].to_string())
            }
        },
    )
    .await
}

/// Type and reason of the finished Job's terminal condition (`Complete` or
/// `Failed`; newer controllers put `SuccessCriteriaMet` or `FailureTarget`
/// before it).
fn condition(job: &Value) -> (&str, &str) {
    let c = job["status"]["conditions"]
        .as_array()
        .and_then(|cs| {
            cs.iter().find(|c| {
                (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"
            })
        })
        .expect("a true Complete or Failed condition");
    (s(c, "/type"), s(c, "/reason"))
}

/// The condition of a Job that succeeded: no reason before 1.31, where the
/// JobSuccessPolicy feature (on by default from then) gives `Complete` the
/// reason `CompletionsReached`.
async fn completed() -> (&'static str, &'static str) {
    if env::server_version().await.at_least(31) {
        ("Complete", "CompletionsReached")
    } else {
        ("Complete", "")
    }
}

async fn job_pods(c: &Cluster, job: &str) -> Vec<Value> {
    super::list(
        &c.client,
        &format!(
            "/api/v1/namespaces/{}/pods?labelSelector=job-name%3D{job}",
            c.ns
        ),
    )
    .await
    .unwrap()
}

fn exit_codes(k: &TestKubelet, job: &str) -> Vec<Option<i32>> {
    k.runs()
        .iter()
        .filter(|r| r.job_name.as_deref() == Some(job))
        .map(|r| r.exit_code)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standin_kubelet_runs_a_kubestow_job_to_completion() {
    let c = cluster("standin-kubelet-job").await;
    backup_job(&c, "backup", 1, "Never").await;
    let job = job_finished(&c, "backup", Duration::from_secs(120)).await;
    let log = c
        .kubelet
        .log(&c.ns, s(&job_pods(&c, "backup").await[0], "/metadata/name"));
    assert_eq!(
        condition(&job),
        completed().await,
        "{}\n--- log\n{log}",
        job["status"]
    );

    let pods = job_pods(&c, "backup").await;
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert_eq!(s(pod, "/spec/nodeName"), c.node);
    assert_eq!(s(pod, "/status/phase"), "Succeeded");
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 0);
    let summary: Value = serde_json::from_str(s(terminated, "/message"))
        .unwrap_or_else(|e| panic!("termination message is not JSON ({e}): {terminated}"));
    assert_eq!(summary["status"], "success", "{summary}");
    assert_eq!(summary["mode"], "volume-backup");
    assert!(
        log.contains(&summary.to_string()) || log.contains("\"success\""),
        "{log}"
    );
    // The repository went to the node's hostPath, the volume name through $(NS).
    let repo = c
        .root
        .path()
        .join("nodes")
        .join(&c.node)
        .join("srv/repo/backup");
    assert!(
        repo.join("config").exists(),
        "no repository at {}:\n{log}",
        repo.display()
    );
    assert!(log.contains(&format!("{}/data", c.ns)), "{log}");
    assert_eq!(exit_codes(&c.kubelet, "backup"), vec![Some(0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standin_kubelet_kills_and_the_job_controller_retries() {
    let c = cluster("standin-kubelet-retry").await;
    c.kubelet
        .set_fault(|p| match (p.job_name.as_deref(), p.attempt) {
            (Some("flaky"), 0) | (Some("doomed"), _) => Some(Fault::KillAfter(Duration::ZERO)),
            (Some("restarts"), _) => Some(Fault::KillWhen(Arc::new(|| true))),
            _ => None,
        });
    let started = Instant::now();
    backup_job(&c, "flaky", 1, "Never").await;
    backup_job(&c, "doomed", 1, "Never").await;
    backup_job(&c, "restarts", 3, "OnFailure").await;

    let flaky = job_finished(&c, "flaky", Duration::from_secs(180)).await;
    eprintln!(
        "standin: Job flaky finished after {:.1?}",
        started.elapsed()
    );
    assert_eq!(condition(&flaky), completed().await, "{}", flaky["status"]);
    assert_eq!(
        (
            flaky["status"]["failed"].as_u64(),
            flaky["status"]["succeeded"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(exit_codes(&c.kubelet, "flaky"), vec![Some(137), Some(0)]);
    let failed = job_pods(&c, "flaky")
        .await
        .into_iter()
        .find(|p| p["status"]["phase"] == "Failed")
        .unwrap();
    assert_eq!(
        failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        137
    );

    let doomed = job_finished(&c, "doomed", Duration::from_secs(180)).await;
    eprintln!(
        "standin: Job doomed finished after {:.1?}",
        started.elapsed()
    );
    assert_eq!(
        condition(&doomed),
        ("Failed", "BackoffLimitExceeded"),
        "{}",
        doomed["status"]
    );
    assert_eq!(exit_codes(&c.kubelet, "doomed"), vec![Some(137), Some(137)]);

    // OnFailure: the same pod restarts its container.
    let restarts = job_finished(&c, "restarts", Duration::from_secs(60)).await;
    assert_eq!(
        condition(&restarts),
        completed().await,
        "{}",
        restarts["status"]
    );
    assert_eq!(exit_codes(&c.kubelet, "restarts"), vec![Some(137), Some(0)]);
    let pods = job_pods(&c, "restarts").await;
    assert_eq!(pods.len(), 1);
    let status = &pods[0]["status"]["containerStatuses"][0];
    assert_eq!(status["restartCount"], 1, "{status}");
    assert_eq!(
        status["lastState"]["terminated"]["exitCode"], 137,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standin_kubelet_schedules_runs_and_deletes_pods() {
    let c = cluster("standin-kubelet-pods").await;
    let pods = format!("/api/v1/namespaces/{}/pods", c.ns);
    // A plain image "runs" until deleted; it only fits our node by name.
    let app = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app"},
        "spec": {
            "containers": [{"name": "app", "image": "busybox", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [c.node]}]},
            ]}}},
        },
    });
    create(&c.client, &pods, app).await;
    // A pod no node fits stays Pending.
    let nowhere = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "nowhere"},
        "spec": {"containers": [{"name": "x", "image": "busybox"}], "nodeSelector": {"kubernetes.io/os": "windows"}},
    });
    create(&c.client, &pods, nowhere).await;
    // A kubestow process that keeps retrying an unreachable S3 endpoint.
    let slow = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "slow"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 3,
            "containers": [{"name": "mover", "image": "kubestow:test", "env": [
                {"name": "STOW_MODE", "value": "check"},
                {"name": "STOW_REPOSITORY", "value": "s3://nowhere/repo"},
                {"name": "STOW_PASSWORD", "value": "x"},
                {"name": "AWS_ENDPOINT_URL", "value": "http://127.0.0.1:9"},
                {"name": "AWS_ACCESS_KEY_ID", "value": "x"},
                {"name": "AWS_SECRET_ACCESS_KEY", "value": "x"},
                {"name": "AWS_REGION", "value": "garage"},
                {"name": "STOW_RECONNECT_TIMEOUT", "value": "1m"},
            ]}],
        },
    });
    create(&c.client, &pods, slow).await;

    for name in ["app", "slow"] {
        let path = format!("{pods}/{name}");
        wait_for(
            &format!("pod {name} to run"),
            Duration::from_secs(30),
            async || {
                let pod = call(&c.client, Method::GET, &path, None)
                    .await
                    .map_err(|e| e.to_string())?;
                if pod["status"]["phase"] == "Running" {
                    Ok(())
                } else {
                    Err(pod["status"].to_string())
                }
            },
        )
        .await;
    }
    let app = call(&c.client, Method::GET, &format!("{pods}/app"), None)
        .await
        .unwrap();
    assert_eq!(s(&app, "/spec/nodeName"), c.node);
    assert_eq!(app["status"]["containerStatuses"][0]["ready"], true);
    // The kubelet-style path of the CSI volume leads to the PV's data.
    let pv = s(
        &call(
            &c.client,
            Method::GET,
            &format!("/api/v1/namespaces/{}/persistentvolumeclaims/data", c.ns),
            None,
        )
        .await
        .unwrap(),
        "/spec/volumeName",
    )
    .to_owned();
    let mount = c
        .root
        .path()
        .join("nodes")
        .join(&c.node)
        .join("var/lib/kubelet/pods")
        .join(s(&app, "/metadata/uid"))
        .join("volumes/kubernetes.io~csi")
        .join(&pv)
        .join("mount");
    assert_eq!(
        std::fs::read_to_string(mount.join("hello.txt")).unwrap(),
        "hello"
    );
    let nowhere = call(&c.client, Method::GET, &format!("{pods}/nowhere"), None)
        .await
        .unwrap();
    assert_eq!(s(&nowhere, "/spec/nodeName"), "");
    assert_eq!(s(&nowhere, "/status/phase"), "Pending");

    // Graceful deletion: confirmed at once without a process, after SIGTERM
    // (or SIGKILL at the end of the grace period) with one.
    assert!(
        c.kubelet
            .runs()
            .iter()
            .any(|r| r.pod == "slow" && r.exit_code.is_none()),
        "{:?}",
        c.kubelet.runs()
    );
    let deleted = Instant::now();
    for name in ["app", "slow"] {
        delete(&c.client, &format!("{pods}/{name}"), None)
            .await
            .unwrap();
    }
    for name in ["app", "slow"] {
        wait_gone(
            &c.client,
            &format!("pod {name}"),
            &format!("{pods}/{name}"),
            Duration::from_secs(20),
        )
        .await;
    }
    eprintln!("standin: pods deleted after {:.1?}", deleted.elapsed());
    let slow_run = c
        .kubelet
        .runs()
        .into_iter()
        .find(|r| r.pod == "slow")
        .unwrap();
    assert!(slow_run.exit_code.is_some(), "{slow_run:?}");
    eprintln!(
        "standin: kubestow exited with {:?} on deletion",
        slow_run.exit_code
    );
    let log = c.kubelet.log(&c.ns, "slow");
    assert!(
        log.contains("SIGTERM"),
        "kubestow did not see SIGTERM:\n{log}"
    );
    assert!(
        !mount.exists(),
        "the pod's volume dir outlived it: {}",
        mount.display()
    );

    // Dropping the kubelet removes its nodes.
    let Cluster {
        client,
        node,
        kubelet,
        ..
    } = c;
    drop(kubelet);
    let node_path = format!("/api/v1/nodes/{node}");
    assert!(
        get_opt(&client, &node_path).await.unwrap().is_none(),
        "node {node} survived"
    );
}
