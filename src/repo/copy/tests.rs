use std::sync::Arc;

use super::*;
use crate::config::{Compression, Secret};
use crate::repo::backend::Backend;
use crate::repo::backend::{FsBackend, MemBackend};
use crate::repo::check;
use crate::repo::fixture;
use crate::repo::{SnapshotId, SnapshotManifest};
use crate::testutil::{self, files, t, writer};

const DEST_PW: &str = "destination password";

fn dest_pw() -> Secret {
    Secret::new(DEST_PW)
}

async fn source_with_runs() -> (Arc<MemBackend>, Repository, Vec<SnapshotId>) {
    let (mem, repo) = testutil::mem().await;
    let shared = files(1, 2, 40 << 10);
    let mut ids = Vec::new();
    for i in 0..3u64 {
        let w = writer(&repo);
        let mut f = shared.clone();
        f.extend(files(10 + i, 2, 20 << 10));
        let id = fixture::save_part(
            &repo,
            &w,
            &format!("run-{i}"),
            0,
            1,
            "daily",
            t(&format!("2026-01-0{}T00:00:00Z", i + 1)),
            &f,
        )
        .await
        .unwrap();
        w.finish().await.unwrap();
        ids.push(id);
    }
    // An incomplete run is not copied.
    let w = writer(&repo);
    fixture::save_part(
        &repo,
        &w,
        "partial",
        0,
        2,
        "daily",
        t("2026-01-05T00:00:00Z"),
        &files(99, 1, 100),
    )
    .await
    .unwrap();
    w.finish().await.unwrap();
    (mem, repo, ids)
}

fn opts() -> Options {
    Options {
        run_id: "copy-1".into(),
        channels: 2,
    }
}

async fn check_ok(repo: &Repository) {
    let r = check::check(
        repo,
        &check::Options {
            read_data: Some(crate::config::ReadData::All),
            channels: 2,
        },
    )
    .await
    .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
}

fn digest(f: &fixture::Files) -> Vec<(String, String)> {
    f.iter()
        .map(|(p, d)| (p.clone(), blake3::hash(d).to_hex().to_string()))
        .collect()
}

/// Every run of `dest` reads back as in `source`.
async fn same_runs(source: &Repository, dest: &Repository) -> usize {
    let src: Vec<(SnapshotId, SnapshotManifest)> = source.list_snapshots().await.unwrap();
    let mut n = 0;
    for (did, dm) in dest.list_snapshots().await.unwrap() {
        let (sid, sm) = src
            .iter()
            .find(|(_, m)| m.run_id == dm.run_id && m.part == dm.part)
            .unwrap();
        assert_eq!(sm.volumes, dm.volumes);
        assert_eq!(sm.resources, dm.resources);
        assert_eq!((sm.time, &sm.plan, sm.parts), (dm.time, &dm.plan, dm.parts));
        assert_eq!(
            digest(&fixture::read_part(source, sid).await.unwrap()),
            digest(&fixture::read_part(dest, &did).await.unwrap())
        );
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_a_second_repository_then_again() {
    let (_, source, _) = source_with_runs().await;
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn Backend> = Arc::new(FsBackend::new(dir.path().join("dest")));
    // No destination and no init: refused.
    let err = open_destination(
        OpenOptions::new(fs.clone(), &dest_pw()).key_params(testutil::params()),
        false,
        &source,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("STOW_INIT"), "{err}");
    let dest = open_destination(
        OpenOptions::new(fs.clone(), &dest_pw()).key_params(testutil::params()),
        true,
        &source,
    )
    .await
    .unwrap();
    assert!(dest.shares_ids_with(&source));
    assert_ne!(dest.id(), source.id());

    let r = copy(&source, &dest, &RunFilter::default(), &opts())
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.counts["runs_copied"], 3, "{:?}", r.counts);
    assert_eq!(r.counts["snapshots_copied"], 3);
    assert!(r.counts["blobs_copied"] > 10);
    assert!(r.bytes["copied"] > 100 << 10);

    // Both check clean; the destination reads back the same content with
    // its own password (the source's does not open it).
    check_ok(&source).await;
    let dest = OpenOptions::new(fs.clone(), &dest_pw())
        .compression(Compression::FAST)
        .key_params(testutil::params())
        .open()
        .await
        .unwrap();
    check_ok(&dest).await;
    assert_eq!(same_runs(&source, &dest).await, 3);
    assert!(matches!(
        OpenOptions::new(fs.clone(), &Secret::new(testutil::PW))
            .compression(Compression::FAST)
            .key_params(testutil::params())
            .open()
            .await,
        Err(RepoError::WrongPassword { .. })
    ));
    // Its own data key: no stored object equals one in the source.
    assert_eq!(dest.list_keys().await.unwrap().len(), 1);
    assert!(
        fs.list("locks/").await.unwrap().is_empty(),
        "writer marker retired"
    );

    // Again: nothing new.
    let r = copy(&source, &dest, &RunFilter::default(), &opts())
        .await
        .unwrap();
    assert_eq!(r.counts["runs_present"], 3, "{:?}", r.counts);
    assert_eq!(r.counts.get("runs_copied"), None);
    assert_eq!(r.counts.get("blobs_copied"), None);
    assert_eq!(dest.list_snapshots().await.unwrap().len(), 3);

    // A new run in the source: only it is copied, sharing what is there.
    let w = writer(&source);
    let mut f = files(1, 2, 40 << 10);
    f.extend(files(50, 1, 1000));
    fixture::save_part(
        &source,
        &w,
        "run-new",
        0,
        1,
        "daily",
        t("2026-01-09T00:00:00Z"),
        &f,
    )
    .await
    .unwrap();
    w.finish().await.unwrap();
    let r = copy(&source, &dest, &RunFilter::default(), &opts())
        .await
        .unwrap();
    assert_eq!(r.counts["runs_copied"], 1, "{:?}", r.counts);
    assert!(r.counts["blobs_copied"] < 8, "{:?}", r.counts);
    let dest = OpenOptions::new(fs, &dest_pw())
        .compression(Compression::FAST)
        .key_params(testutil::params())
        .open()
        .await
        .unwrap();
    check_ok(&dest).await;
    assert_eq!(same_runs(&source, &dest).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_with_other_ids_is_refused() {
    let (_, source, _) = source_with_runs().await;
    let other: Arc<dyn Backend> = Arc::new(MemBackend::new());
    OpenOptions::new(other.clone(), &dest_pw())
        .compression(Compression::FAST)
        .key_params(testutil::params())
        .create()
        .await
        .unwrap();
    let err = open_destination(
        OpenOptions::new(other, &dest_pw()).key_params(testutil::params()),
        true,
        &source,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            RepoError::Refused {
                operation: "copy",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("different id key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_one_snapshot_by_filter() {
    let (_, source, ids) = source_with_runs().await;
    let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
    let dest = open_destination(
        OpenOptions::new(mem, &dest_pw()).key_params(testutil::params()),
        true,
        &source,
    )
    .await
    .unwrap();
    let filter = RunFilter {
        snapshot: Some(ids[1].to_hex()[..12].to_string()),
        ..RunFilter::default()
    };
    let r = copy(&source, &dest, &filter, &opts()).await.unwrap();
    assert_eq!(r.counts["runs_selected"], 1);
    assert_eq!(r.counts["runs_copied"], 1);
    let got = dest.list_snapshots().await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.run_id, "run-1");
    check_ok(&dest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_source_run_is_reported_and_the_rest_copied() {
    let (mem, source, ids) = source_with_runs().await;
    // Lose run-2's own files: delete the pack holding one of them.
    let only2 = source.blob_id(&files(12, 2, 20 << 10)[0].1[..16 << 10]);
    let pack = source.index_entry(&only2).unwrap().pack;
    mem.delete(&crate::repo::pack_key(&pack)).await.unwrap();
    let dest_mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
    let dest = open_destination(
        OpenOptions::new(dest_mem, &dest_pw()).key_params(testutil::params()),
        true,
        &source,
    )
    .await
    .unwrap();
    let r = copy(&source, &dest, &RunFilter::default(), &opts())
        .await
        .unwrap();
    assert_eq!(r.counts["runs_failed"], 1, "{:?}", r.counts);
    assert_eq!(r.counts["runs_copied"], 2);
    assert!(
        r.errors.iter().any(|e| e.message.contains("run-2")),
        "{:?}",
        r.errors
    );
    let runs: Vec<String> = dest
        .list_snapshots()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.1.run_id)
        .collect();
    assert_eq!(runs, ["run-0", "run-1"]);
    check_ok(&dest).await;
    let _ = ids;
}
