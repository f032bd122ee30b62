//! The repository: content-addressed, immutable objects on a [`backend::Backend`].
//!
//! The stored format is specified in `docs/format.md`. In short: blobs
//! (file chunks, trees, Kubernetes objects) are named by a keyed BLAKE3 of
//! their plaintext, compressed, encrypted, gathered into packs, and listed
//! in index objects; snapshot manifests are written last.

mod adopt;
pub mod backend;
mod blob;
pub mod check;
mod checkpoint;
pub mod copy;
pub(crate) mod crypto;
mod error;
mod filter;
#[doc(hidden)]
pub mod fixture;
mod id;
pub(crate) mod index;
mod keys;
pub mod lock;
mod mover;
mod open;
pub(crate) mod pack;
pub mod prune;
pub(crate) mod snapshot;
pub mod walk;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::{Compression, Secret};
use backend::Backend;
use crypto::{MAX_BLOB_LEN, MAX_META_LEN, MasterKey, OpenError, kind};
use index::Index;

pub use adopt::Adopted;
pub use checkpoint::{CheckpointHeader, PREFIX as CHECKPOINT_PREFIX};
pub use error::RepoError;
pub use filter::RunFilter;
pub use id::{BlobId, BlobKind, PackId, ParseIdError, SnapshotId};
pub use index::IndexFile;
pub use keys::{KeyParams, MIN_ITERATIONS};
pub use mover::{MoverResult, PREFIX as MOVER_PREFIX};
pub use open::OpenOptions;
pub use pack::IndexEntry;
pub use pack::PACK_TARGET;
pub use snapshot::{
    MIN_PREFIX, Run, SnapshotManifest, SnapshotRef, SnapshotRefError, SnapshotStatus, VolumeEntry,
    group_runs, snapshot_key,
};
pub use writer::{CHECKPOINT_EVERY, WriteStats, Writer};

const CONFIG_KEY: &str = "config";
const CONFIG_VERSION: u32 = 1;
/// Metadata objects fetched at once when opening or listing.
const META_PARALLEL: usize = 8;

/// Content-defined chunking parameters, fixed per repository so that the
/// same file always cuts into the same chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk, in bytes (except a file's last).
    pub min: u32,
    /// Target average chunk size, in bytes.
    pub avg: u32,
    /// Largest chunk, in bytes.
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self {
            min: 256 << 10,
            avg: 1 << 20,
            max: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RepoConfig {
    version: u32,
    id: String,
    chunker: ChunkerParams,
    created: jiff::Timestamp,
}

/// An opened repository. Cheap to clone; clones share the in-memory index.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    location: String,
    master: MasterKey,
    /// The key object this process opened the repository with.
    key_id: String,
    /// For keys added by this process.
    key_params: KeyParams,
    config: RepoConfig,
    compression: Compression,
    index: RwLock<Index>,
    /// Keys of the index objects the in-memory index was loaded from.
    index_keys: RwLock<BTreeSet<String>>,
    /// Writer markers this process put (see [`Repository::announce_writer`]).
    markers: Mutex<Vec<String>>,
    /// Cores this process may use.
    cores: usize,
    /// Bounds CPU-heavy work (sealing, opening, hashing packs) to the
    /// cores we have, so the blocking pool does not grow a thread per blob.
    cpu: Arc<Semaphore>,
    /// Packs a writer stores before it lists them in an index object: what
    /// a crash can lose (`STOW_RESUME_BUFFER`).
    packs_per_index: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.inner.location)
            .field("id", &self.inner.config.id)
            .field("key_id", &self.inner.key_id)
            .finish_non_exhaustive()
    }
}

/// Runs CPU-heavy work off the async workers.
async fn run_blocking<T: Send + 'static>(
    location: &str,
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RepoError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RepoError::Internal {
            location: location.to_string(),
            what,
            reason: e.to_string(),
        })
}

fn open_error(key: &str, blob: Option<&BlobId>, e: OpenError) -> RepoError {
    match e {
        OpenError::Format(reason) => RepoError::format(key, reason),
        OpenError::Corrupt(reason) => RepoError::corrupt(key, blob, reason),
    }
}

/// Checks that an object named by the BLAKE3 of its content still matches.
fn check_content_name(key: &str, prefix: &str, bytes: &[u8]) -> Result<(), RepoError> {
    let name = key.strip_prefix(prefix).unwrap_or(key);
    if blake3::hash(bytes).to_hex().as_str() != name {
        return Err(RepoError::corrupt(
            key,
            None,
            "content does not match its name (BLAKE3)",
        ));
    }
    Ok(())
}

impl Repository {
    pub(super) async fn init_from(
        backend: Arc<dyn Backend>,
        password: &Secret,
        compression: Compression,
        params: KeyParams,
        material: [u8; crypto::MASTER_LEN],
        chunker: ChunkerParams,
    ) -> Result<Repository, RepoError> {
        let location = backend.location();
        if backend.exists(CONFIG_KEY).await? {
            return Err(RepoError::AlreadyExists { location });
        }
        let pw = password.expose().to_string();
        let (master, key_id, key_bytes) = run_blocking(&location, "deriving a key", move || {
            let master = MasterKey::from_bytes(&material);
            let (id, bytes) = keys::create(&master, &pw, params);
            (master, id, bytes)
        })
        .await?;
        backend.put(&keys::object_key(&key_id), key_bytes).await?;
        let config = RepoConfig {
            version: CONFIG_VERSION,
            id: hex::encode(crypto::random::<32>()),
            chunker,
            created: jiff::Timestamp::now(),
        };
        let json = serde_json::to_vec(&config).expect("config serialises");
        // `config` last: its presence is what makes a location a repository.
        let sealed = master.seal(kind::CONFIG, compression, &json);
        backend.put(CONFIG_KEY, Bytes::from(sealed)).await?;
        tracing::info!(%location, repository = %config.id, "initialised repository");
        Ok(Self::assemble(
            backend,
            location,
            master,
            key_id,
            params,
            config,
            compression,
            Index::default(),
        ))
    }

    pub(super) async fn open_inner(
        backend: Arc<dyn Backend>,
        password: &Secret,
        compression: Compression,
        params: KeyParams,
        lenient: bool,
    ) -> Result<(Repository, Vec<RepoError>), RepoError> {
        let location = backend.location();
        let config_bytes = match backend.get(CONFIG_KEY).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Err(RepoError::NotInitialised { location }),
            Err(e) => return Err(e.into()),
        };
        let mut key_objects = backend.list(keys::PREFIX).await?;
        if key_objects.is_empty() {
            return Err(RepoError::format(
                keys::PREFIX,
                "`config` exists but there is no key object",
            ));
        }
        key_objects.sort_by(|a, b| a.key.cmp(&b.key));
        let (mut unreadable, mut unreadable_count, mut unlocked) = (None, 0, false);
        for obj in &key_objects {
            let bytes = backend.get(&obj.key).await?;
            let (key, pw) = (obj.key.clone(), password.expose().to_string());
            let master = match run_blocking(&location, "deriving a key", move || {
                keys::unlock(&key, &bytes, &pw)
            })
            .await?
            {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping key object");
                    unreadable.get_or_insert(e);
                    unreadable_count += 1;
                    continue;
                }
            };
            unlocked = true;
            // A key left by an interrupted `init` unlocks but belongs to
            // another master key; only the one that opens `config` counts.
            let plain = match master.open(kind::CONFIG, config_bytes.clone(), MAX_META_LEN) {
                Ok(p) => p,
                Err(_) => continue,
            };
            let config = parse_config(&plain)?;
            let key_id = obj.key[keys::PREFIX.len()..].to_string();
            let repo = Self::assemble(
                backend.clone(),
                location,
                master,
                key_id,
                params,
                config,
                compression,
                Index::default(),
            );
            let errors = repo.load_index(lenient).await?;
            return Ok((repo, errors));
        }
        if unlocked {
            return Err(RepoError::corrupt(
                CONFIG_KEY,
                None,
                "no key that opens with this password decrypts it",
            ));
        }
        match unreadable {
            // Only when no key could even be read is the format the problem.
            Some(e) if unreadable_count == key_objects.len() => Err(e),
            _ => Err(RepoError::WrongPassword { location }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        backend: Arc<dyn Backend>,
        location: String,
        master: MasterKey,
        key_id: String,
        key_params: KeyParams,
        config: RepoConfig,
        compression: Compression,
        index: Index,
    ) -> Repository {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Repository {
            inner: Arc::new(Inner {
                backend,
                location,
                master,
                key_id,
                key_params,
                config,
                compression,
                index: RwLock::new(index),
                index_keys: RwLock::new(BTreeSet::new()),
                markers: Mutex::new(Vec::new()),
                cores,
                cpu: Arc::new(Semaphore::new(cores)),
                packs_per_index: std::sync::atomic::AtomicUsize::new(writer::PACKS_PER_INDEX),
            }),
        }
    }

    /// Random id of the repository, from `config`.
    pub fn id(&self) -> &str {
        &self.inner.config.id
    }

    /// Human-readable location of the storage, for messages.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// The storage the repository lives in.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The master key's bytes, for a repository that shares its blob ids.
    fn master_material(&self) -> &[u8] {
        self.inner.master.material()
    }

    /// The repository's chunking parameters, from `config`.
    pub fn chunker_params(&self) -> ChunkerParams {
        self.inner.config.chunker
    }

    /// Whether `other` computes the same blob ids: same id key and chunker
    /// parameters (see [`init_sharing_ids`](Self::init_sharing_ids)).
    pub fn shares_ids_with(&self, other: &Repository) -> bool {
        let (a, b) = (
            &self.inner.master.material()[32..],
            &other.inner.master.material()[32..],
        );
        a == b && self.chunker_params() == other.chunker_params()
    }

    /// Cores this process may use: the bound on its CPU-heavy work.
    pub fn cores(&self) -> usize {
        self.inner.cores
    }

    /// Runs CPU-heavy work (opening packs, parsing trees) on the blocking
    /// pool, at most one task per core.
    pub async fn cpu<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RepoError> {
        self.blocking(what, f).await
    }

    fn seal(&self, kind: u8, plain: &[u8]) -> Vec<u8> {
        self.inner.master.seal(kind, self.inner.compression, plain)
    }

    /// CPU-heavy work on the blocking pool, at most one task per core.
    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RepoError> {
        let _cpu = self.inner.cpu.acquire().await.expect("never closed");
        run_blocking(&self.inner.location, what, f).await
    }
}

/// Object key of a pack: `data/<2 hex>/<id>`.
pub fn pack_key(id: &PackId) -> String {
    pack::pack_key(id)
}

/// The sizes a pack can have whose `entries` sealed blobs take `body`
/// bytes: the body, the sealed header, and its 4-byte length. The sealed
/// header is at most `38 + 4 + 45 × entries` bytes (stored raw) and, being
/// a sealed object, at least 38 (compression can shrink it by an amount
/// only opening it tells).
pub fn pack_size_bounds(body: u64, entries: usize) -> (u64, u64) {
    let overhead = crypto::OVERHEAD as u64;
    let raw_header = 4 + (pack::ENTRY_LEN * entries) as u64;
    (body + 4 + overhead, body + 4 + overhead + raw_header)
}

/// Prefix of pack objects.
pub const DATA_PREFIX: &str = "data/";
/// Prefix of index objects.
pub const INDEX_PREFIX: &str = index::PREFIX;
/// Prefix of snapshot manifests.
pub const SNAPSHOT_PREFIX: &str = snapshot::PREFIX;
/// Prefix of the per-item restore reports (`docs/format.md` §13); prune
/// keeps the blobs they reference.
pub const REPORT_PREFIX: &str = "restores/";

/// The pack a `data/<2 hex>/<id>` key names, if it is one.
pub fn pack_id_from_key(key: &str) -> Option<PackId> {
    let rest = key.strip_prefix(DATA_PREFIX)?;
    let (dir, name) = rest.split_once('/')?;
    let id: PackId = name.parse().ok()?;
    (dir.len() == 2 && name.starts_with(dir)).then_some(id)
}

fn parse_config(plain: &[u8]) -> Result<RepoConfig, RepoError> {
    let config: RepoConfig = serde_json::from_slice(plain)
        .map_err(|e| RepoError::format(CONFIG_KEY, format!("not a repository config: {e}")))?;
    if config.version != CONFIG_VERSION {
        return Err(RepoError::format(
            CONFIG_KEY,
            format!("config version {}", config.version),
        ));
    }
    let c = config.chunker;
    if !(c.min > 0 && c.min <= c.avg && c.avg <= c.max && c.max as usize <= MAX_BLOB_LEN) {
        return Err(RepoError::format(
            CONFIG_KEY,
            format!("chunker sizes {}/{}/{} out of range", c.min, c.avg, c.max),
        ));
    }
    Ok(config)
}
