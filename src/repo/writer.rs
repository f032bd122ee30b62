//! The write pipeline: id → dedup → seal → pack → upload → index.
//!
//! Memory stays bounded whatever the input size: every blob reserves its
//! sealed size from a byte semaphore of `(channels + 2) × pack target`
//! before it is sealed, and gives it back only when its pack is stored. So
//! `add` waits (back-pressure) while packs are queued for upload, and at
//! most `channels` pack uploads run at once.
//!
//! Checkpoints: packs are listed in an index object every
//! `packs_per_index` packs (`STOW_RESUME_BUFFER`), and no added blob stays
//! unlisted for much more than [`CHECKPOINT_EVERY`]: a slow trickle of
//! data would otherwise leave a crashed run nothing to resume from.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use super::crypto::{MAX_BLOB_LEN, OVERHEAD, kind};
use super::id::{BlobId, BlobKind, PackId};
use super::pack::PACK_TARGET;
use super::pack::{self, PackEntry};
use super::{RepoError, Repository, index};

/// Blobs below this are hashed and sealed on the calling task: a trip to
/// the blocking pool costs more than the work.
const INLINE_LIMIT: usize = 64 << 10;
/// An open pack's buffer is reserved at its target size, up to this; a
/// larger target grows it as blobs come.
const MAX_PACK_RESERVE: usize = 64 << 20;
/// Packs listed per index object when nobody calls `flush`.
pub(crate) const PACKS_PER_INDEX: usize = 16;
/// A blob added this long ago is made durable (its pack cut short and
/// indexed) even when fewer than `packs_per_index` packs are waiting.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

/// What one writer stored. Clones of a writer share their counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    /// Blobs stored by this writer.
    pub blobs_new: u64,
    /// `add` calls for content that was already stored or in flight.
    pub blobs_reused: u64,
    /// Plaintext bytes of new blobs.
    pub bytes_raw_new: u64,
    /// Bytes uploaded: packs (with headers) and index objects.
    pub bytes_stored: u64,
    /// Plaintext bytes of reused blobs.
    pub bytes_reused: u64,
    /// Packs uploaded.
    pub packs: u64,
}

#[derive(Default)]
struct Counters {
    blobs_new: AtomicU64,
    blobs_reused: AtomicU64,
    bytes_raw_new: AtomicU64,
    bytes_stored: AtomicU64,
    bytes_reused: AtomicU64,
    packs: AtomicU64,
}

/// Feeds blobs into packs. Cheap to clone; all clones share one pipeline,
/// one set of upload slots and one memory budget.
#[derive(Clone)]
pub struct Writer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("pack_target", &self.shared.pack_target)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Shared {
    repo: Repository,
    /// Store blobs even when the repository index already lists them
    /// (repacking by `prune`); duplicates within this writer are still
    /// stored once while in flight.
    force: bool,
    pack_target: usize,
    packs_per_index: usize,
    /// One permit per concurrent pack PUT.
    uploads: Semaphore,
    /// Index objects have their own (one at a time): queued behind the
    /// next pack's upload, a stored pack would stay unindexed (lost to a
    /// crash) for that long.
    index_uploads: Semaphore,
    /// Bytes of sealed data held by the pipeline.
    memory: Arc<Semaphore>,
    /// Largest reservation one blob makes; smaller than the budget by one
    /// pack so an oversized blob can never wait on a pack that is itself
    /// waiting for more blobs.
    max_reservation: usize,
    state: Mutex<State>,
    /// Wakes `flush` whenever an upload or index write ends.
    changed: Notify,
    stats: Counters,
}

#[derive(Default)]
struct State {
    /// The first failure; every later call returns it.
    error: Option<RepoError>,
    /// Blobs added by this writer but not yet in the repository index.
    in_flight: HashMap<BlobId, InFlight>,
    current: OpenPack,
    next_seq: u64,
    /// Packs (by sequence number) not yet listed in a stored index object.
    unindexed: BTreeSet<u64>,
    /// Stored packs waiting for an index object.
    pending_index: Vec<(u64, PackId, Vec<PackEntry>)>,
    /// When the first blob of the oldest pack in `pending_index` was added.
    pending_since: Option<Instant>,
    /// A checkpoint timer task is running.
    timer: bool,
}

impl State {
    fn take_pending(&mut self) -> Vec<(u64, PackId, Vec<PackEntry>)> {
        self.pending_since = None;
        std::mem::take(&mut self.pending_index)
    }

    /// When the oldest blob that is not yet durable (open pack or waiting
    /// for its index) was added; blobs in packs being uploaded count from
    /// when those land in `pending_index`.
    fn oldest_unsaved(&self) -> Option<Instant> {
        match (self.current.opened, self.pending_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

enum InFlight {
    /// Being sealed by another `add`; duplicates wait for `true`.
    Sealing(watch::Sender<bool>),
    /// In a pack that is being filled or uploaded.
    Packed,
}

#[derive(Default)]
struct OpenPack {
    /// The sealed blobs, back to back: copied in as they come, so a
    /// finished pack needs no second buffer of its size.
    body: Vec<u8>,
    entries: Vec<PackEntry>,
    memory: Option<OwnedSemaphorePermit>,
    /// When its first blob was added.
    opened: Option<Instant>,
}

enum Prepared {
    Known(BlobId),
    Wait(BlobId, watch::Receiver<bool>),
    Sealed { claim: Claim, sealed: Vec<u8> },
}

/// The right to store a blob. Dropped unfinished (the `add` was cancelled
/// or failed), it withdraws the claim so waiting duplicates retry.
struct Claim {
    shared: Arc<Shared>,
    id: BlobId,
    done: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.done {
            let mut st = lock(&self.shared.state);
            if matches!(st.in_flight.get(&self.id), Some(InFlight::Sealing(_))) {
                st.in_flight.remove(&self.id);
            }
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // State stays consistent between statements; a panic elsewhere must
    // not wedge every other writer clone.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    pub(crate) fn new(
        repo: Repository,
        channels: usize,
        pack_target: usize,
        packs_per_index: usize,
    ) -> Writer {
        Self::with_force(repo, channels, pack_target, packs_per_index, false)
    }

    pub(crate) fn with_force(
        repo: Repository,
        channels: usize,
        pack_target: usize,
        packs_per_index: usize,
        force: bool,
    ) -> Writer {
        let channels = channels.max(1);
        let pack_target = pack_target.clamp(1, 1 << 30);
        let budget = (channels + 2) * pack_target;
        Writer {
            shared: Arc::new(Shared {
                repo,
                force,
                pack_target,
                packs_per_index: packs_per_index.max(1),
                uploads: Semaphore::new(channels),
                index_uploads: Semaphore::new(1),
                memory: Arc::new(Semaphore::new(budget)),
                max_reservation: (channels + 1) * pack_target,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                stats: Counters::default(),
            }),
        }
    }

    /// Stores a blob unless the repository or this writer already has it.
    /// Returns its id and whether it was new. Waits while the pipeline's
    /// memory budget is used up.
    ///
    /// The blob is durable (readable after a reopen) only after the next
    /// [`flush`](Self::flush) or [`finish`](Self::finish) succeeds.
    pub async fn add(&self, kind: BlobKind, data: Bytes) -> Result<(BlobId, bool), RepoError> {
        self.add_sealing(kind, data, false).await
    }

    /// [`add`](Self::add) for a caller on a blocking thread: the blob is
    /// hashed and sealed right here, and the thread waits only when the
    /// memory budget is used up or a duplicate is being sealed elsewhere.
    /// A file read on a blocking thread then passes no thread boundary
    /// per chunk; those hand-offs cost more than small files themselves.
    ///
    /// Panics when called from an async task (it blocks on the runtime).
    pub fn add_blocking(&self, kind: BlobKind, data: Bytes) -> Result<(BlobId, bool), RepoError> {
        tokio::runtime::Handle::current().block_on(self.add_sealing(kind, data, true))
    }

    async fn add_sealing(
        &self,
        kind: BlobKind,
        data: Bytes,
        here: bool,
    ) -> Result<(BlobId, bool), RepoError> {
        let sh = &self.shared;
        if data.len() > MAX_BLOB_LEN {
            return Err(RepoError::BlobTooLarge {
                size: data.len(),
                max: MAX_BLOB_LEN,
            });
        }
        let len = data.len() as u64;
        loop {
            sh.check()?;
            let need = (data.len() + OVERHEAD).min(sh.max_reservation);
            let permit = sh
                .memory
                .clone()
                .acquire_many_owned(need as u32)
                .await
                .expect("the memory semaphore is never closed");
            let prepared = if here || data.len() < INLINE_LIMIT {
                Shared::prepare(sh, kind, &data)
            } else {
                let (sh2, data) = (sh.clone(), data.clone());
                sh.repo
                    .blocking("sealing a blob", move || Shared::prepare(&sh2, kind, &data))
                    .await?
            };
            match prepared {
                Prepared::Known(id) => {
                    sh.stats.blobs_reused.fetch_add(1, Relaxed);
                    sh.stats.bytes_reused.fetch_add(len, Relaxed);
                    return Ok((id, false));
                }
                Prepared::Wait(id, mut rx) => {
                    drop(permit);
                    if rx.wait_for(|packed| *packed).await.is_ok() {
                        sh.stats.blobs_reused.fetch_add(1, Relaxed);
                        sh.stats.bytes_reused.fetch_add(len, Relaxed);
                        return Ok((id, false));
                    }
                    // The add that was sealing it gave up; try ourselves.
                }
                Prepared::Sealed { claim, sealed } => {
                    let id = claim.id;
                    sh.append(claim, kind, data.len(), sealed, permit)?;
                    sh.stats.blobs_new.fetch_add(1, Relaxed);
                    sh.stats.bytes_raw_new.fetch_add(len, Relaxed);
                    return Ok((id, true));
                }
            }
        }
    }

    /// A checkpoint: seals the open pack, waits until every pack started
    /// so far is stored, and writes an index object for them. Everything
    /// added before the call is then durable.
    pub async fn flush(&self) -> Result<(), RepoError> {
        let sh = &self.shared;
        let upto = {
            let mut st = lock(&sh.state);
            if let Some(e) = &st.error {
                return Err(e.clone());
            }
            if !st.current.entries.is_empty() {
                sh.start_upload(&mut st);
            }
            st.next_seq
        };
        loop {
            let notified = sh.changed.notified();
            tokio::pin!(notified);
            // Registered before looking at the state, so no wake-up is lost.
            notified.as_mut().enable();
            let batch = {
                let mut st = lock(&sh.state);
                if let Some(e) = &st.error {
                    return Err(e.clone());
                }
                if !st.pending_index.is_empty() {
                    Some(st.take_pending())
                } else if st.unindexed.range(..upto).next().is_none() {
                    return Ok(());
                } else {
                    None
                }
            };
            match batch {
                Some(batch) => sh.write_index(batch).await?,
                None => notified.await,
            }
        }
    }

    /// Flushes and returns the statistics.
    pub async fn finish(self) -> Result<WriteStats, RepoError> {
        self.flush().await?;
        Ok(self.stats())
    }

    /// Counters of what was written so far.
    pub fn stats(&self) -> WriteStats {
        let c = &self.shared.stats;
        WriteStats {
            blobs_new: c.blobs_new.load(Relaxed),
            blobs_reused: c.blobs_reused.load(Relaxed),
            bytes_raw_new: c.bytes_raw_new.load(Relaxed),
            bytes_stored: c.bytes_stored.load(Relaxed),
            bytes_reused: c.bytes_reused.load(Relaxed),
            packs: c.packs.load(Relaxed),
        }
    }
}

impl Shared {
    fn check(&self) -> Result<(), RepoError> {
        match &lock(&self.state).error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn fail(&self, e: RepoError) {
        lock(&self.state).error.get_or_insert(e);
        self.changed.notify_waiters();
    }

    /// Hashes, claims and seals; CPU only, so it may run on a blocking
    /// thread.
    fn prepare(sh: &Arc<Shared>, kind: BlobKind, data: &[u8]) -> Prepared {
        let repo = &sh.repo;
        let id = repo.blob_id(data);
        if !sh.force && repo.has_blob(&id) {
            return Prepared::Known(id);
        }
        {
            let mut st = lock(&sh.state);
            match st.in_flight.get(&id) {
                Some(InFlight::Sealing(tx)) => return Prepared::Wait(id, tx.subscribe()),
                Some(InFlight::Packed) => return Prepared::Known(id),
                None => {}
            }
            // An upload adds its ids to the index before it drops them from
            // `in_flight`, so this second look closes the gap.
            if !sh.force && repo.has_blob(&id) {
                return Prepared::Known(id);
            }
            st.in_flight
                .insert(id, InFlight::Sealing(watch::channel(false).0));
        }
        let claim = Claim {
            shared: sh.clone(),
            id,
            done: false,
        };
        let sealed = repo.seal(kind.byte(), data);
        Prepared::Sealed { claim, sealed }
    }

    fn append(
        self: &Arc<Self>,
        mut claim: Claim,
        kind: BlobKind,
        raw_len: usize,
        sealed: Vec<u8>,
        mut permit: OwnedSemaphorePermit,
    ) -> Result<(), RepoError> {
        // Keep only what the sealed form needs (compression often shrinks it).
        let keep = sealed.len().min(permit.num_permits());
        drop(permit.split(permit.num_permits() - keep));
        let mut st = lock(&self.state);
        if let Some(e) = st.error.clone() {
            // Release the lock before the claim's drop takes it.
            drop(st);
            return Err(e);
        }
        let id = claim.id;
        let offset = st.current.body.len();
        st.current.entries.push(PackEntry {
            id,
            kind,
            offset: offset as u32,
            length: sealed.len() as u32,
            raw_length: raw_len as u32,
        });
        if st.current.body.capacity() == 0 {
            st.current
                .body
                .reserve_exact(self.pack_target.min(MAX_PACK_RESERVE));
        }
        st.current.body.extend_from_slice(&sealed);
        drop(sealed);
        st.current.opened.get_or_insert_with(Instant::now);
        self.arm_timer(&mut st);
        match st.current.memory.as_mut() {
            Some(p) => p.merge(permit),
            None => st.current.memory = Some(permit),
        }
        if let Some(InFlight::Sealing(tx)) = st.in_flight.insert(id, InFlight::Packed) {
            tx.send_replace(true);
        }
        claim.done = true;
        if st.current.body.len() >= self.pack_target {
            self.start_upload(&mut st);
        }
        drop(st);
        Ok(())
    }

    fn start_upload(self: &Arc<Self>, st: &mut State) {
        let pack = std::mem::take(&mut st.current);
        let seq = st.next_seq;
        st.next_seq += 1;
        st.unindexed.insert(seq);
        let sh = self.clone();
        tokio::spawn(async move { sh.upload(seq, pack).await });
    }

    /// Starts the checkpoint timer unless it runs. It holds the writer
    /// weakly: a dropped writer has nobody left to checkpoint for.
    fn arm_timer(self: &Arc<Self>, st: &mut State) {
        if st.timer || st.error.is_some() {
            return;
        }
        st.timer = true;
        let weak = Arc::downgrade(self);
        tokio::spawn(Self::timer(weak));
    }

    /// Sleeps until the oldest unsaved blob is [`CHECKPOINT_EVERY`] old,
    /// then cuts the open pack short and/or indexes the waiting packs.
    /// Ends when nothing is left unsaved (`append` and `upload` start it
    /// again).
    async fn timer(weak: Weak<Self>) {
        loop {
            let due = {
                let Some(sh) = weak.upgrade() else { return };
                let mut st = lock(&sh.state);
                match st.oldest_unsaved() {
                    Some(t) if st.error.is_none() => t + CHECKPOINT_EVERY,
                    _ => {
                        st.timer = false;
                        return;
                    }
                }
            };
            tokio::time::sleep_until(due).await;
            let Some(sh) = weak.upgrade() else { return };
            let batch = {
                let mut st = lock(&sh.state);
                // Due: added at least CHECKPOINT_EVERY ago.
                let now = Instant::now();
                let due = |t: Instant| t + CHECKPOINT_EVERY <= now;
                if st.current.opened.is_some_and(due) {
                    tracing::debug!(
                        blobs = st.current.entries.len(),
                        "checkpoint: storing a pack that has been open for a while"
                    );
                    sh.start_upload(&mut st);
                }
                st.pending_since.is_some_and(due).then(|| st.take_pending())
            };
            if let Some(batch) = batch {
                tracing::debug!(
                    packs = batch.len(),
                    "checkpoint: indexing packs that have waited for a while"
                );
                // A failure is recorded for the next add/flush.
                let _ = sh.write_index(batch).await;
            }
        }
    }

    async fn upload(self: Arc<Self>, seq: u64, pack: OpenPack) {
        let OpenPack {
            body,
            entries,
            memory,
            opened,
            ..
        } = pack;
        let result = self.store_pack(body, entries).await;
        // The pack's bytes are gone (stored or failed): free the budget.
        drop(memory);
        let (id, entries) = match result {
            Ok(r) => r,
            Err(e) => return self.fail(e),
        };
        // Index first, then out of `in_flight` (see `prepare`).
        self.repo.index_mut().add_pack(id, &entries, false);
        let batch = {
            let mut st = lock(&self.state);
            for e in &entries {
                st.in_flight.remove(&e.id);
            }
            st.pending_index.push((seq, id, entries));
            let opened = opened.unwrap_or_else(Instant::now);
            st.pending_since = Some(st.pending_since.map_or(opened, |t| t.min(opened)));
            let due = st
                .pending_since
                .is_some_and(|t| t + CHECKPOINT_EVERY <= Instant::now());
            if st.pending_index.len() >= self.packs_per_index || due {
                Some(st.take_pending())
            } else {
                self.arm_timer(&mut st);
                None
            }
        };
        self.changed.notify_waiters();
        if let Some(batch) = batch {
            // A failure is recorded for the next add/flush.
            let _ = self.write_index(batch).await;
        }
    }

    async fn store_pack(
        &self,
        body: Vec<u8>,
        entries: Vec<PackEntry>,
    ) -> Result<(PackId, Vec<PackEntry>), RepoError> {
        let repo = self.repo.clone();
        let (id, bytes, entries) = self
            .repo
            .blocking("finishing a pack", move || {
                let (id, bytes) = repo.finish_pack(body, &entries);
                (id, bytes, entries)
            })
            .await?;
        let size = bytes.len() as u64;
        let _slot = self.uploads.acquire().await.expect("never closed");
        self.repo.backend().put(&pack::pack_key(&id), bytes).await?;
        self.stats.packs.fetch_add(1, Relaxed);
        self.stats.bytes_stored.fetch_add(size, Relaxed);
        Ok((id, entries))
    }

    /// Writes one index object for `batch` and marks its packs persisted.
    async fn write_index(
        &self,
        batch: Vec<(u64, PackId, Vec<PackEntry>)>,
    ) -> Result<(), RepoError> {
        let result = self.store_index(&batch).await;
        if let Err(e) = result {
            self.fail(e.clone());
            return Err(e);
        }
        {
            let mut ix = self.repo.index_mut();
            for (_, id, _) in &batch {
                ix.mark_persisted(id);
            }
        }
        {
            let mut st = lock(&self.state);
            for (seq, _, _) in &batch {
                st.unindexed.remove(seq);
            }
        }
        self.changed.notify_waiters();
        Ok(())
    }

    async fn store_index(&self, batch: &[(u64, PackId, Vec<PackEntry>)]) -> Result<(), RepoError> {
        let packs: index::PackList = batch.iter().map(|(_, id, e)| (*id, e.clone())).collect();
        let repo = self.repo.clone();
        let sealed = self
            .repo
            .blocking("sealing an index", move || {
                repo.seal(kind::INDEX, &index::encode(&packs))
            })
            .await?;
        let key = format!("{}{}", index::PREFIX, blake3::hash(&sealed).to_hex());
        let size = sealed.len() as u64;
        let _slot = self.index_uploads.acquire().await.expect("never closed");
        self.repo.backend().put(&key, Bytes::from(sealed)).await?;
        self.stats.bytes_stored.fetch_add(size, Relaxed);
        Ok(())
    }
}

impl Repository {
    /// Writers list their packs in an index object at least every `bytes`
    /// of packs (rounded up to whole packs), so a crashed run that is run
    /// again finds, and does not upload again, all but that much.
    pub fn set_resume_buffer(&self, bytes: u64) {
        let packs = bytes.div_ceil(PACK_TARGET as u64).clamp(1, 1 << 16) as usize;
        self.inner
            .packs_per_index
            .store(packs, std::sync::atomic::Ordering::Relaxed);
    }

    /// A writer that stores every blob it is given, even when the index
    /// already lists it: `prune` copies the used blobs of a pack it
    /// rewrites. Add each blob once.
    pub fn repack_writer(&self, channels: usize) -> Writer {
        Writer::with_force(self.clone(), channels, PACK_TARGET, PACKS_PER_INDEX, true)
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
}
