//! The modes: one per `STOW_MODE`, each composing the engines below it
//! (resources, volume, mover, hooks, preflight) with the repository and the
//! cluster. Only the run frame ([`crate::run`]) calls into this floor.

pub mod backup;
pub mod check;
pub mod copy;
mod error;
pub mod list;
pub mod options;
pub mod preflight;
pub mod prune;
pub mod restore;
pub mod volume;

use std::sync::Arc;

pub use error::Error;

use crate::config::{Config, Location, Mode};
use crate::context::RunContext;
use crate::repo::OpenOptions;
use crate::repo::backend::{self, Backend, Throttle};
use crate::summary::Report;

/// Runs the configured mode.
pub async fn dispatch(config: &Config, ctx: &RunContext) -> Result<Report, Error> {
    match config.mode {
        Mode::Preflight => preflight::run(config, ctx).await,
        Mode::Backup => backup::run(config, ctx).await,
        Mode::Restore => restore::run(config, ctx).await,
        Mode::Check => check::run(config, ctx).await,
        Mode::Prune => prune::run(config, ctx).await,
        Mode::Copy => copy::run(config, ctx).await,
        Mode::List => list::run(config, ctx).await,
        Mode::VolumeBackup => volume::backup_run(config, ctx).await,
        Mode::VolumeRestore => volume::restore_run(config, ctx).await,
    }
}

/// The storage at `location` as every mode reaches it: retried for
/// `STOW_RECONNECT_TIMEOUT`, throttled to `STOW_RATE_LIMIT` (one bucket per
/// process, shared by every repository it opens).
pub(crate) async fn storage(config: &Config, location: &Location) -> Arc<dyn Backend> {
    let throttle = config
        .rate_limit
        .as_ref()
        .map(|schedule| Throttle::shared(schedule, &config.timezone));
    backend::open(location, config.reconnect_timeout, throttle).await
}

/// `STOW_REPOSITORY` opened with `STOW_PASSWORD`, `STOW_COMPRESSION` and
/// `STOW_RESUME_BUFFER`. Validation guarantees both for modes that open a
/// repository.
pub(crate) fn repository(config: &Config) -> Opener<'_> {
    Opener(config)
}

/// A repository to open as the configuration says.
pub(crate) struct Opener<'a>(&'a Config);

impl Opener<'_> {
    pub(crate) async fn options(&self) -> Result<OpenOptions, Error> {
        let config = self.0;
        let access = config.repository_access().ok_or(Error::Missing(
            "this mode needs STOW_REPOSITORY and STOW_PASSWORD (or STOW_PASSWORD_FILE)",
        ))?;
        Ok(
            OpenOptions::new(storage(config, access.location).await, access.password)
                .compression(config.compression)
                .resume_buffer(config.resume_buffer),
        )
    }

    /// Opens the repository; with `create`, creates it where there is none.
    pub(crate) async fn open_or_create(
        &self,
        create: bool,
    ) -> Result<crate::repo::Repository, Error> {
        Ok(self
            .options()
            .await?
            .create_if_missing(create)
            .open()
            .await?)
    }

    pub(crate) async fn open(&self) -> Result<crate::repo::Repository, Error> {
        self.open_or_create(false).await
    }

    pub(crate) async fn open_lenient(
        &self,
    ) -> Result<(crate::repo::Repository, Vec<crate::repo::RepoError>), Error> {
        Ok(self.options().await?.open_lenient().await?)
    }
}
