//! Snapshot manifests `snapshots/<id>`: written last by a run, one per
//! part (channel). A run is complete when parts `0..parts` are all there.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::crypto::{MAX_META_LEN, kind};
use super::id::{BlobId, SnapshotId};
use super::{META_PARALLEL, RepoError, Repository, check_content_name, open_error};

pub(crate) const PREFIX: &str = "snapshots/";

/// The most parts a run may have. A run has one part per channel (at most
/// 255); the limit keeps a manifest from making readers size anything by a
/// count it merely claims.
pub(crate) const MAX_PARTS: u32 = 65_536;

/// Only `complete` is ever written: a manifest is the last thing a part
/// writes, so an incomplete part has no manifest at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotStatus {
    /// The part finished and stored everything it references.
    #[default]
    Complete,
}

/// One volume in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeEntry {
    /// Root tree of the volume.
    pub root: BlobId,
    /// Free-form counters (files, bytes, ...), for listings.
    #[serde(default)]
    pub stats: serde_json::Value,
}

/// One part of a run: what it backed up, and where its trees are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// When the part was taken; [`new`](Self::new) stamps the current time.
    pub time: jiff::Timestamp,
    /// The run this part belongs to.
    pub run_id: String,
    /// This part's number, `0..parts`.
    pub part: u32,
    /// How many parts the run has.
    pub parts: u32,
    /// Name of the backup plan.
    pub plan: String,
    /// Labels given to the run, for filtering.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Id of the source cluster, if known.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// What the run selected (e.g. `namespaces`), as free-form JSON.
    #[serde(default)]
    pub selection: serde_json::Value,
    /// Root of the resource catalogue tree.
    #[serde(default)]
    pub resources: Option<BlobId>,
    /// Volumes backed up, by name (`namespace/claim`).
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeEntry>,
    /// Always [`SnapshotStatus::Complete`].
    #[serde(default)]
    pub status: SnapshotStatus,
    /// kubestow version that wrote it.
    pub version: String,
    /// Free-form counters of the part, for listings.
    #[serde(default)]
    pub stats: serde_json::Value,
}

impl SnapshotManifest {
    /// A manifest for part `part` of `parts`, stamped now with this
    /// version; everything else empty.
    pub fn new(run_id: impl Into<String>, part: u32, parts: u32, plan: impl Into<String>) -> Self {
        Self {
            time: jiff::Timestamp::now(),
            run_id: run_id.into(),
            part,
            parts,
            plan: plan.into(),
            tags: Vec::new(),
            cluster_id: None,
            selection: serde_json::Value::Null,
            resources: None,
            volumes: BTreeMap::new(),
            status: SnapshotStatus::Complete,
            version: env!("CARGO_PKG_VERSION").to_string(),
            stats: serde_json::Value::Null,
        }
    }

    /// Blobs the manifest points at directly.
    pub fn roots(&self) -> impl Iterator<Item = &BlobId> {
        self.resources
            .iter()
            .chain(self.volumes.values().map(|v| &v.root))
    }
}

/// The parts of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Id shared by all its parts.
    pub run_id: String,
    /// Time of the latest part.
    pub time: jiff::Timestamp,
    /// Sorted by part number.
    pub parts: Vec<(SnapshotId, SnapshotManifest)>,
    /// Every part `0..parts` is present and all parts agree on `parts`.
    pub complete: bool,
}

/// Groups manifests into runs, oldest first.
pub fn group_runs(snapshots: Vec<(SnapshotId, SnapshotManifest)>) -> Vec<Run> {
    let mut by_run: BTreeMap<String, Vec<(SnapshotId, SnapshotManifest)>> = BTreeMap::new();
    for (id, m) in snapshots {
        by_run.entry(m.run_id.clone()).or_default().push((id, m));
    }
    let mut runs: Vec<Run> = by_run
        .into_iter()
        .map(|(run_id, mut parts)| {
            parts.sort_by_key(|p| (p.1.part, p.1.time));
            let time = parts.iter().map(|p| p.1.time).max().expect("non-empty");
            let total = parts[0].1.parts;
            let present: BTreeSet<u32> = parts.iter().map(|p| p.1.part).collect();
            // Distinct part numbers, all below `total`, as many as `total`:
            // exactly 0..total, without building that range (a manifest
            // claiming u32::MAX parts would make it 16 GiB).
            let complete = total > 0
                && parts.iter().all(|p| p.1.parts == total)
                && present.len() as u64 == u64::from(total)
                && present.iter().all(|p| *p < total);
            Run {
                run_id,
                time,
                parts,
                complete,
            }
        })
        .collect();
    runs.sort_by(|a, b| (a.time, &a.run_id).cmp(&(b.time, &b.run_id)));
    runs
}

/// Parses the decrypted manifest stored under `key`: JSON whose part
/// number is in range.
pub(crate) fn decode_manifest(key: &str, plain: &[u8]) -> Result<SnapshotManifest, RepoError> {
    let m: SnapshotManifest = serde_json::from_slice(plain)
        .map_err(|e| RepoError::format(key, format!("not a snapshot manifest: {e}")))?;
    if !(1..=MAX_PARTS).contains(&m.parts) || m.part >= m.parts {
        return Err(RepoError::corrupt(
            key,
            None,
            format!(
                "part {} of {} parts is out of range (a run has 1 to {MAX_PARTS} parts, numbered from 0)",
                m.part, m.parts
            ),
        ));
    }
    Ok(m)
}

/// Object key of a snapshot manifest: `snapshots/<id>`.
pub fn snapshot_key(id: &SnapshotId) -> String {
    format!("{}{}", PREFIX, id.to_hex())
}

impl Repository {
    /// Stores a snapshot manifest. Every blob it references directly must
    /// already be listed in a stored index object (flush the writer first),
    /// so a manifest never points at data a reader cannot find.
    pub async fn save_snapshot(
        &self,
        manifest: &SnapshotManifest,
    ) -> Result<SnapshotId, RepoError> {
        {
            let ix = self.index();
            for root in manifest.roots() {
                if !ix.is_persisted(root) {
                    return Err(if ix.contains(root) {
                        RepoError::NotFlushed { id: *root }
                    } else {
                        RepoError::MissingBlob { id: *root }
                    });
                }
            }
        }
        // Readers refuse such a manifest; never store one.
        if !(1..=MAX_PARTS).contains(&manifest.parts) || manifest.part >= manifest.parts {
            return Err(RepoError::refused(
                "save snapshot",
                format!(
                    "part {} of {} parts is out of range (1 to {MAX_PARTS} parts, numbered from 0)",
                    manifest.part, manifest.parts
                ),
            ));
        }
        let mut manifest = manifest.clone();
        manifest.status = SnapshotStatus::Complete;
        let json = serde_json::to_vec(&manifest).expect("manifest serialises");
        let sealed = self.seal(kind::SNAPSHOT, &json);
        let id = SnapshotId(*blake3::hash(&sealed).as_bytes());
        self.inner
            .backend
            .put(&snapshot_key(&id), Bytes::from(sealed))
            .await?;
        Ok(id)
    }

    /// Reads and opens the manifest with id `id`.
    pub async fn load_snapshot(&self, id: &SnapshotId) -> Result<SnapshotManifest, RepoError> {
        let key = snapshot_key(id);
        let bytes = self.inner.backend.get(&key).await?;
        self.decode_snapshot(&key, bytes)
    }

    pub(super) fn decode_snapshot(
        &self,
        key: &str,
        bytes: Bytes,
    ) -> Result<SnapshotManifest, RepoError> {
        check_content_name(key, PREFIX, &bytes)?;
        let plain = self
            .inner
            .master
            .open(kind::SNAPSHOT, bytes, MAX_META_LEN)
            .map_err(|e| open_error(key, None, e))?;
        decode_manifest(key, &plain)
    }

    /// Every snapshot manifest, oldest first. Fails naming the first object
    /// that is damaged.
    pub async fn list_snapshots(&self) -> Result<Vec<(SnapshotId, SnapshotManifest)>, RepoError> {
        let (all, errors) = self.list_snapshots_lenient().await?;
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(all),
        }
    }

    /// Every snapshot manifest that can be read, oldest first, and an error
    /// for each one that cannot (for `check` and `list`).
    pub async fn list_snapshots_lenient(
        &self,
    ) -> Result<(Vec<(SnapshotId, SnapshotManifest)>, Vec<RepoError>), RepoError> {
        let objects = self.inner.backend.list(PREFIX).await?;
        let results: Vec<Result<(SnapshotId, SnapshotManifest), RepoError>> =
            futures::stream::iter(objects)
                .map(|obj| async move {
                    let id: SnapshotId = obj.key[PREFIX.len()..]
                        .parse()
                        .map_err(|_| RepoError::format(&obj.key, "not named by a snapshot id"))?;
                    let bytes = self.inner.backend.get(&obj.key).await?;
                    Ok((id, self.decode_snapshot(&obj.key, bytes)?))
                })
                .buffer_unordered(META_PARALLEL)
                .collect()
                .await;
        let (mut all, mut errors) = (Vec::new(), Vec::new());
        for r in results {
            match r {
                Ok(s) => all.push(s),
                // A backend failure is not damage: never skip over it.
                Err(e @ RepoError::Backend(_)) => return Err(e),
                Err(e) => errors.push(e),
            }
        }
        all.sort_by_key(|s| (s.1.time, s.0));
        Ok((all, errors))
    }

    /// Deletes one snapshot manifest (only `prune` does this).
    pub async fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), RepoError> {
        Ok(self.inner.backend.delete(&snapshot_key(id)).await?)
    }

    /// Snapshots grouped by run, oldest first, each marked complete or not.
    pub async fn complete_runs(&self) -> Result<Vec<Run>, RepoError> {
        Ok(group_runs(self.list_snapshots().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(run: &str, part: u32, parts: u32) -> (SnapshotId, SnapshotManifest) {
        (
            SnapshotId([part as u8; 32]),
            SnapshotManifest::new(run, part, parts, "daily"),
        )
    }

    #[test]
    fn grouping_and_completeness() {
        let runs = group_runs(vec![part("a", 1, 2), part("b", 0, 1), part("c", 0, 2)]);
        let by: BTreeMap<_, _> = runs.iter().map(|r| (r.run_id.as_str(), r)).collect();
        assert!(!by["a"].complete);
        assert!(by["b"].complete);
        assert!(!by["c"].complete);
        let runs = group_runs(vec![part("a", 1, 2), part("a", 0, 2)]);
        assert!(runs[0].complete);
        assert_eq!(runs[0].parts[0].1.part, 0);
        // Disagreeing part counts are not complete.
        let runs = group_runs(vec![part("a", 0, 1), part("a", 1, 2)]);
        assert!(!runs[0].complete);
    }

    #[test]
    fn manifest_json_shape() {
        let mut m = SnapshotManifest::new("r1", 0, 1, "daily");
        m.resources = Some(BlobId([0xab; 32]));
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["status"], "complete");
        assert_eq!(v["resources"], "ab".repeat(32));
        let back: SnapshotManifest = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }
}

/// The shortest snapshot-id prefix that names a snapshot.
pub const MIN_PREFIX: usize = 8;

/// A snapshot as a person names it (`STOW_SNAPSHOT`): a run id, a snapshot
/// id, or a prefix of a snapshot id of at least [`MIN_PREFIX`] hex digits.
/// The one rule that `list`, `copy`, `restore` and `volume-restore` share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef(String);

/// Why a [`SnapshotRef`] names no single run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotRefError {
    /// No run or snapshot matches.
    #[error("no snapshot or run with that id in the repository")]
    NotFound,
    /// A prefix matches this many runs.
    #[error("it matches {0} runs; give more of the id")]
    Ambiguous(usize),
}

impl SnapshotRef {
    /// The reference as typed; surrounding whitespace is dropped.
    pub fn new(text: &str) -> Self {
        Self(text.trim().to_string())
    }

    /// The reference text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The whole id, or a prefix of at least [`MIN_PREFIX`] hex digits.
    pub fn matches_id(&self, id: &SnapshotId) -> bool {
        let want = self.0.to_ascii_lowercase();
        let hex = id.to_hex();
        hex == want
            || (want.len() >= MIN_PREFIX
                && want.bytes().all(|b| b.is_ascii_hexdigit())
                && hex.starts_with(&want))
    }

    /// The run's id, or an id of one of its parts.
    pub fn matches_run(&self, run: &Run) -> bool {
        run.run_id.eq_ignore_ascii_case(&self.0)
            || run.parts.iter().any(|(id, _)| self.matches_id(id))
    }

    /// The one run of `runs` this names.
    pub fn find<'a>(&self, runs: &'a [Run]) -> Result<&'a Run, SnapshotRefError> {
        let mut hits = runs.iter().filter(|r| self.matches_run(r));
        match (hits.next(), hits.count()) {
            (Some(run), 0) => Ok(run),
            (None, _) => Err(SnapshotRefError::NotFound),
            (Some(_), more) => Err(SnapshotRefError::Ambiguous(more + 1)),
        }
    }
}

impl std::fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
