//! Retention: which runs each plan keeps, and forgetting the others.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tracing::info;

use super::*;
use crate::config::Retention;
use crate::repo::lock::{self, PruneLock, age};
use crate::repo::{RepoError, Repository, Run, SnapshotId};
use crate::summary::Report;

/// A run as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The run's id.
    pub run_id: String,
    /// Plan of its first part.
    pub plan: String,
    /// Time of its latest part.
    pub time: Timestamp,
    /// Whether every part is present.
    pub complete: bool,
}

impl Candidate {
    /// The candidate for `run`.
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
    /// Kept, with the names of the rules that keep it.
    Keep(Vec<&'static str>),
    /// Forgotten, with the reason.
    Forget(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Bucket {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

pub(super) fn bucket_key(b: Bucket, t: Timestamp, tz: &TimeZone) -> i64 {
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

pub(super) async fn forget(
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
            if marker
                .content()
                .is_some_and(|m| removed.contains(m.run_id.as_str()))
            {
                lock.check()?;
                repo.backend().delete(&key).await?;
                report.count("writer_markers_removed", 1);
            }
        }
        futures::stream::iter(doomed)
            .map(|id| async move {
                lock.check()?;
                repo.delete_snapshot(&id).await
            })
            .buffer_unordered(opts.channels)
            .try_collect::<Vec<()>>()
            .await?;
    }
    Ok(())
}
