//! Pack files `data/<2 hex>/<pack id>`: sealed blobs back to back, then the
//! sealed pack header listing them, then the header's length as u32 LE.
//! The header lets `check` (or an index rebuild) read a pack on its own.

use bytes::Bytes;

use super::backend::BackendError;
use super::crypto::{MAX_BLOB_LEN, MAX_META_LEN, MasterKey, OVERHEAD, kind};
use super::id::{BlobId, BlobKind, PackId};
use super::{RepoError, Repository, open_error};
use crate::config::Compression;

/// Packs are cut once they reach this size.
pub const PACK_TARGET: usize = 16 << 20;

/// One blob in a pack, as recorded in pack headers and index files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackEntry {
    pub id: BlobId,
    pub kind: BlobKind,
    /// Where the sealed blob starts in the pack.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

/// Encoded size of one entry: id, kind, offset, length, raw length.
pub(crate) const ENTRY_LEN: usize = 32 + 1 + 4 + 4 + 4;

pub(crate) fn pack_key(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("data/{}/{hex}", &hex[..2])
}

pub(crate) fn encode_entry(e: &PackEntry, out: &mut Vec<u8>) {
    out.extend_from_slice(e.id.as_bytes());
    out.push(e.kind.byte());
    out.extend_from_slice(&e.offset.to_le_bytes());
    out.extend_from_slice(&e.length.to_le_bytes());
    out.extend_from_slice(&e.raw_length.to_le_bytes());
}

/// Why a decrypted pack header or index object does not parse. The
/// messages are the `reason` of the resulting [`RepoError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("truncated: needed {needed} more bytes, {left} left")]
    Truncated { needed: usize, left: usize },
    #[error("unknown blob kind {0}")]
    UnknownKind(u8),
    #[error("{0} entries announced but not present")]
    EntriesMissing(usize),
    #[error("{0} packs announced but not present")]
    PacksMissing(u32),
    #[error("{0} stray bytes after the entries")]
    StrayAfterEntries(usize),
    #[error("{0} stray bytes at the end")]
    StrayAtEnd(usize),
    #[error("blob {id} at offset {offset} but the previous one ends at {expect}")]
    Gap {
        id: BlobId,
        offset: u32,
        expect: u64,
    },
    #[error(
        "blob {id}: sealed length {length} and plaintext length {raw_length} are impossible (a blob holds at most {MAX_BLOB_LEN} bytes, sealed in {OVERHEAD} more)"
    )]
    BlobLength {
        id: BlobId,
        length: u32,
        raw_length: u32,
    },
    #[error("entries cover {covered} bytes but the body has {body_len}")]
    BodyMismatch { covered: u64, body_len: u64 },
    /// A version this build does not know: a format problem, not damage.
    #[error("index version {0}")]
    IndexVersion(u8),
}

impl DecodeError {
    /// Whether the object is in a format this version does not understand
    /// (rather than damaged).
    pub(crate) fn is_format(&self) -> bool {
        matches!(self, DecodeError::IndexVersion(_))
    }
}

/// A cursor over a decrypted header or index, failing with a reason
/// instead of panicking on short input.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                needed: n,
                left: self.buf.len(),
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn id32(&mut self) -> Result<[u8; 32], DecodeError> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn entry(&mut self) -> Result<PackEntry, DecodeError> {
        let id = BlobId(self.id32()?);
        let k = self.u8()?;
        let kind = BlobKind::from_byte(k).ok_or(DecodeError::UnknownKind(k))?;
        let e = PackEntry {
            id,
            kind,
            offset: self.u32()?,
            length: self.u32()?,
            raw_length: self.u32()?,
        };
        // Readers fetch `length` bytes and open them into `raw_length`:
        // refuse lengths no blob can have before anything is sized by them.
        let (length, raw) = (e.length as usize, e.raw_length as usize);
        if !(OVERHEAD..=MAX_BLOB_LEN + OVERHEAD).contains(&length) || raw > MAX_BLOB_LEN {
            return Err(DecodeError::BlobLength {
                id,
                length: e.length,
                raw_length: e.raw_length,
            });
        }
        Ok(e)
    }

    /// `count` entries, refusing a count the remaining bytes cannot hold
    /// before allocating for it.
    pub fn entries(&mut self, count: u32) -> Result<Vec<PackEntry>, DecodeError> {
        let count = count as usize;
        if count.saturating_mul(ENTRY_LEN) > self.remaining() {
            return Err(DecodeError::EntriesMissing(count));
        }
        (0..count).map(|_| self.entry()).collect()
    }
}

/// The stored bytes of a pack and its id. `body` is the sealed blobs back
/// to back, in the order of `entries`; the header is appended to it.
pub(crate) fn finish(
    key: &MasterKey,
    compression: Compression,
    mut out: Vec<u8>,
    entries: &[PackEntry],
) -> (PackId, Bytes) {
    let mut header = Vec::with_capacity(4 + entries.len() * ENTRY_LEN);
    header.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        encode_entry(e, &mut header);
    }
    let header = key.seal(kind::PACK_HEADER, compression, &header);
    out.reserve_exact(header.len() + 4);
    out.extend_from_slice(&header);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    let id = PackId(*blake3::hash(&out).as_bytes());
    (id, Bytes::from(out))
}

/// A pack is at least its 4-byte header length.
pub(crate) fn check_size(key: &str, size: u64) -> Result<(), RepoError> {
    if size < 4 {
        return Err(RepoError::corrupt(
            key,
            None,
            format!("{size} bytes is too short for a pack"),
        ));
    }
    Ok(())
}

/// The body length of a pack of `size` bytes whose last 4 bytes are `tail`.
pub(crate) fn body_len(key: &str, size: u64, tail: &[u8]) -> Result<u64, RepoError> {
    let corrupt = |reason: String| RepoError::corrupt(key, None, reason);
    let tail: [u8; 4] = tail.try_into().map_err(|_| corrupt("short read".into()))?;
    let header_len = u64::from(u32::from_le_bytes(tail));
    if header_len > size - 4 {
        return Err(corrupt(format!(
            "header length {header_len} exceeds the pack size {size}"
        )));
    }
    let body = size - 4 - header_len;
    // Every sealed blob takes at least OVERHEAD bytes of the body, so the
    // body bounds the entries and the entries bound the (raw) header:
    // refuse a header length that could only be a lie before fetching it.
    // Saturating: a backend may claim any size, up to u64::MAX.
    let most = (ENTRY_LEN as u64)
        .saturating_mul(body / OVERHEAD as u64)
        .saturating_add(OVERHEAD as u64 + 4);
    if header_len > most {
        return Err(corrupt(format!(
            "header length {header_len} is more than the {most} bytes the entries of a {body}-byte body can take"
        )));
    }
    Ok(body)
}

/// Parses the decrypted header and checks that the entries tile the pack
/// body exactly, so a forged header cannot point outside it.
pub(crate) fn parse_header(plain: &[u8], body_len: u64) -> Result<Vec<PackEntry>, DecodeError> {
    let mut r = Reader::new(plain);
    let count = r.u32()?;
    let entries = r.entries(count)?;
    if r.remaining() != 0 {
        return Err(DecodeError::StrayAfterEntries(r.remaining()));
    }
    let mut expect = 0u64;
    for e in &entries {
        if u64::from(e.offset) != expect {
            return Err(DecodeError::Gap {
                id: e.id,
                offset: e.offset,
                expect,
            });
        }
        expect += u64::from(e.length);
    }
    if expect != body_len {
        return Err(DecodeError::BodyMismatch {
            covered: expect,
            body_len,
        });
    }
    Ok(entries)
}

impl Repository {
    /// A whole pack object.
    pub async fn read_pack(&self, pack: &PackId) -> Result<Bytes, RepoError> {
        Ok(self.inner.backend.get(&pack_key(pack)).await?)
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
        let key = pack_key(&entry.pack);
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
        let key = pack_key(pack);
        let size = pack_bytes.len() as u64;
        check_size(&key, size)?;
        let body_len = body_len(&key, size, &pack_bytes[size as usize - 4..])?;
        let sealed = pack_bytes.slice(body_len as usize..(size - 4) as usize);
        self.decode_pack_header(pack, &key, sealed, body_len)
    }

    /// The blobs a pack's own header lists, read from the pack's tail.
    pub async fn read_pack_header(
        &self,
        pack: &PackId,
    ) -> Result<Vec<(BlobId, IndexEntry)>, RepoError> {
        let key = pack_key(pack);
        let backend = &self.inner.backend;
        let size = backend
            .head(&key)
            .await?
            .ok_or_else(|| BackendError::NotFound {
                location: self.inner.location.clone(),
                key: key.clone(),
            })?;
        check_size(&key, size)?;
        let tail = backend.get_range(&key, size - 4, 4).await?;
        let body_len = body_len(&key, size, &tail)?;
        let sealed = backend
            .get_range(&key, body_len, size - 4 - body_len)
            .await?;
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
        let entries = parse_header(&plain, body_len)
            .map_err(|reason| RepoError::corrupt(key, None, reason.to_string()))?;
        Ok(expand_entries(*pack, entries))
    }

    pub(super) fn finish_pack(&self, body: Vec<u8>, entries: &[PackEntry]) -> (PackId, Bytes) {
        finish(&self.inner.master, self.inner.compression, body, entries)
    }
}

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The pack holding the blob.
    pub pack: PackId,
    /// What the blob holds.
    pub kind: BlobKind,
    /// Offset of the sealed blob in the pack.
    pub offset: u64,
    /// Sealed length.
    pub length: u64,
    /// Plaintext length.
    pub raw_length: u64,
}

/// Entries as stored (pack header or index object) with their pack, in
/// the wide form callers use.
pub(crate) fn expand_entries(pack: PackId, entries: Vec<PackEntry>) -> Vec<(BlobId, IndexEntry)> {
    entries
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the pack fuzz target: a pack size near `u64::MAX` (a
    /// backend may report any size) overflowed the bound on the header
    /// length. The header it claims is then left to the object size cap.
    #[test]
    fn a_pack_size_near_u64_max_does_not_overflow() {
        let size = 0xffff_ffff_ff00_00e2;
        let body = body_len("data/00/00", size, &[0xff; 4]).unwrap();
        assert_eq!(body, size - 4 - u64::from(u32::MAX));
        assert!(body_len("data/00/00", u64::MAX, &[0; 4]).is_ok());
    }
}
