//! The on-disk format stays readable: `tests/fixtures/repo-v1` is a
//! filesystem repository written by kubestow before the module floor plan
//! changed (commit 909b1f9, see `tests/fixtures/README.md`). Today's binary
//! must open it, check every byte of it, list it, restore it byte for
//! byte, and add a backup to it that the same checks accept.

use std::path::Path;
use std::process::Command;

use crate::binary;

const PASSWORD: &str = "compat-fixture-password";
const VOLUME: &str = "compat/data";
/// The run and snapshot the fixture holds.
const RUN_ID: &str = "compat-run-1";

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

/// A copy of the fixture repository (tests must not write to the tree).
fn fixture_copy(dir: &Path) -> String {
    let repo = dir.join("repo");
    let status = Command::new("cp")
        .arg("-a")
        .arg(fixtures().join("repo-v1"))
        .arg(&repo)
        .status()
        .unwrap();
    assert!(status.success());
    format!("file://{}", repo.display())
}

/// The binary with a clean environment: no cluster, no S3.
fn kubestow(mode: &str, repo: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubestow"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .arg(mode)
        .env("STOW_REPOSITORY", repo)
        .env("STOW_PASSWORD", PASSWORD);
    cmd
}

/// Every difference in names, entry types, file bytes and symlink targets.
fn same_tree(a: &Path, b: &Path) -> Vec<String> {
    let mut diffs = Vec::new();
    let names = |p: &Path| -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    if names(a) != names(b) {
        diffs.push(format!("{}: entries differ", b.display()));
        return diffs;
    }
    for name in names(a) {
        let (x, y) = (a.join(&name), b.join(&name));
        let (mx, my) = (x.symlink_metadata().unwrap(), y.symlink_metadata().unwrap());
        if mx.file_type() != my.file_type() {
            diffs.push(format!("{}: type differs", y.display()));
        } else if mx.is_symlink() {
            if std::fs::read_link(&x).unwrap() != std::fs::read_link(&y).unwrap() {
                diffs.push(format!("{}: link target differs", y.display()));
            }
        } else if mx.is_dir() {
            diffs.extend(same_tree(&x, &y));
        } else if std::fs::read(&x).unwrap() != std::fs::read(&y).unwrap() {
            diffs.push(format!("{}: content differs", y.display()));
        }
    }
    diffs
}

async fn check_all(repo: &str) {
    let mut check = kubestow("check", repo);
    check.env("STOW_CHECK_READ_DATA", "all");
    let check = binary::run(check).await;
    binary::assert_success(&check);
    assert!(check.summary["errors"].as_array().is_none_or(Vec::is_empty));
}

#[tokio::test]
async fn a_repository_written_before_the_change_opens_checks_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let repo = fixture_copy(dir.path());
    let source = fixtures().join("repo-v1-source");

    check_all(&repo).await;

    let list = binary::run(kubestow("list", &repo)).await;
    binary::assert_success(&list);
    let runs = list.summary["details"]["snapshots"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{}", list.stdout);
    assert_eq!(runs[0]["run_id"], RUN_ID, "{}", list.stdout);

    let out = dir.path().join("restored");
    let mut restore = kubestow("volume-restore", &repo);
    restore
        .env("STOW_VOLUME_PATH", &out)
        .env("STOW_VOLUME_NAME", VOLUME)
        .env("STOW_SNAPSHOT", RUN_ID);
    let restore = binary::run(restore).await;
    binary::assert_success(&restore);
    // Content, types and link targets: a git checkout does not keep the
    // source tree's times, so `compare_trees` (which compares mtimes too)
    // would fail on a fresh clone for reasons that are not the format's.
    let diffs = same_tree(&source, &out);
    assert!(diffs.is_empty(), "{diffs:#?}");

    // Today's writer adds to the old repository: it finds the old snapshot
    // as its parent, computes the same blob ids for the same bytes (every
    // byte it reads is already stored; only tree nodes with new inodes and
    // times are new), and the result still checks.
    let mut backup = kubestow("volume-backup", &repo);
    backup
        .env("STOW_VOLUME_PATH", &out)
        .env("STOW_VOLUME_NAME", VOLUME)
        .env("STOW_RUN_ID", "compat-run-2");
    let backup = binary::run(backup).await;
    binary::assert_success(&backup);
    assert_eq!(
        backup.summary["details"]["parent"].as_str().map(str::len),
        Some(64),
        "{}",
        backup.stdout
    );
    let bytes = &backup.summary["bytes"];
    assert!(
        bytes["read"].as_u64().unwrap() > 300_000,
        "{}",
        backup.stdout
    );
    assert_eq!(bytes["deduplicated"], bytes["read"], "{}", backup.stdout);
    check_all(&repo).await;

    // The fixture's writer marker is plaintext, as markers were before
    // they were sealed: prune still reads it, sees that its run is
    // complete and removes it (and the new run's sealed one).
    let locks = dir.path().join("repo/locks");
    let markers = || {
        std::fs::read_dir(&locks)
            .map(|d| d.filter(|e| e.is_ok()).count())
            .unwrap_or(0)
    };
    assert_eq!(markers(), 2);
    let mut prune = kubestow("prune", &repo);
    prune.env("STOW_KEEP_LAST", "10");
    let prune = binary::run(prune).await;
    binary::assert_success(&prune);
    assert_eq!(
        prune.summary["counts"]["writer_markers_removed"], 2,
        "{}",
        prune.stdout
    );
    assert_eq!(markers(), 0, "{}", prune.stdout);
    check_all(&repo).await;
}
