//! Small files in batches: the walker collects them; a full batch is
//! created by one blocking call, fetched in one go (neighbouring blobs in
//! one ranged read) and written by another blocking call, so the cost of
//! handing work between threads is paid per batch, not per file, and
//! batches create and write files in parallel with the walk.

use super::*;

/// Files up to this size are restored in batches; larger ones stream
/// chunk by chunk ([`write_task`]).
pub(crate) const SMALL_FILE: u64 = 1 << 20;
/// A batch holds at most this many files (each an open descriptor)...
pub(crate) const BATCH_FILES: usize = 128;
/// ...and at most this many bytes of content (one file larger than this
/// is never small), so batches in flight bound memory and descriptors.
pub(crate) const BATCH_BYTES: u64 = 4 << 20;

/// Items and their byte total, up to the bounds.
pub(super) struct Batcher<T> {
    items: Vec<T>,
    bytes: u64,
    max_items: usize,
    max_bytes: u64,
}

impl<T> Batcher<T> {
    pub(super) fn new(max_items: usize, max_bytes: u64) -> Self {
        Self {
            items: Vec::new(),
            bytes: 0,
            max_items,
            max_bytes,
        }
    }

    /// Whether an item of `bytes` can join without breaking a bound (an
    /// empty batch takes anything).
    pub(super) fn fits(&self, bytes: u64) -> bool {
        self.items.is_empty()
            || (self.items.len() < self.max_items
                && self.bytes.saturating_add(bytes) <= self.max_bytes)
    }

    pub(super) fn push(&mut self, item: T, bytes: u64) {
        self.items.push(item);
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// Whether nothing more can join: send it now rather than wait.
    pub(super) fn is_full(&self) -> bool {
        self.items.len() >= self.max_items || self.bytes >= self.max_bytes
    }

    /// The items, in the order pushed; the batcher is empty after.
    pub(super) fn take(&mut self) -> Vec<T> {
        self.bytes = 0;
        std::mem::take(&mut self.items)
    }
}

/// A small file the walker met, to be created and filled.
pub(super) struct SmallFile {
    /// Its directory: the file is made relative to it.
    pub dir: Arc<File>,
    pub rel: Vec<u8>,
    pub shown: String,
    pub node: Node,
}

/// Creates a batch's files (or keeps the verified ones already there),
/// fetches every chunk of those to fill, then writes them and sets their
/// metadata. A file that cannot be made or read fails alone; a fatal
/// error stops the run.
pub(super) async fn batch_task(
    sh: Arc<Shared>,
    files: Vec<SmallFile>,
    _permit: OwnedSemaphorePermit,
) -> Result<(), Stopped> {
    let sh2 = sh.clone();
    let files = tokio::task::spawn_blocking(move || open_all(&sh2, files))
        .await
        .map_err(|e| sh.fail(join_err(e)))?;
    if sh.stop.is_cancelled() {
        return Err(Stopped);
    }
    let ids: Vec<BlobId> = files
        .iter()
        .flat_map(|(f, _)| f.node.content.iter().copied())
        .collect();
    let mut blobs = sh.repo.read_blobs(&ids).await.into_iter();
    if sh.stop.is_cancelled() {
        return Err(Stopped);
    }
    let mut ready = Vec::with_capacity(files.len());
    for (f, file) in files {
        // Every result of this file is taken, failed or not, so the next
        // file starts at its own.
        let results: Vec<_> = blobs.by_ref().take(f.node.content.len()).collect();
        match results.into_iter().collect::<Result<Vec<Bytes>, _>>() {
            Ok(chunks) => ready.push((f, file, chunks)),
            Err(e) if is_item_error(&e) => sh.item_failed(&f.shown, e.to_string()),
            Err(e) => return Err(sh.fail(e)),
        }
    }
    let sh2 = sh.clone();
    tokio::task::spawn_blocking(move || {
        for (f, file, chunks) in ready {
            if sh2.stop.is_cancelled() {
                return Err(Stopped);
            }
            if let Err(e) = write_small(&sh2, &f, &file, &chunks) {
                sh2.item_failed(&f.shown, e);
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| sh.fail(join_err(e)))?
}

/// Each file of the batch, opened for writing: created, or rewritten in
/// place if it was there but not right. One that was there and right is
/// only given its metadata, and one that cannot be made fails alone.
fn open_all(sh: &Shared, files: Vec<SmallFile>) -> Vec<(SmallFile, File)> {
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        if sh.stop.is_cancelled() {
            break;
        }
        match open_small(sh, &f) {
            Ok(opened) => {
                inc(&sh.stats.files, 1);
                if let Some(file) = opened {
                    out.push((f, file));
                }
            }
            Err(e) => sh.item_failed(&f.shown, format!("file: {e}")),
        }
    }
    out
}

/// The file made as the walker makes one ([`make_target`]); one already
/// there is checked at once: kept (`None`) or reopened to be rewritten.
fn open_small(sh: &Shared, f: &SmallFile) -> io::Result<Option<File>> {
    match make_target(&f.dir, &f.node)? {
        Target::Created(file) => Ok(Some(file)),
        Target::Existing => verify_or_reopen(sh, &f.dir, &f.shown, &f.node),
    }
}

fn write_small(sh: &Shared, f: &SmallFile, file: &File, chunks: &[Bytes]) -> io::Result<()> {
    let mut w = ChunkWriter::default();
    for c in chunks {
        w.write(sh, file, c)?;
    }
    w.finish(sh, file, &f.rel, &f.shown, &f.node)
}

#[cfg(test)]
mod tests {
    use super::Batcher;

    /// Splits items of the given sizes the way the walker does.
    fn split(sizes: &[u64], max_items: usize, max_bytes: u64) -> Vec<Vec<(usize, u64)>> {
        let mut b = Batcher::new(max_items, max_bytes);
        let mut out = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            if !b.fits(size) {
                out.push(b.take());
            }
            b.push((i, size), size);
            if b.is_full() {
                out.push(b.take());
            }
        }
        let last = b.take();
        if !last.is_empty() {
            out.push(last);
        }
        out
    }

    #[test]
    fn batches_keep_every_item_in_order_within_the_bounds() {
        let sizes: Vec<u64> = (0..1000u64).map(|i| (i * 7919) % 3000).collect();
        let batches = split(&sizes, 16, 10_000);
        let flat: Vec<usize> = batches.iter().flatten().map(|(i, _)| *i).collect();
        assert_eq!(flat, (0..sizes.len()).collect::<Vec<_>>());
        for b in &batches {
            assert!(!b.is_empty());
            assert!(b.len() <= 16, "{} items", b.len());
            assert!(b.iter().map(|(_, s)| s).sum::<u64>() <= 10_000);
        }
        // The count bound, not only the byte bound, splits batches.
        let tiny = split(&[1; 40], 16, 10_000);
        assert_eq!(
            tiny.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![16, 16, 8]
        );
    }

    #[test]
    fn an_item_over_the_byte_bound_goes_alone() {
        let batches = split(&[10, 50_000, 10], 16, 10_000);
        let shape: Vec<Vec<u64>> = batches
            .iter()
            .map(|b| b.iter().map(|(_, s)| *s).collect())
            .collect();
        assert_eq!(shape, vec![vec![10], vec![50_000], vec![10]]);
    }
}
