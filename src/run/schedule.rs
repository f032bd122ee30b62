//! Scheduling guards around a run, for schedules cron cannot express alone
//! (the Helm chart sets them; see README "Schedules").
//!
//! Before the mode runs:
//! - `STOW_LAST_DAY_OF_MONTH` (any mode): the run is skipped unless today, in
//!   `STOW_TIMEZONE`, is the last day of its month. The CronJob fires on
//!   days 28-31; only the last of them does work.
//! - `STOW_MIN_INTERVAL` (`backup` only): the run is skipped when the plan's
//!   newest *complete* run is younger than the interval ("every N days").
//!   Only snapshot manifests are read; nothing is written.
//!
//! After the mode ran:
//! - `STOW_ONCE` (any mode): after a *successful* run (not skipped, partial or
//!   failed), the CronJob that owns this pod's Job is suspended, so a
//!   "once" schedule runs exactly once however often cron fires. The Job is
//!   `STOW_JOB_NAME` in `STOW_POD_NAMESPACE` (downward API); its owner
//!   reference of kind CronJob names the CronJob, patched through batch/v1,
//!   else batch/v1beta1 (Kubernetes < 1.21). A failure to suspend is logged
//!   and noted in the summary, but does not fail the run: the backup itself
//!   succeeded, and retrying it would only repeat it.
//!
//! A Job created by hand from the CronJob (`kubectl create job --from=...`,
//! annotated `cronjob.kubernetes.io/instantiate: manual`) bypasses all
//! three: whoever starts a run by hand wants it to run, and the schedule has
//! yet to fire for `STOW_ONCE`. The summary says so (`details.manual`).

use std::time::Duration;

use serde_json::{Value, json};
use tracing::{info, warn};

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};

use crate::config::{Config, Mode};
use crate::modes::Error;
use crate::repo::{RepoError, Run, group_runs};
use crate::summary::{Report, Status};

/// Whether `now` is the last day of its month in `tz`.
pub fn is_last_day_of_month(now: jiff::Timestamp, tz: &jiff::tz::TimeZone) -> bool {
    let date = now.to_zoned(tz.clone()).date();
    date.day() == date.days_in_month()
}

/// Why a backup of `plan` is skipped at `now`, if the newest complete run of
/// the plan is younger than `interval`.
pub fn min_interval_skip(
    runs: &[Run],
    plan: &str,
    interval: Duration,
    now: jiff::Timestamp,
) -> Option<String> {
    let newest = runs
        .iter()
        .filter(|r| r.complete && r.parts.first().is_some_and(|p| p.1.plan == plan))
        .max_by_key(|r| r.time)?;
    let age = now.duration_since(newest.time);
    // Configuration caps the interval far below SignedDuration's range; were
    // it beyond, every run would be too recent, so saturate (not skip the check).
    let interval = jiff::SignedDuration::try_from(interval).unwrap_or(jiff::SignedDuration::MAX);
    (age < interval).then(|| {
        format!(
            "STOW_MIN_INTERVAL: the newest complete run of plan {plan} ({}, at {}) is {} old, younger than {}",
            newest.run_id,
            newest.time,
            fmt_secs(age.as_secs()),
            fmt_secs(interval.as_secs()),
        )
    })
}

fn fmt_secs(s: i64) -> String {
    let s = s.max(0);
    format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
}

/// A skipped run's report.
fn skipped(reason: String) -> Report {
    info!(%reason, "run skipped");
    Report {
        skipped: true,
        reason: Some(reason),
        ..Report::default()
    }
}

/// Annotation the CronJob controller's `kubectl create job --from` sets on a
/// Job made by hand from a CronJob.
pub const INSTANTIATE_ANNOTATION: &str = "cronjob.kubernetes.io/instantiate";

/// Whether this run's Job (`STOW_JOB_NAME` in `STOW_POD_NAMESPACE`) was
/// created by hand from its CronJob. Asked only when a guard is set; a Job
/// that cannot be read counts as scheduled (the guards then apply).
pub async fn is_manual(config: &Config) -> bool {
    let guarded = config.last_day_of_month
        || config.once
        || (config.mode == Mode::Backup && config.min_interval.is_some());
    let (Some(ns), Some(job)) = (
        config.identity.pod_namespace.as_deref(),
        config.identity.job_name.as_deref(),
    ) else {
        return false;
    };
    if !guarded {
        return false;
    }
    let Ok(cluster) = crate::cluster::Cluster::connect().await else {
        return false;
    };
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), ns);
    match jobs.get(job).await {
        Ok(j) => j
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INSTANTIATE_ANNOTATION))
            .is_some_and(|v| v == "manual"),
        Err(e) => {
            warn!(job = %format!("{ns}/{job}"), error = %e, "cannot tell whether this run was started by hand; the schedule guards apply");
            false
        }
    }
}

/// Notes in the summary that a manual run bypassed the schedule guards.
pub fn note_manual(report: &mut Report) {
    let note = json!(
        "started by hand from its CronJob: the schedule guards (STOW_LAST_DAY_OF_MONTH, STOW_MIN_INTERVAL, STOW_ONCE) do not apply"
    );
    match &mut report.details {
        Value::Object(map) => {
            map.insert("manual".into(), note);
        }
        Value::Null => report.details = json!({ "manual": note }),
        _ => {}
    }
}

/// The guards that run before the mode; `Some` is the skipped run's report.
/// A run started by hand (`manual`) is never skipped by them.
pub async fn before(config: &Config, manual: bool) -> Result<Option<Report>, Error> {
    if manual {
        info!("started by hand from its CronJob: schedule guards bypassed");
        return Ok(None);
    }
    let now = jiff::Timestamp::now();
    if config.last_day_of_month && !is_last_day_of_month(now, &config.timezone) {
        let today = now.to_zoned(config.timezone.clone()).date();
        return Ok(Some(skipped(format!(
            "STOW_LAST_DAY_OF_MONTH: {today} is not the last day of its month"
        ))));
    }
    if let (Mode::Backup, Some(interval)) = (config.mode, config.min_interval) {
        let repo = match crate::modes::repository(config).open().await {
            Ok(repo) => repo,
            // No repository yet: no previous run, so nothing is too recent.
            Err(Error::Repo(RepoError::NotInitialised { .. })) => return Ok(None),
            Err(e) => return Err(e),
        };
        let runs = group_runs(repo.list_snapshots().await?);
        if let Some(reason) = min_interval_skip(&runs, &config.plan, interval, now) {
            return Ok(Some(skipped(reason)));
        }
    }
    Ok(None)
}

/// The guards after the mode: `STOW_ONCE` suspends the CronJob after a
/// successful scheduled run (never after a manual one: the schedule has
/// yet to run once).
pub async fn after(config: &Config, manual: bool, status: Status, report: &mut Report) {
    if manual {
        note_manual(report);
    }
    if !config.once || status != Status::Success || manual {
        return;
    }
    let note = match suspend_own_cronjob(config).await {
        Ok(name) => {
            info!(cronjob = %name, "STOW_ONCE: suspended the CronJob after a successful run");
            json!({ "suspended_cronjob": name })
        }
        Err(e) => {
            warn!(error = %e, "STOW_ONCE: could not suspend the CronJob; it will run again");
            json!({ "error": e.to_string() })
        }
    };
    match &mut report.details {
        Value::Object(map) => {
            map.insert("once".into(), note);
        }
        Value::Null => report.details = json!({ "once": note }),
        _ => {}
    }
}

/// Why `STOW_ONCE` could not suspend the CronJob.
#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    #[error(
        "STOW_POD_NAMESPACE and STOW_JOB_NAME are needed to find the CronJob (not running in a Job?)"
    )]
    NotInJob,
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("reading Job {namespace}/{job}: {source}")]
    ReadJob {
        namespace: String,
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("Job {namespace}/{job} is not owned by a CronJob")]
    NoCronJob { namespace: String, job: String },
    #[error("patching CronJob {namespace}/{cronjob}: {source}")]
    Patch {
        namespace: String,
        cronjob: String,
        #[source]
        source: kube::Error,
    },
    #[error("CronJob {namespace}/{cronjob} not found ({last})")]
    NotFound {
        namespace: String,
        cronjob: String,
        last: String,
    },
}

/// Finds the CronJob owning this pod's Job and sets `spec.suspend: true`.
async fn suspend_own_cronjob(config: &Config) -> Result<String, SuspendError> {
    let (Some(ns), Some(job)) = (
        config.identity.pod_namespace.as_deref(),
        config.identity.job_name.as_deref(),
    ) else {
        return Err(SuspendError::NotInJob);
    };
    let cluster = crate::cluster::Cluster::connect().await?;
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), ns);
    let job_obj = jobs
        .get(job)
        .await
        .map_err(|source| SuspendError::ReadJob {
            namespace: ns.to_string(),
            job: job.to_string(),
            source,
        })?;
    let owner = job_obj
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.kind == "CronJob")
        .map(|r| r.name)
        .ok_or_else(|| SuspendError::NoCronJob {
            namespace: ns.to_string(),
            job: job.to_string(),
        })?;
    let patch = Patch::Merge(json!({ "spec": { "suspend": true } }));
    let mut last = String::new();
    for version in ["v1", "v1beta1"] {
        let gvk = GroupVersionKind::gvk("batch", version, "CronJob");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "cronjobs");
        let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), ns, &resource);
        match api.patch(&owner, &PatchParams::default(), &patch).await {
            Ok(_) => return Ok(format!("{ns}/{owner}")),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                last = format!("batch/{version}: {}", s.message);
            }
            Err(source) => {
                return Err(SuspendError::Patch {
                    namespace: ns.to_string(),
                    cronjob: owner,
                    source,
                });
            }
        }
    }
    Err(SuspendError::NotFound {
        namespace: ns.to_string(),
        cronjob: owner,
        last,
    })
}

#[cfg(test)]
mod tests;
