//! `restore` mode, resources: choose a snapshot, plan what to restore,
//! apply the rewrites, create level by level (DESIGN.md §3 order), and
//! record a result for every item.
//!
//! Restore reads only the repository and the target API server, so the
//! target may be another cluster. The plan holds every selected object in
//! memory (it is read from the repository before anything is created).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::catalogue::CLUSTER_NODE;
use super::discovery::{Discovered, discover};
use super::kubeapi::{Kube, message, reason, status};
use super::rewrite::{self, Maps};
use super::select::{self, Selector};
use super::{Catalogue, ResourceError, ResourceType, order};
use crate::cluster::Cluster;
use crate::config::{Config, Existing, RestoreOptions};
use crate::error::Error;
use crate::repo::{BlobId, BlobKind, Repository, Run, SnapshotId, SnapshotManifest};
use crate::run::RunContext;
use crate::summary::Report;

/// Objects read from the repository at once.
const READ_PARALLEL: usize = 16;
/// How long a Terminating namespace may take to go.
const NAMESPACE_WAIT: Duration = Duration::from_secs(300);
/// How long a CRD may take to become Established, and a deleted object
/// (`recreate`) to disappear.
const SETTLE_WAIT: Duration = Duration::from_secs(60);
/// Prefix of the per-item reports in the repository (`docs/format.md` §13).
pub const REPORT_PREFIX: &str = "restores/";

/// How an item ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Updated,
    Skipped,
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
        }
    }
}

/// One object of the plan.
#[derive(Debug, Clone)]
struct Item {
    /// The type as stored.
    rt: ResourceType,
    source_ns: Option<String>,
    /// Target namespace (mapped).
    ns: Option<String>,
    /// Target name (a Namespace's name is mapped too).
    name: String,
    blob: Option<BlobId>,
    obj: Option<Value>,
    /// The type in the target cluster, once resolved.
    target: Option<ResourceType>,
    result: Option<(Outcome, String)>,
    notes: Vec<String>,
}

impl Item {
    fn label(&self) -> String {
        match &self.ns {
            Some(ns) => format!("{} {ns}/{}", self.rt.name(), self.name),
            None => format!("{} {}", self.rt.name(), self.name),
        }
    }

    fn open(&self) -> bool {
        self.result.is_none()
    }

    fn done(&mut self, outcome: Outcome, why: impl Into<String>) {
        self.result = Some((outcome, why.into()));
    }
}

/// A type in a namespace (or cluster-wide) of the target.
type Scope = (ResourceType, Option<String>);

/// One line of the stored report.
#[derive(Debug, Serialize)]
struct ItemReport<'a> {
    resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_namespace: Option<&'a str>,
    result: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
}

fn run_has_resources(run: &Run) -> bool {
    run.parts.iter().any(|(_, m)| m.resources.is_some())
}

fn resource_part(run: &Run) -> Option<&(SnapshotId, SnapshotManifest)> {
    run.parts.iter().find(|(_, m)| m.resources.is_some())
}

/// Whether a snapshot covers a namespace the selection wants (from the
/// namespace list its backup recorded; unknown counts as yes).
fn covers(m: &SnapshotManifest, selector: &Selector) -> bool {
    if selector.all_namespaces() {
        return true;
    }
    match m.stats.get("namespaces").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|ns| selector.namespace(ns)),
        None => true,
    }
}

/// Picks the snapshot to restore: `STOW_SNAPSHOT` (a snapshot id, a unique
/// prefix of one, or a run id), else the newest complete run with
/// resources at or before `STOW_RESTORE_POINT`, else the newest; filtered
/// by `STOW_SOURCE_CLUSTER` and the selected namespaces.
pub fn choose<'a>(
    runs: &'a [Run],
    opts: &RestoreOptions,
    selector: &Selector,
) -> Result<(SnapshotId, &'a SnapshotManifest), ResourceError> {
    if let Some(want) = &opts.snapshot {
        let want = want.to_ascii_lowercase();
        let hits: Vec<&Run> = runs
            .iter()
            .filter(|r| {
                r.run_id == want
                    || (want.len() >= 8
                        && r.parts.iter().any(|(id, _)| id.to_hex().starts_with(&want)))
            })
            .collect();
        let run = match hits.as_slice() {
            [one] => *one,
            [] => {
                return Err(ResourceError::NoSnapshot(format!(
                    "STOW_SNAPSHOT={want}: no snapshot or run with that id in the repository"
                )));
            }
            _ => {
                return Err(ResourceError::NoSnapshot(format!(
                    "STOW_SNAPSHOT={want} matches {} runs; give more of the id",
                    hits.len()
                )));
            }
        };
        if !run.complete {
            return Err(ResourceError::NoSnapshot(format!(
                "STOW_SNAPSHOT={want}: run {} is incomplete (a part is missing)",
                run.run_id
            )));
        }
        let (id, m) = resource_part(run).ok_or_else(|| {
            ResourceError::NoSnapshot(format!(
                "STOW_SNAPSHOT={want}: run {} holds no Kubernetes resources",
                run.run_id
            ))
        })?;
        return Ok((*id, m));
    }
    let filters = {
        let mut f = Vec::new();
        if let Some(c) = &opts.source_cluster {
            f.push(format!("from cluster {c} (STOW_SOURCE_CLUSTER)"));
        }
        if !selector.all_namespaces() {
            f.push("covering the selected namespaces (STOW_NAMESPACES)".to_string());
        }
        if f.is_empty() {
            String::new()
        } else {
            format!(" {}", f.join(" "))
        }
    };
    let candidates: Vec<&Run> = runs
        .iter()
        .filter(|r| r.complete && run_has_resources(r))
        .filter(|r| {
            let m = &resource_part(r).expect("has resources").1;
            opts.source_cluster
                .as_ref()
                .is_none_or(|c| m.cluster_id.as_ref() == Some(c))
                && covers(m, selector)
        })
        .collect();
    let Some(oldest) = candidates.iter().min_by_key(|r| r.time) else {
        return Err(ResourceError::NoSnapshot(format!(
            "no complete snapshot with Kubernetes resources{filters} in the repository"
        )));
    };
    let chosen = match opts.point {
        Some(point) => candidates
            .iter()
            .filter(|r| r.time <= point)
            .max_by_key(|r| r.time)
            .ok_or_else(|| {
                ResourceError::NoSnapshot(format!(
                    "STOW_RESTORE_POINT={point} is before the oldest complete snapshot{filters} \
                     ({}, run {}); nothing to restore from that time",
                    oldest.time, oldest.run_id
                ))
            })?,
        None => candidates.iter().max_by_key(|r| r.time).expect("not empty"),
    };
    let (id, m) = resource_part(chosen).expect("has resources");
    Ok((*id, m))
}

struct Restorer<'a> {
    kube: Kube,
    channels: usize,
    existing: Existing,
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

pub async fn run(config: &Config, ctx: &RunContext) -> Result<Report, Error> {
    // SIGTERM stops the retries of the repository and the API at once.
    crate::cancel::link(&ctx.cancel);
    let selector = Selector::new(&config.selection).map_err(ResourceError::Cluster)?;
    let opts = &config.restore;
    // The same checks as `preflight`: fail before changing anything.
    crate::preflight::gate(config, ctx).await?;
    let channels = usize::from(config.channels).max(1);
    let cluster = Cluster::connect().await?;
    let kube = Kube::new(cluster, config.reconnect_timeout);
    let repo = Repository::from_config(config, false).await?;
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
    .map_err(|e| ResourceError::Catalogue {
        snapshot: snapshot.to_hex(),
        reason: e.to_string(),
    })?;

    let mut maps = Maps {
        namespaces: opts.namespace_map.clone(),
        storage_classes: opts.storage_class_map.clone(),
        restored_pvs: BTreeSet::new(),
    };
    let mut items = plan(&repo, &catalogue, &selector, &maps).await;
    for p in &problems {
        items.push(failed_entry(
            &p.path,
            format!("unreadable catalogue: {}", p.message),
        ));
    }
    // Rules, then rewrites (claims need to know which volumes come back).
    for it in items.iter_mut().filter(|i| i.open()) {
        if let Some(why) = rewrite::skip_reason(&it.rt, it.obj.as_ref().expect("loaded"), &maps) {
            it.done(Outcome::Skipped, why);
        }
    }
    maps.restored_pvs = items
        .iter()
        .filter(|i| i.open() && i.rt.is("", "persistentvolumes"))
        .map(|i| i.name.clone())
        .collect();
    for it in items.iter_mut().filter(|i| i.open()) {
        let obj = it.obj.as_mut().expect("loaded");
        it.notes = rewrite::rewrite(&it.rt, obj, &maps);
    }

    if items.is_empty() {
        warn!("the selection matches nothing in this snapshot");
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
        ctx,
        volumes,
        progress: crate::progress::Progress::new("restore"),
    };
    let shown = restorer.progress.show();
    let discovered = restorer.discover().await?;
    restorer.resolve(&mut items, &discovered, true);
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

fn failed_entry(path: &str, why: String) -> Item {
    Item {
        rt: ResourceType {
            group: String::new(),
            version: String::new(),
            kind: String::new(),
            plural: "catalogue".into(),
            namespaced: false,
        },
        source_ns: None,
        ns: None,
        name: path.to_string(),
        blob: None,
        obj: None,
        target: None,
        result: Some((Outcome::Failed, why)),
        notes: Vec::new(),
    }
}

/// Builds the plan: the selected objects, read from the repository and
/// checked. Cluster-scoped objects follow `STOW_INCLUDE_CLUSTER_RESOURCES`.
async fn plan(repo: &Repository, cat: &Catalogue, selector: &Selector, maps: &Maps) -> Vec<Item> {
    let ns_type = ResourceType::namespaces();
    let mut items = Vec::new();
    for (ns, entry) in &cat.namespaces {
        let target = maps.namespace(ns).to_string();
        if let Some(id) = entry.object
            && !selector.excluded(&ns_type)
        {
            items.push(item(&ns_type, None, None, ns, id));
        }
        for t in entry.types.values() {
            if !selector.resource(&t.rt) {
                continue;
            }
            for (name, id) in &t.objects {
                items.push(item(&t.rt, Some(ns), Some(&target), name, *id));
            }
        }
    }
    for it in &mut items {
        if it.rt.is("", "namespaces") {
            it.name = maps.namespace(&it.name).to_string();
        }
    }
    load(repo, &mut items).await;
    // The label selector applies to namespaced objects.
    items.retain(|i| !i.rt.namespaced || i.obj.as_ref().is_none_or(|o| selector.labels_match(o)));

    let mut cluster = Vec::new();
    match selector.cluster {
        crate::config::ClusterResources::None => {}
        crate::config::ClusterResources::All => {
            for t in cat.cluster.values() {
                if selector.resource(&t.rt) {
                    for (name, id) in &t.objects {
                        cluster.push(item(&t.rt, None, None, name, *id));
                    }
                }
            }
        }
        crate::config::ClusterResources::Auto => {
            // What the namespaced objects use: CRDs of their types, volumes
            // of their claims, ClusterRoles of their bindings; then the
            // storage classes of those volumes too.
            let mut wanted: BTreeSet<(String, String, String)> = BTreeSet::new();
            let (cg, cp) = select::CRDS;
            for it in items.iter().filter(|i| i.rt.namespaced) {
                if !it.rt.group.is_empty() {
                    wanted.insert((
                        cg.into(),
                        cp.into(),
                        format!("{}.{}", it.rt.plural, it.rt.group),
                    ));
                }
                if let Some(o) = &it.obj {
                    for (g, p, n) in select::references(&it.rt, o) {
                        wanted.insert((g.into(), p.into(), n));
                    }
                }
            }
            let pick = |wanted: &BTreeSet<(String, String, String)>, only: Option<(&str, &str)>| {
                let mut out = Vec::new();
                for t in cat.cluster.values() {
                    if selector.excluded(&t.rt) || only.is_some_and(|(g, p)| !t.rt.is(g, p)) {
                        continue;
                    }
                    for (name, id) in &t.objects {
                        if wanted.contains(&(t.rt.group.clone(), t.rt.plural.clone(), name.clone()))
                        {
                            out.push(item(&t.rt, None, None, name, *id));
                        }
                    }
                }
                out
            };
            let mut pvs = pick(&wanted, Some(("", "persistentvolumes")));
            load(repo, &mut pvs).await;
            for pv in &pvs {
                if let Some(o) = &pv.obj {
                    for (g, p, n) in select::references(&pv.rt, o) {
                        wanted.insert((g.into(), p.into(), n));
                    }
                }
            }
            cluster = pick(&wanted, None)
                .into_iter()
                .filter(|i| !i.rt.is("", "persistentvolumes"))
                .collect();
            cluster.extend(pvs);
        }
    }
    load(repo, &mut cluster).await;
    items.extend(cluster);
    items
}

fn item(
    rt: &ResourceType,
    source_ns: Option<&str>,
    ns: Option<&str>,
    name: &str,
    id: BlobId,
) -> Item {
    Item {
        rt: rt.clone(),
        source_ns: source_ns.map(String::from),
        ns: ns.map(String::from),
        name: name.to_string(),
        blob: Some(id),
        obj: None,
        target: None,
        result: None,
        notes: Vec::new(),
    }
}

/// Reads and checks the objects of `items` that are not loaded yet; a blob
/// that cannot be read or is not the object the catalogue names fails its
/// item only.
async fn load(repo: &Repository, items: &mut [Item]) {
    let wanted: Vec<(usize, BlobId)> = items
        .iter()
        .enumerate()
        .filter(|(_, i)| i.obj.is_none() && i.open())
        .filter_map(|(n, i)| Some((n, i.blob?)))
        .collect();
    let read: Vec<(usize, Result<Bytes, String>)> = futures::stream::iter(wanted)
        .map(|(n, id)| async move {
            (
                n,
                repo.read_blob(&id)
                    .await
                    .map_err(|e| format!("cannot read the object from the repository: {e}")),
            )
        })
        .buffer_unordered(READ_PARALLEL)
        .collect()
        .await;
    for (n, r) in read {
        let it = &mut items[n];
        match r.and_then(|bytes| check_object(&it.rt, &bytes, it.blob.as_ref())) {
            Ok(v) => it.obj = Some(v),
            Err(why) => it.done(Outcome::Failed, why),
        }
    }
}

/// Parses a stored object and checks that it is what the catalogue says.
fn check_object(rt: &ResourceType, bytes: &[u8], id: Option<&BlobId>) -> Result<Value, String> {
    let blob = id.map(|b| b.to_hex()).unwrap_or_default();
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("malformed object in the repository (blob {blob}): not JSON: {e}"))?;
    let kind = v.get("kind").and_then(Value::as_str);
    let named = v.pointer("/metadata/name").and_then(Value::as_str);
    if !v.is_object() || named.is_none() {
        return Err(format!(
            "malformed object in the repository (blob {blob}): not a Kubernetes object (no metadata.name)"
        ));
    }
    if kind != Some(rt.kind.as_str()) {
        return Err(format!(
            "malformed object in the repository (blob {blob}): kind {} where the catalogue says {}",
            kind.unwrap_or("(none)"),
            rt.kind
        ));
    }
    Ok(v)
}

impl Restorer<'_> {
    async fn discover(&self) -> Result<Discovered, Error> {
        discover(&self.kube, self.channels)
            .await
            .map_err(|e| self.kube.cluster.err("discovering API resources", e).into())
    }

    /// Finds each open item's type in the target. A custom resource whose
    /// CRD is in the plan waits for it (`defer`); anything else the target
    /// does not serve fails.
    fn resolve(&self, items: &mut [Item], discovered: &Discovered, defer: bool) {
        let crds: HashSet<String> = items
            .iter()
            .filter(|i| i.open() && i.rt.is(select::CRDS.0, select::CRDS.1))
            .map(|i| i.name.clone())
            .collect();
        for it in items.iter_mut().filter(|i| i.open() && i.target.is_none()) {
            let rt = &it.rt;
            match discovered.find(&rt.group, &rt.version, &rt.kind) {
                Some(t) => {
                    let target = t.rt.clone();
                    if target.version != rt.version {
                        it.notes.push(format!("as {}", target.api_version()));
                    }
                    if let Some(o) = it.obj.as_mut().and_then(Value::as_object_mut) {
                        o.insert("apiVersion".into(), Value::String(target.api_version()));
                    }
                    it.target = Some(target);
                }
                None if defer && crds.contains(&format!("{}.{}", rt.plural, rt.group)) => {}
                None => {
                    let gv = rt.api_version();
                    it.done(
                        Outcome::Failed,
                        format!(
                            "the target cluster does not serve {gv} {} ({}); restore its \
                             CustomResourceDefinition or exclude it with STOW_EXCLUDE_RESOURCES",
                            rt.kind,
                            rt.name()
                        ),
                    );
                }
            }
        }
    }

    /// Waits out namespaces that are Terminating, and plans a bare
    /// Namespace for target namespaces that neither exist nor come with
    /// the snapshot.
    async fn prepare_namespaces(&self, items: &mut Vec<Item>) {
        let ns_type = ResourceType::namespaces();
        let targets: BTreeSet<String> = items
            .iter()
            .filter(|i| i.open())
            .filter_map(|i| {
                if i.rt.is("", "namespaces") {
                    Some(i.name.clone())
                } else {
                    i.ns.clone()
                }
            })
            .collect();
        let planned: HashSet<String> = items
            .iter()
            .filter(|i| i.open() && i.rt.is("", "namespaces"))
            .map(|i| i.name.clone())
            .collect();
        for ns in targets {
            match self.wait_namespace_gone_if_terminating(&ns).await {
                Ok(exists) => {
                    if !exists && !planned.contains(&ns) {
                        let mut it = item(&ns_type, None, None, &ns, BlobId([0; 32]));
                        it.blob = None;
                        it.obj = Some(
                            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                        );
                        it.target = Some(ns_type.clone());
                        it.notes.push("not in the snapshot; created empty".into());
                        items.push(it);
                    }
                }
                Err(why) => {
                    for it in items.iter_mut().filter(|i| {
                        i.open()
                            && (i.ns.as_deref() == Some(ns.as_str())
                                || (i.rt.is("", "namespaces") && i.name == ns))
                    }) {
                        it.done(Outcome::Failed, why.clone());
                    }
                }
            }
        }
    }

    /// `Ok(true)` if the namespace exists (and is not terminating),
    /// `Ok(false)` if it does not (or cannot be read).
    async fn wait_namespace_gone_if_terminating(&self, ns: &str) -> Result<bool, String> {
        let rt = ResourceType::namespaces();
        let deadline = tokio::time::Instant::now() + NAMESPACE_WAIT;
        let mut logged = false;
        loop {
            match self.kube.get(&rt, None, ns).await {
                Ok(None) => return Ok(false),
                Ok(Some(live)) if live.pointer("/metadata/deletionTimestamp").is_none() => {
                    return Ok(true);
                }
                Ok(Some(_)) => {
                    if !logged {
                        info!(
                            namespace = ns,
                            "namespace is terminating; waiting until it is gone"
                        );
                        logged = true;
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!(
                            "namespace {ns} is still terminating after {}s",
                            NAMESPACE_WAIT.as_secs()
                        ));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // Not allowed to look: let the creates speak for themselves.
                Err(_) => return Ok(true),
            }
        }
    }

    async fn apply(&self, items: &mut Vec<Item>) -> Result<(), Error> {
        self.prepare_namespaces(items).await;
        items.sort_by_cached_key(|i| (order::level(&i.rt), i.label()));
        let mut by_level: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (n, it) in items.iter().enumerate() {
            by_level.entry(order::level(&it.rt)).or_default().push(n);
        }
        for (level, indices) in by_level {
            if self.ctx.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            if level > order::CRDS {
                self.after_crds(items).await?;
            }
            let open: Vec<usize> = indices.into_iter().filter(|n| items[*n].open()).collect();
            if open.is_empty() {
                continue;
            }
            info!(level = %order::level_name(level), objects = open.len(), "restoring");
            let results: Vec<(usize, Outcome, String)> = {
                let items = &*items;
                futures::stream::iter(open)
                    .map(|n| async move {
                        let (o, why) = self.apply_one(&items[n]).await;
                        (n, o, why)
                    })
                    .buffer_unordered(self.channels)
                    .collect()
                    .await
            };
            self.progress.add_objects(results.len() as u64);
            for (n, outcome, why) in results {
                items[n].done(outcome, why);
            }
            if level == order::level(&crate::mover::claims()) {
                self.fill_volumes(items).await;
                if self.ctx.cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
            }
        }
        Ok(())
    }

    /// Once the claims exist: fill the ones this run created with their
    /// data, before any workload that mounts them is created.
    async fn fill_volumes(&self, items: &[Item]) {
        let Some(v) = &self.volumes else {
            return;
        };
        let fills: Vec<crate::mover::restore::Fill> = items
            .iter()
            .filter(|i| {
                i.rt.is("", "persistentvolumeclaims")
                    && matches!(i.result, Some((Outcome::Created, _)))
            })
            .filter_map(|i| {
                let volume = format!("{}/{}", i.source_ns.as_deref()?, i.name);
                let namespace = i.ns.clone()?;
                v.available
                    .contains(&volume)
                    .then(|| crate::mover::restore::Fill {
                        volume,
                        namespace,
                        claim: i.name.clone(),
                    })
            })
            .collect();
        let mut report = Report::default();
        crate::mover::restore::fill(
            &self.kube,
            v.config,
            self.ctx,
            &v.snapshot,
            &fills,
            &mut report,
        )
        .await;
        v.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .absorb(report);
    }

    /// Once the CRD level is done: wait until the restored CRDs are
    /// Established, then find the types of the custom resources that
    /// waited for them. Runs once.
    async fn after_crds(&self, items: &mut [Item]) -> Result<(), Error> {
        let waiting = items.iter().any(|i| i.open() && i.target.is_none());
        if !waiting {
            return Ok(());
        }
        let crds: Vec<(ResourceType, String)> = items
            .iter()
            .filter(|i| {
                i.rt.is(select::CRDS.0, select::CRDS.1)
                    && matches!(i.result, Some((o, _)) if o != Outcome::Failed)
            })
            .filter_map(|i| Some((i.target.clone()?, i.name.clone())))
            .collect();
        for (rt, name) in &crds {
            self.wait_established(rt, name).await;
        }
        // Discovery follows an Established CRD within moments.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let discovered = self.discover().await?;
            let missing = items.iter().any(|i| {
                i.open()
                    && i.target.is_none()
                    && discovered
                        .find(&i.rt.group, &i.rt.version, &i.rt.kind)
                        .is_none()
            });
            if !missing || tokio::time::Instant::now() > deadline {
                self.resolve(items, &discovered, false);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn wait_established(&self, rt: &ResourceType, name: &str) {
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        loop {
            let established = match self.kube.get(rt, None, name).await {
                Ok(Some(crd)) => crd
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Established" && c["status"] == "True"),
                _ => false,
            };
            if established {
                info!(crd = name, "established");
                return;
            }
            if tokio::time::Instant::now() > deadline {
                warn!(
                    crd = name,
                    "not Established after {}s",
                    SETTLE_WAIT.as_secs()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Creates one object, then follows `STOW_EXISTING` if it exists.
    async fn apply_one(&self, it: &Item) -> (Outcome, String) {
        if self.ctx.cancel.is_cancelled() {
            return (Outcome::Skipped, "the run was cancelled first".into());
        }
        let (Some(rt), Some(obj)) = (it.target.as_ref(), it.obj.as_ref()) else {
            return (Outcome::Failed, "no target type".into());
        };
        let ns = it.ns.as_deref();
        let mut notes = it.notes.clone();
        let mut obj = obj.clone();
        let created = self.create(rt, ns, &mut obj, &mut notes).await;
        match created {
            Ok(()) => (Outcome::Created, notes.join("; ")),
            Err(e) if status(&e) == Some(409) && reason(&e) == Some("AlreadyExists") => {
                // Deleting a Namespace or a CRD would take everything in it:
                // those are updated instead of recreated.
                let cascades = rt.is("", "namespaces") || rt.is(select::CRDS.0, select::CRDS.1);
                match self.existing {
                    Existing::Skip => (
                        Outcome::Skipped,
                        "already exists (STOW_EXISTING=skip)".into(),
                    ),
                    Existing::Update => self.update(rt, ns, &it.name, obj, notes).await,
                    Existing::Recreate if cascades => {
                        notes.push(
                            "updated, not recreated: deleting it would delete what it holds".into(),
                        );
                        self.update(rt, ns, &it.name, obj, notes).await
                    }
                    Existing::Recreate => self.recreate(rt, ns, &it.name, obj, notes).await,
                }
            }
            Err(e) => (Outcome::Failed, message(&e)),
        }
    }

    /// POST, retrying once without nodePorts that are already taken.
    async fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        obj: &mut Value,
        notes: &mut Vec<String>,
    ) -> Result<(), kube::Error> {
        match self.kube.create(rt, ns, obj, false).await {
            Ok(_) => Ok(()),
            Err(e)
                if rt.is("", "services")
                    && status(&e) == Some(422)
                    && message(&e).contains("already allocated")
                    && message(&e).contains("nodePort") =>
            {
                let taken = rewrite::allocated_node_ports(&message(&e));
                rewrite::drop_node_ports(obj, &taken);
                notes.retain(|n| !n.starts_with("keeps nodePort"));
                notes.push(format!(
                    "nodePort {} already allocated in the target; the server assigned a new one",
                    taken
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ));
                self.kube.create(rt, ns, obj, false).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    async fn update(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        mut notes: Vec<String>,
    ) -> (Outcome, String) {
        for _ in 0..3 {
            let live = match self.kube.get(rt, ns, name).await {
                Ok(Some(l)) => l,
                Ok(None) => {
                    let mut obj = obj.clone();
                    return match self.create(rt, ns, &mut obj, &mut notes).await {
                        Ok(()) => (Outcome::Created, notes.join("; ")),
                        Err(e) => (Outcome::Failed, message(&e)),
                    };
                }
                Err(e) => return (Outcome::Failed, message(&e)),
            };
            let mut ours = obj.clone();
            rewrite::carry_over(rt, &mut ours, &live);
            match self.kube.replace(rt, ns, name, &ours).await {
                Ok(_) => return (Outcome::Updated, notes.join("; ")),
                // Changed between get and put: try again.
                Err(e) if status(&e) == Some(409) => continue,
                Err(e) => {
                    return (
                        Outcome::Failed,
                        format!(
                            "exists and cannot be updated: {} (STOW_EXISTING=recreate replaces it)",
                            message(&e)
                        ),
                    );
                }
            }
        }
        (
            Outcome::Failed,
            "exists and kept changing while it was updated".into(),
        )
    }

    async fn recreate(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        mut notes: Vec<String>,
    ) -> (Outcome, String) {
        let old_uid = match self.kube.get(rt, ns, name).await {
            Ok(Some(l)) => l.pointer("/metadata/uid").cloned(),
            Ok(None) => None,
            Err(e) => return (Outcome::Failed, message(&e)),
        };
        if let Err(e) = self.kube.delete(rt, ns, name).await {
            return (
                Outcome::Failed,
                format!("cannot delete the existing object: {}", message(&e)),
            );
        }
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        loop {
            match self.kube.get(rt, ns, name).await {
                Ok(None) => break,
                Ok(Some(l)) if l.pointer("/metadata/uid").cloned() != old_uid => break,
                Ok(Some(l)) => {
                    if tokio::time::Instant::now() > deadline {
                        return (
                            Outcome::Failed,
                            format!(
                                "the existing object is still there {}s after deletion (finalizers: {})",
                                SETTLE_WAIT.as_secs(),
                                l.pointer("/metadata/finalizers").unwrap_or(&Value::Null)
                            ),
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return (Outcome::Failed, message(&e)),
            }
        }
        notes.insert(0, "replaced the existing object".into());
        match self.create(rt, ns, &mut obj, &mut notes).await {
            Ok(()) => (Outcome::Created, notes.join("; ")),
            // A controller recreated it first (a namespace's `default`
            // ServiceAccount, say): make that one match instead.
            Err(e) if status(&e) == Some(409) => {
                notes[0] = "deleted, recreated by the cluster meanwhile, then updated".into();
                self.update(rt, ns, name, obj, notes).await
            }
            Err(e) => (Outcome::Failed, message(&e)),
        }
    }

    /// Plans without changing anything: every item gets what would happen
    /// to it; an object that exists is a conflict. Prints the plan.
    async fn dry_run(&self, items: &mut [Item]) -> Vec<Value> {
        // Existing names per (type, namespace), one metadata list each.
        let mut keys: BTreeSet<(ResourceType, Option<String>)> = BTreeSet::new();
        for it in items.iter().filter(|i| i.open()) {
            if let Some(t) = &it.target {
                keys.insert((t.clone(), it.ns.clone()));
            }
        }
        let listed: Vec<(Scope, Result<HashSet<String>, String>)> = futures::stream::iter(keys)
            .map(|(rt, ns)| async move {
                let r = self
                    .kube
                    .list_names(&rt, ns.as_deref())
                    .await
                    .map_err(|e| message(&e));
                ((rt, ns), r)
            })
            .buffer_unordered(self.channels)
            .collect()
            .await;
        let existing: HashMap<Scope, Result<HashSet<String>, String>> =
            listed.into_iter().collect();
        let mut conflicts = Vec::new();
        for it in items.iter_mut().filter(|i| i.open()) {
            let Some(t) = it.target.clone() else {
                it.done(Outcome::Created, "would create once its CRD is Established");
                continue;
            };
            let exists = match existing.get(&(t, it.ns.clone())) {
                Some(Ok(names)) => names.contains(&it.name),
                Some(Err(e)) => {
                    it.done(Outcome::Failed, format!("cannot check the target: {e}"));
                    continue;
                }
                None => false,
            };
            if exists {
                let what = match self.existing {
                    Existing::Skip => "exists; would skip (STOW_EXISTING=skip)",
                    Existing::Update => "exists; would update (STOW_EXISTING=update)",
                    Existing::Recreate => {
                        "exists; would delete and recreate (STOW_EXISTING=recreate)"
                    }
                };
                conflicts.push(json!({"item": it.label(), "conflict": what}));
                let outcome = match self.existing {
                    Existing::Skip => Outcome::Skipped,
                    Existing::Update => Outcome::Updated,
                    Existing::Recreate => Outcome::Created,
                };
                it.done(outcome, what);
            } else {
                let why = it.notes.join("; ");
                it.done(Outcome::Created, why);
            }
        }
        for it in items.iter() {
            let (o, why) = it.result.as_ref().expect("decided");
            let verb = match o {
                Outcome::Created => "create",
                Outcome::Updated => "update",
                Outcome::Skipped => "skip",
                Outcome::Failed => "FAIL",
            };
            let level = order::level_name(order::level(&it.rt));
            if why.is_empty() {
                println!("plan: {verb:<6} {:<40} [{level}]", it.label());
            } else {
                println!("plan: {verb:<6} {:<40} [{level}] {why}", it.label());
            }
        }
        println!(
            "plan: {} conflict(s) with existing objects",
            conflicts.len()
        );
        conflicts
    }
}

fn plan_json(items: &[Item]) -> Value {
    let mut by: BTreeMap<&'static str, u64> = BTreeMap::new();
    for it in items {
        if let Some((o, _)) = &it.result {
            *by.entry(o.as_str()).or_default() += 1;
        }
    }
    json!(by)
}

fn item_reports(items: &[Item]) -> Vec<ItemReport<'_>> {
    items
        .iter()
        .map(|it| {
            let (o, why) = it.result.as_ref().expect("decided");
            ItemReport {
                resource: it.rt.name(),
                namespace: it.ns.as_deref(),
                name: &it.name,
                source_namespace: it
                    .source_ns
                    .as_deref()
                    .filter(|s| Some(*s) != it.ns.as_deref()),
                result: o.as_str(),
                reason: why,
            }
        })
        .collect()
}

/// Stores the per-item report: an Object blob of JSON, and a pointer
/// `restores/<blob id>` so it can be found without any snapshot.
async fn save_report(
    repo: &Repository,
    ctx: &RunContext,
    snapshot: SnapshotId,
    manifest: &SnapshotManifest,
    items: &[Item],
    report: &Report,
) -> Result<BlobId, crate::repo::RepoError> {
    let doc = json!({
        "version": 1,
        "kind": "restore-report",
        "run_id": ctx.run_id,
        "time": jiff::Timestamp::now(),
        "snapshot": snapshot.to_hex(),
        "snapshot_run": manifest.run_id,
        "counts": report.counts,
        "items": item_reports(items),
    });
    let bytes = Bytes::from(serde_json::to_vec(&doc).expect("report serialises"));
    repo.announce_writer(&ctx.run_id).await?;
    let writer = repo.writer(1);
    let (id, _) = writer.add(BlobKind::Object, bytes).await?;
    writer.finish().await?;
    let pointer = json!({"version": 1, "kind": "restore-report", "run_id": ctx.run_id});
    repo.backend()
        .put(
            &format!("{REPORT_PREFIX}{}", id.to_hex()),
            Bytes::from(pointer.to_string()),
        )
        .await?;
    info!(report = %id, "per-item report saved");
    // A restore never saves a manifest, so its marker would hold prune
    // back until it went stale.
    if let Err(e) = repo.retire_writer().await {
        warn!(error = %e, "could not remove the writer marker");
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Selection;

    fn run(id: &str, secs: i64, resources: bool, cluster: &str, namespaces: &[&str]) -> Run {
        let mut m = SnapshotManifest::new(id, 0, 1, "default");
        m.time = jiff::Timestamp::from_second(secs).unwrap();
        m.resources = resources.then_some(BlobId([1; 32]));
        m.cluster_id = Some(cluster.into());
        m.stats = json!({ "namespaces": namespaces });
        let mut sid = [0u8; 32];
        sid[..id.len().min(32)].copy_from_slice(&id.as_bytes()[..id.len().min(32)]);
        Run {
            run_id: id.into(),
            time: m.time,
            parts: vec![(SnapshotId(sid), m)],
            complete: true,
        }
    }

    fn opts() -> RestoreOptions {
        RestoreOptions {
            point: None,
            snapshot: None,
            source_cluster: None,
            namespace_map: BTreeMap::new(),
            storage_class_map: BTreeMap::new(),
            existing: Existing::Skip,
            dry_run: false,
            volumes: true,
        }
    }

    #[test]
    fn restore_point_picks_the_newest_at_or_before() {
        let runs = vec![
            run("a", 100, true, "c1", &["shop"]),
            run("b", 200, true, "c1", &["shop"]),
            run("c", 300, true, "c2", &["other"]),
            run("v", 350, false, "c1", &["shop"]),
        ];
        let all = Selector::new(&Selection::default()).unwrap();
        let at = |secs: i64| {
            let mut o = opts();
            o.point = Some(jiff::Timestamp::from_second(secs).unwrap());
            o
        };
        assert_eq!(choose(&runs, &at(150), &all).unwrap().1.run_id, "a");
        assert_eq!(choose(&runs, &at(200), &all).unwrap().1.run_id, "b");
        assert_eq!(choose(&runs, &at(400), &all).unwrap().1.run_id, "c");
        assert_eq!(choose(&runs, &opts(), &all).unwrap().1.run_id, "c");
        let err = choose(&runs, &at(50), &all).unwrap_err().to_string();
        assert!(
            err.contains("STOW_RESTORE_POINT") && err.contains("before the oldest"),
            "{err}"
        );

        let mut o = at(400);
        o.source_cluster = Some("c1".into());
        assert_eq!(choose(&runs, &o, &all).unwrap().1.run_id, "b");
        let shop = Selector::new(&Selection {
            namespaces: vec!["shop".into()],
            ..Selection::default()
        })
        .unwrap();
        assert_eq!(choose(&runs, &at(400), &shop).unwrap().1.run_id, "b");
    }

    #[test]
    fn snapshot_by_id_prefix_or_run() {
        let runs = vec![
            run("a", 100, true, "c", &[]),
            run("b", 200, false, "c", &[]),
        ];
        let all = Selector::new(&Selection::default()).unwrap();
        let mut o = opts();
        o.snapshot = Some("a".into());
        assert_eq!(choose(&runs, &o, &all).unwrap().1.run_id, "a");
        o.snapshot = Some(runs[0].parts[0].0.to_hex()[..10].to_string());
        assert_eq!(choose(&runs, &o, &all).unwrap().1.run_id, "a");
        o.snapshot = Some("b".into());
        assert!(
            choose(&runs, &o, &all)
                .unwrap_err()
                .to_string()
                .contains("no Kubernetes resources")
        );
        o.snapshot = Some("zzz".into());
        assert!(choose(&runs, &o, &all).is_err());
    }

    async fn store(w: &crate::repo::Writer, v: Value) -> BlobId {
        w.add(BlobKind::Object, Bytes::from(v.to_string()))
            .await
            .unwrap()
            .0
    }

    fn rt(group: &str, kind: &str, plural: &str, namespaced: bool) -> ResourceType {
        ResourceType {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
        }
    }

    /// `auto` takes the cluster objects the selected ones use: the CRD of
    /// a custom resource, a claim's volume and class, the class of that
    /// volume, a binding's ClusterRole; nothing else.
    #[tokio::test]
    async fn auto_cluster_objects_follow_references() {
        let repo = crate::resources::catalogue::tests::mem_repo().await;
        let w = repo.writer(1);
        let mut cat = Catalogue::default();
        let obj = |kind: &str, name: &str, extra: Value| {
            let mut v = json!({"kind": kind, "metadata": {"name": name, "namespace": "shop"}});
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            v
        };
        let pvc = rt("", "PersistentVolumeClaim", "persistentvolumeclaims", true);
        let rb = rt(
            "rbac.authorization.k8s.io",
            "RoleBinding",
            "rolebindings",
            true,
        );
        let widget = rt("example.com", "Widget", "widgets", true);
        let pv = rt("", "PersistentVolume", "persistentvolumes", false);
        let sc = rt("storage.k8s.io", "StorageClass", "storageclasses", false);
        let cr = rt(
            "rbac.authorization.k8s.io",
            "ClusterRole",
            "clusterroles",
            false,
        );
        let crd = rt(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        );
        let id = store(
            &w,
            obj(
                "PersistentVolumeClaim",
                "data",
                json!({"spec": {"volumeName": "pv-1", "storageClassName": "fast"}}),
            ),
        )
        .await;
        cat.insert(Some("shop"), &pvc, "data", id);
        let id = store(
            &w,
            obj(
                "RoleBinding",
                "b",
                json!({"roleRef": {"kind": "ClusterRole", "name": "view"}}),
            ),
        )
        .await;
        cat.insert(Some("shop"), &rb, "b", id);
        let id = store(&w, obj("Widget", "w", json!({}))).await;
        cat.insert(Some("shop"), &widget, "w", id);
        for (t, kind, name, extra) in [
            (
                &pv,
                "PersistentVolume",
                "pv-1",
                json!({"spec": {"storageClassName": "slow"}}),
            ),
            (&pv, "PersistentVolume", "pv-2", json!({})),
            (&sc, "StorageClass", "fast", json!({})),
            (&sc, "StorageClass", "slow", json!({})),
            (&sc, "StorageClass", "unused", json!({})),
            (&cr, "ClusterRole", "view", json!({})),
            (&cr, "ClusterRole", "admin", json!({})),
            (
                &crd,
                "CustomResourceDefinition",
                "widgets.example.com",
                json!({}),
            ),
            (
                &crd,
                "CustomResourceDefinition",
                "gadgets.example.com",
                json!({}),
            ),
        ] {
            let id = store(&w, obj(kind, name, extra)).await;
            cat.insert(None, t, name, id);
        }
        w.finish().await.unwrap();
        let selector = Selector::new(&Selection::default()).unwrap();
        let items = plan(&repo, &cat, &selector, &Maps::default()).await;
        let mut cluster: Vec<String> = items
            .iter()
            .filter(|i| !i.rt.namespaced)
            .map(|i| i.label())
            .collect();
        cluster.sort();
        assert_eq!(
            cluster,
            [
                "clusterroles.rbac.authorization.k8s.io view",
                "customresourcedefinitions.apiextensions.k8s.io widgets.example.com",
                "persistentvolumes pv-1",
                "storageclasses.storage.k8s.io fast",
                "storageclasses.storage.k8s.io slow",
            ]
        );
        assert!(items.iter().all(|i| i.open()));
    }

    #[test]
    fn stored_objects_are_checked() {
        let rt = ResourceType {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
            namespaced: true,
        };
        assert!(
            check_object(
                &rt,
                br#"{"kind":"ConfigMap","metadata":{"name":"a"}}"#,
                None
            )
            .is_ok()
        );
        let e = check_object(&rt, b"{oops", None).unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        let e =
            check_object(&rt, br#"{"kind":"Secret","metadata":{"name":"a"}}"#, None).unwrap_err();
        assert!(e.contains("kind Secret"), "{e}");
        assert!(check_object(&rt, b"[1]", None).is_err());
    }
}
