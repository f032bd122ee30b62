//! Writing one file: what is there already and verified is kept, the rest
//! is written from the repository.

use super::*;

/// Where a file's content goes.
pub(super) enum Target {
    /// Created empty by the walker.
    Created(File),
    /// Already there with the right size: verified, and rewritten only if
    /// its content differs.
    Existing,
}

/// Whether the open regular `file` holds exactly `node`'s chunks: each
/// chunk's plaintext length comes from the index, its bytes must hash to
/// its id. `false` (not an error) whenever that cannot be shown.
pub(super) fn holds_content(repo: &Repository, file: &File, node: &Node) -> io::Result<bool> {
    let mut lengths = Vec::with_capacity(node.content.len());
    for id in &node.content {
        match repo.index_entry(id) {
            Some(e) => lengths.push(e.raw_length),
            None => return Ok(false),
        }
    }
    if lengths.iter().sum::<u64>() != node.size {
        return Ok(false);
    }
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::new();
    for (id, len) in node.content.iter().zip(lengths) {
        buf.resize(len as usize, 0);
        match reader.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        if repo.blob_id(&buf) != *id {
            return Ok(false);
        }
    }
    Ok(true)
}

/// For [`Target::Existing`] `node` of `dir`: `None` when the file is
/// already right (its metadata is then set), else the file opened for
/// rewriting in place.
pub(super) fn verify_or_reopen(
    sh: &Shared,
    dir: &File,
    shown: &str,
    node: &Node,
) -> io::Result<Option<File>> {
    // NONBLOCK: a FIFO put in its place meanwhile does not hang the open.
    let file = File::from(open_beneath(
        dir.as_fd(),
        &node.name,
        OFlags::RDONLY | OFlags::NONBLOCK,
        Mode::empty(),
    )?);
    let st = rustix::fs::fstat(&file)?;
    if NodeType::of_mode(stat::mode(&st)) != NodeType::File {
        return Err(io::Error::other("no longer a regular file"));
    }
    if stat::size(&st) == node.size {
        match holds_content(&sh.repo, &file, node) {
            Ok(true) => {
                debug!(path = shown, "already restored and verified; left as it is");
                inc(&sh.stats.reused, 1);
                inc(&sh.stats.bytes_reused, node.size);
                sh.apply_meta(&file, node, shown);
                return Ok(None);
            }
            Ok(false) => {}
            Err(e) => {
                debug!(path = shown, error = %e, "cannot verify the existing file; rewriting it")
            }
        }
    }
    // A restored file may be read-only; its mode is set again at the end.
    rustix::fs::fchmod(&file, Mode::from_raw_mode(0o600))?;
    let file = open_beneath(
        dir.as_fd(),
        &node.name,
        OFlags::WRONLY | OFlags::TRUNC,
        Mode::empty(),
    )?;
    Ok(Some(File::from(file)))
}

pub(super) enum Msg {
    Data(Bytes),
    /// Every chunk was sent: finish the file.
    Done,
}

/// Writes a file's chunks in order, each at its offset, into a file that
/// is empty (created, or truncated): an all-zero chunk is not written, so
/// it stays a hole, and the length is set only when the file ends in one.
/// Positioned writes need no seeks.
#[derive(Default)]
pub(super) struct ChunkWriter {
    /// Bytes of content so far.
    pos: u64,
    /// End of the last chunk written.
    end: u64,
}

impl ChunkWriter {
    pub(super) fn write(&mut self, sh: &Shared, file: &File, b: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let len = b.len() as u64;
        if is_zero(b) {
            inc(&sh.stats.bytes_sparse, len);
        } else {
            file.write_all_at(b, self.pos)?;
            self.end = self.pos + len;
        }
        self.pos += len;
        inc(&sh.stats.bytes_written, len);
        Ok(())
    }

    /// Sets the length (a trailing hole), checks it against the tree, then
    /// sets the metadata on the descriptor written: whatever is at the
    /// name now is not touched.
    pub(super) fn finish(
        self,
        sh: &Shared,
        file: &File,
        rel: &[u8],
        shown: &str,
        node: &Node,
    ) -> io::Result<()> {
        if self.pos > self.end {
            file.set_len(self.pos)?;
        }
        if self.pos != node.size {
            return Err(io::Error::other(format!(
                "the chunks hold {} bytes but the tree says {}",
                self.pos, node.size
            )));
        }
        #[cfg(test)]
        if let Some(h) = &sh.hooks.before_meta {
            h(&sh.hook_path(rel));
        }
        #[cfg(not(test))]
        let _ = rel;
        sh.apply_meta(file, node, shown);
        Ok(())
    }
}

/// Writes chunks as they come; on `Done`, finishes the file. `Ok(false)`
/// when the sender gave up before `Done`.
pub(super) fn write_file(
    sh: &Shared,
    file: File,
    rel: &[u8],
    shown: &str,
    node: &Node,
    mut rx: mpsc::Receiver<Msg>,
) -> io::Result<bool> {
    let mut w = ChunkWriter::default();
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Data(b) => w.write(sh, &file, &b)?,
            Msg::Done => {
                w.finish(sh, &file, rel, shown, node)?;
                return Ok(true);
            }
        }
    }
    Ok(false)
}

pub(super) async fn write_task(
    sh: Arc<Shared>,
    dir: Arc<File>,
    rel: Vec<u8>,
    shown: String,
    node: Node,
    target: Target,
    _permit: OwnedSemaphorePermit,
) -> Result<(), Stopped> {
    let (node, file) = match target {
        Target::Created(f) => (node, f),
        Target::Existing => {
            let (sh2, shown2) = (sh.clone(), shown.clone());
            let checked = tokio::task::spawn_blocking(move || {
                let r = verify_or_reopen(&sh2, &dir, &shown2, &node);
                (node, r)
            })
            .await
            .map_err(|e| sh.fail(join_err(e)))?;
            match checked {
                (_, Ok(None)) => return Ok(()),
                (node, Ok(Some(f))) => (node, f),
                (_, Err(e)) => {
                    sh.item_failed(&shown, format!("file: {e}"));
                    return Ok(());
                }
            }
        }
    };
    let content = node.content.clone();
    let (tx, rx) = mpsc::channel::<Msg>(PREFETCH);
    let writer = {
        let (sh, shown) = (sh.clone(), shown.clone());
        tokio::task::spawn_blocking(move || write_file(&sh, file, &rel, &shown, &node, rx))
    };
    let repo = sh.repo.clone();
    let mut chunks = futures::stream::iter(content)
        .map(|id: BlobId| {
            let repo = repo.clone();
            async move { repo.read_blob(&id).await }
        })
        .buffered(PREFETCH);
    let mut outcome: Result<(), Option<String>> = Ok(());
    while let Some(r) = chunks.next().await {
        if sh.stop.is_cancelled() {
            outcome = Err(None);
            break;
        }
        match r {
            Ok(data) => {
                if tx.send(Msg::Data(data)).await.is_err() {
                    break; // The writer failed; its error is reported below.
                }
            }
            Err(e) if is_item_error(&e) => {
                outcome = Err(Some(e.to_string()));
                break;
            }
            Err(e) => {
                sh.fail(e);
                outcome = Err(None);
                break;
            }
        }
    }
    drop(chunks);
    if outcome.is_ok() {
        let _ = tx.send(Msg::Done).await;
    }
    drop(tx);
    let written = writer.await.map_err(|e| sh.fail(join_err(e)))?;
    match (outcome, written) {
        (Err(None), _) => return Err(Stopped),
        (Err(Some(msg)), _) => sh.item_failed(&shown, msg),
        (Ok(()), Err(e)) => sh.item_failed(&shown, e),
        (Ok(()), Ok(_)) => {}
    }
    Ok(())
}
