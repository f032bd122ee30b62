//! Errors of the repository layer. Each names the repository location or
//! the object key (and blob id) it is about, so a message alone tells an
//! operator what to look at.

use super::backend::BackendError;
use super::id::BlobId;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RepoError {
    #[error("{location}: wrong password: no key object in keys/ can be opened with it")]
    WrongPassword { location: String },
    #[error(
        "{location}: a repository already exists here (found `config`); refusing to initialise it again"
    )]
    AlreadyExists { location: String },
    #[error(
        "{location}: no repository here (no `config` object); set STOW_INIT=true to create one"
    )]
    NotInitialised { location: String },
    #[error("{key}{}: corrupt: {reason}", blob.as_ref().map(|b| format!(" (blob {b})")).unwrap_or_default())]
    Corrupt {
        key: String,
        blob: Option<String>,
        reason: String,
    },
    #[error("blob {id} is not in the repository index")]
    MissingBlob { id: BlobId },
    /// A snapshot may only reference blobs whose index file is stored, or a
    /// reader could not find them.
    #[error(
        "blob {id} is referenced by the snapshot but its index is not saved yet; flush or finish the writer first"
    )]
    NotFlushed { id: BlobId },
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Readable, but not in a format this version understands.
    #[error("{key}: unsupported format: {reason}")]
    Format { key: String, reason: String },
    #[error("blob of {size} bytes is larger than the limit of {max} bytes")]
    BlobTooLarge { size: usize, max: usize },
    #[error("{location}: cannot remove key {key_id}: {reason}")]
    KeyRemoval {
        location: String,
        key_id: String,
        reason: String,
    },
    /// Another prune holds the exclusive prune lock.
    #[error(
        "{location}: another prune holds the lock {key} (run {holder}, since {since}); try again later, or delete the lock object if that prune is dead"
    )]
    Locked {
        location: String,
        key: String,
        holder: String,
        since: String,
    },
    /// The prune lock was lost while pruning; the prune stopped before
    /// deleting anything more.
    #[error("prune lock {key} lost: {reason}")]
    LockLost { key: String, reason: String },
    /// An operation (prune, copy) refused to go on, to keep data safe.
    #[error("{operation}: {reason}")]
    Refused {
        operation: &'static str,
        reason: String,
    },
    /// The run was cancelled (SIGTERM) before the operation finished.
    #[error("cancelled by signal")]
    Cancelled,
    #[error("{location}: {what} failed: {reason}")]
    Internal {
        location: String,
        what: &'static str,
        reason: String,
    },
}

impl RepoError {
    /// Whether retrying the operation (or the Job) could succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            RepoError::Backend(e) => e.is_retriable(),
            RepoError::Locked { .. } | RepoError::LockLost { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn corrupt(key: &str, blob: Option<&BlobId>, reason: impl Into<String>) -> Self {
        RepoError::Corrupt {
            key: key.to_string(),
            blob: blob.map(BlobId::to_hex),
            reason: reason.into(),
        }
    }

    pub(crate) fn refused(operation: &'static str, reason: impl Into<String>) -> Self {
        RepoError::Refused {
            operation,
            reason: reason.into(),
        }
    }

    pub(crate) fn format(key: &str, reason: impl Into<String>) -> Self {
        RepoError::Format {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}
