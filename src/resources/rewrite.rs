//! Restore rules (docs/design.md §3, after Velero's restore item actions): what
//! is not restored, and how a stored object is changed before it is
//! created in the target cluster.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::ResourceType;
use super::normalise::{EXPLICIT_NODE_PORTS, explicit_node_ports};

/// What the rules need to know about the whole restore.
#[derive(Debug, Clone, Default)]
pub struct Maps {
    /// `STOW_NAMESPACE_MAP`: old namespace name to new.
    pub namespaces: BTreeMap<String, String>,
    /// `STOW_STORAGE_CLASS_MAP`: old storage class name to new.
    pub storage_classes: BTreeMap<String, String>,
    /// PersistentVolumes restored by this run: their claims keep `volumeName`.
    pub restored_pvs: BTreeSet<String>,
    /// `STOW_ALLOW_HOST_VOLUMES`: PersistentVolumes with a `hostPath` or
    /// `local` volume that may be restored.
    pub host_volumes: BTreeSet<String>,
}

/// What [`rewrite`] has to say about one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    /// What was adjusted on the way in (kept nodePorts, mapped namespaces, …).
    pub notes: Vec<String>,
    /// What could not be adjusted safely: the object is restored as stored
    /// there, and may not mean in the target what it meant in the source.
    pub warnings: Vec<String>,
}

impl Maps {
    /// The target name of namespace `ns`: its mapped name, else `ns` itself.
    pub fn namespace<'a>(&'a self, ns: &'a str) -> &'a str {
        self.namespaces.get(ns).map_or(ns, String::as_str)
    }

    fn storage_class(&self, sc: &str) -> Option<&str> {
        self.storage_classes.get(sc).map(String::as_str)
    }
}

/// PVC annotations that record a binding or a provisioning decision of
/// the source cluster.
const BINDING_ANNOTATIONS: &[&str] = &[
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
];
const STORAGE_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Labels the Job controller sets from the Job's uid.
const JOB_UID_LABELS: &[&str] = &["controller-uid", "batch.kubernetes.io/controller-uid"];
/// The label the API server (1.21+) puts on every namespace: its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn annotation<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    v.get_mut(key).and_then(Value::as_object_mut)
}

/// Why a stored object is not restored, or `None` to restore it.
pub fn skip_reason(rt: &ResourceType, obj: &Value, maps: &Maps) -> Option<String> {
    // The backup never stores these; an old or foreign snapshot might.
    if super::skipped_type(rt) {
        return Some(format!("{} are never restored", rt.plural));
    }
    if crate::cluster::is_kubestow_owned(obj) {
        return Some("kubestow's own object".into());
    }
    let name = str_at(obj, "/metadata/name").unwrap_or_default();
    if rt.is("", "pods")
        && let Some(owner) = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|o| {
                o.iter()
                    .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
            })
    {
        return Some(format!(
            "owned by {} {}; its controller recreates it",
            str_at(owner, "/kind").unwrap_or("a controller"),
            str_at(owner, "/name").unwrap_or_default()
        ));
    }
    if rt.is("batch", "jobs") && job_finished(obj) {
        return Some("the Job has finished".into());
    }
    if rt.is("", "secrets") && str_at(obj, "/type") == Some("kubernetes.io/service-account-token") {
        return Some("service-account token; the target cluster issues its own".into());
    }
    if rt.is("", "configmaps") && name == "kube-root-ca.crt" {
        return Some("published by the target cluster itself".into());
    }
    if rt.is("storage.k8s.io", "csidrivers") {
        return Some("CSI drivers are installed with their driver, never restored".into());
    }
    if rt.is("storage.k8s.io", "storageclasses")
        && let Some(to) = maps.storage_class(name)
    {
        return Some(format!("mapped to {to} by STOW_STORAGE_CLASS_MAP"));
    }
    // A volume on a node's disk is a way into that node (a repository
    // could name `/`): only restored when the operator names it.
    if rt.is("", "persistentvolumes")
        && let Some((source, path)) = host_volume(obj)
        && !maps.host_volumes.contains(name)
    {
        return Some(format!(
            "a {source} volume on a node ({path}); restored only when named in {}",
            crate::config::vars::ALLOW_HOST_VOLUMES
        ));
    }
    if rt.is("", "persistentvolumes") && annotation(obj, PROVISIONED_BY).is_some() {
        return Some(
            "dynamically provisioned; its claim gets a new volume from its storage class".into(),
        );
    }
    None
}

/// The node-local source of a PersistentVolume (`hostPath` or `local`)
/// and its path, if it has one.
fn host_volume(pv: &Value) -> Option<(&'static str, String)> {
    ["hostPath", "local"].into_iter().find_map(|source| {
        let v = pv.pointer(&format!("/spec/{source}"))?;
        (!v.is_null()).then(|| {
            let path = str_at(v, "/path").unwrap_or("no path").to_string();
            (source, path)
        })
    })
}

/// Complete or Failed: a Job that has run its course.
fn job_finished(job: &Value) -> bool {
    job.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            matches!(str_at(c, "/type"), Some("Complete" | "Failed"))
                && str_at(c, "/status") == Some("True")
        })
}

/// Rewrites a stored object for creation in the target: metadata the
/// server owns goes, namespaces and storage classes are mapped, and the
/// per-type rules apply. Returns what is worth reporting.
pub fn rewrite(rt: &ResourceType, obj: &mut Value, maps: &Maps) -> Notes {
    let mut out = Notes::default();
    let source_ns = str_at(obj, "/metadata/namespace").map(String::from);
    if let Some(meta) = obj_mut(obj, "metadata") {
        for k in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "ownerReferences",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(k);
        }
        if rt.namespaced {
            if let Some(ns) = &source_ns {
                meta.insert("namespace".into(), Value::String(maps.namespace(ns).into()));
            }
        } else {
            meta.remove("namespace");
        }
    }
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "namespaces") => namespace(obj, maps),
        ("", "services") => service(obj, &mut out.notes),
        ("", "persistentvolumeclaims") => claim(obj, maps, &mut out.notes),
        ("", "persistentvolumes") => volume(obj, maps),
        ("", "serviceaccounts") => service_account(obj),
        ("", "pods") => pod(obj),
        ("batch", "jobs") => job(obj),
        ("apps", "statefulsets") => {
            if let Some(templates) = obj
                .pointer_mut("/spec/volumeClaimTemplates")
                .and_then(Value::as_array_mut)
            {
                for t in templates {
                    map_storage_class(t, maps);
                }
            }
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            subjects(obj, maps, &mut out.notes)
        }
        ("networking.k8s.io", "networkpolicies") => network_policy(obj, maps, &mut out),
        _ => {}
    }
    remove_annotation(obj, EXPLICIT_NODE_PORTS);
    out
}

fn remove_annotation(obj: &mut Value, key: &str) {
    let Some(meta) = obj_mut(obj, "metadata") else {
        return;
    };
    if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        a.remove(key);
        if a.is_empty() {
            meta.remove("annotations");
        }
    }
}

fn namespace(obj: &mut Value, maps: &Maps) {
    let Some(meta) = obj_mut(obj, "metadata") else {
        return;
    };
    if let Some(name) = meta.get("name").and_then(Value::as_str) {
        let to = maps.namespace(name).to_string();
        meta.insert("name".into(), Value::String(to));
    }
    // Set by 1.21+ servers from the name; it would name the old namespace.
    if let Some(l) = meta.get_mut("labels").and_then(Value::as_object_mut) {
        l.remove("kubernetes.io/metadata.name");
        if l.is_empty() {
            meta.remove("labels");
        }
    }
}

/// Clears allocated cluster IPs (a headless `None` stays) and the
/// nodePorts the server allocated; keeps the ones that were chosen.
fn service(obj: &mut Value, notes: &mut Vec<String>) {
    let explicit: Option<BTreeSet<i64>> = match annotation(obj, EXPLICIT_NODE_PORTS) {
        Some(list) => Some(
            list.split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect(),
        ),
        // Not recorded (an older backup): last-applied if present, else
        // keep every port; a port that is taken is retried without.
        None => explicit_node_ports(obj).map(|v| v.into_iter().collect()),
    };
    let Some(spec) = obj_mut(obj, "spec") else {
        return;
    };
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if !headless {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    spec.remove("healthCheckNodePort");
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            let Some(port) = p.as_object_mut() else {
                continue;
            };
            let Some(node) = port.get("nodePort").and_then(Value::as_i64) else {
                continue;
            };
            if explicit.as_ref().is_some_and(|e| !e.contains(&node)) {
                port.remove("nodePort");
            } else {
                notes.push(format!("keeps nodePort {node}"));
            }
        }
    }
}

fn map_storage_class(claim_like: &mut Value, maps: &Maps) {
    if let Some(spec) = obj_mut(claim_like, "spec")
        && let Some(to) = spec
            .get("storageClassName")
            .and_then(Value::as_str)
            .and_then(|sc| maps.storage_class(sc))
    {
        spec.insert("storageClassName".into(), Value::String(to.into()));
    }
    let mapped = annotation(claim_like, STORAGE_CLASS_ANNOTATION)
        .and_then(|sc| maps.storage_class(sc))
        .map(String::from);
    if let Some(to) = mapped
        && let Some(a) = claim_like
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
    {
        a.insert(STORAGE_CLASS_ANNOTATION.into(), Value::String(to));
    }
}

/// A claim keeps `volumeName` only when that volume is restored too;
/// otherwise it is provisioned afresh and forgets the old binding. A
/// cross-namespace data source follows the namespace map.
fn claim(obj: &mut Value, maps: &Maps, notes: &mut Vec<String>) {
    map_storage_class(obj, maps);
    if let Some(r) = obj
        .pointer_mut("/spec/dataSourceRef")
        .and_then(Value::as_object_mut)
        && let Some(ns) = r.get("namespace").and_then(Value::as_str)
        && let Some(to) = maps.namespaces.get(ns)
    {
        notes.push(format!("dataSourceRef namespace {ns} → {to}"));
        r.insert("namespace".into(), Value::String(to.clone()));
    }
    let keep = str_at(obj, "/spec/volumeName").is_some_and(|v| maps.restored_pvs.contains(v));
    for a in BINDING_ANNOTATIONS {
        if !keep || a.starts_with("pv.kubernetes.io/") {
            remove_annotation(obj, a);
        }
    }
    if !keep && let Some(spec) = obj_mut(obj, "spec") {
        spec.remove("volumeName");
    }
}

fn volume(obj: &mut Value, maps: &Maps) {
    if let Some(spec) = obj_mut(obj, "spec")
        && let Some(to) = spec
            .get("storageClassName")
            .and_then(Value::as_str)
            .and_then(|sc| maps.storage_class(sc))
    {
        spec.insert("storageClassName".into(), Value::String(to.into()));
    }
    if let Some(cr) = obj
        .pointer_mut("/spec/claimRef")
        .and_then(Value::as_object_mut)
    {
        cr.remove("uid");
        cr.remove("resourceVersion");
        if let Some(ns) = cr.get("namespace").and_then(Value::as_str) {
            let to = maps.namespace(ns).to_string();
            cr.insert("namespace".into(), Value::String(to));
        }
    }
}

/// Drops references to the account's token Secrets, which are not restored.
fn service_account(obj: &mut Value) {
    let name = str_at(obj, "/metadata/name")
        .unwrap_or_default()
        .to_string();
    let prefix = format!("{name}-token-");
    if let Some(o) = obj.as_object_mut()
        && let Some(secrets) = o.get_mut("secrets").and_then(Value::as_array_mut)
    {
        secrets.retain(|s| !str_at(s, "/name").is_some_and(|n| n.starts_with(&prefix)));
        if secrets.is_empty() {
            o.remove("secrets");
        }
    }
}

/// A bare pod: no node (it is scheduled afresh), no resolved priority, and
/// no volumes of token Secrets that are not restored.
fn pod(obj: &mut Value) {
    let sa = str_at(obj, "/spec/serviceAccountName")
        .or_else(|| str_at(obj, "/spec/serviceAccount"))
        .unwrap_or("default")
        .to_string();
    let prefix = format!("{sa}-token-");
    let Some(spec) = obj_mut(obj, "spec") else {
        return;
    };
    spec.remove("nodeName");
    spec.remove("priority");
    let mut dropped = Vec::new();
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        vols.retain(|v| {
            let token = str_at(v, "/secret/secretName").is_some_and(|s| s.starts_with(&prefix));
            if token && let Some(n) = str_at(v, "/name") {
                dropped.push(n.to_string());
            }
            !token
        });
    }
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                if let Some(mounts) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                    mounts.retain(|m| {
                        !str_at(m, "/name").is_some_and(|n| dropped.iter().any(|d| d == n))
                    });
                }
            }
        }
    }
}

/// The selector and labels the Job controller derived from the old uid.
fn job(obj: &mut Value) {
    let manual = obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true);
    if manual {
        return;
    }
    if let Some(spec) = obj_mut(obj, "spec") {
        spec.remove("selector");
    }
    if let Some(labels) = obj
        .pointer_mut("/spec/template/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        for l in JOB_UID_LABELS {
            labels.remove(*l);
        }
    }
}

fn subjects(obj: &mut Value, maps: &Maps, notes: &mut Vec<String>) {
    let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) else {
        return;
    };
    for s in subjects {
        let Some(ns) = s.get("namespace").and_then(Value::as_str) else {
            continue;
        };
        if let Some(to) = maps.namespaces.get(ns) {
            notes.push(format!("subject namespace {ns} → {to}"));
            s["namespace"] = Value::String(to.clone());
        }
    }
}

/// The namespaces a NetworkPolicy's peers select by name follow the map.
/// A peer that selects namespaces by other labels cannot be mapped: the
/// restored namespace carries the source's labels, so the selector may
/// still pick the source namespaces; that is a warning.
fn network_policy(obj: &mut Value, maps: &Maps, out: &mut Notes) {
    if maps.namespaces.is_empty() {
        return;
    }
    for (direction, peers_key) in [("ingress", "from"), ("egress", "to")] {
        let Some(rules) = obj
            .pointer_mut(&format!("/spec/{direction}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for (i, rule) in rules.iter_mut().enumerate() {
            let Some(peers) = rule.get_mut(peers_key).and_then(Value::as_array_mut) else {
                continue;
            };
            for (j, peer) in peers.iter_mut().enumerate() {
                if let Some(sel) = peer
                    .get_mut("namespaceSelector")
                    .and_then(Value::as_object_mut)
                {
                    let at = format!("spec.{direction}[{i}].{peers_key}[{j}].namespaceSelector");
                    namespace_selector(sel, maps, &at, out);
                }
            }
        }
    }
}

fn namespace_selector(sel: &mut Map<String, Value>, maps: &Maps, at: &str, out: &mut Notes) {
    let map_name = |v: &mut Value, out: &mut Notes| {
        if let Some(from) = v.as_str()
            && let Some(to) = maps.namespaces.get(from)
        {
            out.notes.push(format!("{at}: namespace {from} → {to}"));
            *v = Value::String(to.clone());
        }
    };
    let mut other: BTreeSet<String> = BTreeSet::new();
    if let Some(labels) = sel.get_mut("matchLabels").and_then(Value::as_object_mut) {
        for (key, value) in labels.iter_mut() {
            if key == NAMESPACE_NAME_LABEL {
                map_name(value, out);
            } else {
                other.insert(key.clone());
            }
        }
    }
    if let Some(exprs) = sel
        .get_mut("matchExpressions")
        .and_then(Value::as_array_mut)
    {
        for e in exprs {
            let key = str_at(e, "/key").unwrap_or_default().to_string();
            if key != NAMESPACE_NAME_LABEL {
                other.insert(key);
                continue;
            }
            // In and NotIn name namespaces; Exists and DoesNotExist do not.
            if let Some(values) = e.get_mut("values").and_then(Value::as_array_mut) {
                for v in values {
                    map_name(v, out);
                }
            }
        }
    }
    if !other.is_empty() {
        out.warnings.push(format!(
            "{at} selects namespaces by label ({}), not by name, so STOW_NAMESPACE_MAP cannot \
             map it; restored as stored, it may still select the source namespaces",
            other.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
}

/// For `STOW_EXISTING=update`: carries over from the live object what the
/// server allocated or derived and will not let a replace change or clear
/// (cluster IPs, nodePorts, a claim's volume, a Job's selector), plus its
/// `resourceVersion`.
pub fn carry_over(rt: &ResourceType, ours: &mut Value, live: &Value) {
    if let Some(rv) = live.pointer("/metadata/resourceVersion").cloned()
        && let Some(meta) = obj_mut(ours, "metadata")
    {
        meta.insert("resourceVersion".into(), rv);
    }
    let copy_missing = |ours: &mut Value, ptr: &str, field: &str| {
        let Some(val) = live.pointer(&format!("{ptr}/{field}")).cloned() else {
            return;
        };
        if let Some(o) = ours.pointer_mut(ptr).and_then(Value::as_object_mut) {
            o.entry(field.to_string()).or_insert(val);
        }
    };
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "services") => {
            for f in ["clusterIP", "clusterIPs", "healthCheckNodePort"] {
                copy_missing(ours, "/spec", f);
            }
            let live_ports: Vec<Value> = live
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(ports) = ours
                .pointer_mut("/spec/ports")
                .and_then(Value::as_array_mut)
            {
                for p in ports {
                    let key = (p.get("port").cloned(), proto(p));
                    let Some(node) = live_ports
                        .iter()
                        .find(|lp| (lp.get("port").cloned(), proto(lp)) == key)
                        .and_then(|lp| lp.get("nodePort").cloned())
                    else {
                        continue;
                    };
                    if let Some(o) = p.as_object_mut() {
                        o.entry("nodePort").or_insert(node);
                    }
                }
            }
        }
        ("", "persistentvolumeclaims") => {
            copy_missing(ours, "/spec", "volumeName");
            for a in BINDING_ANNOTATIONS {
                if let Some(v) = annotation(live, a).map(|s| Value::String(s.into())) {
                    let meta = ours
                        .as_object_mut()
                        .and_then(|o| {
                            o.entry("metadata")
                                .or_insert_with(|| Value::Object(Map::new()))
                                .as_object_mut()
                        })
                        .expect("metadata is an object");
                    if let Some(ann) = meta
                        .entry("annotations")
                        .or_insert_with(|| Value::Object(Map::new()))
                        .as_object_mut()
                    {
                        ann.entry(a.to_string()).or_insert(v);
                    }
                }
            }
        }
        ("", "persistentvolumes") => copy_missing(ours, "/spec", "claimRef"),
        ("", "serviceaccounts") => {
            if let Some(s) = live.get("secrets").cloned()
                && let Some(o) = ours.as_object_mut()
            {
                o.entry("secrets").or_insert(s);
            }
        }
        ("batch", "jobs") => {
            copy_missing(ours, "/spec", "selector");
            if let Some(live_labels) = live
                .pointer("/spec/template/metadata/labels")
                .and_then(Value::as_object)
                && let Some(labels) = ours
                    .pointer_mut("/spec/template/metadata/labels")
                    .and_then(Value::as_object_mut)
            {
                for l in JOB_UID_LABELS {
                    if let Some(v) = live_labels.get(*l) {
                        labels.entry(l.to_string()).or_insert(v.clone());
                    }
                }
            }
        }
        ("", "namespaces") => copy_missing(ours, "", "spec"),
        _ => {}
    }
}

fn proto(p: &Value) -> String {
    p.get("protocol")
        .and_then(Value::as_str)
        .unwrap_or("TCP")
        .to_string()
}

/// The nodePorts a failed create reported as taken: `spec.ports[1].nodePort:
/// Invalid value: 30080: provided port is already allocated`.
pub fn allocated_node_ports(message: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for part in message.split("spec.ports[").skip(1) {
        if !part.contains("already allocated") {
            continue;
        }
        let rest = match part.split_once("Invalid value:") {
            Some((_, r)) => r,
            None => continue,
        };
        if let Some(n) = rest
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
        {
            out.push(n);
        }
    }
    out
}

/// Removes the given nodePorts so the server allocates fresh ones.
pub fn drop_node_ports(obj: &mut Value, ports: &[i64]) {
    if let Some(list) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for p in list {
            let taken = p
                .get("nodePort")
                .and_then(Value::as_i64)
                .is_some_and(|n| ports.is_empty() || ports.contains(&n));
            if taken && let Some(o) = p.as_object_mut() {
                o.remove("nodePort");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rt(group: &str, plural: &str, namespaced: bool) -> ResourceType {
        ResourceType {
            group: group.into(),
            version: "v1".into(),
            kind: String::new(),
            plural: plural.into(),
            namespaced,
        }
    }

    fn maps() -> Maps {
        Maps {
            namespaces: BTreeMap::from([("old".into(), "new".into())]),
            storage_classes: BTreeMap::from([("slow".into(), "fast".into())]),
            restored_pvs: BTreeSet::new(),
            host_volumes: BTreeSet::new(),
        }
    }

    #[test]
    fn server_metadata_and_status_go_and_namespace_is_mapped() {
        let mut o = json!({"metadata": {"name": "a", "namespace": "old", "uid": "u",
            "resourceVersion": "1", "generation": 2, "creationTimestamp": "t",
            "ownerReferences": [{}], "labels": {"x": "y"}}, "status": {"a": 1}, "data": {"k": "v"}});
        rewrite(&rt("", "configmaps", true), &mut o, &maps());
        assert_eq!(
            o,
            json!({"metadata": {"name": "a", "namespace": "new", "labels": {"x": "y"}}, "data": {"k": "v"}})
        );
    }

    #[test]
    fn services_keep_explicit_node_ports_only() {
        let mut s = json!({"metadata": {"name": "s", "annotations": {EXPLICIT_NODE_PORTS: "30080"}},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"],
              "ports": [{"port": 80, "nodePort": 30080}, {"port": 81, "nodePort": 31234}]}});
        rewrite(&rt("", "services", true), &mut s, &maps());
        assert!(s["spec"].get("clusterIP").is_none());
        assert!(s["spec"].get("clusterIPs").is_none());
        assert_eq!(s["spec"]["ports"][0]["nodePort"], 30080);
        assert!(s["spec"]["ports"][1].get("nodePort").is_none());
        assert!(s["metadata"].get("annotations").is_none());

        let mut h = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        rewrite(&rt("", "services", true), &mut h, &maps());
        assert_eq!(h["spec"]["clusterIP"], "None");

        // Nothing recorded: keep the port; a conflict is retried without it.
        let mut u = json!({"metadata": {"name": "u"}, "spec": {"ports": [{"port": 80, "nodePort": 30001}]}});
        rewrite(&rt("", "services", true), &mut u, &maps());
        assert_eq!(u["spec"]["ports"][0]["nodePort"], 30001);
    }

    #[test]
    fn allocated_ports_are_parsed_and_dropped() {
        let msg = "Service \"s\" is invalid: spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated";
        assert_eq!(allocated_node_ports(msg), vec![30080]);
        assert!(allocated_node_ports("something else").is_empty());
        let mut s = json!({"spec": {"ports": [{"port": 80, "nodePort": 30080}, {"port": 81, "nodePort": 30081}]}});
        drop_node_ports(&mut s, &[30080]);
        assert!(s["spec"]["ports"][0].get("nodePort").is_none());
        assert_eq!(s["spec"]["ports"][1]["nodePort"], 30081);
    }

    #[test]
    fn claims_forget_a_binding_unless_the_volume_is_restored() {
        let pvc = json!({"metadata": {"name": "c", "namespace": "old", "annotations": {
                "pv.kubernetes.io/bind-completed": "yes", "volume.beta.kubernetes.io/storage-provisioner": "x",
                "keep": "me"}},
            "spec": {"volumeName": "pv-1", "storageClassName": "slow"}});
        let mut a = pvc.clone();
        rewrite(&rt("", "persistentvolumeclaims", true), &mut a, &maps());
        assert!(a["spec"].get("volumeName").is_none());
        assert_eq!(a["spec"]["storageClassName"], "fast");
        assert_eq!(a["metadata"]["annotations"], json!({"keep": "me"}));

        let mut m = maps();
        m.restored_pvs.insert("pv-1".into());
        let mut b = pvc.clone();
        rewrite(&rt("", "persistentvolumeclaims", true), &mut b, &m);
        assert_eq!(b["spec"]["volumeName"], "pv-1");
    }

    #[test]
    fn role_binding_subjects_follow_the_namespace_map() {
        let mut rb = json!({"metadata": {"name": "rb", "namespace": "old"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "old"},
                         {"kind": "ServiceAccount", "name": "sb", "namespace": "elsewhere"},
                         {"kind": "User", "name": "bob"}]});
        rewrite(
            &rt("rbac.authorization.k8s.io", "rolebindings", true),
            &mut rb,
            &maps(),
        );
        assert_eq!(rb["metadata"]["namespace"], "new");
        assert_eq!(rb["subjects"][0]["namespace"], "new");
        assert_eq!(rb["subjects"][1]["namespace"], "elsewhere");
    }

    #[test]
    fn skips() {
        let m = maps();
        let owned = json!({"metadata": {"name": "p", "ownerReferences": [
            {"kind": "ReplicaSet", "name": "rs", "controller": true}]}});
        assert!(
            skip_reason(&rt("", "pods", true), &owned, &m)
                .unwrap()
                .contains("ReplicaSet rs")
        );
        let bare = json!({"metadata": {"name": "p"}});
        assert_eq!(skip_reason(&rt("", "pods", true), &bare, &m), None);
        let done = json!({"metadata": {"name": "j"}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert!(skip_reason(&rt("batch", "jobs", true), &done, &m).is_some());
        let token =
            json!({"metadata": {"name": "t"}, "type": "kubernetes.io/service-account-token"});
        assert!(skip_reason(&rt("", "secrets", true), &token, &m).is_some());
        let ours = json!({"metadata": {"name": "x", "labels": {"app.kubernetes.io/managed-by": "kubestow"}}});
        assert!(skip_reason(&rt("batch", "jobs", true), &ours, &m).is_some());
        let sc = json!({"metadata": {"name": "slow"}});
        assert!(
            skip_reason(&rt("storage.k8s.io", "storageclasses", false), &sc, &m)
                .unwrap()
                .contains("fast")
        );
    }

    #[test]
    fn host_and_local_volumes_need_to_be_named() {
        let pv = |name: &str, spec: Value| json!({"metadata": {"name": name}, "spec": spec});
        let t = rt("", "persistentvolumes", false);
        let host = pv("root", json!({"hostPath": {"path": "/"}}));
        let local = pv("disk", json!({"local": {"path": "/mnt/disk"}}));
        let nfs = pv("share", json!({"nfs": {"server": "nas", "path": "/x"}}));
        let mut m = maps();
        let why = skip_reason(&t, &host, &m).expect("a hostPath volume is skipped");
        assert!(
            why.contains("hostPath")
                && why.contains("(/)")
                && why.contains("STOW_ALLOW_HOST_VOLUMES"),
            "{why}"
        );
        let why = skip_reason(&t, &local, &m).expect("a local volume is skipped");
        assert!(why.contains("local") && why.contains("/mnt/disk"), "{why}");
        assert_eq!(skip_reason(&t, &nfs, &m), None);
        m.host_volumes.insert("root".into());
        assert_eq!(skip_reason(&t, &host, &m), None, "named: restored");
        assert!(skip_reason(&t, &local, &m).is_some(), "only the one named");
    }

    #[test]
    fn claim_data_sources_follow_the_namespace_map() {
        let t = rt("", "persistentvolumeclaims", true);
        let mut c = json!({"metadata": {"name": "c", "namespace": "old"}, "spec": {
            "dataSourceRef": {"kind": "VolumeSnapshot", "name": "s", "namespace": "old"}}});
        let notes = rewrite(&t, &mut c, &maps());
        assert_eq!(c["spec"]["dataSourceRef"]["namespace"], "new");
        assert!(notes.notes.iter().any(|n| n.contains("dataSourceRef")));
        let mut other = json!({"metadata": {"name": "c", "namespace": "old"}, "spec": {
            "dataSourceRef": {"kind": "VolumeSnapshot", "name": "s", "namespace": "elsewhere"}}});
        rewrite(&t, &mut other, &maps());
        assert_eq!(other["spec"]["dataSourceRef"]["namespace"], "elsewhere");
    }

    #[test]
    fn network_policy_namespaces_follow_the_namespace_map() {
        let t = rt("networking.k8s.io", "networkpolicies", true);
        let np = json!({"metadata": {"name": "np", "namespace": "old"}, "spec": {
            "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "old"}}},
                {"namespaceSelector": {"matchExpressions": [
                    {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": ["old", "elsewhere"]}]}},
                {"podSelector": {"matchLabels": {"app": "web"}}}]}],
            "egress": [{"to": [
                {"namespaceSelector": {"matchLabels": {"team": "shop"}}},
                {"namespaceSelector": {}}]}]}});
        let mut a = np.clone();
        let notes = rewrite(&t, &mut a, &maps());
        let from = &a["spec"]["ingress"][0]["from"];
        assert_eq!(
            from[0]["namespaceSelector"]["matchLabels"][NAMESPACE_NAME_LABEL],
            "new"
        );
        assert_eq!(
            from[1]["namespaceSelector"]["matchExpressions"][0]["values"],
            json!(["new", "elsewhere"])
        );
        assert_eq!(notes.notes.len(), 2, "{:?}", notes.notes);
        // By another label: kept as is, with a warning that says where.
        assert_eq!(
            a["spec"]["egress"][0]["to"][0]["namespaceSelector"]["matchLabels"]["team"],
            "shop"
        );
        assert_eq!(notes.warnings.len(), 1, "{:?}", notes.warnings);
        assert!(
            notes.warnings[0].contains("spec.egress[0].to[0].namespaceSelector")
                && notes.warnings[0].contains("team"),
            "{}",
            notes.warnings[0]
        );
        // Without a map there is nothing to map or warn about.
        let mut b = np.clone();
        let notes = rewrite(&t, &mut b, &Maps::default());
        assert_eq!(b["spec"], np["spec"]);
        assert_eq!(notes, Notes::default());
    }

    #[test]
    fn jobs_lose_the_derived_selector() {
        let mut j = json!({"metadata": {"name": "j"}, "spec": {
            "selector": {"matchLabels": {"controller-uid": "u"}},
            "template": {"metadata": {"labels": {"controller-uid": "u", "job-name": "j", "app": "x"}}}}});
        rewrite(&rt("batch", "jobs", true), &mut j, &maps());
        assert!(j["spec"].get("selector").is_none());
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"],
            json!({"job-name": "j", "app": "x"})
        );
        let live = json!({"metadata": {"resourceVersion": "7"}, "spec": {
            "selector": {"matchLabels": {"controller-uid": "v"}},
            "template": {"metadata": {"labels": {"controller-uid": "v"}}}}});
        carry_over(&rt("batch", "jobs", true), &mut j, &live);
        assert_eq!(j["spec"]["selector"]["matchLabels"]["controller-uid"], "v");
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["controller-uid"],
            "v"
        );
        assert_eq!(j["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn update_keeps_allocated_service_fields() {
        let mut ours = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}});
        let live = json!({"metadata": {"resourceVersion": "3"}, "spec": {"clusterIP": "10.96.0.9",
            "clusterIPs": ["10.96.0.9"], "ports": [{"port": 80, "protocol": "TCP", "nodePort": 31000}]}});
        carry_over(&rt("", "services", true), &mut ours, &live);
        assert_eq!(ours["spec"]["clusterIP"], "10.96.0.9");
        assert_eq!(ours["spec"]["ports"][0]["nodePort"], 31000);
    }

    #[test]
    fn service_accounts_and_pods_drop_token_references() {
        let mut sa = json!({"metadata": {"name": "app"}, "secrets": [{"name": "app-token-abcde"}, {"name": "other"}]});
        rewrite(&rt("", "serviceaccounts", true), &mut sa, &maps());
        assert_eq!(sa["secrets"], json!([{"name": "other"}]));
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "priority": 0,
            "volumes": [{"name": "default-token-x", "secret": {"secretName": "default-token-x"}}, {"name": "data"}],
            "containers": [{"name": "c", "volumeMounts": [{"name": "default-token-x"}, {"name": "data"}]}]}});
        rewrite(&rt("", "pods", true), &mut pod, &maps());
        assert!(pod["spec"].get("nodeName").is_none());
        assert_eq!(pod["spec"]["volumes"], json!([{"name": "data"}]));
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"],
            json!([{"name": "data"}])
        );
    }
}
