//! `check`: verifies the repository's structure and, optionally, its data.
//!
//! Structure (always):
//! - every index object opens and decodes, and lists each pack the same
//!   way as any other index object that lists it; the entries of a pack
//!   tile its body (contiguous from offset 0);
//! - every indexed pack exists, and its size (from the listing, no read)
//!   lies in the range its entries imply: the body, plus a sealed header
//!   of 38 to `38 + 4 + 45 × entries` bytes, plus the 4-byte header
//!   length (see [`crate::repo::pack_size_bounds`]). That catches any
//!   truncation or growth that touches a blob; only `STOW_CHECK_READ_DATA`
//!   pins the exact size, by reading the header length;
//! - every snapshot manifest opens; every blob reachable from a snapshot
//!   is in the index (trees are read for that, so they are verified too).
//!
//! Data (`STOW_CHECK_READ_DATA=all|N%`): every pack (or a random N% of
//! them, at least one) is read whole: its name must be the BLAKE3 of its
//! bytes, its header must open and tile the body and agree with the
//! index, and every blob must open (AEAD), have its recorded length, and
//! hash to its keyed id.
//!
//! Each problem is one error item naming the object key (and the blob id
//! where there is one); any error fails the run (exit 1). Runs with parts
//! missing, and packs no index lists, are warnings.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::ReadData;
use crate::repo::walk::{self, Root};
use crate::repo::{
    BlobId, IndexEntry, PackId, RepoError, Repository, SnapshotId, backend, group_runs, pack_key,
    pack_size_bounds,
};
use crate::summary::Report;

/// Error items listed in the summary; the rest are counted.
pub const MAX_ITEMS: usize = 1000;

/// How to run a check.
#[derive(Debug, Clone)]
pub struct Options {
    /// Which packs to read whole (`STOW_CHECK_READ_DATA`); `None` checks
    /// structure only.
    pub read_data: Option<ReadData>,
    /// How many packs are read at once; tree walks use four times as many.
    pub channels: usize,
}

/// What a check found, before it becomes a report.
#[derive(Debug, Default)]
struct Findings {
    errors: Vec<(String, String)>,
    warnings: Vec<String>,
}

impl Findings {
    fn error(&mut self, item: impl Into<String>, message: impl Into<String>) {
        let (item, message) = (item.into(), message.into());
        warn!(item = %item, "check: {message}");
        self.errors.push((item, message));
    }

    fn repo_error(&mut self, e: &RepoError) {
        self.error(error_key(e), e.to_string());
    }

    fn warning(&mut self, message: String) {
        warn!("check: {message}");
        self.warnings.push(message);
    }
}

/// The object a repository error is about.
fn error_key(e: &RepoError) -> String {
    match e {
        RepoError::Corrupt { key, .. } | RepoError::Format { key, .. } => key.clone(),
        RepoError::Backend(
            backend::BackendError::NotFound { key, .. }
            | backend::BackendError::Permanent { key, .. }
            | backend::BackendError::Transient { key, .. }
            | backend::BackendError::GaveUp { key, .. },
        ) => key.clone(),
        _ => "repository".into(),
    }
}

#[derive(Debug, Serialize)]
struct Details {
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_data: Option<String>,
}

/// Checks `repo`; see the module documentation for what.
pub async fn check(repo: &Repository, opts: &Options) -> Result<Report, RepoError> {
    let mut f = Findings::default();
    let mut report = Report::default();

    // Index objects.
    let (files, index_errors) = repo.read_index_files_lenient(true).await?;
    for e in &index_errors {
        f.repo_error(e);
    }
    report.count("index_files", (files.len() + index_errors.len()) as u64);
    let mut packs: BTreeMap<PackId, (Vec<(BlobId, IndexEntry)>, String)> = BTreeMap::new();
    for file in &files {
        for (pack, entries) in &file.packs {
            let mut sorted = entries.clone();
            sorted.sort_by_key(|(_, e)| e.offset);
            match packs.get(pack) {
                Some((known, first)) if *known != sorted => f.error(
                    file.key.clone(),
                    format!(
                        "lists pack {pack} differently from {first} ({} entries there, {} here)",
                        known.len(),
                        sorted.len()
                    ),
                ),
                Some(_) => {}
                None => {
                    packs.insert(*pack, (sorted, file.key.clone()));
                }
            }
        }
    }
    for (pack, (entries, file)) in &packs {
        let mut expect = 0u64;
        for (id, e) in entries {
            if e.offset != expect {
                f.error(
                    pack_key(pack),
                    format!(
                        "{file} lists blob {id} at offset {}, but the previous blob ends at {expect}",
                        e.offset
                    ),
                );
                break;
            }
            expect = e.offset + e.length;
        }
    }
    report.count("packs", packs.len() as u64);
    report.count(
        "blobs",
        packs.values().map(|(e, _)| e.len() as u64).sum::<u64>(),
    );

    // Pack objects.
    let mut stored: HashMap<PackId, u64> = HashMap::new();
    for o in repo.backend().list(crate::repo::DATA_PREFIX).await? {
        match crate::repo::pack_id_from_key(&o.key) {
            Some(id) => {
                stored.insert(id, o.size);
            }
            None => f.warning(format!("{}: not a pack object; ignored", o.key)),
        }
    }
    let to_read = select_packs(
        &packs
            .keys()
            .filter(|p| stored.contains_key(p))
            .copied()
            .collect::<Vec<_>>(),
        opts.read_data,
    );
    for (pack, (entries, file)) in &packs {
        let Some(&size) = stored.get(pack) else {
            let first = entries
                .first()
                .map(|(id, _)| id.to_string())
                .unwrap_or_default();
            f.error(
                pack_key(pack),
                format!(
                    "pack is missing; {file} lists {} blob(s) in it, e.g. blob {first}",
                    entries.len()
                ),
            );
            continue;
        };
        let body: u64 = entries.iter().map(|(_, e)| e.length).sum();
        let (min, max) = pack_size_bounds(body, entries.len());
        if !(min..=max).contains(&size) {
            // Name the first blob the stored size cuts into, if any.
            let hit = entries
                .iter()
                .find(|(_, e)| e.offset + e.length + 4 + (min - body - 4) > size)
                .map(|(id, _)| format!("; blob {id} is cut"))
                .unwrap_or_default();
            f.error(
                pack_key(pack),
                format!(
                    "pack has {size} bytes, but the {} blob(s) {file} lists need {min} to {max}{hit}",
                    entries.len()
                ),
            );
        }
    }
    let unindexed = stored.keys().filter(|p| !packs.contains_key(p)).count();
    if unindexed > 0 {
        f.warning(format!(
            "{unindexed} pack(s) are not listed by any index object (left by an interrupted backup, or one in flight); prune removes them once it is safe"
        ));
    }
    report.count("packs_unindexed", unindexed as u64);

    // Snapshots and what they reach.
    let (snapshots, snapshot_errors) = repo.list_snapshots_lenient().await?;
    for e in &snapshot_errors {
        f.repo_error(e);
    }
    report.count(
        "snapshots",
        (snapshots.len() + snapshot_errors.len()) as u64,
    );
    let roots: Vec<Root> = snapshots
        .iter()
        .flat_map(|(id, m)| Root::of_manifest(*id, m))
        .collect();
    let runs = group_runs(snapshots);
    report.count("runs", runs.len() as u64);
    for run in runs.iter().filter(|r| !r.complete) {
        let total = run.parts.iter().map(|p| p.1.parts).max().unwrap_or(0);
        f.warning(format!(
            "run {} is incomplete: {} of {total} part(s) present (in flight, or interrupted)",
            run.run_id,
            run.parts.len()
        ));
        report.count("runs_incomplete", 1);
    }
    let w = walk::walk(repo, roots.clone(), opts.channels * 4).await;
    report.count("blobs_reachable", w.reachable.len() as u64);
    report.count("trees", w.trees);
    for p in &w.problems {
        f.error(p.object_key(), p.to_string());
    }
    // A missing pack that held only data chunks never fails the walk (it
    // reads trees, not data), so name the snapshots that lose data here.
    let missing: HashSet<PackId> = packs
        .keys()
        .filter(|p| !stored.contains_key(p))
        .copied()
        .collect();
    let lost = |id: &BlobId| {
        repo.index_entry(id)
            .is_some_and(|e| missing.contains(&e.pack))
    };
    if w.reachable.iter().any(lost) {
        // Only on failure: walk each snapshot alone to attribute the loss.
        let mut by_snapshot: BTreeMap<SnapshotId, Vec<Root>> = BTreeMap::new();
        for r in roots {
            if let Some(id) = r.snapshot {
                by_snapshot.entry(id).or_default().push(r);
            }
        }
        for (id, rs) in by_snapshot {
            let one = walk::walk(repo, rs, opts.channels * 4).await;
            let n = one.reachable.iter().filter(|b| lost(b)).count();
            if let Some(example) = one.reachable.iter().find(|b| lost(b)) {
                f.error(
                    format!("snapshots/{id}"),
                    format!("{n} reachable blob(s) are in missing packs, e.g. blob {example}"),
                );
            }
        }
    }

    // Pack data.
    let mut read_data = None;
    if let Some(rd) = opts.read_data {
        info!(packs = to_read.len(), of = packs.len(), "reading pack data");
        let mut results = futures::stream::iter(to_read.iter().copied())
            .map(|p| {
                let entries = packs[&p].0.clone();
                async move { verify_pack(repo, p, entries).await }
            })
            .buffer_unordered(opts.channels);
        let (mut read, mut bytes, mut blobs) = (0u64, 0u64, 0u64);
        while let Some(v) = results.next().await {
            read += 1;
            bytes += v.bytes;
            blobs += v.blobs;
            for (item, msg) in v.errors {
                f.error(item, msg);
            }
            for msg in v.warnings {
                f.warning(msg);
            }
        }
        report.count("packs_read", read);
        report.count("blobs_verified", blobs);
        report.add_bytes("read", bytes);
        read_data = Some(match rd {
            ReadData::All => "all".to_string(),
            ReadData::Percent(p) => format!("{p}%"),
        });
    }

    report.count("warnings", f.warnings.len() as u64);
    report.count("problems", f.errors.len() as u64);
    let total = f.errors.len();
    for (item, msg) in f.errors.into_iter().take(MAX_ITEMS) {
        report.fail_item(item, msg);
    }
    if total > MAX_ITEMS {
        report.fail_item(
            "check",
            format!(
                "{} more problem(s) not listed; see the log",
                total - MAX_ITEMS
            ),
        );
    }
    report.failed = total > 0;
    if total > 0 {
        report.reason = Some(format!("the repository has {total} problem(s)"));
    }
    report.details = serde_json::to_value(Details {
        warnings: f.warnings,
        read_data,
    })
    .expect("details serialise");
    info!(problems = total, "check finished");
    Ok(report)
}

/// Packs to read: all, or a random `N%` (at least one when there are any).
fn select_packs(all: &[PackId], read_data: Option<ReadData>) -> Vec<PackId> {
    match read_data {
        None => Vec::new(),
        Some(ReadData::All) => all.to_vec(),
        Some(ReadData::Percent(p)) => {
            let k = ((all.len() as f64) * p / 100.0).ceil() as usize;
            let k = k.clamp(usize::from(!all.is_empty()), all.len());
            let mut v = all.to_vec();
            // Partial Fisher-Yates with the OS random number generator.
            for i in 0..k {
                let r = u64::from_le_bytes(random8()) as usize % (v.len() - i);
                v.swap(i, i + r);
            }
            v.truncate(k);
            v
        }
    }
}

fn random8() -> [u8; 8] {
    let mut b = [0u8; 8];
    // A failing RNG only makes the sample less random; it stays a sample.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b
}

#[derive(Debug, Default)]
struct PackVerdict {
    bytes: u64,
    blobs: u64,
    errors: Vec<(String, String)>,
    warnings: Vec<String>,
}

/// Reads one pack whole and verifies its name, header and every blob.
async fn verify_pack(
    repo: &Repository,
    pack: PackId,
    indexed: Vec<(BlobId, IndexEntry)>,
) -> PackVerdict {
    let key = pack_key(&pack);
    let bytes = match repo.read_pack(&pack).await {
        Ok(b) => b,
        Err(e) => {
            return PackVerdict {
                errors: vec![(key, format!("cannot read the pack: {e}"))],
                ..PackVerdict::default()
            };
        }
    };
    let r = repo.clone();
    match repo
        .cpu("verifying a pack", move || {
            verify_pack_bytes(&r, &pack, &bytes, &indexed)
        })
        .await
    {
        Ok(v) => v,
        Err(e) => PackVerdict {
            errors: vec![(key, e.to_string())],
            ..PackVerdict::default()
        },
    }
}

fn verify_pack_bytes(
    repo: &Repository,
    pack: &PackId,
    bytes: &Bytes,
    indexed: &[(BlobId, IndexEntry)],
) -> PackVerdict {
    let key = pack_key(pack);
    let mut v = PackVerdict {
        bytes: bytes.len() as u64,
        ..PackVerdict::default()
    };
    if blake3::hash(bytes).as_bytes() != pack.as_bytes() {
        v.errors.push((
            key.clone(),
            "content does not match its name (BLAKE3): the pack was modified".into(),
        ));
    }
    let header = match repo.parse_pack(pack, bytes) {
        Ok(h) => Some(h),
        Err(e) => {
            v.errors.push((key.clone(), format!("header: {e}")));
            None
        }
    };
    // Blobs: those the header lists, else those the index lists.
    let blobs: Vec<(BlobId, IndexEntry)> = match &header {
        Some(h) => {
            let in_header: HashMap<BlobId, IndexEntry> = h.iter().copied().collect();
            for (id, e) in indexed {
                match in_header.get(id) {
                    Some(he) if he == e => {}
                    Some(he) => v.errors.push((
                        key.clone(),
                        format!(
                            "blob {id}: the index says offset {} length {}, the pack header offset {} length {}",
                            e.offset, e.length, he.offset, he.length
                        ),
                    )),
                    None => v.errors.push((
                        key.clone(),
                        format!("blob {id}: listed by the index but not by the pack header"),
                    )),
                }
            }
            let listed: HashMap<BlobId, ()> = indexed.iter().map(|(id, _)| (*id, ())).collect();
            let extra = h.iter().filter(|(id, _)| !listed.contains_key(id)).count();
            if extra > 0 {
                v.warnings.push(format!(
                    "{key}: {extra} blob(s) in the pack header are not in the index"
                ));
            }
            h.clone()
        }
        None => indexed.to_vec(),
    };
    for (id, e) in &blobs {
        v.blobs += 1;
        if let Err(err) = repo.open_pack_blob(id, e, bytes) {
            v.errors.push((key.clone(), err.to_string()));
        }
    }
    v
}

#[cfg(test)]
mod tests;
