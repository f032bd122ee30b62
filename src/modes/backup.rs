//! `backup` mode, resources: discover, select, list page by page straight
//! into the repository, then write the catalogue and, last, the manifest.
//!
//! Memory stays bounded by one page per type in flight (`STOW_CHANNELS`
//! types are listed at once) plus the catalogue (one name and id per
//! object); objects are never collected.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use kube::api::ListParams;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::Error;
use crate::cluster::Cluster;
use crate::cluster::api::{Kube, message, status};
use crate::cluster::discovery::{Discovered, discover};
use crate::cluster::{ResourceType, is_kubestow_owned};
use crate::config::{ClusterResources, Config};
use crate::context::RunContext;
use crate::repo::{BlobKind, RepoError, SnapshotManifest, Writer};
use crate::resources::normalise::{canonical_bytes, for_storage};
use crate::resources::select::{self, ClusterRef, Selector};
use crate::resources::{Catalogue, ResourceError, skipped_type};
use crate::summary::Report;

/// Objects per list call.
const PAGE: u32 = 500;

/// What the listing tasks share.
#[derive(Default)]
struct Shared {
    catalogue: Catalogue,
    /// Cluster-scoped objects the selected objects use (`auto`).
    refs: BTreeSet<ClusterRef>,
    /// Namespaced types that had objects: their CRDs are pulled in.
    used_types: BTreeSet<(String, String)>,
    objects_new: u64,
    /// Live objects of the selected claims, for the volume phase.
    claims: Vec<Value>,
    skipped_deleting: u64,
    skipped_own: u64,
}

struct Lister<'a> {
    kube: &'a Kube,
    writer: &'a Writer,
    shared: Mutex<Shared>,
    namespaces: HashSet<String>,
    collect_refs: bool,
    progress: Arc<crate::progress::Progress>,
    ctx: &'a RunContext,
}

enum TaskError {
    /// The API refused this type or namespace; the rest goes on.
    Item(String),
    /// The repository failed: the run cannot produce a snapshot.
    Repo(RepoError),
    Cancelled,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn name_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/name").and_then(Value::as_str)
}

impl Lister<'_> {
    /// Normalises and stores one object; returns false if it was skipped.
    async fn store(
        &self,
        rt: &ResourceType,
        mut obj: Value,
        namespace_object: bool,
    ) -> Result<bool, RepoError> {
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            lock(&self.shared).skipped_deleting += 1;
            return Ok(false);
        }
        if is_kubestow_owned(&obj) {
            lock(&self.shared).skipped_own += 1;
            return Ok(false);
        }
        let Some(name) = name_of(&obj).map(String::from) else {
            return Ok(false);
        };
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(String::from);
        let claim = rt.is("", "persistentvolumeclaims").then(|| obj.clone());
        for_storage(&mut obj, rt);
        let refs = if self.collect_refs && (rt.namespaced || rt.is("", "persistentvolumes")) {
            select::references(rt, &obj)
        } else {
            Vec::new()
        };
        let bytes = Bytes::from(canonical_bytes(&obj));
        drop(obj);
        let len = bytes.len() as u64;
        let (id, new) = self.writer.add(BlobKind::Object, bytes).await?;
        self.progress.add_objects(1);
        self.progress.add_bytes(len);
        let mut sh = lock(&self.shared);
        if new {
            sh.objects_new += 1;
        }
        sh.claims.extend(claim);
        sh.refs.extend(refs);
        if namespace_object {
            sh.catalogue.set_namespace_object(&name, id);
        } else if rt.namespaced {
            let ns = ns.unwrap_or_default();
            sh.used_types.insert((rt.group.clone(), rt.plural.clone()));
            sh.catalogue.insert(Some(&ns), rt, &name, id);
        } else {
            sh.catalogue.insert(None, rt, &name, id);
        }
        Ok(true)
    }

    /// Lists one type (in one namespace, or everywhere) page by page.
    async fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        labels: Option<&str>,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<u64, TaskError> {
        let mut lp = ListParams {
            limit: Some(PAGE),
            label_selector: labels.map(String::from),
            ..ListParams::default()
        };
        let (mut stored, mut restarts) = (0u64, 0);
        loop {
            if self.ctx.cancel.is_cancelled() {
                return Err(TaskError::Cancelled);
            }
            let page = match self.kube.list_page(rt, ns, &lp).await {
                Ok(p) => p,
                // The continue token expired (a long pause between pages):
                // start over; objects are keyed by name, so nothing doubles.
                Err(e) if status(&e) == Some(410) && restarts < 3 => {
                    restarts += 1;
                    lp.continue_token = None;
                    continue;
                }
                Err(e) => return Err(TaskError::Item(message(&e))),
            };
            for obj in page.items {
                if !keep(&obj) {
                    continue;
                }
                if self.store(rt, obj, false).await.map_err(TaskError::Repo)? {
                    stored += 1;
                }
            }
            match page.metadata.continue_ {
                Some(c) if !c.is_empty() => lp.continue_token = Some(c),
                _ => return Ok(stored),
            }
        }
    }

    /// Gets and stores single cluster-scoped objects; a missing one is
    /// only logged (a claim may name a volume that is gone).
    async fn fetch(&self, rt: &ResourceType, names: &[String], report: &Mutex<Report>) {
        for name in names {
            match self.kube.get(rt, None, name).await {
                Ok(Some(obj)) => {
                    if let Err(e) = self.store(rt, obj, false).await {
                        report_fail(report, format!("{} {name}", rt.name()), e.to_string());
                    }
                }
                Ok(None) => warn!(resource = %rt.name(), %name, "referenced object does not exist"),
                Err(e) => report_fail(report, format!("{} {name}", rt.name()), message(&e)),
            }
        }
    }
}

fn report_fail(report: &Mutex<Report>, item: String, msg: String) {
    warn!(%item, error = %msg, "not backed up");
    report
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .fail_item(item, msg);
}

/// Server version and the uid of `kube-system` (the cluster's identity).
async fn identify(kube: &Kube) -> Result<(String, Option<String>), Error> {
    let version = kube
        .retry("/version", || kube.client().apiserver_version())
        .await
        .map_err(|e| kube.cluster.err("reading the server version", e))?;
    let uid = match kube
        .get(&ResourceType::namespaces(), None, "kube-system")
        .await
    {
        Ok(ns) => ns
            .as_ref()
            .and_then(|n| n.pointer("/metadata/uid"))
            .and_then(Value::as_str)
            .map(String::from),
        Err(e) => {
            warn!(error = %message(&e), "cannot read namespace kube-system; the snapshot records no cluster id");
            None
        }
    };
    Ok((version.git_version, uid))
}

/// Selected namespaces with their objects (`None` when not readable).
async fn namespaces(
    kube: &Kube,
    selector: &Selector,
) -> Result<Vec<(String, Option<Value>)>, Error> {
    let rt = ResourceType::namespaces();
    let mut out = Vec::new();
    let mut lp = ListParams {
        limit: Some(PAGE),
        ..ListParams::default()
    };
    loop {
        let page = match kube.list_page(&rt, None, &lp).await {
            Ok(p) => p,
            // Rights in some namespaces only: plain names still work.
            Err(e) if status(&e) == Some(403) && selector.literal_namespaces().is_some() => {
                warn!(error = %message(&e), "cannot list namespaces; using the names in STOW_NAMESPACES");
                let mut out = Vec::new();
                for name in selector.literal_namespaces().unwrap_or_default() {
                    let obj = kube.get(&rt, None, &name).await.ok().flatten();
                    out.push((name, obj));
                }
                return Ok(out);
            }
            Err(e) => return Err(kube.cluster.err("listing namespaces", e).into()),
        };
        for ns in page.items {
            let Some(name) = name_of(&ns).map(String::from) else {
                continue;
            };
            if !selector.namespace(&name) {
                continue;
            }
            if ns.pointer("/metadata/deletionTimestamp").is_some() {
                info!(namespace = %name, "namespace is being deleted; left out");
                continue;
            }
            out.push((name, Some(ns)));
        }
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp.continue_token = Some(c),
            _ => return Ok(out),
        }
    }
}

struct Task {
    rt: ResourceType,
    ns: Option<String>,
    labels: Option<String>,
}

/// The list calls to make: namespaced types per namespace (or once for
/// all namespaces), cluster-scoped types when all of them are wanted.
fn tasks(discovered: &Discovered, selector: &Selector, namespaces: &[String]) -> Vec<Task> {
    let mut out = Vec::new();
    for t in &discovered.types {
        let rt = &t.rt;
        if !t.can("list") || skipped_type(rt) || rt.is("", "namespaces") || !selector.resource(rt) {
            continue;
        }
        if rt.namespaced {
            let labels = selector.label_selector().map(String::from);
            if selector.all_namespaces() {
                out.push(Task {
                    rt: rt.clone(),
                    ns: None,
                    labels,
                });
            } else {
                for ns in namespaces {
                    out.push(Task {
                        rt: rt.clone(),
                        ns: Some(ns.clone()),
                        labels: labels.clone(),
                    });
                }
            }
        } else if selector.cluster == ClusterResources::All {
            out.push(Task {
                rt: rt.clone(),
                ns: None,
                labels: None,
            });
        }
    }
    out
}

/// Runs `backup` mode for resources: writes one snapshot and reports the run.
pub async fn run(config: &Config, ctx: &RunContext) -> Result<Report, Error> {
    // SIGTERM stops the retries of the repository and the API at once.
    crate::context::link(&ctx.cancel);
    let started = jiff::Timestamp::now();
    let selector = Selector::new(&config.selection).map_err(ResourceError::from)?;
    // The same checks as `preflight`: fail before changing anything.
    crate::preflight::gate(config, ctx).await?;
    let channels = usize::from(config.channels).max(1);
    let cluster = Cluster::connect().await?;
    let kube = Kube::new(cluster, config.reconnect_timeout);
    let access = super::repository(config);
    let (repo, ident) = tokio::join!(access.open_or_create(config.init), identify(&kube));
    let repo = repo?;
    let (server_version, cluster_id) = ident?;
    // Pruning safety (docs/format.md §14): announce before adding blobs.
    repo.announce_writer(&ctx.run_id).await?;
    // What an interrupted run stored but did not index is not uploaded again.
    repo.adopt_orphans().await?;
    info!(server = %kube.cluster.url, version = %server_version, cluster_id = ?cluster_id, repository = %repo.location(), "backing up resources");

    let discovered = discover(&kube, channels)
        .await
        .map_err(|e| kube.cluster.err("discovering API resources", e))?;
    let report = Mutex::new(Report::default());
    for (gv, msg) in &discovered.failures {
        report_fail(&report, format!("discovery of {gv}"), msg.clone());
    }

    let selected = namespaces(&kube, &selector).await?;
    let names: Vec<String> = selected.iter().map(|(n, _)| n.clone()).collect();
    info!(
        namespaces = names.len(),
        types = discovered.types.len(),
        "selected"
    );

    let writer = repo.writer(channels);
    let lister = Lister {
        kube: &kube,
        writer: &writer,
        shared: Mutex::new(Shared::default()),
        namespaces: names.iter().cloned().collect(),
        collect_refs: selector.cluster == ClusterResources::Auto,
        progress: crate::progress::Progress::new("resources"),
        ctx,
    };
    // Namespaces whose object is excluded are still covered; only the
    // Namespace objects themselves are left out.
    let ns_type = ResourceType::namespaces();
    if !selector.excluded(&ns_type) {
        for (_, obj) in &selected {
            if let Some(obj) = obj {
                lister.store(&ns_type, obj.clone(), true).await?;
            }
        }
    }

    let shown = lister.progress.show();
    let work = async {
        let mut results = futures::stream::iter(tasks(&discovered, &selector, &names))
            .map(|task| {
                let lister = &lister;
                async move {
                    let keep = |obj: &Value| {
                        !task.rt.namespaced
                            || task.ns.is_some()
                            || obj
                                .pointer("/metadata/namespace")
                                .and_then(Value::as_str)
                                .is_some_and(|ns| lister.namespaces.contains(ns))
                    };
                    let r = lister
                        .list(&task.rt, task.ns.as_deref(), task.labels.as_deref(), keep)
                        .await;
                    (task, r)
                }
            })
            .buffer_unordered(channels);
        while let Some((task, r)) = results.next().await {
            let item = match &task.ns {
                Some(ns) => format!("{} in {ns}", task.rt.name()),
                None => task.rt.name(),
            };
            match r {
                Ok(_) => {}
                Err(TaskError::Item(msg)) => report_fail(&report, format!("list {item}"), msg),
                Err(TaskError::Repo(e)) => return Err(Error::Repo(e)),
                Err(TaskError::Cancelled) => return Err(Error::Cancelled),
            }
        }
        if lister.collect_refs {
            auto_cluster_objects(&lister, &discovered, &selector, &report).await;
        }
        Ok(())
    };
    let result = work.await;
    drop(shown);
    if let Err(e) = result {
        // Keep what was uploaded: a retried run reuses it.
        if let Err(flush) = writer.flush().await {
            warn!(error = %flush, "could not checkpoint before stopping");
        }
        return Err(e);
    }
    let mut shared = lister
        .shared
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    // Volume data, after the objects: mover Jobs read each selected claim.
    let mut volume_report = Report::default();
    // `scope=volume` hooks run around each volume's snapshot or read.
    let hook_options = super::options::hooks(config);
    let volume_hooks = crate::hooks::VolumeHooks::new(&hook_options, ctx, &kube);
    let volumes = if ctx.cancel.is_cancelled() {
        Default::default()
    } else {
        crate::mover::backup::back_up(
            &kube,
            &repo,
            &super::options::mover(config),
            ctx,
            std::mem::take(&mut shared.claims),
            &volume_hooks,
            &mut volume_report,
        )
        .await
    };
    volume_report.errors.extend(volume_hooks.take_errors());
    if ctx.cancel.is_cancelled() {
        writer.flush().await?;
        return Err(Error::Cancelled);
    }

    let root = shared.catalogue.write(&writer).await?;
    let write_stats = writer.finish().await?;
    let counts = shared.catalogue.counts();
    let total = shared.catalogue.len();
    let mut report = report.into_inner().unwrap_or_else(|e| e.into_inner());
    report.absorb(volume_report);

    let mut manifest = SnapshotManifest::new(ctx.run_id.clone(), 0, 1, config.plan.clone());
    // The time listing began: the state the snapshot shows is from then on.
    manifest.time = started;
    manifest.tags = config.tags.clone();
    manifest.cluster_id = cluster_id.clone();
    manifest.selection = select::to_json(&config.selection);
    manifest.resources = Some(root);
    manifest.volumes = volumes.entries;
    if !manifest.volumes.is_empty() {
        // The movers' trees are in index objects other processes wrote.
        repo.reload_index().await?;
    }
    manifest.stats = json!({
        "server_version": server_version,
        "objects": total,
        "objects_new": shared.objects_new,
        "types": counts,
        "namespaces": names,
        "errors": report.errors.len(),
    });
    let snapshot = repo.save_snapshot(&manifest).await?;
    info!(%snapshot, objects = total, new = shared.objects_new, "snapshot saved");
    if let Err(e) = repo.retire_writer().await {
        warn!(error = %e, "could not remove the writer marker; prune removes it once the run is complete");
    }

    report.count("objects", total);
    report.count("objects_new", shared.objects_new);
    for (t, n) in &counts {
        report.count(t, *n);
    }
    report.add_bytes("new", write_stats.bytes_raw_new);
    report.add_bytes("stored", write_stats.bytes_stored);
    report.details = json!({
        "snapshot": snapshot.to_hex(),
        "resources": root.to_hex(),
        "cluster_id": cluster_id,
        "server_version": server_version,
        "namespaces": names.len(),
        "skipped": {
            "being_deleted": shared.skipped_deleting,
            "kubestow_owned": shared.skipped_own,
        },
        "writer": write_stats,
        "volumes": volumes.details,
    });
    Ok(report)
}

/// `auto`: the CRDs of the custom resources found, then the volumes of the
/// claims, then the storage classes and ClusterRoles in use.
async fn auto_cluster_objects(
    lister: &Lister<'_>,
    discovered: &Discovered,
    selector: &Selector,
    report: &Mutex<Report>,
) {
    let used: BTreeSet<String> = lock(&lister.shared)
        .used_types
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, p)| format!("{p}.{g}"))
        .collect();
    let (crd_group, crd_plural) = select::CRDS;
    if let Some(crd) = discovered.by_plural(crd_group, crd_plural)
        && !selector.excluded(&crd.rt)
        && !used.is_empty()
    {
        let keep = |obj: &Value| name_of(obj).is_some_and(|n| used.contains(n));
        match lister.list(&crd.rt, None, None, keep).await {
            Ok(_) => {}
            Err(TaskError::Item(msg)) => {
                report_fail(report, format!("list {}", crd.rt.name()), msg);
            }
            Err(TaskError::Repo(e)) => report_fail(report, crd.rt.name(), e.to_string()),
            Err(TaskError::Cancelled) => return,
        }
    }
    // Volumes first: they add storage classes of their own.
    for wanted in [
        ("", "persistentvolumes"),
        ("storage.k8s.io", "storageclasses"),
        ("rbac.authorization.k8s.io", "clusterroles"),
    ] {
        let Some(t) = discovered.by_plural(wanted.0, wanted.1) else {
            continue;
        };
        if selector.excluded(&t.rt) {
            continue;
        }
        let names: Vec<String> = lock(&lister.shared)
            .refs
            .iter()
            .filter(|(g, p, _)| (*g, *p) == wanted)
            .map(|(_, _, n)| n.clone())
            .collect();
        lister.fetch(&t.rt, &names, report).await;
    }
}

/// Per-type counts of a manifest's stats, for listings.
pub fn type_counts(stats: &Value) -> BTreeMap<String, u64> {
    stats
        .get("types")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}
