//! The API types kubestow names itself, and what a type is.

use serde::{Deserialize, Serialize};

/// One API resource type at one version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceType {
    /// `""` for the core group.
    pub group: String,
    /// The API version within the group: `v1`, `v1beta1`.
    pub version: String,
    /// The object kind: `Deployment`.
    pub kind: String,
    /// The resource name in URLs: `deployments`.
    pub plural: String,
    /// Whether objects of this type live in a namespace.
    pub namespaced: bool,
}

impl ResourceType {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps` or `configmaps`: how kubectl and the
    /// `STOW_*_RESOURCES` variables name a type.
    pub fn name(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether this is the `plural` type of `group`, at any version.
    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }

    /// The type of Namespace objects.
    pub fn namespaces() -> Self {
        Self {
            group: String::new(),
            version: "v1".into(),
            kind: "Namespace".into(),
            plural: "namespaces".into(),
            namespaced: false,
        }
    }
}

/// Builds a [`ResourceType`]; `ns` is whether it is namespaced.
pub fn rt(group: &str, version: &str, kind: &str, plural: &str, ns: bool) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        namespaced: ns,
    }
}

/// The `batch/v1` Job type.
pub fn jobs() -> ResourceType {
    rt("batch", "v1", "Job", "jobs", true)
}
/// The core `v1` Pod type.
pub fn pods() -> ResourceType {
    rt("", "v1", "Pod", "pods", true)
}
/// The core `v1` PersistentVolumeClaim type.
pub fn claims() -> ResourceType {
    rt(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
    )
}
/// The core `v1` PersistentVolume type.
pub fn volumes() -> ResourceType {
    rt("", "v1", "PersistentVolume", "persistentvolumes", false)
}
/// The core `v1` Secret type.
pub fn secrets() -> ResourceType {
    rt("", "v1", "Secret", "secrets", true)
}
/// The core `v1` ServiceAccount type.
pub fn service_accounts() -> ResourceType {
    rt("", "v1", "ServiceAccount", "serviceaccounts", true)
}
/// The `storage.k8s.io/v1` StorageClass type.
pub fn storage_classes() -> ResourceType {
    rt(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        false,
    )
}
/// The `snapshot.storage.k8s.io/v1` VolumeSnapshot type.
pub fn volume_snapshots() -> ResourceType {
    rt(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
        true,
    )
}
/// The `snapshot.storage.k8s.io/v1` VolumeSnapshotContent type.
pub fn snapshot_contents() -> ResourceType {
    rt(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshotContent",
        "volumesnapshotcontents",
        false,
    )
}
/// The core `v1` Event type.
pub fn events() -> ResourceType {
    rt("", "v1", "Event", "events", true)
}
/// The `snapshot.storage.k8s.io/v1` VolumeSnapshotClass type.
pub fn snapshot_classes() -> ResourceType {
    rt(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshotClass",
        "volumesnapshotclasses",
        false,
    )
}
