//! Raw JSON access to the API server for dynamic types, with retries of
//! retriable errors (network, 429, 5xx) inside the reconnect window.
//!
//! Objects stay `serde_json::Value` end to end, so nothing the server sends
//! is lost to a typed round trip.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::core::Request;
use kube::core::params::GetParams;
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::ResourceType;
use crate::cluster::Cluster;
use crate::error::error_chain;

/// One page of a list call.
#[derive(Debug, Deserialize)]
pub(crate) struct Page {
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: PageMeta,
    /// An empty list comes as `null` from some servers.
    #[serde(default, deserialize_with = "null_as_default")]
    pub items: Vec<Value>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PageMeta {
    #[serde(default, rename = "continue")]
    pub continue_: Option<String>,
}

#[cfg(test)]
#[test]
fn empty_pages_parse() {
    let p: Page =
        serde_json::from_str(r#"{"metadata":{"resourceVersion":"1"},"items":null}"#).unwrap();
    assert!(p.items.is_empty() && p.metadata.continue_.is_none());
}

/// A cluster plus the window in which retriable errors are retried.
#[derive(Clone, Debug)]
pub(crate) struct Kube {
    pub cluster: Cluster,
    pub window: Duration,
    /// Stops the waiting between attempts: SIGTERM must not wait out the
    /// window.
    pub cancel: CancellationToken,
    /// When the current outage began, shared by clones: logged once per
    /// outage, not once per request.
    lost_since: Arc<Mutex<Option<tokio::time::Instant>>>,
}

/// `/api/v1/namespaces/x/configmaps` style path.
pub(crate) fn path(rt: &ResourceType, ns: Option<&str>) -> String {
    let base = if rt.group.is_empty() {
        format!("/api/{}", rt.version)
    } else {
        format!("/apis/{}/{}", rt.group, rt.version)
    };
    match ns {
        Some(ns) if rt.namespaced => format!("{base}/namespaces/{ns}/{}", rt.plural),
        _ => format!("{base}/{}", rt.plural),
    }
}

/// HTTP status of an API error, if it is one.
pub(crate) fn status(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

pub(crate) fn reason(e: &kube::Error) -> Option<&str> {
    match e {
        kube::Error::Api(s) => Some(s.reason.as_str()),
        _ => None,
    }
}

/// A message for a person: `403 Forbidden: <the API server's message>`.
pub(crate) fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.message.is_empty() => format!("{} {}", s.code, s.reason),
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => error_chain(other),
    }
}

pub(crate) fn retriable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Throttling is the server working as intended, not a lost connection.
fn outage(e: &kube::Error) -> bool {
    retriable(e) && status(e) != Some(429)
}

impl Kube {
    /// Stops waiting when the run is cancelled ([`crate::context`]).
    pub(crate) fn new(cluster: Cluster, window: Duration) -> Self {
        Self {
            cluster,
            window,
            cancel: crate::context::run_token(),
            lost_since: Arc::default(),
        }
    }

    pub(crate) fn client(&self) -> &kube::Client {
        &self.cluster.client
    }

    fn lost_since(&self) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
        self.lost_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `op` until it succeeds, fails for good, the window closes or
    /// the run is cancelled (then the last error is returned).
    pub(crate) async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, kube::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        // The window measures the outage, from this call's first failure
        // (as the repository's retry layer does).
        let mut failing_since: Option<tokio::time::Instant> = None;
        let mut delay = Duration::from_millis(200);
        loop {
            let e = match op().await {
                Ok(v) => {
                    if let Some(since) = self.lost_since().take() {
                        tracing::info!(server = %self.cluster.url, outage = ?since.elapsed(), "Kubernetes API connection is back");
                    }
                    return Ok(v);
                }
                Err(e) if retriable(&e) => e,
                Err(e) => return Err(e),
            };
            let waited = failing_since
                .get_or_insert_with(tokio::time::Instant::now)
                .elapsed();
            if self.cancel.is_cancelled() {
                tracing::warn!(what, error = %message(&e), "not retrying: the run is stopping");
                return Err(e);
            }
            if waited >= self.window {
                tracing::warn!(
                    server = %self.cluster.url,
                    what,
                    error = %message(&e),
                    window = ?self.window,
                    "Kubernetes API still failing at the end of the reconnect window (STOW_RECONNECT_TIMEOUT); giving up"
                );
                return Err(e);
            }
            if outage(&e) {
                let first = {
                    let mut since = self.lost_since();
                    let first = since.is_none();
                    since.get_or_insert_with(tokio::time::Instant::now);
                    first
                };
                if first {
                    tracing::warn!(server = %self.cluster.url, what, error = %message(&e), window = ?self.window, "Kubernetes API connection lost; retrying until the reconnect window closes");
                }
            }
            tracing::debug!(what, error = %message(&e), "retrying");
            // Jitter from the clock's low bits; good enough to spread retries.
            let jitter = Duration::from_millis(u64::from(waited.subsec_nanos() % 200));
            let sleep = (delay + jitter).min(self.window - waited);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.cancel.cancelled() => {
                    tracing::warn!(what, error = %message(&e), "retrying stopped: the run is stopping");
                    return Err(e);
                }
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    pub(crate) async fn list_page(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        lp: &ListParams,
    ) -> Result<Page, kube::Error> {
        let url = path(rt, ns);
        self.retry(&url, || async {
            let req = Request::new(&url)
                .list(lp)
                .map_err(kube::Error::BuildRequest)?;
            self.client().request::<Page>(req).await
        })
        .await
    }

    /// Every object of a type (all pages), optionally by label selector;
    /// a type the server does not serve (404) is empty.
    pub(crate) async fn list_all(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        labels: Option<&str>,
    ) -> Result<Vec<Value>, kube::Error> {
        let mut lp = ListParams {
            limit: Some(500),
            label_selector: labels.map(String::from),
            ..ListParams::default()
        };
        let mut out = Vec::new();
        loop {
            let page = match self.list_page(rt, ns, &lp).await {
                Ok(p) => p,
                Err(e) if status(&e) == Some(404) => return Ok(out),
                Err(e) => return Err(e),
            };
            out.extend(page.items);
            match page.metadata.continue_ {
                Some(c) if !c.is_empty() => lp.continue_token = Some(c),
                _ => return Ok(out),
            }
        }
    }

    /// Names of the existing objects of a type in a namespace (metadata
    /// only, paged).
    pub(crate) async fn list_names(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
    ) -> Result<std::collections::HashSet<String>, kube::Error> {
        let url = path(rt, ns);
        let mut lp = ListParams {
            limit: Some(500),
            ..ListParams::default()
        };
        let mut names = std::collections::HashSet::new();
        loop {
            let page: Page = self
                .retry(&url, || async {
                    let req = Request::new(&url)
                        .list_metadata(&lp)
                        .map_err(kube::Error::BuildRequest)?;
                    self.client().request::<Page>(req).await
                })
                .await?;
            names.extend(page.items.iter().filter_map(|o| {
                o.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(String::from)
            }));
            match page.metadata.continue_ {
                Some(c) if !c.is_empty() => lp.continue_token = Some(c),
                _ => return Ok(names),
            }
        }
    }

    /// The object, or `None` when it does not exist.
    pub(crate) async fn get(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, kube::Error> {
        let url = path(rt, ns);
        let r = self
            .retry(&url, || async {
                let req = Request::new(&url)
                    .get(name, &GetParams::default())
                    .map_err(kube::Error::BuildRequest)?;
                self.client().request::<Value>(req).await
            })
            .await;
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        body: &Value,
        dry_run: bool,
    ) -> Result<Value, kube::Error> {
        let url = path(rt, ns);
        let bytes = serde_json::to_vec(body).map_err(kube::Error::SerdeError)?;
        let pp = PostParams {
            dry_run,
            field_manager: Some("kubestow".into()),
        };
        self.retry(&url, || async {
            let req = Request::new(&url)
                .create(&pp, bytes.clone())
                .map_err(kube::Error::BuildRequest)?;
            self.client().request::<Value>(req).await
        })
        .await
    }

    pub(crate) async fn replace(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        body: &Value,
    ) -> Result<Value, kube::Error> {
        let url = path(rt, ns);
        let bytes = serde_json::to_vec(body).map_err(kube::Error::SerdeError)?;
        let pp = PostParams {
            dry_run: false,
            field_manager: Some("kubestow".into()),
        };
        self.retry(&url, || async {
            let req = Request::new(&url)
                .replace(name, &pp, bytes.clone())
                .map_err(kube::Error::BuildRequest)?;
            self.client().request::<Value>(req).await
        })
        .await
    }

    /// A JSON merge patch (`null` removes a field).
    pub(crate) async fn merge_patch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value, kube::Error> {
        let url = path(rt, ns);
        let pp = kube::api::PatchParams {
            field_manager: Some("kubestow".into()),
            ..Default::default()
        };
        let merge = kube::api::Patch::Merge(patch);
        self.retry(&url, || async {
            let req = Request::new(&url)
                .patch(name, &pp, &merge)
                .map_err(kube::Error::BuildRequest)?;
            self.client().request::<Value>(req).await
        })
        .await
    }

    /// Deletes in the background; a missing object is fine.
    pub(crate) async fn delete(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(), kube::Error> {
        let url = path(rt, ns);
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        let r = self
            .retry(&url, || async {
                let req = Request::new(&url)
                    .delete(name, &dp)
                    .map_err(kube::Error::BuildRequest)?;
                self.client().request::<Value>(req).await
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(group: &str, version: &str, plural: &str, namespaced: bool) -> ResourceType {
        ResourceType {
            group: group.into(),
            version: version.into(),
            kind: String::new(),
            plural: plural.into(),
            namespaced,
        }
    }

    fn kube(window: Duration) -> Kube {
        // Both ring and aws-lc-rs are linked; the client needs one chosen.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let cluster = Cluster {
            client: kube::Client::try_from(config).unwrap(),
            url: "http://127.0.0.1:9/".into(),
        };
        let mut k = Kube::new(cluster, window);
        k.cancel = CancellationToken::new();
        k
    }

    fn unavailable() -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("etcd is gone", "ServiceUnavailable").with_code(503),
        ))
    }

    /// Fails `failures` times with 503, then answers 7.
    fn flaky(failures: u32) -> impl Fn() -> std::future::Ready<Result<u32, kube::Error>> {
        let left = Mutex::new(failures);
        move || {
            let mut n = left.lock().unwrap();
            std::future::ready(if *n > 0 {
                *n -= 1;
                Err(unavailable())
            } else {
                Ok(7)
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_survives_an_outage_shorter_than_the_window() {
        let k = kube(Duration::from_secs(60));
        let start = tokio::time::Instant::now();
        assert_eq!(k.retry("x", flaky(5)).await.unwrap(), 7);
        assert!(k.lost_since().is_none(), "the outage ended");
        assert!(start.elapsed() < Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_gives_up_when_the_window_closes() {
        let k = kube(Duration::from_secs(60));
        let start = tokio::time::Instant::now();
        let e = k.retry("x", flaky(u32::MAX)).await.unwrap_err();
        assert_eq!(status(&e), Some(503));
        assert!(start.elapsed() >= Duration::from_secs(60));
        assert!(start.elapsed() < Duration::from_secs(61));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_waiting_when_cancelled() {
        let k = kube(Duration::from_secs(300));
        let cancel = k.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            cancel.cancel();
        });
        let start = tokio::time::Instant::now();
        let e = k.retry("x", flaky(u32::MAX)).await.unwrap_err();
        assert_eq!(status(&e), Some(503));
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let k = kube(Duration::from_secs(60));
        let calls = std::sync::atomic::AtomicU32::new(0);
        let e = k
            .retry("x", || {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::future::ready(Err::<(), _>(kube::Error::Api(Box::new(
                    kube::core::Status::failure("no", "Forbidden").with_code(403),
                ))))
            })
            .await
            .unwrap_err();
        assert_eq!(status(&e), Some(403));
        assert_eq!(calls.into_inner(), 1);
    }

    #[test]
    fn paths() {
        assert_eq!(
            path(&rt("", "v1", "configmaps", true), Some("a")),
            "/api/v1/namespaces/a/configmaps"
        );
        assert_eq!(
            path(&rt("apps", "v1", "deployments", true), None),
            "/apis/apps/v1/deployments"
        );
        assert_eq!(
            path(&rt("", "v1", "namespaces", false), Some("x")),
            "/api/v1/namespaces"
        );
    }
}
