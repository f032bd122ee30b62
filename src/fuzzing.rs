//! Harnesses for the fuzz targets in `fuzz/` (`just fuzz`). Not an API.
//!
//! A repository may be written by an attacker who holds its key, so every
//! decoder must turn any bytes into a value or an error: no panic, no
//! allocation beyond a stated cap, no endless loop. Each function here feeds
//! one decoder the bytes such an attacker could store (the plaintext, for
//! what is decoded after decryption) and asserts what must hold of whatever
//! it accepts. A failed assertion or a panic is a crash to the fuzzer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::config::{Compression, Config, ConfigErrors, vars};
use crate::repo::crypto::{MASTER_LEN, MAX_BLOB_LEN, MAX_META_LEN, MasterKey, kind};
use crate::repo::{BlobId, RepoError, index, pack, snapshot};
use crate::resources::Catalogue;
use crate::volume::tree::{self, Tree};

/// A harness: bytes in, a panic on anything that must not happen.
pub type Harness = fn(&[u8]);

/// The targets, by name: what `fuzz/fuzz_targets/<name>.rs` runs.
pub const TARGETS: &[(&str, Harness)] = &[
    ("pack", pack),
    ("index", index),
    ("manifest", manifest),
    ("tree", tree),
    ("catalogue", catalogue),
    ("config", config),
    ("envelope", envelope),
];

fn split_u64(data: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = data.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
}

/// A pack's size and tail, and a decrypted pack header.
///
/// `data`: the pack size (u64 LE), the pack's last 4 bytes (the sealed
/// header's length), then the header plaintext, parsed as the header of a
/// pack body of that size. An accepted header tiles the body exactly and
/// encodes back to the same bytes.
pub fn pack(data: &[u8]) {
    let Some((size, rest)) = split_u64(data) else {
        return;
    };
    let Some((tail, plain)) = rest.split_first_chunk::<4>() else {
        return;
    };
    if pack::check_size("fuzz", size).is_ok()
        && let Ok(body) = pack::body_len("fuzz", size, tail)
    {
        assert!(body <= size - 4, "body {body} of a {size}-byte pack");
    }
    let Ok(entries) = pack::parse_header(plain, size) else {
        return;
    };
    let mut end = 0u64;
    for e in &entries {
        assert_eq!(u64::from(e.offset), end, "entries leave a gap");
        end += u64::from(e.length);
    }
    assert_eq!(end, size, "entries do not cover the body");
    let mut again = (entries.len() as u32).to_le_bytes().to_vec();
    for e in &entries {
        pack::encode_entry(e, &mut again);
    }
    assert_eq!(again, plain, "the header does not encode back");
}

/// A decrypted index object. An accepted one encodes back to the same
/// bytes, and every blob it lists can be looked up once loaded.
pub fn index(plain: &[u8]) {
    let Ok(packs) = index::decode(plain) else {
        return;
    };
    assert_eq!(
        index::encode(&packs),
        plain,
        "the index does not encode back"
    );
    let mut ix = index::Index::default();
    for (id, entries) in &packs {
        ix.add_pack(*id, entries, true);
    }
    for (_, entries) in &packs {
        for e in entries {
            assert!(ix.get(&e.id).is_some() && ix.is_persisted(&e.id));
        }
    }
}

/// A decrypted snapshot manifest. An accepted one survives being written
/// again (as `save_snapshot` and `copy` do) and grouped into runs.
pub fn manifest(plain: &[u8]) {
    let Ok(m) = snapshot::decode_manifest("snapshots/fuzz", plain) else {
        return;
    };
    let json = serde_json::to_vec(&m).expect("a manifest serialises");
    let again = snapshot::decode_manifest("snapshots/fuzz", &json)
        .unwrap_or_else(|e| panic!("a manifest written again does not decode: {e}"));
    assert_eq!(again, m, "the manifest does not round-trip");
    let runs = crate::repo::group_runs(vec![(crate::repo::SnapshotId([0; 32]), m)]);
    assert_eq!(runs.len(), 1);
}

/// A volume tree (a decrypted Tree blob). An accepted tree encodes to a tree
/// that decodes to it, and each of its names can be looked up.
pub fn tree(json: &[u8]) {
    let Ok(t) = Tree::decode(json) else {
        return;
    };
    let again = Tree::decode(&t.encode())
        .unwrap_or_else(|e| panic!("a tree written again does not decode: {e}"));
    assert_eq!(again, t, "the tree does not round-trip");
    for n in &t.nodes {
        assert!(t.find(&n.name).is_some(), "a node cannot be found by name");
        let shown = tree::display_path(&n.name);
        assert!(!shown.contains('\n'), "a shown name spans lines");
    }
}

/// A resource catalogue: its Tree blobs, separated by `0xff` (which JSON
/// text never contains). Blob `i` has the id `[i; 32]` (hex `0101…` for the
/// second), and blob 0 is the root. Reading must give a catalogue and
/// problems, or fail on the root; never panic.
pub fn catalogue(data: &[u8]) {
    let blobs: HashMap<BlobId, Bytes> = data
        .split(|b| *b == 0xff)
        .take(256)
        .enumerate()
        .map(|(i, b)| (BlobId([i as u8; 32]), Bytes::copy_from_slice(b)))
        .collect();
    let read = |id: BlobId| {
        let found = blobs.get(&id).cloned().ok_or(RepoError::MissingBlob { id });
        async move { found }
    };
    let root = BlobId([0; 32]);
    let Ok((cat, _problems)) =
        futures::executor::block_on(Catalogue::read_from(read, &root, |_| true))
    else {
        return;
    };
    let counted: u64 = cat.counts().values().sum();
    assert_eq!(counted, cat.len());
}

/// A fixed key, so that a crashing input crashes again.
fn fuzz_key() -> &'static MasterKey {
    static KEY: OnceLock<MasterKey> = OnceLock::new();
    KEY.get_or_init(|| MasterKey::from_bytes(&[0x5a; MASTER_LEN]))
}

/// The sealed envelope around every object: `data` is a selector byte then
/// the encrypted part of an envelope (compression byte, declared length,
/// payload) exactly as an attacker with the key could write it. Opening
/// must keep to the cap the reader gives; sealing `data` and opening it
/// gives it back, raw and compressed.
pub fn envelope(data: &[u8]) {
    let Some((&sel, inner)) = data.split_first() else {
        return;
    };
    let (kind, cap) = match sel % 3 {
        0 => (kind::KEY, MASTER_LEN),
        1 => (1, MAX_BLOB_LEN),
        _ => (kind::INDEX, MAX_META_LEN),
    };
    let key = fuzz_key();
    let sealed = Bytes::from(key.seal_inner(kind, inner));
    if let Ok(plain) = key.open(kind, sealed.clone(), cap) {
        assert!(
            plain.len() <= cap,
            "opened {} bytes past the cap",
            plain.len()
        );
    }
    assert!(
        key.open(kind ^ 0x80, sealed, cap).is_err(),
        "opened as another kind"
    );
    for compression in [Compression::None, Compression::FAST] {
        let sealed = key.seal(kind, compression, data);
        let opened = key.open(kind, Bytes::from(sealed), data.len());
        assert_eq!(opened.as_deref(), Ok(data), "seal then open differs");
    }
}

/// Marks the value of a secret variable; never in any other input.
const SECRET_MARK: &str = "qzsecretmarkq";
/// Marks the password in a URL's credentials; never in any other input.
const URL_MARK: &str = "qzurlpwmarkq";

fn without(mut s: String, mark: &str) -> String {
    while s.contains(mark) {
        s = s.replace(mark, "");
    }
    s
}

/// `value` with `mark` inserted in its middle.
fn marked(value: &str, mark: &str) -> String {
    let mut mid = value.len() / 2;
    while !value.is_char_boundary(mid) {
        mid -= 1;
    }
    format!("{}{mark}{}", &value[..mid], &value[mid..])
}

fn password_file(var: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kubestow-fuzz-{}-{var}", std::process::id()))
}

/// The configuration parser. `data` is text: the first line is the mode
/// argument (none if empty); each further line is `NAME=VALUE`, where a
/// NAME of `@n` is the n-th known variable and `\n` in a VALUE is a line
/// break. Secret variables (passwords, inline or in a file) get a marker
/// in their value, and so does the password of credentials written
/// `{cred}` right after a repository's or gateway's `scheme://`; no error
/// and no logged configuration may show a marker.
pub fn config(data: &[u8]) {
    let text = without(
        without(String::from_utf8_lossy(data).into_owned(), SECRET_MARK),
        URL_MARK,
    );
    let mut lines = text.split('\n');
    let mode = lines.next().filter(|m| !m.is_empty());
    let mut pairs = Vec::new();
    for line in lines {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        let name = match name.strip_prefix('@').map(str::parse::<usize>) {
            Some(Ok(n)) => vars::ALL[n % vars::ALL.len()].name.to_string(),
            _ => name.to_string(),
        };
        let mut value = value.replace("\\n", "\n");
        // The loader matches names without regard to case after `STOW_`.
        let upper = name.to_ascii_uppercase();
        if vars::find(&upper).is_some_and(|v| v.secret) {
            value = marked(&value, SECRET_MARK);
        } else if upper == vars::PASSWORD_FILE || upper == vars::COPY_TO_PASSWORD_FILE {
            let path = password_file(&upper);
            std::fs::write(&path, marked(&value, SECRET_MARK)).expect("temp file");
            value = path.display().to_string();
        } else if [
            vars::REPOSITORY,
            vars::COPY_TO_REPOSITORY,
            vars::PUSHGATEWAY_URL,
        ]
        .contains(&upper.as_str())
            && let Some(at) = value.find("://")
            && value[at + 3..].starts_with("{cred}")
        {
            let cred = format!("user:{URL_MARK}@");
            value.replace_range(at + 3..at + 3 + "{cred}".len(), &cred);
        }
        pairs.push((name, value));
    }
    let shown = match Config::from_vars(pairs, mode) {
        Ok(cfg) => format!("{cfg:?}"),
        Err(ConfigErrors(errors)) => {
            let mut shown = ConfigErrors(errors.clone()).to_string();
            for e in &errors {
                shown.push_str(&format!("\n{e}\n{e:?}"));
            }
            shown
        }
    };
    assert!(!shown.contains(SECRET_MARK), "a secret is shown: {shown}");
    assert!(
        !shown.contains(URL_MARK),
        "URL credentials are shown: {shown}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every harness accepts its committed seeds (the corpus the fuzzer
    /// starts from), so the harnesses are exercised by `cargo test` too.
    #[test]
    fn seeds_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        for (name, run) in TARGETS {
            let dir = root.join(name);
            let mut n = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                run(&std::fs::read(entry.unwrap().path()).unwrap());
                n += 1;
            }
            assert!(n > 0, "no seeds for {name}");
        }
    }
}
