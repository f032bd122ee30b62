//! The repository on the real Garage: many writers at once, prune beside a
//! writer, copy to a filesystem repository, tampering, and the `check`,
//! `list` and `prune` modes of the real binary.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use kubestow::config::{Compression, ReadData, Retention, Secret};
use kubestow::repo::RunFilter;
use kubestow::repo::backend::{Backend, FsBackend, S3Backend};
use kubestow::repo::check;
use kubestow::repo::copy;
use kubestow::repo::fixture::{self, Files, files};
use kubestow::repo::prune;
use kubestow::repo::{
    KeyParams, OpenOptions, Repository, SnapshotId, SnapshotManifest, VolumeEntry,
};
use tokio_util::sync::CancellationToken;

use crate::{binary, env};

const PW: &str = "repo integration password";

fn params() -> KeyParams {
    KeyParams::insecure_for_tests(10)
}

async fn s3(hint: &str) -> (aws_sdk_s3::Client, String, Arc<dyn Backend>) {
    let (client, bucket) = env::bucket(hint).await;
    let backend: Arc<dyn Backend> = Arc::new(S3Backend::new(client.clone(), &bucket, "repo"));
    (client, bucket, backend)
}

async fn open(backend: Arc<dyn Backend>) -> Repository {
    OpenOptions::new(backend, &Secret::new(PW))
        .compression(Compression::FAST)
        .key_params(params())
        .open()
        .await
        .unwrap()
}

fn digest(f: &Files) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = f
        .iter()
        .map(|(p, d)| (p.clone(), blake3::hash(d).to_hex().to_string()))
        .collect();
    v.sort();
    v
}

fn t(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

async fn check_clean(repo: &Repository) -> kubestow::summary::Report {
    let r = check::check(
        repo,
        &check::Options {
            read_data: Some(ReadData::All),
            channels: 4,
        },
    )
    .await
    .unwrap();
    assert!(r.errors.is_empty(), "check: {:?}", r.errors);
    r
}

/// One backup: announce, write `files` (plus a shared set), save.
async fn backup(backend: Arc<dyn Backend>, run: &str, time: &str, files: &Files) -> SnapshotId {
    let repo = open(backend).await;
    repo.announce_writer(run).await.unwrap();
    let w = repo.writer_with(3, 256 << 10, 4);
    let id = fixture::save_part(&repo, &w, run, 0, 1, "daily", t(time), files)
        .await
        .unwrap();
    w.finish().await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_writers_at_once_then_check_and_read_back() {
    let (_, _, backend) = s3("repo-writers").await;
    OpenOptions::new(backend.clone(), &Secret::new(PW))
        .compression(Compression::FAST)
        .key_params(params())
        .create()
        .await
        .unwrap();
    let shared = files(999, 4, 100 << 10);
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let backend = backend.clone();
        let mut f = shared.clone();
        f.extend(files(i, 6, (50 + 20 * i as usize) << 10));
        tasks.push(tokio::spawn(async move {
            let id = backup(backend, &format!("writer-{i}"), "2026-01-01T00:00:00Z", &f).await;
            (id, f)
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    let repo = open(backend.clone()).await;
    let r = check_clean(&repo).await;
    assert_eq!(r.counts["snapshots"], 8);
    assert_eq!(r.counts["runs"], 8);
    for (id, f) in &done {
        assert_eq!(
            digest(&fixture::read_part(&repo, id).await.unwrap()),
            digest(f)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prune_beside_a_writer_loses_nothing() {
    let (_, _, backend) = s3("repo-prune").await;
    let repo = OpenOptions::new(backend.clone(), &Secret::new(PW))
        .compression(Compression::FAST)
        .key_params(params())
        .create()
        .await
        .unwrap();
    let mut runs = Vec::new();
    for i in 0..4u64 {
        let f = files(i, 4, 80 << 10);
        let id = backup(
            backend.clone(),
            &format!("run-{i}"),
            &format!("2026-01-0{}T00:00:00Z", i + 1),
            &f,
        )
        .await;
        runs.push((id, f));
    }

    // A writer in flight: announced, data stored and indexed (some of it
    // only the runs about to be forgotten have), manifest not yet saved.
    let wrepo = open(backend.clone()).await;
    wrepo.announce_writer("late").await.unwrap();
    let w = wrepo.writer_with(2, 256 << 10, 4);
    let mut late = files(50, 3, 60 << 10);
    late.extend(runs[0].1.clone());
    let root = fixture::store_files(&w, &late, 16 << 10).await.unwrap();
    w.flush().await.unwrap();

    let mut o = prune::Options::new(
        "prune-it",
        Retention {
            last: Some(2),
            ..Retention::default()
        },
        Duration::from_secs(1),
    );
    o.incomplete_min_age = Duration::from_secs(3600);
    let never = CancellationToken::new();
    let r = prune::prune(&repo, &o, &never).await.unwrap();
    assert_eq!(r.counts["runs_removed"], 2, "{:?}", r.counts);
    assert!(r.counts["packs_marked"] > 0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = prune::prune(&repo, &o, &never).await.unwrap();
    assert_eq!(r.counts["marks_deferred"], 1, "{:?}", r.counts);

    // The writer finishes; the next prune deletes, rescuing its data.
    let mut m = SnapshotManifest::new("late", 0, 1, "daily");
    m.time = t("2026-01-09T00:00:00Z");
    m.volumes.insert(
        "data".into(),
        VolumeEntry {
            root,
            stats: serde_json::Value::Null,
        },
    );
    let late_id = wrepo.save_snapshot(&m).await.unwrap();
    w.finish().await.unwrap();
    let r = prune::prune(&repo, &o, &never).await.unwrap();
    assert!(
        r.counts.get("packs_deleted").is_some_and(|n| *n > 0),
        "{:?} {}",
        r.counts,
        r.details
    );
    assert!(r.counts["packs_rescued"] > 0, "{:?}", r.counts);
    assert!(r.bytes["freed"] > 0);

    let fresh = open(backend.clone()).await;
    check_clean(&fresh).await;
    assert_eq!(
        digest(&fixture::read_part(&fresh, &late_id).await.unwrap()),
        digest(&late)
    );
    // Keep-last 2 now keeps run-3 and the late run.
    let (id, f) = &runs[3];
    assert_eq!(
        digest(&fixture::read_part(&fresh, id).await.unwrap()),
        digest(f)
    );
    assert_eq!(fresh.list_snapshots().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_from_garage_to_a_filesystem_repository() {
    let (_, _, backend) = s3("repo-copy").await;
    OpenOptions::new(backend.clone(), &Secret::new(PW))
        .compression(Compression::FAST)
        .key_params(params())
        .create()
        .await
        .unwrap();
    let mut runs = Vec::new();
    for i in 0..3u64 {
        let mut f = files(100, 2, 64 << 10);
        f.extend(files(i, 3, 40 << 10));
        let id = backup(
            backend.clone(),
            &format!("run-{i}"),
            &format!("2026-02-0{}T00:00:00Z", i + 1),
            &f,
        )
        .await;
        runs.push((id, f));
    }
    let source = open(backend.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn Backend> = Arc::new(FsBackend::new(dir.path().join("copy")));
    let dest_pw = Secret::new("another password");
    let dest = copy::open_destination(
        OpenOptions::new(fs.clone(), &dest_pw).key_params(params()),
        true,
        &source,
    )
    .await
    .unwrap();
    let opts = copy::Options {
        run_id: "copy-it".into(),
        channels: 3,
    };
    let r = copy::copy(&source, &dest, &RunFilter::default(), &opts)
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.counts["runs_copied"], 3);
    let r = copy::copy(&source, &dest, &RunFilter::default(), &opts)
        .await
        .unwrap();
    assert_eq!(r.counts["runs_present"], 3);
    assert_eq!(r.counts.get("blobs_copied"), None);

    check_clean(&source).await;
    let dest = OpenOptions::new(fs, &dest_pw)
        .compression(Compression::FAST)
        .key_params(params())
        .open()
        .await
        .unwrap();
    check_clean(&dest).await;
    let copied = dest.list_snapshots().await.unwrap();
    assert_eq!(copied.len(), 3);
    for (id, m) in &copied {
        let (_, f) = &runs[m
            .run_id
            .trim_start_matches("run-")
            .parse::<usize>()
            .unwrap()];
        assert_eq!(
            digest(&fixture::read_part(&dest, id).await.unwrap()),
            digest(f)
        );
    }
}

/// Flips one byte of an object in the bucket.
async fn flip_byte(client: &aws_sdk_s3::Client, bucket: &str, key: &str, at: usize) {
    let obj = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let mut data = obj.body.collect().await.unwrap().into_bytes().to_vec();
    data[at] ^= 0x01;
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tampered_pack_is_named_by_check() {
    let (client, bucket, backend) = s3("repo-tamper").await;
    OpenOptions::new(backend.clone(), &Secret::new(PW))
        .compression(Compression::FAST)
        .key_params(params())
        .create()
        .await
        .unwrap();
    backup(
        backend.clone(),
        "run-0",
        "2026-03-01T00:00:00Z",
        &files(1, 3, 100 << 10),
    )
    .await;
    let repo = open(backend.clone()).await;
    check_clean(&repo).await;
    let mut packs = repo.packs();
    packs.sort();
    let key = kubestow::repo::pack_key(&packs[0]);
    flip_byte(&client, &bucket, &format!("repo/{key}"), 100).await;
    let r = check::check(
        &repo,
        &check::Options {
            read_data: Some(ReadData::All),
            channels: 2,
        },
    )
    .await
    .unwrap();
    assert!(r.failed);
    assert!(
        r.errors
            .iter()
            .any(|e| e.item == key && e.message.contains("(blob ")),
        "{:?}",
        r.errors
    );
}

fn stow(mode: &str, bucket: &str) -> std::process::Command {
    let mut cmd = binary::command();
    cmd.arg(mode)
        .env("STOW_REPOSITORY", format!("s3://{bucket}/repo"))
        .env("STOW_PASSWORD", PW);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_checks_lists_and_prunes() {
    let (client, bucket, backend) = s3("repo-binary").await;
    // Production key parameters: the binary opens with the default count.
    OpenOptions::new(backend.clone(), &Secret::new(PW))
        .compression(Compression::FAST)
        .create()
        .await
        .unwrap();
    for i in 0..3u64 {
        let repo = OpenOptions::new(backend.clone(), &Secret::new(PW))
            .compression(Compression::FAST)
            .open()
            .await
            .unwrap();
        repo.announce_writer(&format!("run-{i}")).await.unwrap();
        let w = repo.writer(2);
        fixture::save_part(
            &repo,
            &w,
            &format!("run-{i}"),
            0,
            1,
            "nightly",
            t(&format!("2026-04-0{}T00:00:00Z", i + 1)),
            &files(i, 2, 30 << 10),
        )
        .await
        .unwrap();
        w.finish().await.unwrap();
    }

    let run = binary::run(stow("check", &bucket)).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.summary["status"], "success");
    assert_eq!(run.summary["counts"]["snapshots"], 3);

    let mut cmd = stow("list", &bucket);
    cmd.env("STOW_RESTORE_POINT", "2026-04-02T12:00:00Z");
    let run = binary::run(cmd).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let listed = run.summary["details"]["snapshots"].as_array().unwrap();
    let ids: Vec<&str> = listed
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["run-0", "run-1"]);
    assert_eq!(listed[0]["plan"], "nightly");
    assert_eq!(listed[0]["complete"], true);
    assert_eq!(listed[0]["stats"]["volume_bytes"], 2 * (30 << 10));

    let mut cmd = stow("prune", &bucket);
    cmd.env("STOW_KEEP_LAST", "1").env("STOW_PRUNE_GRACE", "1s");
    let run = binary::run(cmd).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.summary["counts"]["runs_removed"], 2, "{}", run.stdout);
    assert!(run.summary["counts"]["packs_marked"].as_u64().unwrap() > 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut cmd = stow("prune", &bucket);
    cmd.env("STOW_KEEP_LAST", "1").env("STOW_PRUNE_GRACE", "1s");
    let run = binary::run(cmd).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.summary["counts"]["packs_deleted"].as_u64().unwrap() > 0,
        "{}",
        run.stdout
    );
    assert!(run.summary["bytes"]["freed"].as_u64().unwrap() > 0);

    let mut cmd = stow("check", &bucket);
    cmd.env("STOW_CHECK_READ_DATA", "all");
    let run = binary::run(cmd).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.summary["counts"]["snapshots"], 1);

    // Tampered: exit 1, the summary names the pack.
    let repo = OpenOptions::new(backend.clone(), &Secret::new(PW))
        .compression(Compression::FAST)
        .open()
        .await
        .unwrap();
    let key = kubestow::repo::pack_key(&repo.packs()[0]);
    flip_byte(&client, &bucket, &format!("repo/{key}"), 50).await;
    let mut cmd = stow("check", &bucket);
    cmd.env("STOW_CHECK_READ_DATA", "100%");
    let run = binary::run(cmd).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.summary["status"], "failed");
    let errors = run.summary["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["item"] == key.as_str()),
        "{}",
        run.stdout
    );

    // A second prune while one holds the lock fails, naming it.
    let held = kubestow::repo::lock::PruneLock::acquire(&repo, "prune-held", Default::default())
        .await
        .unwrap();
    let mut cmd = stow("prune", &bucket);
    cmd.env("STOW_KEEP_LAST", "1");
    let run = binary::run(cmd).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("prune-held"), "{}", run.stdout);
    held.release().await.unwrap();
}

/// The repository-level guarantees, on Garage as on the filesystem: round
/// trips at the edges, dedup, a wrong password, no plaintext at rest,
/// tampered index and snapshot objects, and no second init.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repository_guarantees_hold_on_garage() {
    use kubestow::repo::{BlobKind, RepoError};
    let (client, bucket, backend) = s3("guarantees").await;
    let repo = OpenOptions::new(backend.clone(), &Secret::new(PW))
        .compression(Compression::FAST)
        .key_params(params())
        .create()
        .await
        .unwrap();
    assert!(matches!(
        OpenOptions::new(backend.clone(), &Secret::new(PW))
            .compression(Compression::FAST)
            .key_params(params())
            .create()
            .await,
        Err(RepoError::AlreadyExists { .. })
    ));

    // Edge sizes, a compressible marker and incompressible data.
    let marker = b"PLAINTEXT-MARKER-garage-5d1";
    let mut random = fixture::bytes(9 << 20, 7);
    random[4096..4096 + marker.len()].copy_from_slice(marker);
    let blobs: Vec<Vec<u8>> = vec![Vec::new(), vec![0u8; 1], marker.repeat(50_000), random];
    let w = repo.writer(4);
    let mut ids = Vec::new();
    for b in &blobs {
        ids.push(
            w.add(BlobKind::Data, bytes::Bytes::from(b.clone()))
                .await
                .unwrap(),
        );
    }
    // The same content again is not stored twice.
    for b in &blobs {
        let (_, new) = w
            .add(BlobKind::Data, bytes::Bytes::from(b.clone()))
            .await
            .unwrap();
        assert!(!new, "a repeated blob was stored again");
    }
    let stats = w.finish().await.unwrap();
    assert_eq!(stats.blobs_new, blobs.len() as u64);
    let w = repo.writer(2);
    let files: Files = vec![("notes.txt".to_string(), marker.repeat(10))];
    fixture::save_part(
        &repo,
        &w,
        "run-g",
        0,
        1,
        "daily",
        t("2026-11-01T00:00:00Z"),
        &files,
    )
    .await
    .unwrap();
    w.finish().await.unwrap();

    let reopened = open(backend.clone()).await;
    for ((id, _), b) in ids.iter().zip(&blobs) {
        assert_eq!(reopened.read_blob(id).await.unwrap().as_ref(), b.as_slice());
    }

    // Wrong password: clear, names the repository.
    let err = OpenOptions::new(backend.clone(), &Secret::new("wrong"))
        .compression(Compression::FAST)
        .key_params(params())
        .open()
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::WrongPassword { .. }), "{err}");
    assert!(err.to_string().contains(&bucket), "{err}");

    // Nothing stored anywhere in the bucket contains the marker.
    let listed = client
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(String::from))
        .collect();
    assert!(
        keys.iter().any(|k| k.contains("/data/")) && keys.iter().any(|k| k.contains("/snapshots/"))
    );
    for key in &keys {
        let obj = client
            .get_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        let data = obj.body.collect().await.unwrap().into_bytes();
        assert!(
            !data.windows(marker.len()).any(|w| w == marker),
            "{key} holds plaintext"
        );
    }

    // A flipped byte in an index object fails opening, naming it; in a
    // snapshot object, listing names it.
    let index_key = keys.iter().find(|k| k.contains("/index/")).unwrap().clone();
    flip_byte(&client, &bucket, &index_key, 40).await;
    let err = OpenOptions::new(backend.clone(), &Secret::new(PW))
        .compression(Compression::FAST)
        .key_params(params())
        .open()
        .await
        .unwrap_err();
    let short = index_key.trim_start_matches("repo/");
    assert!(err.to_string().contains(short), "{err}");
    flip_byte(&client, &bucket, &index_key, 40).await; // restore it
    let snapshot_key = keys
        .iter()
        .find(|k| k.contains("/snapshots/"))
        .unwrap()
        .clone();
    flip_byte(&client, &bucket, &snapshot_key, 40).await;
    let err = open(backend).await.list_snapshots().await.unwrap_err();
    assert!(
        err.to_string()
            .contains(snapshot_key.trim_start_matches("repo/")),
        "{err}"
    );
}
