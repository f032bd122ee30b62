//! `preflight`: checks the cluster and the repository before real work.
//!
//! Each check ends `ok`, `warn` (worth knowing, not blocking) or `fail`
//! (required; the run exits 1).

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde::Serialize;
use tracing::{info, warn};

use crate::cluster::{Cluster, error_chain};
use crate::config::Config;
use crate::error::Error;
use crate::run::RunContext;
use crate::summary::Report;

/// Oldest Kubernetes minor version we support (DESIGN: users run 1.17+).
pub const MIN_MINOR: u32 = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub message: String,
}

/// Collects checks and logs each as it lands.
#[derive(Debug, Default)]
pub struct Checks(pub Vec<Check>);

impl Checks {
    fn push(&mut self, name: &'static str, level: Level, message: impl Into<String>) {
        let message = message.into();
        match level {
            Level::Ok => info!(check = name, "{message}"),
            // A failed check is reported in the summary; the operator acts on the run's status.
            Level::Warn | Level::Fail => warn!(check = name, level = ?level, "{message}"),
        }
        self.0.push(Check {
            name,
            level,
            message,
        });
    }

    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.0.iter().filter(|c| c.level == Level::Fail)
    }
}

pub async fn run(config: &Config, ctx: &RunContext) -> Result<Report, Error> {
    let mut checks = Checks::default();
    let all = async {
        check_cluster(&mut checks).await;
        check_repository(config, &mut checks).await;
    };
    // Checks only read, so there is nothing to drain: stop at once.
    tokio::select! {
        () = all => {}
        () = ctx.cancel.cancelled() => return Err(Error::Cancelled),
    }

    let mut report = Report::default();
    for c in checks.failed() {
        report.fail_item(c.name, c.message.clone());
    }
    report.failed = !report.errors.is_empty();
    if report.failed {
        report.reason = Some(format!("{} required check(s) failed", report.errors.len()));
    }
    report.details = serde_json::json!({ "checks": checks.0 });
    Ok(report)
}

/// Parses "1", "20+", "20-gke.1" leniently: managed clusters decorate the minor.
fn parse_minor(s: &str) -> Option<u32> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

async fn check_cluster(checks: &mut Checks) {
    let cluster = match Cluster::connect().await {
        Ok(c) => c,
        Err(e) => return checks.push("apiserver", Level::Fail, e.to_string()),
    };
    // Preflight answers quickly rather than waiting out the reconnect window.
    let version =
        tokio::time::timeout(Duration::from_secs(15), cluster.client.apiserver_version()).await;
    match version {
        Err(_) => {
            return checks.push(
                "apiserver",
                Level::Fail,
                format!("API server at {} did not answer within 15s", cluster.url),
            );
        }
        Ok(Err(e)) => {
            return checks.push(
                "apiserver",
                Level::Fail,
                format!(
                    "cannot reach the API server at {}: {}",
                    cluster.url,
                    error_chain(&e)
                ),
            );
        }
        Ok(Ok(info)) => {
            let minor = parse_minor(&info.minor);
            let level = match (info.major.as_str(), minor) {
                ("1", Some(m)) if m >= MIN_MINOR => Level::Ok,
                _ => Level::Warn,
            };
            let supported = if level == Level::Ok {
                "supported"
            } else {
                "outside the supported range (1.17 or newer)"
            };
            checks.push(
                "apiserver",
                level,
                format!(
                    "API server {} reachable, version {} ({supported})",
                    cluster.url, info.git_version
                ),
            );
        }
    }
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    match nodes.list(&ListParams::default()).await {
        Err(e) => checks.push(
            "nodes",
            Level::Warn,
            format!("cannot list nodes: {}", error_chain(&e)),
        ),
        Ok(list) => {
            let total = list.items.len();
            let ready = list.items.iter().filter(|n| is_ready(n)).count();
            let level = if total == 0 || ready < total {
                Level::Warn
            } else {
                Level::Ok
            };
            checks.push("nodes", level, format!("{total} node(s), {ready} Ready"));
        }
    }
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn check_repository(config: &Config, checks: &mut Checks) {
    let Some(location) = &config.repository else {
        return checks.push(
            "repository",
            Level::Warn,
            "no repository configured (STOW_REPOSITORY); not checked",
        );
    };
    let backend = crate::repo::backend::open_direct(location).await;
    match tokio::time::timeout(Duration::from_secs(30), backend.probe()).await {
        Err(_) => checks.push(
            "repository",
            Level::Fail,
            format!("{location} did not answer within 30s"),
        ),
        Ok(Err(e)) => checks.push(
            "repository",
            Level::Fail,
            format!("{location} is not reachable: {e}"),
        ),
        Ok(Ok(())) => {
            let initialised = matches!(backend.exists("config").await, Ok(true));
            let state = if initialised {
                "holds a kubestow repository"
            } else {
                "holds no repository yet (STOW_INIT=true creates one)"
            };
            checks.push(
                "repository",
                Level::Ok,
                format!("{location} is reachable and {state}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_versions_from_managed_clusters() {
        assert_eq!(parse_minor("20"), Some(20));
        assert_eq!(parse_minor("27+"), Some(27));
        assert_eq!(parse_minor("x"), None);
    }
}
