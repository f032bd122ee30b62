//! `volume-backup`: a directory into a tree of nodes.
//!
//! One blocking thread walks the directory depth-first in name order. A
//! regular file that the parent snapshot already has (same size, mtime,
//! ctime and inode) reuses the parent's chunk list and extended
//! attributes; any other file is read (at most `channels` or the number of
//! cores at once, whichever is more).
//! A file smaller than the largest chunk is read, cut with FastCDC, sealed
//! and added on one blocking thread (`Writer::add_blocking`): per file,
//! thread hand-offs would cost more than the work. A larger one goes to an
//! async task whose blocking reader cuts it and hands the chunks through a
//! bounded channel to `Writer::add`, up to one chunk per core sealed at
//! once, added in order. When a directory's last entry has been
//! visited, a finalize task waits for its files and subdirectories, adds
//! its tree and hands the directory's node to its parent's listing; a
//! directory whose entries all equal the parent snapshot's listing keeps
//! that listing's tree, without a task.
//!
//! The parent snapshot's listings are loaded ahead of the walk (see
//! [`ahead`]): waiting for each one on the walking thread was over half
//! of an unchanged re-backup.
//!
//! Every entry is reached by its name relative to its directory's
//! descriptor, opened without following symlinks, and checked (device and
//! inode) against what the listing saw: a directory or file that a tenant
//! replaces while the backup runs, by a symlink out of the volume say, is
//! reported and skipped, never followed.
//!
//! Resume: files read completely are saved in checkpoints as the run goes
//! (see [`super::checkpoint`]); a run of the same plan and volume after an
//! unfinished one takes those files unread, like files of the parent.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
#[cfg(test)]
use std::os::unix::ffi::OsStrExt;
use std::os::unix::ffi::OsStringExt;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::beneath::{is_errno, open_beneath, open_dir, proc_path, proc_works};
use super::checkpoint::{CHECKPOINT_EVERY, POLL, Recorder, Resume};
use super::tree::{Node, NodeType, ROOT_NAME, Tree, display_path, join_rel, stat};
use super::{
    Chunker, Failures, MAX_LISTED, Stopped, VolumeError, get, inc, is_item_error, join_err,
    load_tree, load_tree_blocking,
};
use crate::repo::{
    BlobId, BlobKind, MoverResult, Repository, SnapshotId, SnapshotManifest, VolumeEntry, Writer,
};
use crate::summary::Report;

mod ahead;
mod parent;
mod read;
use ahead::Ahead;
use parent::*;
use read::*;

/// Chunks queued between a large file's reader and its `Writer::add` loop.
const CHUNKS_QUEUED: usize = 2;
/// Largest blob plaintext (docs/format.md §5); a directory whose listing
/// is larger is stored as a chain of trees (§12).
const MAX_TREE_BYTES: usize = 64 << 20;

/// What to back up and how the snapshot is labelled.
#[derive(Clone)]
pub struct BackupOptions {
    /// The directory to read.
    pub path: PathBuf,
    /// The volume's key in the manifest's `volumes`.
    pub name: String,
    /// The backup plan; the parent is the plan's newest backup of the volume.
    pub plan: String,
    /// Tags recorded in the snapshot.
    pub tags: Vec<String>,
    /// The run id (a Job's retry resumes the same run).
    pub run_id: String,
    /// Upload streams, and files read at once (never fewer than cores).
    pub channels: usize,
    /// Save a mover result for run `run_id` instead of a snapshot: the
    /// orchestrating backup links the tree in its own manifest.
    pub mover: bool,
    /// Bytes of files read between two checkpoints (`STOW_RESUME_BUFFER`).
    pub resume_buffer: u64,
    /// Test-only fault injection points.
    #[cfg(test)]
    pub hooks: Hooks,
}

#[cfg(test)]
type PathHook = Arc<dyn Fn(&Path) + Send + Sync>;
#[cfg(test)]
type OpenHook = Arc<dyn Fn(&Path) -> Option<io::Error> + Send + Sync>;

/// Fault injection for tests.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct Hooks {
    /// Runs on the reading thread after a file's first chunk was handed on.
    pub after_first_chunk: Option<PathHook>,
    /// An error to return instead of opening a file or listing a directory.
    pub open_error: Option<OpenHook>,
    /// Runs after an entry was listed, just before it is opened (a
    /// directory on the walking thread, a file on its reading thread).
    pub before_open: Option<PathHook>,
    /// A smaller limit for one tree blob, so a test splits a listing
    /// without a quarter of a million files.
    pub max_tree_bytes: Option<usize>,
}

#[derive(Default)]
struct Stats {
    files: AtomicU64,
    dirs: AtomicU64,
    symlinks: AtomicU64,
    hardlinks: AtomicU64,
    special: AtomicU64,
    unreadable: AtomicU64,
    changed: AtomicU64,
    vanished: AtomicU64,
    /// Entries found replaced between listing and opening.
    replaced: AtomicU64,
    bytes_read: AtomicU64,
    bytes_reused: AtomicU64,
    /// Files (and their bytes) taken from checkpoints of an unfinished run.
    resumed: AtomicU64,
    bytes_resumed: AtomicU64,
}

type NodeTask = JoinHandle<Result<Option<Node>, Stopped>>;

struct Shared {
    repo: Repository,
    writer: Writer,
    chunker: Chunker,
    rt: Handle,
    tracker: TaskTracker,
    /// One permit per file being read.
    files: Arc<Semaphore>,
    /// KiB of parent listings loaded ahead of the walk ([`ahead`]).
    ahead: Arc<Semaphore>,
    /// Chunks of one large file sealed at once.
    seals_per_file: usize,
    /// Cancelled on SIGTERM (parent token) or on the first fatal error.
    stop: CancellationToken,
    failures: Failures,
    stats: Stats,
    changed: Mutex<Vec<String>>,
    /// Compare `dev` too when deciding that a file is unchanged: only when
    /// the volume root is on the same device as in the parent snapshot (a
    /// fresh clone of a CSI snapshot mounts with a new device number).
    dev_strict: bool,
    /// Files earlier unfinished runs stored.
    resume: Resume,
    /// Files this run has read, for the next checkpoint.
    recorder: Recorder,
    /// Whether `/proc/self/fd` works, the only way to read the extended
    /// attributes of an entry that is not opened without naming a path.
    proc_fd: bool,
    #[cfg(test)]
    hooks: Hooks,
    /// The volume's path, for the hooks.
    #[cfg(test)]
    root: PathBuf,
}

impl Shared {
    fn fail(&self, e: impl Into<VolumeError>) -> Stopped {
        self.failures.fail(e.into(), &self.stop)
    }

    fn item_failed(&self, path: &str, message: impl std::fmt::Display) {
        self.failures.item_failed(path, message);
    }

    fn unreadable(&self, path: &str, e: &io::Error) {
        inc(&self.stats.unreadable, 1);
        self.item_failed(path, e);
    }

    fn vanished(&self, path: &str) {
        debug!(path, "vanished while the backup ran");
        inc(&self.stats.vanished, 1);
    }

    /// Something else is at the entry's name than the listing saw.
    fn replaced(&self, path: &str, what: &str) {
        inc(&self.stats.replaced, 1);
        self.item_failed(
            path,
            format!("replaced by {what} since it was listed; not read, and not followed"),
        );
    }

    /// The path the test hooks are given.
    #[cfg(test)]
    fn hook_path(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(std::ffi::OsStr::from_bytes(rel))
        }
    }
}

/// What is at an entry's name now, if it is not what the listing saw:
/// another type, or another file (device and inode).
fn replaced_by(now: &rustix::fs::Stat, listed: &Node) -> Option<String> {
    let kind = NodeType::of_mode(stat::mode(now));
    if kind != listed.kind {
        Some(format!("a {}", kind.as_str()))
    } else if stat::identity(now) != (listed.dev, listed.inode) {
        let (dev, ino) = stat::identity(now);
        Some(format!(
            "another {} (device {dev}, inode {ino}; listed: device {}, inode {})",
            kind.as_str(),
            listed.dev,
            listed.inode
        ))
    } else {
        None
    }
}

/// One directory listing entry, from `getdents` and `fstatat`.
struct Entry {
    name: Vec<u8>,
    meta: io::Result<rustix::fs::Stat>,
}

/// The entries of the open directory `dir`, each `lstat`ed relative to it.
fn list_dir(dir: &File) -> io::Result<Vec<Entry>> {
    use rustix::fs::{AtFlags, RawDir, statat};
    let mut out = Vec::new();
    // Room for many entries per call; one entry needs at most ~280 bytes.
    let mut buf = Vec::with_capacity(32 << 10);
    let mut entries = RawDir::new(dir.as_fd(), buf.spare_capacity_mut());
    while let Some(de) = entries.next() {
        let de = de?;
        let name = de.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push(Entry {
            meta: statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from),
            name: name.to_vec(),
        });
    }
    out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Extended attributes of an open file or directory, best effort.
fn xattrs_of(file: &File, shown: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    use xattr::FileExt;
    collect_xattrs(file.list_xattr(), |n| file.get_xattr(n), shown)
}

/// Extended attributes of entry `name` of `dir`, without opening it (a
/// symlink, a device, a file not read), best effort; none without
/// `/proc`, which is warned about once.
fn xattrs_at(sh: &Shared, dir: &File, name: &[u8], shown: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    if !sh.proc_fd {
        return BTreeMap::new();
    }
    // `xattr::list` and `xattr::get` are the `l*` calls: `name` is not followed.
    let path = proc_path(dir, name);
    collect_xattrs(xattr::list(&path), |n| xattr::get(&path, n), shown)
}

/// Reads the attributes listed, best effort: a file system without them,
/// or an attribute that vanished, just yields fewer.
fn collect_xattrs(
    names: io::Result<xattr::XAttrs>,
    get: impl Fn(&std::ffi::OsStr) -> io::Result<Option<Vec<u8>>>,
    shown: &str,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let names = match names {
        Ok(n) => n,
        Err(e) => {
            debug!(path = shown, error = %e, "cannot list extended attributes");
            return out;
        }
    };
    for name in names {
        match get(&name) {
            Ok(Some(v)) => {
                out.insert(name.into_vec(), v);
            }
            Ok(None) => {}
            Err(e) => {
                warn!(path = shown, attribute = ?name, error = %e, "cannot read an extended attribute")
            }
        }
    }
    out
}

// Most entries are `Ready`; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Pending {
    Ready(Node),
    Task(NodeTask),
    /// Small files read one after another by one task: the nodes of those
    /// still there. Not in their place among the others: `finalize` sorts.
    Small(JoinHandle<Result<Vec<Node>, Stopped>>),
}

/// Small files read by one task, at most: a task per file was a tenth of
/// a first backup of a tree of small files in thread hand-offs, and a
/// batch still leaves the other cores work while one reads.
const SMALL_BATCH: usize = 32;
/// Bytes of small files read by one task, at most.
const SMALL_BATCH_BYTES: u64 = 1 << 20;

struct Frame {
    rel: Vec<u8>,
    /// The directory, opened: its entries are reached through it only.
    dir: Arc<File>,
    node: Node,
    entries: std::vec::IntoIter<Entry>,
    pending: Vec<Pending>,
    /// Small files listed here and not yet handed to a task, and their
    /// size.
    small: Vec<Small>,
    small_bytes: u64,
    /// The parent snapshot's listing of this directory, and its tree.
    parent: Option<(BlobId, Tree)>,
    /// The parent's listings of its subdirectories, loading.
    ahead: Option<Ahead>,
}

struct Walker {
    sh: Arc<Shared>,
    stack: Vec<Frame>,
    /// (dev, inode) → relative path of the first occurrence, for regular
    /// files with more than one link.
    hardlinks: HashMap<(u64, u64), Vec<u8>>,
    progress: crate::progress::Ticker,
}

impl Walker {
    /// Walks until the root is visited or the run stops; returns the
    /// root's node, or its finalize task.
    fn run(mut self) -> Option<Pending> {
        loop {
            if self.sh.stop.is_cancelled() {
                return None;
            }
            let s = &self.sh.stats;
            self.progress.tick(
                || get(&s.bytes_read) + get(&s.bytes_reused) + get(&s.bytes_resumed),
                || get(&s.files),
            );
            let top = self
                .stack
                .last_mut()
                .expect("the root frame is popped last");
            match top.entries.next() {
                Some(entry) => self.visit(entry),
                None => {
                    self.read_small();
                    // The directory's descriptor closes here, not when its
                    // files are stored: only the open path holds one.
                    let Frame {
                        rel,
                        mut node,
                        pending,
                        parent,
                        ..
                    } = self.stack.pop().expect("non-empty");
                    let done =
                        match parent {
                            Some((was, listing)) if same_listing(&pending, &listing) => {
                                node.subtree = Some(was);
                                Pending::Ready(node)
                            }
                            _ => Pending::Task(self.sh.tracker.spawn_on(
                                finalize(self.sh.clone(), rel, node, pending),
                                &self.sh.rt,
                            )),
                        };
                    match self.stack.last_mut() {
                        Some(parent) => parent.pending.push(done),
                        None => return Some(done),
                    }
                }
            }
        }
    }

    fn push(&mut self, p: Pending) {
        self.stack
            .last_mut()
            .expect("visiting inside a frame")
            .pending
            .push(p);
    }

    fn visit(&mut self, entry: Entry) {
        let sh = self.sh.clone();
        let top = self.stack.last().expect("visiting inside a frame");
        let rel = join_rel(&top.rel, &entry.name);
        let dir = top.dir.clone();
        let shown = display_path(&rel);
        let prev = top
            .parent
            .as_ref()
            .and_then(|(_, t)| t.find(&entry.name))
            .cloned();
        let meta = match entry.meta {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return sh.vanished(&shown),
            Err(e) => return sh.unreadable(&shown, &e),
        };
        let mut node = Node::from_stat(entry.name, &meta);
        if node.kind == NodeType::Dir {
            // The small files gathered so far are read while the walk is
            // in there.
            self.read_small();
            // Read from its descriptor once it is open.
            return self.enter(&dir, rel, shown, node, prev);
        }
        if node.kind == NodeType::File {
            // Its extended attributes only if it is read (see `file`).
            return self.file(dir, rel, shown, node, prev);
        }
        if node.kind == NodeType::Symlink
            && let Some(p) =
                prev.filter(|p| p.kind == NodeType::Symlink && same_inode(p, &node, sh.dev_strict))
        {
            // A symlink's target cannot change in place, and a change of
            // its attributes changes the ctime: the parent's are current.
            inc(&sh.stats.symlinks, 1);
            node.target = p.target;
            node.xattrs = p.xattrs;
            return self.push(Pending::Ready(node));
        }
        node.xattrs = xattrs_at(&sh, &dir, &node.name, &shown);
        match node.kind {
            NodeType::Symlink => match rustix::fs::readlinkat(&*dir, &node.name, Vec::new()) {
                Ok(target) => {
                    inc(&sh.stats.symlinks, 1);
                    node.target = Some(target.into_bytes());
                    self.push(Pending::Ready(node));
                }
                Err(rustix::io::Errno::NOENT) => sh.vanished(&shown),
                // Replaced since the listing: its type was read then.
                Err(rustix::io::Errno::INVAL) => sh.replaced(&shown, "something else"),
                Err(e) => sh.unreadable(&shown, &e.into()),
            },
            kind => {
                warn!(path = %shown, kind = kind.as_str(), "special file: recorded without content");
                inc(&sh.stats.special, 1);
                self.push(Pending::Ready(node));
            }
        }
    }

    /// Opens a listed directory beneath its parent and, if it is still the
    /// directory listed, lists it and walks into it.
    fn enter(
        &mut self,
        parent: &File,
        rel: Vec<u8>,
        shown: String,
        mut node: Node,
        prev: Option<Node>,
    ) {
        let sh = self.sh.clone();
        #[cfg(test)]
        let injected = {
            let path = sh.hook_path(&rel);
            if let Some(h) = &sh.hooks.before_open {
                h(&path);
            }
            sh.hooks.open_error.as_ref().and_then(|h| h(&path))
        };
        #[cfg(not(test))]
        let injected = None;
        let opened = match injected {
            Some(e) => Err(e),
            None => open_dir(parent.as_fd(), &node.name),
        };
        let dir = match opened {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return sh.vanished(&shown),
            // O_DIRECTORY | O_NOFOLLOW on a symlink or a file.
            Err(e)
                if is_errno(&e, rustix::io::Errno::NOTDIR)
                    || is_errno(&e, rustix::io::Errno::LOOP) =>
            {
                return sh.replaced(&shown, "a symlink or a file");
            }
            Err(e) => {
                // Recorded without a listing: restore recreates it empty.
                sh.unreadable(&shown, &e);
                inc(&sh.stats.dirs, 1);
                return self.push(Pending::Ready(node));
            }
        };
        match rustix::fs::fstat(&dir) {
            Ok(now) => {
                if let Some(what) = replaced_by(&now, &node) {
                    return sh.replaced(&shown, &what);
                }
            }
            Err(e) => return sh.unreadable(&shown, &e.into()),
        }
        node.xattrs = xattrs_of(&dir, &shown);
        let entries = match list_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                sh.unreadable(&shown, &e);
                inc(&sh.stats.dirs, 1);
                return self.push(Pending::Ready(node));
            }
        };
        inc(&sh.stats.dirs, 1);
        let parent = prev
            .filter(|p| p.kind == NodeType::Dir)
            .and_then(|p| p.subtree)
            .and_then(|id| {
                let loaded = (self.stack.last_mut())
                    .and_then(|f| f.ahead.as_mut())
                    .and_then(|a| a.take(&sh, &node.name))
                    .unwrap_or_else(|| {
                        let tree = load_tree_blocking(&sh.rt, &sh.repo, &id)?;
                        let ahead = Ahead::new(&sh, &tree);
                        Ok((tree, ahead))
                    });
                match loaded {
                    Ok((t, ahead)) => Some(((id, t), ahead)),
                    Err(e) => {
                        warn!(path = %shown, error = %e, "cannot read the parent snapshot's listing; reading this directory in full");
                        None
                    }
                }
            });
        let (parent, ahead) = parent.unzip();
        self.stack.push(Frame {
            rel,
            dir: Arc::new(dir),
            node,
            entries: entries.into_iter(),
            pending: Vec::new(),
            small: Vec::new(),
            small_bytes: 0,
            parent,
            ahead,
        });
    }

    fn file(
        &mut self,
        dir: Arc<File>,
        rel: Vec<u8>,
        shown: String,
        mut node: Node,
        prev: Option<Node>,
    ) {
        let sh = self.sh.clone();
        if node.nlink > 1 {
            let key = (node.dev, node.inode);
            if let Some(first) = self.hardlinks.get(&key) {
                node.xattrs = xattrs_at(&sh, &dir, &node.name, &shown);
                node.kind = NodeType::Hardlink;
                node.link = Some(first.clone());
                inc(&sh.stats.hardlinks, 1);
                return self.push(Pending::Ready(node));
            }
            self.hardlinks.insert(key, rel.clone());
        }
        inc(&sh.stats.files, 1);
        // An unchanged file keeps its extended attributes too: changing
        // them changes the ctime, which `unchanged` compares. A listxattr
        // through /proc per file was a fifth of an unchanged re-backup.
        if let Some(p) = prev.filter(|p| self.unchanged(p, &node, sh.dev_strict)) {
            node.content = p.content;
            node.xattrs = p.xattrs;
            inc(&sh.stats.bytes_reused, node.size);
            return self.push(Pending::Ready(node));
        }
        if let Some((p, strict)) = sh.resume.get(&rel)
            && self.unchanged(p, &node, strict)
        {
            node.content = p.content.clone();
            node.xattrs = p.xattrs.clone();
            inc(&sh.stats.resumed, 1);
            inc(&sh.stats.bytes_resumed, node.size);
            return self.push(Pending::Ready(node));
        }
        // Its extended attributes are read through the open file.
        if node.size < sh.chunker.max as u64 {
            let top = self.stack.last_mut().expect("visiting inside a frame");
            top.small_bytes += node.size;
            top.small.push(Small { rel, shown, node });
            if top.small.len() >= SMALL_BATCH || top.small_bytes >= SMALL_BATCH_BYTES {
                self.read_small();
            }
            return;
        }
        let permit = self.file_permit();
        let task = sh
            .tracker
            .spawn_on(read_task(sh.clone(), dir, rel, shown, node, permit), &sh.rt);
        self.push(Pending::Task(task));
    }

    /// One of the files (or batches of small files) read at once; waits
    /// for it here, on the walking thread.
    fn file_permit(&self) -> OwnedSemaphorePermit {
        self.sh
            .rt
            .block_on(self.sh.files.clone().acquire_owned())
            .expect("the file semaphore is never closed")
    }

    /// Starts reading the small files of the current directory gathered
    /// so far, as one task.
    fn read_small(&mut self) {
        let top = self.stack.last_mut().expect("visiting inside a frame");
        if top.small.is_empty() {
            return;
        }
        let files = std::mem::take(&mut top.small);
        top.small_bytes = 0;
        let dir = top.dir.clone();
        let permit = self.file_permit();
        let sh = self.sh.clone();
        let task = (self.sh.tracker)
            .spawn_blocking_on(move || read_small(&sh, &dir, files, permit), &self.sh.rt);
        self.push(Pending::Small(task));
    }

    /// Whether the parent snapshot's (or a checkpoint's) node describes
    /// this file's current content, so it need not be read.
    fn unchanged(&self, p: &Node, now: &Node, dev_strict: bool) -> bool {
        p.kind == NodeType::File
            && same_inode(p, now, dev_strict)
            && p.content.is_empty() == (p.size == 0)
            && p.content.iter().all(|id| self.sh.repo.has_blob(id))
    }
}

/// Whether `p` (from the parent snapshot or a checkpoint) and `now` are
/// the same inode, not changed since: size, mtime, ctime, inode and, when
/// `dev_strict`, device. Any change of content, mode, owner, links or
/// extended attributes changes the ctime.
fn same_inode(p: &Node, now: &Node, dev_strict: bool) -> bool {
    p.size == now.size
        && p.mtime_ns == now.mtime_ns
        && p.ctime_ns == now.ctime_ns
        && p.inode == now.inode
        && (!dev_strict || p.dev == now.dev)
}

/// Whether a directory's entries are exactly the nodes of the parent
/// snapshot's listing (just read whole, so all its parts are stored): the
/// same nodes encode to the same bytes, so the directory keeps that tree
/// without a task to encode, hash and look it up again.
fn same_listing(pending: &[Pending], listing: &Tree) -> bool {
    pending.len() == listing.nodes.len()
        && pending
            .iter()
            .zip(&listing.nodes)
            .all(|(p, n)| matches!(p, Pending::Ready(now) if now == n))
}

/// Waits for a directory's entries, in order, then stores its tree.
async fn finalize(
    sh: Arc<Shared>,
    rel: Vec<u8>,
    mut node: Node,
    pending: Vec<Pending>,
) -> Result<Option<Node>, Stopped> {
    let mut nodes = Vec::with_capacity(pending.len());
    let mut sort = false;
    for p in pending {
        match p {
            Pending::Ready(n) => nodes.push(n),
            Pending::Small(t) => match t.await {
                Ok(Ok(read)) => {
                    sort = true;
                    nodes.extend(read);
                }
                Ok(Err(Stopped)) => return Err(Stopped),
                Err(e) => return Err(sh.fail(join_err(e))),
            },
            Pending::Task(t) => match t.await {
                Ok(Ok(Some(n))) => nodes.push(n),
                Ok(Ok(None)) => {}
                Ok(Err(Stopped)) => return Err(Stopped),
                Err(e) => return Err(sh.fail(join_err(e))),
            },
        }
    }
    if sh.stop.is_cancelled() {
        return Err(Stopped);
    }
    if sort {
        // The listing's names are unique, and all but a few in order.
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let limit = tree_limit(&sh);
    // Written last part first: each part names the one after it.
    let mut next = None;
    for part in Tree::split(nodes, limit).into_iter().rev() {
        let json = Tree { nodes: part, next }.encode();
        if json.len() > limit {
            // One entry alone over the limit: its name and extended
            // attributes are bounded far below it, so this is a bug.
            return Err(sh.fail(VolumeError::Io {
                path: display_path(&rel),
                source: io::Error::other(format!(
                    "a listing part of {} bytes is over the tree limit of {limit}",
                    json.len()
                )),
            }));
        }
        match sh.writer.add(BlobKind::Tree, Bytes::from(json)).await {
            Ok((id, _)) => next = Some(id),
            Err(e) => return Err(sh.fail(e)),
        }
    }
    node.subtree = next;
    Ok(Some(node))
}

fn tree_limit(_sh: &Shared) -> usize {
    #[cfg(test)]
    if let Some(l) = _sh.hooks.max_tree_bytes {
        return l;
    }
    MAX_TREE_BYTES
}

/// Saves checkpoints while the walk runs: at least every resume buffer
/// of files read, and every [`CHECKPOINT_EVERY`] while files come in.
async fn checkpoint_loop(sh: Arc<Shared>, walked: CancellationToken) {
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = walked.cancelled() => return,
            _ = sh.stop.cancelled() => return,
        }
        let due = last.elapsed() >= CHECKPOINT_EVERY;
        match sh.recorder.save_if(&sh.repo, due).await {
            Ok(true) => last = tokio::time::Instant::now(),
            Ok(false) => {}
            // The writer meets the same backend and stops the run.
            Err(e) => warn!(error = %e, "cannot save a checkpoint; trying again later"),
        }
    }
}

/// After the last flush of a run that stops without a snapshot: every file
/// read so far is durable, so all of them go into a checkpoint.
async fn final_checkpoint(sh: &Shared) {
    if let Err(e) = sh.recorder.save_if(&sh.repo, true).await {
        warn!(error = %e, "cannot save the last checkpoint; a retry reads those files again");
    }
}

/// Backs up `opts.path` as volume `opts.name`: trees and chunks through
/// one writer, then the manifest, last. On cancellation it flushes what
/// was written (a retry reuses it) and writes no manifest.
pub async fn backup(
    repo: &Repository,
    opts: &BackupOptions,
    cancel: &CancellationToken,
) -> Result<Report, VolumeError> {
    let started = Instant::now();
    let chunker = Chunker::new(repo.chunker_params())?;
    let shown_root = opts.path.display().to_string();
    let io_err = |source| VolumeError::Io {
        path: shown_root.clone(),
        source,
    };
    // The one path resolved: the volume's, which the operator chose.
    let root_dir = match rustix::fs::open(
        &opts.path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::NOTDIR) => {
            return Err(VolumeError::NotADirectory { path: shown_root });
        }
        Err(e) => return Err(io_err(e.into())),
    };
    let root_meta = rustix::fs::fstat(&root_dir).map_err(|e| io_err(e.into()))?;
    let root_dev = stat::identity(&root_meta).0;
    super::raise_fd_limit();
    let proc_fd = proc_works(&root_dir);
    if !proc_fd {
        warn!("/proc/self/fd is not available: extended attributes are read from directories only");
    }
    let parent = find_parent(repo, &opts.plan, &opts.name).await?;
    match &parent {
        Some(p) => info!(volume = %opts.name, parent = %p.id, "incremental backup"),
        None => info!(volume = %opts.name, "no parent snapshot: reading every file"),
    }
    let dev_strict = parent.as_ref().is_none_or(|p| p.root.dev == root_dev);
    let resume = Resume::load(
        repo,
        &opts.plan,
        &opts.name,
        parent.as_ref().map(|p| p.time),
        root_dev,
    )
    .await?;
    let recorder = Recorder::new(
        &opts.run_id,
        &opts.plan,
        &opts.name,
        root_dev,
        opts.resume_buffer,
    );
    let channels = opts.channels.max(1);
    let writer = repo.writer(channels);
    // Reading and sealing are local work: they use every core even when
    // the channels (upload streams) are fewer.
    let cores = repo.cores();
    let sh = Arc::new(Shared {
        repo: repo.clone(),
        writer: writer.clone(),
        chunker,
        rt: Handle::current(),
        tracker: TaskTracker::new(),
        files: Arc::new(Semaphore::new(channels.max(cores))),
        ahead: ahead::budget(),
        seals_per_file: cores,
        stop: cancel.child_token(),
        failures: Failures::new("stopping the volume backup", "cannot back up"),
        stats: Stats::default(),
        changed: Mutex::new(Vec::new()),
        dev_strict,
        resume,
        recorder,
        proc_fd,
        #[cfg(test)]
        hooks: opts.hooks.clone(),
        #[cfg(test)]
        root: opts.path.clone(),
    });
    let walked = CancellationToken::new();
    let checkpoints = tokio::spawn(checkpoint_loop(sh.clone(), walked.clone()));

    let (root_dir, root_node, entries) = tokio::task::spawn_blocking(move || {
        let mut node = Node::from_stat(ROOT_NAME.to_vec(), &root_meta);
        node.xattrs = xattrs_of(&root_dir, ".");
        list_dir(&root_dir).map(|e| (root_dir, node, e))
    })
    .await
    .map_err(join_err)?
    .map_err(io_err)?;
    inc(&sh.stats.dirs, 1);
    let walker = Walker {
        sh: sh.clone(),
        stack: vec![Frame {
            rel: Vec::new(),
            dir: Arc::new(root_dir),
            node: root_node,
            entries: entries.into_iter(),
            pending: Vec::new(),
            small: Vec::new(),
            small_bytes: 0,
            ahead: (parent.as_ref())
                .and_then(|p| p.listing.as_ref())
                .map(|t| Ahead::new(&sh, t)),
            parent: parent
                .as_ref()
                .and_then(|p| Some((p.root.subtree?, p.listing.clone()?))),
        }],
        hardlinks: HashMap::new(),
        // The parent's size of this volume makes the estimate.
        progress: crate::progress::Ticker::new(
            "volume backup",
            parent.as_ref().and_then(|p| p.bytes),
        ),
    };
    let root_task = tokio::task::spawn_blocking(move || walker.run())
        .await
        .map_err(join_err)?;
    let root = match root_task {
        Some(Pending::Ready(n)) => Some(n),
        Some(Pending::Task(t)) => t.await.map_err(join_err)?.ok().flatten(),
        Some(Pending::Small(_)) => unreachable!("the root is a directory"),
        None => None,
    };
    sh.tracker.close();
    sh.tracker.wait().await;
    walked.cancel();
    let _ = checkpoints.await;

    let fatal = sh.failures.take_fatal();
    if let Some(e) = fatal {
        // Best effort: what is stored already serves a retry.
        match writer.flush().await {
            Ok(()) => final_checkpoint(&sh).await,
            Err(fe) => debug!(error = %fe, "flush after a failure failed too"),
        }
        // On SIGTERM the retries stop with an error: the run was stopped.
        if cancel.is_cancelled() {
            warn!(error = %e, "stopped");
            return Err(VolumeError::Cancelled);
        }
        return Err(e);
    }
    let Some(root) = root.filter(|_| !cancel.is_cancelled()) else {
        writer.flush().await?;
        final_checkpoint(&sh).await;
        info!(
            volume = %opts.name,
            "cancelled: what was written is flushed for a retry; no snapshot was saved"
        );
        return Err(VolumeError::Cancelled);
    };
    info!(volume = %opts.name, files = get(&sh.stats.files), "all files read; storing the last packs, then the snapshot");
    let (root_id, _) = writer
        .add(
            BlobKind::Tree,
            Bytes::from(
                Tree {
                    nodes: vec![root],
                    next: None,
                }
                .encode(),
            ),
        )
        .await?;
    let ws = writer.finish().await?;
    if cancel.is_cancelled() {
        return Err(VolumeError::Cancelled);
    }

    let s = &sh.stats;
    let total_bytes = get(&s.bytes_read) + get(&s.bytes_reused) + get(&s.bytes_resumed);
    let entry = VolumeEntry {
        root: root_id,
        stats: serde_json::json!({
            "files": get(&s.files),
            "dirs": get(&s.dirs),
            "symlinks": get(&s.symlinks),
            "hardlinks": get(&s.hardlinks),
            "special": get(&s.special),
            "bytes": total_bytes,
        }),
    };
    let mut report = Report::default();
    for (key, c) in [
        ("files", &s.files),
        ("dirs", &s.dirs),
        ("symlinks", &s.symlinks),
        ("hardlinks", &s.hardlinks),
        ("special", &s.special),
        ("unreadable", &s.unreadable),
        ("changed", &s.changed),
        ("vanished", &s.vanished),
        ("replaced", &s.replaced),
    ] {
        report.count(key, get(c));
    }
    report.count("resumed", get(&s.resumed));
    report.count(
        "checkpoints",
        sh.recorder.saved.load(std::sync::atomic::Ordering::Relaxed),
    );
    report.add_bytes("read", get(&s.bytes_read));
    report.add_bytes("reused", get(&s.bytes_reused));
    report.add_bytes("resumed", get(&s.bytes_resumed));
    // Read, but already stored: chunks an unfinished run (or another
    // volume) uploaded.
    report.add_bytes("deduplicated", ws.bytes_reused);
    report.add_bytes("new", ws.bytes_raw_new);
    report.add_bytes("stored", ws.bytes_stored);
    report.errors = sh.failures.take_errors();
    let saved = if opts.mover {
        let result = MoverResult {
            version: 1,
            run_id: opts.run_id.clone(),
            volume: opts.name.clone(),
            time: jiff::Timestamp::now(),
            entry,
            report: serde_json::json!({
                "counts": report.counts,
                "bytes": report.bytes,
                "errors": report.errors,
            }),
        };
        let key = repo.save_mover_result(&result).await?;
        serde_json::json!({"mover_result": key})
    } else {
        let mut manifest = SnapshotManifest::new(&opts.run_id, 0, 1, &opts.plan);
        manifest.tags = opts.tags.clone();
        manifest.volumes.insert(opts.name.clone(), entry);
        let snapshot = repo.save_snapshot(&manifest).await?;
        serde_json::json!({"snapshot": snapshot.to_hex()})
    };
    let changed = std::mem::take(&mut *sh.changed.lock().unwrap_or_else(|p| p.into_inner()));
    let mut details = serde_json::json!({
        "volume": opts.name,
        "root": root_id.to_hex(),
        "parent": parent.as_ref().map(|p| p.id.to_hex()),
        "changed_files": changed,
    });
    if let (Some(d), Some(s)) = (details.as_object_mut(), saved.as_object()) {
        d.extend(s.clone());
    }
    report.details = details;
    let secs = started.elapsed().as_secs_f64();
    info!(
        volume = %opts.name,
        saved = %saved,
        files = get(&s.files),
        bytes_read = get(&s.bytes_read),
        bytes_reused = get(&s.bytes_reused),
        bytes_resumed = get(&s.bytes_resumed),
        bytes_deduplicated = ws.bytes_reused,
        bytes_new = ws.bytes_raw_new,
        mib_per_s = format!("{:.1}", total_bytes as f64 / (1 << 20) as f64 / secs.max(1e-3)),
        "volume backup saved"
    );
    Ok(report)
}
