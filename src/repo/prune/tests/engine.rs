//! The prune engine: what it keeps, frees, rewrites and refuses.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_what_retention_keeps_and_frees_what_it_drops() {
    let (mem, repo) = testutil::mem().await;
    let runs = four_runs(&repo).await;
    let before_packs = objects(&mem, "data/").await;
    let o = opts("prune-1", |r| r.last = Some(2));

    // Phase 1: forget two runs, mark their data.
    let r = prune(&repo, &o, &never()).await.unwrap();
    assert_eq!(r.counts["runs_removed"], 2, "{:?}", r.counts);
    assert_eq!(r.counts["runs_kept"], 2);
    assert!(r.counts["packs_marked"] > 0, "{:?}", r.counts);
    assert_eq!(
        r.counts.get("packs_deleted"),
        None,
        "nothing deleted before the grace period"
    );
    assert!(objects(&mem, "data/").await >= before_packs);
    assert_eq!(objects(&mem, "snapshots/").await, 2);
    assert_eq!(objects(&mem, "prune/marks/").await, 1);
    assert_eq!(objects(&mem, "locks/").await, 0, "lock released");
    // Still fully readable during the grace period.
    let repo2 = testutil::open(mem.clone()).await;
    check_all(&repo2).await;
    for (id, f) in &runs[2..] {
        assert_eq!(
            &sorted(&fixture::read_part(&repo2, id).await.unwrap()),
            &sorted(f)
        );
    }

    // Phase 2 after the grace period.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = prune(&repo, &opts("prune-2", |r| r.last = Some(2)), &never())
        .await
        .unwrap();
    assert!(r.counts["packs_deleted"] > 0, "{:?}", r.counts);
    assert!(r.bytes["freed"] > 0);
    assert_eq!(r.counts["marks_done"], 1);
    assert_eq!(r.counts.get("runs_removed"), None);
    assert_eq!(objects(&mem, "prune/marks/").await, 0);

    let repo3 = testutil::open(mem.clone()).await;
    check_all(&repo3).await;
    for (id, f) in &runs[2..] {
        assert_eq!(
            &sorted(&fixture::read_part(&repo3, id).await.unwrap()),
            &sorted(f)
        );
    }
    // The dropped runs' own data is gone; the shared data stays.
    let lost = repo3.blob_id(&files(1, 3, 60 << 10)[0].1[..16 << 10]);
    assert!(!repo3.has_blob(&lost));
    let shared = repo3.blob_id(&files(100, 3, 50 << 10)[0].1[..16 << 10]);
    assert!(repo3.has_blob(&shared));
    // Nothing unreachable is left in an index.
    let reach = crate::repo::walk::walk(
        &repo3,
        repo3
            .list_snapshots()
            .await
            .unwrap()
            .iter()
            .flat_map(|(id, m)| Root::of_manifest(*id, m))
            .collect(),
        4,
    )
    .await;
    let indexed: HashSet<BlobId> = repo3.index_entries().map(|e| e.0).collect();
    let stale = indexed.difference(&reach.reachable).count();
    assert!(
        stale * 10 <= indexed.len(),
        "{stale} of {} indexed blobs unused",
        indexed.len()
    );

    // A third prune has nothing to do.
    let r = prune(&repo, &opts("prune-3", |r| r.last = Some(2)), &never())
        .await
        .unwrap();
    assert_eq!(r.counts.get("packs_marked"), Some(&0), "{:?}", r.counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_used_packs_are_rewritten() {
    let (mem, repo) = testutil::mem().await;
    // One big pack holding both runs' data.
    let keep = files(1, 2, 30 << 10);
    let drop = files(2, 2, 30 << 10);
    let w = repo.writer_with(1, 4 << 20, 4);
    let keep_root = fixture::store_files(&w, &keep, 16 << 10).await.unwrap();
    let drop_root = fixture::store_files(&w, &drop, 16 << 10).await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(repo.packs().len(), 1);
    let mut ids = Vec::new();
    for (run, root, time) in [
        ("keep", keep_root, "2026-01-02T00:00:00Z"),
        ("drop", drop_root, "2026-01-01T00:00:00Z"),
    ] {
        let mut m = SnapshotManifest::new(run, 0, 1, "daily");
        m.time = t(time);
        m.volumes.insert(
            "data".into(),
            crate::repo::VolumeEntry {
                root,
                stats: serde_json::Value::Null,
            },
        );
        ids.push(repo.save_snapshot(&m).await.unwrap());
    }
    let k = ids[0];
    let mut o = opts("prune-1", |r| r.last = Some(1));
    o.repack_unused = 0.01;
    let r = prune(&repo, &o, &never()).await.unwrap();
    assert_eq!(
        r.counts["packs_repacked"], r.counts["packs_marked"],
        "{:?}",
        r.counts
    );
    assert!(r.counts["blobs_repacked"] >= 5, "{:?}", r.counts);
    assert!(r.bytes["repacked"] > 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = prune(&repo, &o, &never()).await.unwrap();
    assert!(r.counts["packs_deleted"] >= 1, "{:?}", r.counts);
    assert_eq!(r.counts.get("packs_rescued"), Some(&0));
    let repo = testutil::open(mem.clone()).await;
    check_all(&repo).await;
    assert_eq!(
        sorted(&fixture::read_part(&repo, &k).await.unwrap()),
        sorted(&keep)
    );
    assert!(!repo.has_blob(&repo.blob_id(&drop[0].1[..16 << 10])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_refuses_when_a_tree_is_missing() {
    let (mem, repo) = testutil::mem().await;
    let runs = four_runs(&repo).await;
    // Remove the pack holding run-3's root tree.
    let m = repo.load_snapshot(&runs[3].0).await.unwrap();
    let pack = repo.index_entry(&m.volumes["data"].root).unwrap().pack;
    mem.delete(&crate::repo::pack_key(&pack)).await.unwrap();
    let err = prune(&repo, &opts("p", |r| r.last = Some(1)), &never())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RepoError::Refused {
                operation: "prune",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("run check"), "{err}");
    assert_eq!(objects(&mem, "prune/marks/").await, 0);
    assert_eq!(objects(&mem, PRUNE_LOCK_PREFIX).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_runs_and_orphans() {
    let (mem, repo) = testutil::mem().await;
    let runs = four_runs(&repo).await;
    // An incomplete run (part 1 of 2) and a pack no index lists.
    let w = writer(&repo);
    let partial = fixture::save_part(
        &repo,
        &w,
        "partial",
        1,
        2,
        "daily",
        t("2026-01-05T00:00:00Z"),
        &files(77, 2, 1000),
    )
    .await
    .unwrap();
    w.finish().await.unwrap();
    let junk = fixture::bytes(5000, 9);
    let orphan = PackId(*blake3::hash(&junk).as_bytes());
    mem.put(&crate::repo::pack_key(&orphan), bytes::Bytes::from(junk))
        .await
        .unwrap();

    // Young enough to be in flight: kept.
    let mut o = opts("p1", |r| r.last = Some(4));
    o.incomplete_min_age = Duration::from_secs(365 * 24 * 3600 * 100);
    let r = prune(&repo, &o, &never()).await.unwrap();
    assert_eq!(r.counts["runs_kept"], 5, "{:?}", r.counts);
    assert_eq!(r.counts["orphans_marked"], 1);
    assert!(
        mem.exists(&crate::repo::snapshot_key(&partial))
            .await
            .unwrap()
    );

    // Old: removed. Orphans go once the writer age has passed too.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut o = opts("p2", |r| r.last = Some(4));
    o.incomplete_min_age = Duration::ZERO;
    o.writer_max_age = Duration::from_millis(100);
    let r = prune(&repo, &o, &never()).await.unwrap();
    assert_eq!(r.counts["runs_removed"], 1, "{:?}", r.counts);
    assert!(
        !mem.exists(&crate::repo::snapshot_key(&partial))
            .await
            .unwrap()
    );
    assert!(r.counts["packs_deleted"] >= 1, "{:?}", r.counts);
    assert!(!mem.exists(&crate::repo::pack_key(&orphan)).await.unwrap());
    let fresh = testutil::open(mem.clone()).await;
    check_all(&fresh).await;
    for (id, f) in &runs {
        assert_eq!(
            &sorted(&fixture::read_part(&fresh, id).await.unwrap()),
            &sorted(f)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_named_plan_is_pruned() {
    let (mem, repo) = testutil::mem().await;
    four_runs(&repo).await; // plan "daily"
    let w = writer(&repo);
    for i in 0..2 {
        fixture::save_part(
            &repo,
            &w,
            &format!("weekly-{i}"),
            0,
            1,
            "weekly",
            t(&format!("2026-02-0{}T00:00:00Z", i + 1)),
            &files(200 + i, 1, 100),
        )
        .await
        .unwrap();
    }
    w.finish().await.unwrap();
    let mut o = opts("p", |r| r.last = Some(1));
    o.plan = Some("weekly".into());
    let r = prune(&repo, &o, &never()).await.unwrap();
    assert_eq!(r.counts["runs_removed"], 1);
    assert_eq!(r.counts["runs_not_considered"], 4);
    assert_eq!(objects(&mem, "snapshots/").await, 5);
    let removed = r.details["removed"].as_array().unwrap();
    assert_eq!(removed[0]["run_id"], "weekly-0");
}
