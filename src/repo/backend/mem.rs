//! In-memory backend for unit tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, BackendError, ObjectInfo, Result, check_key};

/// Keeps objects in process memory; for tests.
#[derive(Debug, Default)]
pub struct MemBackend {
    objects: Mutex<BTreeMap<String, Bytes>>,
}

impl MemBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn not_found(key: &str) -> BackendError {
        BackendError::NotFound {
            location: "mem://".into(),
            key: key.into(),
        }
    }

    /// Test hook: overwrite an object in place, bypassing immutability.
    pub fn tamper(&self, key: &str, f: impl FnOnce(&mut Vec<u8>)) {
        let mut objects = self.objects.lock().unwrap();
        let mut data = objects.get(key).expect("tamper: no such key").to_vec();
        f(&mut data);
        objects.insert(key.into(), Bytes::from(data));
    }
}

#[async_trait]
impl Backend for MemBackend {
    fn location(&self) -> String {
        "mem://".into()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let objects = self.objects.lock().unwrap();
        Ok(objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo {
                key: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| Self::not_found(key))
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        let data = self.get(key).await?;
        let end = offset.saturating_add(len);
        if end > data.len() as u64 {
            return Err(BackendError::Permanent {
                location: self.location(),
                op: "get range",
                key: key.into(),
                message: format!("range {offset}+{len} beyond object size {}", data.len()),
            });
        }
        Ok(data.slice(offset as usize..end as usize))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        check_key(&self.location(), "put", key)?;
        self.objects.lock().unwrap().insert(key.into(), data);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .map(|v| v.len() as u64))
    }

    async fn probe(&self) -> Result<()> {
        Ok(())
    }
}
