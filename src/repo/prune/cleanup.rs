//! Clean-up of mover results and volume checkpoints, which live outside
//! snapshots.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jiff::Timestamp;
use tracing::warn;

use super::*;
use crate::repo::lock::{PruneLock, age};
use crate::repo::{RepoError, Repository};
use crate::summary::Report;

/// Removes mover results whose run is complete (its manifest links the
/// trees) or older than a writer may run (its orchestrator is dead). An
/// unreadable one is left for a person to look at.
pub(super) async fn mover_results(
    repo: &Repository,
    opts: &Options,
    lock: &PruneLock,
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
                lock.check()?;
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
pub(super) const CHECKPOINT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Removes volume checkpoints that a complete backup of the same plan and
/// volume, saved after them, has made useless, and very old ones. Safe at
/// any time: a rerun takes from a checkpoint only blobs its index has.
pub(super) async fn checkpoints(
    repo: &Repository,
    lock: &PruneLock,
    report: &mut Report,
) -> Result<(), RepoError> {
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
                    lock.check()?;
                    repo.delete_checkpoint(&key).await?;
                    report.count("checkpoints_removed", 1);
                }
            }
            Err(e) => warn!(%key, error = %e, "unreadable checkpoint left in place"),
        }
    }
    Ok(())
}
