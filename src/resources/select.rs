//! Selection: which namespaces, types and objects a run covers.
//!
//! The same rules serve backup and restore. On restore they apply to the
//! names in the snapshot (before `STOW_NAMESPACE_MAP`).

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::{Value, json};

use super::ResourceType;
use crate::config::{ClusterResources, LabelSelector, Selection};

/// The parsed selection settings of a run; says which namespaces, types and objects it covers.
#[derive(Debug, Clone)]
pub struct Selector {
    /// `None`: every namespace.
    include_ns: Option<GlobSet>,
    include_patterns: Vec<String>,
    exclude_ns: GlobSet,
    include_res: Vec<String>,
    exclude_res: Vec<String>,
    labels: Option<LabelSelector>,
    label_text: Option<String>,
    /// `STOW_INCLUDE_CLUSTER_RESOURCES` (`auto` when unset): which cluster-scoped objects are covered.
    pub cluster: ClusterResources,
}

/// Why a selection does not parse; the settings are fixed, so never retriable.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// A namespace pattern is not a glob.
    #[error("bad glob `{pattern}`: {source}")]
    Glob {
        /// The offending pattern.
        pattern: String,
        /// Why globset rejected it.
        #[source]
        source: globset::Error,
    },
    /// The patterns do not build into one matcher.
    #[error("{source}")]
    GlobSet {
        /// All the patterns of the set.
        patterns: Vec<String>,
        /// Why globset could not build them.
        #[source]
        source: globset::Error,
    },
    /// The label selector does not parse.
    #[error("{reason}")]
    Labels {
        /// The selector as given.
        selector: String,
        /// Why it does not parse.
        reason: String,
    },
}

fn globset(patterns: &[String]) -> Result<GlobSet, SelectError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|source| SelectError::Glob {
            pattern: p.clone(),
            source,
        })?);
    }
    b.build().map_err(|source| SelectError::GlobSet {
        patterns: patterns.to_vec(),
        source,
    })
}

/// Whether `item` (a `STOW_*_RESOURCES` entry) names the type: `configmaps`,
/// `deployments.apps`, `deployment`, `deployment.apps`, or `*`.
pub fn names_type(item: &str, rt: &ResourceType) -> bool {
    let kind = rt.kind.to_ascii_lowercase();
    item == "*"
        || item == rt.plural
        || item == kind
        || (!rt.group.is_empty()
            && (item == format!("{}.{}", rt.plural, rt.group)
                || item == format!("{kind}.{}", rt.group)))
}

impl Selector {
    /// Compiles the selection settings; fails when a namespace glob or the label selector does not parse.
    pub fn new(sel: &Selection) -> Result<Self, SelectError> {
        let all = sel.namespaces.is_empty() || sel.namespaces.iter().any(|p| p == "*");
        Ok(Self {
            include_ns: if all {
                None
            } else {
                Some(globset(&sel.namespaces)?)
            },
            include_patterns: sel.namespaces.clone(),
            exclude_ns: globset(&sel.exclude_namespaces)?,
            include_res: sel.include_resources.clone(),
            exclude_res: sel.exclude_resources.clone(),
            labels: sel
                .label_selector
                .as_deref()
                .map(|s| {
                    LabelSelector::parse(s).map_err(|e| SelectError::Labels {
                        selector: s.to_string(),
                        reason: e.to_string(),
                    })
                })
                .transpose()?,
            label_text: sel.label_selector.clone(),
            cluster: sel.cluster_resources.unwrap_or(ClusterResources::Auto),
        })
    }

    /// Whether namespace `ns` matches the include patterns and none of the exclude patterns.
    pub fn namespace(&self, ns: &str) -> bool {
        self.include_ns.as_ref().is_none_or(|g| g.is_match(ns)) && !self.exclude_ns.is_match(ns)
    }

    /// True when the include patterns select every namespace, so one
    /// cluster-wide list per type is cheaper than one per namespace.
    pub fn all_namespaces(&self) -> bool {
        self.include_ns.is_none()
    }

    /// The include patterns when all are plain names (no glob characters):
    /// then the namespaces are known without listing them.
    pub fn literal_namespaces(&self) -> Option<Vec<String>> {
        let literal = |p: &String| !p.contains(['*', '?', '[', ']', '{', '}', '\\']);
        (self.include_ns.is_some() && self.include_patterns.iter().all(literal)).then(|| {
            self.include_patterns
                .iter()
                .filter(|p| self.namespace(p))
                .cloned()
                .collect()
        })
    }

    /// Included by `STOW_INCLUDE_RESOURCES` (empty: all) and not excluded.
    pub fn resource(&self, rt: &ResourceType) -> bool {
        (self.include_res.is_empty() || self.include_res.iter().any(|i| names_type(i, rt)))
            && !self.excluded(rt)
    }

    /// Named by `STOW_EXCLUDE_RESOURCES`. Types pulled in by reference
    /// (`auto`) ignore the include list but honour this.
    pub fn excluded(&self, rt: &ResourceType) -> bool {
        self.exclude_res.iter().any(|i| names_type(i, rt))
    }

    /// The label selector, for the API server's `labelSelector`.
    pub fn label_selector(&self) -> Option<&str> {
        self.label_text.as_deref()
    }

    /// Whether an object's labels match `STOW_LABEL_SELECTOR`.
    pub fn labels_match(&self, obj: &Value) -> bool {
        self.labels
            .as_ref()
            .is_none_or(|s| s.matches(obj.pointer("/metadata/labels")))
    }
}

/// A cluster-scoped object, by `(group, plural, name)`.
pub type ClusterRef = (&'static str, &'static str, String);

/// `(group, plural)` of CustomResourceDefinitions.
pub const CRDS: (&str, &str) = ("apiextensions.k8s.io", "customresourcedefinitions");

/// The cluster-scoped objects `obj` uses, for `STOW_INCLUDE_CLUSTER_RESOURCES=auto`:
/// a claim's volume and storage class, a volume's storage class, the
/// ClusterRole of a RoleBinding, the storage classes of a StatefulSet's
/// claim templates. (The CRD of a custom resource is found per type.)
pub fn references(rt: &ResourceType, obj: &Value) -> Vec<ClusterRef> {
    let s = |ptr: &str| obj.pointer(ptr).and_then(Value::as_str).map(String::from);
    let mut out = Vec::new();
    let sc = |out: &mut Vec<ClusterRef>, v: &Value| {
        let name = v
            .pointer("/spec/storageClassName")
            .and_then(Value::as_str)
            .or_else(|| {
                v.pointer("/metadata/annotations")
                    .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
                    .and_then(Value::as_str)
            });
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            out.push(("storage.k8s.io", "storageclasses", n.to_string()));
        }
    };
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "persistentvolumeclaims") => {
            if let Some(v) = s("/spec/volumeName").filter(|v| !v.is_empty()) {
                out.push(("", "persistentvolumes", v));
            }
            sc(&mut out, obj);
        }
        ("", "persistentvolumes") => sc(&mut out, obj),
        ("apps", "statefulsets") => {
            for t in obj
                .pointer("/spec/volumeClaimTemplates")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                sc(&mut out, t);
            }
        }
        ("rbac.authorization.k8s.io", "rolebindings") => {
            if s("/roleRef/kind").as_deref() == Some("ClusterRole")
                && let Some(n) = s("/roleRef/name")
            {
                out.push(("rbac.authorization.k8s.io", "clusterroles", n));
            }
        }
        _ => {}
    }
    out
}

/// The selection as recorded in a snapshot manifest.
pub fn to_json(sel: &Selection) -> Value {
    json!({
        "namespaces": sel.namespaces,
        "exclude_namespaces": sel.exclude_namespaces,
        "include_resources": sel.include_resources,
        "exclude_resources": sel.exclude_resources,
        "label_selector": sel.label_selector,
        "include_cluster_resources": match sel.cluster_resources.unwrap_or(ClusterResources::Auto) {
            ClusterResources::Auto => "auto",
            ClusterResources::All => "true",
            ClusterResources::None => "false",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(group: &str, plural: &str, kind: &str) -> ResourceType {
        ResourceType {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced: true,
        }
    }

    #[test]
    fn namespace_and_resource_selection() {
        let sel = Selection {
            namespaces: vec!["shop-*".into(), "db".into()],
            exclude_namespaces: vec!["shop-test".into()],
            include_resources: vec![],
            exclude_resources: vec!["secrets".into(), "widgets.example.com".into()],
            label_selector: None,
            cluster_resources: None,
        };
        let s = Selector::new(&sel).unwrap();
        assert!(s.namespace("shop-prod") && s.namespace("db"));
        assert!(!s.namespace("shop-test") && !s.namespace("other"));
        assert!(!s.all_namespaces());
        assert_eq!(s.literal_namespaces(), None);
        assert!(s.resource(&rt("", "configmaps", "ConfigMap")));
        assert!(!s.resource(&rt("", "secrets", "Secret")));
        assert!(!s.resource(&rt("example.com", "widgets", "Widget")));
        assert!(s.resource(&rt("other.com", "widgets", "Widget")));

        let s = Selector::new(&Selection {
            namespaces: vec!["a".into(), "b".into()],
            include_resources: vec!["deployments.apps".into(), "configmap".into()],
            ..Selection::default()
        })
        .unwrap();
        assert_eq!(s.literal_namespaces(), Some(vec!["a".into(), "b".into()]));
        assert!(s.resource(&rt("apps", "deployments", "Deployment")));
        assert!(!s.resource(&rt("extensions", "deployments", "Deployment")));
        assert!(s.resource(&rt("", "configmaps", "ConfigMap")));
        assert!(!s.resource(&rt("", "secrets", "Secret")));
        assert!(
            Selector::new(&Selection::default())
                .unwrap()
                .all_namespaces()
        );
    }
}
