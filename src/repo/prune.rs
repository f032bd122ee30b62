//! `prune`: applies retention per plan, then removes data no snapshot
//! references, in two phases separated by a grace period.
//!
//! One prune run, holding the exclusive prune lock, does:
//!
//! 1. **Sweep** (phase 2 of earlier prunes): every mark older than the
//!    grace period, unless a writer that may use its packs is still in
//!    flight, is carried out: reachability is recomputed from all current
//!    snapshots, marked packs that a snapshot now needs are rescued (and
//!    re-indexed), the superseded index objects are deleted, then the
//!    packs, then the mark.
//! 2. **Forget**: retention decides which runs to keep; the manifests of
//!    the others are deleted.
//! 3. **Mark** (phase 1): reachability from the remaining snapshots; packs
//!    without a used blob are marked, partly used ones are rewritten
//!    (their used blobs copied into new packs) and marked, index objects
//!    listing marked packs are replaced, and a mark object records it all.
//!
//! The safety argument is in `docs/format.md`, "Pruning safety".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Retention;
use crate::repo::lock::{self, LockTiming, Mark, PruneLock, WRITER_MAX_AGE, age};
use crate::repo::walk::{self, Root};
use crate::repo::{
    BlobId, BlobKind, IndexEntry, IndexFile, PackId, RepoError, Repository, Run, SnapshotId,
};
use crate::summary::Report;

/// Writer markers this much younger than a mark still hold it back: covers
/// clock skew between machines and the time the mark took to store.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(10 * 60);
/// A mark whose put took longer than this is written again with a fresh
/// time, so `CLOCK_MARGIN` keeps its meaning.
const MARK_PUT_LIMIT: Duration = Duration::from_secs(60);
/// A partly used pack is rewritten when at least this fraction of it is
/// unused.
pub const REPACK_UNUSED: f64 = 0.10;
/// Packs per index object written by prune.
const PACKS_PER_INDEX_FILE: usize = 2000;

/// Everything prune needs besides the repository.
#[derive(Debug, Clone)]
pub struct Options {
    pub run_id: String,
    pub retention: Retention,
    /// Only runs of this plan are subject to retention (`STOW_PLAN` set).
    pub plan: Option<String>,
    /// Buckets of the hourly/daily/... rules are evaluated in this zone.
    pub timezone: TimeZone,
    pub grace: Duration,
    /// Writer markers older than this are stale.
    pub writer_max_age: Duration,
    /// Incomplete runs younger than this may be in flight and are kept.
    pub incomplete_min_age: Duration,
    pub clock_margin: Duration,
    pub lock: LockTiming,
    /// Fraction of unused bytes at which a partly used pack is rewritten.
    pub repack_unused: f64,
    pub channels: usize,
}

impl Options {
    pub fn new(run_id: impl Into<String>, retention: Retention, grace: Duration) -> Self {
        Self {
            run_id: run_id.into(),
            retention,
            plan: None,
            timezone: TimeZone::UTC,
            grace,
            writer_max_age: WRITER_MAX_AGE,
            incomplete_min_age: grace.max(WRITER_MAX_AGE),
            clock_margin: CLOCK_MARGIN,
            lock: LockTiming::default(),
            repack_unused: REPACK_UNUSED,
            channels: 2,
        }
    }
}

/// One prune run: sweep, forget, mark; under the prune lock.
pub async fn prune(
    repo: &Repository,
    opts: &Options,
    cancel: &CancellationToken,
) -> Result<Report, RepoError> {
    let lock = PruneLock::acquire(repo, &opts.run_id, opts.lock).await?;
    let mut report = Report::default();
    let mut details = Details::default();
    let result = async {
        sweep(repo, opts, &lock, &mut report, &mut details).await?;
        mover_results(repo, opts, &mut report).await?;
        checkpoints(repo, &mut report).await?;
        stop_if_cancelled(cancel)?;
        forget(repo, opts, &lock, &mut report, &mut details).await?;
        stop_if_cancelled(cancel)?;
        mark(repo, opts, &lock, &mut report, &mut details).await
    }
    .await;
    if let Err(e) = lock.release().await {
        warn!(error = %e, "cannot remove the prune lock; the next prune removes it once stale");
    }
    result?;
    report.details = serde_json::to_value(&details).expect("details serialise");
    Ok(report)
}

fn stop_if_cancelled(cancel: &CancellationToken) -> Result<(), RepoError> {
    if cancel.is_cancelled() {
        Err(RepoError::Cancelled)
    } else {
        Ok(())
    }
}

#[derive(Debug, Default, Serialize)]
struct Details {
    kept: Vec<RunVerdict>,
    removed: Vec<RunVerdict>,
    /// Marks whose deletion waits for writers: mark key → run ids.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    deferred: BTreeMap<String, Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mark: Option<String>,
}

#[derive(Debug, Serialize)]
struct RunVerdict {
    run_id: String,
    plan: String,
    time: Timestamp,
    complete: bool,
    reasons: Vec<&'static str>,
}

// Retention.

/// A run as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub run_id: String,
    pub plan: String,
    pub time: Timestamp,
    pub complete: bool,
}

impl Candidate {
    pub fn of_run(run: &Run) -> Self {
        Candidate {
            run_id: run.run_id.clone(),
            plan: run.parts[0].1.plan.clone(),
            time: run.time,
            complete: run.complete,
        }
    }
}

/// Keep (with the rules that keep it) or forget (with why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep(Vec<&'static str>),
    Forget(&'static str),
}

#[derive(Debug, Clone, Copy)]
enum Bucket {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

fn bucket_key(b: Bucket, t: Timestamp, tz: &TimeZone) -> i64 {
    let z = t.to_zoned(tz.clone());
    let (y, m, d, h) = (
        i64::from(z.year()),
        i64::from(z.month()),
        i64::from(z.day()),
        i64::from(z.hour()),
    );
    match b {
        Bucket::Hour => ((y * 100 + m) * 100 + d) * 100 + h,
        Bucket::Day => (y * 100 + m) * 100 + d,
        Bucket::Week => {
            let w = z.date().iso_week_date();
            i64::from(w.year()) * 100 + i64::from(w.week())
        }
        Bucket::Month => y * 100 + m,
        Bucket::Year => y,
    }
}

/// The retention policy, a pure function (restic's semantics), applied
/// to each plan separately:
///
/// - only complete runs count; each rule looks at them newest first;
/// - `last N` keeps the N newest;
/// - `hourly|daily|weekly|monthly|yearly N` keeps the newest run of each
///   of the last N distinct hours/days/ISO weeks/months/years (in `tz`)
///   that contain a run; a bucket without runs does not use up a count;
/// - a run is kept if any rule keeps it;
/// - an incomplete run is kept while younger than `incomplete_min_age` (it
///   may still be in flight) and forgotten after.
pub fn retention(
    runs: &[Candidate],
    policy: &Retention,
    tz: &TimeZone,
    now: Timestamp,
    incomplete_min_age: Duration,
) -> Vec<Verdict> {
    let mut verdicts = vec![Verdict::Forget("no rule keeps it"); runs.len()];
    let mut plans: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        if r.complete {
            plans.entry(r.plan.as_str()).or_default().push(i);
        } else if age(now, r.time) < incomplete_min_age {
            verdicts[i] = Verdict::Keep(vec!["incomplete, may be in flight"]);
        } else {
            verdicts[i] = Verdict::Forget("incomplete and too old to be in flight");
        }
    }
    let rules = [
        ("last", policy.last, None),
        ("hourly", policy.hourly, Some(Bucket::Hour)),
        ("daily", policy.daily, Some(Bucket::Day)),
        ("weekly", policy.weekly, Some(Bucket::Week)),
        ("monthly", policy.monthly, Some(Bucket::Month)),
        ("yearly", policy.yearly, Some(Bucket::Year)),
    ];
    for (_, mut idx) in plans {
        // Newest first; ties broken by run id so the result is stable.
        idx.sort_by(|&a, &b| (runs[b].time, &runs[b].run_id).cmp(&(runs[a].time, &runs[a].run_id)));
        let mut reasons: HashMap<usize, Vec<&'static str>> = HashMap::new();
        for (name, n, bucket) in rules {
            let Some(n) = n.filter(|n| *n > 0) else {
                continue;
            };
            let (mut count, mut last) = (0u32, None);
            for &i in &idx {
                if count >= n {
                    break;
                }
                let key = bucket.map(|b| bucket_key(b, runs[i].time, tz));
                if bucket.is_none() || key != last {
                    reasons.entry(i).or_default().push(name);
                    count += 1;
                    last = key;
                }
            }
        }
        for (i, r) in reasons {
            verdicts[i] = Verdict::Keep(r);
        }
    }
    verdicts
}

async fn forget(
    repo: &Repository,
    opts: &Options,
    lock: &PruneLock,
    report: &mut Report,
    details: &mut Details,
) -> Result<(), RepoError> {
    let runs = repo.complete_runs().await?;
    let subject: Vec<&Run> = runs
        .iter()
        .filter(|r| opts.plan.as_ref().is_none_or(|p| r.parts[0].1.plan == *p))
        .collect();
    let candidates: Vec<Candidate> = subject.iter().map(|r| Candidate::of_run(r)).collect();
    let verdicts = retention(
        &candidates,
        &opts.retention,
        &opts.timezone,
        Timestamp::now(),
        opts.incomplete_min_age,
    );
    report.count("runs_not_considered", (runs.len() - subject.len()) as u64);
    let mut doomed: Vec<SnapshotId> = Vec::new();
    for ((run, c), v) in subject.iter().zip(&candidates).zip(verdicts) {
        let (reasons, keep) = match v {
            Verdict::Keep(r) => (r, true),
            Verdict::Forget(r) => (vec![r], false),
        };
        let verdict = RunVerdict {
            run_id: c.run_id.clone(),
            plan: c.plan.clone(),
            time: c.time,
            complete: c.complete,
            reasons,
        };
        if keep {
            report.count("runs_kept", 1);
            report.count("snapshots_kept", run.parts.len() as u64);
            details.kept.push(verdict);
        } else {
            info!(run = %c.run_id, plan = %c.plan, time = %c.time, reason = verdict.reasons[0], "removing run");
            report.count("runs_removed", 1);
            report.count("snapshots_removed", run.parts.len() as u64);
            doomed.extend(run.parts.iter().map(|p| p.0));
            details.removed.push(verdict);
        }
    }
    if !doomed.is_empty() {
        lock.verify().await?;
        // Their writers are done; once the manifests are gone nothing
        // would show it.
        let removed: HashSet<&str> = details
            .removed
            .iter()
            .filter(|v| v.complete)
            .map(|v| v.run_id.as_str())
            .collect();
        for (key, marker) in lock::list_writer_markers(repo).await? {
            if marker.is_ok_and(|m| removed.contains(m.run_id.as_str())) {
                repo.backend().delete(&key).await?;
                report.count("writer_markers_removed", 1);
            }
        }
        futures::stream::iter(doomed)
            .map(|id| async move { repo.delete_snapshot(&id).await })
            .buffer_unordered(opts.channels)
            .try_collect::<Vec<()>>()
            .await?;
    }
    Ok(())
}

// The shared view of the repository both phases work from.

struct View {
    files: Vec<IndexFile>,
    /// Every stored pack and its size.
    data: HashMap<PackId, u64>,
    /// Entries of each indexed pack (union over index objects).
    entries: HashMap<PackId, Vec<(BlobId, IndexEntry)>>,
    /// Which index objects (positions in `files`) list each pack.
    listed_in: HashMap<PackId, Vec<usize>>,
    /// Every pack that lists each blob.
    locations: HashMap<BlobId, Vec<PackId>>,
    reachable: HashSet<BlobId>,
    snapshots: usize,
}

/// Reads the index (replacing the in-memory one), then lists the packs,
/// then the snapshots, then walks them. In this order: a pack indexed
/// after the index was read shows as unindexed, never the reverse.
async fn view(repo: &Repository, channels: usize) -> Result<View, RepoError> {
    let files = repo.reload_index().await?;
    let data = list_packs(repo).await?;
    let snapshots = repo.list_snapshots().await?;
    let roots: Vec<Root> = snapshots
        .iter()
        .flat_map(|(id, m)| Root::of_manifest(*id, m))
        .collect();
    let w = walk::walk(repo, roots, channels * 4).await;
    if let Some(first) = w.problems.first() {
        return Err(RepoError::refused(
            "prune",
            format!(
                "the repository has {} damaged or missing blob(s) reachable from snapshots, e.g. {first}; \
             prune refuses to decide what is unused; run check",
                w.problems.len()
            ),
        ));
    }
    let mut entries: HashMap<PackId, Vec<(BlobId, IndexEntry)>> = HashMap::new();
    let mut listed_in: HashMap<PackId, Vec<usize>> = HashMap::new();
    let mut locations: HashMap<BlobId, Vec<PackId>> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        for (pack, es) in &f.packs {
            let list = listed_in.entry(*pack).or_default();
            list.push(i);
            if list.len() > 1 {
                continue; // Same pack listed again: same entries.
            }
            for (b, _) in es {
                locations.entry(*b).or_default().push(*pack);
            }
            entries.insert(*pack, es.clone());
        }
    }
    let mut reachable = w.reachable;
    reachable.extend(restore_reports(repo).await?);
    Ok(View {
        files,
        data,
        entries,
        listed_in,
        locations,
        reachable,
        snapshots: snapshots.len(),
    })
}

/// Restore reports are leaf blobs named by `restores/<blob id>` pointers,
/// outside any snapshot; they are kept as long as their pointer exists.
async fn restore_reports(repo: &Repository) -> Result<Vec<BlobId>, RepoError> {
    let prefix = crate::repo::REPORT_PREFIX;
    Ok(repo
        .backend()
        .list(prefix)
        .await?
        .into_iter()
        .filter_map(|o| o.key[prefix.len()..].parse().ok())
        .collect())
}

async fn list_packs(repo: &Repository) -> Result<HashMap<PackId, u64>, RepoError> {
    let mut out = HashMap::new();
    for o in repo.backend().list(crate::repo::DATA_PREFIX).await? {
        match crate::repo::pack_id_from_key(&o.key) {
            Some(id) => {
                out.insert(id, o.size);
            }
            None => warn!(key = %o.key, "ignoring an object under data/ that is not a pack"),
        }
    }
    Ok(out)
}

/// Writer markers of runs that may still be writing. Markers of complete
/// runs (every part saved: their writers are done) and stale ones are
/// removed on the way, every prune, before retention can forget a run
/// and so hide that it completed.
async fn writers_in_flight(
    repo: &Repository,
    opts: &Options,
    report: &mut Report,
) -> Result<Vec<(String, Option<lock::WriterMarker>)>, RepoError> {
    let now = Timestamp::now();
    let markers = lock::list_writer_markers(repo).await?;
    if markers.is_empty() {
        return Ok(Vec::new());
    }
    let runs = repo.complete_runs().await?;
    let complete: HashSet<&str> = runs
        .iter()
        .filter(|r| r.complete)
        .map(|r| r.run_id.as_str())
        .collect();
    let mut live = Vec::new();
    for (key, marker) in markers {
        match marker {
            Ok(m) if age(now, m.time) > opts.writer_max_age => {
                warn!(%key, run = %m.run_id, since = %m.time, "removing a stale writer marker (its backup is presumed dead)");
                repo.backend().delete(&key).await?;
                report.count("writer_markers_removed", 1);
            }
            Ok(m) if complete.contains(m.run_id.as_str()) => {
                repo.backend().delete(&key).await?;
                report.count("writer_markers_removed", 1);
            }
            Ok(m) => live.push((key, Some(m))),
            Err(e) => {
                warn!(%key, error = %e, "unreadable writer marker counts as a writer in flight; delete it if no backup runs");
                live.push((key, None));
            }
        }
    }
    Ok(live)
}

// Phase 2.

/// Removes mover results whose run is complete (its manifest links the
/// trees) or older than a writer may run (its orchestrator is dead). An
/// unreadable one is left for a person to look at.
async fn mover_results(
    repo: &Repository,
    opts: &Options,
    report: &mut Report,
) -> Result<(), RepoError> {
    let results = repo.all_mover_results().await?;
    if results.is_empty() {
        return Ok(());
    }
    let now = Timestamp::now();
    let complete: HashSet<String> = repo
        .complete_runs()
        .await?
        .into_iter()
        .filter(|r| r.complete)
        .map(|r| r.run_id)
        .collect();
    for (key, r) in results {
        match r {
            Ok(m) if complete.contains(&m.run_id) || age(now, m.time) > opts.writer_max_age => {
                repo.delete_mover_result(&key).await?;
                report.count("mover_results_removed", 1);
            }
            Ok(_) => {}
            Err(e) => warn!(%key, error = %e, "unreadable mover result left in place"),
        }
    }
    Ok(())
}

/// Volume checkpoints are kept this long at most when no complete backup
/// supersedes them: past that they would only cost memory to a rerun.
const CHECKPOINT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Removes volume checkpoints that a complete backup of the same plan and
/// volume, saved after them, has made useless, and very old ones. Safe at
/// any time: a rerun takes from a checkpoint only blobs its index has.
async fn checkpoints(repo: &Repository, report: &mut Report) -> Result<(), RepoError> {
    let all = repo.all_checkpoints().await?;
    if all.is_empty() {
        return Ok(());
    }
    let now = Timestamp::now();
    let mut latest: HashMap<(String, String), Timestamp> = HashMap::new();
    for run in repo
        .complete_runs()
        .await?
        .into_iter()
        .filter(|r| r.complete)
    {
        for (_, m) in &run.parts {
            for volume in m.volumes.keys() {
                let t = latest
                    .entry((m.plan.clone(), volume.clone()))
                    .or_insert(run.time);
                *t = (*t).max(run.time);
            }
        }
    }
    for (key, h) in all {
        match h {
            Ok(h) => {
                let superseded = latest
                    .get(&(h.plan.clone(), h.volume.clone()))
                    .is_some_and(|t| *t > h.time);
                if superseded || age(now, h.time) > CHECKPOINT_MAX_AGE {
                    repo.delete_checkpoint(&key).await?;
                    report.count("checkpoints_removed", 1);
                }
            }
            Err(e) => warn!(%key, error = %e, "unreadable checkpoint left in place"),
        }
    }
    Ok(())
}

async fn sweep(
    repo: &Repository,
    opts: &Options,
    lock: &PruneLock,
    report: &mut Report,
    details: &mut Details,
) -> Result<(), RepoError> {
    let now = Timestamp::now();
    let live = writers_in_flight(repo, opts, report).await?;
    let marks = lock::list_marks(repo).await?;
    if marks.is_empty() {
        return Ok(());
    }

    let orphan_age = opts.grace.max(opts.writer_max_age);
    let mut due: Vec<(String, Mark)> = Vec::new();
    for (key, mark) in marks {
        let mark_age = age(now, mark.time);
        // Orphans wait longer: until their writer is surely gone.
        let actionable = !mark.packs.is_empty()
            || !mark.indexes.is_empty()
            || (!mark.orphans.is_empty() && mark_age >= orphan_age);
        if mark_age < opts.grace || !actionable {
            report.count("marks_waiting", 1);
            continue;
        }
        let limit = mark.time + opts.clock_margin;
        let blockers: Vec<String> = live
            .iter()
            .filter(|(_, m)| m.as_ref().is_none_or(|m| m.time < limit))
            .map(|(k, m)| m.as_ref().map_or_else(|| k.clone(), |m| m.run_id.clone()))
            .collect();
        if blockers.is_empty() {
            due.push((key, mark));
        } else {
            warn!(mark = %key, writers = ?blockers, "deferring deletion: backups that started before the mark are still running");
            report.count("marks_deferred", 1);
            details.deferred.insert(key, blockers);
        }
    }
    if due.is_empty() {
        return Ok(());
    }

    lock.verify().await?;
    let v = view(repo, opts.channels).await?;
    let deleting_index: HashSet<&str> = due
        .iter()
        .flat_map(|(_, m)| m.indexes.iter().map(String::as_str))
        .collect();
    let mut doomed: HashSet<PackId> = due
        .iter()
        .flat_map(|(_, m)| m.packs.iter().copied())
        .filter(|p| v.data.contains_key(p))
        .collect();
    // Orphans (never indexed) go once their writer is surely gone.
    let mut waiting_orphans: HashMap<&str, Vec<PackId>> = HashMap::new();
    for (key, m) in &due {
        for o in &m.orphans {
            if v.listed_in.contains_key(o) || !v.data.contains_key(o) {
                continue; // Indexed after all, or already gone.
            }
            if age(now, m.time) >= orphan_age {
                doomed.insert(*o);
            } else {
                waiting_orphans.entry(key.as_str()).or_default().push(*o);
            }
        }
    }

    // Rescue: a marked pack holding a blob some snapshot needs, with no
    // other copy in a pack that stays, stays itself.
    let survives = |p: &PackId, doomed: &HashSet<PackId>| {
        !doomed.contains(p) && v.data.contains_key(p) && v.listed_in.contains_key(p)
    };
    let mut rescued = 0u64;
    let mut candidates: Vec<PackId> = doomed.iter().copied().collect();
    candidates.sort();
    for p in candidates {
        let Some(es) = v.entries.get(&p) else {
            continue;
        };
        // Still listed by an index object that stays (one superseded by a
        // mark that is not due yet): deleting it would leave a dangling
        // entry, so it waits to be marked again.
        let listed_on = v.listed_in[&p]
            .iter()
            .any(|f| !deleting_index.contains(v.files[*f].key.as_str()));
        if listed_on {
            warn!(pack = %p, "keeping a marked pack that an index object which stays still lists");
            doomed.remove(&p);
            rescued += 1;
            continue;
        }
        let needed = es.iter().any(|(b, _)| {
            v.reachable.contains(b)
                && !v.locations[b]
                    .iter()
                    .any(|q| *q != p && survives(q, &doomed))
        });
        if needed {
            info!(pack = %p, "rescuing a marked pack: a snapshot saved since the mark uses it");
            doomed.remove(&p);
            rescued += 1;
        }
    }

    // Every pack that stays keeps an index entry.
    let mut reindex: Vec<(PackId, Vec<(BlobId, IndexEntry)>)> = Vec::new();
    for (p, files) in &v.listed_in {
        if !doomed.contains(p)
            && v.data.contains_key(p)
            && files
                .iter()
                .all(|f| deleting_index.contains(v.files[*f].key.as_str()))
        {
            reindex.push((*p, v.entries[p].clone()));
        }
    }
    lock.verify().await?;
    write_index_files(repo, reindex, report).await?;

    // Index objects first (new readers stop seeing the packs), then packs.
    lock.verify().await?;
    let sizes: HashMap<&str, u64> = v.files.iter().map(|f| (f.key.as_str(), f.size)).collect();
    for key in &deleting_index {
        repo.backend().delete(key).await?;
        report.count("index_files_deleted", 1);
        report.add_bytes("freed", sizes.get(key).copied().unwrap_or(0));
    }
    let freed: u64 = doomed.iter().map(|p| v.data[p]).sum();
    futures::stream::iter(doomed.iter().copied())
        .map(|p| async move { repo.backend().delete(&crate::repo::pack_key(&p)).await })
        .buffer_unordered(opts.channels)
        .try_collect::<Vec<()>>()
        .await?;
    report.count("packs_deleted", doomed.len() as u64);
    report.count("packs_rescued", rescued);
    report.add_bytes("freed", freed);
    info!(
        packs = doomed.len(),
        index_files = deleting_index.len(),
        rescued,
        bytes = freed,
        "deleted marked data"
    );

    // Done with these marks; orphans that must wait more move to a new mark.
    for (key, m) in &due {
        if let Some(orphans) = waiting_orphans.remove(key.as_str()) {
            let rest = Mark {
                version: m.version,
                time: m.time,
                run_id: m.run_id.clone(),
                packs: Vec::new(),
                indexes: Vec::new(),
                orphans,
            };
            lock::put_mark(repo, &rest).await?;
        }
        repo.backend().delete(key).await?;
        report.count("marks_done", 1);
    }
    Ok(())
}

async fn write_index_files(
    repo: &Repository,
    mut packs: Vec<(PackId, Vec<(BlobId, IndexEntry)>)>,
    report: &mut Report,
) -> Result<(), RepoError> {
    packs.sort_by_key(|p| p.0);
    for chunk in packs.chunks(PACKS_PER_INDEX_FILE) {
        repo.write_index_file(chunk).await?;
        report.count("packs_reindexed", chunk.len() as u64);
    }
    Ok(())
}

// Phase 1.

async fn mark(
    repo: &Repository,
    opts: &Options,
    lock: &PruneLock,
    report: &mut Report,
    details: &mut Details,
) -> Result<(), RepoError> {
    let pending = lock::list_marks(repo).await?;
    let pending_packs: HashSet<PackId> = pending
        .iter()
        .flat_map(|(_, m)| m.packs.iter().chain(&m.orphans).copied())
        .collect();
    let pending_index: HashSet<&str> = pending
        .iter()
        .flat_map(|(_, m)| m.indexes.iter().map(String::as_str))
        .collect();
    let v = view(repo, opts.channels).await?;
    report.count("snapshots", v.snapshots as u64);
    report.count("blobs_reachable", v.reachable.len() as u64);

    let mut unused: Vec<PackId> = Vec::new();
    let mut repack: Vec<PackId> = Vec::new();
    for (p, es) in &v.entries {
        if pending_packs.contains(p) {
            continue;
        }
        let Some(&size) = v.data.get(p) else {
            warn!(pack = %p, "an indexed pack is missing; run check");
            report.count("packs_missing", 1);
            continue;
        };
        let waste: u64 = es
            .iter()
            .filter(|(b, _)| !v.reachable.contains(b))
            .map(|(_, e)| e.length)
            .sum();
        let used = es.iter().any(|(b, _)| v.reachable.contains(b));
        if !used {
            unused.push(*p);
        } else if waste > 0 && waste as f64 >= opts.repack_unused * size as f64 {
            repack.push(*p);
        }
    }
    unused.sort();
    repack.sort();
    let doomed: HashSet<PackId> = unused.iter().chain(&repack).copied().collect();
    let kept =
        |p: &PackId| !doomed.contains(p) && !pending_packs.contains(p) && v.data.contains_key(p);

    // Rewrite partly used packs: each used blob without a copy in a kept
    // pack is copied once.
    if !repack.is_empty() {
        lock.verify().await?;
        let mut assigned: HashSet<BlobId> = HashSet::new();
        let mut jobs: Vec<(PackId, Vec<(BlobId, IndexEntry)>)> = Vec::new();
        for p in &repack {
            let blobs: Vec<(BlobId, IndexEntry)> = v.entries[p]
                .iter()
                .filter(|(b, _)| {
                    v.reachable.contains(b)
                        && !v.locations[b].iter().any(kept)
                        && assigned.insert(*b)
                })
                .copied()
                .collect();
            jobs.push((*p, blobs));
        }
        let writer = repo.repack_writer(opts.channels);
        let mut packs = futures::stream::iter(jobs)
            .map(|(p, blobs)| async move { read_used(repo, p, blobs).await })
            .buffered(2);
        let mut copied = 0u64;
        while let Some(blobs) = packs.try_next().await? {
            for (id, kind, data) in blobs {
                let (stored, _) = writer.add(kind, data).await?;
                if stored != id {
                    return Err(RepoError::refused(
                        "prune",
                        format!("blob {id} got id {stored} when rewritten; refusing to continue"),
                    ));
                }
                copied += 1;
            }
        }
        let stats = writer.finish().await?;
        report.count("packs_repacked", repack.len() as u64);
        report.count("blobs_repacked", copied);
        report.add_bytes("repacked", stats.bytes_stored);
    }

    // Index objects that list a marked pack are replaced: packs they list
    // that stay are listed again in new ones.
    let superseded: Vec<usize> = v
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            !pending_index.contains(f.key.as_str())
                && f.packs.iter().any(|(p, _)| doomed.contains(p))
        })
        .map(|(i, _)| i)
        .collect();
    let superseded_set: HashSet<usize> = superseded.iter().copied().collect();
    let mut reindex: Vec<(PackId, Vec<(BlobId, IndexEntry)>)> = Vec::new();
    let mut seen: HashSet<PackId> = HashSet::new();
    for &i in &superseded {
        for (p, _) in &v.files[i].packs {
            if doomed.contains(p) || pending_packs.contains(p) || !seen.insert(*p) {
                continue;
            }
            let elsewhere = v.listed_in[p].iter().any(|f| {
                !superseded_set.contains(f) && !pending_index.contains(v.files[*f].key.as_str())
            });
            if !elsewhere {
                reindex.push((*p, v.entries[p].clone()));
            }
        }
    }
    if !reindex.is_empty() {
        lock.verify().await?;
        write_index_files(repo, reindex, report).await?;
    }

    // Packs no index listed when we read it: maybe a writer in flight,
    // maybe a crash. Recorded, and deleted only much later (see sweep).
    let mut orphans: Vec<PackId> = v
        .data
        .keys()
        .filter(|p| !v.listed_in.contains_key(p) && !pending_packs.contains(p))
        .copied()
        .collect();
    orphans.sort();

    let mut packs: Vec<PackId> = doomed.iter().copied().collect();
    packs.sort();
    let marked_bytes: u64 = packs.iter().map(|p| v.data[p]).sum();
    let mut indexes: Vec<String> = superseded.iter().map(|&i| v.files[i].key.clone()).collect();
    indexes.sort();
    let mut m = Mark {
        version: 1,
        time: Timestamp::now(),
        run_id: opts.run_id.clone(),
        packs,
        indexes,
        orphans,
    };
    report.count("packs_marked", m.packs.len() as u64);
    report.count("packs_unused", unused.len() as u64);
    report.count("orphans_marked", m.orphans.len() as u64);
    report.add_bytes("marked", marked_bytes);
    if m.is_empty() {
        return Ok(());
    }
    lock.verify().await?;
    for attempt in 0.. {
        m.time = Timestamp::now();
        let key = lock::put_mark(repo, &m).await?;
        if age(Timestamp::now(), m.time) <= MARK_PUT_LIMIT {
            info!(mark = %key, packs = m.packs.len(), orphans = m.orphans.len(), index_files = m.indexes.len(), "marked data for deletion after the grace period");
            details.mark = Some(key);
            break;
        }
        repo.backend().delete(&key).await?;
        if attempt >= 2 {
            return Err(RepoError::refused(
                "prune",
                "storing the prune mark keeps taking over a minute; nothing was marked",
            ));
        }
    }
    Ok(())
}

/// The used blobs of one pack, read with one GET and verified.
async fn read_used(
    repo: &Repository,
    pack: PackId,
    blobs: Vec<(BlobId, IndexEntry)>,
) -> Result<Vec<(BlobId, BlobKind, Bytes)>, RepoError> {
    if blobs.is_empty() {
        return Ok(Vec::new());
    }
    let bytes = repo.read_pack(&pack).await?;
    let r = repo.clone();
    let out = repo
        .cpu("opening a pack", move || {
            blobs
                .iter()
                .map(|(id, e)| Ok((*id, e.kind, r.open_pack_blob(id, e, &bytes)?)))
                .collect::<Result<Vec<_>, crate::repo::RepoError>>()
        })
        .await??;
    Ok(out)
}

#[cfg(test)]
mod tests;
