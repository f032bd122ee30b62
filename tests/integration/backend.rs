//! The storage backend contract on the real Garage server.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kubestow::repo::backend::{Backend, BackendError, RetryBackend, S3Backend, contract};

use crate::env;

#[tokio::test]
async fn s3_backend_honours_the_contract() {
    let (client, bucket) = env::bucket("contract").await;
    contract::check_all(&S3Backend::new(client.clone(), &bucket, "some/prefix")).await;
    // The prefix really scopes the keys.
    let raw = client
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(
        raw.contents()
            .iter()
            .all(|o| o.key().unwrap().starts_with("some/prefix/"))
    );
}

#[tokio::test]
async fn s3_large_objects_use_multipart_and_round_trip() {
    let (client, bucket) = env::bucket("multipart").await;
    let b = S3Backend::new(client, &bucket, "").with_multipart_threshold(8 * 1024 * 1024);
    let data = Bytes::from(
        (0..(8 * 1024 * 1024 * 2 + 12345))
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect::<Vec<_>>(),
    );
    b.put("data/aa/big", data.clone()).await.unwrap();
    assert_eq!(
        b.head("data/aa/big").await.unwrap(),
        Some(data.len() as u64)
    );
    assert_eq!(b.get("data/aa/big").await.unwrap(), data);
}

#[tokio::test]
async fn missing_bucket_fails_at_once_naming_it() {
    let b = Arc::new(S3Backend::new(
        env::s3_client(),
        "no-such-bucket-kubestow",
        "",
    ));
    let r = RetryBackend::new(b, Duration::from_secs(600));
    let started = std::time::Instant::now();
    let err = r.list("snapshots/").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "permanent errors are not retried"
    );
    assert!(matches!(err, BackendError::Permanent { .. }), "{err}");
    assert!(err.to_string().contains("no-such-bucket-kubestow"), "{err}");
}

/// With no S3 credentials anywhere, a run fails at once naming what it
/// looked for, instead of retrying for the reconnect window (10 minutes
/// here). Instance metadata is switched off: it is off the machine.
#[tokio::test]
async fn missing_credentials_fail_at_once_naming_what_was_looked_for() {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = crate::binary::command();
    cmd.arg("list")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("STOW_REPOSITORY", "s3://kubestow-no-creds/x")
        .env("STOW_PASSWORD", "pw")
        .env("STOW_RECONNECT_TIMEOUT", "10m");
    let run = tokio::time::timeout(Duration::from_secs(120), crate::binary::run(cmd))
        .await
        .expect("a missing credential was retried instead of failing at once");
    assert_eq!(run.code, Some(1), "{}\n{}", run.stderr, run.stdout);
    let reason = run.summary["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
        + &run.summary["errors"].to_string();
    assert!(
        reason.contains("no usable S3 credentials") && reason.contains("AWS_ACCESS_KEY_ID"),
        "{}",
        run.stdout
    );
}
