//! `volume-restore`: a tree of nodes back into a directory.
//!
//! One blocking thread walks the tree depth-first in name order, creating
//! directories, files (empty), hard links, symlinks and FIFOs as it goes;
//! at most `channels` async tasks fill files, each fetching (and so
//! verifying) its chunks in order and handing them through a bounded
//! channel to a blocking writer that seeks over all-zero chunks, so holes
//! come back as holes. A directory's metadata is applied when everything
//! in it is done, so directories come after their contents, deepest first.
//!
//! Hard links: the first occurrence of a file precedes its other names in
//! the walk, and is created (empty) before the walk moves on, so the link
//! can be made at once, inside the directory that holds it.
//!
//! Resume: a regular file that is already there with the right size (an
//! interrupted restore run again, or an older copy) is read and hashed
//! chunk by chunk against the tree; if every chunk matches it is left as
//! it is (only its metadata is set), which is much cheaper than fetching
//! it. Otherwise it is rewritten in place, so hard links made to it
//! meanwhile stay right.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::tree::{Node, NodeType, ROOT_NAME, display_path, is_safe_name, is_safe_rel, join_rel};
use super::{Stopped, VolumeError, get, inc, is_item_error, join_err, load_tree};
use crate::repo::{BlobId, Repository, SnapshotId, SnapshotManifest, SnapshotRef, VolumeEntry};
use crate::summary::{ItemError, Report};

/// Chunks fetched ahead per file, and queued for its writer.
mod write;
use write::*;

const PREFETCH: usize = 2;

/// What `volume-restore` restores, and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The directory to fill; created if missing.
    pub path: PathBuf,
    /// The volume's key in the manifest's `volumes`.
    pub name: String,
    /// A snapshot id, or a unique prefix of one.
    pub snapshot: Option<String>,
    /// The newest complete run at or before this time.
    pub point: Option<jiff::Timestamp>,
    /// Files written at once, and download streams.
    pub channels: usize,
}

#[derive(Default)]
struct Stats {
    files: AtomicU64,
    dirs: AtomicU64,
    symlinks: AtomicU64,
    hardlinks: AtomicU64,
    special: AtomicU64,
    skipped: AtomicU64,
    xattr_failures: AtomicU64,
    bytes_written: AtomicU64,
    bytes_sparse: AtomicU64,
    /// Files found complete and verified, left as they were.
    reused: AtomicU64,
    bytes_reused: AtomicU64,
}

type Task = JoinHandle<Result<(), Stopped>>;

struct Shared {
    repo: Repository,
    root: PathBuf,
    rt: Handle,
    tracker: TaskTracker,
    files: Arc<Semaphore>,
    stop: CancellationToken,
    fatal: Mutex<Option<VolumeError>>,
    stats: Stats,
    errors: Mutex<Vec<ItemError>>,
    /// Owners are restored only by root.
    is_root: bool,
}

impl Shared {
    fn fail(&self, e: impl Into<VolumeError>) -> Stopped {
        let e = e.into();
        let mut slot = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            warn!(error = %e, "stopping the volume restore");
            *slot = Some(e);
        }
        self.stop.cancel();
        Stopped
    }

    fn item_failed(&self, path: &str, message: impl std::fmt::Display) {
        warn!(path, error = %message, "cannot restore");
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ItemError {
                item: path.to_string(),
                message: message.to_string(),
            });
    }

    /// Applies metadata; a failure (other than of an xattr) fails the item.
    fn apply_meta(&self, abs: &Path, node: &Node, shown: &str) {
        let failed = set_xattrs(abs, node, shown);
        inc(&self.stats.xattr_failures, failed);
        if let Err(e) = set_meta(abs, node, self.is_root) {
            self.item_failed(shown, format!("metadata: {e}"));
        }
    }
}

/// Sets the extended attributes, best effort; returns how many failed.
fn set_xattrs(abs: &Path, node: &Node, shown: &str) -> u64 {
    let mut failed = 0;
    for (name, value) in &node.xattrs {
        if let Err(e) = xattr::set(abs, OsStr::from_bytes(name), value) {
            warn!(path = shown, attribute = %display_path(name), error = %e, "cannot restore an extended attribute");
            failed += 1;
        }
    }
    failed
}

/// Owner (as root), mode (not on symlinks), then mtime: `chown` clears
/// setuid bits and any change bumps the times, so this order.
fn set_meta(abs: &Path, node: &Node, is_root: bool) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_OMIT, utimensat};
    if is_root {
        std::os::unix::fs::lchown(abs, Some(node.uid), Some(node.gid))?;
    }
    if node.kind != NodeType::Symlink {
        fs::set_permissions(abs, fs::Permissions::from_mode(node.mode & 0o7777))?;
    }
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: node.mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: node.mtime_ns.rem_euclid(1_000_000_000) as _,
        },
    };
    utimensat(CWD, abs, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Clears the way for a new entry at `abs`: an existing directory stays
/// when a directory is wanted (true is returned), anything else that is
/// not a directory is removed (a symlink is never followed).
fn clear_for(abs: &Path, want_dir: bool) -> io::Result<bool> {
    match fs::symlink_metadata(abs) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => {
            if want_dir {
                Ok(true)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a directory is in the way",
                ))
            }
        }
        Ok(_) => fs::remove_file(abs).map(|()| false),
    }
}

/// Whether a chunk is all zeros (memcmp against a zero page).
fn is_zero(data: &[u8]) -> bool {
    static ZEROS: [u8; 4096] = [0; 4096];
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// `root/rel`, where every component but the last is a real directory
/// (not a symlink) and the last is a regular file: the target of a hard
/// link, which must not lead out of the volume.
fn link_target(root: &Path, rel: &[u8]) -> io::Result<PathBuf> {
    let mut p = root.to_path_buf();
    let parts: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
    for (i, part) in parts.iter().enumerate() {
        p.push(OsStr::from_bytes(part));
        let m = fs::symlink_metadata(&p)?;
        let ok = if i + 1 == parts.len() {
            m.is_file()
        } else {
            m.is_dir()
        };
        if !ok {
            return Err(io::Error::other(format!(
                "{} is not a {}",
                display_path(rel),
                if i + 1 == parts.len() {
                    "regular file"
                } else {
                    "directory"
                }
            )));
        }
    }
    Ok(p)
}

struct Frame {
    abs: PathBuf,
    rel: Vec<u8>,
    node: Node,
    nodes: std::vec::IntoIter<Node>,
    pending: Vec<Task>,
}

struct Walker {
    sh: Arc<Shared>,
    stack: Vec<Frame>,
    progress: crate::progress::Ticker,
}

impl Walker {
    fn run(mut self) -> Option<Task> {
        loop {
            if self.sh.stop.is_cancelled() {
                return None;
            }
            let s = &self.sh.stats;
            self.progress.tick(
                || get(&s.bytes_written) + get(&s.bytes_sparse) + get(&s.bytes_reused),
                || get(&s.files),
            );
            let top = self
                .stack
                .last_mut()
                .expect("the root frame is popped last");
            match top.nodes.next() {
                Some(node) => self.visit(node),
                None => {
                    let frame = self.stack.pop().expect("non-empty");
                    let task = self
                        .sh
                        .tracker
                        .spawn_on(finalize(self.sh.clone(), frame), &self.sh.rt);
                    match self.stack.last_mut() {
                        Some(parent) => parent.pending.push(task),
                        None => return Some(task),
                    }
                }
            }
        }
    }

    fn visit(&mut self, node: Node) {
        let sh = self.sh.clone();
        let top = self.stack.last().expect("visiting inside a frame");
        let rel = join_rel(&top.rel, &node.name);
        let shown = display_path(&rel);
        if !is_safe_name(&node.name) {
            return sh.item_failed(&shown, "unsafe name in the tree; skipped");
        }
        let abs = top.abs.join(OsStr::from_bytes(&node.name));
        match node.kind {
            NodeType::Dir => self.dir(rel, abs, shown, node),
            NodeType::File => self.file(abs, shown, node),
            NodeType::Hardlink => {
                let result = match node.link.as_deref().filter(|l| is_safe_rel(l)) {
                    None => Err(io::Error::other("the link target is missing or unsafe")),
                    Some(link) => link_target(&sh.root, link).and_then(|target| {
                        clear_for(&abs, false)?;
                        fs::hard_link(target, &abs)
                    }),
                };
                match result {
                    Ok(()) => inc(&sh.stats.hardlinks, 1),
                    Err(e) => sh.item_failed(&shown, format!("hard link: {e}")),
                }
            }
            NodeType::Symlink => {
                let Some(target) = &node.target else {
                    return sh.item_failed(&shown, "symlink without a target");
                };
                let made = clear_for(&abs, false)
                    .and_then(|_| std::os::unix::fs::symlink(OsStr::from_bytes(target), &abs));
                match made {
                    Ok(()) => {
                        inc(&sh.stats.symlinks, 1);
                        sh.apply_meta(&abs, &node, &shown);
                    }
                    Err(e) => sh.item_failed(&shown, format!("symlink: {e}")),
                }
            }
            NodeType::Fifo => self.special(abs, shown, node, rustix::fs::FileType::Fifo),
            NodeType::Chardev | NodeType::Blockdev if sh.is_root => {
                let t = if node.kind == NodeType::Chardev {
                    rustix::fs::FileType::CharacterDevice
                } else {
                    rustix::fs::FileType::BlockDevice
                };
                self.special(abs, shown, node, t)
            }
            kind => {
                let why = match kind {
                    NodeType::Socket => {
                        "sockets are not restored (the process that owns one makes it)"
                    }
                    NodeType::Chardev | NodeType::Blockdev => {
                        "device nodes are restored only when running as root"
                    }
                    _ => "unknown node type, written by a newer kubestow",
                };
                warn!(path = %shown, kind = kind.as_str(), "skipped: {why}");
                inc(&sh.stats.skipped, 1);
            }
        }
    }

    fn dir(&mut self, rel: Vec<u8>, abs: PathBuf, shown: String, node: Node) {
        let sh = self.sh.clone();
        let made = clear_for(&abs, true)
            .and_then(|exists| if exists { Ok(()) } else { fs::create_dir(&abs) });
        if let Err(e) = made {
            return sh.item_failed(&shown, format!("directory: {e}"));
        }
        inc(&sh.stats.dirs, 1);
        let nodes = match node.subtree {
            None => Vec::new(),
            Some(id) => match sh.rt.block_on(load_tree(&sh.repo, &id)) {
                Ok(t) => t.nodes,
                // Restored empty, and reported.
                Err(e) if e.is_item_error() => {
                    sh.item_failed(&shown, format!("directory listing: {e}"));
                    Vec::new()
                }
                Err(e) => {
                    sh.fail(e);
                    return;
                }
            },
        };
        self.stack.push(Frame {
            abs,
            rel,
            node,
            nodes: nodes.into_iter(),
            pending: Vec::new(),
        });
    }

    fn file(&mut self, abs: PathBuf, shown: String, node: Node) {
        let sh = self.sh.clone();
        // Only a file with this one name: one shared with another name
        // (outside the tree, say) is not written to in place.
        let existing = fs::symlink_metadata(&abs).ok().filter(|m| {
            m.is_file() && m.nlink() == 1 && m.len() == node.size && !node.content.is_empty()
        });
        let target = if existing.is_some() {
            Target::Existing
        } else {
            let created = clear_for(&abs, false).and_then(|_| {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&abs)
            });
            match created {
                Ok(f) => Target::Created(f),
                Err(e) => return sh.item_failed(&shown, format!("file: {e}")),
            }
        };
        inc(&sh.stats.files, 1);
        let permit = sh
            .rt
            .block_on(sh.files.clone().acquire_owned())
            .expect("the file semaphore is never closed");
        let task = sh.tracker.spawn_on(
            write_task(sh.clone(), abs, shown, node, target, permit),
            &sh.rt,
        );
        self.stack
            .last_mut()
            .expect("visiting inside a frame")
            .pending
            .push(task);
    }

    fn special(&mut self, abs: PathBuf, shown: String, node: Node, t: rustix::fs::FileType) {
        let sh = &self.sh;
        let made = clear_for(&abs, false).and_then(|_| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &abs,
                t,
                rustix::fs::Mode::from_raw_mode(0o600),
                node.rdev,
            )
            .map_err(io::Error::from)
        });
        match made {
            Ok(()) => {
                inc(&sh.stats.special, 1);
                sh.apply_meta(&abs, &node, &shown);
            }
            Err(e) => sh.item_failed(&shown, format!("{}: {e}", node.kind.as_str())),
        }
    }
}

/// Waits for everything in a directory, then sets its metadata.
async fn finalize(sh: Arc<Shared>, frame: Frame) -> Result<(), Stopped> {
    for t in frame.pending {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(Stopped)) => return Err(Stopped),
            Err(e) => return Err(sh.fail(join_err(e))),
        }
    }
    if sh.stop.is_cancelled() {
        return Err(Stopped);
    }
    let (abs, node) = (frame.abs, frame.node);
    let shown = if frame.rel.is_empty() {
        ".".to_string()
    } else {
        display_path(&frame.rel)
    };
    let sh2 = sh.clone();
    tokio::task::spawn_blocking(move || sh2.apply_meta(&abs, &node, &shown))
        .await
        .map_err(|e| sh.fail(join_err(e)))
}

/// The snapshot to restore from: `STOW_SNAPSHOT`, else the newest complete
/// run at or before `STOW_RESTORE_POINT` (or at all) with the volume.
async fn select(
    repo: &Repository,
    opts: &RestoreOptions,
) -> Result<(SnapshotId, SnapshotManifest, VolumeEntry), VolumeError> {
    let runs = repo.complete_runs().await?;
    if let Some(wanted) = &opts.snapshot {
        let wanted = SnapshotRef::new(wanted);
        let run = wanted
            .find(&runs)
            .map_err(|e| VolumeError::SnapshotNotFound {
                wanted: wanted.to_string(),
                reason: e.to_string(),
            })?;
        // A snapshot id names its part; a run id, the part with the volume.
        let (id, m) = run
            .parts
            .iter()
            .find(|(id, _)| wanted.matches_id(id))
            .or_else(|| {
                run.parts
                    .iter()
                    .find(|(_, m)| m.volumes.contains_key(&opts.name))
            })
            .unwrap_or(&run.parts[0]);
        if !run.complete {
            warn!(snapshot = %id, run = %run.run_id, "the snapshot's run is incomplete; restoring this part anyway");
        }
        return match m.volumes.get(&opts.name) {
            Some(v) => Ok((*id, m.clone(), v.clone())),
            None => Err(VolumeError::NotInSnapshot {
                snapshot: id.to_hex(),
                volume: opts.name.clone(),
                available: if m.volumes.is_empty() {
                    "no volumes".into()
                } else {
                    m.volumes.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            }),
        };
    }
    let found = runs
        .iter()
        .rev()
        .filter(|r| r.complete && opts.point.is_none_or(|p| r.time <= p))
        .find_map(|r| {
            r.parts.iter().find_map(|(id, m)| {
                m.volumes
                    .get(&opts.name)
                    .map(|v| (*id, m.clone(), v.clone()))
            })
        });
    found.ok_or_else(|| VolumeError::NoSnapshot {
        volume: opts.name.clone(),
        scope: opts
            .point
            .map(|p| format!("at or before {p} "))
            .unwrap_or_default(),
    })
}

/// Restores volume `opts.name` into `opts.path`. Per-file failures are
/// listed in the report (exit 3); an unreachable repository stops the run.
pub async fn restore(
    repo: &Repository,
    opts: &RestoreOptions,
    cancel: &CancellationToken,
) -> Result<Report, VolumeError> {
    let started = Instant::now();
    let (snapshot, manifest, entry) = select(repo, opts).await?;
    info!(volume = %opts.name, snapshot = %snapshot, run = %manifest.run_id, time = %manifest.time, "restoring");
    let bad_tree = |id: &BlobId, reason: String| VolumeError::BadTree {
        id: id.to_hex(),
        reason,
    };
    let root = load_tree(repo, &entry.root)
        .await?
        .nodes
        .into_iter()
        .find(|n| n.name == ROOT_NAME && n.kind == NodeType::Dir)
        .ok_or_else(|| bad_tree(&entry.root, "no `.` directory node at the root".into()))?;
    let listing = match &root.subtree {
        Some(id) => load_tree(repo, id).await?.nodes,
        None => Vec::new(),
    };
    let shown_root = opts.path.display().to_string();
    let io_err = |source| VolumeError::Io {
        path: shown_root.clone(),
        source,
    };
    fs::create_dir_all(&opts.path).map_err(io_err)?;
    if !fs::metadata(&opts.path).map_err(io_err)?.is_dir() {
        return Err(VolumeError::NotADirectory { path: shown_root });
    }
    let is_root = rustix::process::geteuid().is_root();
    if !is_root {
        debug!("not running as root: owners are not restored, device nodes are skipped");
    }
    let channels = opts.channels.max(1);
    let sh = Arc::new(Shared {
        repo: repo.clone(),
        root: opts.path.clone(),
        rt: Handle::current(),
        tracker: TaskTracker::new(),
        files: Arc::new(Semaphore::new(channels)),
        stop: cancel.child_token(),
        fatal: Mutex::new(None),
        stats: Stats::default(),
        errors: Mutex::new(Vec::new()),
        is_root,
    });
    inc(&sh.stats.dirs, 1);
    let walker = Walker {
        sh: sh.clone(),
        stack: vec![Frame {
            abs: opts.path.clone(),
            rel: Vec::new(),
            node: root,
            nodes: listing.into_iter(),
            pending: Vec::new(),
        }],
        // The snapshot's size of this volume makes the estimate.
        progress: crate::progress::Ticker::new(
            "volume restore",
            entry.stats.get("bytes").and_then(|b| b.as_u64()),
        ),
    };
    let root_task = tokio::task::spawn_blocking(move || walker.run())
        .await
        .map_err(join_err)?;
    let done = match root_task {
        Some(t) => t.await.map_err(join_err)?.is_ok(),
        None => false,
    };
    sh.tracker.close();
    sh.tracker.wait().await;
    let fatal = sh.fatal.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(e) = fatal {
        // On SIGTERM the retries stop with an error: the run was stopped.
        if cancel.is_cancelled() {
            warn!(error = %e, "stopped");
            return Err(VolumeError::Cancelled);
        }
        return Err(e);
    }
    if !done || cancel.is_cancelled() {
        return Err(VolumeError::Cancelled);
    }

    let s = &sh.stats;
    let mut report = Report::default();
    for (key, c) in [
        ("files", &s.files),
        ("dirs", &s.dirs),
        ("symlinks", &s.symlinks),
        ("hardlinks", &s.hardlinks),
        ("special", &s.special),
        ("skipped", &s.skipped),
        ("xattr_failures", &s.xattr_failures),
    ] {
        report.count(key, get(c));
    }
    report.count("reused", get(&s.reused));
    report.add_bytes("written", get(&s.bytes_written));
    report.add_bytes("sparse", get(&s.bytes_sparse));
    report.add_bytes("reused", get(&s.bytes_reused));
    report.errors = std::mem::take(&mut *sh.errors.lock().unwrap_or_else(|p| p.into_inner()));
    report.details = serde_json::json!({
        "snapshot": snapshot.to_hex(),
        "run_id": manifest.run_id,
        "time": manifest.time.to_string(),
        "volume": opts.name,
    });
    let secs = started.elapsed().as_secs_f64();
    info!(
        volume = %opts.name,
        files = get(&s.files),
        bytes = get(&s.bytes_written),
        files_reused = get(&s.reused),
        bytes_reused = get(&s.bytes_reused),
        errors = report.errors.len(),
        mib_per_s = format!("{:.1}", get(&s.bytes_written) as f64 / (1 << 20) as f64 / secs.max(1e-3)),
        "volume restored"
    );
    Ok(report)
}
