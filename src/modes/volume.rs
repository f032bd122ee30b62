//! `volume-backup` and `volume-restore`: one directory tree, in this pod
//! (a mover Job, or `STOW_VOLUME_PATH` mounted by hand).

use std::path::PathBuf;

use crate::config::Config;
use crate::context::RunContext;
use crate::summary::Report;
use crate::volume::{BackupOptions, RestoreOptions, backup, restore};

use super::Error;

/// The volume's name in snapshots: `STOW_VOLUME_NAME`, else the path.
pub fn volume_name(config: &Config) -> String {
    config.volume.name.clone().unwrap_or_else(|| {
        config
            .volume
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    })
}

fn volume_path(config: &Config) -> Result<PathBuf, Error> {
    config
        .volume
        .path
        .clone()
        .ok_or(Error::Missing("volume modes need STOW_VOLUME_PATH"))
}

/// `volume-backup`: opens (or with `STOW_INIT`, creates) the repository and
/// backs up `STOW_VOLUME_PATH`.
pub async fn backup_run(config: &Config, ctx: &RunContext) -> Result<Report, Error> {
    // SIGTERM stops the retries of the repository and the API at once.
    ctx.link();
    let repo = super::repository(config)
        .open_or_create(config.init)
        .await?;
    // Before any blob is added or reused, so a concurrent prune keeps our packs.
    repo.announce_writer(&ctx.run_id).await?;
    // What an interrupted run stored but did not index is not uploaded again.
    repo.adopt_orphans().await?;
    let opts = BackupOptions {
        path: volume_path(config)?,
        name: volume_name(config),
        plan: config.plan.clone(),
        tags: config.tags.clone(),
        run_id: ctx.run_id.clone(),
        channels: usize::from(config.channels),
        mover: config.volume.mover,
        resume_buffer: config.resume_buffer,
        #[cfg(test)]
        hooks: Default::default(),
    };
    Ok(backup(&repo, &opts, &ctx.cancel).await?)
}

/// `volume-restore`: restores a volume into `STOW_VOLUME_PATH`.
pub async fn restore_run(config: &Config, ctx: &RunContext) -> Result<Report, Error> {
    // SIGTERM stops the retries of the repository and the API at once.
    ctx.link();
    let repo = super::repository(config).open().await?;
    let opts = RestoreOptions {
        path: volume_path(config)?,
        name: volume_name(config),
        snapshot: config.restore.snapshot.clone(),
        point: config.restore.point,
        channels: usize::from(config.channels),
        #[cfg(test)]
        hooks: Default::default(),
    };
    Ok(restore(&repo, &opts, &ctx.cancel).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_name_defaults_to_the_path() {
        let vars = |extra: &[(&str, &str)]| {
            let mut v: Vec<(String, String)> = [
                ("STOW_MODE", "volume-backup"),
                ("STOW_REPOSITORY", "file:///tmp/repo"),
                ("STOW_PASSWORD", "pw"),
                ("STOW_VOLUME_PATH", "/data"),
            ]
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            v.sort();
            crate::config::Config::from_vars(v, None).unwrap()
        };
        assert_eq!(volume_name(&vars(&[])), "/data");
        let named = vars(&[("STOW_VOLUME_NAME", "shop/data-db-0")]);
        assert_eq!(volume_name(&named), "shop/data-db-0");
    }
}
