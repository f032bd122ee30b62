//! Adopting packs that an interrupted writer stored but never indexed.

use std::collections::HashSet;

use super::*;
use crate::repo::lock::{self, Mark};
use crate::testutil;

const BLOBS: u64 = 12;

/// A writer that dies after its packs are stored, before any index object
/// lists them: small packs, and an index only every 1000 packs. Returns the
/// blobs it added and the packs it left.
async fn dead_writer(mem: &Arc<MemBackend>, repo: &Repository) -> (Vec<Bytes>, Vec<PackId>) {
    repo.announce_writer("dead-run").await.unwrap();
    let w = repo.writer_with(2, 64 << 10, 1000);
    let mut blobs = Vec::new();
    for i in 0..BLOBS {
        let data = Bytes::from(gen_data(50 << 10, i, false));
        w.add(BlobKind::Data, data.clone()).await.unwrap();
        blobs.push(data);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // 12 blobs of 50 KiB in packs of 64 KiB: 6 packs stored, the 7th open.
    while packs_stored(mem).await.len() < 6 {
        assert!(std::time::Instant::now() < deadline, "packs not stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(w);
    assert!(
        mem.list(INDEX_PREFIX).await.unwrap().is_empty(),
        "the dead writer indexed nothing"
    );
    (blobs, packs_stored(mem).await)
}

async fn packs_stored(mem: &MemBackend) -> Vec<PackId> {
    mem.list(DATA_PREFIX)
        .await
        .unwrap()
        .iter()
        .filter_map(|o| pack_id_from_key(&o.key))
        .collect()
}

/// Adds `blobs` through a fresh writer; the count of those stored anew.
async fn store_again(repo: &Repository, blobs: &[Bytes]) -> u64 {
    let w = repo.writer(1);
    for b in blobs {
        w.add(BlobKind::Data, b.clone()).await.unwrap();
    }
    w.finish().await.unwrap().blobs_new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_adopts_what_a_dead_writer_stored_and_uploads_none_of_it_again() {
    let (mem, repo) = testutil::mem().await;
    let (blobs, left) = dead_writer(&mem, &repo).await;

    let rerun = testutil::open(mem.clone()).await;
    rerun.announce_writer("rerun").await.unwrap();
    let adopted = rerun.adopt_orphans().await.unwrap();
    assert_eq!(adopted.packs, left.len(), "{adopted:?}");
    assert_eq!(adopted.skipped, 0);
    assert!(adopted.bytes > 6 * (50 << 10), "{adopted:?}");
    // Each stored blob is reused; only the open pack's are stored anew.
    let stored_before: usize = {
        let mut n = 0;
        for p in &left {
            n += rerun.read_pack_header(p).await.unwrap().len();
        }
        n
    };
    let new = store_again(&rerun, &blobs).await;
    assert_eq!(
        new,
        BLOBS - stored_before as u64,
        "{stored_before} were stored"
    );

    // The adoption is stored: a later reader finds the packs indexed.
    let later = testutil::open(mem.clone()).await;
    let indexed: HashSet<PackId> = later.packs().into_iter().collect();
    assert!(left.iter().all(|p| indexed.contains(p)));
    let r = crate::repo::check::check(
        &later,
        &crate::repo::check::Options {
            read_data: Some(crate::config::ReadData::All),
            channels: 2,
        },
    )
    .await
    .unwrap();
    assert_eq!(r.counts["packs_unindexed"], 0, "{:?}", r.counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_listed_when_no_other_writer_is_announced() {
    let (mem, repo) = testutil::mem().await;
    let (_, left) = dead_writer(&mem, &repo).await;
    // Its marker removed (as prune does for stale ones): the orphans stay
    // for prune, and the normal run pays one listing of markers only.
    for o in mem.list(lock::WRITER_PREFIX).await.unwrap() {
        mem.delete(&o.key).await.unwrap();
    }
    let rerun = testutil::open(mem.clone()).await;
    rerun.announce_writer("rerun").await.unwrap();
    assert_eq!(rerun.adopt_orphans().await.unwrap(), Adopted::default());
    assert!(!left.is_empty());
    assert!(rerun.packs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_a_prune_marked_and_junk_are_not_adopted() {
    let (mem, repo) = testutil::mem().await;
    let (_, left) = dead_writer(&mem, &repo).await;
    // A pending prune mark lists the first orphan: prune will delete it.
    let mark = Mark {
        version: 1,
        time: jiff::Timestamp::now(),
        run_id: "prune-1".into(),
        packs: Vec::new(),
        indexes: Vec::new(),
        orphans: vec![left[0]],
    };
    lock::put_mark(&repo, &mark).await.unwrap();
    // And an object named like a pack that no key sealed.
    let junk = gen_data(1000, 99, false);
    let junk_id = PackId(*blake3::hash(&junk).as_bytes());
    mem.put(&pack::pack_key(&junk_id), Bytes::from(junk))
        .await
        .unwrap();

    let rerun = testutil::open(mem.clone()).await;
    rerun.announce_writer("rerun").await.unwrap();
    let adopted = rerun.adopt_orphans().await.unwrap();
    assert_eq!(adopted.packs, left.len() - 1, "{adopted:?}");
    assert_eq!(adopted.skipped, 1, "the junk pack: {adopted:?}");
    let indexed: HashSet<PackId> = rerun.packs().into_iter().collect();
    assert!(!indexed.contains(&left[0]), "a marked pack was adopted");
    assert!(!indexed.contains(&junk_id), "junk was adopted");
    assert!(left[1..].iter().all(|p| indexed.contains(p)));
}
