//! Why a mover, or the objects around it, failed for one volume.

use std::sync::Arc;

use crate::cluster::api::{message, retriable};
use crate::config::vars;

/// One volume's failure; it becomes an item error of the run's report.
#[derive(Debug, thiserror::Error)]
pub enum MoverError {
    /// Neither `STOW_IMAGE` nor this pod's name is known.
    #[error(
        "cannot tell which image movers run: set {} (or {} and {} through the downward API)",
        vars::IMAGE,
        vars::POD_NAME,
        vars::POD_NAMESPACE
    )]
    NoImage,
    #[error(
        "reading this pod {namespace}/{pod} to find its image: {}",
        message(source)
    )]
    ReadPod {
        namespace: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("this pod {namespace}/{pod} does not exist; set {}", vars::IMAGE)]
    PodGone { namespace: String, pod: String },
    #[error("pod {namespace}/{pod} has no container image; set {}", vars::IMAGE)]
    NoContainerImage { namespace: String, pod: String },
    #[error("listing {what}: {}", message(source))]
    List {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating {kind} {namespace}/{name}: {}", message(source))]
    Create {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// An object of an earlier attempt could not be adopted.
    #[error("{kind} {namespace}/{name}: {}", message(source))]
    Adopt {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "reading VolumeSnapshot {namespace}/{snapshot} of claim {claim}: {}",
        message(source)
    )]
    ReadSnapshot {
        namespace: String,
        snapshot: String,
        claim: String,
        #[source]
        source: kube::Error,
    },
    #[error("VolumeSnapshot {namespace}/{snapshot} of claim {claim} disappeared")]
    SnapshotGone {
        namespace: String,
        snapshot: String,
        claim: String,
    },
    #[error(
        "VolumeSnapshot {namespace}/{snapshot} of claim {claim} was not ready to use after {seconds}s ({}){error}",
        vars::SNAPSHOT_TIMEOUT
    )]
    SnapshotNotReady {
        namespace: String,
        snapshot: String,
        claim: String,
        seconds: u64,
        /// `: ` and the snapshot's own error message, or empty.
        error: String,
    },
    #[error("deleting the failed mover Job {namespace}/{job}: {}", message(source))]
    DeleteFailedJob {
        namespace: String,
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating mover Job {namespace}/{job}: {}", message(source))]
    CreateJob {
        namespace: String,
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("mover Job {namespace}/{job} was deleted by someone else")]
    JobDeleted { namespace: String, job: String },
    #[error("watching mover Job {namespace}/{job}: {}", message(source))]
    WatchJob {
        namespace: String,
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("mover Job {namespace}/{job} failed after its retries: {why}")]
    JobFailed {
        namespace: String,
        job: String,
        why: String,
    },
    #[error(
        "mover Job {namespace}/{job} did not start within {seconds}s ({}): {why}",
        vars::MOVER_START_TIMEOUT
    )]
    NotStarted {
        namespace: String,
        job: String,
        seconds: u64,
        why: String,
    },
    #[error("reading the mover's result: {source}")]
    ReadResult {
        volume: String,
        #[source]
        source: crate::repo::RepoError,
    },
    #[error("mover Job {namespace}/{job} succeeded but saved no result to the repository")]
    NoResult { namespace: String, job: String },
    /// A consistency hook (freeze, flush) failed before the volume was read.
    #[error(transparent)]
    Consistency(Box<dyn std::error::Error + Send + Sync>),
    /// The snapshot step's failure, shared with the volume's data step.
    #[error(transparent)]
    Shared(Arc<MoverError>),
    #[error("cancelled")]
    Cancelled,
}

impl MoverError {
    /// Whether a retried run could succeed: API and repository errors
    /// that were transient, and Jobs that failed or did not start.
    pub fn is_retriable(&self) -> bool {
        match self {
            MoverError::ReadPod { source, .. }
            | MoverError::List { source, .. }
            | MoverError::Create { source, .. }
            | MoverError::Adopt { source, .. }
            | MoverError::ReadSnapshot { source, .. }
            | MoverError::DeleteFailedJob { source, .. }
            | MoverError::CreateJob { source, .. }
            | MoverError::WatchJob { source, .. } => retriable(source),
            MoverError::ReadResult { source, .. } => source.is_retriable(),
            MoverError::Shared(e) => e.is_retriable(),
            MoverError::Cancelled
            | MoverError::JobFailed { .. }
            | MoverError::NotStarted { .. }
            | MoverError::SnapshotNotReady { .. }
            | MoverError::Consistency(_) => true,
            MoverError::NoImage
            | MoverError::PodGone { .. }
            | MoverError::NoContainerImage { .. }
            | MoverError::SnapshotGone { .. }
            | MoverError::JobDeleted { .. }
            | MoverError::NoResult { .. } => false,
        }
    }
}
