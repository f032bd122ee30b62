//! Retries transient backend errors with jittered exponential backoff until
//! the reconnect window (`STOW_RECONNECT_TIMEOUT`) closes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use tracing::{info, warn};

use super::{Backend, BackendError, ObjectInfo, Result};

const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct RetryBackend {
    inner: Arc<dyn Backend>,
    window: Duration,
    /// Logged once per outage, not once per request.
    lost: AtomicBool,
}

impl RetryBackend {
    pub fn new(inner: Arc<dyn Backend>, window: Duration) -> Self {
        Self {
            inner,
            window,
            lost: AtomicBool::new(false),
        }
    }

    async fn retry<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T>
    where
        F: Fn() -> Fut + Send + Sync,
        Fut: Future<Output = Result<T>> + Send,
        T: Send,
    {
        let start = Instant::now();
        let mut delay = FIRST_DELAY;
        loop {
            match f().await {
                Ok(v) => {
                    if self.lost.swap(false, Ordering::Relaxed) {
                        info!(location = %self.inner.location(), after = ?start.elapsed(), "repository connection is back");
                    }
                    return Ok(v);
                }
                Err(BackendError::Transient { message, .. }) => {
                    let waited = start.elapsed();
                    if waited >= self.window {
                        return Err(BackendError::GaveUp {
                            location: self.inner.location(),
                            op,
                            key: key.into(),
                            waited,
                            message,
                        });
                    }
                    if !self.lost.swap(true, Ordering::Relaxed) {
                        warn!(location = %self.inner.location(), op, key, error = %message, window = ?self.window, "repository connection lost; retrying");
                    }
                    let sleep = jitter(delay).min(self.window.saturating_sub(waited));
                    tokio::time::sleep(sleep).await;
                    delay = (delay * 2).min(MAX_DELAY);
                }
                Err(other) => return Err(other),
            }
        }
    }
}

/// Full jitter in [d/2, d): spreads the retries of parallel channels.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let frac = 0.5 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0;
    d.mul_f64(frac)
}

#[async_trait]
impl Backend for RetryBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.retry("list", prefix, || self.inner.list(prefix)).await
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.retry("get", key, || self.inner.get(key)).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        self.retry("get range", key, || self.inner.get_range(key, offset, len))
            .await
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.retry("put", key, || self.inner.put(key, data.clone()))
            .await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.retry("delete", key, || self.inner.delete(key)).await
    }
    async fn head(&self, key: &str) -> Result<Option<u64>> {
        self.retry("head", key, || self.inner.head(key)).await
    }
    async fn probe(&self) -> Result<()> {
        self.retry("probe", "", || self.inner.probe()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Fails `failures` times with a transient error, then delegates.
    #[derive(Debug)]
    struct Flaky {
        inner: super::super::MemBackend,
        failures: Mutex<u32>,
    }

    #[async_trait]
    impl Backend for Flaky {
        fn location(&self) -> String {
            "flaky://".into()
        }
        async fn list(&self, p: &str) -> Result<Vec<ObjectInfo>> {
            self.inner.list(p).await
        }
        async fn get(&self, key: &str) -> Result<Bytes> {
            let fail = {
                let mut f = self.failures.lock().unwrap();
                let fail = *f > 0;
                if fail {
                    *f -= 1;
                }
                fail
            };
            if fail {
                return Err(BackendError::Transient {
                    location: "flaky://".into(),
                    op: "get",
                    key: key.into(),
                    message: "connection reset".into(),
                });
            }
            self.inner.get(key).await
        }
        async fn get_range(&self, k: &str, o: u64, l: u64) -> Result<Bytes> {
            self.inner.get_range(k, o, l).await
        }
        async fn put(&self, k: &str, d: Bytes) -> Result<()> {
            self.inner.put(k, d).await
        }
        async fn delete(&self, k: &str) -> Result<()> {
            self.inner.delete(k).await
        }
        async fn head(&self, k: &str) -> Result<Option<u64>> {
            self.inner.head(k).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn survives_outage_shorter_than_window() {
        let flaky = Arc::new(Flaky {
            inner: Default::default(),
            failures: Mutex::new(5),
        });
        flaky.put("a/b", Bytes::from_static(b"x")).await.unwrap();
        let r = RetryBackend::new(flaky.clone(), Duration::from_secs(60));
        assert_eq!(r.get("a/b").await.unwrap(), Bytes::from_static(b"x"));
        assert_eq!(*flaky.failures.lock().unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_window_closes() {
        let flaky = Arc::new(Flaky {
            inner: Default::default(),
            failures: Mutex::new(u32::MAX),
        });
        let r = RetryBackend::new(flaky, Duration::from_secs(60));
        let start = tokio::time::Instant::now();
        let err = r.get("a/b").await.unwrap_err();
        assert!(matches!(err, BackendError::GaveUp { .. }), "{err}");
        assert!(err.to_string().contains("a/b"));
        assert!(start.elapsed() >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_fail_at_once() {
        let r = RetryBackend::new(
            Arc::new(super::super::MemBackend::new()),
            Duration::from_secs(60),
        );
        let err = r.get("missing").await.unwrap_err();
        assert!(err.is_not_found());
    }
}
