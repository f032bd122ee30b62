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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("{location}: object {key} does not exist")]
    NotFound { location: String, key: String },
    /// Will not succeed on retry: denied, missing bucket, bad request.
    #[error("{location}: {op} {key} failed: {message}")]
    Permanent {
        location: String,
        op: &'static str,
        key: String,
        message: String,
    },
    /// Network loss, timeout, throttling, 5xx: worth retrying.
    #[error("{location}: {op} {key} failed (retriable): {message}")]
    Transient {
        location: String,
        op: &'static str,
        key: String,
        message: String,
    },
    #[error("{location}: {op} {key} still failing after retrying for {waited:?}: {message}")]
    GaveUp {
        location: String,
        op: &'static str,
        key: String,
        waited: Duration,
        message: String,
    },
}

impl BackendError {
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            BackendError::Transient { .. } | BackendError::GaveUp { .. }
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Human-readable location for messages, e.g. `s3://bucket/prefix`.
    fn location(&self) -> String;
    /// All objects whose key starts with `prefix`, in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    async fn get(&self, key: &str) -> Result<Bytes>;
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes>;
    /// Writes the whole object atomically: readers see all of it or nothing.
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;
    async fn delete(&self, key: &str) -> Result<()>;
    /// Size of the object, or `None` if it does not exist.
    async fn head(&self, key: &str) -> Result<Option<u64>>;

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
