//! The restore plan: which snapshot, which objects, each item's state.

use super::*;

/// How an item ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Created in the target (or, with `recreate`, deleted and created again).
    Created,
    /// Already existed and was replaced by the snapshot's version.
    Updated,
    /// Left alone: it already existed, or the run was cancelled first.
    Skipped,
    /// Could not be restored; the note says why.
    Failed,
}

impl Outcome {
    pub(super) fn as_str(self) -> &'static str {
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
pub(super) struct Item {
    /// The type as stored.
    pub(super) rt: ResourceType,
    pub(super) source_ns: Option<String>,
    /// Target namespace (mapped).
    pub(super) ns: Option<String>,
    /// Target name (a Namespace's name is mapped too).
    pub(super) name: String,
    pub(super) blob: Option<BlobId>,
    pub(super) obj: Option<Value>,
    /// The type in the target cluster, once resolved.
    pub(super) target: Option<ResourceType>,
    pub(super) result: Option<(Outcome, String)>,
    pub(super) notes: Vec<String>,
}

impl Item {
    pub(super) fn label(&self) -> String {
        match &self.ns {
            Some(ns) => format!("{} {ns}/{}", self.rt.name(), self.name),
            None => format!("{} {}", self.rt.name(), self.name),
        }
    }

    pub(super) fn open(&self) -> bool {
        self.result.is_none()
    }

    pub(super) fn done(&mut self, outcome: Outcome, why: impl Into<String>) {
        self.result = Some((outcome, why.into()));
    }
}

/// A type in a namespace (or cluster-wide) of the target.
pub(super) type Scope = (ResourceType, Option<String>);

pub(super) fn run_has_resources(run: &Run) -> bool {
    run.parts.iter().any(|(_, m)| m.resources.is_some())
}

pub(super) fn resource_part(run: &Run) -> Option<&(SnapshotId, SnapshotManifest)> {
    run.parts.iter().find(|(_, m)| m.resources.is_some())
}

/// Whether a snapshot covers a namespace the selection wants (from the
/// namespace list its backup recorded; unknown counts as yes).
pub(super) fn covers(m: &SnapshotManifest, selector: &Selector) -> bool {
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
        let want = SnapshotRef::new(want);
        let run = want
            .find(runs)
            .map_err(|e| ResourceError::NoSnapshot(format!("STOW_SNAPSHOT={want}: {e}")))?;
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

pub(super) fn failed_entry(path: &str, why: String) -> Item {
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
pub(super) async fn plan(
    repo: &Repository,
    cat: &Catalogue,
    selector: &Selector,
    maps: &Maps,
) -> Vec<Item> {
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

pub(super) fn item(
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
pub(super) async fn load(repo: &Repository, items: &mut [Item]) {
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
pub(super) fn check_object(
    rt: &ResourceType,
    bytes: &[u8],
    id: Option<&BlobId>,
) -> Result<Value, String> {
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
