//! `preflight`: every check for `STOW_PREFLIGHT_MODE`, as a table on a
//! terminal and as JSON in the summary; exit 1 on a required failure.

use crate::config::Config;
use crate::context::RunContext;
use crate::preflight::{Checks, all_checks, table};
use crate::summary::Report;

use super::Error;

/// `preflight`: runs every check for `STOW_PREFLIGHT_MODE`.
pub async fn run(config: &Config, ctx: &RunContext) -> Result<Report, Error> {
    let open = match config.repository_access() {
        Some(_) => Some(super::repository(config).options().await?),
        None => None,
    };
    let mut checks = Checks::default();
    let all = async {
        checks = all_checks(config, config.preflight_mode, open).await;
    };
    // Checks only read, so there is nothing to drain: stop at once.
    tokio::select! {
        () = all => {}
        () = ctx.cancel.cancelled() => return Err(Error::Cancelled),
    }

    let mut report = Report::default();
    for c in checks.failed() {
        report.fail_item(c.name.clone(), c.message.clone());
    }
    report.failed = !report.errors.is_empty();
    if report.failed {
        report.reason = Some(format!("{} required check(s) failed", report.errors.len()));
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        print!("{}", table(&checks.0));
    }
    report.details =
        serde_json::json!({ "checks": checks.0, "for_mode": config.preflight_mode.to_string() });
    Ok(report)
}
