//! Prune beside writers and other prunes: markers, marks and the lock.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writer_loses_nothing() {
    let (mem, repo) = testutil::mem().await;
    let runs = four_runs(&repo).await;

    // A backup starts: announces, writes and flushes its data, but has not
    // saved its manifest yet. Some of it deduplicates against old runs that
    // prune is about to forget.
    let wrepo = testutil::open(mem.clone()).await;
    wrepo.announce_writer("backup-late").await.unwrap();
    let w = writer(&wrepo);
    let mut late = files(50, 3, 40 << 10);
    late.extend(runs[0].1.clone()); // data only the forgotten run-0 has
    let root = fixture::store_files(&w, &late, 16 << 10).await.unwrap();
    w.flush().await.unwrap();

    // Prune forgets run-0 and run-1 and marks their packs, and the late
    // backup's packs too (nothing references them yet).
    let o = opts("prune-1", |r| r.last = Some(2));
    let r = prune(&repo, &o, &never()).await.unwrap();
    assert_eq!(r.counts["runs_removed"], 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Phase 2 waits for the writer that started before the mark.
    let r = prune(&repo, &o, &never()).await.unwrap();
    assert_eq!(r.counts["marks_deferred"], 1, "{:?}", r.counts);
    assert_eq!(r.counts.get("packs_deleted"), None);
    assert!(objects(&mem, "data/").await > 0);

    // The backup finishes.
    let mut m = SnapshotManifest::new("backup-late", 0, 1, "daily");
    m.time = t("2026-01-09T00:00:00Z");
    m.volumes.insert(
        "data".into(),
        crate::repo::VolumeEntry {
            root,
            stats: serde_json::Value::Null,
        },
    );
    let late_id = wrepo.save_snapshot(&m).await.unwrap();
    w.finish().await.unwrap();

    // Now phase 2 runs; it rescues what the late backup uses.
    let r = prune(&repo, &o, &never()).await.unwrap();
    assert_eq!(r.counts["marks_done"], 1, "{:?}", r.counts);
    assert!(r.counts["packs_rescued"] > 0, "{:?}", r.counts);
    assert!(r.counts["packs_deleted"] > 0, "{:?}", r.counts);
    assert_eq!(r.counts["writer_markers_removed"], 1);
    assert_eq!(objects(&mem, WRITER_PREFIX).await, 0);

    let fresh = testutil::open(mem.clone()).await;
    check_all(&fresh).await;
    let got = fixture::read_files(&fresh, root).await.unwrap();
    assert_eq!(sorted(&got), sorted(&late));
    assert_eq!(
        sorted(&fixture::read_part(&fresh, &runs[3].0).await.unwrap()),
        sorted(&runs[3].1)
    );
    let _ = late_id;
    // And the next prune (a new mark for what run-late's rescue left) is clean too.
    let r = prune(&repo, &o, &never()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _ = r;
    prune(&repo, &o, &never()).await.unwrap();
    let fresh = testutil::open(mem.clone()).await;
    check_all(&fresh).await;
    let got = fixture::read_files(&fresh, root).await.unwrap();
    assert_eq!(sorted(&got), sorted(&late));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_that_starts_after_the_mark_does_not_reuse_marked_packs() {
    let (mem, repo) = testutil::mem().await;
    let runs = four_runs(&repo).await;
    let mut o = opts("prune-1", |r| r.last = Some(2));
    o.clock_margin = Duration::ZERO;
    prune(&repo, &o, &never()).await.unwrap();

    // A writer opened before the mark (index lists the marked packs)
    // announces after it: it must store run-0's data anew.
    let wrepo = testutil::open(mem.clone()).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let chunk = bytes::Bytes::from(runs[0].1[3].1[..16 << 10].to_vec());
    assert!(
        wrepo.has_blob(&wrepo.blob_id(&chunk)),
        "still indexed before announcing"
    );
    wrepo.announce_writer("backup-after").await.unwrap();
    assert!(
        !wrepo.has_blob(&wrepo.blob_id(&chunk)),
        "marked packs are not reused"
    );
    let w = writer(&wrepo);
    let id = fixture::save_part(
        &wrepo,
        &w,
        "backup-after",
        0,
        1,
        "daily",
        t("2026-01-09T00:00:00Z"),
        &runs[0].1,
    )
    .await
    .unwrap();
    let stats = w.finish().await.unwrap();
    assert!(stats.blobs_new >= 3, "{stats:?}");

    // It does not hold back phase 2 (it saw the mark), which deletes the
    // marked packs: nothing it uses is lost.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = prune(&repo, &o, &never()).await.unwrap();
    assert_eq!(r.counts.get("marks_deferred"), None, "{:?}", r.counts);
    assert!(r.counts["packs_deleted"] > 0, "{:?}", r.counts);
    let fresh = testutil::open(mem.clone()).await;
    check_all(&fresh).await;
    assert_eq!(
        sorted(&fixture::read_part(&fresh, &id).await.unwrap()),
        sorted(&runs[0].1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announce_reloads_after_a_prune_deleted_index_objects() {
    let (mem, repo) = testutil::mem().await;
    let runs = four_runs(&repo).await;
    // Opened before prune; announces only after both phases are done.
    let wrepo = testutil::open(mem.clone()).await;
    let o = opts("prune-1", |r| r.last = Some(2));
    prune(&repo, &o, &never()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    prune(&repo, &o, &never()).await.unwrap();
    assert_eq!(objects(&mem, "prune/marks/").await, 0);
    let chunk = &runs[0].1[3].1[..16 << 10];
    assert!(
        wrepo.has_blob(&wrepo.blob_id(chunk)),
        "stale view before announcing"
    );
    wrepo.announce_writer("backup-x").await.unwrap();
    assert!(
        !wrepo.has_blob(&wrepo.blob_id(chunk)),
        "deleted data is not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_contention() {
    let (mem, repo) = testutil::mem().await;
    four_runs(&repo).await;
    let o = opts("prune-b", |r| r.last = Some(2));

    // Held by another prune: we lose cleanly, naming it.
    let held = PruneLock::acquire(&repo, "prune-a", LockTiming::default())
        .await
        .unwrap();
    let err = prune(&repo, &o, &never()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("prune-a") && msg.contains(held.key()), "{msg}");
    assert!(err.is_retriable());
    assert_eq!(
        objects(&mem, PRUNE_LOCK_PREFIX).await,
        1,
        "the loser removed its own lock"
    );
    assert_eq!(
        objects(&mem, "snapshots/").await,
        4,
        "the loser changed nothing"
    );
    held.release().await.unwrap();

    // Two at once: exactly one wins.
    let (ox, oy, cancel) = (
        opts("prune-x", |r| r.last = Some(4)),
        opts("prune-y", |r| r.last = Some(4)),
        never(),
    );
    let (a, b) = tokio::join!(prune(&repo, &ox, &cancel), prune(&repo, &oy, &cancel));
    assert!(
        a.is_ok() != b.is_ok() || (a.is_ok() && b.is_ok()),
        "{a:?} {b:?}"
    );
    if a.is_err() || b.is_err() {
        let e = a.err().or(b.err()).unwrap();
        assert!(matches!(e, RepoError::Locked { .. }), "{e}");
    }
    assert_eq!(objects(&mem, PRUNE_LOCK_PREFIX).await, 0);

    // A stale lock (not refreshed for longer than the stale age) is taken over.
    let old = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
    let info = LockInfo {
        version: 1,
        run_id: "prune-dead".into(),
        created: old,
        refreshed: old,
    };
    mem.put(
        "locks/prune-20000101T000000Z-dead",
        bytes::Bytes::from(serde_json::to_vec(&info).unwrap()),
    )
    .await
    .unwrap();
    let r = prune(&repo, &o, &never()).await.unwrap();
    assert_eq!(r.counts["runs_removed"], 2);
    assert_eq!(objects(&mem, PRUNE_LOCK_PREFIX).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_refreshed_and_verified() {
    let (mem, repo) = testutil::mem().await;
    let timing = LockTiming {
        stale_after: Duration::from_secs(30),
        refresh: Duration::from_millis(50),
    };
    let lock = PruneLock::acquire(&repo, "prune-r", timing).await.unwrap();
    let read = || async {
        let sealed = mem.get(lock.key()).await.unwrap();
        let plain = repo
            .inner
            .master
            .open(crate::repo::crypto::kind::PRUNE_LOCK, sealed, 1 << 16)
            .unwrap();
        serde_json::from_slice::<LockInfo>(&plain).unwrap()
    };
    let first = read().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = read().await;
    assert!(later.refreshed > first.refreshed);
    assert_eq!(later.created, first.created);
    lock.verify().await.unwrap();
    // Someone removed our lock (thinking it stale): verify says so.
    mem.delete(lock.key()).await.unwrap();
    // The refresher may put it back; remove it again right before verifying.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let key = lock.key().to_string();
    mem.delete(&key).await.unwrap();
    match lock.verify().await {
        Err(crate::repo::RepoError::LockLost { .. }) => {}
        other => {
            // Re-created by a refresh between the delete and the listing.
            assert!(other.is_ok());
        }
    }
    lock.release().await.unwrap();
}
