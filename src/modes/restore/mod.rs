//! `restore` mode, resources: choose a snapshot, plan what to restore,
//! apply the rewrites, create level by level (docs/design.md §3 order), and
//! record a result for every item.
//!
//! Restore reads only the repository and the target API server, so the
//! target may be another cluster. The plan holds every selected object in
//! memory, as compact JSON (it is read from the repository before anything
//! is created).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::cluster::ResourceType;
use crate::cluster::api::{Kube, message, reason, status};
use crate::cluster::discovery::{Discovered, discover};
use crate::config::{Config, Existing, RestoreOptions};
use crate::context::RunContext;
use crate::repo::REPORT_PREFIX;
use crate::repo::{BlobId, BlobKind, Repository, Run, SnapshotId, SnapshotManifest, SnapshotRef};
use crate::resources::catalogue::CLUSTER_NODE;
use crate::resources::rewrite::{self, Maps};
use crate::resources::select::{self, Selector};
use crate::resources::{Catalogue, ResourceError, order};
use crate::summary::Report;

use super::Error;

mod apply;
mod hold;
mod plan;
mod report;

use plan::*;
pub use plan::{Outcome, choose};
use report::*;

/// Objects read from the repository at once.
const READ_PARALLEL: usize = 16;
/// How long a Terminating namespace may take to go.
const NAMESPACE_WAIT: Duration = Duration::from_secs(300);
/// How long a CRD may take to become Established, and a deleted object
/// (`recreate`) to disappear.
const SETTLE_WAIT: Duration = Duration::from_secs(60);

struct Restorer<'a> {
    kube: Kube,
    channels: usize,
    /// `STOW_EXISTING`: namespaced objects and Namespaces.
    existing: Existing,
    /// `STOW_EXISTING_CLUSTER_RESOURCES`: every other cluster-scoped object.
    existing_cluster: Existing,
    ctx: &'a RunContext,
    /// Volume data to restore, when the snapshot has some and
    /// `STOW_RESTORE_VOLUMES` is on.
    volumes: Option<VolumeData<'a>>,
    progress: std::sync::Arc<crate::progress::Progress>,
}

/// What filling restored claims needs.
struct VolumeData<'a> {
    config: &'a Config,
    snapshot: SnapshotId,
    /// Volumes in the snapshot (`namespace/claim`).
    available: BTreeSet<String>,
    report: std::sync::Mutex<Report>,
}

/// Runs `restore` mode for resources: restores the chosen snapshot into the target cluster and reports each item.
pub async fn run(config: &Config, ctx: &RunContext) -> Result<Report, Error> {
    // SIGTERM stops the retries of the repository and the API at once.
    crate::context::link(&ctx.cancel);
    let selector = Selector::new(&config.selection).map_err(ResourceError::from)?;
    let opts = &config.restore;
    // The same checks as `preflight`: fail before changing anything.
    crate::preflight::gate(config, ctx).await?;
    let channels = usize::from(config.channels).max(1);
    let cluster = Cluster::connect().await?;
    let kube = Kube::new(cluster, config.reconnect_timeout);
    let repo = super::repository(config).open().await?;
    let runs = repo.complete_runs().await?;
    let (snapshot, manifest) = choose(&runs, opts, &selector)?;
    let root = manifest.resources.expect("chosen snapshots have resources");
    info!(
        %snapshot,
        run = %manifest.run_id,
        time = %manifest.time,
        source_cluster = ?manifest.cluster_id,
        target = %kube.cluster.url,
        dry_run = opts.dry_run,
        "restoring resources"
    );
    let (catalogue, problems) = Catalogue::read(&repo, &root, |scope| {
        scope == CLUSTER_NODE || selector.namespace(scope)
    })
    .await
    .map_err(|source| ResourceError::Catalogue {
        snapshot: snapshot.to_hex(),
        source: Box::new(source),
    })?;

    let mut maps = Maps {
        namespaces: opts.namespace_map.clone(),
        storage_classes: opts.storage_class_map.clone(),
        restored_pvs: BTreeSet::new(),
        host_volumes: opts.host_volumes.clone(),
    };
    let mut items = plan(&repo, &catalogue, &selector, &maps).await;
    for p in &problems {
        items.push(failed_entry(
            &p.path,
            format!("unreadable catalogue: {}", p.message),
        ));
    }
    let volumes = (opts.volumes && !manifest.volumes.is_empty()).then(|| VolumeData {
        config,
        snapshot,
        available: manifest.volumes.keys().cloned().collect(),
        report: std::sync::Mutex::new(Report::default()),
    });
    let restorer = Restorer {
        kube,
        channels,
        existing: opts.existing,
        existing_cluster: opts.existing_cluster,
        ctx,
        volumes,
        progress: crate::progress::Progress::new("restore"),
    };
    let shown = restorer.progress.show();
    // Rules; then the target's types, which refuse objects whose stored
    // scope disagrees; then rewrites (claims need to know which volumes
    // come back).
    for it in items.iter_mut().filter(|i| i.open()) {
        let obj = it.obj.as_ref().expect("loaded").value();
        if let Some(why) = rewrite::skip_reason(&it.rt, &obj, &maps) {
            it.done(Outcome::Skipped, why);
        }
    }
    let discovered = restorer.discover().await?;
    resolve(&mut items, &discovered, true);
    maps.restored_pvs = items
        .iter()
        .filter(|i| i.open() && i.rt.is("", "persistentvolumes"))
        .map(|i| i.name.clone())
        .collect();
    for it in items.iter_mut().filter(|i| i.open()) {
        let obj = it.obj.as_mut().expect("loaded");
        let rewritten = obj.edit(|obj| rewrite::rewrite(&it.rt, obj, &maps));
        it.notes.extend(rewritten.notes);
        it.warnings = rewritten.warnings;
    }
    if items.is_empty() {
        warn!("the selection matches nothing in this snapshot");
    }
    items.sort_by_cached_key(|i| (order::level(&i.rt), i.label()));

    let mut report = Report::default();
    let mut conflicts = Vec::new();
    if opts.dry_run {
        conflicts = restorer.dry_run(&mut items).await;
        report.count("conflicts", conflicts.len() as u64);
    } else {
        restorer.apply(&mut items).await?;
    }
    drop(shown);
    if let Some(v) = &restorer.volumes {
        report.absorb(std::mem::take(
            &mut *v.report.lock().unwrap_or_else(|e| e.into_inner()),
        ));
    }

    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    for it in &items {
        let (outcome, why) = it.result.as_ref().expect("every item ends");
        *counts.entry(outcome.as_str()).or_default() += 1;
        if *outcome == Outcome::Failed {
            warn!(item = %it.label(), error = %why, "not restored");
            report.fail_item(it.label(), why.clone());
        }
    }
    let mut warnings = Vec::new();
    let mut kept = Vec::new();
    for it in &items {
        for w in &it.warnings {
            warn!(item = %it.label(), warning = %w, "restored as stored");
            warnings.push(json!({"item": it.label(), "warning": w}));
        }
        if left_alone(it) {
            kept.push(Value::String(it.label()));
        }
    }
    if !kept.is_empty() {
        info!(
            objects = kept.len(),
            "cluster-scoped objects that exist were left alone \
             (STOW_EXISTING_CLUSTER_RESOURCES=skip)"
        );
    }
    report.count("warnings", warnings.len() as u64);
    report.count("left_alone", kept.len() as u64);
    report.count("items", items.len() as u64);
    for o in [
        Outcome::Created,
        Outcome::Updated,
        Outcome::Skipped,
        Outcome::Failed,
    ] {
        report.count(o.as_str(), counts.get(o.as_str()).copied().unwrap_or(0));
    }
    let stored_report = if opts.dry_run {
        None
    } else {
        match save_report(&repo, ctx, snapshot, manifest, &items, &report).await {
            Ok(id) => Some(id.to_hex()),
            Err(e) => {
                report.fail_item("restore report", e.to_string());
                None
            }
        }
    };
    let mut details = json!({
        "snapshot": snapshot.to_hex(),
        "snapshot_run": manifest.run_id,
        "snapshot_time": manifest.time,
        "source_cluster": manifest.cluster_id,
        "target": restorer.kube.cluster.url,
        "dry_run": opts.dry_run,
        "existing": opts.existing,
        "existing_cluster_resources": opts.existing_cluster,
        "report": stored_report,
    });
    // What was adjusted on the way in (kept nodePorts, rewritten subjects,
    // ports that were taken…), and why items were skipped; capped like
    // the conflicts (the stored report has every item).
    let noted = |skipped: bool| {
        Value::Array(
            items
                .iter()
                .filter_map(|i| match &i.result {
                    Some((o, why))
                        if *o != Outcome::Failed
                            && (*o == Outcome::Skipped) == skipped
                            && !why.is_empty() =>
                    {
                        Some(json!({"item": i.label(), "result": o.as_str(), "note": why}))
                    }
                    _ => None,
                })
                .take(100)
                .collect(),
        )
    };
    details["notes"] = noted(false);
    details["skipped"] = noted(true);
    // Capped like the rest; the stored report has every item.
    details["warnings"] = Value::Array(warnings.into_iter().take(100).collect());
    details["left_alone"] = Value::Array(kept.into_iter().take(100).collect());
    if opts.dry_run {
        details["plan"] = plan_json(&items);
        // Capped so the summary line stays readable; the plan printed
        // above lists them all.
        details["conflicts"] = Value::Array(conflicts.into_iter().take(100).collect());
    }
    report.details = details;
    info!(
        created = counts.get("created").copied().unwrap_or(0),
        updated = counts.get("updated").copied().unwrap_or(0),
        skipped = counts.get("skipped").copied().unwrap_or(0),
        failed = counts.get("failed").copied().unwrap_or(0),
        "restore finished"
    );
    Ok(report)
}

#[cfg(test)]
mod tests;
