//! The shared view of the repository both phases work from.

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;
use tracing::warn;

use super::*;
use crate::repo::lock::{self, age};
use crate::repo::walk::{self, Root};
use crate::repo::{BlobId, IndexEntry, IndexFile, PackId, RepoError, Repository};
use crate::summary::Report;

pub(super) struct View {
    pub(super) files: Vec<IndexFile>,
    /// Every stored pack and its size.
    pub(super) data: HashMap<PackId, u64>,
    /// Entries of each indexed pack (union over index objects).
    pub(super) entries: HashMap<PackId, Vec<(BlobId, IndexEntry)>>,
    /// Which index objects (positions in `files`) list each pack.
    pub(super) listed_in: HashMap<PackId, Vec<usize>>,
    /// Every pack that lists each blob.
    pub(super) locations: HashMap<BlobId, Vec<PackId>>,
    pub(super) reachable: HashSet<BlobId>,
    pub(super) snapshots: usize,
}

/// Reads the index (replacing the in-memory one), then lists the packs,
/// then the snapshots, then walks them. In this order: a pack indexed
/// after the index was read shows as unindexed, never the reverse.
pub(super) async fn view(repo: &Repository, channels: usize) -> Result<View, RepoError> {
    let files = repo.reload_index().await?;
    let data = list_packs(repo).await?;
    let snapshots = repo.list_snapshots().await?;
    let roots: Vec<Root> = snapshots
        .iter()
        .flat_map(|(id, m)| Root::of_manifest(*id, m))
        .collect();
    let w = walk::walk(repo, roots, channels * 4).await;
    if let Some(first) = w.problems.first() {
        return Err(RepoError::refused(
            "prune",
            format!(
                "the repository has {} damaged or missing blob(s) reachable from snapshots, e.g. {first}; \
             prune refuses to decide what is unused; run check",
                w.problems.len()
            ),
        ));
    }
    let mut entries: HashMap<PackId, Vec<(BlobId, IndexEntry)>> = HashMap::new();
    let mut listed_in: HashMap<PackId, Vec<usize>> = HashMap::new();
    let mut locations: HashMap<BlobId, Vec<PackId>> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        for (pack, es) in &f.packs {
            let list = listed_in.entry(*pack).or_default();
            list.push(i);
            if list.len() > 1 {
                continue; // Same pack listed again: same entries.
            }
            for (b, _) in es {
                locations.entry(*b).or_default().push(*pack);
            }
            entries.insert(*pack, es.clone());
        }
    }
    let mut reachable = w.reachable;
    reachable.extend(restore_reports(repo).await?);
    Ok(View {
        files,
        data,
        entries,
        listed_in,
        locations,
        reachable,
        snapshots: snapshots.len(),
    })
}

/// Restore reports are leaf blobs named by `restores/<blob id>` pointers,
/// outside any snapshot; they are kept as long as their pointer exists.
pub(super) async fn restore_reports(repo: &Repository) -> Result<Vec<BlobId>, RepoError> {
    let prefix = crate::repo::REPORT_PREFIX;
    Ok(repo
        .backend()
        .list(prefix)
        .await?
        .into_iter()
        .filter_map(|o| o.key[prefix.len()..].parse().ok())
        .collect())
}

pub(super) async fn list_packs(repo: &Repository) -> Result<HashMap<PackId, u64>, RepoError> {
    let mut out = HashMap::new();
    for o in repo.backend().list(crate::repo::DATA_PREFIX).await? {
        match crate::repo::pack_id_from_key(&o.key) {
            Some(id) => {
                out.insert(id, o.size);
            }
            None => warn!(key = %o.key, "ignoring an object under data/ that is not a pack"),
        }
    }
    Ok(out)
}

/// Writer markers of runs that may still be writing. Markers of complete
/// runs (every part saved: their writers are done) and stale ones are
/// removed on the way, every prune, before retention can forget a run
/// and so hide that it completed. A marker that does not open is ignored
/// (and reported): it cannot hold prune back.
pub(super) async fn writers_in_flight(
    repo: &Repository,
    opts: &Options,
    report: &mut Report,
    details: &mut Details,
) -> Result<Vec<(String, lock::WriterMarker)>, RepoError> {
    let now = Timestamp::now();
    let markers = lock::list_writer_markers(repo).await?;
    if markers.is_empty() {
        return Ok(Vec::new());
    }
    let runs = repo.complete_runs().await?;
    let complete: HashSet<&str> = runs
        .iter()
        .filter(|r| r.complete)
        .map(|r| r.run_id.as_str())
        .collect();
    let mut live = Vec::new();
    for (key, found) in markers {
        let (m, sealed) = match found {
            lock::Found::Sealed(m) => (m, true),
            // An older version's writer: it holds prune back like before.
            lock::Found::Plaintext(m) => (m, false),
            lock::Found::Unreadable(e) => {
                let ignored = lock::Ignored::logged(&key, &e, "a writer marker");
                report.count("writer_markers_ignored", 1);
                details.ignored.push(ignored);
                continue;
            }
        };
        // Unauthenticated and dated in the future: it would never go stale.
        let bogus = !sealed && age(m.time, now) > opts.writer_max_age;
        if bogus || age(now, m.time) > opts.writer_max_age {
            warn!(%key, run = %m.run_id, since = %m.time, "removing a stale writer marker (its backup is presumed dead)");
            repo.backend().delete(&key).await?;
            report.count("writer_markers_removed", 1);
        } else if complete.contains(m.run_id.as_str()) {
            repo.backend().delete(&key).await?;
            report.count("writer_markers_removed", 1);
        } else {
            live.push((key, m));
        }
    }
    Ok(live)
}
