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

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Retention;
use crate::repo::lock::{Ignored, LockTiming, PruneLock, WRITER_MAX_AGE};
use crate::repo::{RepoError, Repository};
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
    /// Id of this prune run, recorded in its lock and marks.
    pub run_id: String,
    /// The rules deciding which runs to keep.
    pub retention: Retention,
    /// Only runs of this plan are subject to retention (`STOW_PLAN` set).
    pub plan: Option<String>,
    /// Buckets of the hourly/daily/... rules are evaluated in this zone.
    pub timezone: TimeZone,
    /// How long a mark waits before a later prune deletes what it marks.
    pub grace: Duration,
    /// Writer markers older than this are stale.
    pub writer_max_age: Duration,
    /// Incomplete runs younger than this may be in flight and are kept.
    pub incomplete_min_age: Duration,
    /// Writer markers up to this much younger than a mark still defer its
    /// deletion ([`CLOCK_MARGIN`]).
    pub clock_margin: Duration,
    /// Timing of the prune lock.
    pub lock: LockTiming,
    /// Fraction of unused bytes at which a partly used pack is rewritten.
    pub repack_unused: f64,
    /// How many objects are read or deleted at once.
    pub channels: usize,
}

impl Options {
    /// Defaults for everything but the run id, retention and grace period:
    /// all plans, UTC, two channels.
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
    report.count("prune_locks_ignored", lock.ignored().len() as u64);
    details.ignored.extend(lock.ignored().iter().cloned());
    let result = async {
        sweep(repo, opts, &lock, &mut report, &mut details).await?;
        mover_results(repo, opts, &lock, &mut report).await?;
        checkpoints(repo, &lock, &mut report).await?;
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
    /// Coordination objects that do not open (junk, forged, or an older
    /// version's plaintext marks): reported, never trusted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ignored: Vec<Ignored>,
}

#[derive(Debug, Serialize)]
struct RunVerdict {
    run_id: String,
    plan: String,
    time: Timestamp,
    complete: bool,
    reasons: Vec<&'static str>,
}

mod cleanup;
mod mark;
mod retention;
mod sweep;
mod view;

use cleanup::{checkpoints, mover_results};
use mark::mark;
use retention::forget;
pub use retention::{Candidate, Verdict, retention};
use sweep::{sweep, write_index_files};
use view::{view, writers_in_flight};

#[cfg(test)]
mod tests;
