use std::sync::Arc;

use super::*;
use crate::repo::OpenOptions;
use crate::repo::backend::{Backend, MemBackend};
use crate::repo::fixture;
use crate::repo::{BlobKind, SnapshotId, SnapshotManifest};
use crate::testutil::{self, files, t, writer};

fn opts(read_data: Option<ReadData>) -> Options {
    Options {
        read_data,
        channels: 2,
    }
}

/// A repository with two complete runs sharing some files.
async fn good_repo() -> (Arc<MemBackend>, Repository, Vec<SnapshotId>) {
    let (mem, repo) = testutil::mem().await;
    let w = writer(&repo);
    let shared = files(1, 4, 40 << 10);
    let mut a = shared.clone();
    a.extend(files(2, 3, 30 << 10));
    let mut b = shared;
    b.extend(files(3, 3, 30 << 10));
    let s1 = fixture::save_part(
        &repo,
        &w,
        "run-a",
        0,
        1,
        "daily",
        t("2026-01-01T00:00:00Z"),
        &a,
    )
    .await
    .unwrap();
    let s2 = fixture::save_part(
        &repo,
        &w,
        "run-b",
        0,
        1,
        "daily",
        t("2026-01-02T00:00:00Z"),
        &b,
    )
    .await
    .unwrap();
    w.finish().await.unwrap();
    let repo = testutil::open(mem.clone()).await;
    (mem, repo, vec![s1, s2])
}

fn items(r: &Report) -> Vec<(String, String)> {
    r.errors
        .iter()
        .map(|e| (e.item.clone(), e.message.clone()))
        .collect()
}

fn some_pack(repo: &Repository) -> PackId {
    let mut p = repo.packs();
    p.sort();
    p[0]
}

#[test]
fn sampling_picks_distinct_packs() {
    let all: Vec<PackId> = (0..10u8).map(|i| PackId([i; 32])).collect();
    assert!(select_packs(&all, None).is_empty());
    assert_eq!(select_packs(&all, Some(ReadData::All)).len(), 10);
    let s = select_packs(&all, Some(ReadData::Percent(25.0)));
    assert_eq!(s.len(), 3);
    let mut d = s.clone();
    d.sort();
    d.dedup();
    assert_eq!(d.len(), 3);
    assert_eq!(select_packs(&all, Some(ReadData::Percent(0.1))).len(), 1);
    assert!(select_packs(&[], Some(ReadData::Percent(50.0))).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_on_a_good_repository() {
    let (_, repo, _) = good_repo().await;
    for rd in [None, Some(ReadData::All), Some(ReadData::Percent(50.0))] {
        let r = check(&repo, &opts(rd)).await.unwrap();
        assert!(r.errors.is_empty(), "{:?}", items(&r));
        assert!(!r.failed);
        assert_eq!(r.counts["snapshots"], 2);
        assert_eq!(r.counts["runs"], 2);
        assert!(r.counts["packs"] > 3, "{:?}", r.counts);
        // 4 shared + 3 + 3 files (3 chunks each at most), 2 x (root, 2 dirs, sub dirs) trees...
        assert!(r.counts["blobs_reachable"] > 20, "{:?}", r.counts);
        if rd == Some(ReadData::All) {
            assert_eq!(r.counts["packs_read"], r.counts["packs"]);
            assert_eq!(r.counts["blobs_verified"], r.counts["blobs"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_pack_is_named_with_read_data() {
    let (mem, repo, _) = good_repo().await;
    let pack = some_pack(&repo);
    let key = pack_key(&pack);
    // A byte inside the first blob.
    mem.tamper(&key, |d| d[20] ^= 1);
    let r = check(&repo, &opts(Some(ReadData::All))).await.unwrap();
    assert!(r.failed);
    let errs = items(&r);
    assert!(
        errs.iter().any(|(i, m)| *i == key && m.contains("(blob ")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|(i, m)| *i == key && m.contains("does not match its name")),
        "{errs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pack_is_named() {
    let (mem, repo, _) = good_repo().await;
    let pack = some_pack(&repo);
    let key = pack_key(&pack);
    mem.delete(&key).await.unwrap();
    let r = check(&repo, &opts(None)).await.unwrap();
    assert!(r.failed);
    let errs = items(&r);
    assert!(
        errs.iter()
            .any(|(i, m)| *i == key && m.contains("pack is missing") && m.contains("blob ")),
        "{errs:?}"
    );
    // Snapshots that reach it say so, naming themselves.
    assert!(
        errs.iter().any(|(i, _)| i.starts_with("snapshots/")),
        "{errs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_pack_is_named() {
    let (mem, repo, _) = good_repo().await;
    let pack = some_pack(&repo);
    let key = pack_key(&pack);
    mem.tamper(&key, |d| {
        let half = d.len() / 2;
        d.truncate(half)
    });
    let r = check(&repo, &opts(None)).await.unwrap();
    assert!(r.failed);
    let errs = items(&r);
    assert!(
        errs.iter()
            .any(|(i, m)| *i == key && m.contains("bytes, but") && m.contains("is cut")),
        "{errs:?}"
    );

    // A few bytes off the tail only hurt the header: read-data sees it.
    let (mem, repo, _) = good_repo().await;
    let pack = some_pack(&repo);
    let key = pack_key(&pack);
    mem.tamper(&key, |d| {
        let n = d.len() - 3;
        d.truncate(n)
    });
    let r = check(&repo, &opts(Some(ReadData::All))).await.unwrap();
    assert!(r.failed);
    let errs = items(&r);
    assert!(
        errs.iter().any(|(i, m)| *i == key && m.contains("header")),
        "{errs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_index_is_named() {
    let (mem, _, _) = good_repo().await;
    let index = mem.list("index/").await.unwrap()[0].key.clone();
    mem.tamper(&index, |d| {
        let n = d.len() / 2;
        d[n] ^= 0x40
    });
    // open fails on it; the lenient open used by check does not.
    assert!(
        OpenOptions::new(mem.clone(), &crate::config::Secret::new(testutil::PW))
            .compression(crate::config::Compression::FAST)
            .key_params(testutil::params())
            .open()
            .await
            .is_err()
    );
    let (repo, errs) = OpenOptions::new(mem.clone(), &crate::config::Secret::new(testutil::PW))
        .compression(crate::config::Compression::FAST)
        .key_params(testutil::params())
        .open_lenient()
        .await
        .unwrap();
    assert_eq!(errs.len(), 1);
    let r = check(&repo, &opts(None)).await.unwrap();
    assert!(r.failed);
    let errs = items(&r);
    assert!(
        errs.iter()
            .any(|(i, m)| *i == index && m.contains("corrupt")),
        "{errs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_referencing_a_missing_blob_is_named() {
    let (mem, repo, _) = good_repo().await;
    let w = writer(&repo);
    let ghost = BlobId([0x5a; 32]);
    let tree = serde_json::json!({"nodes": [
        {"name": "real", "content": []},
        {"name": "ghost.txt", "content": [ghost.to_hex()]},
    ]});
    let (root, _) = w
        .add(
            BlobKind::Tree,
            bytes::Bytes::from(serde_json::to_vec(&tree).unwrap()),
        )
        .await
        .unwrap();
    w.finish().await.unwrap();
    let mut m = SnapshotManifest::new("run-ghost", 0, 1, "daily");
    m.volumes.insert(
        "vol".into(),
        crate::repo::VolumeEntry {
            root,
            stats: serde_json::Value::Null,
        },
    );
    let id = repo.save_snapshot(&m).await.unwrap();
    let repo = testutil::open(mem).await;
    let r = check(&repo, &opts(None)).await.unwrap();
    assert!(r.failed);
    let errs = items(&r);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, crate::repo::snapshot_key(&id));
    assert!(
        errs[0].1.contains(&ghost.to_hex()) && errs[0].1.contains("volumes/vol/ghost.txt"),
        "{errs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_manifest_is_an_error_and_incomplete_run_a_warning() {
    let (mem, repo, ids) = good_repo().await;
    let w = writer(&repo);
    fixture::save_part(
        &repo,
        &w,
        "run-c",
        1,
        2,
        "daily",
        t("2026-01-03T00:00:00Z"),
        &files(9, 1, 100),
    )
    .await
    .unwrap();
    let r = check(&repo, &opts(None)).await.unwrap();
    assert!(!r.failed, "{:?}", items(&r));
    assert_eq!(r.counts["runs_incomplete"], 1);
    let warnings = r.details["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("run-c is incomplete: 1 of 2")),
        "{warnings:?}"
    );

    let key = crate::repo::snapshot_key(&ids[0]);
    mem.tamper(&key, |d| d[30] ^= 1);
    let r = check(&repo, &opts(None)).await.unwrap();
    assert!(r.failed);
    assert!(items(&r).iter().any(|(i, _)| *i == key), "{:?}", items(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unindexed_pack_is_a_warning() {
    let (mem, repo, _) = good_repo().await;
    let data = fixture::bytes(1000, 7);
    let id = PackId(*blake3::hash(&data).as_bytes());
    mem.put(&pack_key(&id), bytes::Bytes::from(data))
        .await
        .unwrap();
    let r = check(&repo, &opts(None)).await.unwrap();
    assert!(!r.failed, "{:?}", items(&r));
    assert_eq!(r.counts["packs_unindexed"], 1);
}
