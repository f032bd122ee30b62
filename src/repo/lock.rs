//! Coordination objects: the exclusive prune lock, writer markers and prune
//! marks. Unlike everything else they are not named by their content, and
//! they decide what prune may delete, so they are sealed with the
//! repository key like every other object (kinds `WRITER_MARKER`,
//! `PRUNE_LOCK`, `PRUNE_MARK`): whoever can write to the storage but has no
//! key cannot forge one. An object that does not open is ignored and
//! reported, never trusted; the plaintext form older versions wrote is
//! honoured only where that can hold prune back, never where it could make
//! it delete. The rules that make them safe are in `docs/format.md`
//! ("Coordination objects", "Pruning safety").

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::crypto::{MAX_META_LEN, OVERHEAD, kind};
use super::{PackId, RepoError, Repository, index, open_error};

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
/// Plaintext limit of a writer marker or lock: a run id and two times.
const MAX_SMALL_LEN: usize = 64 << 10;

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

/// The sealed form of a coordination object.
fn seal_json<T: Serialize>(repo: &Repository, kind: u8, v: &T) -> Bytes {
    let json = serde_json::to_vec(v).expect("serialises");
    Bytes::from(repo.seal(kind, &json))
}

/// A coordination object as read.
#[derive(Debug, Clone)]
pub enum Found<T> {
    /// Sealed with the repository key: written by a key holder.
    Sealed(T),
    /// The plaintext JSON that kubestow wrote before these objects were
    /// sealed. Anyone who can write to the storage can forge it, so it only
    /// ever holds prune back (a writer marker, a lock), never lets it delete.
    Plaintext(T),
    /// Neither: ignored, and reported with a warning naming the key.
    Unreadable(RepoError),
}

impl<T> Found<T> {
    /// The content, sealed or plaintext.
    pub fn content(&self) -> Option<&T> {
        match self {
            Found::Sealed(t) | Found::Plaintext(t) => Some(t),
            Found::Unreadable(_) => None,
        }
    }
}

/// A coordination object that was ignored because it does not open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ignored {
    /// Its key.
    pub key: String,
    /// Why it does not open.
    pub reason: String,
}

impl Ignored {
    fn new(key: &str, e: &RepoError) -> Ignored {
        Ignored {
            key: key.to_string(),
            reason: e.to_string(),
        }
    }

    /// Logs the warning that names the object; `what` says what it posed
    /// as, e.g. `a prune mark`.
    pub(crate) fn warn(&self, what: &str) {
        tracing::warn!(key = %self.key, error = %self.reason, "ignoring {what} that is not sealed with this repository's key or does not parse; nothing trusts it, delete it when convenient");
    }

    /// Records it and logs the warning.
    pub(crate) fn logged(key: &str, e: &RepoError, what: &str) -> Ignored {
        let i = Ignored::new(key, e);
        i.warn(what);
        i
    }
}

/// Something serialised with a `version` field.
trait Versioned {
    fn version(&self) -> u32;
}

/// Opens one coordination object: sealed with `kind`, else (if
/// `plaintext`) the old plaintext form, else unreadable.
fn decode<T: for<'a> Deserialize<'a> + Versioned>(
    repo: &Repository,
    key: &str,
    bytes: Bytes,
    kind: u8,
    max_len: usize,
    plaintext: bool,
    what: &str,
) -> Found<T> {
    let parse = |plain: &[u8]| -> Result<T, RepoError> {
        let v: T = serde_json::from_slice(plain)
            .map_err(|e| RepoError::format(key, format!("not a {what}: {e}")))?;
        if v.version() != VERSION {
            return Err(RepoError::format(
                key,
                format!("{what} version {}", v.version()),
            ));
        }
        Ok(v)
    };
    match repo.inner.master.open(kind, bytes.clone(), max_len) {
        Ok(plain) => match parse(&plain) {
            Ok(v) => Found::Sealed(v),
            Err(e) => Found::Unreadable(e),
        },
        Err(sealed_error) => match parse(&bytes) {
            Ok(v) if plaintext => Found::Plaintext(v),
            Ok(_) => Found::Unreadable(RepoError::corrupt(
                key,
                None,
                format!(
                    "a plaintext {what} (written by an older kubestow, or forged): not trusted"
                ),
            )),
            Err(_) => Found::Unreadable(open_error(key, None, sealed_error)),
        },
    }
}

/// Reads every object under `prefix`; `(key, what it is)`, sorted by key.
async fn read_all<T: for<'a> Deserialize<'a> + Versioned + Send>(
    repo: &Repository,
    prefix: &str,
    kind: u8,
    max_len: usize,
    plaintext: bool,
    what: &'static str,
) -> Result<Vec<(String, Found<T>)>, RepoError> {
    let objects = repo.backend().list(prefix).await?;
    let results: Vec<_> = futures::stream::iter(objects)
        .map(|o| async move {
            // Sized from the listing: a huge object is not even fetched.
            if o.size > (max_len + OVERHEAD) as u64 {
                let e = RepoError::corrupt(
                    &o.key,
                    None,
                    format!("{} bytes is too large for a {what}", o.size),
                );
                return Ok(Some((o.key, Found::Unreadable(e))));
            }
            match repo.backend().get(&o.key).await {
                Ok(bytes) => {
                    let found = decode(repo, &o.key, bytes, kind, max_len, plaintext, what);
                    Ok(Some((o.key, found)))
                }
                // Deleted between list and get (a prune cleaning up).
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(RepoError::from(e)),
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        out.extend(r?);
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

impl Versioned for WriterMarker {
    fn version(&self) -> u32 {
        self.version
    }
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
    repo.backend()
        .put(&key, seal_json(repo, kind::WRITER_MARKER, &marker))
        .await?;
    tracing::debug!(%key, "announced writer");
    Ok(key)
}

/// Every writer marker: sealed, plaintext (older versions) or unreadable.
pub async fn list_writer_markers(
    repo: &Repository,
) -> Result<Vec<(String, Found<WriterMarker>)>, RepoError> {
    read_all(
        repo,
        WRITER_PREFIX,
        kind::WRITER_MARKER,
        MAX_SMALL_LEN,
        true,
        "writer marker",
    )
    .await
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

impl Versioned for Mark {
    fn version(&self) -> u32 {
        self.version
    }
}

/// The pending marks, and the objects under `prune/marks/` that are none.
#[derive(Debug, Default)]
pub struct Marks {
    /// Sealed marks, oldest first.
    pub marks: Vec<(String, Mark)>,
    /// Objects that do not open as a mark (junk, forged, plaintext marks of
    /// older versions): neither writers nor prune act on them.
    pub ignored: Vec<Ignored>,
}

/// Every mark, oldest first. An object that is not a sealed mark is
/// ignored (the caller reports it): it must neither stop backups nor let
/// prune delete anything.
pub async fn list_marks(repo: &Repository) -> Result<Marks, RepoError> {
    let mut out = Marks::default();
    for (key, found) in read_all::<Mark>(
        repo,
        MARKS_PREFIX,
        kind::PRUNE_MARK,
        MAX_META_LEN,
        false,
        "prune mark",
    )
    .await?
    {
        match found {
            Found::Sealed(m) => out.marks.push((key, m)),
            // `decode` gives none (plaintext is not asked for); never trusted.
            Found::Plaintext(_) => {
                let e = RepoError::corrupt(&key, None, "a plaintext prune mark: not trusted");
                out.ignored.push(Ignored::new(&key, &e));
            }
            Found::Unreadable(e) => out.ignored.push(Ignored::new(&key, &e)),
        }
    }
    out.marks
        .sort_by(|a, b| (a.1.time, &a.0).cmp(&(b.1.time, &b.0)));
    Ok(out)
}

/// Stores a mark; returns its key.
pub async fn put_mark(repo: &Repository, mark: &Mark) -> Result<String, RepoError> {
    let key = format!("{MARKS_PREFIX}{}-{}", time_segment(mark.time), random_hex());
    repo.backend()
        .put(&key, seal_json(repo, kind::PRUNE_MARK, mark))
        .await?;
    Ok(key)
}

/// Packs listed by any pending mark, and what was ignored on the way.
pub(crate) async fn marked_packs(
    repo: &Repository,
) -> Result<(HashSet<PackId>, Vec<Ignored>), RepoError> {
    let Marks { marks, ignored } = list_marks(repo).await?;
    for i in &ignored {
        i.warn("a prune mark");
    }
    let packs = marks
        .into_iter()
        .flat_map(|(_, m)| m.packs.into_iter().chain(m.orphans))
        .collect();
    Ok((packs, ignored))
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

impl Versioned for LockInfo {
    fn version(&self) -> u32 {
        self.version
    }
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

impl LockTiming {
    /// The holder stops once its last successful refresh is this old: half
    /// the stale limit. The other half covers clock skew between machines
    /// and a step already under way, so the holder has stopped before any
    /// other prune may call its lock stale.
    pub fn holder_limit(&self) -> Duration {
        self.stale_after / 2
    }

    /// Refuses a refresh interval that leaves no room for one late or
    /// failed refresh before [`holder_limit`](Self::holder_limit).
    pub fn validate(&self) -> Result<(), RepoError> {
        if self.refresh.is_zero() || self.refresh > self.stale_after / 4 {
            return Err(RepoError::refused(
                "prune",
                format!(
                    "the lock refresh interval ({:?}) must be above zero and at most a quarter of the stale limit ({:?})",
                    self.refresh, self.stale_after
                ),
            ));
        }
        Ok(())
    }
}

/// Whether the holder may still count on its lock.
#[derive(Debug)]
struct Held {
    /// Why the lock was lost, if a refresh failed.
    lost: Option<String>,
    /// When the last refresh that succeeded started: the stored `refreshed`
    /// is no older than this.
    confirmed: Instant,
}

/// The exclusive prune lock. Acquisition: put our own lock object, list
/// all of them, remove stale ones (with a warning), and the oldest of the
/// rest (by creation time, then key) wins; a loser removes its own and
/// fails naming the holder. While held, a task refreshes the object;
/// [`check`](Self::check) fails once a refresh failed or none succeeded
/// within [`LockTiming::holder_limit`], and [`verify`](Self::verify) also
/// re-lists the locks before each destructive step.
#[derive(Debug)]
pub struct PruneLock {
    repo: Repository,
    key: String,
    info: LockInfo,
    timing: LockTiming,
    held: Arc<Mutex<Held>>,
    /// Objects under `locks/prune-` ignored when the lock was taken.
    ignored: Vec<Ignored>,
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
    info: LockInfo,
}

/// What the listing of `locks/prune-` shows besides our own lock.
struct Contenders {
    /// Why we do not (or no longer) hold the lock.
    blocked: Option<RepoError>,
    ignored: Vec<Ignored>,
}

impl PruneLock {
    /// Takes the lock for run `run_id`, or fails with
    /// [`RepoError::Locked`] naming the holder.
    pub async fn acquire(
        repo: &Repository,
        run_id: &str,
        timing: LockTiming,
    ) -> Result<PruneLock, RepoError> {
        timing.validate()?;
        let now = jiff::Timestamp::now();
        let key = format!("{PRUNE_LOCK_PREFIX}{}-{}", time_segment(now), random_hex());
        let info = LockInfo {
            version: VERSION,
            run_id: run_id.to_string(),
            created: now,
            refreshed: now,
        };
        let started = Instant::now();
        repo.backend()
            .put(&key, seal_json(repo, kind::PRUNE_LOCK, &info))
            .await?;
        let held = Arc::new(Mutex::new(Held {
            lost: None,
            confirmed: started,
        }));
        let refresher = tokio::spawn(refresh_loop(
            repo.clone(),
            key.clone(),
            info.clone(),
            timing.refresh,
            held.clone(),
        ));
        let mut lock = PruneLock {
            repo: repo.clone(),
            key,
            info,
            timing,
            held,
            ignored: Vec::new(),
            refresher,
        };
        match lock.contenders(true).await {
            Ok(Contenders {
                blocked: None,
                ignored,
            }) => {
                // Logged once here, not at every verification.
                for i in &ignored {
                    i.warn("a prune lock");
                }
                lock.ignored = ignored;
                tracing::info!(key = %lock.key, "acquired the prune lock");
                Ok(lock)
            }
            Ok(Contenders {
                blocked: Some(err), ..
            })
            | Err(err) => {
                lock.refresher.abort();
                let _ = lock.repo.backend().delete(&lock.key).await;
                Err(err)
            }
        }
    }

    /// Key of our lock object.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Objects under `locks/prune-` that were ignored when the lock was
    /// taken: they do not open, so they hold nobody's lock.
    pub fn ignored(&self) -> &[Ignored] {
        &self.ignored
    }

    /// Whether another live lock precedes ours (or ours is gone). With
    /// `remove_stale`, stale locks are deleted on the way.
    async fn contenders(&self, remove_stale: bool) -> Result<Contenders, RepoError> {
        let now = jiff::Timestamp::now();
        let mut live = Vec::new();
        let mut ignored = Vec::new();
        let mut own = false;
        for (key, found) in read_all::<LockInfo>(
            &self.repo,
            PRUNE_LOCK_PREFIX,
            kind::PRUNE_LOCK,
            MAX_SMALL_LEN,
            true,
            "prune lock",
        )
        .await?
        {
            if key == self.key {
                own = true;
                continue;
            }
            let (info, sealed) = match found {
                Found::Sealed(info) => (info, true),
                // A prune of an older version: it counts while fresh.
                Found::Plaintext(info) => (info, false),
                // Nobody's lock: it cannot hold ours back.
                Found::Unreadable(e) => {
                    ignored.push(Ignored::new(&key, &e));
                    continue;
                }
            };
            // An unauthenticated lock dated in the future would never go
            // stale; it is treated as stale instead.
            let bogus = !sealed && age(info.refreshed, now) > self.timing.stale_after;
            if bogus || age(now, info.refreshed) > self.timing.stale_after {
                if remove_stale {
                    tracing::warn!(
                        %key,
                        holder = %info.run_id,
                        refreshed = %info.refreshed,
                        "removing a stale prune lock (its prune is presumed dead)"
                    );
                    self.repo.backend().delete(&key).await?;
                }
                continue;
            }
            live.push(Seen { key, info });
        }
        if !own {
            return Ok(Contenders {
                blocked: Some(RepoError::LockLost {
                    key: self.key.clone(),
                    reason: "our lock object disappeared (removed as stale?)".into(),
                }),
                ignored,
            });
        }
        let ours = (self.info.created, self.key.as_str());
        let winner = live
            .iter()
            .filter(|s| (s.info.created, s.key.as_str()) < ours)
            .min_by(|a, b| (a.info.created, &a.key).cmp(&(b.info.created, &b.key)));
        Ok(Contenders {
            blocked: winner.map(|s| RepoError::Locked {
                location: self.repo.location().to_string(),
                key: s.key.clone(),
                holder: s.info.run_id.clone(),
                since: s.info.created.to_string(),
            }),
            ignored,
        })
    }

    /// Fails once the lock cannot be counted on: a refresh failed, or none
    /// succeeded within [`LockTiming::holder_limit`] (another prune may
    /// soon call it stale). Cheap: call it before every deletion.
    pub fn check(&self) -> Result<(), RepoError> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = &held.lost {
            return Err(RepoError::LockLost {
                key: self.key.clone(),
                reason: reason.clone(),
            });
        }
        let since = held.confirmed.elapsed();
        let limit = self.timing.holder_limit();
        if since > limit {
            return Err(RepoError::LockLost {
                key: self.key.clone(),
                reason: format!(
                    "not refreshed for {since:?}, beyond the holder's limit of {limit:?} (others call it stale after {:?})",
                    self.timing.stale_after
                ),
            });
        }
        Ok(())
    }

    /// Checks that we still hold the lock: [`check`](Self::check), our
    /// object exists, and no older live lock appeared.
    pub async fn verify(&self) -> Result<(), RepoError> {
        self.check()?;
        if let Some(e) = self.contenders(false).await?.blocked {
            return Err(e);
        }
        // The listing itself may have been slow.
        self.check()
    }

    /// Stops refreshing and deletes the lock object.
    pub async fn release(self) -> Result<(), RepoError> {
        self.refresher.abort();
        self.repo.backend().delete(&self.key).await?;
        tracing::info!(key = %self.key, "released the prune lock");
        Ok(())
    }
}

async fn refresh_loop(
    repo: Repository,
    key: String,
    mut info: LockInfo,
    every: Duration,
    held: Arc<Mutex<Held>>,
) {
    loop {
        tokio::time::sleep(every).await;
        let started = Instant::now();
        info.refreshed = jiff::Timestamp::now();
        let put = repo
            .backend()
            .put(&key, seal_json(&repo, kind::PRUNE_LOCK, &info))
            .await;
        let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
        match put {
            Ok(()) => held.confirmed = held.confirmed.max(started),
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot refresh the prune lock; prune stops");
                held.lost
                    .get_or_insert_with(|| format!("refresh failed: {e}"));
                // Lost for good: the holder stops at its next check.
                return;
            }
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
    ///
    /// Returns the objects under `prune/marks/` it ignored (each also
    /// logged as a warning): they do not open as marks, so they neither
    /// stop the backup nor protect or doom anything.
    pub async fn announce_writer(&self, run_id: &str) -> Result<Vec<Ignored>, RepoError> {
        let key = put_writer_marker(self, run_id).await?;
        self.inner
            .markers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(key);
        // Marks first, then the index listing: a mark is deleted only after
        // the index objects it supersedes, so whatever we miss in one
        // listing shows in the other.
        let (marked, ignored) = marked_packs(self).await?;
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
        Ok(ignored)
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
