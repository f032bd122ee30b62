//! Which runs `list` and `copy` consider: plan, tags, source cluster,
//! namespaces, time, and a snapshot reference.

use std::collections::BTreeSet;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::{Run, SnapshotManifest, SnapshotRef};

/// Which runs `list` and `copy` consider.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs of this plan (judged by the first part).
    pub plan: Option<String>,
    /// Only runs whose parts together carry all of these tags.
    pub tags: Vec<String>,
    /// Only runs with a part from this source cluster id.
    pub cluster: Option<String>,
    /// Namespace globs; a run passes if any recorded namespace overlaps
    /// them, or if it records none.
    pub namespaces: Vec<String>,
    /// Only runs taken at or before this time.
    pub before: Option<jiff::Timestamp>,
    /// Only the run this snapshot reference (`STOW_SNAPSHOT`) names.
    pub snapshot: Option<String>,
}

impl RunFilter {
    /// Whether `run` passes every criterion set.
    pub fn matches(&self, run: &Run) -> bool {
        let first = &run.parts[0].1;
        if self.plan.as_ref().is_some_and(|p| *p != first.plan) {
            return false;
        }
        let tags: BTreeSet<&str> = run
            .parts
            .iter()
            .flat_map(|p| p.1.tags.iter().map(String::as_str))
            .collect();
        if !self.tags.iter().all(|t| tags.contains(t.as_str())) {
            return false;
        }
        if let Some(c) = &self.cluster
            && !run
                .parts
                .iter()
                .any(|p| p.1.cluster_id.as_deref() == Some(c.as_str()))
        {
            return false;
        }
        if self.before.is_some_and(|t| run.time > t) {
            return false;
        }
        if let Some(s) = &self.snapshot
            && !SnapshotRef::new(s).matches_run(run)
        {
            return false;
        }
        self.namespaces_match(run)
    }

    fn namespaces_match(&self, run: &Run) -> bool {
        if self.namespaces.is_empty() {
            return true;
        }
        let recorded: Vec<String> = run
            .parts
            .iter()
            .flat_map(|p| recorded_namespaces(&p.1))
            .collect();
        if recorded.is_empty() {
            return true;
        }
        let wanted = globset(&self.namespaces);
        recorded.iter().any(|r| {
            wanted.is_match(r)
                || Glob::new(r)
                    .map(|g| g.compile_matcher())
                    .is_ok_and(|m| self.namespaces.iter().any(|n| m.is_match(n)))
        })
    }
}

fn globset(globs: &[String]) -> GlobSet {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        // Validated with the configuration; a bad one matches nothing.
        if let Ok(g) = Glob::new(g) {
            b.add(g);
        }
    }
    b.build().unwrap_or_else(|_| GlobSet::empty())
}

/// `selection.namespaces` of a manifest, when it records them.
fn recorded_namespaces(m: &SnapshotManifest) -> Vec<String> {
    m.selection
        .get("namespaces")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
