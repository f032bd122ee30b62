//! The repository: content-addressed, immutable objects on a [`backend::Backend`].
//!
//! The stored format is specified in `docs/format.md`. In short: blobs
//! (file chunks, trees, Kubernetes objects) are named by a keyed BLAKE3 of
//! their plaintext, compressed, encrypted, gathered into packs, and listed
//! in index objects; snapshot manifests are written last.

pub mod backend;
pub mod check;
mod checkpoint;
pub mod copy;
mod crypto;
mod error;
mod filter;
#[doc(hidden)]
pub mod fixture;
mod id;
mod index;
mod keys;
pub mod lock;
mod mover;
mod open;
mod pack;
pub mod prune;
mod snapshot;
pub mod walk;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::{Compression, Secret};
use backend::Backend;
use crypto::{MAX_BLOB_LEN, MAX_META_LEN, MasterKey, OpenError, kind};
use index::Index;

pub use checkpoint::{CheckpointHeader, PREFIX as CHECKPOINT_PREFIX};
pub use error::RepoError;
pub use filter::RunFilter;
pub use id::{BlobId, BlobKind, PackId, ParseIdError, SnapshotId};
pub use index::IndexEntry;
pub use keys::{KeyParams, MIN_ITERATIONS};
pub use mover::{MoverResult, PREFIX as MOVER_PREFIX};
pub use open::OpenOptions;
pub use pack::PACK_TARGET;
pub use snapshot::{
    MIN_PREFIX, Run, SnapshotManifest, SnapshotRef, SnapshotRefError, SnapshotStatus, VolumeEntry,
    group_runs,
};
pub use writer::{CHECKPOINT_EVERY, WriteStats, Writer};

const CONFIG_KEY: &str = "config";
const CONFIG_VERSION: u32 = 1;
/// Metadata objects fetched at once when opening or listing.
const META_PARALLEL: usize = 8;
/// Blobs below this are opened on the calling task.
const INLINE_OPEN: u64 = 64 << 10;

/// Content-defined chunking parameters, fixed per repository so that the
/// same file always cuts into the same chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
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

    /// Writers list their packs in an index object at least every `bytes`
    /// of packs (rounded up to whole packs), so a crashed run that is run
    /// again finds, and does not upload again, all but that much.
    pub fn set_resume_buffer(&self, bytes: u64) {
        let packs = bytes.div_ceil(PACK_TARGET as u64).clamp(1, 1 << 16) as usize;
        self.inner
            .packs_per_index
            .store(packs, std::sync::atomic::Ordering::Relaxed);
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
                cpu: Arc::new(Semaphore::new(cores)),
                packs_per_index: std::sync::atomic::AtomicUsize::new(writer::PACKS_PER_INDEX),
            }),
        }
    }

    /// Loads every index object into the in-memory index. Lenient: skips
    /// unreadable ones and returns their errors.
    async fn load_index(&self, lenient: bool) -> Result<Vec<RepoError>, RepoError> {
        let (files, errors) = self.read_index_objects(lenient).await?;
        let mut ix = Index::default();
        let mut keys = BTreeSet::new();
        for (key, _, packs) in &files {
            for (id, entries) in packs {
                ix.add_pack(*id, entries, true);
            }
            keys.insert(key.clone());
        }
        tracing::debug!(
            location = %self.inner.location,
            index_files = files.len(),
            blobs = ix.len(),
            "loaded index"
        );
        *self.index_mut() = ix;
        *self
            .inner
            .index_keys
            .write()
            .unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(errors)
    }

    /// Reads and decodes every index object: `(key, stored size, packs)`.
    async fn read_index_objects(
        &self,
        lenient: bool,
    ) -> Result<(Vec<(String, u64, index::PackList)>, Vec<RepoError>), RepoError> {
        let objects = self.inner.backend.list(index::PREFIX).await?;
        let mut files = futures::stream::iter(objects)
            .map(|obj| async move {
                let result = async {
                    let bytes = self.inner.backend.get(&obj.key).await?;
                    let size = bytes.len() as u64;
                    let repo = self.clone();
                    let key = obj.key.clone();
                    self.blocking("reading an index", move || {
                        check_content_name(&key, index::PREFIX, &bytes)?;
                        let plain = repo
                            .inner
                            .master
                            .open(kind::INDEX, bytes, MAX_META_LEN)
                            .map_err(|e| open_error(&key, None, e))?;
                        index::decode(&plain).map_err(|(format, reason)| {
                            if format {
                                RepoError::format(&key, reason)
                            } else {
                                RepoError::corrupt(&key, None, reason)
                            }
                        })
                    })
                    .await?
                    .map(|packs| (size, packs))
                }
                .await;
                (obj.key, result)
            })
            .buffer_unordered(META_PARALLEL);
        let (mut ok, mut errors) = (Vec::new(), Vec::new());
        while let Some((key, result)) = files.next().await {
            match result {
                Ok((size, packs)) => ok.push((key, size, packs)),
                // A backend failure is not damage: never skip over it.
                Err(e @ RepoError::Backend(_)) => return Err(e),
                Err(e) if lenient => errors.push(e),
                Err(e) => return Err(e),
            }
        }
        ok.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((ok, errors))
    }

    /// Every index object as stored now, decoded. Fails on the first one
    /// that cannot be read.
    pub async fn read_index_files(&self) -> Result<Vec<IndexFile>, RepoError> {
        Ok(self.read_index_files_lenient(false).await?.0)
    }

    /// [`read_index_files`](Self::read_index_files); when `lenient`,
    /// unreadable objects are returned as errors instead.
    pub async fn read_index_files_lenient(
        &self,
        lenient: bool,
    ) -> Result<(Vec<IndexFile>, Vec<RepoError>), RepoError> {
        let (files, errors) = self.read_index_objects(lenient).await?;
        Ok((files.into_iter().map(IndexFile::from_raw).collect(), errors))
    }

    /// Re-reads every index object and replaces the in-memory index with
    /// them, keeping packs this process uploaded but has not indexed yet.
    /// Returns the objects read, so a caller (prune) sees exactly the index
    /// it works with.
    pub async fn reload_index(&self) -> Result<Vec<IndexFile>, RepoError> {
        self.reload_index_excluding(&HashSet::new()).await
    }

    async fn reload_index_excluding(
        &self,
        exclude: &HashSet<PackId>,
    ) -> Result<Vec<IndexFile>, RepoError> {
        let (files, _) = self.read_index_objects(false).await?;
        let mut ix = Index::default();
        let mut keys = BTreeSet::new();
        for (key, _, packs) in &files {
            for (id, entries) in packs {
                if !exclude.contains(id) {
                    ix.add_pack(*id, entries, true);
                }
            }
            keys.insert(key.clone());
        }
        {
            let mut current = self.index_mut();
            ix.merge_unpersisted(&current);
            *current = ix;
        }
        *self
            .inner
            .index_keys
            .write()
            .unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(files.into_iter().map(IndexFile::from_raw).collect())
    }

    /// Announces a backup (or copy) that is about to write: puts a writer
    /// marker `locks/writer-<run id>-<random>` with the current time, then
    /// drops from this process's dedup index every pack that a pending
    /// prune mark lists (and reloads the index when a prune has deleted
    /// index objects since it was loaded). Call it after opening and before
    /// adding blobs. Together with the rules of `prune`, this guarantees
    /// that a concurrent prune never deletes data this writer references;
    /// see "Pruning safety" in `docs/format.md`. A writer that runs longer
    /// than [`lock::WRITER_MAX_AGE`] must announce again.
    pub async fn announce_writer(&self, run_id: &str) -> Result<(), RepoError> {
        let key = lock::put_writer_marker(self, run_id).await?;
        self.inner
            .markers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(key);
        // Marks first, then the index listing: a mark is deleted only after
        // the index objects it supersedes, so whatever we miss in one
        // listing shows in the other.
        let marked = lock::marked_packs(self).await?;
        let now: BTreeSet<String> = self
            .inner
            .backend
            .list(index::PREFIX)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let vanished = self
            .inner
            .index_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|k| !now.contains(k));
        if vanished || !marked.is_empty() {
            tracing::info!(
                marked_packs = marked.len(),
                vanished_index_objects = vanished,
                "a prune is pending; reloading the index without the packs it marked"
            );
            self.reload_index_excluding(&marked).await?;
        }
        Ok(())
    }

    /// Deletes the writer markers this process put. Call it only after the
    /// last snapshot manifest was saved (prune also removes markers of
    /// complete runs and stale ones).
    pub async fn retire_writer(&self) -> Result<(), RepoError> {
        let keys =
            std::mem::take(&mut *self.inner.markers.lock().unwrap_or_else(|e| e.into_inner()));
        for key in keys {
            self.inner.backend.delete(&key).await?;
        }
        Ok(())
    }

    /// Adds a key object for another password; returns its id.
    pub async fn add_key(&self, new_password: &Secret) -> Result<String, RepoError> {
        let material = *self.inner.master.material();
        let (pw, params) = (new_password.expose().to_string(), self.inner.key_params);
        let (id, bytes) = self
            .blocking("deriving a key", move || {
                keys::create(&MasterKey::from_bytes(&material), &pw, params)
            })
            .await?;
        self.inner
            .backend
            .put(&keys::object_key(&id), bytes)
            .await?;
        Ok(id)
    }

    /// Deletes a key object. Refuses the key this process opened the
    /// repository with, and the last key.
    pub async fn remove_key(&self, key_id: &str) -> Result<(), RepoError> {
        let refuse = |reason: &str| RepoError::KeyRemoval {
            location: self.inner.location.clone(),
            key_id: key_id.to_string(),
            reason: reason.to_string(),
        };
        let ids = self.list_keys().await?;
        if !ids.iter().any(|k| k == key_id) {
            return Err(refuse("no such key"));
        }
        if ids.len() <= 1 {
            return Err(refuse(
                "it is the last key; the repository would become unreadable",
            ));
        }
        if key_id == self.inner.key_id {
            return Err(refuse(
                "it is the key in use; open the repository with another password to remove it",
            ));
        }
        self.inner.backend.delete(&keys::object_key(key_id)).await?;
        Ok(())
    }

    /// Ids of all key objects.
    pub async fn list_keys(&self) -> Result<Vec<String>, RepoError> {
        let mut ids: Vec<String> = self
            .inner
            .backend
            .list(keys::PREFIX)
            .await?
            .into_iter()
            .map(|o| o.key[keys::PREFIX.len()..].to_string())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The key object this process opened the repository with.
    pub fn key_id(&self) -> &str {
        &self.inner.key_id
    }

    /// Random id of the repository, from `config`.
    pub fn id(&self) -> &str {
        &self.inner.config.id
    }

    pub fn location(&self) -> &str {
        &self.inner.location
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The master key's bytes, for a repository that shares its blob ids.
    fn master_material(&self) -> &[u8] {
        self.inner.master.material()
    }

    pub fn chunker_params(&self) -> ChunkerParams {
        self.inner.config.chunker
    }

    /// Keyed BLAKE3 of `data`: the id it has (or would have) here.
    pub fn blob_id(&self, data: &[u8]) -> BlobId {
        self.inner.master.blob_id(data)
    }

    /// Whether the blob is stored: listed in a loaded index, or in a pack
    /// this process has uploaded.
    pub fn has_blob(&self, id: &BlobId) -> bool {
        self.index().contains(id)
    }

    /// Whether the blob is listed in a stored index object, so a reopened
    /// repository (a rerun after a crash) finds it.
    pub fn is_durable(&self, id: &BlobId) -> bool {
        self.index().is_persisted(id)
    }

    pub fn index_entry(&self, id: &BlobId) -> Option<IndexEntry> {
        self.index().get(id)
    }

    /// A snapshot of every index entry (about 100 bytes per blob while it
    /// lives), for `check` and `prune`.
    pub fn index_entries(&self) -> impl Iterator<Item = (BlobId, IndexEntry)> + use<> {
        self.index().entries().into_iter()
    }

    /// Every pack the index knows.
    pub fn packs(&self) -> Vec<PackId> {
        self.index().packs()
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

    /// A writer that stores every blob it is given, even when the index
    /// already lists it: `prune` copies the used blobs of a pack it
    /// rewrites. Add each blob once.
    pub fn repack_writer(&self, channels: usize) -> Writer {
        Writer::with_force(
            self.clone(),
            channels,
            PACK_TARGET,
            writer::PACKS_PER_INDEX,
            true,
        )
    }

    /// A writer with `channels` concurrent uploads.
    pub fn writer(&self, channels: usize) -> Writer {
        let packs = self
            .inner
            .packs_per_index
            .load(std::sync::atomic::Ordering::Relaxed);
        Writer::new(self.clone(), channels, PACK_TARGET, packs)
    }

    /// A writer with a different pack size, so tests exercise many packs.
    #[doc(hidden)]
    pub fn writer_with(
        &self,
        channels: usize,
        pack_target: usize,
        packs_per_index: usize,
    ) -> Writer {
        Writer::new(self.clone(), channels, pack_target, packs_per_index)
    }

    /// Reads, decrypts and verifies one blob. Never returns data whose
    /// keyed hash differs from `id`.
    pub async fn read_blob(&self, id: &BlobId) -> Result<Bytes, RepoError> {
        let entry = self
            .index_entry(id)
            .ok_or(RepoError::MissingBlob { id: *id })?;
        let key = pack::pack_key(&entry.pack);
        let sealed = self
            .inner
            .backend
            .get_range(&key, entry.offset, entry.length)
            .await?;
        if sealed.len() as u64 != entry.length {
            return Err(RepoError::corrupt(
                &key,
                Some(id),
                format!(
                    "asked for {} bytes at {}, got {}",
                    entry.length,
                    entry.offset,
                    sealed.len()
                ),
            ));
        }
        let (repo, id2) = (self.clone(), *id);
        let verify = move || repo.open_blob(&key, &id2, &entry, sealed);
        if entry.length < INLINE_OPEN {
            verify()
        } else {
            self.blocking("opening a blob", verify).await?
        }
    }

    fn open_blob(
        &self,
        key: &str,
        id: &BlobId,
        entry: &IndexEntry,
        sealed: Bytes,
    ) -> Result<Bytes, RepoError> {
        let data = self
            .inner
            .master
            .open(entry.kind.byte(), sealed, MAX_BLOB_LEN)
            .map_err(|e| open_error(key, Some(id), e))?;
        if data.len() as u64 != entry.raw_length {
            return Err(RepoError::corrupt(
                key,
                Some(id),
                format!("{} bytes, the index says {}", data.len(), entry.raw_length),
            ));
        }
        if self.blob_id(&data) != *id {
            return Err(RepoError::corrupt(
                key,
                Some(id),
                "content does not match the blob id",
            ));
        }
        Ok(data)
    }

    /// A whole pack object.
    pub async fn read_pack(&self, pack: &PackId) -> Result<Bytes, RepoError> {
        Ok(self.inner.backend.get(&pack::pack_key(pack)).await?)
    }

    /// Opens one blob out of a whole pack read with
    /// [`read_pack`](Self::read_pack), verifying it like
    /// [`read_blob`](Self::read_blob). CPU-heavy: call it through
    /// [`cpu`](Self::cpu) for large packs.
    pub fn open_pack_blob(
        &self,
        id: &BlobId,
        entry: &IndexEntry,
        pack_bytes: &Bytes,
    ) -> Result<Bytes, RepoError> {
        let key = pack::pack_key(&entry.pack);
        let end = entry.offset.saturating_add(entry.length);
        if end > pack_bytes.len() as u64 {
            return Err(RepoError::corrupt(
                &key,
                Some(id),
                format!(
                    "blob at {}+{} lies beyond the pack's {} bytes",
                    entry.offset,
                    entry.length,
                    pack_bytes.len()
                ),
            ));
        }
        let sealed = pack_bytes.slice(entry.offset as usize..end as usize);
        self.open_blob(&key, id, entry, sealed)
    }

    /// The header of a whole pack (as read by [`read_pack`](Self::read_pack)):
    /// checks the length field, opens the sealed header and checks that
    /// its entries tile the body.
    pub fn parse_pack(
        &self,
        pack: &PackId,
        pack_bytes: &Bytes,
    ) -> Result<Vec<(BlobId, IndexEntry)>, RepoError> {
        let key = pack::pack_key(pack);
        let size = pack_bytes.len() as u64;
        let corrupt = |reason: String| RepoError::corrupt(&key, None, reason);
        if size < 4 {
            return Err(corrupt(format!("{size} bytes is too short for a pack")));
        }
        let tail: [u8; 4] = pack_bytes[size as usize - 4..].try_into().expect("4 bytes");
        let header_len = u64::from(u32::from_le_bytes(tail));
        if header_len > size - 4 {
            return Err(corrupt(format!(
                "header length {header_len} exceeds the pack size {size}"
            )));
        }
        let body_len = size - 4 - header_len;
        let sealed = pack_bytes.slice(body_len as usize..(size - 4) as usize);
        self.decode_pack_header(pack, &key, sealed, body_len)
    }

    fn decode_pack_header(
        &self,
        pack: &PackId,
        key: &str,
        sealed: Bytes,
        body_len: u64,
    ) -> Result<Vec<(BlobId, IndexEntry)>, RepoError> {
        let plain = self
            .inner
            .master
            .open(kind::PACK_HEADER, sealed, MAX_META_LEN)
            .map_err(|e| open_error(key, None, e))?;
        let entries = pack::parse_header(&plain, body_len)
            .map_err(|reason| RepoError::corrupt(key, None, reason))?;
        Ok(entries
            .into_iter()
            .map(|e| {
                (
                    e.id,
                    IndexEntry {
                        pack: *pack,
                        kind: e.kind,
                        offset: e.offset.into(),
                        length: e.length.into(),
                        raw_length: e.raw_length.into(),
                    },
                )
            })
            .collect())
    }

    /// Writes one index object listing `packs` (which must be stored) and
    /// returns its key. `prune` uses it to keep packs listed whose index
    /// object it removes.
    pub async fn write_index_file(
        &self,
        packs: &[(PackId, Vec<(BlobId, IndexEntry)>)],
    ) -> Result<String, RepoError> {
        let mut list: index::PackList = Vec::with_capacity(packs.len());
        for (pack, entries) in packs {
            let mut out = Vec::with_capacity(entries.len());
            for (id, e) in entries {
                let fits = |v: u64| {
                    u32::try_from(v).map_err(|_| {
                        RepoError::corrupt(&pack::pack_key(pack), Some(id), "offset beyond 4 GiB")
                    })
                };
                out.push(pack::PackEntry {
                    id: *id,
                    kind: e.kind,
                    offset: fits(e.offset)?,
                    length: fits(e.length)?,
                    raw_length: fits(e.raw_length)?,
                });
            }
            out.sort_by_key(|e| e.offset);
            list.push((*pack, out));
        }
        let repo = self.clone();
        let sealed = self
            .blocking("sealing an index", move || {
                repo.seal(kind::INDEX, &index::encode(&list))
            })
            .await?;
        let key = format!("{}{}", index::PREFIX, blake3::hash(&sealed).to_hex());
        self.inner.backend.put(&key, Bytes::from(sealed)).await?;
        Ok(key)
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

    /// The blobs a pack's own header lists, read from the pack's tail.
    pub async fn read_pack_header(
        &self,
        pack: &PackId,
    ) -> Result<Vec<(BlobId, IndexEntry)>, RepoError> {
        let key = pack::pack_key(pack);
        let backend = &self.inner.backend;
        let size = backend
            .head(&key)
            .await?
            .ok_or_else(|| backend::BackendError::NotFound {
                location: self.inner.location.clone(),
                key: key.clone(),
            })?;
        let corrupt = |reason: String| RepoError::corrupt(&key, None, reason);
        if size < 4 {
            return Err(corrupt(format!("{size} bytes is too short for a pack")));
        }
        let tail = backend.get_range(&key, size - 4, 4).await?;
        let header_len = u64::from(u32::from_le_bytes(
            tail[..]
                .try_into()
                .map_err(|_| corrupt("short read".into()))?,
        ));
        if header_len > size - 4 {
            return Err(corrupt(format!(
                "header length {header_len} exceeds the pack size {size}"
            )));
        }
        let body_len = size - 4 - header_len;
        let sealed = backend.get_range(&key, body_len, header_len).await?;
        self.decode_pack_header(pack, &key, sealed, body_len)
    }

    /// Stores a snapshot manifest. Every blob it references directly must
    /// already be listed in a stored index object (flush the writer first),
    /// so a manifest never points at data a reader cannot find.
    pub async fn save_snapshot(
        &self,
        manifest: &SnapshotManifest,
    ) -> Result<SnapshotId, RepoError> {
        {
            let ix = self.index();
            for root in manifest.roots() {
                if !ix.is_persisted(root) {
                    return Err(if ix.contains(root) {
                        RepoError::NotFlushed { id: *root }
                    } else {
                        RepoError::MissingBlob { id: *root }
                    });
                }
            }
        }
        let mut manifest = manifest.clone();
        manifest.status = SnapshotStatus::Complete;
        let json = serde_json::to_vec(&manifest).expect("manifest serialises");
        let sealed = self.seal(kind::SNAPSHOT, &json);
        let id = SnapshotId(*blake3::hash(&sealed).as_bytes());
        self.inner
            .backend
            .put(&snapshot_key(&id), Bytes::from(sealed))
            .await?;
        Ok(id)
    }

    pub async fn load_snapshot(&self, id: &SnapshotId) -> Result<SnapshotManifest, RepoError> {
        let key = snapshot_key(id);
        let bytes = self.inner.backend.get(&key).await?;
        self.decode_snapshot(&key, bytes)
    }

    fn decode_snapshot(&self, key: &str, bytes: Bytes) -> Result<SnapshotManifest, RepoError> {
        check_content_name(key, snapshot::PREFIX, &bytes)?;
        let plain = self
            .inner
            .master
            .open(kind::SNAPSHOT, bytes, MAX_META_LEN)
            .map_err(|e| open_error(key, None, e))?;
        serde_json::from_slice(&plain)
            .map_err(|e| RepoError::format(key, format!("not a snapshot manifest: {e}")))
    }

    /// Every snapshot manifest, oldest first. Fails naming the first object
    /// that is damaged.
    pub async fn list_snapshots(&self) -> Result<Vec<(SnapshotId, SnapshotManifest)>, RepoError> {
        let objects = self.inner.backend.list(snapshot::PREFIX).await?;
        let mut all: Vec<(SnapshotId, SnapshotManifest)> = futures::stream::iter(objects)
            .map(|obj| async move {
                let id: SnapshotId = obj.key[snapshot::PREFIX.len()..]
                    .parse()
                    .map_err(|_| RepoError::format(&obj.key, "not named by a snapshot id"))?;
                let bytes = self.inner.backend.get(&obj.key).await?;
                Ok::<_, RepoError>((id, self.decode_snapshot(&obj.key, bytes)?))
            })
            .buffer_unordered(META_PARALLEL)
            .try_collect()
            .await?;
        all.sort_by_key(|s| (s.1.time, s.0));
        Ok(all)
    }

    /// Every snapshot manifest that can be read, oldest first, and an error
    /// for each one that cannot (for `check` and `list`).
    pub async fn list_snapshots_lenient(
        &self,
    ) -> Result<(Vec<(SnapshotId, SnapshotManifest)>, Vec<RepoError>), RepoError> {
        let objects = self.inner.backend.list(snapshot::PREFIX).await?;
        let results: Vec<Result<(SnapshotId, SnapshotManifest), RepoError>> =
            futures::stream::iter(objects)
                .map(|obj| async move {
                    let id: SnapshotId = obj.key[snapshot::PREFIX.len()..]
                        .parse()
                        .map_err(|_| RepoError::format(&obj.key, "not named by a snapshot id"))?;
                    let bytes = self.inner.backend.get(&obj.key).await?;
                    Ok((id, self.decode_snapshot(&obj.key, bytes)?))
                })
                .buffer_unordered(META_PARALLEL)
                .collect()
                .await;
        let (mut all, mut errors) = (Vec::new(), Vec::new());
        for r in results {
            match r {
                Ok(s) => all.push(s),
                Err(e @ RepoError::Backend(_)) => return Err(e),
                Err(e) => errors.push(e),
            }
        }
        all.sort_by_key(|s| (s.1.time, s.0));
        Ok((all, errors))
    }

    /// Deletes one snapshot manifest (only `prune` does this).
    pub async fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), RepoError> {
        Ok(self.inner.backend.delete(&snapshot_key(id)).await?)
    }

    /// Snapshots grouped by run, oldest first, each marked complete or not.
    pub async fn complete_runs(&self) -> Result<Vec<Run>, RepoError> {
        Ok(snapshot::group_runs(self.list_snapshots().await?))
    }

    // Internals shared with the writer.

    fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.inner.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn index_mut(&self) -> RwLockWriteGuard<'_, Index> {
        self.inner.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn seal(&self, kind: u8, plain: &[u8]) -> Vec<u8> {
        self.inner.master.seal(kind, self.inner.compression, plain)
    }

    fn finish_pack(&self, segments: Vec<Vec<u8>>, entries: &[pack::PackEntry]) -> (PackId, Bytes) {
        pack::finish(
            &self.inner.master,
            self.inner.compression,
            segments,
            entries,
        )
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

/// Object key of a snapshot manifest: `snapshots/<id>`.
pub fn snapshot_key(id: &SnapshotId) -> String {
    format!("{}{}", snapshot::PREFIX, id.to_hex())
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

/// One index object as stored: its key, stored size and the packs it lists.
#[derive(Debug, Clone)]
pub struct IndexFile {
    pub key: String,
    pub size: u64,
    pub packs: Vec<(PackId, Vec<(BlobId, IndexEntry)>)>,
}

impl IndexFile {
    fn from_raw((key, size, packs): (String, u64, index::PackList)) -> Self {
        let packs = packs
            .into_iter()
            .map(|(pack, entries)| {
                let entries = entries
                    .into_iter()
                    .map(|e| {
                        (
                            e.id,
                            IndexEntry {
                                pack,
                                kind: e.kind,
                                offset: e.offset.into(),
                                length: e.length.into(),
                                raw_length: e.raw_length.into(),
                            },
                        )
                    })
                    .collect();
                (pack, entries)
            })
            .collect();
        IndexFile { key, size, packs }
    }
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
