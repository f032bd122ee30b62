//! Walks every blob reachable from snapshot roots.
//!
//! The tree convention: a Tree blob is JSON `{"nodes": [...]}`; a node may
//! carry `"content": [<blob id hex>, ...]` (leaf blobs, Data or Object) and
//! `"subtree": "<blob id hex>"` (another Tree), and the tree itself may
//! carry `"next": "<blob id hex>"`, the next part of a listing too large
//! for one blob. Only those fields are read (and `name`, when it is a
//! string, to name paths in messages); all
//! other fields are ignored, so the archiver and the resource catalogue can
//! grow without this module knowing. The roots of a snapshot are
//! `manifest.resources` and every `manifest.volumes[*].root`.
//!
//! Each blob is visited once, whatever the number of snapshots and paths
//! that reach it, and trees are read `concurrency` at a time.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Deserialize;

use super::{BlobId, BlobKind, RepoError, Repository, SnapshotId, SnapshotManifest, snapshot_key};

/// Trees larger than this are parsed on the blocking pool.
const INLINE_PARSE: usize = 256 << 10;

/// Where a walk starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// The tree to start at.
    pub blob: BlobId,
    /// The snapshot it belongs to, for messages.
    pub snapshot: Option<SnapshotId>,
    /// `resources` or `volumes/<name>`.
    pub path: String,
}

impl Root {
    /// The roots of one snapshot manifest.
    pub fn of_manifest(id: SnapshotId, m: &SnapshotManifest) -> Vec<Root> {
        m.resources
            .iter()
            .map(|r| Root {
                blob: *r,
                snapshot: Some(id),
                path: "resources".into(),
            })
            .chain(m.volumes.iter().map(|(name, v)| Root {
                blob: v.root,
                snapshot: Some(id),
                path: format!("volumes/{name}"),
            }))
            .collect()
    }
}

/// A blob that is missing or cannot be read, and how it was reached.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The snapshot whose walk reached it, if known.
    pub snapshot: Option<SnapshotId>,
    /// Node names from the root, e.g. `volumes/shop/data/etc/passwd`.
    pub path: String,
    /// The blob that failed.
    pub blob: BlobId,
    /// Why it could not be read.
    pub error: RepoError,
}

impl Problem {
    /// The object to look at: the damaged pack, or else the snapshot that
    /// references the missing blob.
    pub fn object_key(&self) -> String {
        match &self.error {
            RepoError::Corrupt { key, .. } | RepoError::Format { key, .. } => key.clone(),
            _ => self
                .snapshot
                .as_ref()
                .map(snapshot_key)
                .unwrap_or_else(|| "(root)".into()),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.snapshot {
            Some(s) => write!(f, "{} {}: ", snapshot_key(s), self.path)?,
            None => write!(f, "{}: ", self.path)?,
        }
        match &self.error {
            RepoError::MissingBlob { id } => write!(f, "blob {id} is not in the index"),
            e => write!(f, "blob {}: {e}", self.blob),
        }
    }
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    /// Every blob reached (trees and leaves), including missing ones.
    pub reachable: HashSet<BlobId>,
    /// Trees read.
    pub trees: u64,
    /// Blobs that were missing or unreadable.
    pub problems: Vec<Problem>,
}

#[derive(Deserialize)]
struct TreeDoc {
    #[serde(default)]
    nodes: Vec<NodeRefs>,
    #[serde(default)]
    next: Option<BlobId>,
}

#[derive(Deserialize)]
struct NodeRefs {
    #[serde(default)]
    name: Option<Name>,
    #[serde(default)]
    content: Option<Vec<BlobId>>,
    #[serde(default)]
    subtree: Option<BlobId>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Name {
    Text(String),
    #[allow(dead_code)]
    Other(serde::de::IgnoredAny),
}

/// The blob ids a tree references, with the node names for messages.
pub(crate) struct Refs {
    name: String,
    content: Vec<BlobId>,
    subtree: Option<BlobId>,
}

/// A tree's references: its nodes', and the next part of its listing.
type Parsed = (Vec<Refs>, Option<BlobId>);

fn parse_tree(data: &[u8]) -> Result<Parsed, String> {
    let doc: TreeDoc =
        serde_json::from_slice(data).map_err(|e| format!("not a tree (JSON with nodes): {e}"))?;
    let refs = doc
        .nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| Refs {
            name: match n.name {
                Some(Name::Text(s)) => s,
                _ => format!("#{i}"),
            },
            content: n.content.unwrap_or_default(),
            subtree: n.subtree,
        })
        .collect();
    Ok((refs, doc.next))
}

/// How a tree was reached.
#[derive(Clone)]
struct Ctx {
    snapshot: Option<SnapshotId>,
    path: Arc<str>,
}

impl Ctx {
    fn child(&self, name: &str) -> String {
        format!("{}/{name}", self.path)
    }
}

/// Reads and parses one tree.
async fn read_tree(repo: Repository, id: BlobId) -> Result<Parsed, RepoError> {
    let data = repo.read_blob(&id).await?;
    let corrupt = |reason: String| {
        let key = repo
            .index_entry(&id)
            .map(|e| super::pack_key(&e.pack))
            .unwrap_or_default();
        RepoError::corrupt(&key, Some(&id), reason)
    };
    let parsed = if data.len() > INLINE_PARSE {
        repo.cpu("parsing a tree", move || parse_tree(&data))
            .await?
    } else {
        parse_tree(&data)
    };
    parsed.map_err(corrupt)
}

/// Visits every blob reachable from `roots`. Never fails as a whole: each
/// missing or unreadable blob becomes a [`Problem`] (a missing tree's
/// children are then unknown).
pub async fn walk(repo: &Repository, roots: Vec<Root>, concurrency: usize) -> Walk {
    let mut w = Walk::default();
    let mut expanded: HashSet<BlobId> = HashSet::new();
    let mut queue: VecDeque<(BlobId, Ctx)> = VecDeque::new();

    // A subtree: reachable, and read once.
    let visit_tree = |w: &mut Walk,
                      expanded: &mut HashSet<BlobId>,
                      queue: &mut VecDeque<(BlobId, Ctx)>,
                      id: BlobId,
                      ctx: Ctx| {
        w.reachable.insert(id);
        if !expanded.insert(id) {
            return;
        }
        match repo.index_entry(&id) {
            None => w.problems.push(Problem {
                snapshot: ctx.snapshot,
                path: ctx.path.to_string(),
                blob: id,
                error: RepoError::MissingBlob { id },
            }),
            Some(e) if e.kind != BlobKind::Tree => w.problems.push(Problem {
                snapshot: ctx.snapshot,
                path: ctx.path.to_string(),
                blob: id,
                error: RepoError::corrupt(
                    &super::pack_key(&e.pack),
                    Some(&id),
                    format!("referenced as a tree but stored as a {} blob", e.kind),
                ),
            }),
            Some(_) => queue.push_back((id, ctx)),
        }
    };

    for root in roots {
        let ctx = Ctx {
            snapshot: root.snapshot,
            path: root.path.into(),
        };
        visit_tree(&mut w, &mut expanded, &mut queue, root.blob, ctx);
    }

    let concurrency = concurrency.max(1);
    let mut inflight = FuturesUnordered::new();
    loop {
        while inflight.len() < concurrency {
            let Some((id, ctx)) = queue.pop_front() else {
                break;
            };
            let repo = repo.clone();
            inflight.push(async move { (id, ctx, read_tree(repo, id).await) });
        }
        let Some((id, ctx, result)) = inflight.next().await else {
            break;
        };
        let (nodes, next) = match result {
            Ok(parsed) => parsed,
            Err(error) => {
                w.problems.push(Problem {
                    snapshot: ctx.snapshot,
                    path: ctx.path.to_string(),
                    blob: id,
                    error,
                });
                continue;
            }
        };
        w.trees += 1;
        // The rest of the same listing: reached by the same path.
        if let Some(next) = next {
            visit_tree(&mut w, &mut expanded, &mut queue, next, ctx.clone());
        }
        for node in nodes {
            for leaf in node.content {
                if w.reachable.insert(leaf) && repo.index_entry(&leaf).is_none() {
                    w.problems.push(Problem {
                        snapshot: ctx.snapshot,
                        path: ctx.child(&node.name),
                        blob: leaf,
                        error: RepoError::MissingBlob { id: leaf },
                    });
                }
            }
            if let Some(sub) = node.subtree {
                let child = Ctx {
                    snapshot: ctx.snapshot,
                    path: ctx.child(&node.name).into(),
                };
                visit_tree(&mut w, &mut expanded, &mut queue, sub, child);
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_references() {
        let a = "ab".repeat(32);
        let b = "cd".repeat(32);
        let json = format!(
            r#"{{"nodes":[
                {{"name":"f","type":"file","content":["{a}"],"mode":420}},
                {{"name":"d","subtree":"{b}","xattrs":{{"k":"v"}}}},
                {{"name":7,"content":null,"subtree":null}},
                {{}}
            ],"other":1,"next":"{a}"}}"#
        );
        let (refs, next) = parse_tree(json.as_bytes()).unwrap();
        assert_eq!(next, Some(a.parse().unwrap()));
        assert_eq!(refs.len(), 4);
        assert_eq!(refs[0].name, "f");
        assert_eq!(refs[0].content, vec![a.parse().unwrap()]);
        assert_eq!(refs[1].subtree, Some(b.parse().unwrap()));
        assert_eq!(refs[2].name, "#2");
        assert!(refs[2].content.is_empty() && refs[2].subtree.is_none());
        assert!(parse_tree(b"{}").unwrap().0.is_empty());
        assert!(parse_tree(b"[1]").is_err());
        assert!(parse_tree(br#"{"nodes":[{"content":["zz"]}]}"#).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_subtrees_are_read_once() {
        use crate::repo::fixture;
        let (_, repo) = crate::testutil::mem().await;
        let w = repo.writer(2);
        let f = |p: &str, seed| (p.to_string(), fixture::bytes(3000, seed));
        let r1 = fixture::store_files(&w, &[f("a/x", 1), f("b/y", 2)], 1000)
            .await
            .unwrap();
        let r2 = fixture::store_files(&w, &[f("a/x", 1), f("b/z", 3)], 1000)
            .await
            .unwrap();
        w.finish().await.unwrap();
        let root = |blob, path: &str| Root {
            blob,
            snapshot: None,
            path: path.into(),
        };
        let w = walk(
            &repo,
            vec![root(r1, "one"), root(r2, "two"), root(r1, "again")],
            3,
        )
        .await;
        assert!(w.problems.is_empty(), "{:?}", w.problems);
        // root1, root2, a (shared), b (twice different): 5 trees; 3 files x 3 chunks.
        assert_eq!(w.trees, 5);
        assert_eq!(w.reachable.len(), 5 + 9);
        // A root that is not stored is a problem naming its path.
        let ghost = BlobId([9; 32]);
        let w = walk(&repo, vec![root(ghost, "volumes/v")], 3).await;
        assert_eq!(w.problems.len(), 1);
        assert_eq!(w.problems[0].path, "volumes/v");
        assert!(w.problems[0].to_string().contains(&ghost.to_hex()));
    }
}
