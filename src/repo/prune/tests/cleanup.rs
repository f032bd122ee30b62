//! Objects outside snapshots: restore reports, mover results, checkpoints.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_reports_survive_prune() {
    // A restore's report is a leaf blob outside every snapshot, found
    // through its `restores/<id>` pointer; prune must keep it.
    let (mem, repo) = testutil::mem().await;
    let runs = four_runs(&repo).await;
    let w = writer(&repo);
    let report = bytes::Bytes::from_static(b"{\"kind\":\"restore-report\",\"items\":[]}");
    let (id, _) = w
        .add(crate::repo::BlobKind::Object, report.clone())
        .await
        .unwrap();
    w.finish().await.unwrap();
    let pointer = format!("{}{}", crate::repo::REPORT_PREFIX, id.to_hex());
    mem.put(&pointer, bytes::Bytes::from_static(b"{}"))
        .await
        .unwrap();

    prune(&repo, &opts("prune-1", |r| r.last = Some(1)), &never())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = prune(&repo, &opts("prune-2", |r| r.last = Some(1)), &never())
        .await
        .unwrap();
    assert!(
        r.counts["packs_deleted"] > 0,
        "the dropped runs were freed: {:?}",
        r.counts
    );

    let repo2 = testutil::open(mem.clone()).await;
    assert_eq!(repo2.read_blob(&id).await.unwrap(), report);
    let (last, f) = runs.last().unwrap();
    assert_eq!(
        sorted(&fixture::read_part(&repo2, last).await.unwrap()),
        sorted(f)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mover_results_go_once_their_run_is_complete_or_dead() {
    let (mem, repo) = testutil::mem().await;
    let runs = four_runs(&repo).await;
    let root = repo
        .load_snapshot(&runs[0].0)
        .await
        .unwrap()
        .roots()
        .next()
        .copied()
        .unwrap();
    let result = |run: &str, time: jiff::Timestamp| crate::repo::MoverResult {
        version: 1,
        run_id: run.into(),
        volume: "shop/data".into(),
        time,
        entry: crate::repo::VolumeEntry {
            root,
            stats: serde_json::Value::Null,
        },
        report: serde_json::Value::Null,
    };
    // run-0 is complete; "running" is in flight; "dead" is two days old.
    repo.save_mover_result(&result("run-0", Timestamp::now()))
        .await
        .unwrap();
    repo.save_mover_result(&result("running", Timestamp::now()))
        .await
        .unwrap();
    let old = Timestamp::now() - jiff::SignedDuration::from_hours(48);
    repo.save_mover_result(&result("dead", old)).await.unwrap();
    assert_eq!(objects(&mem, crate::repo::MOVER_PREFIX).await, 3);
    let r = prune(&repo, &opts("prune-1", |r| r.last = Some(10)), &never())
        .await
        .unwrap();
    assert_eq!(r.counts["mover_results_removed"], 2, "{r:?}");
    let left = repo.all_mover_results().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1.as_ref().unwrap().run_id, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_go_once_a_later_backup_completes_or_they_are_old() {
    let (mem, repo) = testutil::mem().await;
    four_runs(&repo).await;
    let save = |plan: &str, volume: &str, time: Timestamp| {
        let json = serde_json::json!({
            "version": 1, "run_id": "r", "plan": plan, "volume": volume,
            "time": time, "root_dev": 1, "files": []
        });
        let repo = repo.clone();
        let (plan, volume) = (plan.to_string(), volume.to_string());
        async move {
            repo.save_checkpoint(&plan, &volume, json.to_string().as_bytes())
                .await
                .unwrap()
        }
    };
    // Before run-3 (2026-01-04) of the same plan and volume: superseded.
    save("daily", "data", t("2026-01-03T12:00:00Z")).await;
    // After every run: an unfinished backup's, kept for its rerun.
    let fresh = save("daily", "data", Timestamp::now()).await;
    // No complete backup of that plan: kept until old.
    let other = save(
        "hourly",
        "data",
        Timestamp::now() - jiff::SignedDuration::from_hours(48),
    )
    .await;
    save(
        "hourly",
        "data",
        Timestamp::now() - jiff::SignedDuration::from_hours(24 * 8),
    )
    .await;
    assert_eq!(objects(&mem, crate::repo::CHECKPOINT_PREFIX).await, 4);
    let r = prune(&repo, &opts("prune-1", |r| r.last = Some(10)), &never())
        .await
        .unwrap();
    assert_eq!(r.counts["checkpoints_removed"], 2, "{r:?}");
    let mut left: Vec<String> = repo
        .all_checkpoints()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    left.sort();
    let mut want = vec![fresh, other];
    want.sort();
    assert_eq!(left, want);
}
