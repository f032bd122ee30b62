//! Opening, keys, round trips and tamper detection: what storage holds.

use super::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    /// Whatever goes in comes out, after a reopen, across packs of a
    /// deliberately small size.
    #[test]
    fn round_trip_random_blobs(blobs in prop::collection::vec(blob_spec(), 0..6)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
            let repo = init(mem.clone()).await;
            let w = repo.writer_with(2, 256 << 10, 2);
            let mut ids = Vec::new();
            for b in &blobs {
                ids.push(w.add(BlobKind::Data, Bytes::from(b.clone())).await.unwrap().0);
            }
            w.finish().await.unwrap();
            let repo = reopen(mem).await.unwrap();
            for (id, b) in ids.iter().zip(&blobs) {
                let got = repo.read_blob(id).await.unwrap();
                prop_assert_eq!(&got[..], &b[..]);
            }
            Ok(())
        })?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_on_fs_backend_with_pack_headers() {
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn Backend> = Arc::new(FsBackend::new(dir.path().join("repo")));
    let repo = init(fs.clone()).await;
    let w = repo.writer_with(3, 64 << 10, 3);
    let blobs: Vec<Vec<u8>> = (0..40)
        .map(|i| gen_data(i * 7919 % (200 << 10), i as u64, i % 3 == 0))
        .chain([Vec::new(), gen_data(3 << 20, 99, false)])
        .collect();
    let mut ids = Vec::new();
    for (i, b) in blobs.iter().enumerate() {
        let kind = [BlobKind::Data, BlobKind::Tree, BlobKind::Object][i % 3];
        ids.push(w.add(kind, Bytes::from(b.clone())).await.unwrap().0);
    }
    let stats = w.finish().await.unwrap();
    assert!(stats.packs > 3, "{stats:?}");
    let repo = reopen(fs).await.unwrap();
    for (id, b) in ids.iter().zip(&blobs) {
        assert_eq!(&repo.read_blob(id).await.unwrap()[..], &b[..]);
    }
    // Many at once (ranged reads across packs): one result per id, in the
    // order asked, repeats and a missing blob included.
    let missing = BlobId([7; 32]);
    let mut asked: Vec<usize> = (0..ids.len()).rev().chain([3, 3, 0]).collect();
    asked.insert(5, usize::MAX);
    let asked_ids: Vec<BlobId> = asked
        .iter()
        .map(|&i| ids.get(i).copied().unwrap_or(missing))
        .collect();
    let got = repo.read_blobs(&asked_ids).await;
    assert_eq!(got.len(), asked.len());
    for (&i, r) in asked.iter().zip(&got) {
        match blobs.get(i) {
            Some(b) => assert_eq!(&r.as_ref().unwrap()[..], &b[..]),
            None => assert!(matches!(r, Err(RepoError::MissingBlob { .. })), "{r:?}"),
        }
    }
    // Every pack's own header agrees with the index.
    let mut from_headers = Vec::new();
    for pack in repo.packs() {
        from_headers.extend(repo.read_pack_header(&pack).await.unwrap());
    }
    let mut from_index: Vec<_> = repo.index_entries().collect();
    from_headers.sort_by_key(|e| e.0);
    from_index.sort_by_key(|e| e.0);
    assert_eq!(from_headers, from_index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_sequential_and_concurrent() {
    let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
    let repo = init(mem.clone()).await;
    let w = repo.writer(2);
    let small = Bytes::from_static(b"the same object twice");
    let (a, new_a) = w.add(BlobKind::Object, small.clone()).await.unwrap();
    let (b, new_b) = w.add(BlobKind::Object, small.clone()).await.unwrap();
    assert_eq!((a, new_a, new_b), (b, true, false));

    // Large enough to be sealed on the blocking pool, so the adds overlap.
    let big = Bytes::from(gen_data(2 << 20, 7, false));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (w, big) = (w.clone(), big.clone());
            tokio::spawn(async move { w.add(BlobKind::Data, big).await.unwrap() })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert!(results.iter().all(|r| r.0 == results[0].0));
    assert_eq!(results.iter().filter(|r| r.1).count(), 1);

    let stats = w.finish().await.unwrap();
    assert_eq!(stats.blobs_new, 2);
    assert_eq!(stats.blobs_reused, 8);
    assert_eq!(stats.bytes_raw_new, small.len() as u64 + big.len() as u64);
    assert_eq!(
        stats.bytes_reused,
        small.len() as u64 + 7 * big.len() as u64
    );
    assert_eq!(stats.packs, 1);
    assert_eq!(repo.index_entries().count(), 2);

    // A second writer (and a reopened repository) reuses it too.
    let again = repo.writer(1);
    assert!(!again.add(BlobKind::Data, big.clone()).await.unwrap().1);
    let repo2 = reopen(mem).await.unwrap();
    let w2 = repo2.writer(1);
    assert!(!w2.add(BlobKind::Object, small).await.unwrap().1);
    assert_eq!(w2.finish().await.unwrap().packs, 0);
}

#[tokio::test]
async fn tampered_pack_is_corrupt_naming_pack_and_blob() {
    let mem = Arc::new(MemBackend::new());
    let (repo, id) = repo_with_one_blob(&mem).await;
    let entry = repo.index_entry(&id).unwrap();
    let key = pack::pack_key(&entry.pack);
    mem.tamper(&key, |d| d[entry.offset as usize + 100] ^= 1);
    match repo.read_blob(&id).await {
        Err(RepoError::Corrupt { key: k, blob, .. }) => {
            assert_eq!(k, key);
            assert_eq!(blob, Some(id.to_hex()));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let msg = repo.read_blob(&id).await.unwrap_err().to_string();
    assert!(msg.contains(&key) && msg.contains(&id.to_hex()), "{msg}");
}

#[tokio::test]
async fn tampered_index_fails_open_naming_it() {
    let mem = Arc::new(MemBackend::new());
    let repo = init(mem.clone()).await;
    let w = repo.writer(1);
    w.add(BlobKind::Tree, Bytes::from_static(b"tree"))
        .await
        .unwrap();
    w.finish().await.unwrap();
    let index_key = mem.list("index/").await.unwrap()[0].key.clone();
    mem.tamper(&index_key, |d| {
        let n = d.len();
        d[n / 2] ^= 0x80
    });
    let err = reopen(mem.clone()).await.unwrap_err();
    assert!(
        matches!(err, RepoError::Corrupt { ref key, .. } if *key == index_key),
        "{err}"
    );
    assert!(err.to_string().contains(&index_key));
}

#[tokio::test]
async fn tampered_snapshot_fails_listing_naming_it() {
    let mem = Arc::new(MemBackend::new());
    let repo = init(mem.clone()).await;
    let id = repo
        .save_snapshot(&SnapshotManifest::new("run-1", 0, 1, "daily"))
        .await
        .unwrap();
    assert_eq!(repo.list_snapshots().await.unwrap()[0].0, id);
    let key = format!("snapshots/{id}");
    mem.tamper(&key, |d| d[40] ^= 4);
    let err = repo.list_snapshots().await.unwrap_err();
    assert!(
        matches!(err, RepoError::Corrupt { key: ref k, .. } if *k == key),
        "{err}"
    );
    assert!(err.to_string().contains(&key));
}

#[tokio::test]
async fn wrong_password_names_the_location() {
    let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
    init(mem.clone()).await;
    let err = OpenOptions::new(mem, &pw("wrong"))
        .compression(Compression::FAST)
        .key_params(params())
        .open()
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::WrongPassword { .. }), "{err}");
    assert!(err.to_string().contains("mem://"), "{err}");
    assert!(!err.is_retriable());
}

#[tokio::test]
async fn plaintext_never_reaches_storage() {
    const MARKER: &[u8] = b"PLAINTEXT-MARKER-123";
    for compression in [Compression::FAST, Compression::None] {
        let mem = Arc::new(MemBackend::new());
        let repo = OpenOptions::new(mem.clone(), &pw(PW))
            .compression(compression)
            .key_params(params())
            .create()
            .await
            .unwrap();
        let w = repo.writer_with(1, 64 << 10, 1);
        let repeated = MARKER.repeat(5000);
        let (rid, _) = w
            .add(BlobKind::Object, Bytes::from(repeated))
            .await
            .unwrap();
        let mut noisy = gen_data(100_000, 5, false);
        noisy[50_000..50_000 + MARKER.len()].copy_from_slice(MARKER);
        w.add(BlobKind::Data, Bytes::from(noisy)).await.unwrap();
        w.finish().await.unwrap();
        let mut m = SnapshotManifest::new("PLAINTEXT-MARKER-123", 0, 1, "PLAINTEXT-MARKER-123");
        m.tags = vec![String::from_utf8(MARKER.to_vec()).unwrap()];
        m.resources = Some(rid);
        repo.save_snapshot(&m).await.unwrap();
        // Coordination objects are sealed too (their keys hold a run id
        // segment, by design; the content never).
        let run = "PLAINTEXT-MARKER-123";
        repo.announce_writer(run).await.unwrap();
        let held = lock::PruneLock::acquire(&repo, run, Default::default())
            .await
            .unwrap();
        let mark = lock::Mark {
            version: 1,
            time: jiff::Timestamp::now(),
            run_id: run.into(),
            packs: repo.packs(),
            indexes: vec![run.into()],
            orphans: Vec::new(),
        };
        lock::put_mark(&repo, &mark).await.unwrap();
        let objects = all_objects(&mem).await;
        held.release().await.unwrap();
        assert!(objects.iter().any(|(k, _)| k.starts_with("data/")));
        for prefix in ["locks/writer-", "locks/prune-", "prune/marks/"] {
            assert!(
                objects.iter().any(|(k, _)| k.starts_with(prefix)),
                "{prefix}"
            );
        }
        for (key, data) in objects {
            assert!(!contains(&data, MARKER), "{key} holds the plaintext marker");
        }
    }
}

#[tokio::test]
async fn init_open_and_key_management() {
    let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
    let err = reopen(mem.clone()).await.unwrap_err();
    assert!(matches!(err, RepoError::NotInitialised { .. }), "{err}");
    assert!(err.to_string().contains("STOW_INIT") && err.to_string().contains("mem://"));

    // open_or_init creates only when asked to.
    let err = OpenOptions::new(mem.clone(), &pw(PW))
        .compression(Compression::FAST)
        .create_if_missing(false)
        .key_params(params())
        .open()
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::NotInitialised { .. }));
    let repo = OpenOptions::new(mem.clone(), &pw(PW))
        .compression(Compression::FAST)
        .create_if_missing(true)
        .key_params(params())
        .open()
        .await
        .unwrap();
    assert_eq!(repo.chunker_params(), ChunkerParams::default());
    // A second open_or_init with init opens the same repository.
    let same = OpenOptions::new(mem.clone(), &pw(PW))
        .compression(Compression::FAST)
        .create_if_missing(true)
        .key_params(params())
        .open()
        .await
        .unwrap();
    assert_eq!(same.id(), repo.id());

    let err = OpenOptions::new(mem.clone(), &pw(PW))
        .compression(Compression::FAST)
        .key_params(params())
        .create()
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::AlreadyExists { .. }), "{err}");

    // The only key can't be removed.
    let first = repo.key_id().to_string();
    let err = repo.remove_key(&first).await.unwrap_err();
    assert!(err.to_string().contains("last key"), "{err}");

    let new_id = repo.add_key(&pw("second password")).await.unwrap();
    let second = OpenOptions::new(mem.clone(), &pw("second password"))
        .compression(Compression::FAST)
        .key_params(params())
        .open()
        .await
        .unwrap();
    assert_eq!(second.id(), repo.id());
    assert_eq!(second.key_id(), new_id);
    assert_eq!(repo.list_keys().await.unwrap().len(), 2);
    // Not the key in use; but the other one, yes.
    let err = second.remove_key(&new_id).await.unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(second.remove_key("nope").await.is_err());
    second.remove_key(&first).await.unwrap();
    let err = reopen(mem.clone()).await.unwrap_err();
    assert!(matches!(err, RepoError::WrongPassword { .. }), "{err}");
}

#[tokio::test]
async fn production_key_params_enforce_the_minimum() {
    // Public constructors cannot go below the minimum.
    assert_eq!(KeyParams::new(1000).iterations(), MIN_ITERATIONS);
    assert_eq!(KeyParams::default().iterations(), 600_000);
}

#[tokio::test]
async fn a_key_left_by_an_interrupted_init_is_skipped() {
    let mem = Arc::new(MemBackend::new());
    let repo = init(mem.clone()).await;
    // Another repository's key object under the same password.
    let other = Arc::new(MemBackend::new());
    init(other.clone()).await;
    for o in other.list("keys/").await.unwrap() {
        mem.put(&o.key, other.get(&o.key).await.unwrap())
            .await
            .unwrap();
    }
    let again = reopen(mem).await.unwrap();
    assert_eq!(again.id(), repo.id());
}

#[tokio::test]
async fn complete_runs_needs_every_part() {
    let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
    let repo = init(mem).await;
    let p0 = repo
        .save_snapshot(&SnapshotManifest::new("run-a", 0, 2, "daily"))
        .await
        .unwrap();
    let runs = repo.complete_runs().await.unwrap();
    assert_eq!(runs.len(), 1);
    assert!(!runs[0].complete);
    let p1 = repo
        .save_snapshot(&SnapshotManifest::new("run-a", 1, 2, "daily"))
        .await
        .unwrap();
    let runs = repo.complete_runs().await.unwrap();
    assert!(runs[0].complete);
    let ids: Vec<_> = runs[0].parts.iter().map(|p| p.0).collect();
    assert_eq!(ids, vec![p0, p1]);
}

#[tokio::test]
async fn snapshots_only_reference_flushed_blobs() {
    let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
    let repo = init(mem.clone()).await;
    let w = repo.writer(1);
    let (root, _) = w
        .add(BlobKind::Tree, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let mut m = SnapshotManifest::new("r", 0, 1, "daily");
    m.volumes.insert(
        "data".into(),
        VolumeEntry {
            root,
            stats: serde_json::json!({"files": 0}),
        },
    );
    let err = repo.save_snapshot(&m).await.unwrap_err();
    assert!(
        matches!(
            err,
            RepoError::MissingBlob { .. } | RepoError::NotFlushed { .. }
        ),
        "{err}"
    );
    w.flush().await.unwrap();
    let id = repo.save_snapshot(&m).await.unwrap();
    let reopened = reopen(mem).await.unwrap();
    assert_eq!(reopened.load_snapshot(&id).await.unwrap(), m);
}

#[tokio::test]
async fn oversized_blob_is_refused() {
    let repo = init(Arc::new(MemBackend::new())).await;
    let err = repo
        .writer(1)
        .add(BlobKind::Data, Bytes::from(vec![0u8; (64 << 20) + 1]))
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::BlobTooLarge { .. }), "{err}");
}
