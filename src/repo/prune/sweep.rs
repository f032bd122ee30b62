//! Phase 2: carrying out marks of earlier prunes once their grace is over.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use tracing::{info, warn};

use super::*;
use crate::repo::lock::{self, Mark, PruneLock, age};
use crate::repo::{BlobId, IndexEntry, PackId, RepoError, Repository};
use crate::summary::Report;

pub(super) async fn sweep(
    repo: &Repository,
    opts: &Options,
    lock: &PruneLock,
    report: &mut Report,
    details: &mut Details,
) -> Result<(), RepoError> {
    let now = Timestamp::now();
    let live = writers_in_flight(repo, opts, report, details).await?;
    let lock::Marks { marks, ignored } = lock::list_marks(repo).await?;
    // Never acted on, never deleted: left for a person to look at.
    for i in &ignored {
        i.warn("a prune mark");
    }
    report.count("marks_ignored", ignored.len() as u64);
    details.ignored.extend(ignored);
    if marks.is_empty() {
        return Ok(());
    }

    let orphan_age = opts.grace.max(opts.writer_max_age);
    let mut due: Vec<(String, Mark)> = Vec::new();
    for (key, mark) in marks {
        let mark_age = age(now, mark.time);
        // Orphans wait longer: until their writer is surely gone.
        let actionable = !mark.packs.is_empty()
            || !mark.indexes.is_empty()
            || (!mark.orphans.is_empty() && mark_age >= orphan_age);
        if mark_age < opts.grace || !actionable {
            report.count("marks_waiting", 1);
            continue;
        }
        let limit = mark.time + opts.clock_margin;
        let blockers: Vec<String> = live
            .iter()
            .filter(|(_, m)| m.time < limit)
            .map(|(_, m)| m.run_id.clone())
            .collect();
        if blockers.is_empty() {
            due.push((key, mark));
        } else {
            warn!(mark = %key, writers = ?blockers, "deferring deletion: backups that started before the mark are still running");
            report.count("marks_deferred", 1);
            details.deferred.insert(key, blockers);
        }
    }
    if due.is_empty() {
        return Ok(());
    }

    lock.verify().await?;
    let v = view(repo, opts.channels).await?;
    let deleting_index: HashSet<&str> = due
        .iter()
        .flat_map(|(_, m)| m.indexes.iter().map(String::as_str))
        .collect();
    let mut doomed: HashSet<PackId> = due
        .iter()
        .flat_map(|(_, m)| m.packs.iter().copied())
        .filter(|p| v.data.contains_key(p))
        .collect();
    // Orphans (never indexed) go once their writer is surely gone.
    let mut waiting_orphans: HashMap<&str, Vec<PackId>> = HashMap::new();
    for (key, m) in &due {
        for o in &m.orphans {
            if v.listed_in.contains_key(o) || !v.data.contains_key(o) {
                continue; // Indexed after all, or already gone.
            }
            if age(now, m.time) >= orphan_age {
                doomed.insert(*o);
            } else {
                waiting_orphans.entry(key.as_str()).or_default().push(*o);
            }
        }
    }

    // Rescue: a marked pack holding a blob some snapshot needs, with no
    // other copy in a pack that stays, stays itself.
    let survives = |p: &PackId, doomed: &HashSet<PackId>| {
        !doomed.contains(p) && v.data.contains_key(p) && v.listed_in.contains_key(p)
    };
    let mut rescued = 0u64;
    let mut candidates: Vec<PackId> = doomed.iter().copied().collect();
    candidates.sort();
    for p in candidates {
        let Some(es) = v.entries.get(&p) else {
            continue;
        };
        // Still listed by an index object that stays (one superseded by a
        // mark that is not due yet): deleting it would leave a dangling
        // entry, so it waits to be marked again.
        let listed_on = v.listed_in[&p]
            .iter()
            .any(|f| !deleting_index.contains(v.files[*f].key.as_str()));
        if listed_on {
            warn!(pack = %p, "keeping a marked pack that an index object which stays still lists");
            doomed.remove(&p);
            rescued += 1;
            continue;
        }
        let needed = es.iter().any(|(b, _)| {
            v.reachable.contains(b)
                && !v.locations[b]
                    .iter()
                    .any(|q| *q != p && survives(q, &doomed))
        });
        if needed {
            info!(pack = %p, "rescuing a marked pack: a snapshot saved since the mark uses it");
            doomed.remove(&p);
            rescued += 1;
        }
    }

    // Every pack that stays keeps an index entry.
    let mut reindex: Vec<(PackId, Vec<(BlobId, IndexEntry)>)> = Vec::new();
    for (p, files) in &v.listed_in {
        if !doomed.contains(p)
            && v.data.contains_key(p)
            && files
                .iter()
                .all(|f| deleting_index.contains(v.files[*f].key.as_str()))
        {
            reindex.push((*p, v.entries[p].clone()));
        }
    }
    lock.verify().await?;
    write_index_files(repo, reindex, report).await?;

    // Index objects first (new readers stop seeing the packs), then packs.
    lock.verify().await?;
    let sizes: HashMap<&str, u64> = v.files.iter().map(|f| (f.key.as_str(), f.size)).collect();
    for key in &deleting_index {
        lock.check()?;
        repo.backend().delete(key).await?;
        report.count("index_files_deleted", 1);
        report.add_bytes("freed", sizes.get(key).copied().unwrap_or(0));
    }
    let freed: u64 = doomed.iter().map(|p| v.data[p]).sum();
    futures::stream::iter(doomed.iter().copied())
        .map(|p| async move {
            // A lock that went stale meanwhile may be another prune's now.
            lock.check()?;
            repo.backend()
                .delete(&crate::repo::pack_key(&p))
                .await
                .map_err(RepoError::from)
        })
        .buffer_unordered(opts.channels)
        .try_collect::<Vec<()>>()
        .await?;
    report.count("packs_deleted", doomed.len() as u64);
    report.count("packs_rescued", rescued);
    report.add_bytes("freed", freed);
    info!(
        packs = doomed.len(),
        index_files = deleting_index.len(),
        rescued,
        bytes = freed,
        "deleted marked data"
    );

    // Done with these marks; orphans that must wait more move to a new mark.
    for (key, m) in &due {
        lock.check()?;
        if let Some(orphans) = waiting_orphans.remove(key.as_str()) {
            let rest = Mark {
                version: m.version,
                time: m.time,
                run_id: m.run_id.clone(),
                packs: Vec::new(),
                indexes: Vec::new(),
                orphans,
            };
            lock::put_mark(repo, &rest).await?;
        }
        repo.backend().delete(key).await?;
        report.count("marks_done", 1);
    }
    Ok(())
}

pub(super) async fn write_index_files(
    repo: &Repository,
    mut packs: Vec<(PackId, Vec<(BlobId, IndexEntry)>)>,
    report: &mut Report,
) -> Result<(), RepoError> {
    packs.sort_by_key(|p| p.0);
    for chunk in packs.chunks(PACKS_PER_INDEX_FILE) {
        repo.write_index_file(chunk).await?;
        report.count("packs_reindexed", chunk.len() as u64);
    }
    Ok(())
}
