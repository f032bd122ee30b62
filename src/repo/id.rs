//! Identifiers: 32-byte hashes shown as 64 hex digits, and blob kinds.

use std::fmt;
use std::str::FromStr;

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an id (64 hex digits)")]
pub struct ParseIdError(pub String);

fn parse_hex32(s: &str) -> Result<[u8; 32], ParseIdError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| {
        // Never echo a huge input into an error message.
        let shown: String = s.chars().take(80).collect();
        ParseIdError(shown)
    })?;
    Ok(out)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lowercase hex, as used in object keys.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, ParseIdError> {
                parse_hex32(s).map($name)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// Keyed BLAKE3 of a blob's plaintext (key: the repository's id key).
    BlobId
);
id_type!(
    /// BLAKE3 of a pack file's stored bytes.
    PackId
);
id_type!(
    /// BLAKE3 of a snapshot object's stored bytes.
    SnapshotId
);

/// What a blob holds. The kind byte is the AEAD associated data of the
/// blob, so a blob cannot be passed off as another kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// A chunk of file content.
    Data,
    /// A directory listing of a volume tree or of the resource catalogue.
    Tree,
    /// One Kubernetes object as normalised JSON.
    Object,
}

impl BlobKind {
    pub(crate) fn byte(self) -> u8 {
        match self {
            BlobKind::Data => 1,
            BlobKind::Tree => 2,
            BlobKind::Object => 3,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(BlobKind::Data),
            2 => Some(BlobKind::Tree),
            3 => Some(BlobKind::Object),
            _ => None,
        }
    }
}

impl fmt::Display for BlobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlobKind::Data => "data",
            BlobKind::Tree => "tree",
            BlobKind::Object => "object",
        })
    }
}
