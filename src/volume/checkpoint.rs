//! File-level resume for `volume-backup` (docs/format.md §18).
//!
//! While a backup runs, every file it has read completely is recorded;
//! once the chunks of such files are listed in stored index objects, they
//! are saved in a checkpoint object, at least every `STOW_RESUME_BUFFER`
//! bytes of files and every [`CHECKPOINT_EVERY`]. A backup of the same plan
//! and volume run again before a snapshot completes (the Job's retry after
//! a crash, or a person) takes an unchanged file (same size, mtime, ctime
//! and inode, as incremental backups decide) from those checkpoints
//! without reading it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::tree::Node;
use crate::repo::{RepoError, Repository};

/// Unsaved progress older than this is saved (the writer's period).
pub const CHECKPOINT_EVERY: Duration = crate::repo::CHECKPOINT_EVERY;
/// How often the recorder looks whether a checkpoint is due: often enough
/// that a fast backup (hundreds of MB/s) still saves one about every
/// resume buffer; a look costs a few hash lookups per pending file.
pub(super) const POLL: Duration = Duration::from_millis(200);
/// Files per checkpoint object at most, so one stays small.
const MAX_FILES: usize = 50_000;

/// The plaintext JSON of a checkpoint object.
#[derive(Debug, Serialize, Deserialize)]
struct Doc {
    version: u32,
    run_id: String,
    plan: String,
    volume: String,
    time: jiff::Timestamp,
    /// `dev` of the volume root: file `dev`s are compared only when the
    /// rerun's root has the same (a new clone of a CSI snapshot mounts
    /// with a new device number).
    root_dev: u64,
    /// Files read completely; `name` is the path relative to the volume
    /// root, `/`-separated.
    files: Vec<Node>,
}

/// What earlier unfinished runs stored: path → (node, compare `dev`).
#[derive(Default)]
pub(super) struct Resume {
    files: HashMap<Vec<u8>, (Node, bool)>,
}

impl Resume {
    /// Loads the checkpoints of `volume` in `plan` saved after `after`
    /// (the parent snapshot's time: older ones are superseded by it).
    /// A checkpoint that cannot be read only costs reading those files.
    pub async fn load(
        repo: &Repository,
        plan: &str,
        volume: &str,
        after: Option<jiff::Timestamp>,
        root_dev: u64,
    ) -> Result<Resume, RepoError> {
        let mut docs = Vec::new();
        for (key, r) in repo.checkpoints(plan, volume).await? {
            let doc = r.and_then(|plain| {
                serde_json::from_slice::<Doc>(&plain)
                    .map_err(|e| RepoError::format(&key, format!("not a volume checkpoint: {e}")))
            });
            match doc {
                Ok(d) if d.plan == plan && d.volume == volume => {
                    if after.is_none_or(|t| d.time > t) {
                        docs.push(d);
                    }
                }
                Ok(_) => warn!(%key, "checkpoint filed under another plan or volume; ignored"),
                Err(e) => {
                    warn!(%key, error = %e, "unreadable checkpoint ignored; its files are read again")
                }
            }
        }
        // Newest last, so its entry for a path wins.
        docs.sort_by_key(|d| d.time);
        let mut files = HashMap::new();
        let mut runs = Vec::new();
        for d in docs {
            if !runs.contains(&d.run_id) {
                runs.push(d.run_id.clone());
            }
            let strict = d.root_dev == root_dev;
            for mut n in d.files {
                let path = std::mem::take(&mut n.name);
                files.insert(path, (n, strict));
            }
        }
        if !files.is_empty() {
            info!(volume, files = files.len(), runs = ?runs, "resuming: files an unfinished backup already stored are not read again");
        }
        Ok(Resume { files })
    }

    /// The checkpointed node at `rel`, and whether to compare `dev`.
    pub fn get(&self, rel: &[u8]) -> Option<(&Node, bool)> {
        self.files.get(rel).map(|(n, strict)| (n, *strict))
    }
}

/// Files read completely in this run and not yet in a checkpoint.
pub(super) struct Recorder {
    run_id: String,
    plan: String,
    volume: String,
    root_dev: u64,
    /// Bytes of files between checkpoints (`STOW_RESUME_BUFFER`).
    buffer: u64,
    pending: Mutex<Vec<Node>>,
    /// Checkpoints saved.
    pub saved: AtomicU64,
}

impl Recorder {
    pub fn new(run_id: &str, plan: &str, volume: &str, root_dev: u64, buffer: u64) -> Recorder {
        Recorder {
            run_id: run_id.into(),
            plan: plan.into(),
            volume: volume.into(),
            root_dev,
            buffer: buffer.max(1),
            pending: Mutex::new(Vec::new()),
            saved: AtomicU64::new(0),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Node>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A file at `rel` was read completely into `node`'s chunks.
    pub fn record(&self, rel: Vec<u8>, node: &Node) {
        let mut n = node.clone();
        n.name = rel;
        self.pending().push(n);
    }

    /// Saves the recorded files whose chunks are all durable when they
    /// add up to the buffer, or when `due` and there are any. Returns
    /// whether a checkpoint was saved.
    pub async fn save_if(&self, repo: &Repository, due: bool) -> Result<bool, RepoError> {
        let ready = {
            let mut pending = self.pending();
            let (ready, wait): (Vec<Node>, Vec<Node>) = std::mem::take(&mut *pending)
                .into_iter()
                .partition(|n| n.content.iter().all(|id| repo.is_durable(id)));
            *pending = wait;
            let bytes: u64 = ready.iter().map(|n| n.size).sum();
            if ready.is_empty() || !(due || bytes >= self.buffer || ready.len() >= MAX_FILES) {
                pending.extend(ready);
                return Ok(false);
            }
            ready
        };
        let mut ready = ready;
        while !ready.is_empty() {
            let rest = ready.split_off(ready.len().min(MAX_FILES));
            let files = std::mem::replace(&mut ready, rest);
            let (count, bytes) = (files.len(), files.iter().map(|n| n.size).sum::<u64>());
            let doc = Doc {
                version: 1,
                run_id: self.run_id.clone(),
                plan: self.plan.clone(),
                volume: self.volume.clone(),
                time: jiff::Timestamp::now(),
                root_dev: self.root_dev,
                files,
            };
            let json = serde_json::to_vec(&doc).expect("a checkpoint serialises");
            match repo.save_checkpoint(&self.plan, &self.volume, &json).await {
                Ok(key) => {
                    debug!(%key, files = count, bytes, "checkpoint saved");
                    self.saved.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    // Kept for the next attempt.
                    let mut pending = self.pending();
                    pending.extend(doc.files);
                    pending.extend(ready);
                    return Err(e);
                }
            }
        }
        Ok(true)
    }
}
