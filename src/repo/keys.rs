//! Key objects `keys/<id>`: the master key material sealed with a key
//! derived from a password. Several may exist, one per password.

use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::crypto::{self, MASTER_LEN, MasterKey};
use super::{RepoError, Repository};
use crate::config::Secret;

pub(crate) const PREFIX: &str = "keys/";
const KDF: &str = "pbkdf2-hmac-sha256";
const VERSION: u32 = 1;
/// OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
pub const MIN_ITERATIONS: u32 = 600_000;
/// Opening refuses more than this, so a planted key object cannot make
/// `open` spin for hours.
const MAX_ITERATIONS: u32 = 100_000_000;

/// How new key objects are derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyParams {
    iterations: u32,
}

impl Default for KeyParams {
    fn default() -> Self {
        Self {
            iterations: MIN_ITERATIONS,
        }
    }
}

impl KeyParams {
    /// At least [`MIN_ITERATIONS`].
    pub fn new(iterations: u32) -> Self {
        Self {
            iterations: iterations.max(MIN_ITERATIONS),
        }
    }

    /// Any count, for fast unit tests. Never use outside tests.
    #[doc(hidden)]
    pub fn insecure_for_tests(iterations: u32) -> Self {
        Self {
            iterations: iterations.max(1),
        }
    }

    /// PBKDF2-HMAC-SHA256 iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    kdf: String,
    iterations: u32,
    salt: String,
    data: String,
    created: jiff::Timestamp,
}

/// Object key of a key object with this id.
pub(crate) fn object_key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

/// A new key object for `master` under `password`: its id and bytes.
pub(crate) fn create(master: &MasterKey, password: &str, params: KeyParams) -> (String, Bytes) {
    let salt = crypto::random::<32>();
    let iterations = NonZeroU32::new(params.iterations).expect("at least 1");
    let sealed = crypto::seal_with_password(password, &salt, iterations, master.material());
    let file = KeyFile {
        version: VERSION,
        kdf: KDF.into(),
        iterations: params.iterations,
        salt: B64.encode(salt),
        data: B64.encode(sealed),
        created: jiff::Timestamp::now(),
    };
    let bytes = serde_json::to_vec_pretty(&file).expect("key file serialises");
    let id = blake3::hash(&bytes).to_hex().to_string();
    (id, Bytes::from(bytes))
}

/// The master key if `password` opens this key object, `None` if it does
/// not; an error if the object is not a key object we understand.
pub(crate) fn unlock(
    key: &str,
    bytes: &[u8],
    password: &str,
) -> Result<Option<MasterKey>, RepoError> {
    let file: KeyFile = serde_json::from_slice(bytes)
        .map_err(|e| RepoError::format(key, format!("not a key object: {e}")))?;
    if file.version != VERSION || file.kdf != KDF {
        return Err(RepoError::format(
            key,
            format!("key version {} with kdf {}", file.version, file.kdf),
        ));
    }
    let iterations = NonZeroU32::new(file.iterations)
        .filter(|n| n.get() <= MAX_ITERATIONS)
        .ok_or_else(|| {
            RepoError::format(
                key,
                format!("iteration count {} out of range", file.iterations),
            )
        })?;
    let decode = |field: &str, s: &str| {
        B64.decode(s)
            .map_err(|e| RepoError::corrupt(key, None, format!("{field} is not base64: {e}")))
    };
    let salt = decode("salt", &file.salt)?;
    let sealed = decode("data", &file.data)?;
    let Some(material) = crypto::open_with_password(password, &salt, iterations, &sealed) else {
        return Ok(None);
    };
    let material: &[u8; MASTER_LEN] = material[..]
        .try_into()
        .map_err(|_| RepoError::corrupt(key, None, "key material has the wrong length"))?;
    Ok(Some(MasterKey::from_bytes(material)))
}

impl Repository {
    /// Adds a key object for another password; returns its id.
    pub async fn add_key(&self, new_password: &Secret) -> Result<String, RepoError> {
        let material = *self.inner.master.material();
        let (pw, params) = (new_password.expose().to_string(), self.inner.key_params);
        let (id, bytes) = self
            .blocking("deriving a key", move || {
                create(&MasterKey::from_bytes(&material), &pw, params)
            })
            .await?;
        self.inner.backend.put(&object_key(&id), bytes).await?;
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
        self.inner.backend.delete(&object_key(key_id)).await?;
        Ok(())
    }

    /// Ids of all key objects.
    pub async fn list_keys(&self) -> Result<Vec<String>, RepoError> {
        let mut ids: Vec<String> = self
            .inner
            .backend
            .list(PREFIX)
            .await?
            .into_iter()
            .map(|o| o.key[PREFIX.len()..].to_string())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The key object this process opened the repository with.
    pub fn key_id(&self) -> &str {
        &self.inner.key_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_unlock() {
        let m = MasterKey::generate();
        let (id, bytes) = create(&m, "pw", KeyParams::insecure_for_tests(3));
        assert_eq!(id, blake3::hash(&bytes).to_hex().to_string());
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains("\"iterations\": 3"), "{text}");
        let k = unlock("keys/x", &bytes, "pw").unwrap().unwrap();
        assert_eq!(k.material(), m.material());
        assert!(unlock("keys/x", &bytes, "nope").unwrap().is_none());
    }

    #[test]
    fn params_enforce_the_minimum() {
        assert_eq!(KeyParams::new(1).iterations(), MIN_ITERATIONS);
        assert_eq!(KeyParams::default().iterations(), MIN_ITERATIONS);
    }

    #[test]
    fn absurd_iteration_counts_are_refused() {
        let m = MasterKey::generate();
        let (_, bytes) = create(&m, "pw", KeyParams::insecure_for_tests(3));
        let text = String::from_utf8(bytes.to_vec())
            .unwrap()
            .replace("\"iterations\": 3", "\"iterations\": 4000000000");
        let err = unlock("keys/x", text.as_bytes(), "pw").err().unwrap();
        assert!(err.to_string().contains("keys/x"), "{err}");
    }
}
