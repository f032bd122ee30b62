//! `volume-restore`: a tree of nodes back into a directory.
//!
//! One blocking thread walks the tree depth-first in name order, creating
//! directories, hard links, symlinks and FIFOs as it goes. Small files
//! (most of a typical volume) are collected into bounded batches: each
//! batch creates its files, fetches their chunks (neighbouring blobs in
//! one ranged read) and writes them, a few thread hand-offs per batch
//! rather than per file. A larger file is created by the walker and
//! streamed: its chunks are fetched (and so verified) in order and handed
//! through a bounded channel to a blocking writer. At most `channels`
//! batches or large files are in flight. All-zero chunks are not written,
//! so holes come back as holes. A directory's metadata is applied when
//! everything in it is done, so directories come after their contents,
//! deepest first.
//!
//! Hard links: the first occurrence of a file precedes its other names in
//! the walk, and a file with more than one link is created (empty) by the
//! walker before it moves on, so the link can be made at once, inside the
//! directory that holds it.
//!
//! Every entry is made relative to its directory's descriptor, without
//! following symlinks, and metadata is set on the descriptor of what was
//! written (or, for symlinks and special files, by no-follow calls
//! relative to the directory): nothing a tree holds, and nothing put in
//! the target meanwhile, makes a restore change anything outside it.
//! Trees whose names are not unique and sorted are refused.
//!
//! Resume: a regular file that is already there with the right size (an
//! interrupted restore run again, or an older copy) is read and hashed
//! chunk by chunk against the tree; if every chunk matches it is left as
//! it is (only its metadata is set), which is much cheaper than fetching
//! it. Otherwise it is rewritten in place, so hard links made to it
//! meanwhile stay right.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared as SharedFuture};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::beneath::{is_errno, open_beneath, open_dir, proc_path, proc_works};
use super::tree::{
    Node, NodeType, ROOT_NAME, display_path, is_safe_name, is_safe_rel, join_rel, stat,
};
use super::{
    Failures, Stopped, VolumeError, get, inc, is_item_error, join_err, load_tree,
    load_tree_blocking,
};
use crate::repo::{BlobId, Repository, SnapshotId, SnapshotManifest, SnapshotRef, VolumeEntry};
use crate::summary::Report;

/// How deep directories nest in a restore. Path lengths stop real trees
/// long before (PATH_MAX is 4096 bytes); each level holds a directory
/// descriptor and its listing, so the bound is what keeps those bounded.
pub const MAX_DEPTH: usize = 512;

/// Entries a restore may create: what the snapshot records for the volume
/// (its backup counted every entry it wrote to the tree), twice over plus
/// a margin so that counting differences never stop a real restore, while
/// a tree referenced many times (2^depth entries from a few blobs) is.
/// Every backup records the counts; without them, [`UNRECORDED_BUDGET`].
pub fn entry_budget(stats: &serde_json::Value) -> u64 {
    let mut total = 0u64;
    let mut any = false;
    for key in ["files", "dirs", "symlinks", "hardlinks", "special"] {
        if let Some(n) = stats.get(key).and_then(serde_json::Value::as_u64) {
            total = total.saturating_add(n);
            any = true;
        }
    }
    if any {
        total.saturating_mul(2).saturating_add(1024)
    } else {
        UNRECORDED_BUDGET
    }
}

/// Entries a restore may create for a volume whose snapshot records no
/// counts (no backup writes such a snapshot).
pub const UNRECORDED_BUDGET: u64 = 10_000_000;

mod batch;
mod write;
use batch::*;
#[cfg(test)]
pub(crate) use batch::{BATCH_BYTES, BATCH_FILES, SMALL_FILE};
use write::*;

/// Chunks fetched ahead per file, and queued for its writer.
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
    /// Test-only fault injection points.
    #[cfg(test)]
    pub hooks: RestoreHooks,
}

#[cfg(test)]
type PathHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// Fault injection for tests.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct RestoreHooks {
    /// Runs on a file's writing thread once its content is written, just
    /// before its metadata is set.
    pub before_meta: Option<PathHook>,
}

#[cfg(test)]
impl std::fmt::Debug for RestoreHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestoreHooks")
    }
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

/// Work a directory waits for before its metadata is set. Shared: one
/// batch of small files can hold files of many directories.
type Task = SharedFuture<BoxFuture<'static, Result<(), Stopped>>>;

/// The task of a spawned `handle`; a panic in it stops the run.
fn task_of(sh: &Arc<Shared>, handle: JoinHandle<Result<(), Stopped>>) -> Task {
    let sh = sh.clone();
    async move {
        match handle.await {
            Ok(r) => r,
            Err(e) => Err(sh.fail(join_err(e))),
        }
    }
    .boxed()
    .shared()
}

struct Shared {
    repo: Repository,
    /// The target directory, opened: hard-link targets are found beneath it.
    root: Arc<File>,
    rt: Handle,
    tracker: TaskTracker,
    files: Arc<Semaphore>,
    stop: CancellationToken,
    failures: Failures,
    stats: Stats,
    /// Owners are restored only by root.
    is_root: bool,
    /// Whether `/proc/self/fd` works: the extended attributes and the mode
    /// of an entry that is not opened are set through it.
    proc_fd: bool,
    #[cfg(test)]
    hooks: RestoreHooks,
    /// The target's path, for the hooks.
    #[cfg(test)]
    root_path: PathBuf,
}

impl Shared {
    fn fail(&self, e: impl Into<VolumeError>) -> Stopped {
        self.failures.fail(e.into(), &self.stop)
    }

    fn item_failed(&self, path: &str, message: impl std::fmt::Display) {
        self.failures.item_failed(path, message);
    }

    /// Sets the metadata of an entry open as `file` (a file written or
    /// verified, a directory); a failure (other than of an xattr) fails
    /// the item.
    fn apply_meta(&self, file: &File, node: &Node, shown: &str) {
        use xattr::FileExt;
        let mut failed = 0;
        for (name, value) in &node.xattrs {
            if let Err(e) = file.set_xattr(OsStr::from_bytes(name), value) {
                xattr_failed(shown, name, &e);
                failed += 1;
            }
        }
        inc(&self.stats.xattr_failures, failed);
        let result = (|| -> io::Result<()> {
            if self.is_root {
                let (uid, gid) = owner(node);
                rustix::fs::fchown(file, uid, gid)?;
            }
            rustix::fs::fchmod(file, Mode::from_raw_mode(node.mode & 0o7777))?;
            rustix::fs::futimens(file, &mtime_only(node.mtime_ns))?;
            Ok(())
        })();
        if let Err(e) = result {
            self.item_failed(shown, format!("metadata: {e}"));
        }
    }

    /// The same for entry `node` of `dir` that is not opened: a symlink
    /// or a special file (opening a FIFO can block, a device can act).
    fn apply_meta_at(&self, dir: &File, node: &Node, shown: &str) {
        let mut failed = 0;
        if !node.xattrs.is_empty() {
            // `xattr::set` is `lsetxattr`: the entry itself, not followed.
            let path = self.proc_fd.then(|| proc_path(dir, &node.name));
            for (name, value) in &node.xattrs {
                let set = match &path {
                    Some(p) => xattr::set(p, OsStr::from_bytes(name), value),
                    None => Err(io::Error::other("/proc/self/fd is not available")),
                };
                if let Err(e) = set {
                    xattr_failed(shown, name, &e);
                    failed += 1;
                }
            }
        }
        inc(&self.stats.xattr_failures, failed);
        if let Err(e) = self.set_meta_at(dir, node) {
            self.item_failed(shown, format!("metadata: {e}"));
        }
    }

    /// Owner (as root), mode (not on symlinks), then mtime: `chown` clears
    /// setuid bits and any change bumps the times, so this order.
    fn set_meta_at(&self, dir: &File, node: &Node) -> io::Result<()> {
        let name = node.name.as_slice();
        if self.is_root {
            let (uid, gid) = owner(node);
            rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        if node.kind != NodeType::Symlink {
            // No chmod call takes a name without following it: chmod the
            // inode an O_PATH descriptor holds, checked to be the special
            // file made (O_PATH opens a symlink itself), through /proc.
            let fd = open_beneath(dir.as_fd(), name, OFlags::PATH, Mode::empty())?;
            let st = rustix::fs::fstat(&fd)?;
            if NodeType::of_mode(stat::mode(&st)) != node.kind {
                return Err(io::Error::other(
                    "replaced by another type of entry while restoring",
                ));
            }
            if !self.proc_fd {
                return Err(io::Error::other(
                    "cannot set the mode: /proc/self/fd is not available",
                ));
            }
            rustix::fs::chmod(
                format!("/proc/self/fd/{}", fd.as_raw_fd()),
                Mode::from_raw_mode(node.mode & 0o7777),
            )?;
        }
        rustix::fs::utimensat(
            dir,
            name,
            &mtime_only(node.mtime_ns),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// The path the test hooks are given.
    #[cfg(test)]
    fn hook_path(&self, rel: &[u8]) -> PathBuf {
        self.root_path.join(OsStr::from_bytes(rel))
    }
}

fn xattr_failed(shown: &str, name: &[u8], e: &io::Error) {
    warn!(path = shown, attribute = %display_path(name), error = %e, "cannot restore an extended attribute");
}

/// The node's owner for `chown`; -1 (which a tree may hold) leaves it.
fn owner(node: &Node) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    (
        (node.uid != u32::MAX).then(|| rustix::fs::Uid::from_raw(node.uid)),
        (node.gid != u32::MAX).then(|| rustix::fs::Gid::from_raw(node.gid)),
    )
}

/// The modification time to set; the access time is left.
fn mtime_only(mtime_ns: i64) -> rustix::fs::Timestamps {
    use rustix::fs::{Timespec, Timestamps, UTIME_OMIT};
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
        },
    }
}

/// Removes a non-directory in the way at `name` of `dir`; a symlink is
/// removed, not followed.
fn remove_at(dir: &File, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a directory is in the way",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Makes entry `name` of `dir` with `make`, after removing what is in the
/// way if the name is taken (never a directory).
fn make_at(dir: &File, name: &[u8], make: impl Fn() -> rustix::io::Result<()>) -> io::Result<()> {
    match make() {
        Err(Errno::EXIST) => {
            remove_at(dir, name)?;
            Ok(make()?)
        }
        r => Ok(r?),
    }
}

/// Creates directory `name` of `parent` and opens it; an existing
/// directory stays (its entries are restored over), anything else in the
/// way is removed.
fn make_dir(parent: &File, name: &[u8]) -> io::Result<File> {
    // Private until its mode is set, when everything in it is done.
    let mkdir = || rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700));
    match mkdir() {
        Ok(()) => open_dir(parent.as_fd(), name),
        Err(Errno::EXIST) => match open_dir(parent.as_fd(), name) {
            Err(e) if is_errno(&e, Errno::NOTDIR) || is_errno(&e, Errno::LOOP) => {
                remove_at(parent, name)?;
                mkdir()?;
                open_dir(parent.as_fd(), name)
            }
            r => r,
        },
        Err(e) => Err(e.into()),
    }
}

/// Creates file `name` of `dir`, empty, for writing.
fn create_file(dir: &File, name: &[u8]) -> io::Result<File> {
    open_beneath(
        dir.as_fd(),
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
        Mode::from_raw_mode(0o600),
    )
    .map(File::from)
}

/// The file `node` names in `dir`, to fill: created exclusively; if the
/// name is taken, kept for checking when it may already be right
/// ([`reusable`]), else removed and created again.
fn make_target(dir: &File, node: &Node) -> io::Result<Target> {
    match create_file(dir, &node.name) {
        Ok(f) => Ok(Target::Created(f)),
        Err(e) if is_errno(&e, Errno::EXIST) => {
            if reusable(dir, node) {
                Ok(Target::Existing)
            } else {
                remove_at(dir, &node.name)?;
                create_file(dir, &node.name).map(Target::Created)
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether the file already at `node`'s name in `dir` may be kept if its
/// content checks out: a regular file of the right size with this one
/// name (one shared with another name, outside the tree say, is not
/// written to in place).
fn reusable(dir: &File, node: &Node) -> bool {
    !node.content.is_empty()
        && rustix::fs::statat(dir, node.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW).is_ok_and(
            |st| {
                NodeType::of_mode(stat::mode(&st)) == NodeType::File
                    && stat::nlink(&st) == 1
                    && stat::size(&st) == node.size
            },
        )
}

/// Whether a chunk is all zeros (memcmp against a zero page).
fn is_zero(data: &[u8]) -> bool {
    static ZEROS: [u8; 4096] = [0; 4096];
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// Links `name` of `dir` to `rel`, a regular file beneath the target
/// reached through real directories only (not symlinks): the target of a
/// hard link, which must not lead out of the volume.
fn hard_link(root: &File, rel: &[u8], dir: &File, name: &[u8]) -> io::Result<()> {
    let (parent_rel, last) = match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&rel[..0], rel),
    };
    let not_a = |what: &str| io::Error::other(format!("{} is not a {what}", display_path(rel)));
    let held;
    let parent = if parent_rel.is_empty() {
        root.as_fd()
    } else {
        held = open_beneath(
            root.as_fd(),
            parent_rel,
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| {
            if is_errno(&e, Errno::NOTDIR) || is_errno(&e, Errno::LOOP) {
                not_a("path of directories")
            } else {
                e
            }
        })?;
        held.as_fd()
    };
    let st = rustix::fs::statat(parent, last, AtFlags::SYMLINK_NOFOLLOW)?;
    if NodeType::of_mode(stat::mode(&st)) != NodeType::File {
        return Err(not_a("regular file"));
    }
    // No AT_SYMLINK_FOLLOW: were `last` swapped for a symlink meanwhile,
    // the link would be to that symlink, inside the target.
    make_at(dir, name, || {
        rustix::fs::linkat(parent, last, dir, name, AtFlags::empty())
    })
}

struct Frame {
    /// Tells frames apart (a batch registers once with each).
    id: u64,
    /// The directory, opened: its entries are made relative to it, and its
    /// metadata is set on it.
    dir: Arc<File>,
    rel: Vec<u8>,
    node: Node,
    nodes: std::vec::IntoIter<Node>,
    pending: Vec<Task>,
}

struct Walker {
    sh: Arc<Shared>,
    stack: Vec<Frame>,
    progress: crate::progress::Ticker,
    /// Entries visited so far, and how many the snapshot allows.
    visited: u64,
    budget: u64,
    volume: String,
    /// Small files created and waiting to be filled, in walk order.
    batch: Batcher<SmallFile>,
    /// The open batch's task, for the directories of its files to wait
    /// on, and where to send it once spawned (dropped unsent if the walk
    /// stops: the waiting directories stop too).
    batch_task: Option<(oneshot::Sender<Task>, Task)>,
    /// The last frame registered with the open batch.
    batch_frame: Option<u64>,
    frames: u64,
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
                Some(node) => {
                    self.visited += 1;
                    if self.visited > self.budget {
                        self.sh.fail(VolumeError::TreeBudget {
                            volume: self.volume.clone(),
                            reason: format!(
                                "its trees hold more than {} entries, more than twice what the snapshot records",
                                self.budget
                            ),
                        });
                        return None;
                    }
                    self.visit(node)
                }
                None => {
                    let frame = self.stack.pop().expect("non-empty");
                    let handle = self
                        .sh
                        .tracker
                        .spawn_on(finalize(self.sh.clone(), frame), &self.sh.rt);
                    let task = task_of(&self.sh, handle);
                    match self.stack.last_mut() {
                        Some(parent) => parent.pending.push(task),
                        None => {
                            // The last batch: the root waits for it too.
                            self.flush();
                            return Some(task);
                        }
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
        let dir = top.dir.clone();
        let name = node.name.as_slice();
        match node.kind {
            NodeType::Dir => self.dir(&dir, rel, shown, node),
            NodeType::File => self.file(dir, rel, shown, node),
            NodeType::Hardlink => {
                let result = match node.link.as_deref().filter(|l| is_safe_rel(l)) {
                    None => Err(io::Error::other("the link target is missing or unsafe")),
                    Some(link) => hard_link(&sh.root, link, &dir, name),
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
                match make_at(&dir, name, || {
                    rustix::fs::symlinkat(target.as_slice(), &*dir, name)
                }) {
                    Ok(()) => {
                        inc(&sh.stats.symlinks, 1);
                        sh.apply_meta_at(&dir, &node, &shown);
                    }
                    Err(e) => sh.item_failed(&shown, format!("symlink: {e}")),
                }
            }
            NodeType::Fifo => self.special(&dir, shown, node, rustix::fs::FileType::Fifo),
            NodeType::Chardev | NodeType::Blockdev if sh.is_root => {
                let t = if node.kind == NodeType::Chardev {
                    rustix::fs::FileType::CharacterDevice
                } else {
                    rustix::fs::FileType::BlockDevice
                };
                self.special(&dir, shown, node, t)
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

    fn dir(&mut self, parent: &File, rel: Vec<u8>, shown: String, node: Node) {
        let sh = self.sh.clone();
        if self.stack.len() >= MAX_DEPTH {
            sh.fail(VolumeError::TreeBudget {
                volume: self.volume.clone(),
                reason: format!("{shown} nests deeper than {MAX_DEPTH} directories"),
            });
            return;
        }
        let dir = match make_dir(parent, &node.name) {
            Ok(d) => d,
            Err(e) => return sh.item_failed(&shown, format!("directory: {e}")),
        };
        inc(&sh.stats.dirs, 1);
        let nodes = match node.subtree {
            None => Vec::new(),
            Some(id) => match load_tree_blocking(&sh.rt, &sh.repo, &id) {
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
        self.frames += 1;
        self.stack.push(Frame {
            id: self.frames,
            dir: Arc::new(dir),
            rel,
            node,
            nodes: nodes.into_iter(),
            pending: Vec::new(),
        });
    }

    fn file(&mut self, dir: Arc<File>, rel: Vec<u8>, shown: String, node: Node) {
        // A small file no hard link names is created by its batch, off this
        // thread; one that may be a link's target must exist before the
        // walk reaches the link, so it is created here.
        if node.size <= SMALL_FILE && node.nlink <= 1 {
            let size = node.size;
            let f = SmallFile {
                dir,
                rel,
                shown,
                node,
            };
            return self.small_file(f, size);
        }
        let sh = self.sh.clone();
        let target = match make_target(&dir, &node) {
            Ok(t) => t,
            Err(e) => return sh.item_failed(&shown, format!("file: {e}")),
        };
        inc(&sh.stats.files, 1);
        let permit = sh
            .rt
            .block_on(sh.files.clone().acquire_owned())
            .expect("the file semaphore is never closed");
        let handle = sh.tracker.spawn_on(
            write_task(sh.clone(), dir, rel, shown, node, target, permit),
            &sh.rt,
        );
        let task = task_of(&sh, handle);
        self.stack
            .last_mut()
            .expect("visiting inside a frame")
            .pending
            .push(task);
    }

    /// Adds a created small file to the open batch (sending the batch
    /// first if it would not fit, and after if it is full); its directory
    /// waits for the batch.
    fn small_file(&mut self, f: SmallFile, size: u64) {
        if !self.batch.fits(size) {
            self.flush();
        }
        let (_, task) = self.batch_task.get_or_insert_with(|| {
            let (tx, rx) = oneshot::channel::<Task>();
            let task = async move {
                match rx.await {
                    Ok(task) => task.await,
                    Err(_) => Err(Stopped),
                }
            }
            .boxed()
            .shared();
            (tx, task)
        });
        let top = self.stack.last_mut().expect("visiting inside a frame");
        if self.batch_frame != Some(top.id) {
            top.pending.push(task.clone());
            self.batch_frame = Some(top.id);
        }
        self.batch.push(f, size);
        if self.batch.is_full() {
            self.flush();
        }
    }

    /// Spawns the open batch, if any, once a permit is free.
    fn flush(&mut self) {
        self.batch_frame = None;
        let Some((tx, _)) = self.batch_task.take() else {
            return;
        };
        let files = self.batch.take();
        let sh = self.sh.clone();
        let permit = sh
            .rt
            .block_on(sh.files.clone().acquire_owned())
            .expect("the file semaphore is never closed");
        let handle = sh
            .tracker
            .spawn_on(batch_task(sh.clone(), files, permit), &sh.rt);
        let _ = tx.send(task_of(&sh, handle));
    }

    fn special(&mut self, dir: &File, shown: String, node: Node, t: rustix::fs::FileType) {
        let sh = &self.sh;
        let name = node.name.as_slice();
        let made = make_at(dir, name, || {
            rustix::fs::mknodat(dir, name, t, Mode::from_raw_mode(0o600), node.rdev)
        });
        match made {
            Ok(()) => {
                inc(&sh.stats.special, 1);
                sh.apply_meta_at(dir, &node, &shown);
            }
            Err(e) => sh.item_failed(&shown, format!("{}: {e}", node.kind.as_str())),
        }
    }
}

/// Waits for everything in a directory, then sets its metadata.
async fn finalize(sh: Arc<Shared>, frame: Frame) -> Result<(), Stopped> {
    for t in frame.pending {
        t.await?;
    }
    if sh.stop.is_cancelled() {
        return Err(Stopped);
    }
    let (dir, node) = (frame.dir, frame.node);
    let shown = if frame.rel.is_empty() {
        ".".to_string()
    } else {
        display_path(&frame.rel)
    };
    // A few calls on a descriptor held: quicker here than the hand-off to
    // a blocking thread and back, which thousands of directories add up.
    sh.apply_meta(&dir, &node, &shown);
    Ok(())
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
    // The one path resolved: the target's, which the operator chose.
    let root_dir = match rustix::fs::open(
        &opts.path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Arc::new(File::from(fd)),
        Err(Errno::NOTDIR) => return Err(VolumeError::NotADirectory { path: shown_root }),
        Err(e) => return Err(io_err(e.into())),
    };
    super::raise_fd_limit();
    let proc_fd = proc_works(&root_dir);
    if !proc_fd {
        warn!(
            "/proc/self/fd is not available: modes of FIFOs and devices, and extended attributes of symlinks and special files, are not restored"
        );
    }
    let is_root = rustix::process::geteuid().is_root();
    if !is_root {
        debug!("not running as root: owners are not restored, device nodes are skipped");
    }
    let channels = opts.channels.max(1);
    let sh = Arc::new(Shared {
        repo: repo.clone(),
        root: root_dir.clone(),
        rt: Handle::current(),
        tracker: TaskTracker::new(),
        files: Arc::new(Semaphore::new(channels)),
        stop: cancel.child_token(),
        failures: Failures::new("stopping the volume restore", "cannot restore"),
        stats: Stats::default(),
        is_root,
        proc_fd,
        #[cfg(test)]
        hooks: opts.hooks.clone(),
        #[cfg(test)]
        root_path: opts.path.clone(),
    });
    inc(&sh.stats.dirs, 1);
    let walker = Walker {
        sh: sh.clone(),
        stack: vec![Frame {
            id: 0,
            dir: root_dir,
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
        visited: 0,
        budget: entry_budget(&entry.stats),
        volume: opts.name.clone(),
        batch: Batcher::new(BATCH_FILES, BATCH_BYTES),
        batch_task: None,
        batch_frame: None,
        frames: 0,
    };
    let root_task = tokio::task::spawn_blocking(move || walker.run())
        .await
        .map_err(join_err)?;
    let done = match root_task {
        Some(t) => t.await.is_ok(),
        None => false,
    };
    sh.tracker.close();
    sh.tracker.wait().await;
    let fatal = sh.failures.take_fatal();
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
    report.errors = sh.failures.take_errors();
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
