//! The run-level error: one variant per module error, each keeping its
//! source, mapped to an exit status and classified as retriable or not.

use crate::config::ConfigErrors;
use crate::summary::{Outcome, Status};

/// Why a mode run failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigErrors),
    /// A setting the mode needs is absent; validation should have caught it.
    #[error("{0}")]
    Missing(&'static str),
    /// Talking to the Kubernetes API server failed.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The storage backend under the repository failed.
    #[error(transparent)]
    Backend(#[from] crate::repo::backend::BackendError),
    /// Reading or writing the repository failed.
    #[error(transparent)]
    Repo(crate::repo::RepoError),
    /// The preflight checks stopped the run.
    #[error(transparent)]
    Preflight(crate::preflight::PreflightError),
    /// A resource run failed as a whole: no snapshot, unreadable catalogue, bad selection.
    #[error(transparent)]
    Resources(#[from] crate::resources::ResourceError),
    /// Backing up or restoring volume data failed.
    #[error(transparent)]
    Volume(crate::volume::VolumeError),
    /// A pre hook with `on-error=fail` failed; the mode did not run.
    #[error(transparent)]
    Hook(crate::hooks::HookError),
    /// A signal cancelled the run; in-flight work was drained first.
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
    /// The exit status for this error: configuration error, cancelled, or failed.
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
