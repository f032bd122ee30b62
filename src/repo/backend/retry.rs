//! Retries transient backend errors with jittered exponential backoff until
//! the reconnect window (`STOW_RECONNECT_TIMEOUT`) closes, or the run is
//! cancelled: a SIGTERM must not wait out the window.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use async_trait::async_trait;
use bytes::Bytes;
use tracing::{info, warn};

use super::{Backend, BackendError, ObjectInfo, Result};

const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(10);

/// Retries the transient failures of another backend until the reconnect
/// window closes or the run is cancelled.
#[derive(Debug)]
pub struct RetryBackend {
    inner: Arc<dyn Backend>,
    window: Duration,
    /// When the current outage began: logged once per outage, not once
    /// per request.
    lost_since: Mutex<Option<Instant>>,
    /// Stops the waiting between attempts (not an attempt in flight).
    cancel: CancellationToken,
}

impl RetryBackend {
    /// Stops waiting when the run is cancelled ([`crate::context`]).
    pub fn new(inner: Arc<dyn Backend>, window: Duration) -> Self {
        Self::with_cancel(inner, window, crate::context::run_token())
    }

    /// Stops waiting when `cancel` is cancelled; `window` is how long an
    /// outage may last before giving up.
    pub fn with_cancel(
        inner: Arc<dyn Backend>,
        window: Duration,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            inner,
            window,
            lost_since: Mutex::new(None),
            cancel,
        }
    }

    fn lost_since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.lost_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn retry<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T>
    where
        F: Fn() -> Fut + Send + Sync,
        Fut: Future<Output = Result<T>> + Send,
        T: Send,
    {
        // The window measures the outage: from this operation's first
        // failure, not from when it started (an upload begun just before
        // the loss would otherwise get less than the window).
        let mut failing_since: Option<Instant> = None;
        let mut delay = FIRST_DELAY;
        let mut retrying = false;
        loop {
            // During an outage an attempt may hang until its timeout; on
            // SIGTERM it is dropped too. A healthy attempt is left to finish
            // (in-flight work drains).
            let outcome = if retrying || self.lost_since().is_some() {
                tokio::select! {
                    r = f() => r,
                    _ = self.cancel.cancelled() => Err(BackendError::Transient {
                        location: self.inner.location(),
                        op,
                        key: key.into(),
                        message: "the connection is lost".into(),
                    }),
                }
            } else {
                f().await
            };
            retrying = true;
            match outcome {
                Ok(v) => {
                    if let Some(since) = self.lost_since().take() {
                        info!(location = %self.inner.location(), outage = ?since.elapsed(), "repository connection is back");
                    }
                    return Ok(v);
                }
                Err(BackendError::Transient { message, .. }) => {
                    let waited = failing_since.get_or_insert_with(Instant::now).elapsed();
                    let gave_up = |message: String| BackendError::GaveUp {
                        location: self.inner.location(),
                        op,
                        key: key.into(),
                        waited,
                        message,
                    };
                    if self.cancel.is_cancelled() {
                        return Err(gave_up(format!(
                            "{message}; not retried: the run is stopping"
                        )));
                    }
                    if waited >= self.window {
                        return Err(gave_up(format!(
                            "{message}; the reconnect window (STOW_RECONNECT_TIMEOUT={}) is over",
                            humantime(self.window)
                        )));
                    }
                    let first = {
                        let mut since = self.lost_since();
                        let first = since.is_none();
                        since.get_or_insert_with(Instant::now);
                        first
                    };
                    if first {
                        warn!(location = %self.inner.location(), op, key, error = %message, window = %humantime(self.window), "repository connection lost; retrying until the reconnect window closes");
                    }
                    let sleep = jitter(delay).min(self.window.saturating_sub(waited));
                    tokio::select! {
                        _ = tokio::time::sleep(sleep) => {}
                        _ = self.cancel.cancelled() => {
                            return Err(gave_up(format!(
                                "{message}; retrying stopped: the run is stopping"
                            )));
                        }
                    }
                    delay = (delay * 2).min(MAX_DELAY);
                }
                Err(other) => return Err(other),
            }
        }
    }
}

/// `90s`, `5m`: how the window is written in `STOW_RECONNECT_TIMEOUT`.
fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{}s", d.as_secs_f64())
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
    /// A failure that a retry could mend is left to `get_range`, which
    /// retries.
    fn get_range_blocking(&self, key: &str, offset: u64, len: u64) -> Option<Result<Bytes>> {
        match self.inner.get_range_blocking(key, offset, len) {
            Some(Err(e)) if e.is_retriable() => None,
            r => r,
        }
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

    impl Flaky {
        /// A transient failure while `failures` last.
        fn fail(&self, op: &'static str, key: &str) -> Result<()> {
            let mut f = self.failures.lock().unwrap();
            if *f == 0 {
                return Ok(());
            }
            *f -= 1;
            Err(BackendError::Transient {
                location: "flaky://".into(),
                op,
                key: key.into(),
                message: "connection reset".into(),
            })
        }
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
            self.fail("get", key)?;
            self.inner.get(key).await
        }
        async fn get_range(&self, k: &str, o: u64, l: u64) -> Result<Bytes> {
            self.inner.get_range(k, o, l).await
        }
        fn get_range_blocking(&self, k: &str, o: u64, l: u64) -> Option<Result<Bytes>> {
            if let Err(e) = self.fail("get range", k) {
                return Some(Err(e));
            }
            Some(futures::executor::block_on(self.inner.get_range(k, o, l)))
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

    /// A read on the calling thread that fails transiently is left to the
    /// async read, which retries; a lasting failure is returned as it is.
    #[tokio::test]
    async fn blocking_read_leaves_transient_failures_to_the_retries() {
        let flaky = Arc::new(Flaky {
            inner: Default::default(),
            failures: Mutex::new(1),
        });
        flaky.put("a/b", Bytes::from_static(b"xy")).await.unwrap();
        let r = RetryBackend::new(flaky.clone(), Duration::from_secs(60));
        assert!(r.get_range_blocking("a/b", 1, 1).is_none());
        let read = r.get_range_blocking("a/b", 1, 1).expect("read here");
        assert_eq!(read.unwrap(), Bytes::from_static(b"y"));
        let missing = r.get_range_blocking("a/c", 0, 1).expect("read here");
        assert!(missing.unwrap_err().is_not_found());
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
    async fn cancellation_stops_the_waiting() {
        let flaky = Arc::new(Flaky {
            inner: Default::default(),
            failures: Mutex::new(u32::MAX),
        });
        let cancel = CancellationToken::new();
        let r = RetryBackend::with_cancel(flaky, Duration::from_secs(300), cancel.clone());
        let start = tokio::time::Instant::now();
        let stop = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            cancel.cancel();
        });
        let err = r.get("a/b").await.unwrap_err();
        stop.await.unwrap();
        assert!(matches!(err, BackendError::GaveUp { .. }), "{err}");
        assert!(err.to_string().contains("stopping"), "{err}");
        // Stopped at the cancellation, not at the end of the window.
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
        // Once cancelled, a new failure is not waited on at all.
        let again = r.get("a/b").await.unwrap_err();
        assert!(matches!(again, BackendError::GaveUp { .. }), "{again}");
        assert!(start.elapsed() < Duration::from_secs(4));
    }

    /// An attempt that hangs during an outage (no timeout yet) is dropped
    /// on cancellation too.
    #[tokio::test(start_paused = true)]
    async fn cancellation_drops_a_hanging_retry() {
        #[derive(Debug)]
        struct Hang(Mutex<u32>);
        #[async_trait]
        impl Backend for Hang {
            fn location(&self) -> String {
                "hang://".into()
            }
            async fn list(&self, _: &str) -> Result<Vec<ObjectInfo>> {
                unreachable!()
            }
            async fn get(&self, key: &str) -> Result<Bytes> {
                let first = {
                    let mut n = self.0.lock().unwrap();
                    *n += 1;
                    *n == 1
                };
                if first {
                    return Err(BackendError::Transient {
                        location: "hang://".into(),
                        op: "get",
                        key: key.into(),
                        message: "connection reset".into(),
                    });
                }
                std::future::pending().await
            }
            async fn get_range(&self, _: &str, _: u64, _: u64) -> Result<Bytes> {
                unreachable!()
            }
            async fn put(&self, _: &str, _: Bytes) -> Result<()> {
                unreachable!()
            }
            async fn delete(&self, _: &str) -> Result<()> {
                unreachable!()
            }
            async fn head(&self, _: &str) -> Result<Option<u64>> {
                unreachable!()
            }
        }
        let cancel = CancellationToken::new();
        let r = RetryBackend::with_cancel(
            Arc::new(Hang(Mutex::new(0))),
            Duration::from_secs(300),
            cancel.clone(),
        );
        let start = tokio::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            cancel.cancel();
        });
        let err = r.get("k").await.unwrap_err();
        assert!(err.to_string().contains("stopping"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(31));
    }

    #[tokio::test(start_paused = true)]
    async fn giving_up_names_the_window() {
        let flaky = Arc::new(Flaky {
            inner: Default::default(),
            failures: Mutex::new(u32::MAX),
        });
        let r =
            RetryBackend::with_cancel(flaky, Duration::from_secs(120), CancellationToken::new());
        let err = r.get("a/b").await.unwrap_err().to_string();
        assert!(
            err.contains("flaky://") && err.contains("STOW_RECONNECT_TIMEOUT=2m"),
            "{err}"
        );
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
