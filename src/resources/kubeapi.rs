//! Raw JSON access to the API server for dynamic types, with retries of
//! retriable errors (network, 429, 5xx) inside the reconnect window.
//!
//! Objects stay `serde_json::Value` end to end, so nothing the server sends
//! is lost to a typed round trip.

use std::future::Future;
use std::time::Duration;

use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::core::Request;
use kube::core::params::GetParams;
use serde::Deserialize;
use serde_json::Value;

use super::ResourceType;
use crate::cluster::{Cluster, error_chain};

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

fn retriable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

impl Kube {
    pub(crate) fn new(cluster: Cluster, window: Duration) -> Self {
        Self { cluster, window }
    }

    pub(crate) fn client(&self) -> &kube::Client {
        &self.cluster.client
    }

    /// Runs `op` until it succeeds, fails for good, or the window closes.
    pub(crate) async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, kube::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if retriable(&e) && started.elapsed() + delay < self.window => {
                    tracing::debug!(what, error = %message(&e), "retrying");
                    // Jitter from the clock's low bits; good enough to spread retries.
                    let jitter = u64::from(started.elapsed().subsec_nanos() % 200);
                    tokio::time::sleep(delay + Duration::from_millis(jitter)).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
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
