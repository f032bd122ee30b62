use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::repo::SnapshotManifest;
use crate::repo::backend::{Backend, MemBackend};
use crate::repo::check;
use crate::repo::fixture::{self, Files};
use crate::repo::lock::{LockInfo, PRUNE_LOCK_PREFIX, WRITER_PREFIX};
use crate::testutil::{self, files, t, writer};

// Retention, as a pure function.

fn c(run: &str, plan: &str, time: &str, complete: bool) -> Candidate {
    Candidate {
        run_id: run.into(),
        plan: plan.into(),
        time: t(time),
        complete,
    }
}

fn policy(f: impl FnOnce(&mut Retention)) -> Retention {
    let mut r = Retention::default();
    f(&mut r);
    r
}

/// Run ids kept, in input order.
fn kept(runs: &[Candidate], p: &Retention, tz: &str, now: &str) -> Vec<String> {
    let tz = TimeZone::get(tz).unwrap();
    retention(runs, p, &tz, t(now), Duration::from_secs(24 * 3600))
        .iter()
        .zip(runs)
        .filter(|(v, _)| matches!(v, Verdict::Keep(_)))
        .map(|(_, r)| r.run_id.clone())
        .collect()
}

const NOW: &str = "2026-06-30T00:00:00Z";

#[test]
fn retention_table() {
    // Daily history with gaps and several runs on some days.
    let runs = vec![
        c("d1a", "p", "2026-06-01T01:00:00Z", true),
        c("d1b", "p", "2026-06-01T23:00:00Z", true),
        c("d2", "p", "2026-06-02T12:00:00Z", true),
        c("d5a", "p", "2026-06-05T08:00:00Z", true),
        c("d5b", "p", "2026-06-05T09:30:00Z", true),
        c("d5c", "p", "2026-06-05T09:45:00Z", true),
        c("d6", "p", "2026-06-06T00:00:00Z", true),
    ];
    type Case = (&'static str, fn(&mut Retention), &'static [&'static str]);
    let cases: &[Case] = &[
        ("last 3", |r| r.last = Some(3), &["d5b", "d5c", "d6"]),
        ("last 0 keeps nothing", |r| r.last = Some(0), &[]),
        (
            "last more than there are",
            |r| r.last = Some(50),
            &["d1a", "d1b", "d2", "d5a", "d5b", "d5c", "d6"],
        ),
        // Newest of each of the last 3 days that have runs; gaps cost nothing.
        ("daily 3", |r| r.daily = Some(3), &["d2", "d5c", "d6"]),
        (
            "daily 10",
            |r| r.daily = Some(10),
            &["d1b", "d2", "d5c", "d6"],
        ),
        // 09:30 and 09:45 share an hour.
        ("hourly 3", |r| r.hourly = Some(3), &["d5a", "d5c", "d6"]),
        // ISO weeks: Mon 1 Jun .. Sun 7 Jun 2026 is one week.
        ("weekly 2", |r| r.weekly = Some(2), &["d6"]),
        ("monthly 1", |r| r.monthly = Some(1), &["d6"]),
        ("yearly 5", |r| r.yearly = Some(5), &["d6"]),
        // Rules add up.
        (
            "last 1 + daily 2",
            |r| {
                r.last = Some(1);
                r.daily = Some(2);
            },
            &["d5c", "d6"],
        ),
        (
            "last 2 + daily 4",
            |r| {
                r.last = Some(2);
                r.daily = Some(4);
            },
            &["d1b", "d2", "d5c", "d6"],
        ),
    ];
    for (name, f, want) in cases {
        let p = policy(f);
        assert_eq!(kept(&runs, &p, "UTC", NOW), *want, "{name}");
    }
}

#[test]
fn retention_weeks_months_years() {
    let runs = vec![
        c("sun", "p", "2026-01-04T12:00:00Z", true), // ISO week 1 of 2026
        c("mon", "p", "2026-01-05T12:00:00Z", true), // ISO week 2
        c("tue", "p", "2026-01-06T12:00:00Z", true), // ISO week 2
        c("dec", "p", "2025-12-31T12:00:00Z", true), // ISO week 1 of 2026 too
        c("nov", "p", "2025-11-15T12:00:00Z", true),
        c("y24", "p", "2024-07-01T12:00:00Z", true),
    ];
    let k = |f: fn(&mut Retention)| kept(&runs, &policy(f), "UTC", NOW);
    assert_eq!(k(|r| r.weekly = Some(2)), ["sun", "tue"]);
    assert_eq!(k(|r| r.weekly = Some(3)), ["sun", "tue", "nov"]);
    assert_eq!(k(|r| r.monthly = Some(3)), ["tue", "dec", "nov"]);
    assert_eq!(k(|r| r.yearly = Some(3)), ["tue", "dec", "y24"]);
}

#[test]
fn retention_buckets_use_the_time_zone() {
    // 23:30 UTC on the 1st is 00:30 on the 2nd in Berlin (UTC+1 in January).
    let runs = vec![
        c("a", "p", "2026-01-01T23:30:00Z", true),
        c("b", "p", "2026-01-02T00:30:00Z", true),
    ];
    let p = policy(|r| r.daily = Some(5));
    assert_eq!(kept(&runs, &p, "UTC", NOW), ["a", "b"]);
    assert_eq!(kept(&runs, &p, "Europe/Berlin", NOW), ["b"]);
}

#[test]
fn retention_is_per_plan_and_per_run() {
    let runs = vec![
        c("n1", "nightly", "2026-06-01T00:00:00Z", true),
        c("n2", "nightly", "2026-06-02T00:00:00Z", true),
        c("w1", "weekly", "2026-05-01T00:00:00Z", true),
        c("w2", "weekly", "2026-05-08T00:00:00Z", true),
    ];
    assert_eq!(
        kept(&runs, &policy(|r| r.last = Some(1)), "UTC", NOW),
        ["n2", "w2"]
    );
}

#[test]
fn incomplete_runs_wait_then_go_and_never_count() {
    let runs = vec![
        c("old-done", "p", "2026-06-01T00:00:00Z", true),
        c("old-partial", "p", "2026-06-02T00:00:00Z", false),
        c("young-partial", "p", "2026-06-29T12:00:00Z", false),
    ];
    let tz = TimeZone::UTC;
    let v = retention(
        &runs,
        &policy(|r| r.last = Some(1)),
        &tz,
        t(NOW),
        Duration::from_secs(24 * 3600),
    );
    assert_eq!(
        v[0],
        Verdict::Keep(vec!["last"]),
        "incomplete runs do not use up keep-last"
    );
    assert!(matches!(v[1], Verdict::Forget(r) if r.contains("incomplete")));
    assert!(matches!(&v[2], Verdict::Keep(r) if r[0].contains("in flight")));
    // Reasons are listed per rule; ties in time are broken by run id.
    let runs = vec![
        c("a", "p", "2026-06-01T00:00:00Z", true),
        c("b", "p", "2026-06-01T00:00:00Z", true),
    ];
    let v = retention(
        &runs,
        &policy(|r| {
            r.last = Some(1);
            r.daily = Some(1);
            r.yearly = Some(1);
        }),
        &tz,
        t(NOW),
        Duration::ZERO,
    );
    assert_eq!(v[0], Verdict::Forget("no rule keeps it"));
    assert_eq!(v[1], Verdict::Keep(vec!["last", "daily", "yearly"]));
}

// The prune engine.

fn opts(run: &str, f: impl FnOnce(&mut Retention)) -> Options {
    let mut o = Options::new(run, policy(f), Duration::from_millis(300));
    o.incomplete_min_age = Duration::from_secs(3600);
    o
}

fn never() -> CancellationToken {
    CancellationToken::new()
}

async fn check_all(repo: &Repository) -> Report {
    let r = check::check(
        repo,
        &check::Options {
            read_data: Some(crate::config::ReadData::All),
            channels: 2,
        },
    )
    .await
    .unwrap();
    assert!(r.errors.is_empty(), "check: {:?}", r.errors);
    r
}

async fn objects(mem: &MemBackend, prefix: &str) -> usize {
    mem.list(prefix).await.unwrap().len()
}

/// Four daily runs: each has its own files plus a shared set.
async fn four_runs(repo: &Repository) -> Vec<(SnapshotId, Files)> {
    let shared = files(100, 3, 50 << 10);
    let mut out = Vec::new();
    for i in 0..4u64 {
        // Backups announce themselves; their markers must not hold back a
        // prune once the run is complete, even after it is forgotten.
        repo.announce_writer(&format!("run-{i}")).await.unwrap();
        let w = writer(repo);
        let mut f = shared.clone();
        f.extend(files(i + 1, 3, 60 << 10));
        let time = t(&format!("2026-01-0{}T03:00:00Z", i + 1));
        let id = fixture::save_part(repo, &w, &format!("run-{i}"), 0, 1, "daily", time, &f)
            .await
            .unwrap();
        w.finish().await.unwrap();
        out.push((id, f));
    }
    out
}

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

fn sorted(f: &Files) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = f
        .iter()
        .map(|(p, d)| (p.clone(), blake3::hash(d).to_hex().to_string()))
        .collect();
    f.sort();
    f
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
    let first: LockInfo = serde_json::from_slice(&mem.get(lock.key()).await.unwrap()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later: LockInfo = serde_json::from_slice(&mem.get(lock.key()).await.unwrap()).unwrap();
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

#[allow(dead_code)]
fn _assert_send(repo: Repository, o: Options, c: CancellationToken) {
    fn send<T: Send>(_: T) {}
    send(async move { prune(&repo, &o, &c).await });
    let _ = Arc::new(0);
}

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
