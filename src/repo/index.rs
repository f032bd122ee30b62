//! The blob index: in memory, a map from blob id to where the blob lives;
//! on storage, `index/<id>` objects written after the packs they list.
//!
//! Index object plaintext (sealed with kind INDEX):
//! `u8 1 || u32 LE pack count || per pack: pack id(32) || u32 LE entry
//! count || entries` with entries encoded as in pack headers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::crypto::{MAX_META_LEN, kind};
use super::id::{BlobId, BlobKind, PackId};
use super::pack::{
    self, DecodeError, ENTRY_LEN, IndexEntry, PackEntry, Reader, encode_entry, expand_entries,
};
use super::{META_PARALLEL, RepoError, Repository, check_content_name, open_error};

pub(crate) const PREFIX: &str = "index/";

/// Packs and their entries, as listed by one index object.
pub(crate) type PackList = Vec<(PackId, Vec<PackEntry>)>;
const INDEX_VERSION: u8 = 1;

/// Compact form of an entry: ~20 bytes plus the 32-byte key, because
/// `open` keeps every blob of the repository in memory.
#[derive(Debug, Clone, Copy)]
struct Loc {
    pack: u32,
    offset: u32,
    length: u32,
    raw_length: u32,
    kind: BlobKind,
}

#[derive(Debug)]
struct PackSlot {
    id: PackId,
    /// Listed in a stored index object (not only uploaded by this process).
    persisted: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    packs: Vec<PackSlot>,
    pack_pos: HashMap<PackId, u32>,
    blobs: HashMap<BlobId, Loc>,
}

impl Index {
    pub fn add_pack(&mut self, pack: PackId, entries: &[PackEntry], persisted: bool) {
        let pos = *self.pack_pos.entry(pack).or_insert_with(|| {
            self.packs.push(PackSlot {
                id: pack,
                persisted: false,
            });
            (self.packs.len() - 1) as u32
        });
        self.packs[pos as usize].persisted |= persisted;
        self.blobs.reserve(entries.len());
        for e in entries {
            // A blob stored twice (two writers racing) is fine either way;
            // keep the first location so lookups stay stable.
            self.blobs.entry(e.id).or_insert(Loc {
                pack: pos,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
                kind: e.kind,
            });
        }
    }

    pub fn mark_persisted(&mut self, pack: &PackId) {
        if let Some(&pos) = self.pack_pos.get(pack) {
            self.packs[pos as usize].persisted = true;
        }
    }

    /// Carries over the packs `old` holds that are not yet listed in a
    /// stored index object (uploaded by a writer of this process), so a
    /// reload never forgets them.
    pub fn merge_unpersisted(&mut self, old: &Index) {
        for (id, l) in &old.blobs {
            let slot = &old.packs[l.pack as usize];
            if !slot.persisted {
                let entry = PackEntry {
                    id: *id,
                    kind: l.kind,
                    offset: l.offset,
                    length: l.length,
                    raw_length: l.raw_length,
                };
                self.add_pack(slot.id, &[entry], false);
            }
        }
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn get(&self, id: &BlobId) -> Option<IndexEntry> {
        self.blobs.get(id).map(|l| self.expand(l))
    }

    /// In the index and listed in a stored index object.
    pub fn is_persisted(&self, id: &BlobId) -> bool {
        self.blobs
            .get(id)
            .is_some_and(|l| self.packs[l.pack as usize].persisted)
    }

    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn entries(&self) -> Vec<(BlobId, IndexEntry)> {
        self.blobs
            .iter()
            .map(|(id, l)| (*id, self.expand(l)))
            .collect()
    }

    pub fn packs(&self) -> Vec<PackId> {
        self.packs.iter().map(|p| p.id).collect()
    }

    fn expand(&self, l: &Loc) -> IndexEntry {
        IndexEntry {
            pack: self.packs[l.pack as usize].id,
            kind: l.kind,
            offset: l.offset.into(),
            length: l.length.into(),
            raw_length: l.raw_length.into(),
        }
    }
}

pub(crate) fn encode(packs: &[(PackId, Vec<PackEntry>)]) -> Vec<u8> {
    let n: usize = packs.iter().map(|(_, e)| 36 + e.len() * ENTRY_LEN).sum();
    let mut out = Vec::with_capacity(5 + n);
    out.push(INDEX_VERSION);
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for (id, entries) in packs {
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            encode_entry(e, &mut out);
        }
    }
    out
}

/// A version we do not know ([`DecodeError::is_format`]), or damage.
pub(crate) fn decode(plain: &[u8]) -> Result<PackList, DecodeError> {
    let mut r = Reader::new(plain);
    let version = r.u8()?;
    if version != INDEX_VERSION {
        return Err(DecodeError::IndexVersion(version));
    }
    let count = r.u32()?;
    // Each pack needs at least 36 bytes; check before allocating.
    if (count as usize).saturating_mul(36) > r.remaining() {
        return Err(DecodeError::PacksMissing(count));
    }
    let mut packs = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let id = PackId(r.id32()?);
        let n = r.u32()?;
        packs.push((id, r.entries(n)?));
    }
    if r.remaining() != 0 {
        return Err(DecodeError::StrayAtEnd(r.remaining()));
    }
    Ok(packs)
}

/// One index object as stored: its key, stored size and the packs it lists.
#[derive(Debug, Clone)]
pub struct IndexFile {
    /// Object key, `index/<id>`.
    pub key: String,
    /// Stored (sealed) size in bytes.
    pub size: u64,
    /// The packs it lists, each with its blobs.
    pub packs: Vec<(PackId, Vec<(BlobId, IndexEntry)>)>,
}

impl IndexFile {
    fn from_raw((key, size, packs): (String, u64, PackList)) -> Self {
        let packs = packs
            .into_iter()
            .map(|(pack, entries)| (pack, expand_entries(pack, entries)))
            .collect();
        IndexFile { key, size, packs }
    }
}

/// An in-memory index of `files` without the packs in `exclude`, and the
/// keys of the objects it came from.
fn build(
    files: &[(String, u64, PackList)],
    exclude: &HashSet<PackId>,
) -> (Index, BTreeSet<String>) {
    let mut ix = Index::default();
    let mut keys = BTreeSet::new();
    for (key, _, packs) in files {
        for (id, entries) in packs {
            if !exclude.contains(id) {
                ix.add_pack(*id, entries, true);
            }
        }
        keys.insert(key.clone());
    }
    (ix, keys)
}

impl Repository {
    /// Loads every index object into the in-memory index. Lenient: skips
    /// unreadable ones and returns their errors. Each object is folded in
    /// as it is decoded, so its pack lists are never all held at once.
    pub(super) async fn load_index(&self, lenient: bool) -> Result<Vec<RepoError>, RepoError> {
        let mut ix = Index::default();
        let mut keys = BTreeSet::new();
        let errors = self
            .fold_index_objects(lenient, |key, _, packs| {
                for (id, entries) in &packs {
                    ix.add_pack(*id, entries, true);
                }
                keys.insert(key);
            })
            .await?;
        tracing::debug!(
            location = %self.inner.location,
            index_files = keys.len(),
            blobs = ix.len(),
            "loaded index"
        );
        *self.index_mut() = ix;
        self.set_index_keys(keys);
        Ok(errors)
    }

    fn set_index_keys(&self, keys: BTreeSet<String>) {
        *self
            .inner
            .index_keys
            .write()
            .unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// Every index object, read and decoded as a stream in key order (so
    /// a blob stored in two packs is found in the same one every time),
    /// [`META_PARALLEL`] at once: `(key, (stored size, packs))`.
    async fn index_objects(
        &self,
    ) -> Result<impl Stream<Item = (String, Result<(u64, PackList), RepoError>)> + '_, RepoError>
    {
        let mut objects = self.inner.backend.list(PREFIX).await?;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(futures::stream::iter(objects)
            .map(move |obj| async move {
                let result = async {
                    let bytes = self.inner.backend.get(&obj.key).await?;
                    let size = bytes.len() as u64;
                    let repo = self.clone();
                    let key = obj.key.clone();
                    self.blocking("reading an index", move || {
                        check_content_name(&key, PREFIX, &bytes)?;
                        let plain = repo
                            .inner
                            .master
                            .open(kind::INDEX, bytes, MAX_META_LEN)
                            .map_err(|e| open_error(&key, None, e))?;
                        decode(&plain).map_err(|e| {
                            if e.is_format() {
                                RepoError::format(&key, e.to_string())
                            } else {
                                RepoError::corrupt(&key, None, e.to_string())
                            }
                        })
                    })
                    .await?
                    .map(|packs| (size, packs))
                }
                .await;
                (obj.key, result)
            })
            .buffered(META_PARALLEL))
    }

    /// Reads and decodes every index object: `(key, stored size, packs)`,
    /// in key order.
    pub(super) async fn read_index_objects(
        &self,
        lenient: bool,
    ) -> Result<(Vec<(String, u64, PackList)>, Vec<RepoError>), RepoError> {
        let mut ok = Vec::new();
        let errors = self
            .fold_index_objects(lenient, |key, size, packs| ok.push((key, size, packs)))
            .await?;
        Ok((ok, errors))
    }

    /// Hands each index object to `each` as it is decoded, in key order.
    /// Fails on a backend error; on an unreadable object too unless
    /// `lenient`, which returns those errors instead.
    async fn fold_index_objects(
        &self,
        lenient: bool,
        mut each: impl FnMut(String, u64, PackList),
    ) -> Result<Vec<RepoError>, RepoError> {
        let mut objects = std::pin::pin!(self.index_objects().await?);
        let mut errors = Vec::new();
        while let Some((key, result)) = objects.next().await {
            match result {
                Ok((size, packs)) => each(key, size, packs),
                // A backend failure is not damage: never skip over it.
                Err(e @ RepoError::Backend(_)) => return Err(e),
                Err(e) if lenient => errors.push(e),
                Err(e) => return Err(e),
            }
        }
        Ok(errors)
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

    /// [`reload_index`](Self::reload_index) without the packs in `exclude`
    /// (those a pending prune marked).
    pub(super) async fn reload_index_excluding(
        &self,
        exclude: &HashSet<PackId>,
    ) -> Result<Vec<IndexFile>, RepoError> {
        let (files, _) = self.read_index_objects(false).await?;
        let (mut ix, keys) = build(&files, exclude);
        {
            let mut current = self.index_mut();
            ix.merge_unpersisted(&current);
            *current = ix;
        }
        self.set_index_keys(keys);
        Ok(files.into_iter().map(IndexFile::from_raw).collect())
    }

    /// Where blob `id` is stored, if the loaded index lists it.
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

    /// Writes one index object listing `packs` (which must be stored) and
    /// returns its key. `prune` uses it to keep packs listed whose index
    /// object it removes.
    pub async fn write_index_file(
        &self,
        packs: &[(PackId, Vec<(BlobId, IndexEntry)>)],
    ) -> Result<String, RepoError> {
        let mut list: PackList = Vec::with_capacity(packs.len());
        for (pack, entries) in packs {
            let mut out = narrow(pack, entries)?;
            out.sort_by_key(|e| e.offset);
            list.push((*pack, out));
        }
        let repo = self.clone();
        let sealed = self
            .blocking("sealing an index", move || {
                repo.seal(kind::INDEX, &encode(&list))
            })
            .await?;
        let key = format!("{}{}", PREFIX, blake3::hash(&sealed).to_hex());
        self.inner.backend.put(&key, Bytes::from(sealed)).await?;
        Ok(key)
    }

    pub(super) fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.inner.index.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn index_mut(&self) -> RwLockWriteGuard<'_, Index> {
        self.inner.index.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Entries in the wide form back in the stored one; a value over 4 GiB
/// (never in a pack kubestow reads) is an error naming the pack and blob.
pub(crate) fn narrow(
    pack: &PackId,
    entries: &[(BlobId, IndexEntry)],
) -> Result<Vec<pack::PackEntry>, RepoError> {
    entries
        .iter()
        .map(|(id, e)| {
            let fits = |v: u64| {
                u32::try_from(v).map_err(|_| {
                    RepoError::corrupt(&pack::pack_key(pack), Some(id), "offset beyond 4 GiB")
                })
            };
            Ok(pack::PackEntry {
                id: *id,
                kind: e.kind,
                offset: fits(e.offset)?,
                length: fits(e.length)?,
                raw_length: fits(e.raw_length)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(b: u8, offset: u32) -> PackEntry {
        PackEntry {
            id: BlobId([b; 32]),
            kind: BlobKind::Tree,
            offset,
            length: 100,
            raw_length: 90,
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let packs = vec![
            (PackId([1; 32]), vec![entry(1, 0), entry(2, 100)]),
            (PackId([2; 32]), vec![]),
        ];
        let bytes = encode(&packs);
        assert_eq!(decode(&bytes).unwrap(), packs);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut v = bytes.clone();
        v[0] = 2;
        assert!(decode(&v).unwrap_err().is_format());
        // A huge announced count fails without allocating for it.
        let mut v = bytes.clone();
        v[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&v).is_err());
    }

    #[test]
    fn persisted_only_after_marking() {
        let mut ix = Index::default();
        ix.add_pack(PackId([1; 32]), &[entry(1, 0)], false);
        assert!(ix.contains(&BlobId([1; 32])));
        assert!(!ix.is_persisted(&BlobId([1; 32])));
        ix.mark_persisted(&PackId([1; 32]));
        assert!(ix.is_persisted(&BlobId([1; 32])));
        let e = ix.get(&BlobId([1; 32])).unwrap();
        assert_eq!(
            (e.pack, e.offset, e.length, e.raw_length),
            (PackId([1; 32]), 0, 100, 90)
        );
    }
}
