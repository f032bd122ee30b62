//! `check`: verifies the repository (see [`crate::repo::check`]).

use tracing::warn;

use crate::config::Config;
use crate::context::RunContext;
use crate::repo::check::{self, Options};
use crate::summary::Report;

use super::Error;

/// `check`: opens the repository leniently and checks it.
pub async fn run(config: &Config, ctx: &RunContext) -> Result<Report, Error> {
    // SIGTERM stops the repository's retries at once instead of after the
    // reconnect window.
    ctx.link();
    let opts = Options {
        read_data: config.check_read_data,
        channels: usize::from(config.channels).max(2),
    };
    let report = async {
        // Lenient: a damaged index object is reported by the check, not
        // fatal here.
        let (repo, _) = super::repository(config).open_lenient().await?;
        Ok::<_, Error>(check::check(&repo, &opts).await?)
    }
    .await;
    // Errors and findings made while the retries were being cut short say
    // nothing about the repository.
    if ctx.cancel.is_cancelled() {
        if let Err(e) = &report {
            warn!(error = %e, "stopped");
        }
        return Err(Error::Cancelled);
    }
    report
}
