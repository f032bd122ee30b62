//! File-tree archiver: `volume-backup` reads a directory into the
//! repository as a tree of nodes (docs/format.md §12), `volume-restore`
//! writes one back.
//!
//! Both walk the directory depth-first on one blocking thread, in name
//! order, and hand file contents to a bounded number of tasks at a time
//! (`STOW_CHANNELS`; a backup reads at least one file per core). Memory is
//! bounded by the listings along the current path plus a few chunks per
//! file in flight, whatever the number or size of files.

mod backup;
mod beneath;
mod checkpoint;
pub mod compare;
mod restore;
pub mod tree;

#[cfg(test)]
mod tests;

use crate::repo::{ChunkerParams, RepoError, Repository};

pub use backup::{BackupOptions, backup};
pub use restore::{RestoreOptions, restore};

/// Entries listed under `changed_files` in a report at most; the count is
/// always complete.
const MAX_LISTED: usize = 1000;

/// Why a volume backup or restore failed as a whole (a file that fails
/// alone is an item error in the report instead).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The volume's root (or another path the run cannot do without) could
    /// not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path as shown to users.
        path: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// `STOW_VOLUME_PATH` names something that is not a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path given.
        path: String,
    },
    /// The repository's chunk sizes are outside what FastCDC supports.
    #[error(
        "the repository's chunker sizes {min}/{avg}/{max} are outside what FastCDC 2020 supports \
         (min 64 B..1 MiB, avg 256 B..4 MiB, max 1 KiB..16 MiB, all even)"
    )]
    ChunkerParams {
        /// Smallest chunk, in bytes.
        min: u32,
        /// Average chunk, in bytes.
        avg: u32,
        /// Largest chunk, in bytes.
        max: u32,
    },
    /// No complete snapshot holds the volume (at or before the restore point).
    #[error("no complete snapshot {scope}contains volume `{volume}`")]
    NoSnapshot {
        /// The volume's name.
        volume: String,
        /// `at or before <time> `, or empty.
        scope: String,
    },
    /// `STOW_SNAPSHOT` names no single run.
    #[error("STOW_SNAPSHOT={wanted}: {reason}")]
    SnapshotNotFound {
        /// What was asked for.
        wanted: String,
        /// Why it names no run (none, or several).
        reason: String,
    },
    /// The chosen snapshot does not hold the volume.
    #[error("snapshot {snapshot} has no volume `{volume}`; it has: {available}")]
    NotInSnapshot {
        /// The snapshot id.
        snapshot: String,
        /// The volume asked for.
        volume: String,
        /// The volumes it does hold.
        available: String,
    },
    /// The trees expand beyond what the snapshot records, or nest deeper
    /// than a restore goes: a hostile repository that references one tree
    /// many times (exponential expansion) or builds an endless chain.
    #[error("volume {volume}: {reason}; refused as a hostile or damaged repository")]
    TreeBudget {
        /// The volume being restored.
        volume: String,
        /// Which bound was crossed.
        reason: String,
    },
    /// A tree blob is not a valid volume tree.
    #[error("tree {id}: {reason}")]
    BadTree {
        /// The tree's blob id.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tree blob is readable but not a valid volume tree (a hostile or
    /// damaged repository).
    #[error("tree {id}: {source}")]
    Tree {
        /// The tree's blob id.
        id: String,
        /// What is wrong with it.
        #[source]
        source: tree::TreeError,
    },
    /// A task of the run panicked or was aborted.
    #[error("internal error: {0}")]
    Internal(String),
    /// The repository failed (it keeps its own classification).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// SIGTERM/SIGINT stopped the run; what was stored stays for a retry.
    #[error("cancelled by signal")]
    Cancelled,
}

impl VolumeError {
    /// Whether a Job retry could succeed where this run failed.
    pub fn is_retriable(&self) -> bool {
        match self {
            VolumeError::Repo(e) => e.is_retriable(),
            VolumeError::Cancelled => true,
            _ => false,
        }
    }

    /// Whether this concerns one tree or blob (damaged, missing, invalid)
    /// rather than the repository as a whole.
    fn is_item_error(&self) -> bool {
        match self {
            VolumeError::Tree { .. } => true,
            VolumeError::Repo(e) => is_item_error(e),
            _ => false,
        }
    }
}

/// The repository's chunk sizes, checked against FastCDC 2020's limits
/// (it asserts them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chunker {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

impl Chunker {
    pub fn new(p: ChunkerParams) -> Result<Chunker, VolumeError> {
        use fastcdc::v2020 as f;
        let (min, avg, max) = (p.min as usize, p.avg as usize, p.max as usize);
        let ok = (f::MINIMUM_MIN..=f::MINIMUM_MAX).contains(&min)
            && (f::AVERAGE_MIN..=f::AVERAGE_MAX).contains(&avg)
            && (f::MAXIMUM_MIN..=f::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && [min, avg, max].iter().all(|v| v % 2 == 0);
        if ok {
            Ok(Chunker { min, avg, max })
        } else {
            Err(VolumeError::ChunkerParams {
                min: p.min,
                avg: p.avg,
                max: p.max,
            })
        }
    }
}

/// Whether a repository error concerns one blob (damaged, missing) rather
/// than the repository as a whole (unreachable, denied).
fn is_item_error(e: &RepoError) -> bool {
    match e {
        RepoError::Corrupt { .. } | RepoError::MissingBlob { .. } | RepoError::Format { .. } => {
            true
        }
        RepoError::Backend(b) => b.is_not_found(),
        _ => false,
    }
}

/// Most parts one directory listing may have: 64 MiB each, so some
/// 400 million entries. A longer chain (or a loop) is a bad repository.
const MAX_TREE_PARTS: usize = 4096;

/// Reads and parses a directory listing: one tree blob, or the chain of
/// parts a large listing was split into (`Tree::next`), joined.
async fn load_tree(repo: &Repository, id: &crate::repo::BlobId) -> Result<tree::Tree, VolumeError> {
    let mut chain = Chain::new(*id);
    while let Some(part) = chain.next()? {
        let bytes = repo.read_blob(&part).await?;
        chain.add(part, &bytes)?;
    }
    Ok(chain.whole)
}

/// [`load_tree`] on the calling thread, which may block: each part is read
/// there when the backend reads local files, else on `rt`.
fn load_tree_blocking(
    rt: &tokio::runtime::Handle,
    repo: &Repository,
    id: &crate::repo::BlobId,
) -> Result<tree::Tree, VolumeError> {
    let mut chain = Chain::new(*id);
    while let Some(part) = chain.next()? {
        let bytes = match repo.read_blob_blocking(&part) {
            Some(r) => r?,
            None => rt.block_on(repo.read_blob(&part))?,
        };
        chain.add(part, &bytes)?;
    }
    Ok(chain.whole)
}

/// A listing's parts joined as they are read. Names must keep ascending
/// across parts, which also rules out a chain that loops.
struct Chain {
    whole: tree::Tree,
    at: Option<crate::repo::BlobId>,
    parts: usize,
}

impl Chain {
    fn new(id: crate::repo::BlobId) -> Chain {
        Chain {
            whole: tree::Tree::default(),
            at: Some(id),
            parts: 0,
        }
    }

    /// The part to read next, if any.
    fn next(&mut self) -> Result<Option<crate::repo::BlobId>, VolumeError> {
        let Some(id) = self.at else {
            return Ok(None);
        };
        self.parts += 1;
        if self.parts > MAX_TREE_PARTS {
            return Err(VolumeError::Tree {
                id: id.to_hex(),
                source: tree::TreeError::TooManyParts {
                    max: MAX_TREE_PARTS,
                },
            });
        }
        Ok(Some(id))
    }

    /// Adds part `id`, read as `bytes`.
    fn add(&mut self, id: crate::repo::BlobId, bytes: &[u8]) -> Result<(), VolumeError> {
        let bad = |source| VolumeError::Tree {
            id: id.to_hex(),
            source,
        };
        let part = tree::Tree::decode(bytes).map_err(bad)?;
        if let (Some(last), Some(first)) = (self.whole.nodes.last(), part.nodes.first())
            && last.name >= first.name
        {
            return Err(bad(tree::TreeError::Unsorted {
                name: tree::display_path(&first.name),
                previous: tree::display_path(&last.name),
            }));
        }
        if part.nodes.is_empty() && part.next.is_some() {
            return Err(bad(tree::TreeError::EmptyPart));
        }
        self.at = part.next;
        self.whole.nodes.extend(part.nodes);
        Ok(())
    }
}

/// Raises the soft limit of open files to the hard one: a walk holds a
/// descriptor for each directory along its path and for each directory
/// whose files are still being written, more than the usual soft limit
/// of 1024 in a deep tree. Best effort: the limit stays as it is otherwise.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    // `None` is "unlimited", which the kernel refuses for this resource.
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        limit.current = Some(maximum);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "cannot raise the limit of open files");
        }
    }
}

/// A walker task gave up because the run is stopping; the reason is in the
/// walker's `fatal` slot or the cancellation token.
#[derive(Debug, Clone)]
struct Stopped;

/// What went wrong so far in a volume backup or restore, shared by its
/// tasks: the first fatal error, which stops the run, and the items that
/// failed on their own.
struct Failures {
    /// Logged when the run stops, e.g. "stopping the volume backup".
    stopping: &'static str,
    /// Logged per failed item, e.g. "cannot back up".
    cannot: &'static str,
    fatal: std::sync::Mutex<Option<VolumeError>>,
    errors: std::sync::Mutex<Vec<crate::summary::ItemError>>,
}

impl Failures {
    fn new(stopping: &'static str, cannot: &'static str) -> Self {
        Failures {
            stopping,
            cannot,
            fatal: std::sync::Mutex::new(None),
            errors: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Keeps the first fatal error and stops the run.
    fn fail(&self, e: VolumeError, stop: &tokio_util::sync::CancellationToken) -> Stopped {
        let mut slot = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::warn!(error = %e, "{}", self.stopping);
            *slot = Some(e);
        }
        stop.cancel();
        Stopped
    }

    fn item_failed(&self, path: &str, message: impl std::fmt::Display) {
        tracing::warn!(path, error = %message, "{}", self.cannot);
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(crate::summary::ItemError {
                item: path.to_string(),
                message: message.to_string(),
            });
    }

    fn take_fatal(&self) -> Option<VolumeError> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn take_errors(&self) -> Vec<crate::summary::ItemError> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn inc(c: &std::sync::atomic::AtomicU64, n: u64) {
    c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

fn join_err(e: tokio::task::JoinError) -> VolumeError {
    VolumeError::Internal(format!("a volume task failed: {e}"))
}
