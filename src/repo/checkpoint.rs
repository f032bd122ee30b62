//! Volume checkpoints `checkpoints/<volume key>/<id>` (docs/format.md §18):
//! the files an unfinished volume backup has stored completely, so that
//! the backup run again (a Job retry, or by hand) takes them as they are
//! instead of reading them again.
//!
//! This module stores and lists the sealed objects; their `files` are
//! volume tree nodes, which [`crate::volume`] reads and writes. The key is
//! a keyed hash of the plan and the volume name, so the storage provider
//! learns neither.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;

use super::crypto::{MAX_META_LEN, kind};
use super::{RepoError, Repository, check_content_name, open_error};

/// Key prefix of all checkpoint objects.
pub const PREFIX: &str = "checkpoints/";
/// Checkpoint objects read at once.
const READ_AHEAD: usize = 4;

/// The fields every checkpoint has; `files` and the rest belong to the
/// volume module.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CheckpointHeader {
    /// Id of the run that saved it.
    pub run_id: String,
    /// Name of the backup plan.
    pub plan: String,
    /// Name of the volume being backed up.
    pub volume: String,
    /// When it was saved.
    pub time: jiff::Timestamp,
}

impl Repository {
    fn checkpoint_prefix(&self, plan: &str, volume: &str) -> String {
        let key = self.blob_id(format!("checkpoint-volume\0{plan}\0{volume}").as_bytes());
        format!("{PREFIX}{key}/")
    }

    /// Saves a checkpoint of `volume` (plan `plan`): UTF-8 JSON with at
    /// least the fields of [`CheckpointHeader`]. Every blob it names must
    /// already be listed in a stored index object (the reader checks
    /// again: it takes only what its index has).
    pub async fn save_checkpoint(
        &self,
        plan: &str,
        volume: &str,
        json: &[u8],
    ) -> Result<String, RepoError> {
        let sealed = self.seal(kind::CHECKPOINT, json);
        let key = format!(
            "{}{}",
            self.checkpoint_prefix(plan, volume),
            blake3::hash(&sealed).to_hex()
        );
        self.inner.backend.put(&key, Bytes::from(sealed)).await?;
        Ok(key)
    }

    /// The plaintext of every checkpoint of `volume` in plan `plan`, with
    /// its key, in no particular order. An unreadable one comes back as an
    /// error beside its key: a checkpoint only saves work, so the caller
    /// may go on without it. A stream, at most [`READ_AHEAD`] read at once,
    /// so the caller holds one at a time: a finished backup of a million
    /// files leaves about 250 MB of them until prune removes them.
    pub async fn checkpoints(
        &self,
        plan: &str,
        volume: &str,
    ) -> Result<impl Stream<Item = (String, Result<Bytes, RepoError>)> + '_, RepoError> {
        let objects = self
            .inner
            .backend
            .list(&self.checkpoint_prefix(plan, volume))
            .await?;
        Ok(futures::stream::iter(objects)
            .map(move |obj| async move {
                let r = self.read_checkpoint(&obj.key).await;
                (obj.key, r)
            })
            .buffer_unordered(READ_AHEAD))
    }

    /// Every checkpoint's header, with its key (for `prune`, which removes
    /// the checkpoints a complete backup has made useless).
    pub async fn all_checkpoints(
        &self,
    ) -> Result<Vec<(String, Result<CheckpointHeader, RepoError>)>, RepoError> {
        let objects = self.inner.backend.list(PREFIX).await?;
        Ok(futures::stream::iter(objects)
            .map(|obj| async move {
                let r = self.read_checkpoint(&obj.key).await.and_then(|plain| {
                    serde_json::from_slice(&plain)
                        .map_err(|e| RepoError::format(&obj.key, format!("not a checkpoint: {e}")))
                });
                (obj.key, r)
            })
            .buffer_unordered(READ_AHEAD)
            .collect()
            .await)
    }

    async fn read_checkpoint(&self, key: &str) -> Result<Bytes, RepoError> {
        let bytes = self.inner.backend.get(key).await?;
        let name_at = key.rfind('/').map_or(0, |i| i + 1);
        check_content_name(key, &key[..name_at], &bytes)?;
        self.inner
            .master
            .open(kind::CHECKPOINT, bytes, MAX_META_LEN)
            .map_err(|e| open_error(key, None, e))
    }

    /// Deletes one checkpoint (only `prune` does this).
    pub async fn delete_checkpoint(&self, key: &str) -> Result<(), RepoError> {
        Ok(self.inner.backend.delete(key).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::backend::Backend;

    #[tokio::test]
    async fn checkpoints_are_filed_per_plan_and_volume() {
        let (mem, repo) = crate::testutil::mem().await;
        let json = |run: &str| {
            format!(
                r#"{{"version":1,"run_id":"{run}","plan":"daily","volume":"ns/a","time":"2026-03-01T02:00:00Z","files":[]}}"#
            )
        };
        let key = repo
            .save_checkpoint("daily", "ns/a", json("run-1").as_bytes())
            .await
            .unwrap();
        assert!(key.starts_with(PREFIX));
        assert!(!key.contains("daily") && !key.contains("ns/a"), "{key}");
        let back: Vec<_> = repo
            .checkpoints("daily", "ns/a")
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(back.len(), 1);
        assert_eq!(
            back[0].1.as_ref().unwrap().as_ref(),
            json("run-1").as_bytes()
        );
        for (plan, volume) in [("hourly", "ns/a"), ("daily", "ns/b")] {
            let other = repo.checkpoints(plan, volume).await.unwrap();
            assert_eq!(other.count().await, 0, "{plan} {volume}");
        }
        let all = repo.all_checkpoints().await.unwrap();
        assert_eq!(all[0].1.as_ref().unwrap().run_id, "run-1");
        // A flipped byte is caught by the content name.
        let mut bytes = mem.get(&key).await.unwrap().to_vec();
        bytes[40] ^= 1;
        mem.put(&key, Bytes::from(bytes)).await.unwrap();
        let mut back = repo.checkpoints("daily", "ns/a").await.unwrap();
        assert!(back.next().await.unwrap().1.is_err());
        drop(back);
        repo.delete_checkpoint(&key).await.unwrap();
        assert!(repo.all_checkpoints().await.unwrap().is_empty());
    }
}
