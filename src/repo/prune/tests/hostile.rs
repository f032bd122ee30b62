//! Coordination objects nobody with the key wrote: forged marks, junk,
//! plaintext objects of older versions; and a lock whose refresh stalls.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::repo::backend::{self, ObjectInfo};
use crate::repo::crypto::kind;
use crate::repo::lock::{LockTiming, Mark, PruneLock, WriterMarker};

fn plaintext<T: serde::Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap())
}

fn pack_ids(keys: &[String]) -> Vec<PackId> {
    keys.iter()
        .filter_map(|k| crate::repo::pack_id_from_key(k))
        .collect()
}

async fn keys(mem: &MemBackend, prefix: &str) -> Vec<String> {
    let mut k: Vec<String> = mem
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    k.sort();
    k
}

/// A backup in flight: announced, its data stored and indexed, no manifest
/// yet. Returns its repository, writer, root tree and files.
async fn live_backup(mem: &Arc<MemBackend>) -> (Repository, crate::repo::Writer, BlobId, Files) {
    let wrepo = testutil::open(mem.clone()).await;
    wrepo.announce_writer("backup-live").await.unwrap();
    let w = writer(&wrepo);
    let f = files(7, 4, 40 << 10);
    let root = fixture::store_files(&w, &f, 16 << 10).await.unwrap();
    w.flush().await.unwrap();
    (wrepo, w, root, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_past_dated_mark_does_not_delete_a_live_writers_packs() {
    let (mem, repo) = testutil::mem().await;
    let (wrepo, w, root, f) = live_backup(&mem).await;
    let packs = keys(&mem, "data/").await;
    let indexes = keys(&mem, "index/").await;
    assert!(!packs.is_empty() && !indexes.is_empty());

    // Dated two days back, so no writer marker is younger than it plus the
    // clock margin: under the old rules it was due at once, and nothing
    // held it back.
    let forged = Mark {
        version: 1,
        time: jiff::Timestamp::now() - jiff::SignedDuration::from_hours(48),
        run_id: "prune-forged".into(),
        packs: pack_ids(&packs),
        indexes: indexes.clone(),
        orphans: Vec::new(),
    };
    let other = testutil::mem().await.1;
    let copied_index = mem.get(&indexes[0]).await.unwrap();
    let forms = [
        // As older versions wrote them, and as anyone who can write to the
        // bucket can.
        ("plaintext", plaintext(&forged)),
        // Sealed, but with another repository's key.
        (
            "other key",
            Bytes::from(other.seal(kind::PRUNE_MARK, &serde_json::to_vec(&forged).unwrap())),
        ),
        // A genuine object of another kind, put where marks go.
        ("other kind", copied_index),
    ];
    let key = "prune/marks/20000101T000000Z-forged";
    for (form, bytes) in forms {
        mem.put(key, bytes).await.unwrap();
        let r = prune(&repo, &opts("prune-x", |r| r.last = Some(5)), &never())
            .await
            .unwrap_or_else(|e| panic!("{form}: {e}"));
        assert_eq!(
            r.counts.get("packs_deleted"),
            None,
            "{form}: {:?}",
            r.counts
        );
        assert_eq!(r.counts["marks_ignored"], 1, "{form}: {:?}", r.counts);
        assert_eq!(r.details["ignored"][0]["key"], key, "{form}");
        assert_eq!(keys(&mem, "data/").await, packs, "{form}");
        assert_eq!(keys(&mem, "index/").await, indexes, "{form}");
        // Left for a person to look at.
        assert!(mem.exists(key).await.unwrap(), "{form}");
    }

    // The backup finishes; everything it references is there.
    let mut m = SnapshotManifest::new("backup-live", 0, 1, "daily");
    m.volumes.insert(
        "data".into(),
        crate::repo::VolumeEntry {
            root,
            stats: serde_json::Value::Null,
        },
    );
    wrepo.save_snapshot(&m).await.unwrap();
    w.finish().await.unwrap();
    let fresh = testutil::open(mem.clone()).await;
    check_all(&fresh).await;
    assert_eq!(
        sorted(&fixture::read_files(&fresh, root).await.unwrap()),
        sorted(&f)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_under_prune_marks_is_ignored_and_reported_and_backups_succeed() {
    let (mem, repo) = testutil::mem().await;
    let runs = four_runs(&repo).await;
    let junk = [
        ("prune/marks/junk", Bytes::from_static(b"\x00\x01 not a mark")),
        ("prune/marks/empty", Bytes::new()),
        (
            "prune/marks/plaintext-v1",
            Bytes::from_static(br#"{"version":1,"time":"2026-01-01T00:00:00Z","run_id":"p","packs":[],"indexes":[]}"#),
        ),
    ];
    for (k, b) in &junk {
        mem.put(k, b.clone()).await.unwrap();
    }
    let mut junk_keys: Vec<&str> = junk.iter().map(|j| j.0).collect();
    junk_keys.sort();

    // A backup announces (reporting what it ignored), deduplicates against
    // the repository as usual, and saves its snapshot.
    let wrepo = testutil::open(mem.clone()).await;
    let ignored = wrepo.announce_writer("backup-after-junk").await.unwrap();
    let mut got: Vec<&str> = ignored.iter().map(|i| i.key.as_str()).collect();
    got.sort();
    assert_eq!(got, junk_keys);
    assert!(ignored.iter().all(|i| !i.reason.is_empty()));
    let w = writer(&wrepo);
    let id = fixture::save_part(
        &wrepo,
        &w,
        "backup-after-junk",
        0,
        1,
        "daily",
        t("2026-01-09T00:00:00Z"),
        &runs[3].1,
    )
    .await
    .unwrap();
    let stats = w.finish().await.unwrap();
    // Same files as run-3: no file data is stored anew (no pack was
    // excluded), only a few bytes of trees.
    assert!(stats.blobs_reused > 0, "{stats:?}");
    assert!(stats.bytes_raw_new < 4096, "{stats:?}");

    // Prune runs too, reports the junk, and leaves it alone.
    let r = prune(&repo, &opts("prune-j", |r| r.last = Some(5)), &never())
        .await
        .unwrap();
    assert_eq!(r.counts["marks_ignored"], 3, "{:?}", r.counts);
    assert_eq!(objects(&mem, "prune/marks/").await, 3);
    let fresh = testutil::open(mem.clone()).await;
    check_all(&fresh).await;
    assert_eq!(
        sorted(&fixture::read_part(&fresh, &id).await.unwrap()),
        sorted(&runs[3].1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_markers_junk_is_ignored_and_plaintext_ones_still_hold_prune_back() {
    let (mem, repo) = testutil::mem().await;
    four_runs(&repo).await;
    let o = opts("prune-1", |r| r.last = Some(2));
    prune(&repo, &o, &never()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    // A plaintext marker, as a backup of an older version writes it, of a
    // run that started before the mark: it still defers the deletion.
    let old = WriterMarker {
        version: 1,
        run_id: "backup-old-version".into(),
        time: jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1),
    };
    mem.put("locks/writer-backup-old-version-1", plaintext(&old))
        .await
        .unwrap();
    mem.put("locks/writer-junk-2", Bytes::from_static(b"junk"))
        .await
        .unwrap();
    let r = prune(&repo, &o, &never()).await.unwrap();
    assert_eq!(r.counts["marks_deferred"], 1, "{:?}", r.counts);
    assert_eq!(r.counts["writer_markers_ignored"], 1, "{:?}", r.counts);
    let deferred = &r.details["deferred"];
    assert_eq!(
        deferred.as_object().unwrap().values().next().unwrap(),
        &serde_json::json!(["backup-old-version"]),
        "only the plaintext marker defers: {deferred}"
    );

    // Without it, junk alone holds nothing back (it used to count as a
    // backup in flight, forever).
    mem.delete("locks/writer-backup-old-version-1")
        .await
        .unwrap();
    let r = prune(&repo, &o, &never()).await.unwrap();
    assert_eq!(r.counts.get("marks_deferred"), None, "{:?}", r.counts);
    assert!(r.counts["packs_deleted"] > 0, "{:?}", r.counts);
    assert!(mem.exists("locks/writer-junk-2").await.unwrap());

    // A plaintext marker dated far in the future would never go stale: it
    // is removed as stale instead.
    let future = WriterMarker {
        time: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365),
        ..old
    };
    mem.put("locks/writer-future-3", plaintext(&future))
        .await
        .unwrap();
    let r = prune(&repo, &o, &never()).await.unwrap();
    assert_eq!(r.counts["writer_markers_removed"], 1, "{:?}", r.counts);
    assert!(!mem.exists("locks/writer-future-3").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_prune_lock_is_ignored_and_a_plaintext_one_still_counts() {
    let (mem, repo) = testutil::mem().await;
    four_runs(&repo).await;
    mem.put(
        "locks/prune-20000101T000000Z-junk",
        Bytes::from_static(b"junk"),
    )
    .await
    .unwrap();
    let lock = PruneLock::acquire(&repo, "prune-a", LockTiming::default())
        .await
        .unwrap();
    assert_eq!(lock.ignored().len(), 1);
    assert_eq!(lock.ignored()[0].key, "locks/prune-20000101T000000Z-junk");
    lock.release().await.unwrap();
    let r = prune(&repo, &opts("prune-b", |r| r.last = Some(4)), &never())
        .await
        .unwrap();
    assert_eq!(r.counts["prune_locks_ignored"], 1, "{:?}", r.counts);

    // An older version's prune holding the lock, in plaintext: we wait.
    let now = jiff::Timestamp::now();
    let info = LockInfo {
        version: 1,
        run_id: "prune-old-version".into(),
        created: now - jiff::SignedDuration::from_mins(1),
        refreshed: now,
    };
    mem.put("locks/prune-20260101T000000Z-old", plaintext(&info))
        .await
        .unwrap();
    let err = PruneLock::acquire(&repo, "prune-c", LockTiming::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RepoError::Locked { ref holder, .. } if holder == "prune-old-version"),
        "{err}"
    );
    // Dated far in the future, it would never go stale: removed as stale.
    let future = LockInfo {
        refreshed: now + jiff::SignedDuration::from_hours(24),
        ..info
    };
    mem.put("locks/prune-20260101T000000Z-old", plaintext(&future))
        .await
        .unwrap();
    let lock = PruneLock::acquire(&repo, "prune-d", LockTiming::default())
        .await
        .unwrap();
    assert!(
        !mem.exists("locks/prune-20260101T000000Z-old")
            .await
            .unwrap()
    );
    lock.release().await.unwrap();
}

#[tokio::test]
async fn lock_refresh_must_leave_room_before_the_stale_limit() {
    let (mem, repo) = testutil::mem().await;
    for refresh in [
        Duration::ZERO,
        Duration::from_millis(251),
        Duration::from_secs(2),
    ] {
        let timing = LockTiming {
            stale_after: Duration::from_secs(1),
            refresh,
        };
        let err = PruneLock::acquire(&repo, "prune-t", timing)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RepoError::Refused { .. }),
            "{refresh:?}: {err}"
        );
        assert_eq!(objects(&mem, "locks/").await, 0, "nothing written");
    }
    let timing = LockTiming {
        stale_after: Duration::from_secs(1),
        refresh: Duration::from_millis(250),
    };
    PruneLock::acquire(&repo, "prune-t", timing)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// A memory backend whose puts to prune locks hang (or fail) once armed,
/// and whose deletes of packs can be slowed down.
#[derive(Debug, Default)]
struct Stalling {
    mem: MemBackend,
    hang_lock_puts: AtomicBool,
    fail_lock_puts: AtomicBool,
    slow_deletes: AtomicBool,
    /// Packs deleted.
    deletes: AtomicUsize,
}

#[async_trait]
impl Backend for Stalling {
    fn location(&self) -> String {
        self.mem.location()
    }
    async fn list(&self, prefix: &str) -> backend::Result<Vec<ObjectInfo>> {
        self.mem.list(prefix).await
    }
    async fn get(&self, key: &str) -> backend::Result<Bytes> {
        self.mem.get(key).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> backend::Result<Bytes> {
        self.mem.get_range(key, offset, len).await
    }
    async fn put(&self, key: &str, data: Bytes) -> backend::Result<()> {
        if key.starts_with(PRUNE_LOCK_PREFIX) {
            if self.fail_lock_puts.load(Ordering::SeqCst) {
                return Err(backend::BackendError::Permanent {
                    location: self.location(),
                    op: "put",
                    key: key.into(),
                    message: "denied".into(),
                });
            }
            // Refreshes only (the object exists): a new lock is still taken.
            if self.hang_lock_puts.load(Ordering::SeqCst) && self.mem.exists(key).await? {
                futures::future::pending::<()>().await;
            }
        }
        self.mem.put(key, data).await
    }
    async fn delete(&self, key: &str) -> backend::Result<()> {
        if key.starts_with("data/") {
            if self.slow_deletes.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1200)).await;
            }
            self.deletes.fetch_add(1, Ordering::SeqCst);
        }
        self.mem.delete(key).await
    }
    async fn head(&self, key: &str) -> backend::Result<Option<u64>> {
        self.mem.head(key).await
    }
}

/// Stale after 2 s, so the holder gives up 1 s after its last refresh.
const FAST_LOCK: LockTiming = LockTiming {
    stale_after: Duration::from_secs(2),
    refresh: Duration::from_millis(100),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_refresh_stalls_or_fails_is_given_up() {
    let b = Arc::new(Stalling::default());
    let repo = testutil::init(b.clone()).await;

    let lock = PruneLock::acquire(&repo, "prune-h", FAST_LOCK)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.verify().await.unwrap();
    // Refreshes now hang: the object still exists and no one else holds a
    // lock, but past the holder's limit (half the stale limit) it must
    // stop, before another prune may call the lock stale.
    b.hang_lock_puts.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let err = lock.verify().await.unwrap_err();
    assert!(matches!(err, RepoError::LockLost { .. }), "{err}");
    assert!(err.to_string().contains("not refreshed"), "{err}");
    assert!(lock.check().is_err());
    lock.release().await.unwrap();

    // A refresh that fails loses the lock at once.
    b.hang_lock_puts.store(false, Ordering::SeqCst);
    let lock = PruneLock::acquire(&repo, "prune-f", FAST_LOCK)
        .await
        .unwrap();
    b.fail_lock_puts.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = lock.check().unwrap_err();
    assert!(err.to_string().contains("refresh failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_stops_deleting_once_its_lock_refresh_stalls() {
    let b = Arc::new(Stalling::default());
    let repo = testutil::init(b.clone()).await;
    four_runs(&repo).await;
    let mut o = opts("prune-1", |r| r.last = Some(1));
    o.lock = FAST_LOCK;
    let r = prune(&repo, &o, &never()).await.unwrap();
    let marked = r.counts["packs_marked"];
    assert!(marked >= 2, "{:?}", r.counts);
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Phase 2 with refreshes that hang and slow deletes: it must stop once
    // the lock is past the holder's limit, not delete on regardless.
    b.hang_lock_puts.store(true, Ordering::SeqCst);
    b.slow_deletes.store(true, Ordering::SeqCst);
    let mut o = o;
    o.channels = 1;
    let before = b.deletes.load(Ordering::SeqCst);
    let err = prune(&repo, &o, &never()).await.unwrap_err();
    assert!(matches!(err, RepoError::LockLost { .. }), "{err}");
    let packs_deleted = b.deletes.load(Ordering::SeqCst) - before;
    assert!(
        (packs_deleted as u64) < marked,
        "{packs_deleted} of {marked} marked packs deleted"
    );
}
