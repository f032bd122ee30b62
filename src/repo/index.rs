//! The blob index: in memory, a map from blob id to where the blob lives;
//! on storage, `index/<id>` objects written after the packs they list.
//!
//! Index object plaintext (sealed with kind INDEX):
//! `u8 1 || u32 LE pack count || per pack: pack id(32) || u32 LE entry
//! count || entries` with entries encoded as in pack headers.

use std::collections::HashMap;

use super::id::{BlobId, BlobKind, PackId};
use super::pack::{ENTRY_LEN, PackEntry, Reader, encode_entry};

pub(crate) const PREFIX: &str = "index/";

/// Packs and their entries, as listed by one index object.
pub(crate) type PackList = Vec<(PackId, Vec<PackEntry>)>;
const INDEX_VERSION: u8 = 1;

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub pack: PackId,
    pub kind: BlobKind,
    /// Offset of the sealed blob in the pack.
    pub offset: u64,
    /// Sealed length.
    pub length: u64,
    /// Plaintext length.
    pub raw_length: u64,
}

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

/// `Err((is_format, reason))`: a version we do not know, or damage.
pub(crate) fn decode(plain: &[u8]) -> Result<PackList, (bool, String)> {
    let mut r = Reader::new(plain);
    let version = r.u8().map_err(|e| (false, e))?;
    if version != INDEX_VERSION {
        return Err((true, format!("index version {version}")));
    }
    let mut parse = || -> Result<_, String> {
        let count = r.u32()?;
        // Each pack needs at least 36 bytes; check before allocating.
        if (count as usize).saturating_mul(36) > r.remaining() {
            return Err(format!("{count} packs announced but not present"));
        }
        let mut packs = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let id = PackId(r.id32()?);
            let n = r.u32()?;
            packs.push((id, r.entries(n)?));
        }
        if r.remaining() != 0 {
            return Err(format!("{} stray bytes at the end", r.remaining()));
        }
        Ok(packs)
    };
    parse().map_err(|e| (false, e))
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
        assert!(decode(&v).unwrap_err().0);
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
