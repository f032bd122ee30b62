//! Restore order (docs/design.md §3): what others depend on goes first.
//!
//! Each entry is one level; objects of one level are created concurrently,
//! and a level starts only when the one before it has finished. Custom
//! resources and anything not listed come after the listed types, and
//! workloads come last, after the objects (and, with volume restore, the
//! data) they use.

use super::ResourceType;

/// `(group, plural)` per level, in order.
const LEVELS: &[&[(&str, &str)]] = &[
    &[("apiextensions.k8s.io", "customresourcedefinitions")],
    &[("", "namespaces")],
    &[("storage.k8s.io", "storageclasses")],
    &[("snapshot.storage.k8s.io", "volumesnapshotclasses")],
    &[("", "persistentvolumes")],
    &[("", "persistentvolumeclaims")],
    &[("rbac.authorization.k8s.io", "clusterroles")],
    &[("rbac.authorization.k8s.io", "roles")],
    &[("", "serviceaccounts")],
    &[
        ("rbac.authorization.k8s.io", "rolebindings"),
        ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ],
    &[("", "secrets")],
    &[("", "configmaps")],
    &[("", "limitranges")],
    &[("scheduling.k8s.io", "priorityclasses")],
    &[("", "pods")],
    &[("apps", "replicasets")],
    &[("", "endpoints")],
    &[("", "services")],
];

/// Workload controllers: last, after the volumes they mount.
const WORKLOADS: &[(&str, &str)] = &[
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
];

/// The level of everything not listed (custom resources included).
pub const OTHER: usize = LEVELS.len();
/// The level of workload controllers.
pub const WORKLOAD: usize = LEVELS.len() + 1;
/// The level of CRDs: custom resources wait for them to be Established.
pub const CRDS: usize = 0;
/// The level of Namespaces: right after CRDs, before anything in them.
pub const NAMESPACES: usize = 1;

/// The restore level of a type; lower goes first.
pub fn level(rt: &ResourceType) -> usize {
    let hit = |l: &&[(&str, &str)]| l.iter().any(|(g, p)| rt.is(g, p));
    if let Some(i) = LEVELS.iter().position(hit) {
        i
    } else if WORKLOADS.iter().any(|(g, p)| rt.is(g, p)) {
        WORKLOAD
    } else {
        OTHER
    }
}

/// A short name for logs.
pub fn level_name(level: usize) -> String {
    match level {
        OTHER => "other resources".into(),
        WORKLOAD => "workloads".into(),
        l => LEVELS
            .get(l)
            .map(|types| types.iter().map(|(_, p)| *p).collect::<Vec<_>>().join("+"))
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(group: &str, plural: &str) -> ResourceType {
        ResourceType {
            group: group.into(),
            version: "v1".into(),
            kind: String::new(),
            plural: plural.into(),
            namespaced: true,
        }
    }

    #[test]
    fn design_order() {
        let order = [
            rt("apiextensions.k8s.io", "customresourcedefinitions"),
            rt("", "namespaces"),
            rt("storage.k8s.io", "storageclasses"),
            rt("", "persistentvolumes"),
            rt("", "persistentvolumeclaims"),
            rt("rbac.authorization.k8s.io", "clusterroles"),
            rt("", "serviceaccounts"),
            rt("rbac.authorization.k8s.io", "rolebindings"),
            rt("", "secrets"),
            rt("", "configmaps"),
            rt("", "pods"),
            rt("", "services"),
            rt("example.com", "widgets"),
            rt("apps", "deployments"),
        ];
        let levels: Vec<usize> = order.iter().map(level).collect();
        let mut sorted = levels.clone();
        sorted.sort();
        assert_eq!(levels, sorted);
        assert_eq!(level(&rt("example.com", "widgets")), OTHER);
        assert_eq!(level(&rt("batch", "cronjobs")), WORKLOAD);
        assert_eq!(level_name(CRDS), "customresourcedefinitions");
    }
}
