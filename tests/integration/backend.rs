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
