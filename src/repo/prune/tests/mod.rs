use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::repo::SnapshotManifest;
use crate::repo::backend::{Backend, MemBackend};
use crate::repo::check;
use crate::repo::fixture::{self, Files};
use crate::repo::lock::{LockInfo, PRUNE_LOCK_PREFIX, WRITER_PREFIX};
use crate::repo::walk::Root;
use crate::repo::{BlobId, PackId, SnapshotId};
use crate::testutil::{self, files, t, writer};
use std::collections::HashSet;

mod cleanup;
mod engine;
mod hostile;
mod retention;
mod writers;

const NOW: &str = "2026-06-30T00:00:00Z";

// The prune engine.

fn policy(f: impl FnOnce(&mut Retention)) -> Retention {
    let mut r = Retention::default();
    f(&mut r);
    r
}

fn opts(run: &str, f: impl FnOnce(&mut Retention)) -> Options {
    let mut o = Options::new(run, policy(f), Duration::from_millis(300));
    o.incomplete_min_age = Duration::from_secs(3600);
    o
}

fn never() -> CancellationToken {
    CancellationToken::new()
}

async fn check_all(repo: &Repository) -> Report {
    let r = check::check(
        repo,
        &check::Options {
            read_data: Some(crate::config::ReadData::All),
            channels: 2,
        },
    )
    .await
    .unwrap();
    assert!(r.errors.is_empty(), "check: {:?}", r.errors);
    r
}

async fn objects(mem: &MemBackend, prefix: &str) -> usize {
    mem.list(prefix).await.unwrap().len()
}

/// Four daily runs: each has its own files plus a shared set.
async fn four_runs(repo: &Repository) -> Vec<(SnapshotId, Files)> {
    let shared = files(100, 3, 50 << 10);
    let mut out = Vec::new();
    for i in 0..4u64 {
        // Backups announce themselves; their markers must not hold back a
        // prune once the run is complete, even after it is forgotten.
        repo.announce_writer(&format!("run-{i}")).await.unwrap();
        let w = writer(repo);
        let mut f = shared.clone();
        f.extend(files(i + 1, 3, 60 << 10));
        let time = t(&format!("2026-01-0{}T03:00:00Z", i + 1));
        let id = fixture::save_part(repo, &w, &format!("run-{i}"), 0, 1, "daily", time, &f)
            .await
            .unwrap();
        w.finish().await.unwrap();
        out.push((id, f));
    }
    out
}

fn sorted(f: &Files) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = f
        .iter()
        .map(|(p, d)| (p.clone(), blake3::hash(d).to_hex().to_string()))
        .collect();
    f.sort();
    f
}

#[allow(dead_code)]
fn _assert_send(repo: Repository, o: Options, c: CancellationToken) {
    fn send<T: Send>(_: T) {}
    send(async move { prune(&repo, &o, &c).await });
    let _ = Arc::new(0);
}
