//! `prune`: retention, then garbage collection (see [`crate::repo::prune`]).

use crate::config::Config;
use crate::context::RunContext;
use crate::repo::prune::{self, Options};
use crate::summary::Report;

use super::Error;

/// `prune`: retention and garbage collection under the prune lock.
pub async fn run(config: &Config, ctx: &RunContext) -> Result<Report, Error> {
    // SIGTERM stops the retries of the repository and the API at once.
    ctx.link();
    let repo = super::repository(config).open().await?;
    let mut opts = Options::new(&ctx.run_id, config.retention.clone(), config.prune_grace);
    opts.plan = config.plan_explicit.then(|| config.plan.clone());
    opts.timezone = config.timezone.clone();
    opts.channels = usize::from(config.channels).max(2);
    Ok(prune::prune(&repo, &opts, &ctx.cancel).await?)
}
