//! `backup`, volume data: plan a source per claim, run the movers, collect
//! their results for the manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::job::{self, Mount, PODS_MOUNT, VOLUME_MOUNT};
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
    let image = match super::mover_image(kube, options).await {
        Ok(i) => i,
        Err(e) => {
            for v in &planned.volumes {
                report.fail_item(item(&v.volume), e.to_string());
            }
            return out;
        }
    };
    let mut runner = Runner::new(
        kube,
        options,
        &ctx.run_id,
        image,
        ctx.cancel.clone(),
        planned.volumes.len(),
    );
    runner.find_orchestrator(options).await;
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

struct VolumeBackup<'a> {
    runner: &'a Runner<'a>,
    repo: &'a Repository,
    options: &'a MoverOptions,
    hooks: &'a dyn Consistency,
}

impl VolumeBackup<'_> {
    fn names(&self, v: &Planned) -> (String, String, String) {
        let tag = &self.runner.tag;
        (
            job::object_name(tag, "snap", &v.volume),
            job::object_name(tag, "clone", &v.volume),
            job::object_name(tag, "backup", &v.volume),
        )
    }

    /// Creates the VolumeSnapshot of a claim (hooks around it).
    async fn take_snapshot(&self, v: &Planned) -> Result<(), MoverError> {
        let Source::Snapshot { class } = &v.source else {
            return Ok(());
        };
        let (snap, _, _) = self.names(v);
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

    /// Waits until the snapshot is ready to use; returns its restore size.
    async fn wait_ready(&self, v: &Planned, snap: &str) -> Result<Option<String>, MoverError> {
        let timeout = self.options.snapshot_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let obj = self
                .runner
                .kube
                .get(&types::volume_snapshots(), Some(&v.namespace), snap)
                .await
                .map_err(|source| MoverError::ReadSnapshot {
                    namespace: v.namespace.clone(),
                    snapshot: snap.to_string(),
                    claim: v.claim.clone(),
                    source,
                })?
                .ok_or_else(|| MoverError::SnapshotGone {
                    namespace: v.namespace.clone(),
                    snapshot: snap.to_string(),
                    claim: v.claim.clone(),
                })?;
            if obj.pointer("/status/readyToUse").and_then(Value::as_bool) == Some(true) {
                return Ok(str_at(&obj, "/status/restoreSize").map(String::from));
            }
            if tokio::time::Instant::now() > deadline {
                let err = str_at(&obj, "/status/error/message")
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                return Err(MoverError::SnapshotNotReady {
                    namespace: v.namespace.clone(),
                    snapshot: snap.to_string(),
                    claim: v.claim.clone(),
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

    /// One volume: clone (for snapshots), mover, result; temporary
    /// objects of this volume are deleted as soon as it is done.
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
        let (snap, clone, job_name) = self.names(v);
        let mut env = BTreeMap::from([
            (vars::MODE.to_string(), "volume-backup".to_string()),
            (vars::MOVER.to_string(), "true".to_string()),
            (vars::VOLUME_NAME.to_string(), v.volume.clone()),
        ]);
        let (mount, node, path) = match &v.source {
            Source::Snapshot { .. } => {
                let size = self.wait_ready(v, &snap).await?;
                let size = size
                    .or_else(|| v.capacity.clone())
                    .unwrap_or_else(|| "1Gi".into());
                let body = json!({
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": job::metadata(&clone, &v.namespace, &self.runner.tag, &self.runner.run_id, None),
                    "spec": {
                        "storageClassName": v.storage_class,
                        "accessModes": v.access_modes,
                        "resources": {"requests": {"storage": size}},
                        "dataSource": {"apiGroup": "snapshot.storage.k8s.io",
                                       "kind": "VolumeSnapshot", "name": snap},
                    },
                });
                self.runner
                    .create(&types::claims(), &v.namespace, &body)
                    .await?;
                let mount = Mount::Claim {
                    name: clone.clone(),
                    read_only: true,
                };
                (mount, None, VOLUME_MOUNT.to_string())
            }
            Source::Kubelet { node, pod_uid, rel } => {
                let host_dir = self.options.kubelet_dir.join("pods");
                let mount = Mount::KubeletPods {
                    host_dir: host_dir.display().to_string(),
                };
                (
                    mount,
                    Some(node.clone()),
                    format!("{PODS_MOUNT}/{pod_uid}/volumes/{rel}"),
                )
            }
            Source::Claim { node } => {
                let mount = Mount::Claim {
                    name: v.claim.clone(),
                    read_only: true,
                };
                (mount, node.clone(), VOLUME_MOUNT.to_string())
            }
        };
        env.insert(vars::VOLUME_PATH.to_string(), path);
        let mut spec = self
            .runner
            .job(job_name, &v.namespace, &v.volume, env, mount);
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
        // Free the clone's storage now rather than at the end of the run.
        if matches!(v.source, Source::Snapshot { .. }) {
            for (rt, name) in [
                (types::claims(), &clone),
                (types::volume_snapshots(), &snap),
            ] {
                if let Err(e) = self.runner.kube.delete(&rt, Some(&v.namespace), name).await {
                    warn!(kind = %rt.kind, name = %name, error = %message(&e), "could not delete; the clean-up at the end retries");
                }
            }
        }
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
                namespace: v.namespace.clone(),
                job: spec.name.clone(),
            }),
            (JobEnd::Failed(e), None) => Err(e),
        }
    }
}
