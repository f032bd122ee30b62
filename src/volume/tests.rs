//! Volume backup and restore against a filesystem repository in a tempdir.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::backup::Hooks;
use super::compare::compare_trees;
use super::tree::{Node, NodeType, Tree};
use super::*;
use crate::config::{Compression, Secret};
use crate::repo::backend::{Backend, FsBackend};
use crate::repo::{BlobKind, KeyParams, OpenOptions, SnapshotManifest, VolumeEntry};
use crate::summary::{Report, Status};

const MIB: u64 = 1 << 20;

struct Fixture {
    dir: tempfile::TempDir,
    repo: Repository,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(FsBackend::new(dir.path().join("repo")));
        let repo = OpenOptions::new(backend, &Secret::new("pw"))
            .compression(Compression::FAST)
            .key_params(KeyParams::insecure_for_tests(10))
            .create()
            .await
            .unwrap();
        Fixture { dir, repo }
    }

    /// A fresh directory under the fixture.
    fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    fn opts(&self, src: &Path, name: &str, run: &str) -> BackupOptions {
        BackupOptions {
            path: src.to_path_buf(),
            name: name.into(),
            plan: "daily".into(),
            tags: vec!["test".into()],
            run_id: run.into(),
            channels: 2,
            mover: false,
            resume_buffer: 10 << 20,
            hooks: Hooks::default(),
        }
    }

    async fn backup(&self, src: &Path, name: &str, run: &str) -> Report {
        backup(
            &self.repo,
            &self.opts(src, name, run),
            &CancellationToken::new(),
        )
        .await
        .unwrap()
    }

    async fn restore(&self, name: &str, dst: &Path) -> Report {
        restore(
            &self.repo,
            &restore_opts(name, dst),
            &CancellationToken::new(),
        )
        .await
        .unwrap()
    }
}

fn restore_opts(name: &str, dst: &Path) -> RestoreOptions {
    RestoreOptions {
        path: dst.to_path_buf(),
        name: name.into(),
        snapshot: None,
        point: None,
        channels: 2,
    }
}

/// Deterministic incompressible bytes.
fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

fn set_mtime(p: &Path, ns: i64) {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, utimensat};
    let t = Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    utimensat(CWD, p, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn count(r: &Report, k: &str) -> u64 {
    r.counts.get(k).copied().unwrap_or(0)
}

fn bytes(r: &Report, k: &str) -> u64 {
    r.bytes.get(k).copied().unwrap_or(0)
}

/// Sets mtimes of every directory under `root`, deepest first, so the
/// values survive (creating entries bumps a directory's mtime).
fn stamp_dirs(root: &Path, base_ns: i64) {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            }
        }
        out.push(p.to_path_buf());
    }
    let mut dirs = Vec::new();
    walk(root, &mut dirs);
    for (i, d) in dirs.iter().enumerate() {
        set_mtime(d, base_ns + i as i64 * 1_000_003);
    }
}

/// Everything a restore must reproduce, except 10,000 files (their own
/// test). Returns whether `user.*` xattrs could be set here, and whether a
/// device node could be made (root, and allowed by the container).
fn build_rich_tree(root: &Path) -> (bool, bool) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        p
    };
    w("empty", b"");
    w("large.bin", &random(20 * MIB as usize, 1));
    w("small.txt", b"hello\n");
    // 1 GiB logical, a few MiB of data: at the start, in the middle, at the end.
    let sparse = root.join("sparse.img");
    {
        let mut f = fs::File::create(&sparse).unwrap();
        use std::io::{Seek, SeekFrom};
        f.write_all(&random(MIB as usize, 2)).unwrap();
        f.seek(SeekFrom::Start(300 * MIB + 12345)).unwrap();
        f.write_all(&random(2 * MIB as usize, 3)).unwrap();
        f.seek(SeekFrom::Start(1024 * MIB - MIB)).unwrap();
        f.write_all(&random(MIB as usize, 4)).unwrap();
        f.set_len(1024 * MIB).unwrap();
    }
    // Symlinks: relative, dangling, absolute, to a directory.
    std::os::unix::fs::symlink("large.bin", root.join("link-to-large")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("absolute")).unwrap();
    // Hard links, across directories.
    let hl = w("hl-a", b"linked content");
    fs::create_dir_all(root.join("dir1")).unwrap();
    fs::hard_link(&hl, root.join("dir1/hl-b")).unwrap();
    fs::hard_link(&hl, root.join("hl-c")).unwrap();
    // Odd names.
    w("new\nline", b"newline in the name");
    w("spaces and ünïcödé", b"utf-8");
    w("-dash", b"dash");
    w("back\\slash", b"backslash");
    fs::write(root.join(OsStr::from_bytes(b"bad-\xff\xfe")), b"not utf-8").unwrap();
    fs::create_dir(root.join(OsStr::from_bytes(b"dir-\x80"))).unwrap();
    fs::write(root.join(OsStr::from_bytes(b"dir-\x80/inner")), b"inside").unwrap();
    // Deep nesting.
    let mut deep = root.join("deep");
    for i in 0..60 {
        deep.push(format!("d{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf.txt"), b"deep leaf").unwrap();
    // Modes.
    chmod(&w("secret", b"s3cret"), 0o600);
    chmod(&w("exec.sh", b"#!/bin/sh\n"), 0o755);
    chmod(&w("setuid", b"x"), 0o4755);
    chmod(&w("readonly", b"ro"), 0o444);
    fs::create_dir(root.join("shared")).unwrap();
    w("shared/member", b"in a setgid dir");
    chmod(&root.join("shared"), 0o2775);
    fs::create_dir(root.join("tmp")).unwrap();
    chmod(&root.join("tmp"), 0o1777);
    fs::create_dir(root.join("private")).unwrap();
    w("private/x", b"x");
    chmod(&root.join("private"), 0o700);
    // A FIFO.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    chmod(&root.join("pipe"), 0o640);
    // A character device (like /dev/null), where we may make one.
    let device = rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .is_ok();
    if device {
        chmod(&root.join("null"), 0o666);
    }
    // Owners, when we may set them.
    if is_root() {
        let p = w("owned", b"owned by someone else");
        std::os::unix::fs::lchown(&p, Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("dangling"), Some(4321), Some(8765)).unwrap();
    }
    // Extended attributes, where the file system has them.
    let xattrs_ok = xattr::set(root.join("large.bin"), "user.comment", b"hello").is_ok();
    if xattrs_ok {
        xattr::set(root.join("dir1"), "user.dir", &[0, 1, 2, 255]).unwrap();
        xattr::set(
            root.join("small.txt"),
            OsStr::from_bytes(b"user.\xff-raw"),
            b"binary name",
        )
        .unwrap();
    }
    // Times, with nanoseconds; directories last.
    let mut t = 1_600_000_000_123_456_789i64;
    for e in fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        if !e.file_type().unwrap().is_dir() {
            set_mtime(&e.path(), t);
            t += 1_000_000_007;
        }
    }
    set_mtime(&deep.join("leaf.txt"), -1_234_567_891); // Before 1970.
    stamp_dirs(root, 1_500_000_000_987_654_321);
    (xattrs_ok, device)
}

/// Block-level allocation, to tell a sparse file from a full one.
fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_reproduces_content_and_metadata() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    let (xattrs_ok, device) = build_rich_tree(&src);
    // A socket is recorded but not restored.
    let sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    stamp_dirs(&src, 1_500_000_000_987_654_321);

    let started = Instant::now();
    let report = fx.backup(&src, "shop/data-db-0", "run-1").await;
    eprintln!("backup: {:?} {report:?}", started.elapsed());
    assert_eq!(report.status(), Status::Success, "{:?}", report.errors);
    assert_eq!(count(&report, "hardlinks"), 2);
    assert_eq!(count(&report, "symlinks"), 3);
    // FIFO, socket, and the device if there is one.
    assert_eq!(count(&report, "special"), 2 + u64::from(device));
    assert_eq!(count(&report, "changed"), 0);
    // root, dir1, dir-\x80, deep and its 60 levels, shared, tmp, private
    assert_eq!(count(&report, "dirs"), 1 + 2 + 61 + 3);
    // The 1 GiB of zeros costs one chunk; the data itself is new.
    assert!(bytes(&report, "new") < 48 * MIB, "{report:?}");
    assert!(report.details["snapshot"].is_string());

    drop(sock);
    fs::remove_file(src.join("sock")).unwrap();
    stamp_dirs(&src, 1_500_000_000_987_654_321);

    let dst = fx.dir.path().join("dst/nested");
    let started = Instant::now();
    let restored = fx.restore("shop/data-db-0", &dst).await;
    eprintln!("restore: {:?} {restored:?}", started.elapsed());
    assert_eq!(restored.status(), Status::Success, "{:?}", restored.errors);
    assert_eq!(count(&restored, "skipped"), 1); // the socket
    assert_eq!(count(&restored, "special"), 1 + u64::from(device));
    assert_eq!(count(&restored, "xattr_failures"), 0);
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");

    // Holes came back as holes.
    let sparse = dst.join("sparse.img");
    assert_eq!(fs::metadata(&sparse).unwrap().len(), 1024 * MIB);
    assert!(
        allocated(&sparse) < 64 * MIB,
        "restored sparse file allocates {} bytes",
        allocated(&sparse)
    );
    // Hard links are one inode.
    let ino = |p: &str| fs::metadata(dst.join(p)).unwrap().ino();
    assert_eq!(ino("hl-a"), ino("dir1/hl-b"));
    assert_eq!(ino("hl-a"), ino("hl-c"));
    assert_ne!(ino("hl-a"), ino("small.txt"));
    if xattrs_ok {
        assert_eq!(
            xattr::get(dst.join("large.bin"), "user.comment").unwrap(),
            Some(b"hello".to_vec())
        );
    }

    // The comparison is not vacuous: one changed byte is found.
    let victim = dst.join("large.bin");
    let mut data = fs::read(&victim).unwrap();
    data[12_345_678] ^= 1;
    let mtime = fs::metadata(&victim).unwrap();
    fs::write(&victim, &data).unwrap();
    set_mtime(&victim, super::tree::mtime_ns(&mtime));
    let diffs = compare_trees(&src, &dst);
    assert_eq!(diffs, vec!["large.bin: content differs".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_trees_finds_each_kind_of_difference() {
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str| {
        let root = dir.path().join(name);
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("a"), b"same").unwrap();
        fs::write(root.join("b"), b"same").unwrap();
        fs::hard_link(root.join("a"), root.join("sub/a-link")).unwrap();
        std::os::unix::fs::symlink("a", root.join("sym")).unwrap();
        for e in ["a", "b", "sym", "sub/a-link", "sub", "."] {
            set_mtime(&root.join(e), 1_700_000_000_000_000_001);
        }
        root
    };
    let (a, b) = (make("a"), make("b"));
    assert!(compare_trees(&a, &b).is_empty());
    let touch = |p: &Path| set_mtime(p, 1_700_000_000_000_000_001);

    // One of each: content, mode, mtime, symlink target, hard link, extra entry.
    fs::write(b.join("b"), b"diff").unwrap();
    touch(&b.join("b"));
    chmod(&b.join("a"), 0o600);
    set_mtime(&b.join("sub"), 1_700_000_000_000_000_002);
    fs::remove_file(b.join("sym")).unwrap();
    std::os::unix::fs::symlink("b", b.join("sym")).unwrap();
    touch(&b.join("sym"));
    touch(&b);
    let mut d = compare_trees(&a, &b);
    d.sort();
    assert_eq!(d.len(), 5, "{d:#?}");
    assert!(d[0].starts_with("a: mode 0644 != 0600"), "{d:#?}");
    assert!(d[1].starts_with("b: content differs"), "{d:#?}");
    // The mode belongs to the inode, which the hard link shares.
    assert!(d[2].starts_with("sub/a-link: mode 0644 != 0600"), "{d:#?}");
    assert!(d[3].starts_with("sub: mtime"), "{d:#?}");
    assert!(d[4].starts_with("sym: symlink target"), "{d:#?}");

    let (a, b) = (make("c"), make("d"));
    // A hard link replaced by a copy with the same content and times.
    fs::remove_file(b.join("sub/a-link")).unwrap();
    fs::write(b.join("sub/a-link"), b"same").unwrap();
    touch(&b.join("sub/a-link"));
    touch(&b.join("sub"));
    fs::write(b.join("extra"), b"").unwrap();
    touch(&b);
    let xattr_ok = xattr::set(b.join("a"), "user.k", b"v").is_ok();
    let d = compare_trees(&a, &b);
    assert!(
        d.iter()
            .any(|l| l == "sub/a-link: hard-link identity differs"),
        "{d:#?}"
    );
    assert!(
        d.iter().any(|l| l == "extra: only in the second tree"),
        "{d:#?}"
    );
    if xattr_ok {
        assert!(d.iter().any(|l| l.starts_with("a: xattrs")), "{d:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_small_files_round_trip_and_reuse() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    for d in 0..10 {
        let dir = src.join(format!("dir{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..1000 {
            fs::write(dir.join(format!("f{f:04}")), format!("file {d}/{f}\n")).unwrap();
        }
    }
    let started = Instant::now();
    let first = fx.backup(&src, "many", "run-1").await;
    eprintln!("10,000 files: backup {:?}", started.elapsed());
    assert_eq!(count(&first, "files"), 10_000);
    let started = Instant::now();
    let second = fx.backup(&src, "many", "run-2").await;
    eprintln!("10,000 files: incremental backup {:?}", started.elapsed());
    assert_eq!(bytes(&second, "read"), 0);
    assert_eq!(first.details["root"], second.details["root"]);
    let dst = fx.path("dst");
    let started = Instant::now();
    let restored = fx.restore("many", &dst).await;
    eprintln!("10,000 files: restore {:?}", started.elapsed());
    assert_eq!(count(&restored, "files"), 10_000);
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_backup_reads_only_changed_files() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    for i in 0..20 {
        fs::write(src.join(format!("f{i}")), random(100_000, i)).unwrap();
    }
    fs::create_dir(src.join("sub")).unwrap();
    fs::write(src.join("sub/big"), random(5 * MIB as usize, 99)).unwrap();
    let total = 20 * 100_000 + 5 * MIB;

    let first = fx.backup(&src, "vol", "run-1").await;
    assert_eq!(bytes(&first, "read"), total);
    assert_eq!(first.details["parent"], serde_json::Value::Null);

    let second = fx.backup(&src, "vol", "run-2").await;
    assert_eq!(bytes(&second, "read"), 0, "{second:?}");
    assert_eq!(bytes(&second, "reused"), total);
    assert_eq!(bytes(&second, "new"), 0, "{second:?}");
    assert_eq!(second.details["parent"], first.details["snapshot"]);
    // Unchanged directories give the same trees, down to the root.
    assert_eq!(second.details["root"], first.details["root"]);

    // Another plan does not use this plan's snapshots as parents.
    let mut other = fx.opts(&src, "vol", "run-other");
    other.plan = "weekly".into();
    let r = backup(&fx.repo, &other, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(bytes(&r, "read"), total);

    // Change one file: only it is read.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(src.join("sub/big"))
        .unwrap();
    f.write_all(b"appended").unwrap();
    drop(f);
    let third = fx.backup(&src, "vol", "run-3").await;
    assert_eq!(bytes(&third, "read"), 5 * MIB + 8, "{third:?}");
    assert_eq!(bytes(&third, "reused"), 20 * 100_000);
    assert!(bytes(&third, "new") < 5 * MIB, "{third:?}");

    let dst = fx.path("dst");
    fx.restore("vol", &dst).await;
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_file_fails_the_item_and_the_rest_goes_on() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::write(src.join("fine"), b"fine").unwrap();
    fs::create_dir(src.join("sub")).unwrap();
    fs::write(src.join("sub/locked"), b"locked").unwrap();
    fs::create_dir_all(src.join("sub/closed/inner")).unwrap();
    fs::write(src.join("sub/closed/inner/x"), b"x").unwrap();
    fs::write(src.join("zzz"), b"after").unwrap();
    let mut opts = fx.opts(&src, "vol", "run-1");
    if is_root() {
        // Root reads mode 000 files and lists mode 000 directories; make
        // them fail as they would for anyone else.
        opts.hooks.open_error = Some(Arc::new(|p: &Path| {
            (p.ends_with("sub/locked") || p.ends_with("sub/closed"))
                .then(|| std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        }));
    } else {
        chmod(&src.join("sub/locked"), 0o000);
        chmod(&src.join("sub/closed"), 0o000);
    }
    let report = backup(&fx.repo, &opts, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.status(), Status::Partial);
    assert_eq!(Status::Partial.exit_code(), 3);
    let items: Vec<&str> = report.errors.iter().map(|e| e.item.as_str()).collect();
    assert_eq!(items, ["sub/closed", "sub/locked"], "{:?}", report.errors);
    assert!(
        report
            .errors
            .iter()
            .all(|e| e.message.to_lowercase().contains("permission"))
    );
    assert_eq!(count(&report, "unreadable"), 2);
    assert_eq!(count(&report, "files"), 3);

    // The snapshot holds everything else.
    let dst = fx.path("dst");
    fx.restore("vol", &dst).await;
    assert_eq!(fs::read(dst.join("fine")).unwrap(), b"fine");
    assert_eq!(fs::read(dst.join("zzz")).unwrap(), b"after");
    assert!(dst.join("sub").is_dir());
    assert!(!dst.join("sub/locked").exists());
    // The unlistable directory comes back empty.
    assert!(dst.join("sub/closed").is_dir());
    assert_eq!(fs::read_dir(dst.join("sub/closed")).unwrap().count(), 0);
    if !is_root() {
        chmod(&src.join("sub/closed"), 0o755);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changing_while_read_is_reported_and_read_again_next_time() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::write(src.join("steady"), random(300_000, 1)).unwrap();
    fs::write(src.join("growing.log"), random(10 * MIB as usize, 2)).unwrap();
    let mut opts = fx.opts(&src, "vol", "run-1");
    opts.hooks.after_first_chunk = Some(Arc::new(|p: &Path| {
        if p.ends_with("growing.log") {
            let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
            f.write_all(b"one more line\n").unwrap();
        }
    }));
    let report = backup(&fx.repo, &opts, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.status(), Status::Success);
    assert_eq!(count(&report, "changed"), 1);
    assert_eq!(
        report.details["changed_files"],
        serde_json::json!(["growing.log"])
    );
    // Stored as read; the next backup does not trust it.
    let again = fx.backup(&src, "vol", "run-2").await;
    assert_eq!(count(&again, "changed"), 0);
    assert_eq!(bytes(&again, "read"), 10 * MIB + 14);
    let dst = fx.path("dst");
    fx.restore("vol", &dst).await;
    assert!(compare_trees(&src, &dst).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_backup_flushes_but_saves_no_snapshot() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::write(src.join("a"), random(12 * MIB as usize, 5)).unwrap();
    fs::write(src.join("b"), random(100, 6)).unwrap();
    let cancel = CancellationToken::new();
    let mut opts = fx.opts(&src, "vol", "run-1");
    opts.channels = 1;
    let c = cancel.clone();
    opts.hooks.after_first_chunk = Some(Arc::new(move |_: &Path| c.cancel()));
    let err = backup(&fx.repo, &opts, &cancel).await.unwrap_err();
    assert!(matches!(err, VolumeError::Cancelled), "{err}");
    assert!(fx.repo.list_snapshots().await.unwrap().is_empty());
    // What was added is durable, so the retry reuses it.
    assert!(!fx.repo.backend().list("index/").await.unwrap().is_empty());
    let retry = fx.backup(&src, "vol", "run-1").await;
    assert!(bytes(&retry, "new") < 12 * MIB, "{retry:?}");
    assert_eq!(fx.repo.list_snapshots().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_across_volumes_and_shifted_data() {
    let fx = Fixture::new().await;
    let size = 200 * MIB as usize;
    let data = random(size, 42);
    let (a, b, c) = (fx.path("a"), fx.path("b"), fx.path("c"));
    fs::write(a.join("data"), &data).unwrap();
    fs::write(b.join("copy"), &data).unwrap();
    let mut shifted = vec![0x5a];
    shifted.extend_from_slice(&data);
    fs::write(c.join("shifted"), &shifted).unwrap();
    drop((data, shifted));

    let started = Instant::now();
    let first = fx.backup(&a, "a", "run-a").await;
    let backup_secs = started.elapsed().as_secs_f64();
    assert!(bytes(&first, "new") >= size as u64);

    let same = fx.backup(&b, "b", "run-b").await;
    assert_eq!(bytes(&same, "read"), size as u64);
    let new_same = bytes(&same, "new") as f64 / size as f64;
    assert!(new_same < 0.01, "{same:?}");

    let moved = fx.backup(&c, "c", "run-c").await;
    let new_shifted = bytes(&moved, "new") as f64 / size as f64;
    assert!(new_shifted < 0.05, "{moved:?}");

    let dst = fx.path("dst");
    let started = Instant::now();
    fx.restore("a", &dst).await;
    let restore_secs = started.elapsed().as_secs_f64();
    assert!(compare_trees(&a, &dst).is_empty());
    eprintln!(
        "200 MiB: backup {backup_secs:.2}s ({:.0} MiB/s), restore {restore_secs:.2}s ({:.0} MiB/s); \
         new bytes for an identical copy {:.3}%, for a one-byte shift {:.2}%",
        200.0 / backup_secs,
        200.0 / restore_secs,
        new_same * 100.0,
        new_shifted * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_picks_snapshots_by_point_and_id() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::write(src.join("f"), b"version 1").unwrap();
    let r1 = fx.backup(&src, "vol", "run-1").await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = jiff::Timestamp::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    fs::write(src.join("f"), b"version 2!").unwrap();
    let r2 = fx.backup(&src, "vol", "run-2").await;
    assert_ne!(r1.details["snapshot"], r2.details["snapshot"]);
    let read = |d: &Path| fs::read(d.join("f")).unwrap();

    let newest = fx.path("newest");
    let rep = fx.restore("vol", &newest).await;
    assert_eq!(rep.details["snapshot"], r2.details["snapshot"]);
    assert_eq!(read(&newest), b"version 2!");

    let mut o = restore_opts("vol", &fx.path("at-point"));
    o.point = Some(between);
    restore(&fx.repo, &o, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(read(&o.path), b"version 1");

    let mut o = restore_opts("vol", &fx.path("by-id"));
    o.snapshot = Some(r1.details["snapshot"].as_str().unwrap()[..12].to_string());
    restore(&fx.repo, &o, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(read(&o.path), b"version 1");

    // Errors name what is missing.
    let o = restore_opts("nope", &fx.path("x"));
    let e = restore(&fx.repo, &o, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("`nope`"), "{e}");
    let mut o = restore_opts("nope", &fx.path("y"));
    o.snapshot = r1.details["snapshot"].as_str().map(String::from);
    let e = restore(&fx.repo, &o, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("it has: vol"), "{e}");
    let mut o = restore_opts("vol", &fx.path("z"));
    o.point = Some("2000-01-01T00:00:00Z".parse().unwrap());
    let e = restore(&fx.repo, &o, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("at or before 2000"), "{e}");
}

fn node(name: &[u8], kind: NodeType) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        size: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        inode: 0,
        dev: 0,
        nlink: 1,
        rdev: 0,
        target: None,
        link: None,
        xattrs: BTreeMap::new(),
        content: Vec::new(),
        subtree: None,
    }
}

#[test]
fn tree_json_follows_the_format() {
    let mut n = node(b"bad-\xff", NodeType::File);
    n.size = 3;
    n.mtime_ns = -5;
    n.content = vec![crate::repo::BlobId([7; 32])];
    n.xattrs.insert(b"user.a".to_vec(), b"v".to_vec());
    n.xattrs.insert(b"user.\xfe".to_vec(), vec![0, 255]);
    let mut l = node(b"sym", NodeType::Symlink);
    l.target = Some(b"t\xff".to_vec());
    let mut h = node(b"zz", NodeType::Hardlink);
    h.link = Some(b"dir/first".to_vec());
    let mut d = node(b"\xc3\xa9t\xc3\xa9", NodeType::Dir);
    d.subtree = Some(crate::repo::BlobId([9; 32]));
    let tree = Tree {
        nodes: vec![n, l, h, d],
    };
    let json = tree.encode();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["name_b64"], "YmFkLf8=");
    assert!(nodes[0].get("name").is_none());
    assert_eq!(nodes[0]["type"], "file");
    assert_eq!(nodes[0]["content"][0], "07".repeat(32));
    assert_eq!(nodes[0]["xattrs"]["user.a"], "dg==");
    assert_eq!(nodes[0]["xattrs_b64"]["dXNlci7+"], "AP8=");
    assert_eq!(nodes[0]["mtime_ns"], -5);
    assert_eq!(nodes[1]["target_b64"], "dP8=");
    assert_eq!(nodes[2]["link"], "dir/first");
    assert_eq!(nodes[3]["name"], "été");
    assert_eq!(nodes[3]["subtree"], "09".repeat(32));
    assert!(nodes[3].get("content").is_none());
    // Same nodes, same bytes; and back.
    assert_eq!(tree.encode(), json);
    assert_eq!(Tree::decode(&json).unwrap(), tree);
    assert!(Tree::decode(br#"{"nodes":[{"type":"file"}]}"#).is_err());
    // A type from the future is read, and skipped by restore.
    let t = Tree::decode(br#"{"nodes":[{"name":"x","type":"whiteout","extra":1}]}"#).unwrap();
    assert_eq!(t.nodes[0].kind, NodeType::Unknown);
}

#[test]
fn chunker_params_outside_fastcdc_limits_are_refused() {
    use crate::repo::ChunkerParams;
    assert!(Chunker::new(ChunkerParams::default()).is_ok());
    for (min, avg, max) in [
        (16, 1024, 4096),
        (1 << 20, 1 << 20, 32 << 20),
        (257, 1024, 4096),
    ] {
        let e = Chunker::new(ChunkerParams { min, avg, max }).unwrap_err();
        assert!(e.to_string().contains("FastCDC"), "{e}");
    }
}

/// A hostile or damaged tree cannot make restore write outside the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_names_and_links_that_escape() {
    let fx = Fixture::new().await;
    let outside = fx.path("outside");
    fs::write(outside.join("secret"), b"outside").unwrap();
    let w = fx.repo.writer(1);
    let (data, _) = w
        .add(BlobKind::Data, Bytes::from_static(b"payload"))
        .await
        .unwrap();
    let file = |name: &[u8]| {
        let mut n = node(name, NodeType::File);
        n.size = 7;
        n.content = vec![data];
        n
    };
    let mut escape_link = node(b"hl-escape", NodeType::Hardlink);
    escape_link.link = Some(b"../outside/secret".to_vec());
    let mut via_symlink = node(b"hl-via-symlink", NodeType::Hardlink);
    via_symlink.link = Some(b"sym/secret".to_vec());
    let mut sym = node(b"sym", NodeType::Symlink);
    sym.target = Some(outside.as_os_str().as_bytes().to_vec());
    // `sym` then a directory of the same name: the symlink is replaced,
    // not followed.
    let mut sym_dir = node(b"sym", NodeType::Dir);
    sym_dir.mode = 0o755;
    let inner = Tree {
        nodes: vec![file(b"secret")],
    };
    sym_dir.subtree = Some(
        w.add(BlobKind::Tree, Bytes::from(inner.encode()))
            .await
            .unwrap()
            .0,
    );
    let listing = Tree {
        nodes: vec![
            file(b".."),
            file(b"a/b"),
            escape_link,
            sym,
            via_symlink,
            sym_dir,
            file(b"ok"),
        ],
    };
    let listing_id = w
        .add(
            BlobKind::Tree,
            Bytes::from(serde_json::to_vec(&listing).unwrap()),
        )
        .await
        .unwrap()
        .0;
    let mut root = node(b".", NodeType::Dir);
    root.mode = 0o755;
    root.subtree = Some(listing_id);
    let (root_id, _) = w
        .add(
            BlobKind::Tree,
            Bytes::from(Tree { nodes: vec![root] }.encode()),
        )
        .await
        .unwrap();
    w.finish().await.unwrap();
    let mut m = SnapshotManifest::new("evil", 0, 1, "daily");
    m.volumes.insert(
        "evil".into(),
        VolumeEntry {
            root: root_id,
            stats: serde_json::Value::Null,
        },
    );
    fx.repo.save_snapshot(&m).await.unwrap();

    let dst = fx.path("dst");
    let report = fx.restore("evil", &dst).await;
    let failed: Vec<&str> = report.errors.iter().map(|e| e.item.as_str()).collect();
    assert_eq!(
        failed,
        vec!["..", "a/b", "hl-escape", "hl-via-symlink"],
        "{:?}",
        report.errors
    );
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"outside");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    assert_eq!(fs::read(dst.join("ok")).unwrap(), b"payload");
    assert!(fs::symlink_metadata(dst.join("sym")).unwrap().is_dir());
    assert_eq!(fs::read(dst.join("sym/secret")).unwrap(), b"payload");
}

/// Small files are cut in memory, large ones streamed: the same bytes must
/// cut at the same points either way.
#[test]
fn in_memory_and_streaming_chunking_cut_alike() {
    use fastcdc::v2020::{FastCDC, StreamCDC};
    let data = random(3 * MIB as usize + 17, 8);
    let c = Chunker::new(crate::repo::ChunkerParams::default()).unwrap();
    let mem: Vec<(u64, usize)> = FastCDC::new(&data, c.min, c.avg, c.max)
        .map(|x| (x.offset as u64, x.length))
        .collect();
    let streamed: Vec<(u64, usize)> = StreamCDC::new(&data[..], c.min, c.avg, c.max)
        .map(|x| x.map(|x| (x.offset, x.length)).unwrap())
        .collect();
    assert!(mem.len() > 1, "{mem:?}");
    assert_eq!(mem, streamed);
}

/// The generic walker of check/prune/copy follows only `content` and
/// `subtree`; from a volume snapshot it must reach every blob the backup
/// stored, or prune would delete live data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_walker_reaches_every_blob_of_a_volume() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::create_dir_all(src.join("a/b/c")).unwrap();
    fs::write(src.join("a/b/c/big"), random(6 * MIB as usize, 1)).unwrap();
    fs::write(src.join("a/small"), b"small").unwrap();
    fs::write(src.join("a/b/hl"), b"hard").unwrap();
    fs::hard_link(src.join("a/b/hl"), src.join("hl2")).unwrap();
    std::os::unix::fs::symlink("a", src.join("s")).unwrap();
    fx.backup(&src, "vol", "run-1").await;
    let runs = fx.repo.complete_runs().await.unwrap();
    let (id, m) = &runs[0].parts[0];
    let walk =
        crate::repo::walk::walk(&fx.repo, crate::repo::walk::Root::of_manifest(*id, m), 2).await;
    assert!(walk.problems.is_empty(), "{:?}", walk.problems);
    let stored: std::collections::HashSet<_> = fx.repo.index_entries().map(|(id, _)| id).collect();
    assert_eq!(walk.reachable, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mover_mode_saves_a_result_not_a_snapshot() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::write(src.join("a"), random(300_000, 1)).unwrap();
    let mut opts = fx.opts(&src, "shop/data-db-0", "orchestrator-run");
    opts.mover = true;
    let r = backup(&fx.repo, &opts, &CancellationToken::new())
        .await
        .unwrap();
    assert!(r.details["snapshot"].is_null(), "{:?}", r.details);
    assert!(r.details["mover_result"].is_string(), "{:?}", r.details);
    assert!(fx.repo.list_snapshots().await.unwrap().is_empty());
    let results = fx
        .repo
        .mover_results("orchestrator-run", "shop/data-db-0")
        .await
        .unwrap();
    assert_eq!(results.len(), 1);
    let entry = &results[0].entry;
    assert_eq!(entry.root.to_hex(), r.details["root"].as_str().unwrap());
    assert_eq!(results[0].report["bytes"]["read"], 300_000);

    // The orchestrator links the tree in its manifest; the next mover of
    // the same plan then finds it as its parent and reads nothing.
    let mut m = SnapshotManifest::new("orchestrator-run", 0, 1, "daily");
    m.volumes.insert("shop/data-db-0".into(), entry.clone());
    let committed = fx.repo.save_snapshot(&m).await.unwrap();
    opts.run_id = "orchestrator-run-2".into();
    let second = backup(&fx.repo, &opts, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(second.details["parent"], committed.to_hex());
    assert_eq!(bytes(&second, "read"), 0, "{second:?}");
}

/// A restore run again over its own partial result (or any older copy)
/// leaves files that are complete and verified alone, and rewrites the
/// rest: a file of the right size but other content is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_again_skips_verified_files_only() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    fs::create_dir(src.join("d")).unwrap();
    let big = random(3 * MIB as usize, 1);
    fs::write(src.join("big"), &big).unwrap();
    fs::write(src.join("d/same"), random(300_000, 2)).unwrap();
    fs::write(src.join("d/flipped"), random(2 * MIB as usize, 3)).unwrap();
    fs::write(src.join("d/short"), random(500_000, 4)).unwrap();
    fs::write(src.join("d/zeros"), vec![0u8; MIB as usize]).unwrap();
    fs::write(src.join("d/readonly"), random(70_000, 5)).unwrap();
    chmod(&src.join("d/readonly"), 0o444);
    fs::write(src.join("empty"), b"").unwrap();
    let linked = src.join("d/same");
    fs::hard_link(&linked, src.join("link")).unwrap();
    stamp_dirs(&src, 1_700_000_000_000_000_000);
    fx.backup(&src, "vol", "run-1").await;

    let dst = fx.path("dst");
    let first = fx.restore("vol", &dst).await;
    assert_eq!(count(&first, "reused"), 0);
    assert_eq!(bytes(&first, "reused"), 0);

    // What an interrupted restore (or a stale copy) may leave behind.
    let mut flipped = fs::read(dst.join("d/flipped")).unwrap();
    flipped[MIB as usize + 17] ^= 1;
    fs::write(dst.join("d/flipped"), &flipped).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(dst.join("d/short"))
        .unwrap()
        .set_len(100)
        .unwrap();
    // Read-only (as restored) and different: rewritten all the same.
    let mut ro = fs::read(dst.join("d/readonly")).unwrap();
    ro[0] ^= 1;
    chmod(&dst.join("d/readonly"), 0o644);
    fs::write(dst.join("d/readonly"), &ro).unwrap();
    chmod(&dst.join("d/readonly"), 0o444);
    // Right content, wrong metadata: kept, metadata set again.
    chmod(&dst.join("big"), 0o600);
    set_mtime(&dst.join("big"), 0);
    let big_inode = fs::metadata(dst.join("big")).unwrap().ino();

    let again = fx.restore("vol", &dst).await;
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");
    // big and d/zeros; d/same has a second name (the hard link), so it is
    // rewritten rather than trusted.
    assert_eq!(count(&again, "reused"), 2, "{again:?}");
    assert_eq!(bytes(&again, "reused"), 3 * MIB + MIB);
    assert_eq!(fs::metadata(dst.join("big")).unwrap().ino(), big_inode);
    assert_eq!(fs::read(dst.join("big")).unwrap(), big);
    assert!(
        bytes(&again, "written") >= 2 * MIB + 500_000,
        "the flipped and the short file are written again: {again:?}"
    );
}

/// Files a stopped backup read go into checkpoints while it runs; the
/// backup run again takes them unread (unless they changed since) and
/// reports them as resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_after_an_unfinished_backup_skips_checkpointed_files() {
    let fx = Fixture::new().await;
    let src = fx.path("src");
    // More than a pack (16 MiB) before the last file: the files of the
    // first pack are checkpointed as soon as it is indexed.
    for i in 0..24u64 {
        fs::write(src.join(format!("f{i:02}")), random(MIB as usize, i)).unwrap();
    }
    fs::write(src.join("z-last"), random(3 * MIB as usize, 99)).unwrap();
    let cancel = CancellationToken::new();
    let mut opts = fx.opts(&src, "vol", "run-1");
    opts.channels = 1;
    // A checkpoint for every file, as soon as its chunks are indexed.
    opts.resume_buffer = 1;
    let checkpoints = fx.dir.path().join("repo/checkpoints");
    let c = cancel.clone();
    opts.hooks.after_first_chunk = Some(Arc::new(move |p: &Path| {
        if p.ends_with("z-last") {
            // Stop in the middle of the last file, once the checkpoints of
            // the earlier ones are stored (not by the final checkpoint).
            let deadline = Instant::now() + std::time::Duration::from_secs(20);
            while fs::read_dir(&checkpoints).map_or(0, |d| d.count()) == 0 {
                assert!(Instant::now() < deadline, "no checkpoint while running");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            c.cancel();
        }
    }));
    // The repository writer indexes every pack (like the 10 MiB default).
    fx.repo.set_resume_buffer(1);
    let err = backup(&fx.repo, &opts, &cancel).await.unwrap_err();
    assert!(matches!(err, VolumeError::Cancelled), "{err}");
    assert!(fx.repo.list_snapshots().await.unwrap().is_empty());

    // One file changed since: it is read again. The rest were saved by
    // the periodic checkpoints and the last one, after the final flush.
    fs::write(src.join("f03"), random(MIB as usize, 333)).unwrap();
    let again = fx.backup(&src, "vol", "run-2").await;
    assert_eq!(count(&again, "resumed"), 23, "{again:?}");
    assert_eq!(bytes(&again, "resumed"), 23 * MIB);
    assert_eq!(bytes(&again, "read"), MIB + 3 * MIB, "{again:?}");
    let dst = fx.path("dst");
    fx.restore("vol", &dst).await;
    let diffs = compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");

    // Once a snapshot is complete, the next run takes the files from it,
    // not from the old checkpoints.
    let third = fx.backup(&src, "vol", "run-3").await;
    assert_eq!(count(&third, "resumed"), 0);
    assert_eq!(bytes(&third, "read"), 0);
    assert_eq!(bytes(&third, "reused"), 27 * MIB);
}
