//! Volume trees: one `Tree` blob of JSON per directory (docs/format.md §12).
//!
//! The generic walkers (`check`, `prune`, `copy`) follow only a node's
//! `content` (data chunks) and `subtree` (a child tree); everything else
//! here is for backup and restore.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::repo::BlobId;

/// Name of the single node of a volume's root tree: the volume directory
/// itself, whose `subtree` lists its entries.
pub const ROOT_NAME: &[u8] = b".";

/// What kind of directory entry a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    /// A regular file; `content` holds its chunks.
    File,
    /// A directory; `subtree` holds its listing.
    Dir,
    /// A symbolic link; `target` holds where it points.
    Symlink,
    /// Another name of a regular file stored earlier in the walk; `link`
    /// holds that file's path relative to the volume root.
    Hardlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket (recorded, not recreated).
    Socket,
    /// A character device; `rdev` holds its number.
    Chardev,
    /// A block device; `rdev` holds its number.
    Blockdev,
    /// A type written by a newer version; restore skips it with a warning.
    #[serde(other)]
    Unknown,
}

impl NodeType {
    /// The type of an `lstat` result.
    pub fn of(meta: &Metadata) -> NodeType {
        NodeType::of_mode(meta.mode())
    }

    /// The type in an `st_mode`.
    pub fn of_mode(mode: u32) -> NodeType {
        use rustix::fs::FileType as T;
        match T::from_raw_mode(mode) {
            T::RegularFile => NodeType::File,
            T::Directory => NodeType::Dir,
            T::Symlink => NodeType::Symlink,
            T::Fifo => NodeType::Fifo,
            T::Socket => NodeType::Socket,
            T::CharacterDevice => NodeType::Chardev,
            T::BlockDevice => NodeType::Blockdev,
            _ => NodeType::Unknown,
        }
    }

    /// The name used in trees and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::File => "file",
            NodeType::Dir => "dir",
            NodeType::Symlink => "symlink",
            NodeType::Hardlink => "hardlink",
            NodeType::Fifo => "fifo",
            NodeType::Socket => "socket",
            NodeType::Chardev => "chardev",
            NodeType::Blockdev => "blockdev",
            NodeType::Unknown => "unknown",
        }
    }
}

/// One directory entry. Byte strings are raw (file names need not be
/// UTF-8); the JSON form picks `x` or `x_b64` per value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The entry's name (raw bytes).
    pub name: Vec<u8>,
    /// What kind of entry it is.
    pub kind: NodeType,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner's user id.
    pub uid: u32,
    /// Owner's group id.
    pub gid: u32,
    /// Bytes of content (regular files); as read, for a file that changed
    /// while it was read.
    pub size: u64,
    /// Modification time, in nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Change time, in nanoseconds since the epoch (unchanged-file check).
    pub ctime_ns: i64,
    /// Inode number when read (unchanged-file check).
    pub inode: u64,
    /// Device of the file system when read (unchanged-file check).
    pub dev: u64,
    /// Number of hard links when read.
    pub nlink: u64,
    /// Device number of a character or block device.
    pub rdev: u64,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Hard link: path of the first occurrence, relative to the volume root.
    pub link: Option<Vec<u8>>,
    /// Extended attributes, name to value.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Data chunks, in order.
    pub content: Vec<BlobId>,
    /// Child tree of a directory.
    pub subtree: Option<BlobId>,
}

/// Nanoseconds since the epoch, saturating outside ±292 years.
fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(nsec))
        .unwrap_or(if secs < 0 { i64::MIN } else { i64::MAX })
}

/// The fields of a `struct stat` that trees use, as fixed-width integers.
///
/// `struct stat` has other field types on other architectures, so the
/// casts are needed there even where they are no-ops here.
#[allow(clippy::unnecessary_cast)]
pub mod stat {
    use rustix::fs::Stat;

    /// `st_mode`: file type and permission bits.
    pub fn mode(st: &Stat) -> u32 {
        st.st_mode as u32
    }

    /// `st_size`, in bytes (never negative for what a kernel returns).
    pub fn size(st: &Stat) -> u64 {
        st.st_size as u64
    }

    /// `st_dev` and `st_ino`: which file this is.
    pub fn identity(st: &Stat) -> (u64, u64) {
        (st.st_dev as u64, st.st_ino as u64)
    }

    /// `st_nlink`.
    pub fn nlink(st: &Stat) -> u64 {
        st.st_nlink as u64
    }

    /// Modification time, in nanoseconds since the epoch.
    pub fn mtime_ns(st: &Stat) -> i64 {
        super::nanos(st.st_mtime as i64, st.st_mtime_nsec as i64)
    }

    /// Change time, in nanoseconds since the epoch.
    pub fn ctime_ns(st: &Stat) -> i64 {
        super::nanos(st.st_ctime as i64, st.st_ctime_nsec as i64)
    }

    /// `st_uid`, `st_gid` and `st_rdev`.
    pub fn owner_rdev(st: &Stat) -> (u32, u32, u64) {
        (st.st_uid as u32, st.st_gid as u32, st.st_rdev as u64)
    }
}

impl Node {
    /// A node with the metadata of `st` (an `lstat` or `fstat`), no
    /// content, no xattrs.
    pub fn from_stat(name: Vec<u8>, st: &rustix::fs::Stat) -> Node {
        let kind = NodeType::of_mode(stat::mode(st));
        let (dev, inode) = stat::identity(st);
        let (uid, gid, rdev) = stat::owner_rdev(st);
        Node {
            name,
            kind,
            mode: stat::mode(st) & 0o7777,
            uid,
            gid,
            size: if kind == NodeType::File {
                stat::size(st)
            } else {
                0
            },
            mtime_ns: stat::mtime_ns(st),
            ctime_ns: stat::ctime_ns(st),
            inode,
            dev,
            nlink: stat::nlink(st),
            rdev: if matches!(kind, NodeType::Chardev | NodeType::Blockdev) {
                rdev
            } else {
                0
            },
            target: None,
            link: None,
            xattrs: BTreeMap::new(),
            content: Vec::new(),
            subtree: None,
        }
    }
}

/// A file's modification time in nanoseconds since the epoch.
pub fn mtime_ns(meta: &Metadata) -> i64 {
    nanos(meta.mtime(), meta.mtime_nsec())
}

/// A stored tree that is not a valid volume tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The JSON does not parse as a tree.
    #[error("not a volume tree: {0}")]
    Json(#[source] serde_json::Error),
    /// Two entries have the same name: restore would make the second
    /// replace the first while the first is still being written.
    #[error("entry `{name}` appears more than once")]
    Duplicate {
        /// The name, as shown to users.
        name: String,
    },
    /// A listing split into more parts than any directory needs.
    #[error("a directory listing in more than {max} parts")]
    TooManyParts {
        /// The most parts a listing may have.
        max: usize,
    },
    /// A part with no entries that names another: the writer never makes
    /// one, and a chain of them only costs reads.
    #[error("an empty part of a directory listing names another part")]
    EmptyPart,
    /// The entries are not in name order (lookups and the walk order of
    /// hard links depend on it), also across the parts of a listing.
    #[error("entry `{name}` comes after `{previous}`; entries must be sorted by name")]
    Unsorted {
        /// The entry out of place, as shown to users.
        name: String,
        /// The entry before it.
        previous: String,
    },
}

/// A directory listing, sorted by name bytes. A listing too large for one
/// blob is a chain of parts (`docs/format.md` §12): each part but the last
/// names the next, and names keep ascending across parts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// The entries, sorted by name bytes.
    pub nodes: Vec<Node>,
    /// The next part of the same listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<crate::repo::BlobId>,
}

impl Tree {
    /// Compact JSON; the same nodes always give the same bytes.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(self.nodes.windows(2).all(|w| w[0].name < w[1].name));
        serde_json::to_vec(self).expect("a tree serialises")
    }

    /// Parses a stored tree; its names must be unique and sorted.
    pub fn decode(bytes: &[u8]) -> Result<Tree, TreeError> {
        let tree: Tree = serde_json::from_slice(bytes).map_err(TreeError::Json)?;
        for w in tree.nodes.windows(2) {
            match w[0].name.cmp(&w[1].name) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    return Err(TreeError::Duplicate {
                        name: display_path(&w[1].name),
                    });
                }
                std::cmp::Ordering::Greater => {
                    return Err(TreeError::Unsorted {
                        name: display_path(&w[1].name),
                        previous: display_path(&w[0].name),
                    });
                }
            }
        }
        Ok(tree)
    }

    /// Splits `nodes` (sorted) into parts whose encodings each take at
    /// most `limit` bytes, in order, so a listing of any size can be
    /// stored; every part leaves room for `next`. A single node larger than
    /// `limit` is a part of its own (the caller rejects it).
    pub fn split(nodes: Vec<Node>, limit: usize) -> Vec<Vec<Node>> {
        // `{"nodes":[` … `],"next":"<64 hex>"}` around the entries.
        const FRAME: usize = 96;
        let mut parts = vec![Vec::new()];
        let mut used = FRAME;
        for n in nodes {
            let size = serde_json::to_vec(&n).map(|v| v.len()).unwrap_or(0) + 1;
            let last = parts.last_mut().expect("one part at least");
            if !last.is_empty() && used + size > limit {
                parts.push(Vec::new());
                used = FRAME;
            }
            used += size;
            parts.last_mut().expect("one part at least").push(n);
        }
        parts
    }

    /// The node called `name`, if the listing is sorted as written.
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// The JSON form of a node.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name_b64: Option<String>,
    #[serde(rename = "type")]
    kind: NodeType,
    #[serde(default)]
    mode: u32,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    size: u64,
    #[serde(default)]
    mtime_ns: i64,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    ctime_ns: i64,
    #[serde(default)]
    inode: u64,
    #[serde(default)]
    dev: u64,
    #[serde(default)]
    nlink: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    rdev: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link_b64: Option<String>,
    /// UTF-8 attribute name → base64 value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    xattrs: BTreeMap<String, String>,
    /// base64 name → base64 value, for names that are not UTF-8.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    xattrs_b64: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    content: Vec<BlobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subtree: Option<BlobId>,
}

/// `(text, None)` for UTF-8, `(None, base64)` otherwise.
fn split(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(B64.encode(bytes))),
    }
}

fn join(field: &str, text: Option<String>, b64: Option<String>) -> Result<Option<Vec<u8>>, String> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(format!("both `{field}` and `{field}_b64` are set")),
        (Some(t), None) => Ok(Some(t.into_bytes())),
        (None, Some(b)) => B64
            .decode(b)
            .map(Some)
            .map_err(|e| format!("`{field}_b64` is not base64: {e}")),
        (None, None) => Ok(None),
    }
}

impl Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (name, name_b64) = split(&self.name);
        let (target, target_b64) = self.target.as_deref().map(split).unwrap_or_default();
        let (link, link_b64) = self.link.as_deref().map(split).unwrap_or_default();
        let (mut xattrs, mut xattrs_b64) = (BTreeMap::new(), BTreeMap::new());
        for (k, v) in &self.xattrs {
            match std::str::from_utf8(k) {
                Ok(k) => xattrs.insert(k.to_string(), B64.encode(v)),
                Err(_) => xattrs_b64.insert(B64.encode(k), B64.encode(v)),
            };
        }
        Wire {
            name,
            name_b64,
            kind: self.kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            inode: self.inode,
            dev: self.dev,
            nlink: self.nlink,
            rdev: self.rdev,
            target,
            target_b64,
            link,
            link_b64,
            xattrs,
            xattrs_b64,
            content: self.content.clone(),
            subtree: self.subtree,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let w = Wire::deserialize(d)?;
        let name = join("name", w.name, w.name_b64)
            .map_err(D::Error::custom)?
            .ok_or_else(|| D::Error::custom("a node needs `name` or `name_b64`"))?;
        let mut xattrs = BTreeMap::new();
        for (k, v) in w.xattrs {
            let v = B64
                .decode(v)
                .map_err(|e| D::Error::custom(format!("xattr {k:?} is not base64: {e}")))?;
            xattrs.insert(k.into_bytes(), v);
        }
        for (k, v) in w.xattrs_b64 {
            let key = B64
                .decode(&k)
                .map_err(|e| D::Error::custom(format!("xattr name {k:?} is not base64: {e}")))?;
            let v = B64
                .decode(v)
                .map_err(|e| D::Error::custom(format!("xattr {k:?} is not base64: {e}")))?;
            xattrs.insert(key, v);
        }
        Ok(Node {
            name,
            kind: w.kind,
            mode: w.mode,
            uid: w.uid,
            gid: w.gid,
            size: w.size,
            mtime_ns: w.mtime_ns,
            ctime_ns: w.ctime_ns,
            inode: w.inode,
            dev: w.dev,
            nlink: w.nlink,
            rdev: w.rdev,
            target: join("target", w.target, w.target_b64).map_err(D::Error::custom)?,
            link: join("link", w.link, w.link_b64).map_err(D::Error::custom)?,
            xattrs,
            content: w.content,
            subtree: w.subtree,
        })
    }
}

/// Shows a path made of raw bytes: lossy UTF-8, with newlines and other
/// control characters escaped so report lines stay one line each.
pub fn display_path(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.chars().any(char::is_control) {
        s.escape_debug().to_string()
    } else {
        s.into_owned()
    }
}

/// `parent/name` as bytes; `name` alone at the root.
pub fn join_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
        p.extend_from_slice(parent);
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

/// A single path component that cannot leave its directory.
pub fn is_safe_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// A relative path of safe components (hard-link targets).
pub fn is_safe_rel(path: &[u8]) -> bool {
    !path.is_empty() && path.split(|b| *b == b'/').all(is_safe_name)
}
