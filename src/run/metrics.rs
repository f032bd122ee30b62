//! Prometheus metrics pushed to `STOW_PUSHGATEWAY_URL` at the end of a run.
//!
//! A one-shot Job has nothing to scrape, so the run pushes its metrics to a
//! Pushgateway under job `kubestow`, grouped by plan, mode and cluster. The
//! push is a POST: it replaces only the metrics it carries, so
//! `kubestow_last_success_timestamp_seconds` (sent only by successful runs)
//! survives a failed run, which is what "time since last success" alerts
//! need. The JSON summary stays the authoritative record; a failed push is
//! a warning, never a failed run.
//!
//! Every value is a gauge of the last run. A push replaces the group's
//! values, so a counter could not accumulate across runs (each run would
//! reset it, and `rate()` would read the resets as restarts); and no label
//! takes a new value every run (no run id, no free-text reason), so the
//! series stay the same from run to run. Why a run failed is in its
//! summary and its Job's Events.

use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracing::{info, warn};

use crate::summary::{Status, Summary};

const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
const STATUSES: &[(Status, &str)] = &[
    (Status::Success, "success"),
    (Status::Skipped, "skipped"),
    (Status::Failed, "failed"),
    (Status::Partial, "partial"),
    (Status::Cancelled, "cancelled"),
    (Status::ConfigError, "config_error"),
];

/// The grouping key: job `kubestow`, then plan, mode and cluster.
#[derive(Debug, Clone)]
pub struct Group {
    pub plan: String,
    pub mode: String,
    pub cluster: String,
}

impl Group {
    /// URL path below the gateway: `/metrics/job/kubestow/plan/…`. Values
    /// outside `[A-Za-z0-9_.-]` use the Pushgateway's base64 form.
    pub fn path(&self) -> String {
        let mut p = String::from("/metrics/job/kubestow");
        for (k, v) in [
            ("plan", &self.plan),
            ("mode", &self.mode),
            ("cluster", &self.cluster),
        ] {
            let plain = !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if plain {
                let _ = write!(p, "/{k}/{v}");
            } else {
                let enc = base64::engine::general_purpose::URL_SAFE.encode(v.as_bytes());
                // An empty value must still be present: `=` is its base64.
                let enc = if enc.is_empty() { "=".into() } else { enc };
                let _ = write!(p, "/{k}@base64/{enc}");
            }
        }
        p
    }
}

fn sum(summary: &Summary, keys: &[&str]) -> u64 {
    keys.iter()
        .filter_map(|k| summary.report.bytes.get(*k))
        .sum()
}

/// The text exposition of one run; `now` is the end of the run.
pub fn exposition(summary: &Summary, now: jiff::Timestamp) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    if summary.status == Status::Success {
        metric(
            "kubestow_last_success_timestamp_seconds",
            "gauge",
            "End of the last successful run, Unix time.",
            &[(String::new(), now.as_second() as f64)],
        );
    }
    metric(
        "kubestow_last_run_timestamp_seconds",
        "gauge",
        "End of the last run, whatever its status, Unix time.",
        &[(String::new(), now.as_second() as f64)],
    );
    metric(
        "kubestow_run_duration_seconds",
        "gauge",
        "Duration of the last run.",
        &[(String::new(), summary.duration_seconds)],
    );
    let bytes: Vec<(String, f64)> = [
        ("read", sum(summary, &["read", "volume_read"])),
        (
            "written",
            sum(summary, &["stored", "volume_stored", "written"]),
        ),
        ("reused", sum(summary, &["reused", "volume_reused"])),
    ]
    .iter()
    .map(|(k, n)| (format!("{{kind=\"{k}\"}}"), *n as f64))
    .collect();
    metric(
        "kubestow_last_run_bytes",
        "gauge",
        "Bytes the last run read, wrote (stored) and reused, by kind.",
        &bytes,
    );
    let c = &summary.report.counts;
    let get = |k: &str| c.get(k).copied().unwrap_or(0) as f64;
    let mut objects: Vec<(String, f64)> = Vec::new();
    for result in ["created", "updated", "skipped"] {
        if c.contains_key(result) {
            objects.push((format!("{{result=\"{result}\"}}"), get(result)));
        }
    }
    if c.contains_key("objects") {
        objects.push(("{result=\"stored\"}".into(), get("objects")));
    }
    objects.push((
        "{result=\"failed\"}".into(),
        summary.report.errors.len() as f64,
    ));
    metric(
        "kubestow_last_run_objects",
        "gauge",
        "Objects of the last run by result (failed: items that failed).",
        &objects,
    );
    let states: Vec<(String, f64)> = STATUSES
        .iter()
        .map(|(s, name)| {
            (
                format!("{{status=\"{name}\"}}"),
                if *s == summary.status { 1.0 } else { 0.0 },
            )
        })
        .collect();
    metric(
        "kubestow_run_status",
        "gauge",
        "1 for the status of the last run, 0 for the others.",
        &states,
    );
    out
}

/// Why metrics did not reach the Pushgateway. All are worth a retry at
/// the next run except a certificate store that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("no answer within {seconds}s")]
    Timeout { url: String, seconds: u64 },
    #[error("loading the system's root certificates: {source}")]
    RootCertificates {
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {source}")]
    Request {
        url: String,
        #[source]
        source: http::Error,
    },
    #[error("{url}: {}", crate::error::error_chain(source))]
    Send {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: http::StatusCode,
        body: String,
    },
}

impl MetricsError {
    /// Whether pushing again could succeed (the gateway was away or busy).
    pub fn is_retriable(&self) -> bool {
        match self {
            MetricsError::Timeout { .. } | MetricsError::Send { .. } => true,
            MetricsError::Status { status, .. } => status.is_server_error(),
            MetricsError::RootCertificates { .. } | MetricsError::Request { .. } => false,
        }
    }
}

/// Pushes the run's metrics; logs and returns the error instead of
/// failing the run.
pub async fn push(url: &str, group: &Group, summary: &Summary) -> Result<(), MetricsError> {
    let body = exposition(summary, jiff::Timestamp::now());
    let (url, auth) = credentials(url);
    let url = url.as_str();
    let target = format!("{}{}", url.trim_end_matches('/'), group.path());
    let result = tokio::time::timeout(PUSH_TIMEOUT, post(&target, auth.as_deref(), body))
        .await
        .unwrap_or_else(|_| {
            Err(MetricsError::Timeout {
                url: target.clone(),
                seconds: PUSH_TIMEOUT.as_secs(),
            })
        });
    match &result {
        Ok(()) => info!(gateway = %url, "metrics pushed"),
        Err(e) => {
            warn!(gateway = %url, error = %e, retriable = e.is_retriable(), "could not push metrics")
        }
    }
    result
}

/// Splits `user:pass@` off a gateway URL: it is sent as HTTP basic auth
/// (hyper does not), and the URL without it is the one logged.
fn credentials(url: &str) -> (String, Option<String>) {
    use base64::Engine as _;
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => {
            let user = &rest[..at];
            let auth = base64::engine::general_purpose::STANDARD.encode(user);
            (
                format!("{scheme}://{}", &rest[at + 1..]),
                Some(format!("Basic {auth}")),
            )
        }
        None => (url.to_string(), None),
    }
}

async fn post(target: &str, auth: Option<&str>, body: String) -> Result<(), MetricsError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|source| MetricsError::RootCertificates { source })?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let mut req = http::Request::post(target).header("content-type", "text/plain; version=0.0.4");
    if let Some(a) = auth {
        req = req.header(http::header::AUTHORIZATION, a);
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|source| MetricsError::Request {
            url: target.to_string(),
            source,
        })?;
    let resp = client
        .request(req)
        .await
        .map_err(|source| MetricsError::Send {
            url: target.to_string(),
            source,
        })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Err(MetricsError::Status {
        url: target.to_string(),
        status,
        body: text.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn gateway_credentials_become_basic_auth_and_leave_the_url() {
        let (url, auth) = super::credentials("https://ci:s3cret@gw.local:9091/base");
        assert_eq!(url, "https://gw.local:9091/base");
        // base64("ci:s3cret")
        assert_eq!(auth.as_deref(), Some("Basic Y2k6czNjcmV0"));
        let (url, auth) = super::credentials("http://gw.local:9091");
        assert_eq!((url.as_str(), auth), ("http://gw.local:9091", None));
    }

    use super::*;
    use crate::summary::{ItemError, Report};

    fn summary(status: Status) -> Summary {
        let mut report = Report::default();
        report.count("objects", 42);
        report.add_bytes("read", 10);
        report.add_bytes("volume_read", 5);
        report.add_bytes("stored", 7);
        report.add_bytes("volume_reused", 100);
        if status == Status::Partial {
            report.errors.push(ItemError {
                item: "volume shop/data".into(),
                message: "x".into(),
            });
        }
        if status == Status::Skipped {
            report.reason = Some("precondition not met: \"db\" down".into());
        }
        Summary {
            run_id: "backup-1".into(),
            mode: "backup".into(),
            status,
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_seconds: 12.5,
            report,
        }
    }

    fn value(text: &str, line_start: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn success_carries_the_timestamp_and_totals() {
        let now: jiff::Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let t = exposition(&summary(Status::Success), now);
        assert_eq!(
            value(&t, "kubestow_last_success_timestamp_seconds "),
            now.as_second() as f64
        );
        assert_eq!(value(&t, "kubestow_run_duration_seconds "), 12.5);
        assert_eq!(value(&t, "kubestow_last_run_bytes{kind=\"read\"}"), 15.0);
        assert_eq!(value(&t, "kubestow_last_run_bytes{kind=\"written\"}"), 7.0);
        assert_eq!(value(&t, "kubestow_last_run_bytes{kind=\"reused\"}"), 100.0);
        assert_eq!(
            value(&t, "kubestow_last_run_objects{result=\"stored\"}"),
            42.0
        );
        assert_eq!(
            value(&t, "kubestow_last_run_objects{result=\"failed\"}"),
            0.0
        );
        assert_eq!(value(&t, "kubestow_run_status{status=\"success\"}"), 1.0);
        assert_eq!(value(&t, "kubestow_run_status{status=\"failed\"}"), 0.0);
        // Gauges only: a push replaces the values, nothing accumulates.
        assert!(!t.contains(" counter"), "{t}");
        assert!(!t.contains("_total"), "{t}");
    }

    #[test]
    fn other_runs_keep_the_last_success_and_no_label_changes_per_run() {
        let now = jiff::Timestamp::now();
        let t = exposition(&summary(Status::Partial), now);
        assert!(!t.contains("kubestow_last_success_timestamp_seconds"));
        assert_eq!(value(&t, "kubestow_run_status{status=\"partial\"}"), 1.0);
        assert_eq!(
            value(&t, "kubestow_last_run_objects{result=\"failed\"}"),
            1.0
        );
        // The same series, whatever the run id or the reason.
        let series = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
                .collect()
        };
        let mut other = summary(Status::Skipped);
        other.run_id = "backup-2".into();
        let skipped = exposition(&other, now);
        assert!(
            !skipped.contains("backup-2") && !skipped.contains("db"),
            "{skipped}"
        );
        let mut a = series(&t);
        let mut b = series(&skipped);
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn grouping_path_encodes_odd_values() {
        let g = Group {
            plan: "nightly".into(),
            mode: "backup".into(),
            cluster: "prod/eu 1".into(),
        };
        assert_eq!(
            g.path(),
            "/metrics/job/kubestow/plan/nightly/mode/backup/cluster@base64/cHJvZC9ldSAx"
        );
        let g = Group {
            plan: String::new(),
            ..g
        };
        assert!(g.path().contains("/plan@base64/="), "{}", g.path());
    }
}
