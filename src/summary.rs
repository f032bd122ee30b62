//! The one-line JSON record of a run: printed to stdout and written to
//! `/dev/termination-log` so `kubectl get pod -o yaml` shows it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

/// The kubelet keeps at most 4096 bytes of a termination message; the
/// line and its newline stay below that.
pub const TERMINATION_LIMIT: usize = 4000;

/// The longest line containerd stores whole (its default
/// `max_container_log_line_size`, 16 KiB); longer ones are stored in parts.
const RUNTIME_LINE_LIMIT: usize = 16 * 1024;

/// How long a summary longer than [`RUNTIME_LINE_LIMIT`] waits, before and
/// after, for the runtime to take the log lines around it.
const RUNTIME_SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

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

    /// The summary for the termination log: whole when it fits in
    /// [`TERMINATION_LIMIT`] bytes, else the same fields with `reason` and
    /// each error's message shortened and as many errors as fit, plus
    /// `errors_total` and `full_summary` (where the whole one is). Always
    /// one line of valid JSON: the kubelet cuts the message at 4 KiB,
    /// which would break JSON exactly where CI reads it.
    pub fn termination_line(&self) -> String {
        let line = self.to_line();
        if line.len() < TERMINATION_LIMIT {
            return line;
        }
        let short = |s: &str, n: usize| -> String {
            if s.len() <= n {
                s.to_string()
            } else {
                let mut end = n;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}…", &s[..end])
            }
        };
        let mut v = serde_json::json!({
            "run_id": short(&self.run_id, 128),
            "mode": self.mode,
            "status": self.status,
            "started_at": self.started_at,
            "duration_seconds": self.duration_seconds,
            "counts": self.report.counts,
            "bytes": self.report.bytes,
            "errors": [],
            "errors_total": self.report.errors.len(),
            "truncated": true,
            "full_summary": "the last line of the container's log (stdout)",
        });
        // A restore also keeps every item's outcome in the repository,
        // which outlives the pod and its log.
        if let Some(id) = self.report.details.get("report").and_then(|r| r.as_str()) {
            v["report"] = serde_json::json!(short(id, 128));
            v["full_summary"] = serde_json::json!(
                "the last line of the container's log (stdout); every item's outcome is in the repository's restore report `restores/<report>`"
            );
        }
        if let Some(r) = &self.report.reason {
            v["reason"] = serde_json::json!(short(r, 512));
        }
        let fits = |v: &serde_json::Value| v.to_string().len() < TERMINATION_LIMIT;
        // Counts and bytes are a few dozen keys; should they not fit, they go.
        if !fits(&v) {
            v["counts"] = serde_json::json!({});
            v["bytes"] = serde_json::json!({});
        }
        for e in &self.report.errors {
            let entry =
                serde_json::json!({"item": short(&e.item, 200), "message": short(&e.message, 300)});
            v["errors"].as_array_mut().expect("an array").push(entry);
            if !fits(&v) {
                v["errors"].as_array_mut().expect("an array").pop();
                break;
            }
        }
        v.to_string()
    }

    /// Prints to stdout and, when writable, writes the termination log
    /// (size-capped, see [`Self::termination_line`]). A failure to write the
    /// latter is not an error: outside Kubernetes it does not exist.
    pub fn emit(&self, termination_log: &Path) {
        let line = self.to_line();
        // The container runtime reads stdout and stderr apart and stores a
        // line longer than RUNTIME_LINE_LIMIT in parts; a log line (stderr)
        // stored between two parts splits the summary in `kubectl logs`
        // (seen in CI: "run finished" inside a 38 KB summary). So a long
        // summary waits for the last log line to be taken, and the next
        // one waits for the summary.
        let long = line.len() > RUNTIME_LINE_LIMIT;
        if long {
            std::thread::sleep(RUNTIME_SETTLE);
        }
        // Stdout is line-buffered: the line is in the pipe before the wait.
        println!("{line}");
        if long {
            std::thread::sleep(RUNTIME_SETTLE);
        }
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(termination_log)
        {
            use std::io::Write;
            let _ = writeln!(f, "{}", self.termination_line());
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

    fn summary(errors: usize, reason: Option<String>) -> Summary {
        let mut r = Report::default();
        r.count("objects", 12);
        for i in 0..errors {
            r.fail_item(
                format!("apps/v1/Deployment shop/web-{i}"),
                format!("forbidden: {}", "x".repeat(100 + i)),
            );
        }
        r.reason = reason;
        Summary {
            run_id: "restore-1".into(),
            mode: "restore".into(),
            status: Status::Partial,
            started_at: "2026-12-02T00:00:00Z".into(),
            duration_seconds: 1.5,
            report: r,
        }
    }

    #[test]
    fn the_termination_message_is_valid_json_under_4_kib() {
        // Small: the whole summary.
        let s = summary(2, None);
        assert_eq!(s.termination_line(), s.to_line());
        // 200 errors (about 40 KiB), and a huge reason.
        let s = summary(200, Some("é".repeat(5000)));
        assert!(s.to_line().len() > 30_000);
        let t = s.termination_line();
        assert!(t.len() < TERMINATION_LIMIT, "{}", t.len());
        let v: serde_json::Value = serde_json::from_str(&t).expect("valid JSON");
        assert_eq!(v["status"], "partial");
        assert_eq!(v["errors_total"], 200);
        assert_eq!(v["counts"]["objects"], 12);
        let kept = v["errors"].as_array().unwrap();
        assert!(!kept.is_empty() && kept.len() < 200, "{}", kept.len());
        assert_eq!(kept[0]["item"], "apps/v1/Deployment shop/web-0");
        assert_eq!(v["truncated"], true);
        assert!(v["full_summary"].as_str().unwrap().contains("log"));
        assert!(v.get("report").is_none());

        // A restore names its stored report, which keeps every item.
        let mut s = summary(200, None);
        s.report.details = serde_json::json!({"report": "ab".repeat(32), "plan": "x".repeat(9000)});
        let v: serde_json::Value = serde_json::from_str(&s.termination_line()).expect("valid JSON");
        assert_eq!(v["report"], "ab".repeat(32));
        assert!(v["full_summary"].as_str().unwrap().contains("restores/"));
    }

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
