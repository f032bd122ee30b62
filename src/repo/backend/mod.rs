//! Object storage behind one small async trait: filesystem, S3, memory.
//!
//! Keys are `/`-separated relative paths (`data/ab/<id>`). Objects are
//! immutable; only `prune` deletes.

mod fs;
mod mem;
mod retry;
mod s3;
mod throttle;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use fs::FsBackend;
pub use mem::MemBackend;
pub use retry::RetryBackend;
pub use s3::S3Backend;
pub use throttle::{Throttle, ThrottledBackend};

use crate::config::Location;

/// One object found by [`Backend::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Full key of the object.
    pub key: String,
    /// Size of the object, in bytes.
    pub size: u64,
}

/// The largest object a backend reads into memory. Nothing kubestow stores
/// is larger: a metadata object is at most 1 GiB of plaintext plus its
/// 38-byte envelope, and a pack is about 16 MiB plus one 64 MiB blob. A
/// bigger object is refused before anything is allocated for it.
pub const MAX_OBJECT_LEN: u64 = (1 << 30) + (1 << 20);

/// Why a storage operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The object does not exist.
    #[error("{location}: object {key} does not exist")]
    NotFound {
        /// The backend location.
        location: String,
        /// Key of the object.
        key: String,
    },
    /// Will not succeed on retry: denied, missing bucket, bad request.
    #[error("{location}: {op} {key} failed: {message}")]
    Permanent {
        /// The backend location.
        location: String,
        /// The operation, e.g. `get`.
        op: &'static str,
        /// Key (or prefix) operated on.
        key: String,
        /// The underlying error.
        message: String,
    },
    /// Network loss, timeout, throttling, 5xx: worth retrying.
    #[error("{location}: {op} {key} failed (retriable): {message}")]
    Transient {
        /// The backend location.
        location: String,
        /// The operation, e.g. `get`.
        op: &'static str,
        /// Key (or prefix) operated on.
        key: String,
        /// The underlying error.
        message: String,
    },
    /// The object (or the range asked for) is larger than
    /// [`MAX_OBJECT_LEN`]: refused before it is read into memory.
    #[error(
        "{location}: {op} {key}: {size} bytes is more than the {max} bytes any repository object can have; refusing to read it into memory"
    )]
    TooLarge {
        /// The backend location.
        location: String,
        /// The operation, e.g. `get`.
        op: &'static str,
        /// Key of the object.
        key: String,
        /// Its size (or the length of the range asked for), in bytes.
        size: u64,
        /// The limit, [`MAX_OBJECT_LEN`].
        max: u64,
    },
    /// A transient failure that retrying did not cure, or that was not
    /// retried because the run is stopping.
    #[error("{location}: {op} {key} still failing after retrying for {waited:?}: {message}")]
    GaveUp {
        /// The backend location.
        location: String,
        /// The operation, e.g. `get`.
        op: &'static str,
        /// Key (or prefix) operated on.
        key: String,
        /// Time since the first failure of this operation.
        waited: Duration,
        /// The last underlying error.
        message: String,
    },
}

impl BackendError {
    /// Whether the failure was transient, so a later attempt could succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            BackendError::Transient { .. } | BackendError::GaveUp { .. }
        )
    }

    /// Whether the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }
}

/// Result of a backend operation.
pub type Result<T> = std::result::Result<T, BackendError>;

/// An object store: immutable objects addressed by `/`-separated keys.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Human-readable location for messages, e.g. `s3://bucket/prefix`.
    fn location(&self) -> String;
    /// All objects whose key starts with `prefix`, in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// The whole object.
    async fn get(&self, key: &str) -> Result<Bytes>;
    /// `len` bytes of the object starting at byte `offset`.
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes>;
    /// The same range read on the calling thread, which must be one that
    /// may block, by a backend whose reads are local files; `None` from
    /// any other (use `get_range`). A walk that reads one small listing
    /// per directory saves the thread hand-offs of the async read, which
    /// cost more than the read itself.
    fn get_range_blocking(&self, _key: &str, _offset: u64, _len: u64) -> Option<Result<Bytes>> {
        None
    }
    /// Writes the whole object atomically: readers see all of it or nothing.
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;
    /// Removes the object; removing a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Size of the object, or `None` if it does not exist.
    async fn head(&self, key: &str) -> Result<Option<u64>>;

    /// Whether the object exists.
    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.head(key).await?.is_some())
    }

    /// Checks that the location can be reached at all (bucket exists, path
    /// is accessible), without requiring a repository there.
    async fn probe(&self) -> Result<()> {
        self.list("config").await.map(|_| ())
    }
}

/// Opens the backend for a location, wrapped in retries for `reconnect` and,
/// with `STOW_RATE_LIMIT` ([`Throttle::shared`]), in the rate limit.
pub async fn open(
    location: &Location,
    reconnect: Duration,
    throttle: Option<Arc<Throttle>>,
) -> Arc<dyn Backend> {
    let direct = open_direct(location).await;
    // The throttle sits inside the retries: a retried upload sends its bytes
    // again, so it is charged again.
    let inner: Arc<dyn Backend> = match throttle {
        Some(t) => Arc::new(ThrottledBackend::new(direct, t)),
        None => direct,
    };
    Arc::new(RetryBackend::new(inner, reconnect))
}

/// The backend without retries, for checks that must answer quickly.
pub async fn open_direct(location: &Location) -> Arc<dyn Backend> {
    match location {
        Location::File { path } => Arc::new(FsBackend::new(path.clone())),
        Location::S3 { bucket, prefix } => Arc::new(S3Backend::from_env(bucket, prefix).await),
    }
}

/// Rejects keys that could escape the repository root.
pub(crate) fn check_key(location: &str, op: &'static str, key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        return Err(BackendError::Permanent {
            location: location.into(),
            op,
            key: key.into(),
            message: "invalid object key".into(),
        });
    }
    Ok(())
}

/// Behaviour every backend must show; run by unit tests (memory,
/// filesystem) and integration tests (Garage).
#[doc(hidden)]
pub mod contract;
