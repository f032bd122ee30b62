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
use std::collections::hash_map::Entry;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::tree::Node;
use crate::repo::{CheckpointHeader, RepoError, Repository};

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

/// What earlier unfinished runs stored: path → (node, compare `dev`,
/// time of the checkpoint it came from).
#[derive(Default)]
pub(super) struct Resume {
    files: HashMap<Vec<u8>, (Node, bool, jiff::Timestamp)>,
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
        // Folded one object at a time, each entry kept only if no newer
        // checkpoint has the path: the objects of a finished run stay
        // until prune and are superseded by its snapshot, so they are
        // skipped by their header before their files are decoded.
        let mut files: HashMap<Vec<u8>, (Node, bool, jiff::Timestamp)> = HashMap::new();
        let mut runs = Vec::new();
        let mut objects = std::pin::pin!(repo.checkpoints(plan, volume).await?);
        while let Some((key, r)) = objects.next().await {
            let d = match r.and_then(|plain| current(&key, &plain, plan, volume, after)) {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => {
                    warn!(%key, error = %e, "unreadable checkpoint ignored; its files are read again");
                    continue;
                }
            };
            if !runs.contains(&d.run_id) {
                runs.push(d.run_id.clone());
            }
            let strict = d.root_dev == root_dev;
            for mut n in d.files {
                let path = std::mem::take(&mut n.name);
                match files.entry(path) {
                    // A newer checkpoint has it already.
                    Entry::Occupied(o) if o.get().2 > d.time => {}
                    e => {
                        e.insert_entry((n, strict, d.time));
                    }
                }
            }
        }
        if !files.is_empty() {
            info!(volume, files = files.len(), runs = ?runs, "resuming: files an unfinished backup already stored are not read again");
        }
        Ok(Resume { files })
    }

    /// The checkpointed node at `rel`, and whether to compare `dev`.
    pub fn get(&self, rel: &[u8]) -> Option<(&Node, bool)> {
        self.files.get(rel).map(|(n, strict, _)| (n, *strict))
    }
}

/// The checkpoint in `plain` (object `key`) if it belongs to `plan` and
/// `volume` and is newer than `after`. Its header is read first, so a
/// superseded one costs no decoding of its files.
fn current(
    key: &str,
    plain: &[u8],
    plan: &str,
    volume: &str,
    after: Option<jiff::Timestamp>,
) -> Result<Option<Doc>, RepoError> {
    let not =
        |e: serde_json::Error| RepoError::format(key, format!("not a volume checkpoint: {e}"));
    let head: CheckpointHeader = serde_json::from_slice(plain).map_err(not)?;
    if head.plan != plan || head.volume != volume {
        warn!(%key, "checkpoint filed under another plan or volume; ignored");
        return Ok(None);
    }
    if after.is_some_and(|t| head.time <= t) {
        return Ok(None);
    }
    serde_json::from_slice(plain).map(Some).map_err(not)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::tree::NodeType;

    fn file(name: &str, size: u64) -> Node {
        Node {
            name: name.into(),
            kind: NodeType::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 1,
            dev: 1,
            nlink: 1,
            rdev: 0,
            target: None,
            link: None,
            xattrs: Default::default(),
            content: vec![],
            subtree: None,
        }
    }

    async fn save(repo: &Repository, plan: &str, run: &str, time: &str, files: Vec<Node>) {
        let doc = Doc {
            version: 1,
            run_id: run.into(),
            plan: plan.into(),
            volume: "ns/a".into(),
            time: time.parse().unwrap(),
            root_dev: 7,
            files,
        };
        let json = serde_json::to_vec(&doc).unwrap();
        // Filed under "daily" whatever the document says, as an attacker
        // or a bug could.
        repo.save_checkpoint("daily", "ns/a", &json).await.unwrap();
    }

    /// Checkpoints are folded one at a time in whatever order they are
    /// listed: the newest entry for a path wins, and those no newer than
    /// the parent snapshot, or of another plan, are left out.
    #[tokio::test]
    async fn the_newest_checkpoint_of_a_path_wins_in_any_order() {
        let (_, repo) = crate::testutil::mem().await;
        // Object keys are content hashes, so listing order is arbitrary;
        // several runs make both orders likely among these pairs.
        for i in 0..4u64 {
            let (old, new) = (format!("old{i}"), format!("new{i}"));
            save(
                &repo,
                "daily",
                "r1",
                "2026-03-01T02:00:00Z",
                vec![file(&old, 1), file("same", 1)],
            )
            .await;
            save(
                &repo,
                "daily",
                "r2",
                "2026-03-01T03:00:00Z",
                vec![file(&new, 2), file("same", 2)],
            )
            .await;
        }
        save(
            &repo,
            "daily",
            "r0",
            "2026-03-01T01:00:00Z",
            vec![file("before-parent", 9)],
        )
        .await;
        save(
            &repo,
            "hourly",
            "r3",
            "2026-03-01T04:00:00Z",
            vec![file("other-plan", 9)],
        )
        .await;

        let after = Some("2026-03-01T01:30:00Z".parse().unwrap());
        let r = Resume::load(&repo, "daily", "ns/a", after, 7)
            .await
            .unwrap();
        assert_eq!(
            r.get(b"same").map(|(n, strict)| (n.size, strict)),
            Some((2, true))
        );
        assert_eq!(r.get(b"old3").unwrap().0.size, 1);
        assert_eq!(r.get(b"new0").unwrap().0.size, 2);
        assert!(r.get(b"before-parent").is_none());
        assert!(r.get(b"other-plan").is_none());
        assert_eq!(r.files.len(), 9);

        // Without a parent the oldest counts too; another root device
        // means `dev` is not compared.
        let r = Resume::load(&repo, "daily", "ns/a", None, 8).await.unwrap();
        assert_eq!(
            r.get(b"before-parent").map(|(n, s)| (n.size, s)),
            Some((9, false))
        );
        assert_eq!(r.get(b"same").unwrap().0.size, 2);
    }
}
