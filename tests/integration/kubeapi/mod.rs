//! Raw calls to the Kubernetes API for tests (JSON in, JSON out, so the
//! 1.20 server sees no field it does not know), and the snapshot API objects
//! a test cluster needs.
//!
//! This was the home of test stand-ins for the kubelet and a CSI driver;
//! the mover tests now run on the real node (`node_movers`), so only these
//! helpers remain.

#![allow(dead_code)] // Not every test uses every helper.

mod classes;

use std::time::Duration;

use serde_json::Value;

pub use classes::{install_snapshot_crds, snapshot_class, storage_class};

/// A failed API call: the HTTP status (if the server answered) and a message
/// naming the request.
#[derive(Debug)]
pub struct ApiError {
    pub code: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ApiError {
    fn is(&self, code: u16) -> bool {
        self.code == Some(code)
    }
}

/// A raw request with a body of the given content type; the answer as JSON.
/// Raw JSON keeps the 1.20 server free of field mismatches with newer types.
pub async fn call_raw(
    client: &kube::Client,
    method: http::Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<Value, ApiError> {
    let req = http::Request::builder()
        .method(method.clone())
        .uri(path)
        .header("content-type", content_type)
        .body(body)
        .expect("valid request");
    client.request::<Value>(req).await.map_err(|e| ApiError {
        code: match &e {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        },
        message: format!("{method} {path}: {e}"),
    })
}

/// A JSON request; PATCH bodies are JSON merge patches.
pub async fn call(
    client: &kube::Client,
    method: http::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, ApiError> {
    let content_type = if method == http::Method::PATCH {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let body = body
        .map(|b| serde_json::to_vec(&b).unwrap())
        .unwrap_or_default();
    call_raw(client, method, path, content_type, body).await
}

/// GET, with 404 as `None`.
pub async fn get_opt(client: &kube::Client, path: &str) -> Result<Option<Value>, ApiError> {
    match call(client, http::Method::GET, path, None).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is(404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The items of a list.
pub async fn list(client: &kube::Client, path: &str) -> Result<Vec<Value>, ApiError> {
    let mut v = call(client, http::Method::GET, path, None).await?;
    match v["items"].take() {
        Value::Array(items) => Ok(items),
        _ => Ok(Vec::new()),
    }
}

/// DELETE, with 404 (already gone) as success.
pub async fn delete(
    client: &kube::Client,
    path: &str,
    options: Option<Value>,
) -> Result<(), ApiError> {
    match call(client, http::Method::DELETE, path, options).await {
        Err(e) if !e.is(404) => Err(e),
        _ => Ok(()),
    }
}

/// Polls `f` every 200 ms until it returns `Ok`, or panics after `timeout`
/// with `what` and the last thing `f` said (its `Err`).
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Now as an RFC 3339 timestamp with whole seconds, as metav1.Time wants.
fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A string field, or "".
fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Bytes in a resource quantity ("1Gi", "500M", "1024"), for size
/// comparisons; `None` for forms a test would not use.
fn quantity_bytes(q: &str) -> Option<u64> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    Some((num.parse::<f64>().ok()? * mult).ceil() as u64)
}
