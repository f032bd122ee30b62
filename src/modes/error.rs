//! The run-level error: one variant per module error, each keeping its
//! source, mapped to an exit status and classified as retriable or not.

use crate::config::ConfigErrors;
use crate::summary::{Outcome, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigErrors),
    /// A setting the mode needs is absent; validation should have caught it.
    #[error("{0}")]
    Missing(&'static str),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Backend(#[from] crate::repo::backend::BackendError),
    #[error(transparent)]
    Repo(crate::repo::RepoError),
    #[error(transparent)]
    Preflight(crate::preflight::PreflightError),
    #[error(transparent)]
    Resources(#[from] crate::resources::ResourceError),
    #[error(transparent)]
    Volume(crate::volume::VolumeError),
    /// A pre hook with `on-error=fail` failed; the mode did not run.
    #[error(transparent)]
    Hook(crate::hooks::HookError),
    #[error("cancelled by signal; in-flight work was drained")]
    Cancelled,
}

// Cancellation is one outcome whichever layer noticed it first.
impl From<crate::repo::RepoError> for Error {
    fn from(e: crate::repo::RepoError) -> Self {
        match e {
            crate::repo::RepoError::Cancelled => Error::Cancelled,
            e => Error::Repo(e),
        }
    }
}

impl From<crate::volume::VolumeError> for Error {
    fn from(e: crate::volume::VolumeError) -> Self {
        match e {
            crate::volume::VolumeError::Cancelled => Error::Cancelled,
            crate::volume::VolumeError::Repo(e) => e.into(),
            e => Error::Volume(e),
        }
    }
}

impl From<crate::preflight::PreflightError> for Error {
    fn from(e: crate::preflight::PreflightError) -> Self {
        match e {
            crate::preflight::PreflightError::Cancelled => Error::Cancelled,
            e => Error::Preflight(e),
        }
    }
}

impl From<crate::hooks::HookError> for Error {
    fn from(e: crate::hooks::HookError) -> Self {
        match e {
            crate::hooks::HookError::Cancelled => Error::Cancelled,
            crate::hooks::HookError::Cluster(e) => Error::Cluster(e),
            e => Error::Hook(e),
        }
    }
}

impl Outcome for Error {
    fn status(&self) -> Status {
        Error::status(self)
    }
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
            Error::Volume(e) => e.is_retriable(),
            Error::Resources(e) => e.is_retriable(),
            // A hook's target (a pod, a service) may well be back later.
            Error::Cancelled | Error::Hook(_) => true,
            Error::Config(_) | Error::Missing(_) | Error::Preflight(_) => false,
        }
    }
}
