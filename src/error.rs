//! The run-level error: one variant per module error, each mapped to an exit
//! status and classified as retriable or not.

use crate::config::{ConfigErrors, Mode};
use crate::summary::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigErrors),
    #[error("mode {0} is not implemented yet")]
    NotImplemented(Mode),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Backend(#[from] crate::repo::backend::BackendError),
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
    #[error("{0}")]
    Preflight(String),
    #[error(transparent)]
    Resources(#[from] crate::resources::ResourceError),
    #[error("prune: {0}")]
    Prune(String),
    #[error("copy: {0}")]
    Copy(String),
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
    #[error("cancelled by signal; in-flight work was drained")]
    Cancelled,
    /// A pre hook with `on-error=fail` failed; the mode did not run.
    #[error("{0}")]
    Hook(String),
}

impl Error {
    pub fn status(&self) -> Status {
        match self {
            Error::Config(_) => Status::ConfigError,
            Error::Cancelled => Status::Cancelled,
            _ => Status::Failed,
        }
    }

    /// Whether a Job retry could succeed where this run failed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Cluster(e) => e.is_retriable(),
            Error::Backend(e) => e.is_retriable(),
            Error::Repo(e) => e.is_retriable(),
            // A hook's target (a pod, a service) may well be back later.
            Error::Cancelled | Error::Hook(_) => true,
            Error::Config(_)
            | Error::NotImplemented(_)
            | Error::Preflight(_)
            | Error::Prune(_)
            | Error::Copy(_)
            | Error::Volume(_)
            | Error::Resources(_) => false,
        }
    }
}
