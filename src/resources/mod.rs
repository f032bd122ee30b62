//! The rules for Kubernetes resources, used by the `backup` and `restore`
//! modes (`docs/design.md` §3):
//!
//! - [`select`] applies `STOW_NAMESPACES`, `STOW_*_RESOURCES`,
//!   `STOW_LABEL_SELECTOR` and `STOW_INCLUDE_CLUSTER_RESOURCES`.
//! - [`normalise`] turns a live object into the stored, stable JSON.
//! - [`catalogue`] is the tree of namespaces → types → objects stored in
//!   the repository (`docs/format.md` §12).
//! - [`rewrite`] and [`order`] hold the restore rules.

pub mod catalogue;
pub mod normalise;
pub mod order;
pub mod rewrite;
pub mod select;

pub use catalogue::Catalogue;

use crate::cluster::ResourceType;

/// Types that are never backed up: node-bound or ephemeral state that a
/// cluster rebuilds itself (`docs/design.md` §3 skip list, plus the node-bound
/// CSINodes and VolumeAttachments and the deprecated ComponentStatuses).
pub const SKIPPED_TYPES: &[(&str, &str)] = &[
    ("", "nodes"),
    ("", "events"),
    ("events.k8s.io", "events"),
    ("discovery.k8s.io", "endpointslices"),
    ("coordination.k8s.io", "leases"),
    ("", "componentstatuses"),
    ("storage.k8s.io", "csinodes"),
    ("storage.k8s.io", "volumeattachments"),
];

/// Whether `rt` is one of the [`SKIPPED_TYPES`], which are never backed up.
pub fn skipped_type(rt: &ResourceType) -> bool {
    SKIPPED_TYPES.iter().any(|(g, p)| rt.is(g, p))
}

/// Errors that end a resource run as a whole (item failures go into the
/// report instead).
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// No snapshot matches what the restore asked for.
    #[error("{0}")]
    NoSnapshot(String),
    /// The snapshot's catalogue could not be read from the repository.
    #[error("snapshot {snapshot}: cannot read the resource catalogue: {source}")]
    Catalogue {
        /// The snapshot id, in hex.
        snapshot: String,
        /// The repository error that stopped the read.
        #[source]
        // Boxed: a repository error is large and this path is cold.
        source: Box<crate::repo::RepoError>,
    },
    /// `STOW_NAMESPACES`, `STOW_EXCLUDE_NAMESPACES` or the label selector
    /// does not parse.
    #[error(transparent)]
    Selection(#[from] select::SelectError),
}

impl ResourceError {
    /// Whether a retry could succeed: only a repository that did not answer.
    pub fn is_retriable(&self) -> bool {
        match self {
            ResourceError::Catalogue { source, .. } => source.is_retriable(),
            ResourceError::NoSnapshot(_) | ResourceError::Selection(_) => false,
        }
    }
}
