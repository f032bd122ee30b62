//! Mover results `movers/<run key>/<volume key>/<id>`: what a mover Job
//! hands back to the backup that started it (docs/format.md §17).
//!
//! A mover saves its volume's tree and this result, never a snapshot: the
//! orchestrating backup reads the results of its run and links every tree
//! in the one manifest it writes last. Keys are keyed hashes of the run id
//! and the volume name, so the storage provider learns neither.

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::crypto::{MAX_META_LEN, kind};
use super::{RepoError, Repository, VolumeEntry, check_content_name, open_error};

/// Key prefix of all mover results.
pub const PREFIX: &str = "movers/";

/// One volume, backed up by a mover for run `run_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoverResult {
    /// Format version of the result.
    pub version: u32,
    /// The backup run the mover worked for.
    pub run_id: String,
    /// The volume's name in the snapshot, `namespace/claim`.
    pub volume: String,
    /// When the result was saved.
    pub time: jiff::Timestamp,
    /// The volume's entry for the snapshot manifest (its tree).
    pub entry: VolumeEntry,
    /// The mover's own report (counts, bytes, item errors).
    #[serde(default)]
    pub report: serde_json::Value,
}

impl Repository {
    fn mover_prefix(&self, run_id: &str, volume: Option<&str>) -> String {
        let run = self.blob_id(format!("mover-run\0{run_id}").as_bytes());
        match volume {
            Some(v) => {
                let vol = self.blob_id(format!("mover-volume\0{v}").as_bytes());
                format!("{PREFIX}{run}/{vol}/")
            }
            None => format!("{PREFIX}{run}/"),
        }
    }

    /// Saves a mover's result. Like a manifest, it may only point at a
    /// tree that a stored index lists (flush the writer first).
    pub async fn save_mover_result(&self, result: &MoverResult) -> Result<String, RepoError> {
        let root = result.entry.root;
        {
            let ix = self.index();
            if !ix.is_persisted(&root) {
                return Err(if ix.contains(&root) {
                    RepoError::NotFlushed { id: root }
                } else {
                    RepoError::MissingBlob { id: root }
                });
            }
        }
        let json = serde_json::to_vec(result).expect("mover result serialises");
        let sealed = self.seal(kind::MOVER, &json);
        let key = format!(
            "{}{}",
            self.mover_prefix(&result.run_id, Some(&result.volume)),
            blake3::hash(&sealed).to_hex()
        );
        self.inner.backend.put(&key, Bytes::from(sealed)).await?;
        Ok(key)
    }

    /// The results movers saved for `volume` of run `run_id`, newest
    /// first (a Job retry after a late failure may have saved two).
    pub async fn mover_results(
        &self,
        run_id: &str,
        volume: &str,
    ) -> Result<Vec<MoverResult>, RepoError> {
        let prefix = self.mover_prefix(run_id, Some(volume));
        let objects = self.inner.backend.list(&prefix).await?;
        let mut out: Vec<MoverResult> = futures::stream::iter(objects)
            .map(|obj| async move {
                let r = self.read_mover_result(&obj.key).await?;
                if r.run_id != run_id || r.volume != volume {
                    return Err(RepoError::format(
                        &obj.key,
                        "mover result filed under another run or volume",
                    ));
                }
                Ok(r)
            })
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|r| std::cmp::Reverse(r.time));
        Ok(out)
    }

    /// Every mover result, with its key; an unreadable one comes back
    /// as an error beside its key (for `prune`, which removes the results
    /// of finished runs).
    pub async fn all_mover_results(
        &self,
    ) -> Result<Vec<(String, Result<MoverResult, RepoError>)>, RepoError> {
        let objects = self.inner.backend.list(PREFIX).await?;
        Ok(futures::stream::iter(objects)
            .map(|obj| async move {
                let r = self.read_mover_result(&obj.key).await;
                (obj.key, r)
            })
            .buffer_unordered(4)
            .collect()
            .await)
    }

    async fn read_mover_result(&self, key: &str) -> Result<MoverResult, RepoError> {
        let bytes = self.inner.backend.get(key).await?;
        let name_at = key.rfind('/').map_or(0, |i| i + 1);
        check_content_name(key, &key[..name_at], &bytes)?;
        let plain = self
            .inner
            .master
            .open(kind::MOVER, bytes, MAX_META_LEN)
            .map_err(|e| open_error(key, None, e))?;
        serde_json::from_slice(&plain)
            .map_err(|e| RepoError::format(key, format!("not a mover result: {e}")))
    }

    /// Deletes one mover result (only `prune` does this).
    pub async fn delete_mover_result(&self, key: &str) -> Result<(), RepoError> {
        Ok(self.inner.backend.delete(key).await?)
    }

    /// The key prefix of a run's mover results.
    pub fn mover_run_prefix(&self, run_id: &str) -> String {
        self.mover_prefix(run_id, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::backend::Backend;
    use crate::repo::{BlobKind, RepoError};

    #[tokio::test]
    async fn results_round_trip_per_run_and_volume() {
        let (mem, repo) = crate::testutil::mem().await;
        let w = repo.writer(1);
        let (tree, _) = w
            .add(BlobKind::Tree, Bytes::from_static(b"{\"nodes\":[]}"))
            .await
            .unwrap();
        let entry = VolumeEntry {
            root: tree,
            stats: serde_json::json!({"files": 1}),
        };
        let result = |volume: &str| MoverResult {
            version: 1,
            run_id: "run-1".into(),
            volume: volume.into(),
            time: jiff::Timestamp::now(),
            entry: entry.clone(),
            report: serde_json::Value::Null,
        };
        // Not flushed yet: refused, like a manifest.
        assert!(matches!(
            repo.save_mover_result(&result("ns/a")).await,
            Err(RepoError::NotFlushed { .. } | RepoError::MissingBlob { .. })
        ));
        w.finish().await.unwrap();
        let key = repo.save_mover_result(&result("ns/a")).await.unwrap();
        assert!(key.starts_with(&repo.mover_run_prefix("run-1")));
        assert!(!key.contains("run-1") && !key.contains("ns/a"), "{key}");
        let back = repo.mover_results("run-1", "ns/a").await.unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].entry, entry);
        assert_eq!(back[0].volume, "ns/a");
        let all = repo.all_mover_results().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, key);
        // A flipped byte is caught by the content name.
        let mut bytes = mem.get(&key).await.unwrap().to_vec();
        bytes[40] ^= 1;
        mem.put(&key, Bytes::from(bytes)).await.unwrap();
        assert!(repo.mover_results("run-1", "ns/a").await.is_err());
        assert!(
            repo.mover_results("run-1", "ns/b")
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            repo.mover_results("run-2", "ns/a")
                .await
                .unwrap()
                .is_empty()
        );
    }
}
