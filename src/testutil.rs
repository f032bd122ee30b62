//! Helpers shared by the unit tests of check, prune, copy and list.

use std::sync::Arc;

use crate::config::{Compression, Secret};
use crate::repo::backend::{Backend, MemBackend};
use crate::repo::{KeyParams, OpenOptions, Repository, Writer};

pub const PW: &str = "unit test password";

/// Fast key derivation for tests.
pub fn params() -> KeyParams {
    KeyParams::insecure_for_tests(10)
}

pub async fn init(backend: Arc<dyn Backend>) -> Repository {
    OpenOptions::new(backend, &Secret::new(PW))
        .compression(Compression::FAST)
        .key_params(params())
        .create()
        .await
        .unwrap()
}

pub async fn open(backend: Arc<dyn Backend>) -> Repository {
    OpenOptions::new(backend, &Secret::new(PW))
        .compression(Compression::FAST)
        .key_params(params())
        .open()
        .await
        .unwrap()
}

/// A fresh in-memory repository.
pub async fn mem() -> (Arc<MemBackend>, Repository) {
    let mem = Arc::new(MemBackend::new());
    let repo = init(mem.clone()).await;
    (mem, repo)
}

/// Small packs, so a few files spread over several packs.
pub fn writer(repo: &Repository) -> Writer {
    repo.writer_with(2, 64 << 10, 4)
}

pub fn t(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

pub use crate::repo::fixture::files;
