//! Raw JSON requests to the test API server, so every type (custom
//! resources, batch/v1beta1, RBAC) is equally easy to create and read.

use serde_json::Value;

use crate::env;

/// The CronJob API the main cluster serves: `batch/v1beta1` before 1.21
/// (1.20 has no batch/v1 CronJob), `batch/v1` from 1.21 on (1.25 removed
/// v1beta1).
pub async fn cronjob_api_version() -> &'static str {
    if env::server_version().await.at_least(21) {
        "batch/v1"
    } else {
        "batch/v1beta1"
    }
}

pub async fn request(
    client: &kube::Client,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, kube::Error> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(
            body.map(|b| serde_json::to_vec(b).unwrap())
                .unwrap_or_default(),
        )
        .unwrap();
    client.request::<Value>(req).await
}
