//! Coordination objects: the exclusive prune lock, writer markers and prune
//! marks. They are small plaintext JSON objects (times, run ids and object
//! names, nothing secret) and, unlike everything else, not named by their
//! content. The rules that make them safe are in `docs/format.md`
//! ("Pruning safety").

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::backend::Backend;
use super::{PackId, RepoError, Repository, index};

/// Writer markers: `locks/writer-<run id>-<random>`.
pub const WRITER_PREFIX: &str = "locks/writer-";
/// Prune locks: `locks/prune-<created>-<random>`.
pub const PRUNE_LOCK_PREFIX: &str = "locks/prune-";
/// Prune marks: `prune/marks/<time>-<random>`.
pub const MARKS_PREFIX: &str = "prune/marks/";

/// The longest a backup (one writer) may run without announcing again.
/// A writer marker older than this is stale: its writer is presumed dead.
pub const WRITER_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// A prune lock not refreshed for this long is stale and may be removed.
pub const LOCK_STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a running prune refreshes its lock.
pub const LOCK_REFRESH: Duration = Duration::from_secs(5 * 60);

const VERSION: u32 = 1;
const PARALLEL: usize = 8;

/// Age of `t` at `now`; zero for times in the future (clock skew).
pub fn age(now: jiff::Timestamp, t: jiff::Timestamp) -> Duration {
    let ms = now.as_millisecond().saturating_sub(t.as_millisecond());
    Duration::from_millis(ms.max(0) as u64)
}

fn random_hex() -> String {
    hex::encode(super::crypto::random::<8>())
}

/// A run id as a key segment: anything but `[A-Za-z0-9._-]` becomes `_`.
fn key_segment(s: &str) -> String {
    let seg: String = s
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if seg.is_empty() { "_".into() } else { seg }
}

fn time_segment(t: jiff::Timestamp) -> String {
    t.strftime("%Y%m%dT%H%M%SZ").to_string()
}

fn to_json<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("serialises"))
}

fn from_json<'a, T: Deserialize<'a>>(
    key: &str,
    bytes: &'a [u8],
    what: &str,
) -> Result<T, RepoError> {
    serde_json::from_slice(bytes).map_err(|e| RepoError::format(key, format!("not a {what}: {e}")))
}

/// Reads every object under `prefix` and parses it; `(key, result)`.
async fn read_all<T: for<'a> Deserialize<'a>>(
    backend: &Arc<dyn Backend>,
    prefix: &str,
    what: &'static str,
) -> Result<Vec<(String, Result<T, RepoError>)>, RepoError> {
    let objects = backend.list(prefix).await?;
    let results: Vec<_> = futures::stream::iter(objects)
        .map(|o| async move {
            match backend.get(&o.key).await {
                Ok(bytes) => {
                    let parsed = from_json::<T>(&o.key, &bytes, what);
                    Ok((o.key, parsed))
                }
                // Deleted between list and get (a prune cleaning up).
                Err(e) if e.is_not_found() => Ok((o.key, Err(e.into()))),
                Err(e) => Err(RepoError::from(e)),
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        let (key, parsed) = r?;
        if let Err(RepoError::Backend(e)) = &parsed
            && e.is_not_found()
        {
            continue;
        }
        out.push((key, parsed));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

// Writer markers.

/// Content of `locks/writer-…`: which run is writing, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterMarker {
    /// Format version of the marker.
    pub version: u32,
    /// The writing run.
    pub run_id: String,
    /// When the marker was written.
    pub time: jiff::Timestamp,
}

pub(crate) async fn put_writer_marker(
    repo: &Repository,
    run_id: &str,
) -> Result<String, RepoError> {
    let key = format!("{WRITER_PREFIX}{}-{}", key_segment(run_id), random_hex());
    let marker = WriterMarker {
        version: VERSION,
        run_id: run_id.to_string(),
        time: jiff::Timestamp::now(),
    };
    repo.backend().put(&key, to_json(&marker)).await?;
    tracing::debug!(%key, "announced writer");
    Ok(key)
}

/// Every writer marker, with the parse error of any that is damaged.
pub async fn list_writer_markers(
    repo: &Repository,
) -> Result<Vec<(String, Result<WriterMarker, RepoError>)>, RepoError> {
    read_all(repo.backend(), WRITER_PREFIX, "writer marker").await
}

// Prune marks.

/// Content of `prune/marks/…`: what phase 1 of a prune decided to delete,
/// and when. Phase 2 of a later prune deletes it once the mark is older
/// than the grace period and it is still safe (see `crate::prune`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Format version of the mark.
    pub version: u32,
    /// When the mark was written (just before the put).
    pub time: jiff::Timestamp,
    /// The prune run that wrote it.
    pub run_id: String,
    /// Indexed packs to delete: unused, or rewritten (repacked).
    pub packs: Vec<PackId>,
    /// Index objects (keys) that list marked packs; replaced by new ones.
    pub indexes: Vec<String>,
    /// Packs that no index object listed when the mark was written.
    #[serde(default)]
    pub orphans: Vec<PackId>,
}

impl Mark {
    /// Whether it marks nothing for deletion.
    pub fn is_empty(&self) -> bool {
        self.packs.is_empty() && self.indexes.is_empty() && self.orphans.is_empty()
    }
}

/// Every mark, oldest first. A mark that cannot be parsed is an error:
/// writers and prune must not guess what it protects.
pub async fn list_marks(repo: &Repository) -> Result<Vec<(String, Mark)>, RepoError> {
    let mut out = Vec::new();
    for (key, m) in read_all::<Mark>(repo.backend(), MARKS_PREFIX, "prune mark").await? {
        out.push((key, m?));
    }
    out.sort_by(|a, b| (a.1.time, &a.0).cmp(&(b.1.time, &b.0)));
    Ok(out)
}

/// Stores a mark; returns its key.
pub async fn put_mark(repo: &Repository, mark: &Mark) -> Result<String, RepoError> {
    let key = format!("{MARKS_PREFIX}{}-{}", time_segment(mark.time), random_hex());
    repo.backend().put(&key, to_json(mark)).await?;
    Ok(key)
}

/// Packs listed by any pending mark.
pub(crate) async fn marked_packs(repo: &Repository) -> Result<HashSet<PackId>, RepoError> {
    Ok(list_marks(repo)
        .await?
        .into_iter()
        .flat_map(|(_, m)| m.packs.into_iter().chain(m.orphans))
        .collect())
}

// The prune lock.

/// Content of `locks/prune-…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Format version of the lock object.
    pub version: u32,
    /// The prune run holding it.
    pub run_id: String,
    /// When the lock was taken; the oldest live lock wins.
    pub created: jiff::Timestamp,
    /// Rewritten every [`LOCK_REFRESH`] while the prune runs.
    pub refreshed: jiff::Timestamp,
}

/// Timing of the prune lock; tests shorten it.
#[derive(Debug, Clone, Copy)]
pub struct LockTiming {
    /// A lock not refreshed for longer than this is stale and removed.
    pub stale_after: Duration,
    /// How often the holder rewrites its lock object.
    pub refresh: Duration,
}

impl Default for LockTiming {
    fn default() -> Self {
        Self {
            stale_after: LOCK_STALE_AFTER,
            refresh: LOCK_REFRESH,
        }
    }
}

/// The exclusive prune lock. Acquisition: put our own lock object, list
/// all of them, remove stale ones (with a warning), and the oldest of the
/// rest (by creation time, then key) wins; a loser removes its own and
/// fails naming the holder. While held, a task refreshes the object, and
/// [`verify`](Self::verify) re-checks before each destructive step.
#[derive(Debug)]
pub struct PruneLock {
    backend: Arc<dyn Backend>,
    location: String,
    key: String,
    info: LockInfo,
    timing: LockTiming,
    /// Why the lock was lost, if a refresh failed.
    lost: Arc<Mutex<Option<String>>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Drop for PruneLock {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// A lock found in the listing.
struct Seen {
    key: String,
    info: Option<LockInfo>,
}

impl PruneLock {
    /// Takes the lock for run `run_id`, or fails with
    /// [`RepoError::Locked`] naming the holder.
    pub async fn acquire(
        repo: &Repository,
        run_id: &str,
        timing: LockTiming,
    ) -> Result<PruneLock, RepoError> {
        let backend = repo.backend().clone();
        let now = jiff::Timestamp::now();
        let key = format!("{PRUNE_LOCK_PREFIX}{}-{}", time_segment(now), random_hex());
        let info = LockInfo {
            version: VERSION,
            run_id: run_id.to_string(),
            created: now,
            refreshed: now,
        };
        backend.put(&key, to_json(&info)).await?;
        let lost = Arc::new(Mutex::new(None));
        let refresher = tokio::spawn(refresh_loop(
            backend.clone(),
            key.clone(),
            info.clone(),
            timing.refresh,
            lost.clone(),
        ));
        let lock = PruneLock {
            backend,
            location: repo.location().to_string(),
            key,
            info,
            timing,
            lost,
            refresher,
        };
        match lock.contenders(true).await {
            Ok(None) => {
                tracing::info!(key = %lock.key, "acquired the prune lock");
                Ok(lock)
            }
            Ok(Some(err)) | Err(err) => {
                lock.refresher.abort();
                let _ = lock.backend.delete(&lock.key).await;
                Err(err)
            }
        }
    }

    /// Key of our lock object.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `Some(error)` when another live lock precedes ours (or ours is
    /// gone). With `remove_stale`, stale locks are deleted on the way.
    async fn contenders(&self, remove_stale: bool) -> Result<Option<RepoError>, RepoError> {
        let now = jiff::Timestamp::now();
        let mut live = Vec::new();
        let mut own = false;
        for (key, parsed) in
            read_all::<LockInfo>(&self.backend, PRUNE_LOCK_PREFIX, "prune lock").await?
        {
            if key == self.key {
                own = true;
                continue;
            }
            match parsed {
                Ok(info) if age(now, info.refreshed) > self.timing.stale_after => {
                    if remove_stale {
                        tracing::warn!(
                            %key,
                            holder = %info.run_id,
                            refreshed = %info.refreshed,
                            "removing a stale prune lock (its prune is presumed dead)"
                        );
                        self.backend.delete(&key).await?;
                    }
                }
                Ok(info) => live.push(Seen {
                    key,
                    info: Some(info),
                }),
                // Unreadable: we cannot tell its age, so it counts as held.
                Err(e) => {
                    tracing::warn!(%key, error = %e, "unreadable prune lock counts as held; delete it if no prune runs");
                    live.push(Seen { key, info: None })
                }
            }
        }
        if !own {
            return Ok(Some(RepoError::LockLost {
                key: self.key.clone(),
                reason: "our lock object disappeared (removed as stale?)".into(),
            }));
        }
        let ours = (self.info.created, self.key.as_str());
        let winner = live
            .iter()
            .filter(|s| match &s.info {
                Some(i) => (i.created, s.key.as_str()) < ours,
                None => true,
            })
            .min_by(|a, b| {
                let ka = a.info.as_ref().map(|i| i.created);
                let kb = b.info.as_ref().map(|i| i.created);
                (ka, &a.key).cmp(&(kb, &b.key))
            });
        Ok(winner.map(|s| RepoError::Locked {
            location: self.location.clone(),
            key: s.key.clone(),
            holder: s
                .info
                .as_ref()
                .map_or_else(|| "<unreadable>".into(), |i| i.run_id.clone()),
            since: s
                .info
                .as_ref()
                .map_or_else(String::new, |i| i.created.to_string()),
        }))
    }

    /// Checks that we still hold the lock: our refreshes succeed, our
    /// object exists, and no older live lock appeared.
    pub async fn verify(&self) -> Result<(), RepoError> {
        if let Some(reason) = self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(RepoError::LockLost {
                key: self.key.clone(),
                reason,
            });
        }
        match self.contenders(false).await? {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Stops refreshing and deletes the lock object.
    pub async fn release(self) -> Result<(), RepoError> {
        self.refresher.abort();
        self.backend.delete(&self.key).await?;
        tracing::info!(key = %self.key, "released the prune lock");
        Ok(())
    }
}

async fn refresh_loop(
    backend: Arc<dyn Backend>,
    key: String,
    mut info: LockInfo,
    every: Duration,
    lost: Arc<Mutex<Option<String>>>,
) {
    loop {
        tokio::time::sleep(every).await;
        info.refreshed = jiff::Timestamp::now();
        if let Err(e) = backend.put(&key, to_json(&info)).await {
            tracing::warn!(%key, error = %e, "cannot refresh the prune lock");
            lost.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| format!("refresh failed: {e}"));
        }
    }
}

impl Repository {
    /// Announces a backup (or copy) that is about to write: puts a writer
    /// marker `locks/writer-<run id>-<random>` with the current time, then
    /// drops from this process's dedup index every pack that a pending
    /// prune mark lists (and reloads the index when a prune has deleted
    /// index objects since it was loaded). Call it after opening and before
    /// adding blobs. Together with the rules of `prune`, this guarantees
    /// that a concurrent prune never deletes data this writer references;
    /// see "Pruning safety" in `docs/format.md`. A writer that runs longer
    /// than [`WRITER_MAX_AGE`] must announce again.
    pub async fn announce_writer(&self, run_id: &str) -> Result<(), RepoError> {
        let key = put_writer_marker(self, run_id).await?;
        self.inner
            .markers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(key);
        // Marks first, then the index listing: a mark is deleted only after
        // the index objects it supersedes, so whatever we miss in one
        // listing shows in the other.
        let marked = marked_packs(self).await?;
        let now: BTreeSet<String> = self
            .inner
            .backend
            .list(index::PREFIX)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let vanished = self
            .inner
            .index_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|k| !now.contains(k));
        if vanished || !marked.is_empty() {
            tracing::info!(
                marked_packs = marked.len(),
                vanished_index_objects = vanished,
                "a prune is pending; reloading the index without the packs it marked"
            );
            self.reload_index_excluding(&marked).await?;
        }
        Ok(())
    }

    /// Deletes the writer markers this process put. Call it only after the
    /// last snapshot manifest was saved (prune also removes markers of
    /// complete runs and stale ones).
    pub async fn retire_writer(&self) -> Result<(), RepoError> {
        let keys =
            std::mem::take(&mut *self.inner.markers.lock().unwrap_or_else(|e| e.into_inner()));
        for key in keys {
            self.inner.backend.delete(&key).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_segments_are_safe() {
        assert_eq!(key_segment("backup-2026/x y"), "backup-2026_x_y");
        assert_eq!(key_segment(""), "_");
        let t: jiff::Timestamp = "2026-01-02T03:04:05.678Z".parse().unwrap();
        assert_eq!(time_segment(t), "20260102T030405Z");
        assert_eq!(age(t, t), Duration::ZERO);
        let later: jiff::Timestamp = "2026-01-02T03:05:05.678Z".parse().unwrap();
        assert_eq!(age(later, t), Duration::from_secs(60));
        assert_eq!(age(t, later), Duration::ZERO);
    }
}
