//! `kubestow volume-backup` / `volume-restore`: the real binary, against
//! Garage S3 and a filesystem repository.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kubestow::volume::compare::compare_trees;

use crate::binary;

const PASSWORD: &str = "volume-test-password";

/// A small tree with the usual suspects: nested dirs, several chunks, a
/// symlink, a hard link, an empty file, a non-UTF-8 name, modes.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("pgdata/base/1")).unwrap();
    let mut big = vec![0u8; 3 << 20];
    let mut h = blake3::Hasher::new();
    h.update(b"volume integration");
    h.finalize_xof().fill(&mut big);
    fs::write(root.join("pgdata/base/1/16384"), &big).unwrap();
    fs::write(root.join("pgdata/PG_VERSION"), b"16\n").unwrap();
    fs::write(root.join("pgdata/empty"), b"").unwrap();
    fs::set_permissions(root.join("pgdata"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("pgdata/PG_VERSION", root.join("version-link")).unwrap();
    fs::hard_link(
        root.join("pgdata/PG_VERSION"),
        root.join("pg-version-hardlink"),
    )
    .unwrap();
    use std::os::unix::ffi::OsStrExt;
    fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"latin1-\xe9")),
        b"bytes",
    )
    .unwrap();
}

fn volume_cmd(mode: &str, repo: &str, path: &Path, name: &str) -> std::process::Command {
    let mut cmd = binary::command();
    cmd.arg(mode)
        .env("STOW_REPOSITORY", repo)
        .env("STOW_PASSWORD", PASSWORD)
        .env("STOW_VOLUME_PATH", path)
        .env("STOW_VOLUME_NAME", name)
        .env("STOW_CHANNELS", "3");
    cmd
}

/// Backup, incremental backup, restore, compare.
async fn round_trip(repo: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    make_tree(&src);
    let name = "shop/data-db-0";

    let mut first = volume_cmd("volume-backup", repo, &src, name);
    first
        .env("STOW_INIT", "true")
        .env("STOW_RUN_ID", "vol-run-1");
    let first = binary::run(first).await;
    binary::assert_success(&first);
    assert_eq!(first.summary["mode"], "volume-backup");
    assert_eq!(first.summary["counts"]["files"], 4, "{}", first.stdout);
    assert_eq!(first.summary["counts"]["hardlinks"], 1);
    assert_eq!(first.summary["counts"]["symlinks"], 1);
    assert!(first.summary["bytes"]["read"].as_u64().unwrap() > 3 << 20);
    let snapshot = first.summary["details"]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    // Nothing changed: nothing is read, nothing new is stored.
    let mut second = volume_cmd("volume-backup", repo, &src, name);
    second.env("STOW_RUN_ID", "vol-run-2");
    let second = binary::run(second).await;
    binary::assert_success(&second);
    assert_eq!(second.summary["bytes"]["read"], 0, "{}", second.stdout);
    assert_eq!(second.summary["bytes"]["new"], 0, "{}", second.stdout);
    assert_eq!(second.summary["details"]["parent"], snapshot.as_str());

    let restore = binary::run(volume_cmd("volume-restore", repo, &dst, name)).await;
    binary::assert_success(&restore);
    assert_eq!(restore.summary["mode"], "volume-restore");
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");

    // An older snapshot by id, into another directory.
    let older = dir.path().join("older");
    let mut by_id = volume_cmd("volume-restore", repo, &older, name);
    by_id.env("STOW_SNAPSHOT", &snapshot);
    let by_id = binary::run(by_id).await;
    binary::assert_success(&by_id);
    assert_eq!(by_id.summary["details"]["snapshot"], snapshot.as_str());
    assert!(compare_trees(&src, &older).is_empty());
}

#[tokio::test]
async fn volume_round_trip_through_s3() {
    let (_, bucket) = crate::env::bucket("volume").await;
    round_trip(&format!("s3://{bucket}/repo")).await;
}

#[tokio::test]
async fn volume_round_trip_through_a_filesystem_repository() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(&format!("file://{}", dir.path().join("repo").display())).await;
}

#[tokio::test]
async fn volume_restore_of_an_unknown_volume_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = format!("file://{}", dir.path().join("repo").display());
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let mut backup = volume_cmd("volume-backup", &repo, &src, "ns/known");
    backup.env("STOW_INIT", "true");
    binary::assert_success(&binary::run(backup).await);

    let run = binary::run(volume_cmd(
        "volume-restore",
        &repo,
        &dir.path().join("dst"),
        "ns/unknown",
    ))
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert_eq!(run.summary["status"], "failed");
    let reason = run.summary["reason"].as_str().unwrap();
    assert!(reason.contains("`ns/unknown`"), "{reason}");
}
