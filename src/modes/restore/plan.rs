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
    pub(super) obj: Option<Object>,
    /// The type in the target cluster, once resolved.
    pub(super) target: Option<ResourceType>,
    pub(super) result: Option<(Outcome, String)>,
    pub(super) notes: Vec<String>,
    /// What the rewrite could not adjust safely (restored as stored).
    pub(super) warnings: Vec<String>,
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

/// A planned object, held as compact JSON. A restore plans every selected
/// object before it creates any, and a parsed `Value` of a small object
/// takes several times its JSON (550 MiB for 100k small objects of 76 MiB
/// of JSON); parsing again where the object is looked at is cheaper than
/// that memory.
#[derive(Debug, Clone)]
pub(super) struct Object(Box<str>);

impl Object {
    pub(super) fn new(v: &Value) -> Self {
        Object(v.to_string().into_boxed_str())
    }

    /// The object, parsed.
    pub(super) fn value(&self) -> Value {
        // serde_json wrote it from a Value that serde_json parsed (within
        // its nesting limit), so it parses.
        serde_json::from_str(&self.0).expect("an Object holds JSON written by serde_json")
    }

    /// Changes the object; returns what `f` returns.
    pub(super) fn edit<R>(&mut self, f: impl FnOnce(&mut Value) -> R) -> R {
        let mut v = self.value();
        let r = f(&mut v);
        *self = Object::new(&v);
        r
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
        warnings: Vec::new(),
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
    // Loaded under the stored names, which the objects must carry.
    load(repo, &mut items).await;
    for it in &mut items {
        if it.rt.is("", "namespaces") {
            it.name = maps.namespace(&it.name).to_string();
        }
    }
    // The label selector applies to namespaced objects.
    items.retain(|i| {
        !i.rt.namespaced
            || i.obj
                .as_ref()
                .is_none_or(|o| selector.labels_match(&o.value()))
    });

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
                if let Some(o) = it.obj.as_ref().map(Object::value) {
                    for (g, p, n) in select::references(&it.rt, &o) {
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
                if let Some(o) = pv.obj.as_ref().map(Object::value) {
                    for (g, p, n) in select::references(&pv.rt, &o) {
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
        warnings: Vec::new(),
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
    // Each object is checked and made compact as it arrives: at most
    // READ_PARALLEL of them are ever held as read.
    let mut read = futures::stream::iter(wanted)
        .map(|(n, id)| async move {
            (
                n,
                repo.read_blob(&id)
                    .await
                    .map_err(|e| format!("cannot read the object from the repository: {e}")),
            )
        })
        .buffer_unordered(READ_PARALLEL);
    while let Some((n, r)) = read.next().await {
        let it = &mut items[n];
        match r.and_then(|bytes| check_object(&it.rt, &it.name, &bytes, it.blob.as_ref())) {
            Ok(v) => it.obj = Some(Object::new(&v)),
            Err(why) => it.done(Outcome::Failed, why),
        }
    }
}

/// Parses a stored object and checks that it is what the catalogue says:
/// its kind, and its name (else the object created would not be the one
/// planned, reported and checked).
pub(super) fn check_object(
    rt: &ResourceType,
    name: &str,
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
    if named != Some(name) {
        return Err(format!(
            "malformed object in the repository (blob {blob}): named {} where the catalogue says {name}",
            named.unwrap_or_default()
        ));
    }
    Ok(v)
}

/// Why an item may not be restored as `target`, the type the cluster
/// serves for its kind: where the catalogue stores the object (in a
/// namespace, or with the cluster-scoped objects), the type the catalogue
/// records, and the object's `metadata.namespace` must all agree with the
/// cluster. A repository that disagrees could have a namespaced restore
/// create cluster-wide objects, or pass one type off as another (past the
/// restore rules and `STOW_INCLUDE_CLUSTER_RESOURCES`).
pub(super) fn scope_mismatch(it: &Item, target: &ResourceType) -> Option<String> {
    let scope = |namespaced: bool| {
        if namespaced {
            "namespaced"
        } else {
            "cluster-scoped"
        }
    };
    let kind = &target.kind;
    let served = format!(
        "the target cluster serves {kind} as {}",
        scope(target.namespaced)
    );
    let obj = it.obj.as_ref().map(Object::value);
    let meta_ns = obj
        .as_ref()
        .and_then(|o| o.pointer("/metadata/namespace"))
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty());
    let why = match (it.source_ns.as_deref(), meta_ns) {
        (Some(ns), _) if !target.namespaced => format!("stored in namespace {ns}, but {served}"),
        (None, _) if target.namespaced => {
            format!("stored with the cluster-scoped objects, but {served}")
        }
        _ if it.rt.namespaced != target.namespaced => format!(
            "the catalogue records {kind} as {}, but {served}",
            scope(it.rt.namespaced)
        ),
        _ if it.rt.plural != target.plural => format!(
            "the catalogue files {kind} under {}, but the target cluster serves it as {}",
            it.rt.name(),
            target.name()
        ),
        (Some(ns), Some(meta)) if meta != ns => {
            format!("stored in namespace {ns}, but its metadata.namespace is {meta}")
        }
        (None, Some(meta)) => format!("{served}, but its metadata.namespace is {meta}"),
        _ => return None,
    };
    Some(format!(
        "refused, the repository does not match the cluster: {why}; not created"
    ))
}

/// Finds each open item's type in the target and checks the item's scope
/// against it ([`scope_mismatch`]). A custom resource whose CRD is in the
/// plan waits for it (`defer`), checked against the CRD's `spec.scope`
/// meanwhile; anything else the target does not serve fails.
pub(super) fn resolve(items: &mut [Item], discovered: &Discovered, defer: bool) {
    // CRDs in the plan: the types they will serve, by CRD name.
    let crds: HashMap<String, ResourceType> = items
        .iter()
        .filter(|i| i.open() && i.rt.is(select::CRDS.0, select::CRDS.1))
        .filter_map(|i| {
            let obj = i.obj.as_ref()?.value();
            let spec = obj.get("spec")?;
            let rt = ResourceType {
                group: spec.get("group")?.as_str()?.to_string(),
                version: String::new(),
                kind: spec.pointer("/names/kind")?.as_str()?.to_string(),
                plural: spec.pointer("/names/plural")?.as_str()?.to_string(),
                namespaced: spec.get("scope").and_then(Value::as_str) == Some("Namespaced"),
            };
            Some((i.name.clone(), rt))
        })
        .collect();
    for it in items.iter_mut().filter(|i| i.open() && i.target.is_none()) {
        let rt = &it.rt;
        match discovered.find(&rt.group, &rt.version, &rt.kind) {
            Some(t) => {
                let target = t.rt.clone();
                if let Some(why) = scope_mismatch(it, &target) {
                    it.done(Outcome::Failed, why);
                    continue;
                }
                if target.version != it.rt.version {
                    it.notes.push(format!("as {}", target.api_version()));
                }
                if let Some(o) = it.obj.as_mut() {
                    o.edit(|v| {
                        if let Some(m) = v.as_object_mut() {
                            m.insert("apiVersion".into(), Value::String(target.api_version()));
                        }
                    });
                }
                it.target = Some(target);
            }
            None if defer && crds.contains_key(&format!("{}.{}", rt.plural, rt.group)) => {
                let will_serve = &crds[&format!("{}.{}", rt.plural, rt.group)];
                if will_serve.kind != rt.kind {
                    let why = format!(
                        "refused, the repository does not match itself: its CustomResourceDefinition \
                         {}.{} serves {}, not {}; not created",
                        rt.plural, rt.group, will_serve.kind, rt.kind
                    );
                    it.done(Outcome::Failed, why);
                } else if let Some(why) = scope_mismatch(it, will_serve) {
                    it.done(Outcome::Failed, why);
                }
            }
            None => {
                let gv = rt.api_version();
                let why = format!(
                    "the target cluster does not serve {gv} {} ({}); restore its \
                     CustomResourceDefinition or exclude it with STOW_EXCLUDE_RESOURCES",
                    rt.kind,
                    rt.name()
                );
                it.done(Outcome::Failed, why);
            }
        }
    }
}

/// Which of `existing` (`STOW_EXISTING`) and `existing_cluster`
/// (`STOW_EXISTING_CLUSTER_RESOURCES`) applies to an existing object of
/// type `rt`, with the variable's name for notes.
pub(super) fn policy_for(
    rt: &ResourceType,
    existing: Existing,
    existing_cluster: Existing,
) -> (Existing, &'static str) {
    use crate::config::vars;
    if rt.namespaced || rt.is("", "namespaces") {
        (existing, vars::EXISTING)
    } else {
        (existing_cluster, vars::EXISTING_CLUSTER_RESOURCES)
    }
}

/// Whether the item is a cluster-scoped object that exists and was left as
/// it is under `STOW_EXISTING_CLUSTER_RESOURCES=skip` (or would be, in a
/// dry run): the notes of both end in that setting.
pub(super) fn left_alone(it: &Item) -> bool {
    let marker = format!("({}=skip)", crate::config::vars::EXISTING_CLUSTER_RESOURCES);
    matches!(&it.result, Some((Outcome::Skipped, why)) if why.ends_with(&marker))
}
