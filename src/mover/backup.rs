//! `backup`, volume data: plan a source per claim, run the movers, collect
//! their results for the manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::job::{self, Mount, VOLUME_MOUNT, Work};
use super::plan::{self, Planned, Source};
use super::{JobEnd, MoverError, MoverOptions, Runner, str_at};
use crate::cluster::api::{Kube, message};
use crate::cluster::types;
use crate::config::{VolumeSource, vars};
use crate::context::RunContext;
use crate::repo::{MoverResult, Repository, VolumeEntry};
use crate::summary::Report;

/// Where consistency hooks (freeze, flush; the hooks issue) plug in: called
/// before a volume's snapshot is taken or its live data is read, and after.
#[async_trait::async_trait]
pub trait Consistency: Send + Sync {
    /// Runs before the VolumeSnapshot is created or the live data read; an
    /// error fails the volume.
    async fn before(
        &self,
        _volume: &Planned,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }
    /// Runs once the VolumeSnapshot is created or the live read's Job has
    /// ended, whether or not that worked.
    async fn after(&self, _volume: &Planned) {}
}

/// No hooks.
pub struct NoHooks;
impl Consistency for NoHooks {}

/// What the volume phase adds to a backup.
#[derive(Debug, Default)]
pub struct Volumes {
    /// Manifest entries of the volumes backed up, by `namespace/claim`.
    pub entries: BTreeMap<String, VolumeEntry>,
    /// For the report: skipped volumes with reasons, and how many volumes
    /// each source read.
    pub details: Value,
}

fn item(volume: &str) -> String {
    format!("volume {volume}")
}

/// The objects the planner needs: volumes of the claims, storage and
/// snapshot classes, pods of the claims' namespaces.
async fn inputs(
    kube: &Kube,
    claims: &[Value],
    channels: usize,
) -> Result<[Vec<Value>; 4], MoverError> {
    let pv_names: BTreeSet<&str> = claims
        .iter()
        .filter_map(|c| str_at(c, "/spec/volumeName"))
        .collect();
    let pvs: Vec<Value> = futures::stream::iter(pv_names)
        .map(|n| async move { kube.get(&types::volumes(), None, n).await })
        .buffer_unordered(channels)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .filter_map(|r| r.ok().flatten())
        .collect();
    let scs = kube
        .list_all(&types::storage_classes(), None, None)
        .await
        .map_err(|source| MoverError::List {
            what: "storage classes".into(),
            source,
        })?;
    // No snapshot CRDs (404) means no classes; a denial is worth a warning.
    let vscs = kube.list_all(&types::snapshot_classes(), None, None)
        .await
        .unwrap_or_else(|e| {
            warn!(error = %message(&e), "cannot list VolumeSnapshotClasses; snapshots are not used");
            Vec::new()
        });
    let namespaces: BTreeSet<&str> = claims
        .iter()
        .filter_map(|c| str_at(c, "/metadata/namespace"))
        .collect();
    let mut pods = Vec::new();
    for ns in namespaces {
        pods.extend(
            kube.list_all(&types::pods(), Some(ns), None)
                .await
                .map_err(|source| MoverError::List {
                    what: format!("pods in {ns}"),
                    source,
                })?,
        );
    }
    Ok([pvs, scs, vscs, pods])
}

/// Backs up the data of `claims` (live objects of the selected claims).
/// Failures of single volumes go into `report`; the rest still lands.
pub(crate) async fn back_up(
    kube: &Kube,
    repo: &Repository,
    options: &MoverOptions,
    ctx: &RunContext,
    claims: Vec<Value>,
    hooks: &dyn Consistency,
    report: &mut Report,
) -> Volumes {
    let mut out = Volumes::default();
    if options.source == VolumeSource::Skip || claims.is_empty() {
        return out;
    }
    let channels = usize::from(options.channels).max(1);
    let [pvs, scs, vscs, pods] = match inputs(kube, &claims, channels).await {
        Ok(i) => i,
        Err(e) => {
            report.fail_item("volumes", e.to_string());
            return out;
        }
    };
    let exclude = {
        let mut b = globset::GlobSetBuilder::new();
        for g in &options.exclude {
            if let Ok(g) = globset::Glob::new(g) {
                b.add(g);
            }
        }
        b.build().unwrap_or_else(|_| globset::GlobSet::empty())
    };
    let planned = plan::plan(&plan::Inputs {
        claims: &claims,
        volumes: &pvs,
        storage_classes: &scs,
        snapshot_classes: &vscs,
        pods: &pods,
        source: options.source,
        exclude: &exclude,
    });
    let mut skipped = Vec::new();
    for l in &planned.left {
        if l.failed {
            warn!(volume = %l.volume, reason = %l.reason, "volume not backed up");
            report.fail_item(item(&l.volume), l.reason.clone());
        } else {
            info!(volume = %l.volume, reason = %l.reason, "volume skipped");
            skipped.push(json!({"volume": l.volume, "reason": l.reason}));
        }
    }
    report.count("volumes_skipped", skipped.len() as u64);
    let mut sources: BTreeMap<&str, u64> = BTreeMap::new();
    for v in &planned.volumes {
        *sources.entry(v.source.name()).or_default() += 1;
    }
    info!(volumes = planned.volumes.len(), ?sources, "volume plan");
    out.details = json!({"skipped": skipped, "sources": sources});
    if planned.volumes.is_empty() {
        return out;
    }
    let runner = match Runner::start(
        kube,
        options,
        &ctx.run_id,
        ctx.cancel.clone(),
        planned.volumes.len(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            for v in &planned.volumes {
                report.fail_item(item(&v.volume), e.to_string());
            }
            return out;
        }
    };
    let namespaces: Vec<String> = planned
        .volumes
        .iter()
        .map(|v| v.namespace.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // A retried run starts clean: what an earlier attempt left goes.
    runner.clean_up(&namespaces).await;

    let vb = VolumeBackup {
        runner: &runner,
        repo,
        options,
        hooks,
    };
    // Snapshots first, all close together in time: the volumes of one
    // application are then as consistent with each other as the driver
    // allows. The slow part, moving data, follows STOW_CHANNELS.
    let snapshots: BTreeMap<String, Result<(), std::sync::Arc<MoverError>>> =
        futures::stream::iter(
            planned
                .volumes
                .iter()
                .filter(|v| matches!(v.source, Source::Snapshot { .. })),
        )
        .map(|v| async {
            let r = vb.take_snapshot(v).await.map_err(std::sync::Arc::new);
            (v.volume.clone(), r)
        })
        .buffer_unordered(channels)
        .collect()
        .await;
    let snapshots = &snapshots;
    let results: Vec<(&Planned, Result<MoverResult, MoverError>)> =
        futures::stream::iter(&planned.volumes)
            .map(|v| {
                let vb = &vb;
                async move {
                    let r = match snapshots.get(&v.volume) {
                        Some(Err(e)) => Err(MoverError::Shared(e.clone())),
                        _ => vb.one(v).await,
                    };
                    (v, r)
                }
            })
            .buffer_unordered(channels)
            .collect()
            .await;
    runner.clean_up(&[]).await;

    let mut done = 0u64;
    for (v, r) in results {
        match r {
            Ok(result) => {
                done += 1;
                let mr = &result.report;
                for key in ["read", "reused", "resumed", "new", "stored"] {
                    if let Some(n) = mr.pointer(&format!("/bytes/{key}")).and_then(Value::as_u64) {
                        report.add_bytes(&format!("volume_{key}"), n);
                    }
                }
                if let Some(errors) = mr.get("errors").and_then(Value::as_array) {
                    for e in errors {
                        report.fail_item(
                            format!("{} {}", item(&v.volume), str_at(e, "/item").unwrap_or("")),
                            str_at(e, "/message").unwrap_or("").to_string(),
                        );
                    }
                }
                let mut entry = result.entry;
                if let Some(stats) = entry.stats.as_object_mut() {
                    stats.insert("source".into(), json!(v.source.name()));
                    stats.insert("storage_class".into(), json!(v.storage_class));
                    stats.insert("capacity".into(), json!(v.capacity));
                }
                out.entries.insert(v.volume.clone(), entry);
            }
            Err(e) if ctx.cancel.is_cancelled() => {
                info!(volume = %v.volume, error = %e, "volume not finished: cancelled");
            }
            Err(e) => {
                warn!(volume = %v.volume, error = %e, "volume not backed up");
                report.fail_item(item(&v.volume), e.to_string());
            }
        }
    }
    report.count("volumes", done);
    out
}

/// The temporary objects of one volume.
struct Names {
    /// VolumeSnapshot of the claim, in the claim's namespace.
    snap: String,
    /// VolumeSnapshotContent on the same handle, bound at home.
    content: String,
    /// VolumeSnapshot at home, bound to `content`.
    home_snap: String,
    /// Claim at home cloned from `home_snap`, or bound to `shadow`.
    clone: String,
    /// Read-only PersistentVolume on the claim's volume (claim source).
    shadow: String,
    /// The mover Job.
    job: String,
}

struct VolumeBackup<'a> {
    runner: &'a Runner<'a>,
    repo: &'a Repository,
    options: &'a MoverOptions,
    hooks: &'a dyn Consistency,
}

impl VolumeBackup<'_> {
    /// Names of a volume's temporary objects, all stable for the run.
    fn names(&self, v: &Planned) -> Names {
        let tag = &self.runner.tag;
        let n = |what| job::object_name(tag, what, &v.volume);
        Names {
            snap: n("snap"),
            content: n("content"),
            home_snap: n("home"),
            clone: n("clone"),
            shadow: n("shadow"),
            job: n("backup"),
        }
    }

    /// Creates the VolumeSnapshot of a claim (hooks around it).
    async fn take_snapshot(&self, v: &Planned) -> Result<(), MoverError> {
        let Source::Snapshot { class } = &v.source else {
            return Ok(());
        };
        let snap = self.names(v).snap;
        self.hooks
            .before(v)
            .await
            .map_err(MoverError::Consistency)?;
        let body = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": job::metadata(&snap, &v.namespace, &self.runner.tag, &self.runner.run_id, None),
            "spec": {"volumeSnapshotClassName": class,
                     "source": {"persistentVolumeClaimName": v.claim}},
        });
        let r = self
            .runner
            .create(&types::volume_snapshots(), &v.namespace, &body)
            .await;
        self.hooks.after(v).await;
        r.map(|_| ())
    }

    /// Waits until a VolumeSnapshot is ready to use; returns it.
    async fn wait_ready(&self, v: &Planned, ns: &str, snap: &str) -> Result<Value, MoverError> {
        let timeout = self.options.snapshot_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let obj = self
                .runner
                .kube
                .get(&types::volume_snapshots(), Some(ns), snap)
                .await
                .map_err(|source| MoverError::ReadSnapshot {
                    namespace: ns.to_string(),
                    snapshot: snap.to_string(),
                    claim: v.volume.clone(),
                    source,
                })?
                .ok_or_else(|| MoverError::SnapshotGone {
                    namespace: ns.to_string(),
                    snapshot: snap.to_string(),
                    claim: v.volume.clone(),
                })?;
            if obj.pointer("/status/readyToUse").and_then(Value::as_bool) == Some(true) {
                return Ok(obj);
            }
            if tokio::time::Instant::now() > deadline {
                let err = str_at(&obj, "/status/error/message")
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                return Err(MoverError::SnapshotNotReady {
                    namespace: ns.to_string(),
                    snapshot: snap.to_string(),
                    claim: v.volume.clone(),
                    seconds: timeout.as_secs(),
                    error: err,
                });
            }
            tokio::select! {
                _ = self.runner.cancel.cancelled() => return Err(MoverError::Cancelled),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Brings the claim's snapshot home: a VolumeSnapshotContent on the
    /// same snapshot handle (deletionPolicy Retain, so deleting it never
    /// deletes the snapshot), bound to a VolumeSnapshot at home. Returns
    /// the home snapshot's restore size.
    async fn bring_home(&self, v: &Planned, n: &Names) -> Result<Option<String>, MoverError> {
        let kube = self.runner.kube;
        let home = &self.runner.home;
        let snapshot = self.wait_ready(v, &v.namespace, &n.snap).await?;
        let bound =
            str_at(&snapshot, "/status/boundVolumeSnapshotContentName").ok_or_else(|| {
                MoverError::Step(format!(
                    "VolumeSnapshot {}/{} of claim {} is ready but names no VolumeSnapshotContent",
                    v.namespace, n.snap, v.volume
                ))
            })?;
        let content = kube
            .get(&types::snapshot_contents(), None, bound)
            .await
            .map_err(|source| MoverError::Api {
                what: format!("reading VolumeSnapshotContent {bound}"),
                source,
            })?
            .ok_or_else(|| {
                MoverError::Step(format!("VolumeSnapshotContent {bound} disappeared"))
            })?;
        let (Some(handle), Some(driver)) = (
            str_at(&content, "/status/snapshotHandle"),
            str_at(&content, "/spec/driver"),
        ) else {
            return Err(MoverError::Step(format!(
                "VolumeSnapshotContent {bound} has no snapshot handle or driver"
            )));
        };
        let mut meta = job::metadata(
            &n.content,
            home,
            &self.runner.tag,
            &self.runner.run_id,
            None,
        );
        if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        let mut spec = json!({
            "deletionPolicy": "Retain",
            "driver": driver,
            "source": {"snapshotHandle": handle},
            "volumeSnapshotRef": {"namespace": home, "name": n.home_snap},
        });
        for key in ["volumeSnapshotClassName", "sourceVolumeMode"] {
            if let Some(val) = content.pointer(&format!("/spec/{key}")) {
                spec[key] = val.clone();
            }
        }
        let body = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotContent",
            "metadata": meta,
            "spec": spec,
        });
        self.runner
            .create(&types::snapshot_contents(), home, &body)
            .await?;
        let mut home_spec = json!({"source": {"volumeSnapshotContentName": n.content}});
        if let Some(class) = content.pointer("/spec/volumeSnapshotClassName") {
            home_spec["volumeSnapshotClassName"] = class.clone();
        }
        let body = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": job::metadata(&n.home_snap, home, &self.runner.tag, &self.runner.run_id, None),
            "spec": home_spec,
        });
        self.runner
            .create(&types::volume_snapshots(), home, &body)
            .await?;
        let ready = self.wait_ready(v, home, &n.home_snap).await?;
        Ok(str_at(&ready, "/status/restoreSize")
            .or_else(|| str_at(&snapshot, "/status/restoreSize"))
            .map(String::from))
    }

    /// A read-only PersistentVolume on the same volume as the claim's,
    /// with reclaim policy Retain (deleting it never deletes the data),
    /// pre-bound to a claim at home: a claim that no pod mounts and that
    /// cannot be snapshotted is read without touching its namespace.
    async fn shadow(&self, v: &Planned, n: &Names) -> Result<(), MoverError> {
        let kube = self.runner.kube;
        let home = &self.runner.home;
        let pv = kube
            .get(&types::volumes(), None, &v.pv)
            .await
            .map_err(|source| MoverError::Api {
                what: format!("reading PersistentVolume {} of claim {}", v.pv, v.volume),
                source,
            })?
            .ok_or_else(|| {
                MoverError::Step(format!(
                    "PersistentVolume {} of claim {} disappeared",
                    v.pv, v.volume
                ))
            })?;
        let mut spec = pv.get("spec").cloned().unwrap_or_else(|| json!({}));
        spec["persistentVolumeReclaimPolicy"] = json!("Retain");
        spec["claimRef"] = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                  "namespace": home, "name": n.clone});
        if spec.get("csi").is_some() {
            spec["csi"]["readOnly"] = json!(true);
        }
        let mut meta = job::metadata(&n.shadow, home, &self.runner.tag, &self.runner.run_id, None);
        if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        meta["annotations"][job::VOLUME_ANNOTATION] = json!(v.volume);
        let body = json!({"apiVersion": "v1", "kind": "PersistentVolume",
                          "metadata": meta, "spec": spec});
        self.runner.create(&types::volumes(), home, &body).await?;
        let capacity = pv
            .pointer("/spec/capacity/storage")
            .cloned()
            .unwrap_or_else(|| json!("1Gi"));
        let body = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": job::metadata(&n.clone, home, &self.runner.tag, &self.runner.run_id, None),
            "spec": {
                "storageClassName": pv.pointer("/spec/storageClassName").cloned().unwrap_or(json!("")),
                "accessModes": v.access_modes,
                "volumeMode": pv.pointer("/spec/volumeMode").cloned().unwrap_or(json!("Filesystem")),
                "resources": {"requests": {"storage": capacity}},
                "volumeName": n.shadow,
            },
        });
        self.runner.create(&types::claims(), home, &body).await?;
        Ok(())
    }

    /// One volume: its way home, mover, result; temporary objects of this
    /// volume are deleted as soon as it is done.
    async fn one(&self, v: &Planned) -> Result<MoverResult, MoverError> {
        // A retried run keeps what its earlier attempt already finished.
        if let Ok(mut done) = self
            .repo
            .mover_results(&self.runner.run_id, &v.volume)
            .await
            && !done.is_empty()
        {
            info!(volume = %v.volume, "backed up by an earlier attempt of this run; kept");
            return Ok(done.remove(0));
        }
        let n = self.names(v);
        let home = self.runner.home.clone();
        let env = BTreeMap::from([
            (vars::MODE.to_string(), "volume-backup".to_string()),
            (vars::MOVER.to_string(), "true".to_string()),
            (vars::VOLUME_NAME.to_string(), v.volume.clone()),
            (vars::VOLUME_PATH.to_string(), VOLUME_MOUNT.to_string()),
        ]);
        let clone_mount = || Mount::Claim {
            name: n.clone.clone(),
            read_only: true,
        };
        let r = async {
            let (mount, node) = match &v.source {
                Source::Snapshot { .. } => {
                    let size = self.bring_home(v, &n).await?;
                    let size = size
                        .or_else(|| v.capacity.clone())
                        .unwrap_or_else(|| "1Gi".into());
                    let body = json!({
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "metadata": job::metadata(&n.clone, &home, &self.runner.tag, &self.runner.run_id, None),
                        "spec": {
                            "storageClassName": v.storage_class,
                            "accessModes": v.access_modes,
                            "resources": {"requests": {"storage": size}},
                            "dataSource": {"apiGroup": "snapshot.storage.k8s.io",
                                           "kind": "VolumeSnapshot", "name": n.home_snap},
                        },
                    });
                    self.runner.create(&types::claims(), &home, &body).await?;
                    (clone_mount(), None)
                }
                Source::Kubelet { node, pod_uid, rel } => {
                    let path = self
                        .options
                        .kubelet_dir
                        .join("pods")
                        .join(pod_uid)
                        .join("volumes")
                        .join(rel);
                    let mount = Mount::HostDir {
                        path: path.display().to_string(),
                    };
                    (mount, Some(node.clone()))
                }
                Source::Claim { node } => {
                    self.shadow(v, &n).await?;
                    (clone_mount(), node.clone())
                }
            };
            let mut spec = self
                .runner
                .job(n.job.clone(), &v.volume, env, mount, Work::Read);
            spec.tolerations = v.tolerations.clone();
            spec.node = node;
            if matches!(v.source, Source::Claim { .. }) {
                spec.node_affinity = v.node_affinity.clone();
            }
            let live = !matches!(v.source, Source::Snapshot { .. });
            if live {
                self.hooks
                    .before(v)
                    .await
                    .map_err(MoverError::Consistency)?;
            }
            let end = self.runner.run_job(&spec).await;
            if live {
                self.hooks.after(v).await;
            }
            Ok::<_, MoverError>(end)
        }
        .await;
        // Free the clone's storage and the snapshot now rather than at the
        // end of the run; the clean-up at the end retries what fails here.
        // Claims before what they hold; the home content is Retain, so only
        // the claim's own snapshot deletes the snapshot.
        let home = self.runner.home.as_str();
        for (rt, ns, name) in [
            (types::claims(), Some(home), &n.clone),
            (types::volume_snapshots(), Some(home), &n.home_snap),
            (types::snapshot_contents(), None, &n.content),
            (
                types::volume_snapshots(),
                Some(v.namespace.as_str()),
                &n.snap,
            ),
            (types::volumes(), None, &n.shadow),
        ] {
            if let Err(e) = self.runner.kube.delete(&rt, ns, name).await
                && crate::cluster::api::status(&e) != Some(404)
            {
                warn!(kind = %rt.kind, name = %name, error = %message(&e), "could not delete; the clean-up at the end retries");
            }
        }
        let end = r?;
        let results = self
            .repo
            .mover_results(&self.runner.run_id, &v.volume)
            .await
            .map_err(|source| MoverError::ReadResult {
                volume: v.volume.clone(),
                source,
            })?;
        match (end, results.into_iter().next()) {
            // A Job that failed for good after saving a result (exit 3:
            // some files unreadable) still has a tree worth keeping.
            (_, Some(r)) => Ok(r),
            (JobEnd::Succeeded, None) => Err(MoverError::NoResult {
                namespace: home.to_string(),
                job: n.job.clone(),
            }),
            (JobEnd::Failed(e), None) => Err(e),
        }
    }
}
