//! Kubernetes resources: `backup` (discovery, selection, paged listing into
//! a catalogue of normalised objects) and `restore` (snapshot choice, plan,
//! rewrites, ordered apply with a per-item report). DESIGN.md §3.
//!
//! - [`discovery`] finds every listable type at the server's preferred
//!   version, custom resources included.
//! - [`select`] applies `STOW_NAMESPACES`, `STOW_*_RESOURCES`,
//!   `STOW_LABEL_SELECTOR` and `STOW_INCLUDE_CLUSTER_RESOURCES`.
//! - [`normalise`] turns a live object into the stored, stable JSON.
//! - [`catalogue`] is the tree of namespaces → types → objects stored in
//!   the repository (`docs/format.md` §12).
//! - [`backup`] and [`restore`] are the two modes; [`rewrite`] and
//!   [`order`] hold the restore rules.

pub mod backup;
pub mod catalogue;
pub mod discovery;
pub(crate) mod kubeapi;
pub mod normalise;
pub mod order;
pub mod restore;
pub mod rewrite;
pub mod select;

pub use catalogue::{Catalogue, ResourceType};

/// Label kubestow puts on the objects it creates itself (mover Jobs, their
/// pods, temporary PVCs and snapshots). Objects carrying
/// `app.kubernetes.io/managed-by=kubestow` are never backed up or restored.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "kubestow";

/// Errors that end a resource run as a whole (item failures go into the
/// report instead).
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// No snapshot matches what the restore asked for.
    #[error("{0}")]
    NoSnapshot(String),
    #[error("snapshot {snapshot}: cannot read the resource catalogue: {reason}")]
    Catalogue { snapshot: String, reason: String },
    #[error("{0}")]
    Cluster(String),
}

/// Whether an object carries kubestow's own label.
pub fn is_kubestow_owned(obj: &serde_json::Value) -> bool {
    obj.pointer("/metadata/labels")
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .and_then(|v| v.as_str())
        == Some(MANAGED_BY_VALUE)
}
