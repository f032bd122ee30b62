//! The parent snapshot's listings of a directory's subdirectories, loaded
//! ahead of the walk.
//!
//! The walking thread needs the parent's listing of every directory it
//! enters. Loaded there, one at a time, the wait for each (a read, with a
//! round trip on S3, and thread hand-offs on a filesystem) was over half of
//! an unchanged re-backup. The walk enters subdirectories in name order and
//! the parent's listing is sorted the same way, so the next ones are known:
//! tasks load them while the walk is elsewhere. (Loading them in batches,
//! neighbours in one read, was measured slower on a filesystem: the walk
//! then waits for a whole batch.) On a filesystem a task reads a small
//! listing where it runs (`Repository::read_blob`), and one the walk
//! must load itself is read on the walking thread: each thread hand-off
//! saved was worth more than the read.
//!
//! Bounded: at most [`PER_DIR`] per directory, and [`BUDGET_KIB`] of
//! listings (their stored plaintext) in all, loading or loaded and not yet
//! taken. A listing larger than the budget is loaded when the walk enters
//! it.

use std::collections::VecDeque;
use std::iter::Peekable;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::super::tree::{NodeType, Tree};
use super::{Shared, VolumeError, join_err, load_tree};
use crate::repo::BlobId;

/// Subdirectory listings of one directory loading at once.
const PER_DIR: usize = 8;
/// Listings loaded ahead and not yet taken, in KiB of stored plaintext.
const BUDGET_KIB: usize = 8 << 10;

/// A listing loading, with its own subdirectories' loads started, and
/// its share of the budget (returned when the listing is taken or
/// dropped).
type Load = JoinHandle<(Result<(Tree, Ahead), VolumeError>, OwnedSemaphorePermit)>;

/// A directory's subdirectories that the parent snapshot lists, in name
/// order, some of them loading.
pub(super) struct Ahead {
    /// Not started yet: (name, listing).
    waiting: Peekable<std::vec::IntoIter<(Vec<u8>, BlobId)>>,
    started: VecDeque<(Vec<u8>, Load)>,
}

impl Ahead {
    /// The subdirectories in `listing`, loading the first few.
    pub(super) fn new(sh: &Arc<Shared>, listing: &Tree) -> Ahead {
        let dirs: Vec<_> = listing
            .nodes
            .iter()
            .filter(|n| n.kind == NodeType::Dir)
            .filter_map(|n| n.subtree.map(|id| (n.name.clone(), id)))
            .collect();
        let mut a = Ahead {
            waiting: dirs.into_iter().peekable(),
            started: VecDeque::new(),
        };
        a.fill(sh);
        a
    }

    /// The listing of subdirectory `name`, if its load was started
    /// (waiting for it here, on the walking thread). The walk goes on in
    /// name order, so those before `name` are not needed any more (gone
    /// since the parent snapshot): they are dropped.
    pub(super) fn take(
        &mut self,
        sh: &Arc<Shared>,
        name: &[u8],
    ) -> Option<Result<(Tree, Ahead), VolumeError>> {
        while self
            .started
            .front()
            .is_some_and(|(n, _)| n.as_slice() < name)
        {
            if let Some((_, load)) = self.started.pop_front() {
                load.abort();
            }
        }
        let found = match self.started.front() {
            Some((n, _)) if n == name => self.started.pop_front().map(|(_, load)| load),
            _ => {
                // Not started (too large, or over the budget then): skip
                // past it, so the loads go on after it.
                while self
                    .waiting
                    .next_if(|(n, _)| n.as_slice() <= name)
                    .is_some()
                {}
                None
            }
        };
        self.fill(sh);
        found.map(|load| match sh.rt.block_on(load) {
            Ok((tree, _permit)) => tree,
            Err(e) => Err(join_err(e)),
        })
    }

    /// Starts loads until this directory has [`PER_DIR`] or the budget is
    /// used up.
    fn fill(&mut self, sh: &Arc<Shared>) {
        while self.started.len() < PER_DIR {
            let Some((_, id)) = self.waiting.peek() else {
                return;
            };
            // Weighed by its first part: a listing split into parts has a
            // large one, and is loaded when the walk enters it.
            let kib = sh
                .repo
                .index_entry(id)
                .map_or(1, |e| (e.raw_length as usize).div_ceil(1024).max(1));
            if kib > BUDGET_KIB {
                self.waiting.next();
                continue;
            }
            let Ok(permit) = sh.ahead.clone().try_acquire_many_owned(kib as u32) else {
                // Others hold the budget: the next take tries again.
                return;
            };
            let (name, id) = self.waiting.next().expect("peeked");
            let sh2 = sh.clone();
            let load = sh.tracker.spawn_on(
                async move {
                    let loaded = load_tree(&sh2.repo, &id).await.map(|tree| {
                        let ahead = Ahead::new(&sh2, &tree);
                        (tree, ahead)
                    });
                    (loaded, permit)
                },
                &sh.rt,
            );
            self.started.push_back((name, load));
        }
    }
}

impl Drop for Ahead {
    /// The walk left the directory: what it did not enter is not needed.
    fn drop(&mut self) {
        for (_, load) in &self.started {
            load.abort();
        }
    }
}

/// The semaphore [`Ahead`] draws on.
pub(super) fn budget() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(BUDGET_KIB))
}
