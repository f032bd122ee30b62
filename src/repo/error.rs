//! Errors of the repository layer. Each names the repository location or
//! the object key (and blob id) it is about, so a message alone tells an
//! operator what to look at.

use super::backend::BackendError;
use super::id::BlobId;

/// Why an operation on a repository failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RepoError {
    /// No key object could be decrypted with the given password.
    #[error("{location}: wrong password: no key object in keys/ can be opened with it")]
    WrongPassword {
        /// The repository location.
        location: String,
    },
    /// Initialising found a `config` object already at the location.
    #[error(
        "{location}: a repository already exists here (found `config`); refusing to initialise it again"
    )]
    AlreadyExists {
        /// The repository location.
        location: String,
    },
    /// Opening found no `config` object at the location.
    #[error(
        "{location}: no repository here (no `config` object); set STOW_INIT=true to create one"
    )]
    NotInitialised {
        /// The repository location.
        location: String,
    },
    /// An object failed to decrypt, or its contents do not match its id or
    /// its declared structure.
    #[error("{key}{}: corrupt: {reason}", blob.as_ref().map(|b| format!(" (blob {b})")).unwrap_or_default())]
    Corrupt {
        /// Key of the corrupt object.
        key: String,
        /// Hex id of the affected blob, if the damage is within one.
        blob: Option<String>,
        /// What is wrong with it.
        reason: String,
    },
    /// A blob was requested that no loaded index entry lists.
    #[error("blob {id} is not in the repository index")]
    MissingBlob {
        /// The blob looked up.
        id: BlobId,
    },
    /// A snapshot may only reference blobs whose index file is stored, or a
    /// reader could not find them.
    #[error(
        "blob {id} is referenced by the snapshot but its index is not saved yet; flush or finish the writer first"
    )]
    NotFlushed {
        /// The referenced blob whose index entry is not stored yet.
        id: BlobId,
    },
    /// The storage backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Readable, but not in a format this version understands.
    #[error("{key}: unsupported format: {reason}")]
    Format {
        /// Key of the object.
        key: String,
        /// What about its format is unsupported.
        reason: String,
    },
    /// A blob to store exceeds the maximum blob size.
    #[error("blob of {size} bytes is larger than the limit of {max} bytes")]
    BlobTooLarge {
        /// Size of the blob, in bytes.
        size: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// A key object could not be removed: it does not exist, is the last
    /// key, or is the key in use.
    #[error("{location}: cannot remove key {key_id}: {reason}")]
    KeyRemoval {
        /// The repository location.
        location: String,
        /// Id of the key object.
        key_id: String,
        /// Why it was refused.
        reason: String,
    },
    /// Another prune holds the exclusive prune lock.
    #[error(
        "{location}: another prune holds the lock {key} (run {holder}, since {since}); try again later, or delete the lock object if that prune is dead"
    )]
    Locked {
        /// The repository location.
        location: String,
        /// Key of the lock object that wins.
        key: String,
        /// Run id of the holder, or `<unreadable>`.
        holder: String,
        /// When the holder created the lock; empty if unreadable.
        since: String,
    },
    /// The prune lock was lost while pruning; the prune stopped before
    /// deleting anything more.
    #[error("prune lock {key} lost: {reason}")]
    LockLost {
        /// Key of our lock object.
        key: String,
        /// How it was lost.
        reason: String,
    },
    /// An operation (prune, copy) refused to go on, to keep data safe.
    #[error("{operation}: {reason}")]
    Refused {
        /// The operation that refused, e.g. `prune`.
        operation: &'static str,
        /// Why it refused.
        reason: String,
    },
    /// The run was cancelled (SIGTERM) before the operation finished.
    #[error("cancelled by signal")]
    Cancelled,
    /// A blocking task running repository work panicked or was cancelled.
    #[error("{location}: {what} failed: {reason}")]
    Internal {
        /// The repository location.
        location: String,
        /// The work that failed.
        what: &'static str,
        /// The join error.
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
