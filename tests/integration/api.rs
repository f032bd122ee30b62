//! Raw JSON requests to the test API server, so every type (custom
//! resources, batch/v1beta1, RBAC) is equally easy to create and read.

use serde_json::Value;

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
