//! The Kubernetes side: connecting to the API server, classifying its
//! errors, the retrying client ([`api::Kube`]), discovery, and the API
//! types kubestow names itself ([`types`]).

pub mod api;
pub mod discovery;
pub mod types;

pub use types::ResourceType;

use crate::error::error_chain;

/// Label kubestow puts on the objects it creates itself (mover Jobs, their
/// pods, temporary PVCs and snapshots). Objects carrying
/// `app.kubernetes.io/managed-by=kubestow` are never backed up or restored.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`] on kubestow's own objects.
pub const MANAGED_BY_VALUE: &str = "kubestow";

/// Whether an object carries kubestow's own label.
pub fn is_kubestow_owned(obj: &serde_json::Value) -> bool {
    obj.pointer("/metadata/labels")
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .and_then(|v| v.as_str())
        == Some(MANAGED_BY_VALUE)
}

use std::time::Duration;

use kube::Client;

/// Failure to connect to or talk to the Kubernetes API server.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No kubeconfig or in-cluster service account could be loaded; holds the reason.
    #[error(
        "no Kubernetes configuration: {0} (set KUBECONFIG, or run in a pod with a service account)"
    )]
    NoConfig(String),
    /// The API server could not be reached (network, TLS, timeout).
    #[error("cannot reach the API server at {url}: {message}")]
    Unreachable {
        /// The API server URL.
        url: String,
        /// What was being done, and the underlying error chain.
        message: String,
    },
    /// The API server answered with an error status.
    #[error("{what}: the API server refused ({code} {reason}): {message}")]
    Api {
        /// What was being done (GVK/name, list of X, …).
        what: String,
        /// HTTP status code.
        code: u16,
        /// The status reason, e.g. `Forbidden` or `NotFound`.
        reason: String,
        /// The server's message.
        message: String,
    },
}

impl ClusterError {
    /// Wraps a kube error with what was being done (GVK/name, list of X, …).
    pub fn from_kube(what: impl Into<String>, url: &str, e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => ClusterError::Api {
                what: what.into(),
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            other => ClusterError::Unreachable {
                url: url.to_string(),
                message: format!("{}: {}", what.into(), error_chain(&other)),
            },
        }
    }

    /// Network failures, throttling and server errors can succeed later.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClusterError::NoConfig(_) => false,
            ClusterError::Unreachable { .. } => true,
            ClusterError::Api { code, .. } => *code == 429 || *code >= 500,
        }
    }
}

/// A connected client plus the URL, for error messages.
#[derive(Clone)]
pub struct Cluster {
    /// The kube client, connected to the API server.
    pub client: Client,
    /// The API server URL, for error messages.
    pub url: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("url", &self.url).finish()
    }
}

impl Cluster {
    /// `KUBECONFIG` / `~/.kube/config`, else the in-cluster service account.
    pub async fn connect() -> Result<Self, ClusterError> {
        let mut config = kube::Config::infer()
            .await
            .map_err(|e| ClusterError::NoConfig(error_chain(&e)))?;
        // Bounded so a dead API server fails a request instead of hanging it;
        // the reconnect window retries above this.
        config.connect_timeout = Some(Duration::from_secs(10));
        config.read_timeout = Some(Duration::from_secs(60));
        config.reset_reader_on_write = true;
        let url = config.cluster_url.to_string();
        let client =
            Client::try_from(config).map_err(|e| ClusterError::NoConfig(error_chain(&e)))?;
        Ok(Self { client, url })
    }

    /// Wraps a kube error with what was being done and this cluster's URL.
    pub fn err(&self, what: impl Into<String>, e: kube::Error) -> ClusterError {
        ClusterError::from_kube(what, &self.url, e)
    }
}
