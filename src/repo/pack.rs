//! Pack files `data/<2 hex>/<pack id>`: sealed blobs back to back, then the
//! sealed pack header listing them, then the header's length as u32 LE.
//! The header lets `check` (or an index rebuild) read a pack on its own.

use bytes::Bytes;

use super::crypto::{MasterKey, kind};
use super::id::{BlobId, BlobKind, PackId};
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

/// A cursor over a decrypted header or index, failing with a reason
/// instead of panicking on short input.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!(
                "truncated: needed {n} more bytes, {} left",
                self.buf.len()
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn id32(&mut self) -> Result<[u8; 32], String> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn entry(&mut self) -> Result<PackEntry, String> {
        let id = BlobId(self.id32()?);
        let k = self.u8()?;
        let kind = BlobKind::from_byte(k).ok_or_else(|| format!("unknown blob kind {k}"))?;
        Ok(PackEntry {
            id,
            kind,
            offset: self.u32()?,
            length: self.u32()?,
            raw_length: self.u32()?,
        })
    }

    /// `count` entries, refusing a count the remaining bytes cannot hold
    /// before allocating for it.
    pub fn entries(&mut self, count: u32) -> Result<Vec<PackEntry>, String> {
        let count = count as usize;
        if count.saturating_mul(ENTRY_LEN) > self.remaining() {
            return Err(format!("{count} entries announced but not present"));
        }
        (0..count).map(|_| self.entry()).collect()
    }
}

/// The stored bytes of a pack and its id. `segments` are the sealed blobs in
/// the order of `entries`.
pub(crate) fn finish(
    key: &MasterKey,
    compression: Compression,
    segments: Vec<Vec<u8>>,
    entries: &[PackEntry],
) -> (PackId, Bytes) {
    let mut header = Vec::with_capacity(4 + entries.len() * ENTRY_LEN);
    header.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        encode_entry(e, &mut header);
    }
    let header = key.seal(kind::PACK_HEADER, compression, &header);
    let body: usize = segments.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(body + header.len() + 4);
    for s in segments {
        out.extend_from_slice(&s);
    }
    out.extend_from_slice(&header);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    let id = PackId(*blake3::hash(&out).as_bytes());
    (id, Bytes::from(out))
}

/// Parses the decrypted header and checks that the entries tile the pack
/// body exactly, so a forged header cannot point outside it.
pub(crate) fn parse_header(plain: &[u8], body_len: u64) -> Result<Vec<PackEntry>, String> {
    let mut r = Reader::new(plain);
    let count = r.u32()?;
    let entries = r.entries(count)?;
    if r.remaining() != 0 {
        return Err(format!("{} stray bytes after the entries", r.remaining()));
    }
    let mut expect = 0u64;
    for e in &entries {
        if u64::from(e.offset) != expect {
            return Err(format!(
                "blob {} at offset {} but the previous one ends at {expect}",
                e.id, e.offset
            ));
        }
        expect += u64::from(e.length);
    }
    if expect != body_len {
        return Err(format!(
            "entries cover {expect} bytes but the body has {body_len}"
        ));
    }
    Ok(entries)
}
