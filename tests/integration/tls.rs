//! The repository on Garage over TLS with a private CA (env::tls): without
//! the CA the run fails naming the certificate problem and the endpoint;
//! with `SSL_CERT_FILE` or `AWS_CA_BUNDLE` naming it, backup and check run.
//! The mover side (the chart's `caBundle` mounted in every pod) runs on the
//! node (node::a_private_ca_reaches_the_orchestrator_and_its_movers).

use std::process::Command;

use serde_json::json;

use crate::api::request;
use crate::binary::{self, Run};
use crate::env;

const PW: &str = "tls-test-password";

async fn stow(mode: &str, bucket: &str, ns: &str, vars: &[(&str, &str)]) -> Run {
    let tls = env::s3_tls();
    let mut cmd: Command = binary::command();
    cmd.arg(mode)
        .env("AWS_ENDPOINT_URL", &tls.url)
        .env("STOW_REPOSITORY", format!("s3://{bucket}/repo"))
        .env("STOW_PASSWORD", PW)
        .env("STOW_NAMESPACES", ns)
        .env("STOW_RECONNECT_TIMEOUT", "1m");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    binary::run(cmd).await
}

#[tokio::test]
async fn a_private_ca_is_trusted_through_ssl_cert_file_or_aws_ca_bundle() {
    let (client, ns) = env::namespace("tls").await;
    let (s3, bucket) = env::bucket("tls").await;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "over-tls", "namespace": ns}, "data": {"k": "v"}});
    request(
        &client,
        http::Method::POST,
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        Some(&cm),
    )
    .await
    .unwrap();
    let ca = env::s3_tls().ca.display().to_string();

    // The image's roots do not hold the private CA: the handshake fails,
    // and the error says so and names the endpoint.
    let run = stow("backup", &bucket, &ns, &[("STOW_INIT", "true")]).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let reason = run.summary["reason"].as_str().unwrap_or_default();
    assert!(
        reason.to_ascii_lowercase().contains("certificate") && reason.contains(&env::s3_tls().url),
        "{reason}"
    );
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert_eq!(listed.key_count(), Some(0), "nothing was written");

    // SSL_CERT_FILE: the whole run over TLS.
    let run = stow(
        "backup",
        &bucket,
        &ns,
        &[("STOW_INIT", "true"), ("SSL_CERT_FILE", &ca)],
    )
    .await;
    binary::assert_success(&run);
    assert!(run.summary["counts"]["objects"].as_u64().unwrap() >= 1);

    // AWS_CA_BUNDLE: trusted besides the roots, for S3.
    let run = stow("check", &bucket, &ns, &[("AWS_CA_BUNDLE", &ca)]).await;
    binary::assert_success(&run);
    assert_eq!(run.summary["counts"]["snapshots"], 1, "{}", run.stdout);

    // A bundle that is not one is a configuration error naming it.
    let run = stow("check", &bucket, &ns, &[("AWS_CA_BUNDLE", "/etc/hostname")]).await;
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("AWS_CA_BUNDLE") || run.stdout.contains("AWS_CA_BUNDLE"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
}
