//! `copy`: replicates complete runs to `STOW_COPY_TO_REPOSITORY` (see
//! [`crate::repo::copy`]).

use crate::config::Config;
use crate::context::RunContext;
use crate::repo::OpenOptions;
use crate::repo::copy::{self, Options};
use crate::summary::Report;

use super::Error;

/// `copy`: opens both repositories and copies the selected runs.
pub async fn run(config: &Config, ctx: &RunContext) -> Result<Report, Error> {
    // SIGTERM stops the retries of the repository and the API at once.
    ctx.link();
    let source = super::repository(config).open().await?;
    let Some(target) = &config.copy_to else {
        return Err(Error::Missing(
            "copy needs STOW_COPY_TO_REPOSITORY and a password",
        ));
    };
    let dest = OpenOptions::new(
        super::storage(config, &target.repository).await,
        &target.password,
    )
    .compression(config.compression);
    let dest = copy::open_destination(dest, config.init, &source).await?;
    let opts = Options {
        run_id: ctx.run_id.clone(),
        channels: usize::from(config.channels),
    };
    Ok(copy::copy(&source, &dest, &super::list::run_filter(config), &opts).await?)
}
