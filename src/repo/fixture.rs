//! Small snapshots built by hand, following the tree convention of
//! [`super::walk`], for the tests of `check`, `prune` and `copy` (unit and
//! integration). Not the archiver: no metadata beyond names and sizes.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::{
    BlobId, BlobKind, RepoError, Repository, SnapshotId, SnapshotManifest, VolumeEntry, Writer,
};

/// `n` files of `size` bytes under `dir/`, unique to `seed`, spread over
/// two subdirectories so trees have some depth.
pub fn files(seed: u64, n: usize, size: usize) -> Files {
    (0..n)
        .map(|i| {
            (
                format!("dir/s{seed}/sub{}/f{i}", i % 2),
                bytes(size, seed * 1000 + i as u64),
            )
        })
        .collect()
}

/// Deterministic, incompressible test data.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

/// Files by path (`dir/sub/name`) and content.
pub type Files = Vec<(String, Vec<u8>)>;

enum Entry {
    File(Vec<u8>),
    Dir(BTreeMap<String, Entry>),
}

fn insert(dir: &mut BTreeMap<String, Entry>, path: &str, data: &[u8]) {
    match path.split_once('/') {
        None => {
            dir.insert(path.to_string(), Entry::File(data.to_vec()));
        }
        Some((head, rest)) => {
            let sub = dir
                .entry(head.to_string())
                .or_insert_with(|| Entry::Dir(BTreeMap::new()));
            if let Entry::Dir(d) = sub {
                insert(d, rest, data);
            }
        }
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

fn store_dir<'a>(
    w: &'a Writer,
    dir: &'a BTreeMap<String, Entry>,
    chunk: usize,
) -> BoxFuture<'a, Result<BlobId, RepoError>> {
    Box::pin(async move {
        let mut nodes = Vec::new();
        for (name, e) in dir {
            match e {
                Entry::File(data) => {
                    let mut content = Vec::new();
                    for piece in data.chunks(chunk.max(1)) {
                        let (id, _) = w.add(BlobKind::Data, Bytes::copy_from_slice(piece)).await?;
                        content.push(id.to_hex());
                    }
                    nodes.push(serde_json::json!({
                        "name": name, "type": "file", "size": data.len(), "content": content,
                    }));
                }
                Entry::Dir(d) => {
                    let id = store_dir(w, d, chunk).await?;
                    nodes.push(serde_json::json!({
                        "name": name, "type": "dir", "subtree": id.to_hex(),
                    }));
                }
            }
        }
        let json = serde_json::to_vec(&serde_json::json!({ "nodes": nodes })).expect("json");
        Ok(w.add(BlobKind::Tree, Bytes::from(json)).await?.0)
    })
}

/// Stores `files` as a tree (directories become subtrees, content is cut
/// into `chunk`-byte Data blobs); returns the root tree.
pub async fn store_files(
    w: &Writer,
    files: &[(String, Vec<u8>)],
    chunk: usize,
) -> Result<BlobId, RepoError> {
    let mut root = BTreeMap::new();
    for (path, data) in files {
        insert(&mut root, path, data);
    }
    store_dir(w, &root, chunk).await
}

/// Stores a resource catalogue: one Object blob per object, in one tree.
pub async fn store_objects(w: &Writer, objects: &[(String, Vec<u8>)]) -> Result<BlobId, RepoError> {
    let mut nodes = Vec::new();
    for (name, json) in objects {
        let (id, _) = w
            .add(BlobKind::Object, Bytes::copy_from_slice(json))
            .await?;
        nodes.push(serde_json::json!({ "name": name, "content": [id.to_hex()] }));
    }
    let json = serde_json::to_vec(&serde_json::json!({ "nodes": nodes })).expect("json");
    Ok(w.add(BlobKind::Tree, Bytes::from(json)).await?.0)
}

fn read_dir<'a>(
    repo: &'a Repository,
    tree: BlobId,
    prefix: String,
    out: &'a mut Files,
) -> BoxFuture<'a, Result<(), RepoError>> {
    Box::pin(async move {
        let data = repo.read_blob(&tree).await?;
        let doc: serde_json::Value =
            serde_json::from_slice(&data).map_err(|e| RepoError::format("tree", e.to_string()))?;
        for node in doc["nodes"].as_array().cloned().unwrap_or_default() {
            let name = node["name"].as_str().unwrap_or("?");
            let path = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            if let Some(sub) = node["subtree"].as_str() {
                let id: BlobId = sub
                    .parse()
                    .map_err(|e: super::ParseIdError| RepoError::format("tree", e.to_string()))?;
                read_dir(repo, id, path, out).await?;
            } else {
                let mut content = Vec::new();
                for c in node["content"].as_array().cloned().unwrap_or_default() {
                    let id: BlobId = c.as_str().unwrap_or_default().parse().map_err(
                        |e: super::ParseIdError| RepoError::format("tree", e.to_string()),
                    )?;
                    content.extend_from_slice(&repo.read_blob(&id).await?);
                }
                out.push((path, content));
            }
        }
        Ok(())
    })
}

/// Reads back the files of a tree stored by [`store_files`], sorted by path.
pub async fn read_files(repo: &Repository, root: BlobId) -> Result<Files, RepoError> {
    let mut out = Vec::new();
    read_dir(repo, root, String::new(), &mut out).await?;
    out.sort();
    Ok(out)
}

/// A snapshot part with one volume `data` holding `files` and a resource
/// catalogue of one object naming the run: stores the trees, flushes the
/// writer, saves the manifest.
#[allow(clippy::too_many_arguments)]
pub async fn save_part(
    repo: &Repository,
    w: &Writer,
    run_id: &str,
    part: u32,
    parts: u32,
    plan: &str,
    time: jiff::Timestamp,
    files: &[(String, Vec<u8>)],
) -> Result<SnapshotId, RepoError> {
    let root = store_files(w, files, 16 << 10).await?;
    let object = format!(r#"{{"kind":"ConfigMap","metadata":{{"name":"{run_id}-{part}"}}}}"#);
    let resources =
        store_objects(w, &[(format!("configmaps/{run_id}"), object.into_bytes())]).await?;
    w.flush().await?;
    let mut m = SnapshotManifest::new(run_id, part, parts, plan);
    m.time = time;
    m.resources = Some(resources);
    m.volumes.insert(
        "data".into(),
        VolumeEntry {
            root,
            stats: serde_json::json!({
                "files": files.len(),
                "bytes": files.iter().map(|f| f.1.len()).sum::<usize>(),
            }),
        },
    );
    repo.save_snapshot(&m).await
}

/// The files of a snapshot's `data` volume.
pub async fn read_part(repo: &Repository, id: &SnapshotId) -> Result<Files, RepoError> {
    let m = repo.load_snapshot(id).await?;
    let root = m
        .volumes
        .get("data")
        .ok_or_else(|| RepoError::format("snapshot", "no data volume"))?
        .root;
    read_files(repo, root).await
}
