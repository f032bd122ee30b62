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
use crate::repo::backend::{Backend, FsBackend, MemBackend};
use crate::repo::{BlobKind, KeyParams, OpenOptions, SnapshotManifest, VolumeEntry};
use crate::summary::{Report, Status};

mod backup;
mod format;
mod restore;

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

    /// The repository in memory (hostile trees need no files of their
    /// own); the tempdir holds the directories backed up or restored.
    async fn in_memory() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
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
        hooks: Default::default(),
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

/// Ids of the stored blobs (data and trees, every snapshot) whose
/// plaintext contains `needle`.
async fn blobs_containing(repo: &Repository, needle: &[u8]) -> Vec<crate::repo::BlobId> {
    let mut found = Vec::new();
    for (id, _) in repo.index_entries() {
        let data = repo.read_blob(&id).await.unwrap();
        if data.windows(needle.len()).any(|w| w == needle) {
            found.push(id);
        }
    }
    found
}

/// Block-level allocation, to tell a sparse file from a full one.
fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
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
