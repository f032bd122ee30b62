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
    /// Reading this pod, to take its image as the movers', failed.
    #[error(
        "reading this pod {namespace}/{pod} to find its image: {}",
        message(source)
    )]
    ReadPod {
        /// Namespace of this pod.
        namespace: String,
        /// Name of this pod.
        pod: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// This pod, named through the downward API, was not found.
    #[error("this pod {namespace}/{pod} does not exist; set {}", vars::IMAGE)]
    PodGone {
        /// Namespace of this pod.
        namespace: String,
        /// Name of this pod.
        pod: String,
    },
    /// This pod's spec has no container with an image to give movers.
    #[error("pod {namespace}/{pod} has no container image; set {}", vars::IMAGE)]
    NoContainerImage {
        /// Namespace of this pod.
        namespace: String,
        /// Name of this pod.
        pod: String,
    },
    /// Neither `STOW_MOVER_NAMESPACE` nor this pod's namespace is known.
    #[error(
        "cannot tell which namespace movers run in: set {} (kubestow's own namespace), or {} through the downward API",
        vars::MOVER_NAMESPACE,
        vars::POD_NAMESPACE
    )]
    NoHome,
    /// An API call around a mover (hand-over, snapshot copy) failed.
    #[error("{what}: {}", message(source))]
    Api {
        /// What was done, naming the object.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A step around a mover cannot go on, e.g. an object is missing.
    #[error("{0}")]
    Step(String),
    /// Admission refused the mover's pods (Pod Security, quota, policy).
    #[error("mover Job {namespace}/{job} cannot create its pod: {why}")]
    Rejected {
        /// Namespace of the Job.
        namespace: String,
        /// Name of the Job.
        job: String,
        /// The Job controller's `FailedCreate` event message.
        why: String,
    },
    /// Listing objects needed to plan the volumes failed.
    #[error("listing {what}: {}", message(source))]
    List {
        /// What was listed, e.g. `pods in <namespace>`.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Creating a temporary object for a mover failed.
    #[error("creating {kind} {namespace}/{name}: {}", message(source))]
    Create {
        /// Kind of the object.
        kind: String,
        /// Namespace of the object.
        namespace: String,
        /// Name of the object.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// An object of an earlier attempt could not be adopted.
    #[error("{kind} {namespace}/{name}: {}", message(source))]
    Adopt {
        /// Kind of the object.
        kind: String,
        /// Namespace of the object.
        namespace: String,
        /// Name of the object.
        name: String,
        /// The creation conflict if the object has gone since, else the
        /// error reading it.
        #[source]
        source: kube::Error,
    },
    /// Reading a VolumeSnapshot while waiting for it to be ready failed.
    #[error(
        "reading VolumeSnapshot {namespace}/{snapshot} of claim {claim}: {}",
        message(source)
    )]
    ReadSnapshot {
        /// Namespace of the snapshot and claim.
        namespace: String,
        /// Name of the VolumeSnapshot.
        snapshot: String,
        /// The claim it snapshots.
        claim: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A VolumeSnapshot was deleted while waiting for it to be ready.
    #[error("VolumeSnapshot {namespace}/{snapshot} of claim {claim} disappeared")]
    SnapshotGone {
        /// Namespace of the snapshot and claim.
        namespace: String,
        /// Name of the VolumeSnapshot.
        snapshot: String,
        /// The claim it snapshots.
        claim: String,
    },
    /// A VolumeSnapshot was not ready to use within `STOW_SNAPSHOT_TIMEOUT`.
    #[error(
        "VolumeSnapshot {namespace}/{snapshot} of claim {claim} was not ready to use after {seconds}s ({}){error}",
        vars::SNAPSHOT_TIMEOUT
    )]
    SnapshotNotReady {
        /// Namespace of the snapshot and claim.
        namespace: String,
        /// Name of the VolumeSnapshot.
        snapshot: String,
        /// The claim it snapshots.
        claim: String,
        /// The timeout that ran out, in seconds.
        seconds: u64,
        /// `: ` and the snapshot's own error message, or empty.
        error: String,
    },
    /// Deleting a failed mover Job of an earlier attempt, to replace it, failed.
    #[error("deleting the failed mover Job {namespace}/{job}: {}", message(source))]
    DeleteFailedJob {
        /// Namespace of the Job.
        namespace: String,
        /// Name of the Job.
        job: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Re-creating a mover Job in place of a failed one failed.
    #[error("creating mover Job {namespace}/{job}: {}", message(source))]
    CreateJob {
        /// Namespace of the Job.
        namespace: String,
        /// Name of the Job.
        job: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The mover Job vanished, or was replaced by another of the same name,
    /// while it ran.
    #[error("mover Job {namespace}/{job} was deleted by someone else")]
    JobDeleted {
        /// Namespace of the Job.
        namespace: String,
        /// Name of the Job.
        job: String,
    },
    /// Reading the mover Job while waiting for it failed.
    #[error("watching mover Job {namespace}/{job}: {}", message(source))]
    WatchJob {
        /// Namespace of the Job.
        namespace: String,
        /// Name of the Job.
        job: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The mover Job failed for good, after its retries.
    #[error("mover Job {namespace}/{job} failed after its retries: {why}")]
    JobFailed {
        /// Namespace of the Job.
        namespace: String,
        /// Name of the Job.
        job: String,
        /// Why its last failed pod failed: the mover's reason, first error
        /// or exit code.
        why: String,
    },
    /// No pod of the mover Job got past `Pending` within
    /// `STOW_MOVER_START_TIMEOUT`.
    #[error(
        "mover Job {namespace}/{job} did not start within {seconds}s ({}): {why}",
        vars::MOVER_START_TIMEOUT
    )]
    NotStarted {
        /// Namespace of the Job.
        namespace: String,
        /// Name of the Job.
        job: String,
        /// The timeout that ran out, in seconds.
        seconds: u64,
        /// Why a pod is still pending, or that no pod was created.
        why: String,
    },
    /// Reading the mover result from the repository failed.
    #[error("reading the mover's result: {source}")]
    ReadResult {
        /// The volume whose result was read.
        volume: String,
        /// The repository error.
        #[source]
        source: crate::repo::RepoError,
    },
    /// The mover Job succeeded but the repository holds no result of it.
    #[error("mover Job {namespace}/{job} succeeded but saved no result to the repository")]
    NoResult {
        /// Namespace of the Job.
        namespace: String,
        /// Name of the Job.
        job: String,
    },
    /// A consistency hook (freeze, flush) failed before the volume was read.
    #[error(transparent)]
    Consistency(Box<dyn std::error::Error + Send + Sync>),
    /// The snapshot step's failure, shared with the volume's data step.
    #[error(transparent)]
    Shared(Arc<MoverError>),
    /// The run was cancelled while waiting for a Job or snapshot.
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
            | MoverError::Api { source, .. }
            | MoverError::DeleteFailedJob { source, .. }
            | MoverError::CreateJob { source, .. }
            | MoverError::WatchJob { source, .. } => retriable(source),
            MoverError::ReadResult { source, .. } => source.is_retriable(),
            MoverError::Shared(e) => e.is_retriable(),
            MoverError::Cancelled
            | MoverError::JobFailed { .. }
            | MoverError::NotStarted { .. }
            | MoverError::SnapshotNotReady { .. }
            | MoverError::Step(_)
            | MoverError::Consistency(_) => true,
            MoverError::NoImage
            | MoverError::NoHome
            | MoverError::Rejected { .. }
            | MoverError::PodGone { .. }
            | MoverError::NoContainerImage { .. }
            | MoverError::SnapshotGone { .. }
            | MoverError::JobDeleted { .. }
            | MoverError::NoResult { .. } => false,
        }
    }
}
