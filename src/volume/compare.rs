//! Compares two directory trees the way a restore should reproduce them:
//! types, content, mode, owner, mtime, symlink targets, hard-link identity
//! and extended attributes (not atime or ctime, which cannot be restored).
//! Used by the tests; handy for checking a restore by hand.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::tree::{NodeType, display_path, join_rel, mtime_ns};

/// Every difference between the trees at `a` and `b`, one line each, the
/// roots included; empty when they match.
pub fn compare_trees(a: &Path, b: &Path) -> Vec<String> {
    let mut c = Compare::default();
    c.entry(a, b, b".".to_vec());
    c.diffs
}

#[derive(Default)]
struct Compare {
    diffs: Vec<String>,
    /// (dev, inode) in `a` → in `b`, and back: hard links must pair up.
    a_to_b: HashMap<(u64, u64), (u64, u64)>,
    b_to_a: HashMap<(u64, u64), (u64, u64)>,
}

fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    if let Ok(names) = xattr::list(p) {
        for n in names {
            if let Ok(Some(v)) = xattr::get(p, &n) {
                out.insert(n.into_vec(), v);
            }
        }
    }
    out
}

fn names(p: &Path) -> io::Result<BTreeSet<Vec<u8>>> {
    fs::read_dir(p)?
        .map(|e| e.map(|e| e.file_name().into_vec()))
        .collect()
}

fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

impl Compare {
    fn diff(&mut self, rel: &[u8], what: String) {
        self.diffs.push(format!("{}: {what}", display_path(rel)));
    }

    fn entry(&mut self, a: &Path, b: &Path, rel: Vec<u8>) {
        let (ma, mb) = match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
            (Ok(ma), Ok(mb)) => (ma, mb),
            (Err(e), _) => return self.diff(&rel, format!("unreadable in the first tree: {e}")),
            (_, Err(e)) => return self.diff(&rel, format!("missing in the second tree: {e}")),
        };
        let (ta, tb) = (NodeType::of(&ma), NodeType::of(&mb));
        if ta != tb {
            return self.diff(&rel, format!("type {} != {}", ta.as_str(), tb.as_str()));
        }
        self.meta(&rel, &ma, &mb, ta);
        let (xa, xb) = (xattrs(a), xattrs(b));
        if xa != xb {
            self.diff(&rel, format!("xattrs {xa:?} != {xb:?}"));
        }
        match ta {
            NodeType::File => {
                let ka = (ma.dev(), ma.ino());
                let kb = (mb.dev(), mb.ino());
                let fwd = *self.a_to_b.entry(ka).or_insert(kb);
                let back = *self.b_to_a.entry(kb).or_insert(ka);
                if fwd != kb || back != ka {
                    self.diff(&rel, "hard-link identity differs".into());
                }
                if ma.len() != mb.len() {
                    self.diff(&rel, format!("size {} != {}", ma.len(), mb.len()));
                } else {
                    match same_content(a, b) {
                        Ok(true) => {}
                        Ok(false) => self.diff(&rel, "content differs".into()),
                        Err(e) => self.diff(&rel, format!("cannot read: {e}")),
                    }
                }
            }
            NodeType::Symlink => match (fs::read_link(a), fs::read_link(b)) {
                (Ok(x), Ok(y)) if x == y => {}
                (x, y) => self.diff(&rel, format!("symlink target {x:?} != {y:?}")),
            },
            NodeType::Chardev | NodeType::Blockdev if ma.rdev() != mb.rdev() => {
                self.diff(&rel, format!("device {} != {}", ma.rdev(), mb.rdev()));
            }
            NodeType::Dir => {
                let (na, nb) = match (names(a), names(b)) {
                    (Ok(x), Ok(y)) => (x, y),
                    (x, y) => {
                        return self
                            .diff(&rel, format!("cannot list: {:?} / {:?}", x.err(), y.err()));
                    }
                };
                let child_rel = |name: &[u8]| {
                    if rel == b"." {
                        name.to_vec()
                    } else {
                        join_rel(&rel, name)
                    }
                };
                for extra in nb.difference(&na) {
                    self.diff(&child_rel(extra), "only in the second tree".into());
                }
                for name in &na {
                    let child = child_rel(name);
                    if !nb.contains(name) {
                        self.diff(&child, "only in the first tree".into());
                        continue;
                    }
                    let os = OsStr::from_bytes(name);
                    self.entry(&a.join(os), &b.join(os), child);
                }
            }
            _ => {}
        }
    }

    fn meta(&mut self, rel: &[u8], ma: &Metadata, mb: &Metadata, t: NodeType) {
        if t != NodeType::Symlink && ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            self.diff(
                rel,
                format!(
                    "mode {:04o} != {:04o}",
                    ma.mode() & 0o7777,
                    mb.mode() & 0o7777
                ),
            );
        }
        if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
            self.diff(
                rel,
                format!(
                    "owner {}:{} != {}:{}",
                    ma.uid(),
                    ma.gid(),
                    mb.uid(),
                    mb.gid()
                ),
            );
        }
        if mtime_ns(ma) != mtime_ns(mb) {
            self.diff(rel, format!("mtime {} != {}", mtime_ns(ma), mtime_ns(mb)));
        }
    }
}
