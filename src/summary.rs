//! The one-line JSON record of a run: printed to stdout and written to
//! `/dev/termination-log` so `kubectl get pod -o yaml` shows it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

/// How a run ended. Each status has exactly one exit code (docs/design.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Everything the mode set out to do was done.
    Success,
    /// A precondition was not met; nothing was written.
    Skipped,
    /// The run as a whole failed; `reason` says why.
    Failed,
    /// Some items failed; `errors` lists each.
    Partial,
    /// SIGTERM/SIGINT stopped the run after in-flight work drained.
    Cancelled,
    /// The configuration is invalid; nothing was touched.
    ConfigError,
}

impl Status {
    /// The process exit code for this status (0, 1, 2 or 3).
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Success | Status::Skipped => 0,
            Status::Failed | Status::Cancelled => 1,
            Status::ConfigError => 2,
            Status::Partial => 3,
        }
    }
}

/// One failed item: a GVK/name, an object key, a PVC, a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemError {
    /// What failed, named so an operator can find it.
    pub item: String,
    /// Why it failed.
    pub message: String,
}

/// What a mode reports back to the run frame.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Things counted (files, objects, snapshots, …) by name.
    pub counts: BTreeMap<String, u64>,
    /// Bytes read, stored, reused, … by name.
    pub bytes: BTreeMap<String, u64>,
    /// Every item that failed.
    pub errors: Vec<ItemError>,
    /// Set when the run is skipped or failed as a whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Mode-specific detail (snapshot id, preflight checks, …).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
    /// The run was skipped (a precondition or schedule guard).
    #[serde(skip)]
    pub skipped: bool,
    /// The run as a whole failed (e.g. a required preflight check), though
    /// it has a report to show.
    #[serde(skip)]
    pub failed: bool,
}

impl Report {
    /// Adds `n` to the count `key`.
    pub fn count(&mut self, key: &str, n: u64) {
        *self.counts.entry(key.to_string()).or_default() += n;
    }

    /// Adds `n` to the byte total `key`.
    pub fn add_bytes(&mut self, key: &str, n: u64) {
        *self.bytes.entry(key.to_string()).or_default() += n;
    }

    /// Adds another report's counts, bytes and errors to this one.
    pub fn absorb(&mut self, other: Report) {
        for (k, n) in other.counts {
            self.count(&k, n);
        }
        for (k, n) in other.bytes {
            self.add_bytes(&k, n);
        }
        self.errors.extend(other.errors);
    }

    /// Records a failed item.
    pub fn fail_item(&mut self, item: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ItemError {
            item: item.into(),
            message: message.into(),
        });
    }

    /// Success, or partial when some items failed.
    pub fn status(&self) -> Status {
        if self.failed {
            Status::Failed
        } else if self.skipped {
            Status::Skipped
        } else if self.errors.is_empty() {
            Status::Success
        } else {
            Status::Partial
        }
    }
}

/// The whole record of a run, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The run id (stable across the Job's retries).
    pub run_id: String,
    /// The mode that ran.
    pub mode: String,
    /// How it ended.
    pub status: Status,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// How long it took.
    pub duration_seconds: f64,
    /// What the mode reported.
    #[serde(flatten)]
    pub report: Report,
}

impl Summary {
    /// The summary as one line of JSON.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("summary serialises")
    }

    /// Prints to stdout and, when writable, the termination log. A failure to
    /// write the latter is not an error: outside Kubernetes it does not exist.
    pub fn emit(&self, termination_log: &Path) {
        let line = self.to_line();
        println!("{line}");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(termination_log)
        {
            use std::io::Write;
            let _ = writeln!(f, "{line}");
        }
    }
}

/// What a run's error tells the frame: how the run ended.
pub trait Outcome {
    /// The status a run that ended with this error has.
    fn status(&self) -> Status;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_design() {
        assert_eq!(Status::Success.exit_code(), 0);
        assert_eq!(Status::Skipped.exit_code(), 0);
        assert_eq!(Status::Failed.exit_code(), 1);
        assert_eq!(Status::Cancelled.exit_code(), 1);
        assert_eq!(Status::ConfigError.exit_code(), 2);
        assert_eq!(Status::Partial.exit_code(), 3);
    }

    #[test]
    fn report_status_reflects_item_errors() {
        let mut r = Report::default();
        assert_eq!(r.status(), Status::Success);
        r.fail_item("apps/v1/Deployment shop/web", "forbidden");
        assert_eq!(r.status(), Status::Partial);
        r.skipped = true;
        assert_eq!(r.status(), Status::Skipped);
    }

    #[test]
    fn summary_is_one_json_line() {
        let mut report = Report::default();
        report.count("objects", 3);
        let s = Summary {
            run_id: "r1".into(),
            mode: "backup".into(),
            status: Status::Success,
            started_at: "2026-11-22T00:00:00Z".into(),
            duration_seconds: 1.5,
            report,
        };
        let line = s.to_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["status"], "success");
        assert_eq!(v["counts"]["objects"], 3);
    }
}
