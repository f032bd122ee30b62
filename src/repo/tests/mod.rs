//! Repository tests against the memory and filesystem backends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use proptest::prelude::*;

use super::backend::{self, Backend, BackendError, FsBackend, MemBackend, ObjectInfo};
use super::*;

mod adopt;
mod hostile;
mod storage;
mod writer;

const PW: &str = "correct horse battery staple";

fn pw(s: &str) -> Secret {
    Secret::new(s)
}

/// Fast key derivation: the production count takes ~0.5 s per key.
fn params() -> KeyParams {
    KeyParams::insecure_for_tests(10)
}

async fn init(backend: Arc<dyn Backend>) -> Repository {
    OpenOptions::new(backend, &pw(PW))
        .compression(Compression::FAST)
        .key_params(params())
        .create()
        .await
        .unwrap()
}

async fn reopen(backend: Arc<dyn Backend>) -> Result<Repository, RepoError> {
    OpenOptions::new(backend, &pw(PW))
        .compression(Compression::FAST)
        .key_params(params())
        .open()
        .await
}

/// Deterministic test data: random (BLAKE3 output) or compressible text.
/// A new repository on `mem` holding one stored 5000-byte data blob.
async fn repo_with_one_blob(mem: &Arc<MemBackend>) -> (Repository, BlobId) {
    let repo = init(mem.clone()).await;
    let w = repo.writer(1);
    let (id, _) = w
        .add(BlobKind::Data, Bytes::from(gen_data(5000, 1, false)))
        .await
        .unwrap();
    w.finish().await.unwrap();
    (repo, id)
}

fn gen_data(len: usize, seed: u64, compressible: bool) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if compressible {
        let line = format!("line of a log file {seed} with some repeated text\n");
        for (i, b) in out.iter_mut().enumerate() {
            *b = line.as_bytes()[i % line.len()];
        }
    } else {
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes());
        h.finalize_xof().fill(&mut out);
    }
    out
}

async fn all_objects(b: &MemBackend) -> Vec<(String, Bytes)> {
    let mut out = Vec::new();
    for ObjectInfo { key, .. } in b.list("").await.unwrap() {
        let data = b.get(&key).await.unwrap();
        out.push((key, data));
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn blob_spec() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..3000),
        (0usize..(3 << 20), any::<u64>(), any::<bool>())
            .prop_map(|(len, seed, comp)| gen_data(len, seed, comp)),
    ]
}
