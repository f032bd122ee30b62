//! Repository tests against the memory and filesystem backends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use proptest::prelude::*;

use super::backend::{self, Backend, BackendError, FsBackend, MemBackend, ObjectInfo};
use super::*;

const PW: &str = "correct horse battery staple";

fn pw(s: &str) -> Secret {
    Secret::new(s)
}

/// Fast key derivation: the production count takes ~0.5 s per key.
fn params() -> KeyParams {
    KeyParams::insecure_for_tests(10)
}

async fn init(backend: Arc<dyn Backend>) -> Repository {
    OpenOptions::new(backend, &pw(PW))
        .compression(Compression::FAST)
        .key_params(params())
        .create()
        .await
        .unwrap()
}

async fn reopen(backend: Arc<dyn Backend>) -> Result<Repository, RepoError> {
    OpenOptions::new(backend, &pw(PW))
        .compression(Compression::FAST)
        .key_params(params())
        .open()
        .await
}

/// Deterministic test data: random (BLAKE3 output) or compressible text.
fn gen_data(len: usize, seed: u64, compressible: bool) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if compressible {
        let line = format!("line of a log file {seed} with some repeated text\n");
        for (i, b) in out.iter_mut().enumerate() {
            *b = line.as_bytes()[i % line.len()];
        }
    } else {
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes());
        h.finalize_xof().fill(&mut out);
    }
    out
}

async fn all_objects(b: &MemBackend) -> Vec<(String, Bytes)> {
    let mut out = Vec::new();
    for ObjectInfo { key, .. } in b.list("").await.unwrap() {
        let data = b.get(&key).await.unwrap();
        out.push((key, data));
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn blob_spec() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..3000),
        (0usize..(3 << 20), any::<u64>(), any::<bool>())
            .prop_map(|(len, seed, comp)| gen_data(len, seed, comp)),
    ]
}

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
    let repo = init(mem.clone()).await;
    let w = repo.writer(1);
    let (id, _) = w
        .add(BlobKind::Data, Bytes::from(gen_data(5000, 1, false)))
        .await
        .unwrap();
    w.finish().await.unwrap();
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
        let objects = all_objects(&mem).await;
        assert!(objects.iter().any(|(k, _)| k.starts_with("data/")));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_is_a_checkpoint() {
    let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
    let repo = init(mem.clone()).await;
    let w = repo.writer_with(2, 32 << 10, 100);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            w.add(BlobKind::Data, Bytes::from(gen_data(10_000, i, false)))
                .await
                .unwrap()
                .0,
        );
    }
    w.flush().await.unwrap();
    // Never finished: what was flushed is readable after a reopen.
    drop(w);
    let repo = reopen(mem).await.unwrap();
    for id in &ids {
        repo.read_blob(id).await.unwrap();
    }
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

/// Counts concurrent PUTs; optionally fails pack uploads.
#[derive(Debug, Default)]
struct Probe {
    inner: MemBackend,
    now: AtomicUsize,
    max: AtomicUsize,
    fail_packs: bool,
    /// When set, each PUT waits for a permit: uploads stall until released.
    gate: Option<tokio::sync::Semaphore>,
}

#[async_trait]
impl Backend for Probe {
    fn location(&self) -> String {
        "probe://".into()
    }
    async fn list(&self, prefix: &str) -> backend::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn get(&self, key: &str) -> backend::Result<Bytes> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> backend::Result<Bytes> {
        self.inner.get_range(key, offset, len).await
    }
    async fn put(&self, key: &str, data: Bytes) -> backend::Result<()> {
        if self.fail_packs && key.starts_with("data/") {
            return Err(BackendError::Permanent {
                location: self.location(),
                op: "put",
                key: key.into(),
                message: "denied".into(),
            });
        }
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(15)).await;
        let r = self.inner.put(key, data).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        r
    }
    async fn delete(&self, key: &str) -> backend::Result<()> {
        self.inner.delete(key).await
    }
    async fn head(&self, key: &str) -> backend::Result<Option<u64>> {
        self.inner.head(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_flight_never_exceed_channels() {
    let probe = Arc::new(Probe::default());
    let repo = init(probe.clone()).await;
    let channels = 3;
    let w = repo.writer_with(channels, 16 << 10, 4);
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let w = w.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    w.add(
                        BlobKind::Data,
                        Bytes::from(gen_data(6000, t * 1000 + i, false)),
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = w.finish().await.unwrap();
    assert!(stats.packs >= 30, "{stats:?}");
    let max = probe.max.load(Ordering::SeqCst);
    // `channels` packs, plus one index object that does not wait for them.
    assert!(max <= channels + 1, "{max} uploads at once");
    assert!(max >= 2, "uploads never overlapped");
}

#[tokio::test]
async fn upload_failure_surfaces_on_the_next_call() {
    let probe = Arc::new(Probe {
        fail_packs: true,
        ..Probe::default()
    });
    let repo = init(probe.clone()).await;
    let w = repo.writer_with(1, 1024, 1);
    let mut first_err = None;
    for i in 0..50 {
        if let Err(e) = w
            .add(BlobKind::Data, Bytes::from(gen_data(2000, i, false)))
            .await
        {
            first_err = Some(e);
            break;
        }
        tokio::task::yield_now().await;
    }
    let err = match first_err {
        Some(e) => e,
        None => w.flush().await.unwrap_err(),
    };
    assert!(matches!(err, RepoError::Backend(_)), "{err}");
    assert!(w.flush().await.is_err());
    assert!(w.finish().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_wait_while_uploads_stall() {
    let probe = Arc::new(Probe {
        gate: Some(tokio::sync::Semaphore::new(2)), // key object and config
        ..Probe::default()
    });
    let repo = init(probe.clone()).await;
    let target = 16 << 10;
    // Budget: (channels + 2) x target = 48 KiB of sealed data.
    let w = repo.writer_with(1, target, 1);
    let mut accepted = 0usize;
    let mut i = 0;
    let stalled = loop {
        let blob = Bytes::from(gen_data(10_000, i, false));
        i += 1;
        match tokio::time::timeout(Duration::from_millis(300), w.add(BlobKind::Data, blob)).await {
            Ok(r) => {
                r.unwrap();
                accepted += 10_000;
            }
            Err(_) => break true,
        }
        if accepted > 1 << 20 {
            break false;
        }
    };
    assert!(stalled, "adds never waited");
    assert!(accepted <= 3 * target + 10_100, "{accepted} bytes accepted");
    assert!(accepted >= 2 * target, "{accepted} bytes accepted");
    // Released, the pipeline drains and everything is stored.
    probe.gate.as_ref().unwrap().add_permits(1000);
    let stats = w.finish().await.unwrap();
    assert_eq!(stats.bytes_raw_new, accepted as u64);
}

/// The archiver spawns these futures, so they must be `Send`.
/// Checked at compile time; never called.
#[allow(dead_code)]
fn public_futures_are_send(repo: Repository, backend: Arc<dyn Backend>) {
    fn send<T: Send>(_: T) {}
    let w = repo.writer(1);
    let (s, c) = (pw(""), Compression::FAST);
    send(
        OpenOptions::new(backend.clone(), &s)
            .compression(c)
            .create(),
    );
    send(OpenOptions::new(backend.clone(), &s).compression(c).open());
    send(
        OpenOptions::new(backend, &s)
            .compression(c)
            .create_if_missing(true)
            .open(),
    );
    send(repo.add_key(&s));
    send(repo.remove_key(""));
    send(repo.read_blob(&BlobId([0; 32])));
    send(repo.save_snapshot(&SnapshotManifest::new("", 0, 1, "")));
    send(repo.list_snapshots());
    send(repo.complete_runs());
    send(repo.read_pack_header(&PackId([0; 32])));
    send(w.add(BlobKind::Data, Bytes::new()));
    send(w.flush());
    send(w.clone().finish());
    send(repo.clone());
    send(w);
}

/// `cargo test --release --lib repo::tests::throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run in release mode"]
async fn throughput_of_writer_add() {
    const TOTAL: usize = 200 << 20;
    const CHUNK: usize = 1 << 20;
    let data = Bytes::from(gen_data(TOTAL, 42, false));
    for (label, compression) in [
        ("zstd fast", Compression::FAST),
        ("none", Compression::None),
    ] {
        let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
        let repo = OpenOptions::new(mem, &pw(PW))
            .compression(compression)
            .key_params(params())
            .create()
            .await
            .unwrap();
        let w = repo.writer(4);
        let start = std::time::Instant::now();
        // Two producers, as an archiver with a chunker per file would have.
        let tasks: Vec<_> = (0..2)
            .map(|p| {
                let (w, data) = (w.clone(), data.clone());
                tokio::spawn(async move {
                    for off in (p * CHUNK..TOTAL).step_by(2 * CHUNK) {
                        w.add(BlobKind::Data, data.slice(off..off + CHUNK))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let stats = w.finish().await.unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{label}: {} MiB random in {secs:.2} s = {:.0} MiB/s ({} packs)",
            TOTAL >> 20,
            (TOTAL >> 20) as f64 / secs,
            stats.packs
        );
        let started = std::time::Instant::now();
        let ids: Vec<_> = repo.index_entries().map(|e| e.0).collect();
        for id in &ids {
            repo.read_blob(id).await.unwrap();
        }
        println!(
            "{label}: read back at {:.0} MiB/s",
            (TOTAL >> 20) as f64 / started.elapsed().as_secs_f64()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_buffer_checkpoints_the_index_without_a_flush() {
    // Without a checkpoint, a crash loses the index of every pack since
    // the last one: a rerun would upload them again.
    for (buffer, expect_index) in [(1u64, true), (64 * PACK_TARGET as u64, false)] {
        let mem = Arc::new(MemBackend::new());
        let repo = init(mem.clone()).await;
        repo.set_resume_buffer(buffer);
        let w = repo.writer(2);
        for i in 0..20u64 {
            w.add(BlobKind::Data, Bytes::from(gen_data(1 << 20, i, false)))
                .await
                .unwrap();
        }
        // One full pack is uploaded in the background; wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while mem.list(crate::repo::DATA_PREFIX).await.unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no pack uploaded");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let mut indexed = false;
        while std::time::Instant::now() < deadline && !indexed {
            indexed = !mem
                .list(crate::repo::INDEX_PREFIX)
                .await
                .unwrap()
                .is_empty();
            if !expect_index {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(indexed, expect_index, "resume buffer {buffer}");
        // A reopened repository (the rerun) knows the checkpointed blobs.
        if expect_index {
            let again = reopen(mem.clone()).await.unwrap();
            let first = repo.blob_id(&gen_data(1 << 20, 0, false));
            assert!(again.has_blob(&first));
        }
        drop(w);
    }
}

async fn count(mem: &MemBackend, prefix: &str) -> usize {
    mem.list(prefix).await.unwrap().len()
}

/// A trickle of small blobs never fills a pack: after a minute the open
/// pack is stored and indexed anyway, so a crash loses at most that much.
#[tokio::test(start_paused = true)]
async fn a_slowly_filling_pack_is_checkpointed_after_a_minute() {
    let mem = Arc::new(MemBackend::new());
    let repo = init(mem.clone()).await;
    let w = repo.writer_with(2, PACK_TARGET, 1000);
    let t0 = tokio::time::Instant::now();
    let a = Bytes::from(gen_data(1000, 1, false));
    let b = Bytes::from(gen_data(1000, 2, false));
    w.add(BlobKind::Data, a.clone()).await.unwrap();
    tokio::time::sleep_until(t0 + Duration::from_secs(30)).await;
    w.add(BlobKind::Data, b.clone()).await.unwrap();
    tokio::time::sleep_until(t0 + Duration::from_secs(59)).await;
    assert_eq!(count(&mem, DATA_PREFIX).await, 0, "too early");
    assert_eq!(count(&mem, INDEX_PREFIX).await, 0, "too early");
    tokio::time::sleep_until(t0 + Duration::from_secs(61)).await;
    assert_eq!(count(&mem, DATA_PREFIX).await, 1);
    assert_eq!(count(&mem, INDEX_PREFIX).await, 1);
    // The rerun after a crash knows both blobs: the later one went along.
    let again = reopen(mem.clone()).await.unwrap();
    assert!(again.has_blob(&repo.blob_id(&a)) && again.has_blob(&repo.blob_id(&b)));
    // Nothing new: no more checkpoints.
    tokio::time::sleep_until(t0 + Duration::from_secs(300)).await;
    assert_eq!(count(&mem, INDEX_PREFIX).await, 1);
    drop(w);
}

/// Full packs that trickle in below the resume buffer's pack count are
/// indexed a minute after their data arrived, not only at the end.
#[tokio::test(start_paused = true)]
async fn slowly_stored_packs_are_indexed_after_a_minute() {
    let mem = Arc::new(MemBackend::new());
    let repo = init(mem.clone()).await;
    let w = repo.writer_with(2, 64 << 10, 1000);
    let t0 = tokio::time::Instant::now();
    // Each blob fills a pack by itself.
    w.add(BlobKind::Data, Bytes::from(gen_data(100 << 10, 1, false)))
        .await
        .unwrap();
    tokio::time::sleep_until(t0 + Duration::from_secs(1)).await;
    assert_eq!(count(&mem, DATA_PREFIX).await, 1, "stored at once");
    tokio::time::sleep_until(t0 + Duration::from_secs(59)).await;
    assert_eq!(count(&mem, INDEX_PREFIX).await, 0, "too early");
    tokio::time::sleep_until(t0 + Duration::from_secs(61)).await;
    assert_eq!(count(&mem, INDEX_PREFIX).await, 1);

    tokio::time::sleep_until(t0 + Duration::from_secs(100)).await;
    w.add(BlobKind::Data, Bytes::from(gen_data(100 << 10, 2, false)))
        .await
        .unwrap();
    tokio::time::sleep_until(t0 + Duration::from_secs(159)).await;
    assert_eq!(count(&mem, DATA_PREFIX).await, 2);
    assert_eq!(count(&mem, INDEX_PREFIX).await, 1, "too early");
    tokio::time::sleep_until(t0 + Duration::from_secs(161)).await;
    assert_eq!(count(&mem, INDEX_PREFIX).await, 2);
    // The final flush has nothing left to do.
    let stats = w.finish().await.unwrap();
    assert_eq!(stats.packs, 2);
    assert_eq!(count(&mem, INDEX_PREFIX).await, 2);
}

/// A writer that keeps its packs coming is not cut short by the timer.
#[tokio::test(start_paused = true)]
async fn a_busy_writer_indexes_by_count_not_by_time() {
    let mem = Arc::new(MemBackend::new());
    let repo = init(mem.clone()).await;
    let w = repo.writer_with(2, 64 << 10, 2);
    for i in 0..20u64 {
        // A 40 KiB blob every 10 s: a pack every 20 s, an index every 40 s.
        w.add(BlobKind::Data, Bytes::from(gen_data(40 << 10, i, false)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let stats = w.finish().await.unwrap();
    assert_eq!(stats.packs, 10, "no pack was cut short");
}
