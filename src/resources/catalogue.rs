//! The resource catalogue: which objects a snapshot holds and where.
//!
//! Stored as three levels of Tree blobs (`docs/format.md` §12), each
//! `{"nodes":[...]}` sorted by name, so an unchanged namespace produces the
//! same tree ids and costs nothing in the next backup:
//!
//! 1. root: one node per namespace (`content` = its Namespace object) and
//!    one `_cluster` node for cluster-scoped objects, each with a `subtree`;
//! 2. one node per resource type with a `subtree`;
//! 3. one node per object, `content` = `[object blob id]`.

use std::collections::BTreeMap;
use std::future::Future;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::cluster::ResourceType;
use crate::repo::{BlobId, BlobKind, RepoError, Repository, Writer};

/// Name of the root node that holds cluster-scoped objects. Not a valid
/// namespace name, so it cannot collide with one.
pub const CLUSTER_NODE: &str = "_cluster";
/// Tree blobs read at once.
const READ_PARALLEL: usize = 16;

/// The objects of one type in one scope, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeEntry {
    /// The type, at the version it was backed up at.
    pub rt: ResourceType,
    /// Object name → id of the blob holding the stored object.
    pub objects: BTreeMap<String, BlobId>,
}

/// Types by [`ResourceType::name`].
pub type TypeMap = BTreeMap<String, TypeEntry>;

/// One namespace in the catalogue: its own object and the objects in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceEntry {
    /// The Namespace object itself, when it was readable.
    pub object: Option<BlobId>,
    /// The namespaced objects in this namespace, by type.
    pub types: TypeMap,
}

/// An in-memory catalogue: built by a backup, read by a restore.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalogue {
    /// Namespaced objects, by namespace name.
    pub namespaces: BTreeMap<String, NamespaceEntry>,
    /// Cluster-scoped objects other than Namespaces.
    pub cluster: TypeMap,
}

/// A part of the catalogue that could not be read; the rest still can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `namespace` or `namespace/type`.
    pub path: String,
    /// Why it could not be read.
    pub message: String,
}

#[derive(Serialize, Deserialize)]
struct Tree<N> {
    nodes: Vec<N>,
}

#[derive(Serialize, Deserialize)]
struct ScopeNode {
    name: String,
    /// `namespace` or `cluster`.
    scope: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    content: Vec<BlobId>,
    subtree: BlobId,
}

#[derive(Serialize, Deserialize)]
struct TypeNode {
    name: String,
    group: String,
    version: String,
    kind: String,
    plural: String,
    namespaced: bool,
    count: u64,
    subtree: BlobId,
}

#[derive(Serialize, Deserialize)]
struct ObjectNode {
    name: String,
    content: Vec<BlobId>,
}

fn insert_into(types: &mut TypeMap, rt: &ResourceType, name: &str, id: BlobId) {
    types
        .entry(rt.name())
        .or_insert_with(|| TypeEntry {
            rt: rt.clone(),
            objects: BTreeMap::new(),
        })
        .objects
        .insert(name.to_string(), id);
}

impl Catalogue {
    /// Records an object. `ns` is `None` for cluster-scoped objects.
    /// Namespace objects go through [`set_namespace_object`](Self::set_namespace_object).
    pub fn insert(&mut self, ns: Option<&str>, rt: &ResourceType, name: &str, id: BlobId) {
        match ns {
            Some(ns) => insert_into(
                &mut self.namespaces.entry(ns.to_string()).or_default().types,
                rt,
                name,
                id,
            ),
            None => insert_into(&mut self.cluster, rt, name, id),
        }
    }

    /// Records the Namespace object of `ns`.
    pub fn set_namespace_object(&mut self, ns: &str, id: BlobId) {
        self.namespaces.entry(ns.to_string()).or_default().object = Some(id);
    }

    /// Objects per type name (`namespaces` counts the Namespace objects).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let mut add = |types: &TypeMap| {
            for (name, t) in types {
                *out.entry(name.clone()).or_default() += t.objects.len() as u64;
            }
        };
        add(&self.cluster);
        for ns in self.namespaces.values() {
            add(&ns.types);
        }
        let ns_objects = self
            .namespaces
            .values()
            .filter(|n| n.object.is_some())
            .count() as u64;
        if ns_objects > 0 {
            *out.entry("namespaces".into()).or_default() += ns_objects;
        }
        out
    }

    /// Every object, Namespace objects included.
    pub fn len(&self) -> u64 {
        self.counts().values().sum()
    }

    /// Whether the catalogue holds no objects at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores the trees through `writer` and returns the root id. The
    /// writer must still be flushed before the id goes into a manifest.
    pub async fn write(&self, writer: &Writer) -> Result<BlobId, RepoError> {
        let mut roots = Vec::with_capacity(self.namespaces.len() + 1);
        for (name, ns) in &self.namespaces {
            roots.push(ScopeNode {
                name: name.clone(),
                scope: "namespace".into(),
                content: ns.object.into_iter().collect(),
                subtree: write_types(writer, &ns.types).await?,
            });
        }
        roots.push(ScopeNode {
            name: CLUSTER_NODE.into(),
            scope: "cluster".into(),
            content: Vec::new(),
            subtree: write_types(writer, &self.cluster).await?,
        });
        roots.sort_by(|a, b| a.name.cmp(&b.name));
        add_tree(writer, &Tree { nodes: roots }).await
    }

    /// Reads the catalogue under `root`. Only scopes (namespace names, or
    /// [`CLUSTER_NODE`]) for which `want` is true are read below the root.
    /// An unreadable root fails; an unreadable subtree becomes a
    /// [`Problem`] and the rest is still read.
    pub async fn read(
        repo: &Repository,
        root: &BlobId,
        want: impl Fn(&str) -> bool,
    ) -> Result<(Catalogue, Vec<Problem>), RepoError> {
        Self::read_from(|id| async move { repo.read_blob(&id).await }, root, want).await
    }

    /// [`read`](Self::read), with the tree blobs from `read_blob` (the fuzz
    /// target serves them from memory).
    pub(crate) async fn read_from<F, Fut>(
        read_blob: F,
        root: &BlobId,
        want: impl Fn(&str) -> bool,
    ) -> Result<(Catalogue, Vec<Problem>), RepoError>
    where
        F: Fn(BlobId) -> Fut,
        Fut: Future<Output = Result<Bytes, RepoError>>,
    {
        let read_blob = &read_blob;
        let root_tree: Tree<ScopeNode> = read_tree(read_blob, root, "catalogue root").await?;
        let mut cat = Catalogue::default();
        let mut problems = Vec::new();
        let mut wanted: Vec<ScopeNode> = Vec::new();
        for node in root_tree.nodes.into_iter().filter(|n| want(&n.name)) {
            // The node's name decides where its objects go; a scope that
            // says otherwise is a catalogue no backup writes.
            let expected = if node.name == CLUSTER_NODE {
                "cluster"
            } else {
                "namespace"
            };
            if node.scope == expected {
                wanted.push(node);
            } else {
                problems.push(Problem {
                    message: format!(
                        "the catalogue gives {} the scope `{}` where it must be `{expected}`; \
                         nothing under it is read",
                        node.name, node.scope
                    ),
                    path: node.name,
                });
            }
        }
        // Level 2: the type lists of each wanted scope.
        let scopes: Vec<(ScopeNode, Result<Tree<TypeNode>, RepoError>)> =
            futures::stream::iter(wanted)
                .map(|node| async move {
                    let what = format!("type list of {}", node.name);
                    let tree = read_tree(read_blob, &node.subtree, &what).await;
                    (node, tree)
                })
                .buffered(READ_PARALLEL)
                .collect()
                .await;
        let mut type_reads = Vec::new();
        for (node, tree) in scopes {
            let cluster = node.name == CLUSTER_NODE;
            if !cluster {
                let entry = cat.namespaces.entry(node.name.clone()).or_default();
                entry.object = node.content.first().copied();
            }
            match tree {
                Ok(t) => {
                    for tn in t.nodes {
                        type_reads.push((cluster, node.name.clone(), tn));
                    }
                }
                Err(e) => problems.push(Problem {
                    path: node.name.clone(),
                    message: e.to_string(),
                }),
            }
        }
        // Level 3: the objects of each type.
        let lists: Vec<_> = futures::stream::iter(type_reads)
            .map(|(cluster, scope, tn)| async move {
                let what = format!("object list of {} in {scope}", tn.name);
                let tree: Result<Tree<ObjectNode>, _> =
                    read_tree(read_blob, &tn.subtree, &what).await;
                (cluster, scope, tn, tree)
            })
            .buffered(READ_PARALLEL)
            .collect()
            .await;
        for (cluster, scope, tn, tree) in lists {
            let rt = ResourceType {
                group: tn.group,
                version: tn.version,
                kind: tn.kind,
                plural: tn.plural,
                namespaced: tn.namespaced,
            };
            let tree = match tree {
                Ok(t) => t,
                Err(e) => {
                    problems.push(Problem {
                        path: format!("{scope}/{}", tn.name),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            for on in tree.nodes {
                let Some(id) = on.content.first().copied() else {
                    problems.push(Problem {
                        path: format!("{scope}/{}/{}", tn.name, on.name),
                        message: "catalogue entry without an object blob".into(),
                    });
                    continue;
                };
                let ns = (!cluster).then_some(scope.as_str());
                cat.insert(ns, &rt, &on.name, id);
            }
        }
        Ok((cat, problems))
    }
}

async fn write_types(writer: &Writer, types: &TypeMap) -> Result<BlobId, RepoError> {
    let mut nodes = Vec::with_capacity(types.len());
    for (name, t) in types {
        let objects = Tree {
            nodes: t
                .objects
                .iter()
                .map(|(n, id)| ObjectNode {
                    name: n.clone(),
                    content: vec![*id],
                })
                .collect(),
        };
        nodes.push(TypeNode {
            name: name.clone(),
            group: t.rt.group.clone(),
            version: t.rt.version.clone(),
            kind: t.rt.kind.clone(),
            plural: t.rt.plural.clone(),
            namespaced: t.rt.namespaced,
            count: t.objects.len() as u64,
            subtree: add_tree(writer, &objects).await?,
        });
    }
    add_tree(writer, &Tree { nodes }).await
}

async fn add_tree<N: Serialize>(writer: &Writer, tree: &Tree<N>) -> Result<BlobId, RepoError> {
    let json = serde_json::to_vec(tree).expect("trees serialise");
    Ok(writer.add(BlobKind::Tree, Bytes::from(json)).await?.0)
}

async fn read_tree<N, F, Fut>(read_blob: &F, id: &BlobId, what: &str) -> Result<Tree<N>, RepoError>
where
    N: serde::de::DeserializeOwned,
    F: Fn(BlobId) -> Fut,
    Fut: Future<Output = Result<Bytes, RepoError>>,
{
    let bytes = read_blob(*id).await?;
    serde_json::from_slice(&bytes).map_err(|e| RepoError::Format {
        key: format!("tree {id}"),
        reason: format!("{what} is not a catalogue tree: {e}"),
    })
}

/// Reads all objects of a catalogue concurrently; for tests and tools.
pub async fn read_objects(
    repo: &Repository,
    ids: impl IntoIterator<Item = BlobId>,
) -> Result<Vec<Bytes>, RepoError> {
    futures::stream::iter(ids)
        .map(|id| async move { repo.read_blob(&id).await })
        .buffered(READ_PARALLEL)
        .try_collect()
        .await
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Compression, Secret};
    use crate::repo::KeyParams;
    use crate::repo::OpenOptions;
    use crate::repo::backend::{Backend, MemBackend};
    use std::sync::Arc;

    pub(crate) async fn mem_repo() -> Repository {
        let mem: Arc<dyn Backend> = Arc::new(MemBackend::new());
        OpenOptions::new(mem, &Secret::new("pw"))
            .compression(Compression::FAST)
            .key_params(KeyParams::insecure_for_tests(1))
            .create()
            .await
            .unwrap()
    }

    fn cm() -> ResourceType {
        ResourceType {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
            namespaced: true,
        }
    }

    fn crd() -> ResourceType {
        ResourceType {
            group: "apiextensions.k8s.io".into(),
            version: "v1".into(),
            kind: "CustomResourceDefinition".into(),
            plural: "customresourcedefinitions".into(),
            namespaced: false,
        }
    }

    #[tokio::test]
    async fn round_trip_and_dedup() {
        let repo = mem_repo().await;
        let w = repo.writer(1);
        let obj = |s: &'static str| async {
            w.add(BlobKind::Object, Bytes::from_static(s.as_bytes()))
                .await
                .unwrap()
                .0
        };
        let mut cat = Catalogue::default();
        cat.insert(Some("a"), &cm(), "one", obj("1").await);
        cat.insert(Some("a"), &cm(), "two", obj("2").await);
        cat.insert(Some("b"), &cm(), "one", obj("3").await);
        cat.set_namespace_object("a", obj("ns-a").await);
        cat.insert(None, &crd(), "widgets.example.com", obj("crd").await);
        let root = cat.write(&w).await.unwrap();
        w.finish().await.unwrap();
        assert_eq!(cat.len(), 5);
        assert_eq!(cat.counts()["configmaps"], 3);

        let (back, problems) = Catalogue::read(&repo, &root, |_| true).await.unwrap();
        assert!(problems.is_empty());
        assert_eq!(back, cat);

        // Filtered: only namespace b below the root.
        let (only_b, _) = Catalogue::read(&repo, &root, |n| n == "b").await.unwrap();
        assert_eq!(only_b.namespaces.len(), 1);
        assert!(only_b.cluster.is_empty());

        // The same content gives the same root: nothing new is stored.
        let w2 = repo.writer(1);
        let root2 = cat.write(&w2).await.unwrap();
        assert_eq!(root, root2);
        assert_eq!(w2.finish().await.unwrap().blobs_new, 0);
    }

    #[tokio::test]
    async fn tree_json_follows_the_walker_convention() {
        let repo = mem_repo().await;
        let w = repo.writer(1);
        let id = w
            .add(BlobKind::Object, Bytes::from_static(b"{}"))
            .await
            .unwrap()
            .0;
        let mut cat = Catalogue::default();
        cat.insert(Some("a"), &cm(), "x", id);
        let root = cat.write(&w).await.unwrap();
        w.finish().await.unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&repo.read_blob(&root).await.unwrap()).unwrap();
        let nodes = v["nodes"].as_array().unwrap();
        assert_eq!(nodes[0]["name"], "_cluster");
        assert_eq!(nodes[1]["name"], "a");
        let types: serde_json::Value = serde_json::from_slice(
            &repo
                .read_blob(&nodes[1]["subtree"].as_str().unwrap().parse().unwrap())
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(types["nodes"][0]["name"], "configmaps");
        assert_eq!(types["nodes"][0]["count"], 1);
        let objs: serde_json::Value = serde_json::from_slice(
            &repo
                .read_blob(
                    &types["nodes"][0]["subtree"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap(),
                )
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(objs["nodes"][0]["content"][0], id.to_hex());
    }

    /// Cluster-scoped objects live under `_cluster` only: a namespace node
    /// that claims the cluster scope (or the reverse) is not read.
    #[tokio::test]
    async fn a_node_whose_scope_disagrees_with_its_name_is_a_problem() {
        let repo = mem_repo().await;
        let w = repo.writer(1);
        let id = w
            .add(BlobKind::Object, Bytes::from_static(b"{}"))
            .await
            .unwrap()
            .0;
        let mut inner = Catalogue::default();
        inner.insert(None, &crd(), "widgets.example.com", id);
        let types = write_types(&w, &inner.cluster).await.unwrap();
        let root = serde_json::json!({ "nodes": [
            { "name": "_cluster", "scope": "namespace", "subtree": types.to_hex() },
            { "name": "shop", "scope": "cluster", "subtree": types.to_hex() },
        ]});
        let root_id = w
            .add(BlobKind::Tree, Bytes::from(root.to_string()))
            .await
            .unwrap()
            .0;
        w.finish().await.unwrap();
        let (cat, problems) = Catalogue::read(&repo, &root_id, |_| true).await.unwrap();
        assert!(
            cat.cluster.is_empty() && cat.namespaces.is_empty(),
            "{cat:?}"
        );
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["_cluster", "shop"]);
        assert!(
            problems[1].message.contains("scope `cluster`"),
            "{}",
            problems[1].message
        );
    }

    #[tokio::test]
    async fn a_bad_subtree_is_a_problem_not_a_failure() {
        let repo = mem_repo().await;
        let w = repo.writer(1);
        let bogus = w
            .add(BlobKind::Tree, Bytes::from_static(b"not json"))
            .await
            .unwrap()
            .0;
        let good = Catalogue::default();
        let mut root: serde_json::Value = serde_json::json!({ "nodes": [
            { "name": "broken", "scope": "namespace", "subtree": bogus.to_hex() },
        ]});
        let empty_types = write_types(&w, &good.cluster).await.unwrap();
        root["nodes"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
                { "name": "fine", "scope": "namespace", "subtree": empty_types.to_hex() }
            ));
        let root_id = w
            .add(BlobKind::Tree, Bytes::from(root.to_string()))
            .await
            .unwrap()
            .0;
        w.finish().await.unwrap();
        let (cat, problems) = Catalogue::read(&repo, &root_id, |_| true).await.unwrap();
        assert!(cat.namespaces.contains_key("fine"));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "broken");
        assert!(problems[0].message.contains("not a catalogue tree"));
    }
}
