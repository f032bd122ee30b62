//! S3 backend (AWS, MinIO, Garage, Ceph RGW) through aws-sdk-s3.
//!
//! Credentials and endpoint come from the standard AWS chain. When an
//! endpoint URL is set (a non-AWS server) addressing is path-style. The SDK's
//! own retries are off: [`super::RetryBackend`] owns the reconnect window.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::{Backend, BackendError, MAX_OBJECT_LEN, ObjectInfo, Result, check_key};
use crate::config::trust;

/// Objects larger than this are uploaded in parts. Packs are about 16 MiB,
/// so large packs and big single blobs take the multipart path.
pub const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;
/// S3 requires parts of at least 5 MiB (except the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Stores objects in an S3 bucket, under a key prefix.
#[derive(Clone)]
pub struct S3Backend {
    client: Client,
    bucket: String,
    prefix: String,
    multipart_threshold: usize,
    /// `AWS_ENDPOINT_URL`, named when it cannot be reached.
    endpoint: Option<String>,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Whether the SDK failed to find or load credentials (its identity
/// resolver's error), as opposed to reaching the server.
fn is_credentials_error(err: &dyn std::error::Error) -> bool {
    let chain = crate::error::error_chain(err).to_ascii_lowercase();
    chain.contains("credentials") && !chain.contains("invalidaccesskeyid")
}

/// The SDK's HTTPS client with `AWS_CA_BUNDLE` trusted besides the roots
/// (`SSL_CERT_FILE`/`SSL_CERT_DIR` or the image's); `None` when it is unset.
/// The configuration checked the file already (`config::trust`).
fn ca_bundle_client() -> Option<aws_sdk_s3::config::SharedHttpClient> {
    use aws_smithy_http_client::tls;
    let path = std::env::var(trust::AWS_CA_BUNDLE)
        .ok()
        .filter(|p| !p.is_empty())?;
    let pem = match trust::read_bundle(trust::AWS_CA_BUNDLE, &path) {
        Ok(pem) => pem,
        Err(e) => {
            tracing::warn!(error = %e, "AWS_CA_BUNDLE not used");
            return None;
        }
    };
    let context = tls::TlsContext::builder()
        .with_trust_store(tls::TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|e| tracing::warn!(error = %e, "AWS_CA_BUNDLE not used"))
        .ok()?;
    Some(
        aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(context)
            .build_https(),
    )
}

impl S3Backend {
    /// A client configured from the AWS environment (credentials, region,
    /// `AWS_ENDPOINT_URL`), with SDK retries off and 5 s connect / 60 s
    /// read timeouts; the region defaults to `us-east-1`.
    pub async fn from_env(bucket: &str, prefix: &str) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(client) = ca_bundle_client() {
            loader = loader.http_client(client);
        }
        let shared = loader.load().await;
        let custom_endpoint = shared.endpoint_url().is_some();
        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(custom_endpoint);
        if shared.region().is_none() {
            builder = builder.region(aws_sdk_s3::config::Region::new("us-east-1"));
        }
        let endpoint = shared.endpoint_url().map(crate::config::redact_urls);
        Self {
            endpoint,
            ..Self::new(Client::from_conf(builder.build()), bucket, prefix)
        }
    }

    /// A backend using `client`; surrounding `/` are trimmed from `prefix`.
    pub fn new(client: Client, bucket: &str, prefix: &str) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            prefix: prefix.trim_matches('/').into(),
            multipart_threshold: MULTIPART_THRESHOLD,
            endpoint: None,
        }
    }

    /// Tests lower the threshold to exercise multipart with small objects.
    pub fn with_multipart_threshold(mut self, bytes: usize) -> Self {
        self.multipart_threshold = bytes.max(PART_SIZE);
        self
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn classify<E>(
        &self,
        op: &'static str,
        key: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let location = self.location();
        let message = DisplayErrorContext(&err).to_string();
        let key = key.to_string();
        match &err {
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                let code = se.err().code().unwrap_or_default();
                if code == "NoSuchBucket" {
                    BackendError::Permanent {
                        location,
                        op,
                        key,
                        message: format!("bucket {} does not exist", self.bucket),
                    }
                } else if code == "NoSuchKey" || (status == 404 && op != "list") {
                    BackendError::NotFound { location, key }
                } else if status >= 500
                    || status == 429
                    || code == "SlowDown"
                    || code == "RequestTimeout"
                {
                    BackendError::Transient {
                        location,
                        op,
                        key,
                        message,
                    }
                } else {
                    BackendError::Permanent {
                        location,
                        op,
                        key,
                        message,
                    }
                }
            }
            SdkError::ConstructionFailure(_) => BackendError::Permanent {
                location,
                op,
                key,
                message,
            },
            // No credentials, or unusable ones: no retry makes them appear.
            _ if is_credentials_error(&err) => BackendError::Permanent {
                location,
                op,
                key,
                message: format!(
                    "no usable S3 credentials (looked for AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, a profile in AWS_CONFIG_FILE/AWS_SHARED_CREDENTIALS_FILE, container and instance credentials): {}",
                    crate::error::error_chain(&err)
                ),
            },
            // Timeouts, connection failures, truncated responses.
            _ => BackendError::Transient {
                location,
                op,
                key,
                // The error chain alone: the SDK's context adds a Debug dump.
                message: match &self.endpoint {
                    Some(url) => {
                        format!("cannot reach {url}: {}", crate::error::error_chain(&err))
                    }
                    None => crate::error::error_chain(&err),
                },
            },
        }
    }

    fn body_err(&self, op: &'static str, key: &str, e: impl std::fmt::Display) -> BackendError {
        BackendError::Transient {
            location: self.location(),
            op,
            key: key.into(),
            message: format!("reading the response body: {e}"),
        }
    }

    async fn put_multipart(&self, key: &str, full: &str, data: Bytes) -> Result<()> {
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
            .map_err(|e| self.classify("put", key, e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut parts = Vec::new();
            for (i, start) in (0..data.len()).step_by(PART_SIZE).enumerate() {
                let end = (start + PART_SIZE).min(data.len());
                let number = i as i32 + 1;
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(data.slice(start..end)))
                    .send()
                    .await
                    .map_err(|e| self.classify("put part", key, e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(String::from))
                        .build(),
                );
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.classify("put complete", key, e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // Abandoned parts cost storage until aborted.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let full = self.full_key(prefix);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.classify("list", prefix, e))?;
            for obj in page.contents() {
                if let Some(k) = obj.key() {
                    out.push(ObjectInfo {
                        key: k[strip..].to_string(),
                        size: obj.size().unwrap_or(0) as u64,
                    });
                }
            }
        }
        Ok(out)
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.classify("get", key, e))?;
        // Refused before the body is collected into memory.
        if let Some(size) = out
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .filter(|n| *n > MAX_OBJECT_LEN)
        {
            return Err(BackendError::TooLarge {
                location: self.location(),
                op: "get",
                key: key.into(),
                size,
                max: MAX_OBJECT_LEN,
            });
        }
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| self.body_err("get", key, e))?;
        Ok(body.into_bytes())
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        if len > MAX_OBJECT_LEN {
            return Err(BackendError::TooLarge {
                location: self.location(),
                op: "get range",
                key: key.into(),
                size: len,
                max: MAX_OBJECT_LEN,
            });
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .range(format!("bytes={}-{}", offset, offset + len - 1))
            .send()
            .await
            .map_err(|e| self.classify("get range", key, e))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| self.body_err("get range", key, e))?
            .into_bytes();
        if body.len() as u64 != len {
            return Err(BackendError::Permanent {
                location: self.location(),
                op: "get range",
                key: key.into(),
                message: format!("asked for {len} bytes at {offset}, got {}", body.len()),
            });
        }
        Ok(body)
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        check_key(&self.location(), "put", key)?;
        let full = self.full_key(key);
        if data.len() > self.multipart_threshold {
            return self.put_multipart(key, &full, data).await;
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.classify("put", key, e))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.classify("delete", key, e))?;
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0) as u64)),
            Err(e) => match self.classify("head", key, e) {
                BackendError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn probe(&self) -> Result<()> {
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.full_key("config"))
            .max_keys(1)
            .send()
            .await
            .map_err(|e| self.classify("list", "config", e))?;
        Ok(())
    }
}
