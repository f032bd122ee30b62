//! Kubernetes Events about a run, on its Job (`STOW_JOB_NAME` in
//! `STOW_POD_NAMESPACE`), so `kubectl describe job` and `kubectl get
//! events` tell what happened: `RunStarted`, then `RunSucceeded`,
//! `RunSkipped` (also on the CronJob that owns the Job, where a skip is
//! looked for), `RunPartial`, `RunFailed` or `RunCancelled`. A run records
//! at most [`MAX_EVENTS`], so a long run never floods the API. Events are
//! best effort: a run without the right to create them (the repository-only
//! pods have no API access) logs that once and goes on.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use tracing::debug;

use crate::cluster::Cluster;
use crate::config::{Config, Mode};
use crate::summary::{Status, Summary};

/// Events one run may record.
pub const MAX_EVENTS: usize = 4;
/// Longest event message; the API server caps messages at 1 KiB too.
const MESSAGE_LIMIT: usize = 1000;

/// What an event is about: a Job or a CronJob, by name and uid.
#[derive(Debug, Clone)]
struct Object {
    api_version: String,
    kind: String,
    name: String,
    uid: String,
}

/// Records a run's events.
pub struct Recorder {
    cluster: Cluster,
    namespace: String,
    job: Object,
    cronjob: Option<Object>,
    sent: AtomicUsize,
}

impl Recorder {
    /// A recorder for this run's Job, when the run is one of kubestow's
    /// orchestrating Jobs and the Job can be read; `None` otherwise.
    pub async fn for_run(config: &Config) -> Option<Recorder> {
        if matches!(config.mode, Mode::VolumeBackup | Mode::VolumeRestore) || config.volume.mover {
            return None;
        }
        let ns = config.identity.pod_namespace.clone()?;
        let job = config.identity.job_name.clone()?;
        let cluster = Cluster::connect().await.ok()?;
        let path = format!("/apis/batch/v1/namespaces/{ns}/jobs/{job}");
        let obj = match get(&cluster, &path).await {
            Ok(o) => o,
            Err(e) => {
                debug!(error = %e, "no events: cannot read this run's Job");
                return None;
            }
        };
        let uid = obj.pointer("/metadata/uid")?.as_str()?.to_string();
        let cronjob = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| refs.iter().find(|r| r["kind"] == "CronJob"))
            .map(|r| Object {
                api_version: r["apiVersion"].as_str().unwrap_or("batch/v1").to_string(),
                kind: "CronJob".into(),
                name: r["name"].as_str().unwrap_or_default().to_string(),
                uid: r["uid"].as_str().unwrap_or_default().to_string(),
            });
        Some(Recorder {
            cluster,
            namespace: ns,
            job: Object {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: job,
                uid,
            },
            cronjob,
            sent: AtomicUsize::new(0),
        })
    }

    /// `RunStarted`.
    pub async fn started(&self, config: &Config, run_id: &str) {
        let msg = format!("kubestow {} run {run_id} started", config.mode);
        self.record(&self.job, "Normal", "RunStarted", &msg).await;
    }

    /// The event for how the run ended, from its summary.
    pub async fn finished(&self, summary: &Summary) {
        let (kind, reason) = finished_reason(summary.status);
        let msg = finished_message(summary);
        self.record(&self.job, kind, reason, &msg).await;
        if summary.status == Status::Skipped
            && let Some(cj) = &self.cronjob
        {
            self.record(cj, kind, reason, &msg).await;
        }
    }

    async fn record(&self, on: &Object, kind: &str, reason: &str, message: &str) {
        if self.sent.fetch_add(1, Ordering::SeqCst) >= MAX_EVENTS {
            return;
        }
        let now = jiff::Timestamp::now().to_string();
        let body = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": format!("{}.", on.name),
                "namespace": self.namespace,
            },
            "involvedObject": {
                "apiVersion": on.api_version, "kind": on.kind, "name": on.name,
                "namespace": self.namespace, "uid": on.uid,
            },
            "reason": reason,
            "message": clip(message, MESSAGE_LIMIT),
            "type": kind,
            "source": {"component": "kubestow"},
            "reportingComponent": "kubestow",
            "reportingInstance": std::env::var(crate::config::vars::POD_NAME).unwrap_or_default(),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let path = format!("/api/v1/namespaces/{}/events", self.namespace);
        let req = http::Request::post(path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("an event serialises"));
        let Ok(req) = req else { return };
        if let Err(e) = self.cluster.client.request::<Value>(req).await {
            debug!(error = %e, reason, "could not record an event");
        }
    }
}

async fn get(cluster: &Cluster, path: &str) -> Result<Value, kube::Error> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    cluster.client.request::<Value>(req).await
}

/// The event type and reason for a run's status.
pub fn finished_reason(status: Status) -> (&'static str, &'static str) {
    match status {
        Status::Success => ("Normal", "RunSucceeded"),
        Status::Skipped => ("Normal", "RunSkipped"),
        Status::Partial => ("Warning", "RunPartial"),
        Status::Failed => ("Warning", "RunFailed"),
        Status::Cancelled => ("Warning", "RunCancelled"),
        Status::ConfigError => ("Warning", "RunConfigError"),
    }
}

/// "run <id> <status> in <s>s: <counts>; <reason or first error>".
pub fn finished_message(s: &Summary) -> String {
    let counts: Vec<String> = s
        .report
        .counts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut msg = format!(
        "kubestow {} run {} {} in {:.0}s",
        s.mode,
        s.run_id,
        serde_json::to_value(s.status)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        s.duration_seconds
    );
    if !counts.is_empty() {
        msg.push_str(&format!(": {}", counts.join(" ")));
    }
    if let Some(r) = &s.report.reason {
        msg.push_str(&format!("; {r}"));
    } else if let Some(e) = s.report.errors.first() {
        msg.push_str(&format!(
            "; {} error(s), first: {}: {}",
            s.report.errors.len(),
            e.item,
            e.message
        ));
    }
    msg
}

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::Report;

    #[test]
    fn the_finished_event_says_status_counts_and_first_error() {
        let mut r = Report::default();
        r.count("objects", 7);
        r.fail_item("volume shop/data-0", "mover failed");
        let s = Summary {
            run_id: "backup-1".into(),
            mode: "backup".into(),
            status: Status::Partial,
            started_at: String::new(),
            duration_seconds: 12.4,
            report: r,
        };
        assert_eq!(finished_reason(s.status), ("Warning", "RunPartial"));
        assert_eq!(
            finished_message(&s),
            "kubestow backup run backup-1 partial in 12s: objects=7; 1 error(s), first: volume shop/data-0: mover failed"
        );
        assert_eq!(finished_reason(Status::Skipped), ("Normal", "RunSkipped"));
        assert!(clip(&"é".repeat(800), MESSAGE_LIMIT).len() <= MESSAGE_LIMIT + 3);
    }
}
