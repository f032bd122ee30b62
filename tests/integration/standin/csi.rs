//! "Test CSI driver": the external-provisioner and external-snapshotter (plus
//! the snapshot controller) for one driver name, with directories as disks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};

use super::{ApiError, call, call_raw, delete, get_opt, list, now_rfc3339, quantity_bytes, s};

const SNAPSHOT_API: &str = "/apis/snapshot.storage.k8s.io/v1";
const CRD_API: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";

/// The external-snapshotter v1 CRDs (see tests/manifests/snapshot-crds).
const CRDS: [(&str, &str); 3] = [
    (
        "volumesnapshotclasses.snapshot.storage.k8s.io",
        include_str!(
            "../../manifests/snapshot-crds/snapshot.storage.k8s.io_volumesnapshotclasses.yaml"
        ),
    ),
    (
        "volumesnapshotcontents.snapshot.storage.k8s.io",
        include_str!(
            "../../manifests/snapshot-crds/snapshot.storage.k8s.io_volumesnapshotcontents.yaml"
        ),
    ),
    (
        "volumesnapshots.snapshot.storage.k8s.io",
        include_str!("../../manifests/snapshot-crds/snapshot.storage.k8s.io_volumesnapshots.yaml"),
    ),
];

type NeverReady = dyn Fn(&str, &str) -> bool + Send + Sync;

/// Provisions PVCs of StorageClasses whose provisioner is `driver`, deletes
/// their Released PVs, and takes VolumeSnapshots of classes with that driver.
/// Stops when dropped.
pub struct TestCsi {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    client: kube::Client,
    root: PathBuf,
    driver: String,
    never_ready: Mutex<Option<Arc<NeverReady>>>,
}

/// A VolumeSnapshot of ours, remembered so its content can go when it goes.
struct Known {
    content: String,
    delete: bool,
}

impl Drop for TestCsi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestCsi {
    /// Installs the snapshot CRDs (if needed) and starts the driver.
    pub async fn start(client: kube::Client, root: &Path, driver: &str) -> TestCsi {
        install_snapshot_crds(&client).await;
        for dir in ["pv", "snapshots"] {
            std::fs::create_dir_all(root.join(dir)).expect("creating the CSI root dirs");
        }
        let inner = Arc::new(Inner {
            client,
            root: root.to_owned(),
            driver: driver.to_owned(),
            never_ready: Mutex::new(None),
        });
        let task = tokio::spawn(inner.clone().run());
        TestCsi { inner, task }
    }

    pub fn driver(&self) -> &str {
        &self.inner.driver
    }

    /// Snapshots of PVCs for which `f(namespace, pvc)` holds never become
    /// ready (for timeout tests).
    pub fn set_never_ready(&self, f: impl Fn(&str, &str) -> bool + Send + Sync + 'static) {
        *self.inner.never_ready.lock().unwrap() = Some(Arc::new(f));
    }

    /// The directory holding the PV's data.
    pub fn pv_dir(&self, pv: &str) -> PathBuf {
        self.inner.root.join("pv").join(pv)
    }

    /// The data directory of a PVC, once it is Bound (waits up to 60 s).
    pub async fn pvc_dir(&self, namespace: &str, pvc: &str) -> PathBuf {
        let path = format!("/api/v1/namespaces/{namespace}/persistentvolumeclaims/{pvc}");
        let pv = super::wait_for(
            &format!("PVC {namespace}/{pvc} to be Bound"),
            Duration::from_secs(60),
            async || {
                let v = get_opt(&self.inner.client, &path)
                    .await
                    .map_err(|e| e.to_string())?;
                let v = v.ok_or("no such PVC")?;
                match (s(&v, "/status/phase"), s(&v, "/spec/volumeName")) {
                    ("Bound", pv) if !pv.is_empty() => Ok(pv.to_owned()),
                    (phase, _) => Err(format!("phase {phase:?}")),
                }
            },
        )
        .await;
        self.pv_dir(&pv)
    }

    /// The snapshot directories that currently exist.
    pub fn snapshot_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.inner.root.join("snapshots"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        dirs
    }
}

impl Inner {
    async fn run(self: Arc<Self>) {
        let mut known = HashMap::new();
        loop {
            if let Err(e) = self.sync(&mut known).await {
                eprintln!("test csi {}: {e}", self.driver);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One pass over everything; errors about single objects are logged and
    /// retried on the next pass.
    async fn sync(&self, known: &mut HashMap<String, Known>) -> Result<(), ApiError> {
        let c = &self.client;
        let classes: HashMap<String, String> = list(c, "/apis/storage.k8s.io/v1/storageclasses")
            .await?
            .iter()
            .filter(|sc| s(sc, "/provisioner") == self.driver)
            .map(|sc| {
                let reclaim = match s(sc, "/reclaimPolicy") {
                    "" => "Delete",
                    r => r,
                };
                (s(sc, "/metadata/name").to_owned(), reclaim.to_owned())
            })
            .collect();
        if !classes.is_empty() {
            for pvc in list(c, "/api/v1/persistentvolumeclaims").await? {
                let Some(reclaim) = classes.get(s(&pvc, "/spec/storageClassName")) else {
                    continue;
                };
                if s(&pvc, "/status/phase") == "Pending"
                    && s(&pvc, "/spec/volumeName").is_empty()
                    && pvc.pointer("/metadata/deletionTimestamp").is_none()
                    && let Err(e) = self.provision(&pvc, reclaim).await
                {
                    eprintln!("test csi {}: provisioning {}: {e}", self.driver, id(&pvc));
                }
            }
        }

        for pv in list(c, "/api/v1/persistentvolumes").await? {
            if s(&pv, "/spec/csi/driver") == self.driver
                && s(&pv, "/status/phase") == "Released"
                && s(&pv, "/spec/persistentVolumeReclaimPolicy") == "Delete"
            {
                let name = s(&pv, "/metadata/name");
                remove_dir(self.root.join("pv").join(name)).await;
                delete(c, &format!("/api/v1/persistentvolumes/{name}"), None).await?;
            }
        }

        let snapshot_classes: Vec<Value> =
            list(c, &format!("{SNAPSHOT_API}/volumesnapshotclasses"))
                .await?
                .into_iter()
                .filter(|vsc| s(vsc, "/driver") == self.driver)
                .collect();
        let snapshots = if snapshot_classes.is_empty() && known.is_empty() {
            Vec::new()
        } else {
            list(c, &format!("{SNAPSHOT_API}/volumesnapshots")).await?
        };
        let mut present = Vec::new();
        for vs in &snapshots {
            let class = match s(vs, "/spec/volumeSnapshotClassName") {
                "" => snapshot_classes
                    .iter()
                    .find(|vsc| vsc["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION] == "true"),
                name => snapshot_classes
                    .iter()
                    .find(|vsc| s(vsc, "/metadata/name") == name),
            };
            let Some(class) = class else { continue };
            let uid = s(vs, "/metadata/uid").to_owned();
            present.push(uid.clone());
            known.entry(uid.clone()).or_insert_with(|| Known {
                content: format!("snapcontent-{uid}"),
                delete: s(class, "/deletionPolicy") != "Retain",
            });
            if vs.pointer("/status/readyToUse") == Some(&json!(true))
                || vs.pointer("/metadata/deletionTimestamp").is_some()
            {
                continue;
            }
            let pvc = s(vs, "/spec/source/persistentVolumeClaimName");
            let never = self.never_ready.lock().unwrap().clone();
            if pvc.is_empty() || never.is_some_and(|f| f(s(vs, "/metadata/namespace"), pvc)) {
                continue;
            }
            if let Err(e) = self.snapshot(vs, class).await {
                eprintln!("test csi {}: snapshot {}: {e}", self.driver, id(vs));
            }
        }

        let gone: Vec<String> = known
            .keys()
            .filter(|u| !present.contains(u))
            .cloned()
            .collect();
        for uid in gone {
            let k = &known[&uid];
            if k.delete {
                let path = format!("{SNAPSHOT_API}/volumesnapshotcontents/{}", k.content);
                delete(c, &path, None).await?;
                remove_dir(self.root.join("snapshots").join(&k.content)).await;
            }
            known.remove(&uid);
        }
        Ok(())
    }

    /// Creates the PV (and its directory) for a Pending PVC, pre-bound to it;
    /// the controller-manager's PV binder then binds the pair.
    async fn provision(&self, pvc: &Value, reclaim: &str) -> Result<(), ApiError> {
        let c = &self.client;
        let (ns, uid) = (s(pvc, "/metadata/namespace"), s(pvc, "/metadata/uid"));
        let pv = format!("pvc-{uid}");
        if get_opt(c, &format!("/api/v1/persistentvolumes/{pv}"))
            .await?
            .is_some()
        {
            return Ok(()); // Created earlier; waiting for the binder.
        }
        let mut size = s(pvc, "/spec/resources/requests/storage").to_owned();
        // Where the data comes from: a ready snapshot, another PVC, or nowhere.
        let source = match (
            s(pvc, "/spec/dataSource/kind"),
            s(pvc, "/spec/dataSource/apiGroup"),
        ) {
            ("VolumeSnapshot", "snapshot.storage.k8s.io") => {
                let name = s(pvc, "/spec/dataSource/name");
                let path = format!("{SNAPSHOT_API}/namespaces/{ns}/volumesnapshots/{name}");
                let Some(vs) = get_opt(c, &path).await? else {
                    return Ok(());
                };
                if vs.pointer("/status/readyToUse") != Some(&json!(true)) {
                    return Ok(()); // Not ready yet: retry.
                }
                let restore = s(&vs, "/status/restoreSize");
                if quantity_bytes(restore) > quantity_bytes(&size) {
                    size = restore.to_owned();
                }
                let content = s(&vs, "/status/boundVolumeSnapshotContentName");
                Some(self.root.join("snapshots").join(content))
            }
            ("PersistentVolumeClaim", "") => {
                let name = s(pvc, "/spec/dataSource/name");
                let path = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}");
                let Some(src) = get_opt(c, &path).await? else {
                    return Ok(());
                };
                if s(&src, "/status/phase") != "Bound" {
                    return Ok(());
                }
                Some(self.root.join("pv").join(s(&src, "/spec/volumeName")))
            }
            _ => None,
        };
        let dir = self.root.join("pv").join(&pv);
        remove_dir(dir.clone()).await; // A half-made one from an interrupted pass.
        match source {
            Some(src) => copy_tree(src, dir).await.map_err(|message| ApiError {
                code: None,
                message,
            })?,
            None => std::fs::create_dir_all(&dir).map_err(|e| ApiError {
                code: None,
                message: format!("creating {}: {e}", dir.display()),
            })?,
        }
        let body = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": pv,
                "annotations": {"pv.kubernetes.io/provisioned-by": self.driver},
            },
            "spec": {
                "capacity": {"storage": size},
                "accessModes": pvc["spec"]["accessModes"],
                "persistentVolumeReclaimPolicy": reclaim,
                "storageClassName": s(pvc, "/spec/storageClassName"),
                "volumeMode": "Filesystem",
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": ns,
                    "name": s(pvc, "/metadata/name"),
                    "uid": uid,
                },
                "csi": {"driver": self.driver, "volumeHandle": pv},
            },
        });
        match call(c, Method::POST, "/api/v1/persistentvolumes", Some(body)).await {
            Err(e) if !e.is(409) => Err(e),
            _ => Ok(()),
        }
    }

    /// Copies the source PVC's disk and publishes content + status.
    async fn snapshot(&self, vs: &Value, class: &Value) -> Result<(), ApiError> {
        let c = &self.client;
        let (ns, name, uid) = (
            s(vs, "/metadata/namespace"),
            s(vs, "/metadata/name"),
            s(vs, "/metadata/uid"),
        );
        let pvc_name = s(vs, "/spec/source/persistentVolumeClaimName");
        let pvc_path = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{pvc_name}");
        let Some(pvc) = get_opt(c, &pvc_path).await? else {
            return Ok(());
        };
        if s(&pvc, "/status/phase") != "Bound" {
            return Ok(()); // Retry once bound.
        }
        let pv_name = s(&pvc, "/spec/volumeName");
        let pv = call(
            c,
            Method::GET,
            &format!("/api/v1/persistentvolumes/{pv_name}"),
            None,
        )
        .await?;
        let capacity = s(&pv, "/spec/capacity/storage").to_owned();
        let content = format!("snapcontent-{uid}");
        let dir = self.root.join("snapshots").join(&content);
        if !dir.exists() {
            // Copy under a hidden name, so a half copy never looks like a snapshot.
            let tmp = self.root.join("snapshots").join(format!(".{content}"));
            remove_dir(tmp.clone()).await;
            copy_tree(self.root.join("pv").join(pv_name), tmp.clone())
                .await
                .map_err(|message| ApiError {
                    code: None,
                    message,
                })?;
            std::fs::rename(&tmp, &dir).map_err(|e| ApiError {
                code: None,
                message: format!("renaming {}: {e}", tmp.display()),
            })?;
        }
        let body = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotContent",
            "metadata": {"name": content},
            "spec": {
                "driver": self.driver,
                "deletionPolicy": s(class, "/deletionPolicy"),
                "source": {"volumeHandle": s(&pv, "/spec/csi/volumeHandle")},
                "volumeSnapshotClassName": s(class, "/metadata/name"),
                "volumeSnapshotRef": {
                    "apiVersion": "snapshot.storage.k8s.io/v1",
                    "kind": "VolumeSnapshot",
                    "namespace": ns,
                    "name": name,
                    "uid": uid,
                },
            },
        });
        let contents = format!("{SNAPSHOT_API}/volumesnapshotcontents");
        if let Err(e) = call(c, Method::POST, &contents, Some(body)).await
            && !e.is(409)
        {
            return Err(e);
        }
        let now = jiff::Timestamp::now();
        let status = json!({"status": {
            "readyToUse": true,
            "snapshotHandle": content,
            "restoreSize": quantity_bytes(&capacity).unwrap_or(0),
            "creationTime": now.as_nanosecond() as i64,
        }});
        call(
            c,
            Method::PATCH,
            &format!("{contents}/{content}/status"),
            Some(status),
        )
        .await?;
        let status = json!({"status": {
            "boundVolumeSnapshotContentName": content,
            "readyToUse": true,
            "restoreSize": capacity,
            "creationTime": now_rfc3339(),
        }});
        let path = format!("{SNAPSHOT_API}/namespaces/{ns}/volumesnapshots/{name}/status");
        call(c, Method::PATCH, &path, Some(status)).await?;
        Ok(())
    }
}

fn id(v: &Value) -> String {
    format!("{}/{}", s(v, "/metadata/namespace"), s(v, "/metadata/name"))
}

/// `cp -a --sparse=always`: modes, owners, times, symlinks, hard links,
/// xattrs and holes survive, as on a block-level snapshot.
async fn copy_tree(src: PathBuf, dst: PathBuf) -> Result<(), String> {
    let out = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--sparse=always")
        .arg(src.join("."))
        .arg(&dst)
        .output()
        .await
        .map_err(|e| format!("running cp: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cp -a {} {}: {}",
            src.display(),
            dst.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Removes a directory tree if it exists (off the runtime: trees can be big).
async fn remove_dir(dir: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
}

/// Creates the snapshot CRDs unless present, and waits until the v1 API
/// serves them. Safe to call from concurrent tests.
pub async fn install_snapshot_crds(client: &kube::Client) {
    for (name, yaml) in CRDS {
        let created = call_raw(
            client,
            Method::POST,
            CRD_API,
            "application/yaml",
            yaml.into(),
        )
        .await;
        if let Err(e) = created {
            assert!(e.is(409), "creating CRD {name}: {e}");
        }
    }
    super::wait_for(
        "the snapshot CRDs to be Established and served",
        Duration::from_secs(30),
        async || {
            for (name, _) in CRDS {
                let crd = call(client, Method::GET, &format!("{CRD_API}/{name}"), None)
                    .await
                    .map_err(|e| e.to_string())?;
                let established = crd["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Established" && c["status"] == "True");
                if !established {
                    return Err(format!("CRD {name} not Established"));
                }
            }
            let resources = call(client, Method::GET, SNAPSHOT_API, None)
                .await
                .map_err(|e| e.to_string())?;
            for plural in [
                "volumesnapshots",
                "volumesnapshotcontents",
                "volumesnapshotclasses",
            ] {
                if !resources["resources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["name"] == plural)
                {
                    return Err(format!("{SNAPSHOT_API} does not serve {plural} yet"));
                }
            }
            Ok(())
        },
    )
    .await;
}

/// Creates a StorageClass for `driver` (Immediate binding, expandable) with
/// the given reclaim policy (`Delete` or `Retain`).
pub async fn storage_class(client: &kube::Client, name: &str, driver: &str, reclaim: &str) {
    let body = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": driver,
        "reclaimPolicy": reclaim,
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": true,
    });
    let path = "/apis/storage.k8s.io/v1/storageclasses";
    if let Err(e) = call(client, Method::POST, path, Some(body)).await {
        assert!(e.is(409), "creating StorageClass {name}: {e}");
    }
}

/// Creates a VolumeSnapshotClass for `driver` (deletionPolicy Delete),
/// annotated as the default class of that driver, as clusters usually have.
pub async fn snapshot_class(client: &kube::Client, name: &str, driver: &str) {
    install_snapshot_crds(client).await;
    let body = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotClass",
        "metadata": {"name": name, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "driver": driver,
        "deletionPolicy": "Delete",
    });
    let path = format!("{SNAPSHOT_API}/volumesnapshotclasses");
    if let Err(e) = call(client, Method::POST, &path, Some(body)).await {
        assert!(e.is(409), "creating VolumeSnapshotClass {name}: {e}");
    }
}
