//! `copy`: replicates complete runs to a second repository
//! (`STOW_COPY_TO_REPOSITORY`), which has its own password and its own
//! encryption key.
//!
//! Blob ids are keyed per repository, so the destination must compute the
//! same ids as the source: it shares the source's id key and chunker
//! parameters (not its data key or password), like restic's
//! `init --copy-chunker-params`. Then trees copy byte for byte and need no
//! rewriting. With `STOW_INIT=true` a missing destination is created that
//! way; an existing destination with another id key is refused.
//!
//! A run is copied part by part: a part whose `(run id, part)` is already
//! in the destination is skipped. The blobs a part reaches that the
//! destination lacks are read from the source (verified), written through
//! the destination's writer, flushed, and the manifests are saved last.
//! The run filter of `list` applies (`STOW_SNAPSHOT` names one run).

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use tracing::{info, warn};

use crate::repo::RunFilter;
use crate::repo::backend;
use crate::repo::walk::{self, Root};
use crate::repo::{BlobId, OpenOptions, RepoError, Repository, group_runs};
use crate::summary::Report;

/// Problems listed per failed run; the rest are counted.
const MAX_ITEMS_PER_RUN: usize = 20;

/// How to run a copy.
#[derive(Debug, Clone)]
pub struct Options {
    /// Id of this copy run, announced as a writer to the destination.
    pub run_id: String,
    /// How many uploads run at once (at least 1).
    pub channels: usize,
}

/// Opens the destination, or creates it sharing the source's blob ids
/// when `init` is set; refuses a destination whose ids differ.
pub async fn open_destination(
    dest: OpenOptions,
    init: bool,
    source: &Repository,
) -> Result<Repository, RepoError> {
    match dest.clone().open().await {
        Ok(repo) if repo.shares_ids_with(source) => Ok(repo),
        Ok(repo) => Err(RepoError::refused(
            "copy",
            format!(
                "{} has a different id key or chunker parameters than {}, so blob ids differ; \
                 copy needs a destination that copy created (STOW_INIT=true on an empty location)",
                repo.location(),
                source.location()
            ),
        )),
        Err(RepoError::NotInitialised { location }) if init => {
            info!(%location, "creating the copy destination with the source's id key and chunker parameters");
            dest.create_sharing_ids(source).await
        }
        Err(e) => Err(e),
    }
}

/// Copies the complete runs `filter` selects from `source` to `dest`.
pub async fn copy(
    source: &Repository,
    dest: &Repository,
    filter: &RunFilter,
    opts: &Options,
) -> Result<Report, RepoError> {
    if !dest.shares_ids_with(source) {
        return Err(RepoError::refused(
            "copy",
            format!(
                "{} does not share the blob ids of {}",
                dest.location(),
                source.location()
            ),
        ));
    }
    let mut report = Report::default();
    let (snapshots, errors) = source.list_snapshots_lenient().await?;
    for e in &errors {
        report.fail_item(error_key(e), format!("not copied: {e}"));
    }
    let runs: Vec<_> = group_runs(snapshots)
        .into_iter()
        .filter(|r| r.complete && filter.matches(r))
        .collect();
    let (present, dest_errors) = dest.list_snapshots_lenient().await?;
    for e in &dest_errors {
        warn!(error = %e, "destination snapshot unreadable; its part counts as absent");
    }
    let present: HashSet<(String, u32)> = present
        .into_iter()
        .map(|(_, m)| (m.run_id, m.part))
        .collect();

    let channels = opts.channels.max(1);
    dest.announce_writer(&opts.run_id).await?;
    dest.adopt_orphans().await?;
    let writer = dest.writer(channels);
    for run in &runs {
        let parts: Vec<_> = run
            .parts
            .iter()
            .filter(|(_, m)| !present.contains(&(m.run_id.clone(), m.part)))
            .collect();
        if parts.is_empty() {
            report.count("runs_present", 1);
            continue;
        }
        let roots: Vec<Root> = parts
            .iter()
            .flat_map(|(id, m)| Root::of_manifest(*id, m))
            .collect();
        let w = walk::walk(source, roots, channels * 4).await;
        if !w.problems.is_empty() {
            for p in w.problems.iter().take(MAX_ITEMS_PER_RUN) {
                report.fail_item(
                    p.object_key(),
                    format!("run {} not copied: {p}", run.run_id),
                );
            }
            if w.problems.len() > MAX_ITEMS_PER_RUN {
                report.fail_item(
                    format!("run {}", run.run_id),
                    format!("{} more problem(s)", w.problems.len() - MAX_ITEMS_PER_RUN),
                );
            }
            report.count("runs_failed", 1);
            continue;
        }
        let missing: Vec<BlobId> = w
            .reachable
            .iter()
            .filter(|b| !dest.has_blob(b))
            .copied()
            .collect();
        let copied: Result<Vec<(bool, u64)>, CopyError> = futures::stream::iter(missing)
            .map(|id| {
                let writer = writer.clone();
                async move {
                    let kind = source
                        .index_entry(&id)
                        .ok_or(CopyError::Source(RepoError::MissingBlob { id }))?
                        .kind;
                    let data = source.read_blob(&id).await.map_err(CopyError::Source)?;
                    let len = data.len() as u64;
                    let (stored, new) = writer.add(kind, data).await.map_err(CopyError::Dest)?;
                    if stored != id {
                        return Err(CopyError::Dest(RepoError::corrupt(
                            "config",
                            Some(&id),
                            format!("the destination names this blob {stored}: its id key differs"),
                        )));
                    }
                    Ok((new, len))
                }
            })
            .buffer_unordered(channels * 2)
            .try_collect()
            .await;
        let copied = match copied {
            Ok(c) => c,
            Err(CopyError::Source(e)) => {
                report.fail_item(error_key(&e), format!("run {} not copied: {e}", run.run_id));
                report.count("runs_failed", 1);
                continue;
            }
            // The destination's writer is broken for good: stop.
            Err(CopyError::Dest(e)) => return Err(e),
        };
        // Manifests last, after everything they reference is indexed.
        writer.flush().await?;
        for (_, m) in &parts {
            dest.save_snapshot(m).await?;
            report.count("snapshots_copied", 1);
        }
        let new = copied.iter().filter(|c| c.0).count() as u64;
        report.count("blobs_copied", new);
        report.add_bytes(
            "copied",
            copied.iter().filter(|c| c.0).map(|c| c.1).sum::<u64>(),
        );
        report.count("runs_copied", 1);
        info!(run = %run.run_id, parts = parts.len(), blobs = new, "copied run");
    }
    let stats = writer.finish().await?;
    report.add_bytes("stored", stats.bytes_stored);
    dest.retire_writer().await?;
    report.count("runs_selected", runs.len() as u64);
    Ok(report)
}

enum CopyError {
    Source(RepoError),
    Dest(RepoError),
}

fn error_key(e: &RepoError) -> String {
    match e {
        RepoError::Corrupt { key, .. } | RepoError::Format { key, .. } => key.clone(),
        RepoError::Backend(
            backend::BackendError::NotFound { key, .. }
            | backend::BackendError::Permanent { key, .. },
        ) => key.clone(),
        RepoError::MissingBlob { id } => format!("blob {id}"),
        _ => "source".into(),
    }
}

#[cfg(test)]
mod tests;
