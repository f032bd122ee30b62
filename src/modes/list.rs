//! `list`: the runs (snapshots grouped by run id) in the repository, oldest
//! first: a table when stdout is a terminal, else JSON in the summary's
//! `details.snapshots`.
//!
//! Filters, from existing variables (a run is listed when it passes all):
//! - `STOW_PLAN`, only when set explicitly (its default `default` would
//!   hide every other plan): the run's plan equals it;
//! - `STOW_TAGS`: the run carries every tag;
//! - `STOW_SOURCE_CLUSTER`: the run's cluster id equals it;
//! - `STOW_NAMESPACES`: some namespace glob recorded in the run's selection
//!   (`selection.namespaces`) matches one of the given globs, or the other
//!   way round (`*` recorded matches any); runs that record no namespaces
//!   pass;
//! - `STOW_RESTORE_POINT`: the run's time is at or before it;
//! - `STOW_SNAPSHOT`: the run id, or a snapshot id (or a prefix of at least
//!   8 hex digits) of one of its parts.
//!
//! `copy` uses the same filter.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;

use serde::Serialize;

use super::Error;
use crate::config::Config;
use crate::context::RunContext;
use crate::repo::{Repository, Run, RunFilter, group_runs};
use crate::summary::Report;

/// The run filter from `STOW_PLAN` (when set explicitly), `STOW_TAGS`,
/// `STOW_SOURCE_CLUSTER`, `STOW_NAMESPACES`, `STOW_RESTORE_POINT` and
/// `STOW_SNAPSHOT`; `copy` uses it too.
pub fn run_filter(config: &Config) -> RunFilter {
    RunFilter {
        plan: config.plan_explicit.then(|| config.plan.clone()),
        tags: config.tags.clone(),
        cluster: config.restore.source_cluster.clone(),
        namespaces: config.selection.namespaces.clone(),
        before: config.restore.point,
        snapshot: config.restore.snapshot.clone(),
    }
}

/// One run as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    /// The run id.
    pub run_id: String,
    /// Time of the run's latest part.
    pub time: jiff::Timestamp,
    /// The backup plan.
    pub plan: String,
    /// Tags of all parts.
    pub tags: Vec<String>,
    /// The source cluster's id, when recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Parts stored.
    pub parts_present: usize,
    /// Parts the run was written in.
    pub parts_total: u32,
    /// Every part is present.
    pub complete: bool,
    /// Snapshot ids of the parts, in part order.
    pub snapshots: Vec<String>,
    /// Volumes (`namespace/claim`) the run holds.
    pub volumes: Vec<String>,
    /// Numeric counters summed over the parts' `stats` and, prefixed with
    /// `volume_`, over their volumes' `stats` (e.g. `objects`,
    /// `volume_files`, `volume_bytes`).
    pub stats: BTreeMap<String, u64>,
}

impl RunRow {
    /// The row of one run.
    pub fn of_run(run: &Run) -> Self {
        let first = &run.parts[0].1;
        let mut tags: BTreeSet<String> = BTreeSet::new();
        let mut volumes = BTreeSet::new();
        let mut stats = BTreeMap::new();
        for (_, m) in &run.parts {
            tags.extend(m.tags.iter().cloned());
            add_numbers(&mut stats, "", &m.stats);
            for (name, v) in &m.volumes {
                volumes.insert(name.clone());
                add_numbers(&mut stats, "volume_", &v.stats);
            }
        }
        RunRow {
            run_id: run.run_id.clone(),
            time: run.time,
            plan: first.plan.clone(),
            tags: tags.into_iter().collect(),
            cluster_id: run.parts.iter().find_map(|p| p.1.cluster_id.clone()),
            parts_present: run.parts.len(),
            parts_total: run.parts.iter().map(|p| p.1.parts).max().unwrap_or(0),
            complete: run.complete,
            snapshots: run.parts.iter().map(|p| p.0.to_hex()).collect(),
            volumes: volumes.into_iter().collect(),
            stats,
        }
    }
}

fn add_numbers(out: &mut BTreeMap<String, u64>, prefix: &str, v: &serde_json::Value) {
    if let Some(obj) = v.as_object() {
        for (k, v) in obj {
            if let Some(n) = v.as_u64() {
                *out.entry(format!("{prefix}{k}")).or_default() += n;
            }
        }
    }
}

/// The runs `filter` selects, as rows, oldest first.
pub fn rows(runs: &[Run], filter: &RunFilter) -> Vec<RunRow> {
    runs.iter()
        .filter(|r| filter.matches(r))
        .map(RunRow::of_run)
        .collect()
}

/// A plain-text table of `rows`.
pub fn table(rows: &[RunRow]) -> String {
    let header = [
        "TIME", "RUN", "PLAN", "PARTS", "COMPLETE", "CLUSTER", "TAGS", "VOLUMES", "SIZE",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let size = r
            .stats
            .get("volume_bytes")
            .map(|b| bytesize::ByteSize::b(*b).display().iec().to_string())
            .unwrap_or_else(|| "-".into());
        cells.push(vec![
            r.time.strftime("%Y-%m-%d %H:%M:%S").to_string(),
            r.run_id.clone(),
            r.plan.clone(),
            format!("{}/{}", r.parts_present, r.parts_total),
            if r.complete { "yes" } else { "no" }.into(),
            r.cluster_id
                .as_deref()
                .map(|c| c.chars().take(8).collect())
                .unwrap_or_else(|| "-".into()),
            if r.tags.is_empty() {
                "-".into()
            } else {
                r.tags.join(",")
            },
            r.volumes.len().to_string(),
            size,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            cells
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `list`: the runs as a table on a terminal, else as JSON in the summary.
pub async fn run(config: &Config, ctx: &RunContext) -> Result<Report, Error> {
    // SIGTERM stops the repository's retries at once.
    ctx.link();
    let repo = super::repository(config).open().await?;
    let (report, rows) = list(&repo, &run_filter(config)).await?;
    let mut report = report;
    if std::io::stdout().is_terminal() {
        print!("{}", table(&rows));
    } else {
        report.details = serde_json::json!({ "snapshots": rows });
    }
    Ok(report)
}

/// The listing and its counts; a manifest that cannot be read is an error
/// item (the rest is still listed).
pub async fn list(repo: &Repository, filter: &RunFilter) -> Result<(Report, Vec<RunRow>), Error> {
    let mut report = Report::default();
    let (snapshots, errors) = repo.list_snapshots_lenient().await?;
    for e in &errors {
        let item = match e {
            crate::repo::RepoError::Corrupt { key, .. }
            | crate::repo::RepoError::Format { key, .. } => key.clone(),
            _ => "snapshots/".into(),
        };
        report.fail_item(item, e.to_string());
    }
    let runs = group_runs(snapshots);
    let rows = rows(&runs, filter);
    report.count("runs", rows.len() as u64);
    report.count(
        "runs_complete",
        rows.iter().filter(|r| r.complete).count() as u64,
    );
    report.count(
        "snapshots",
        rows.iter().map(|r| r.parts_present as u64).sum(),
    );
    report.count("runs_in_repository", runs.len() as u64);
    Ok((report, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{BlobId, SnapshotId, SnapshotManifest, VolumeEntry};

    fn part(run: &str, part: u32, parts: u32, time: &str) -> (SnapshotId, SnapshotManifest) {
        let mut m = SnapshotManifest::new(run, part, parts, "daily");
        m.time = time.parse().unwrap();
        let mut id = [0u8; 32];
        id[..run.len().min(31)].copy_from_slice(&run.as_bytes()[..run.len().min(31)]);
        id[31] = part as u8;
        (SnapshotId(id), m)
    }

    fn runs() -> Vec<Run> {
        let mut a0 = part("a", 0, 1, "2026-01-01T00:00:00Z");
        a0.1.tags = vec!["prod".into(), "x".into()];
        a0.1.cluster_id = Some("c1".into());
        a0.1.selection = serde_json::json!({"namespaces": ["shop-*"]});
        a0.1.stats = serde_json::json!({"objects": 5});
        a0.1.volumes.insert(
            "shop/data".into(),
            VolumeEntry {
                root: BlobId([1; 32]),
                stats: serde_json::json!({"files": 2, "bytes": 2048}),
            },
        );
        let mut b0 = part("b", 0, 2, "2026-01-02T00:00:00Z");
        b0.1.plan = "weekly".into();
        b0.1.selection = serde_json::json!({"namespaces": ["*"]});
        let mut c0 = part("c", 0, 1, "2026-01-03T00:00:00Z");
        c0.1.selection = serde_json::json!({"namespaces": ["billing"]});
        group_runs(vec![a0, b0, c0])
    }

    fn ids(f: &RunFilter) -> Vec<String> {
        rows(&runs(), f).into_iter().map(|r| r.run_id).collect()
    }

    #[test]
    fn filters() {
        assert_eq!(ids(&RunFilter::default()), ["a", "b", "c"]);
        let f = |g: fn(&mut RunFilter)| {
            let mut f = RunFilter::default();
            g(&mut f);
            ids(&f)
        };
        assert_eq!(f(|f| f.plan = Some("weekly".into())), ["b"]);
        assert_eq!(f(|f| f.tags = vec!["prod".into()]), ["a"]);
        assert!(f(|f| f.tags = vec!["prod".into(), "nope".into()]).is_empty());
        assert_eq!(f(|f| f.cluster = Some("c1".into())), ["a"]);
        assert_eq!(
            f(|f| f.before = Some("2026-01-02T00:00:00Z".parse().unwrap())),
            ["a", "b"]
        );
        // Glob against recorded globs, both ways; `*` recorded matches all.
        assert_eq!(f(|f| f.namespaces = vec!["shop-a".into()]), ["a", "b"]);
        assert_eq!(f(|f| f.namespaces = vec!["bill*".into()]), ["b", "c"]);
        assert_eq!(f(|f| f.snapshot = Some("b".into())), ["b"]);
        let hex = runs()[2].parts[0].0.to_hex();
        let prefix = hex[..8].to_string();
        assert_eq!(
            ids(&RunFilter {
                snapshot: Some(prefix),
                ..RunFilter::default()
            }),
            ["c"]
        );
    }

    #[test]
    fn rows_and_table() {
        let r = rows(&runs(), &RunFilter::default());
        assert_eq!(r[0].parts_present, 1);
        assert!(r[0].complete);
        assert_eq!(r[0].stats["objects"], 5);
        assert_eq!(r[0].stats["volume_bytes"], 2048);
        assert_eq!(r[0].volumes, ["shop/data"]);
        assert!(!r[1].complete);
        assert_eq!((r[1].parts_present, r[1].parts_total), (1, 2));
        let t = table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("TIME"));
        assert!(
            lines[1].contains("2026-01-01 00:00:00") && lines[1].contains("2.0 KiB"),
            "{t}"
        );
        assert!(lines[2].contains("1/2") && lines[2].contains(" no "), "{t}");
        let json = serde_json::to_value(&r[0]).unwrap();
        assert_eq!(json["run_id"], "a");
        assert_eq!(json["tags"], serde_json::json!(["prod", "x"]));
    }
}
