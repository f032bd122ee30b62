//! Reading blobs: fetch, decrypt and verify against the blob id.

use bytes::Bytes;

use super::crypto::MAX_BLOB_LEN;
use super::{BlobId, IndexEntry, PackId, RepoError, Repository, open_error, pack};

/// Blobs below this are opened on the calling task.
const INLINE_OPEN: u64 = 64 << 10;

/// [`Repository::read_blobs`] reads neighbouring blobs of one pack in one
/// ranged request when at most this many bytes lie between them (read and
/// thrown away: cheaper than another request for small blobs)...
const MAX_GAP: u64 = 256 << 10;
/// ...and the request stays at most this long, so a batch's reads stay
/// bounded however its blobs lie.
const MAX_SPAN: u64 = 8 << 20;

/// One ranged read of a pack and the blobs it covers (indices into the
/// entries it was planned from).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub pack: PackId,
    pub offset: u64,
    pub end: u64,
    pub members: Vec<usize>,
}

/// Groups blobs into ranged reads: by pack, in offset order, joining a
/// blob to the read before it while the gap is at most `max_gap` and the
/// read at most `max_span` long (a blob longer than that is read alone).
/// Every index appears in exactly one span.
pub(crate) fn plan_spans(entries: &[IndexEntry], max_gap: u64, max_span: u64) -> Vec<Span> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (entries[i].pack, entries[i].offset));
    let mut spans: Vec<Span> = Vec::new();
    for i in order {
        let e = &entries[i];
        let end = e.offset.saturating_add(e.length);
        if let Some(s) = spans.last_mut()
            && s.pack == e.pack
            && e.offset <= s.end.saturating_add(max_gap)
            && end.max(s.end) - s.offset <= max_span
        {
            s.end = s.end.max(end);
            s.members.push(i);
            continue;
        }
        spans.push(Span {
            pack: e.pack,
            offset: e.offset,
            end,
            members: vec![i],
        });
    }
    spans
}

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
        // A small blob in a local file is read and opened right here: the
        // thread hand-offs of an async read would cost more than the read
        // from the page cache (a walk's parent listings: a fifth of the
        // CPU of an unchanged re-backup, in context switches).
        if entry.length < INLINE_OPEN
            && let Some(sealed) =
                (self.inner.backend).get_range_blocking(&key, entry.offset, entry.length)
        {
            return self.check_open(key, id, entry, sealed?);
        }
        let sealed = self
            .inner
            .backend
            .get_range(&key, entry.offset, entry.length)
            .await?;
        let (repo, id2) = (self.clone(), *id);
        let verify = move || repo.check_open(key, &id2, entry, sealed);
        self.opening(entry.length, "opening a blob", verify).await?
    }

    /// The same read on the calling thread, which may block, when the
    /// backend reads local files (`None` from any other: use
    /// [`read_blob`](Self::read_blob)). For small blobs read one after
    /// another by a thread of its own, such as a walk's parent listings:
    /// the async read's thread hand-offs cost more than the read.
    pub fn read_blob_blocking(&self, id: &BlobId) -> Option<Result<Bytes, RepoError>> {
        let Some(entry) = self.index_entry(id) else {
            return Some(Err(RepoError::MissingBlob { id: *id }));
        };
        let key = pack::pack_key(&entry.pack);
        let sealed =
            match (self.inner.backend).get_range_blocking(&key, entry.offset, entry.length)? {
                Ok(s) => s,
                Err(e) => return Some(Err(e.into())),
            };
        Some(self.check_open(key, id, entry, sealed))
    }

    /// Checks a sealed blob's length against the index, then opens it.
    fn check_open(
        &self,
        key: String,
        id: &BlobId,
        entry: IndexEntry,
        sealed: Bytes,
    ) -> Result<Bytes, RepoError> {
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
        self.open_blob(&key, id, &entry, sealed)
    }

    /// Runs `open`, which decrypts and verifies `len` sealed bytes, here
    /// when they are few (below [`INLINE_OPEN`] a thread hand-off costs
    /// more than the work), else on the blocking pool.
    async fn opening<T: Send + 'static>(
        &self,
        len: u64,
        what: &'static str,
        open: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RepoError> {
        if len < INLINE_OPEN {
            Ok(open())
        } else {
            self.blocking(what, open).await
        }
    }

    /// Reads, decrypts and verifies many blobs, one result per id in order:
    /// neighbours in a pack come in one ranged read ([`plan_spans`]), and
    /// the batch is opened in one go, so a batch of small blobs costs a few
    /// requests and thread hand-offs rather than a few per blob. A read
    /// that fails is retried blob by blob, so each blob gets its own error.
    pub async fn read_blobs(&self, ids: &[BlobId]) -> Vec<Result<Bytes, RepoError>> {
        let mut out: Vec<Option<Result<Bytes, RepoError>>> = Vec::with_capacity(ids.len());
        let mut found = Vec::new();
        let mut entries = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match self.index_entry(id) {
                Some(e) => {
                    found.push(i);
                    entries.push(e);
                    out.push(None);
                }
                None => out.push(Some(Err(RepoError::MissingBlob { id: *id }))),
            }
        }
        // (key, id, entry, sealed bytes, index in `out`) of what came in.
        let mut sealed = Vec::with_capacity(entries.len());
        for span in plan_spans(&entries, MAX_GAP, MAX_SPAN) {
            let key = pack::pack_key(&span.pack);
            let len = span.end - span.offset;
            let got = self.inner.backend.get_range(&key, span.offset, len).await;
            match got {
                Ok(data) if data.len() as u64 == len => {
                    for m in span.members {
                        let e = entries[m];
                        let start = (e.offset - span.offset) as usize;
                        let part = data.slice(start..start + e.length as usize);
                        sealed.push((key.clone(), ids[found[m]], e, part, found[m]));
                    }
                }
                // Each blob on its own: its own error, or the blob after all.
                _ => {
                    for m in span.members {
                        out[found[m]] = Some(self.read_blob(&ids[found[m]]).await);
                    }
                }
            }
        }
        let total: u64 = sealed.iter().map(|s| s.2.length).sum();
        let repo = self.clone();
        let open_all = move || {
            sealed
                .into_iter()
                .map(|(key, id, e, data, i)| (i, repo.open_blob(&key, &id, &e, data)))
                .collect::<Vec<_>>()
        };
        let opened = self.opening(total, "opening blobs", open_all).await;
        match opened {
            Ok(opened) => {
                for (i, r) in opened {
                    out[i] = Some(r);
                }
            }
            Err(e) => {
                // The opening task itself failed: every blob it held fails.
                for slot in out.iter_mut().filter(|s| s.is_none()) {
                    *slot = Some(Err(e.clone()));
                }
            }
        }
        out.into_iter()
            .map(|r| r.expect("every blob has a result"))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::BlobKind;

    fn entry(pack: u8, offset: u64, length: u64) -> IndexEntry {
        IndexEntry {
            pack: PackId([pack; 32]),
            kind: BlobKind::Data,
            offset,
            length,
            raw_length: length,
        }
    }

    #[test]
    fn spans_join_neighbours_of_one_pack_within_the_bounds() {
        let entries = [
            entry(1, 1000, 100),  // 0
            entry(2, 0, 100),     // 1: another pack
            entry(1, 0, 100),     // 2: before 0, gap 900
            entry(1, 1100, 50),   // 3: right after 0
            entry(1, 5000, 100),  // 4: gap 3850, over the gap bound
            entry(1, 1000, 100),  // 5: 0 again
            entry(1, 5100, 1150), // 6: would make the span 1250 long, over the span bound
        ];
        let spans = plan_spans(&entries, 1000, 1200);
        let shape: Vec<(u8, u64, u64, Vec<usize>)> = spans
            .iter()
            .map(|s| (s.pack.0[0], s.offset, s.end, s.members.clone()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, 0, 1150, vec![2, 0, 5, 3]),
                (1, 5000, 5100, vec![4]),
                (1, 5100, 6250, vec![6]),
                (2, 0, 100, vec![1]),
            ]
        );
        for s in &spans {
            assert!(s.end - s.offset <= 1200 || s.members.len() == 1);
            for &m in &s.members {
                let e = &entries[m];
                assert!(e.pack == s.pack && e.offset >= s.offset && e.offset + e.length <= s.end);
            }
        }
        // A blob over the span bound is read alone.
        let big = plan_spans(&[entry(1, 0, 10), entry(1, 10, 5000)], 1000, 1200);
        assert_eq!(big.len(), 2);
    }
}
