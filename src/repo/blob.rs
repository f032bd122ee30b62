//! Reading blobs: fetch, decrypt and verify against the blob id.

use bytes::Bytes;

use super::crypto::MAX_BLOB_LEN;
use super::{BlobId, IndexEntry, RepoError, Repository, open_error, pack};

/// Blobs below this are opened on the calling task.
const INLINE_OPEN: u64 = 64 << 10;

impl Repository {
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

    pub(super) fn open_blob(
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
}
