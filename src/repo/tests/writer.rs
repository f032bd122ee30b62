//! The writer: uploads, back-pressure and index checkpoints.

use super::*;

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
