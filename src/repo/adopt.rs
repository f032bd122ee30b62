//! Adopting orphan packs: packs an interrupted writer stored but never
//! listed in an index object (it died, or lost the repository, between the
//! pack's upload and its index object's). A backup run again would
//! otherwise upload their blobs again: up to one pack per channel plus
//! `STOW_RESUME_BUFFER`, the most expensive part of a resume over a slow
//! link. Adopting reads each orphan's own header (sealed with the
//! repository key, so no keyless writer can forge one) and lists it in a
//! new index object. The pruning-safety argument for it is rule W1 in
//! `docs/format.md` §14.

use std::collections::HashSet;

use futures::StreamExt;

use super::{DATA_PREFIX, IndexEntry, PackId, RepoError, Repository, lock, pack_id_from_key};
use crate::repo::BlobId;

/// Most orphans adopted by one run; more are left for prune. 256 packs of
/// 16 MiB cover 4 GiB of lost progress, far more than one dead writer
/// leaves with any sane `STOW_RESUME_BUFFER`.
const MAX_ADOPTED: usize = 256;
/// Pack headers read at once.
const PARALLEL: usize = 8;

/// What [`Repository::adopt_orphans`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// Packs now listed in the new index object.
    pub packs: usize,
    /// Their stored size, in bytes.
    pub bytes: u64,
    /// Orphans left alone: over [`MAX_ADOPTED`], or with a header that
    /// does not open (logged; prune deals with them).
    pub skipped: usize,
}

impl Repository {
    /// Lists in a new index object the packs that another writer stored
    /// but never indexed, so this run reuses their blobs instead of
    /// uploading them again. Call it right after
    /// [`announce_writer`](Self::announce_writer), before adding blobs.
    ///
    /// It costs one listing of the writer markers when no other writer is
    /// announced (the normal case: a finished run removes its marker).
    /// Otherwise it lists the pending prune marks, then `data/` (in that
    /// order: a prune deletes an orphan before its mark, so an orphan
    /// missing from one listing is missing from the other too), and never
    /// adopts a pack that a mark lists.
    pub async fn adopt_orphans(&self) -> Result<Adopted, RepoError> {
        let ours: HashSet<String> = self
            .inner
            .markers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let others = lock::list_writer_markers(self)
            .await?
            .into_iter()
            .filter(|(key, _)| !ours.contains(key))
            .count();
        if others == 0 {
            return Ok(Adopted::default());
        }
        let (marked, _ignored) = lock::marked_packs(self).await?;
        let known: HashSet<PackId> = self.packs().into_iter().collect();
        let mut orphans: Vec<(PackId, u64)> = self
            .inner
            .backend
            .list(DATA_PREFIX)
            .await?
            .into_iter()
            .filter_map(|o| pack_id_from_key(&o.key).map(|id| (id, o.size)))
            .filter(|(id, _)| !known.contains(id) && !marked.contains(id))
            .collect();
        if orphans.is_empty() {
            return Ok(Adopted::default());
        }
        let mut adopted = Adopted {
            skipped: orphans.len().saturating_sub(MAX_ADOPTED),
            ..Adopted::default()
        };
        orphans.truncate(MAX_ADOPTED);
        let headers: Vec<_> = futures::stream::iter(orphans)
            .map(|(id, size)| async move { (id, size, self.read_pack_header(&id).await) })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut packs: Vec<(PackId, Vec<(BlobId, IndexEntry)>)> = Vec::new();
        for (id, size, header) in headers {
            match header {
                Ok(entries) => {
                    adopted.packs += 1;
                    adopted.bytes += size;
                    packs.push((id, entries));
                }
                Err(e) => {
                    // Junk, or a pack a concurrent prune just removed: not
                    // ours to judge; `check` and prune report and remove it.
                    tracing::warn!(pack = %id, error = %e, "not adopting an unindexed pack whose header does not open");
                    adopted.skipped += 1;
                }
            }
        }
        if packs.is_empty() {
            return Ok(adopted);
        }
        let narrowed = packs
            .iter()
            .map(|(id, entries)| Ok((*id, super::index::narrow(id, entries)?)))
            .collect::<Result<Vec<_>, RepoError>>()?;
        // Stored index object first, then into the dedup index: nothing
        // this run saves may reference a blob no stored index lists (W3).
        self.write_index_file(&packs).await?;
        {
            let mut index = self.index_mut();
            for (id, entries) in &narrowed {
                index.add_pack(*id, entries, true);
            }
        }
        tracing::info!(
            packs = adopted.packs,
            bytes = adopted.bytes,
            skipped = adopted.skipped,
            "adopted packs that an interrupted run stored but did not index; their blobs are not uploaded again"
        );
        Ok(adopted)
    }
}
