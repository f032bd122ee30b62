//! Objects a key holder could write (sealed with the real key, so they
//! authenticate) that claim counts or lengths nothing legitimate has:
//! readers refuse them, naming the object, before sizing anything by them.

use super::*;
use crate::repo::crypto::kind;

/// Stores `manifest` as a sealed snapshot object, bypassing the checks of
/// `save_snapshot`; returns its key.
async fn put_manifest(mem: &MemBackend, repo: &Repository, manifest: &serde_json::Value) -> String {
    let sealed = repo.seal(kind::SNAPSHOT, &serde_json::to_vec(manifest).unwrap());
    let key = format!("snapshots/{}", blake3::hash(&sealed).to_hex());
    mem.put(&key, Bytes::from(sealed)).await.unwrap();
    key
}

#[tokio::test]
async fn manifest_claiming_u32_max_parts_fails_cleanly() {
    let mem = Arc::new(MemBackend::new());
    let repo = init(mem.clone()).await;
    let good = repo
        .save_snapshot(&SnapshotManifest::new("run-ok", 0, 1, "daily"))
        .await
        .unwrap();
    let mut hostile = serde_json::to_value(SnapshotManifest::new("run-x", 0, 1, "daily")).unwrap();
    hostile["parts"] = u32::MAX.into();
    let key = put_manifest(&mem, &repo, &hostile).await;

    let err = repo.list_snapshots().await.unwrap_err();
    assert!(
        matches!(&err, RepoError::Corrupt { key: k, .. } if *k == key),
        "{err}"
    );
    assert!(err.to_string().contains("4294967295 parts"), "{err}");
    // `check` and `list` go on with the others.
    let (ok, errors) = repo.list_snapshots_lenient().await.unwrap();
    assert_eq!(ok.iter().map(|s| s.0).collect::<Vec<_>>(), vec![good]);
    assert_eq!(errors.len(), 1);

    // Part numbers outside the run are refused the same way.
    for (part, parts) in [(1u32, 1u32), (0, 0), (0, 65_537)] {
        let mut m = hostile.clone();
        m["part"] = part.into();
        m["parts"] = parts.into();
        let key = put_manifest(&mem, &repo, &m).await;
        let (_, errors) = repo.list_snapshots_lenient().await.unwrap();
        assert!(
            errors.iter().any(|e| e.to_string().contains(&key)),
            "{part}/{parts}: {errors:?}"
        );
        // Nor does this process write one.
        let m = SnapshotManifest::new("run-y", part, parts, "daily");
        let err = repo.save_snapshot(&m).await.unwrap_err();
        assert!(matches!(err, RepoError::Refused { .. }), "{err}");
    }
}

#[test]
fn grouping_a_run_that_claims_u32_max_parts_allocates_nothing_by_it() {
    // `group_runs` is public and takes manifests from anywhere: it used to
    // build the set 0..parts to compare with, 16 GiB for u32::MAX.
    let part = |n: u32| {
        let m = SnapshotManifest::new("run-x", n, u32::MAX, "daily");
        (SnapshotId([n as u8; 32]), m)
    };
    let runs = group_runs(vec![part(0), part(u32::MAX - 1)]);
    assert_eq!(runs.len(), 1);
    assert!(!runs[0].complete);
    // Complete means exactly 0..parts, still.
    let m = |n: u32, of: u32| {
        (
            SnapshotId([n as u8; 32]),
            SnapshotManifest::new("r", n, of, "d"),
        )
    };
    assert!(group_runs(vec![m(0, 2), m(1, 2)])[0].complete);
    assert!(!group_runs(vec![m(0, 2), m(2, 2)])[0].complete);
    assert!(!group_runs(vec![m(1, 2), m(1, 2)])[0].complete);
}

#[tokio::test]
async fn index_entry_with_impossible_blob_lengths_fails_open_naming_the_index() {
    let mem = Arc::new(MemBackend::new());
    let (repo, id) = repo_with_one_blob(&mem).await;
    let good = repo.index_entry(&id).unwrap();
    let bad = [
        (u64::from(u32::MAX), good.raw_length),
        (good.length, u64::from(u32::MAX)),
        (10, 0),
    ];
    for (length, raw_length) in bad {
        let fresh = Arc::new(MemBackend::new());
        for ObjectInfo { key, .. } in mem.list("").await.unwrap() {
            if !key.starts_with("index/") {
                fresh.put(&key, mem.get(&key).await.unwrap()).await.unwrap();
            }
        }
        let writer_repo = reopen(fresh.clone()).await.unwrap();
        let entry = IndexEntry {
            length,
            raw_length,
            ..good
        };
        let key = writer_repo
            .write_index_file(&[(good.pack, vec![(id, entry)])])
            .await
            .unwrap();
        let err = reopen(fresh.clone()).await.unwrap_err();
        assert!(
            matches!(&err, RepoError::Corrupt { key: k, .. } if *k == key),
            "{length}/{raw_length}: {err}"
        );
        assert!(err.to_string().contains("impossible"), "{err}");
    }
}

#[tokio::test]
async fn pack_header_length_beyond_what_its_body_needs_is_refused_before_reading() {
    let mem = Arc::new(MemBackend::new());
    let (repo, id) = repo_with_one_blob(&mem).await;
    let pack = repo.index_entry(&id).unwrap().pack;
    let key = pack::pack_key(&pack);
    assert_eq!(repo.read_pack_header(&pack).await.unwrap().len(), 1);
    // The tail claims nearly the whole object is header: one blob's worth
    // of body cannot need that much.
    mem.tamper(&key, |d| {
        let n = d.len();
        let claim = (n - 4 - 38) as u32;
        d[n - 4..].copy_from_slice(&claim.to_le_bytes());
    });
    let err = repo.read_pack_header(&pack).await.unwrap_err();
    assert!(
        matches!(&err, RepoError::Corrupt { key: k, .. } if *k == key),
        "{err}"
    );
    assert!(err.to_string().contains("header length"), "{err}");
}
