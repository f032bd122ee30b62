//! The parent snapshot: the newest complete backup of the same volume and
//! plan, whose unchanged files are reused without reading them.

use super::*;

/// The parent snapshot: its id, its root node, and the root's listing.
pub(super) struct Parent {
    pub(super) id: SnapshotId,
    /// The volume's size then (`stats.bytes`), for the progress estimate.
    pub(super) bytes: Option<u64>,
    /// When its run saved it.
    pub(super) time: jiff::Timestamp,
    pub(super) root: Node,
    pub(super) listing: Option<Tree>,
}

/// The newest complete run of `plan` with this volume.
pub(super) async fn find_parent(
    repo: &Repository,
    plan: &str,
    name: &str,
) -> Result<Option<Parent>, VolumeError> {
    let runs = match repo.complete_runs().await {
        Ok(r) => r,
        Err(e) if is_item_error(&e) => {
            warn!(error = %e, "cannot list snapshots; backing up in full");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let found = runs.iter().rev().filter(|r| r.complete).find_map(|r| {
        r.parts.iter().find_map(|(id, m)| {
            (m.plan == plan)
                .then(|| {
                    m.volumes.get(name).map(|v| {
                        let bytes = v.stats.get("bytes").and_then(|b| b.as_u64());
                        (*id, v.root, r.time, bytes)
                    })
                })
                .flatten()
        })
    });
    let Some((id, root_tree, time, bytes)) = found else {
        return Ok(None);
    };
    let root = match load_tree(repo, &root_tree).await {
        Ok(t) => t
            .nodes
            .into_iter()
            .find(|n| n.name == ROOT_NAME && n.kind == NodeType::Dir),
        Err(e) if e.is_item_error() => {
            warn!(snapshot = %id, error = %e, "cannot read the parent snapshot's tree; backing up in full");
            None
        }
        Err(e) => return Err(e),
    };
    let Some(root) = root else {
        return Ok(None);
    };
    let listing = match root.subtree {
        Some(sub) => match load_tree(repo, &sub).await {
            Ok(t) => Some(t),
            Err(e) if e.is_item_error() => {
                warn!(snapshot = %id, error = %e, "cannot read the parent snapshot's tree; backing up in full");
                None
            }
            Err(e) => return Err(e),
        },
        None => None,
    };
    Ok(Some(Parent {
        bytes,
        id,
        time,
        root,
        listing,
    }))
}
