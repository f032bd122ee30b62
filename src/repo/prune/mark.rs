//! Phase 1: marking unused packs and rewriting partly used ones.

use std::collections::HashSet;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use tracing::{info, warn};

use super::*;
use crate::repo::lock::{self, Mark, PruneLock, age};
use crate::repo::{BlobId, BlobKind, IndexEntry, PackId, RepoError, Repository};
use crate::summary::Report;

pub(super) async fn mark(
    repo: &Repository,
    opts: &Options,
    lock: &PruneLock,
    report: &mut Report,
    details: &mut Details,
) -> Result<(), RepoError> {
    // Ignored objects were reported by the sweep; they mark nothing.
    let pending = lock::list_marks(repo).await?.marks;
    let pending_packs: HashSet<PackId> = pending
        .iter()
        .flat_map(|(_, m)| m.packs.iter().chain(&m.orphans).copied())
        .collect();
    let pending_index: HashSet<&str> = pending
        .iter()
        .flat_map(|(_, m)| m.indexes.iter().map(String::as_str))
        .collect();
    let v = view(repo, opts.channels).await?;
    report.count("snapshots", v.snapshots as u64);
    report.count("blobs_reachable", v.reachable.len() as u64);

    let mut unused: Vec<PackId> = Vec::new();
    let mut repack: Vec<PackId> = Vec::new();
    for (p, es) in &v.entries {
        if pending_packs.contains(p) {
            continue;
        }
        let Some(&size) = v.data.get(p) else {
            warn!(pack = %p, "an indexed pack is missing; run check");
            report.count("packs_missing", 1);
            continue;
        };
        let waste: u64 = es
            .iter()
            .filter(|(b, _)| !v.reachable.contains(b))
            .map(|(_, e)| e.length)
            .sum();
        let used = es.iter().any(|(b, _)| v.reachable.contains(b));
        if !used {
            unused.push(*p);
        } else if waste > 0 && waste as f64 >= opts.repack_unused * size as f64 {
            repack.push(*p);
        }
    }
    unused.sort();
    repack.sort();
    let doomed: HashSet<PackId> = unused.iter().chain(&repack).copied().collect();
    let kept =
        |p: &PackId| !doomed.contains(p) && !pending_packs.contains(p) && v.data.contains_key(p);

    // Rewrite partly used packs: each used blob without a copy in a kept
    // pack is copied once.
    if !repack.is_empty() {
        lock.verify().await?;
        let mut assigned: HashSet<BlobId> = HashSet::new();
        let mut jobs: Vec<(PackId, Vec<(BlobId, IndexEntry)>)> = Vec::new();
        for p in &repack {
            let blobs: Vec<(BlobId, IndexEntry)> = v.entries[p]
                .iter()
                .filter(|(b, _)| {
                    v.reachable.contains(b)
                        && !v.locations[b].iter().any(kept)
                        && assigned.insert(*b)
                })
                .copied()
                .collect();
            jobs.push((*p, blobs));
        }
        let writer = repo.repack_writer(opts.channels);
        let mut packs = futures::stream::iter(jobs)
            .map(|(p, blobs)| async move { read_used(repo, p, blobs).await })
            .buffered(2);
        let mut copied = 0u64;
        while let Some(blobs) = packs.try_next().await? {
            for (id, kind, data) in blobs {
                let (stored, _) = writer.add(kind, data).await?;
                if stored != id {
                    return Err(RepoError::refused(
                        "prune",
                        format!("blob {id} got id {stored} when rewritten; refusing to continue"),
                    ));
                }
                copied += 1;
            }
        }
        let stats = writer.finish().await?;
        report.count("packs_repacked", repack.len() as u64);
        report.count("blobs_repacked", copied);
        report.add_bytes("repacked", stats.bytes_stored);
    }

    // Index objects that list a marked pack are replaced: packs they list
    // that stay are listed again in new ones.
    let superseded: Vec<usize> = v
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            !pending_index.contains(f.key.as_str())
                && f.packs.iter().any(|(p, _)| doomed.contains(p))
        })
        .map(|(i, _)| i)
        .collect();
    let superseded_set: HashSet<usize> = superseded.iter().copied().collect();
    let mut reindex: Vec<(PackId, Vec<(BlobId, IndexEntry)>)> = Vec::new();
    let mut seen: HashSet<PackId> = HashSet::new();
    for &i in &superseded {
        for (p, _) in &v.files[i].packs {
            if doomed.contains(p) || pending_packs.contains(p) || !seen.insert(*p) {
                continue;
            }
            let elsewhere = v.listed_in[p].iter().any(|f| {
                !superseded_set.contains(f) && !pending_index.contains(v.files[*f].key.as_str())
            });
            if !elsewhere {
                reindex.push((*p, v.entries[p].clone()));
            }
        }
    }
    if !reindex.is_empty() {
        lock.verify().await?;
        write_index_files(repo, reindex, report).await?;
    }

    // Packs no index listed when we read it: maybe a writer in flight,
    // maybe a crash. Recorded, and deleted only much later (see sweep).
    let mut orphans: Vec<PackId> = v
        .data
        .keys()
        .filter(|p| !v.listed_in.contains_key(p) && !pending_packs.contains(p))
        .copied()
        .collect();
    orphans.sort();

    let mut packs: Vec<PackId> = doomed.iter().copied().collect();
    packs.sort();
    let marked_bytes: u64 = packs.iter().map(|p| v.data[p]).sum();
    let mut indexes: Vec<String> = superseded.iter().map(|&i| v.files[i].key.clone()).collect();
    indexes.sort();
    let mut m = Mark {
        version: 1,
        time: Timestamp::now(),
        run_id: opts.run_id.clone(),
        packs,
        indexes,
        orphans,
    };
    report.count("packs_marked", m.packs.len() as u64);
    report.count("packs_unused", unused.len() as u64);
    report.count("orphans_marked", m.orphans.len() as u64);
    report.add_bytes("marked", marked_bytes);
    if m.is_empty() {
        return Ok(());
    }
    lock.verify().await?;
    for attempt in 0.. {
        lock.check()?;
        m.time = Timestamp::now();
        let key = lock::put_mark(repo, &m).await?;
        if age(Timestamp::now(), m.time) <= MARK_PUT_LIMIT {
            info!(mark = %key, packs = m.packs.len(), orphans = m.orphans.len(), index_files = m.indexes.len(), "marked data for deletion after the grace period");
            details.mark = Some(key);
            break;
        }
        repo.backend().delete(&key).await?;
        if attempt >= 2 {
            return Err(RepoError::refused(
                "prune",
                "storing the prune mark keeps taking over a minute; nothing was marked",
            ));
        }
    }
    Ok(())
}

/// The used blobs of one pack, read with one GET and verified.
pub(super) async fn read_used(
    repo: &Repository,
    pack: PackId,
    blobs: Vec<(BlobId, IndexEntry)>,
) -> Result<Vec<(BlobId, BlobKind, Bytes)>, RepoError> {
    if blobs.is_empty() {
        return Ok(Vec::new());
    }
    let bytes = repo.read_pack(&pack).await?;
    let r = repo.clone();
    let out = repo
        .cpu("opening a pack", move || {
            blobs
                .iter()
                .map(|(id, e)| Ok((*id, e.kind, r.open_pack_blob(id, e, &bytes)?)))
                .collect::<Result<Vec<_>, crate::repo::RepoError>>()
        })
        .await??;
    Ok(out)
}
