//! Reading one file: chunks streamed to the writer, checked against the
//! listing so that a file that changed while read is reported, not stored.

use super::*;

/// Outcome of reading one file on a blocking thread.
pub(super) enum ReadError {
    Io(io::Error),
    /// Something else is at its name than the listing saw: what.
    Replaced(String),
    /// The run is stopping, or the receiving side gave up.
    Stopped,
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

pub(super) struct ReadDone {
    /// `fstat` before the first byte was read.
    start: rustix::fs::Stat,
    /// Extended attributes, read through the open file: no path lookup
    /// through `/proc` per file, and off the walking thread.
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    bytes: u64,
    /// Size or mtime differ between the start and the end of reading.
    changed: bool,
}

/// Reads file `node` (as listed) of the open directory `dir`.
pub(super) fn read_file(
    sh: &Shared,
    dir: &File,
    rel: &[u8],
    shown: &str,
    node: &Node,
    sink: &mut dyn FnMut(Bytes) -> Result<(), ReadError>,
) -> Result<ReadDone, ReadError> {
    use rustix::fs::{Mode, OFlags};
    #[cfg(test)]
    let path = sh.hook_path(rel);
    #[cfg(not(test))]
    let _ = rel;
    #[cfg(test)]
    {
        if let Some(h) = &sh.hooks.before_open {
            h(&path);
        }
        if let Some(e) = sh.hooks.open_error.as_ref().and_then(|h| h(&path)) {
            return Err(e.into());
        }
    }
    // Beneath its directory, never following a symlink swapped in since
    // the listing. NONBLOCK: a FIFO swapped in does not hang the open.
    let opened = open_beneath(
        dir.as_fd(),
        &node.name,
        OFlags::RDONLY | OFlags::NONBLOCK,
        Mode::empty(),
    );
    let file = match opened {
        Ok(fd) => File::from(fd),
        Err(e) if is_errno(&e, rustix::io::Errno::LOOP) => {
            return Err(ReadError::Replaced("a symlink".into()));
        }
        Err(e) => return Err(e.into()),
    };
    let start = rustix::fs::fstat(&file).map_err(io::Error::from)?;
    if let Some(what) = replaced_by(&start, node) {
        return Err(ReadError::Replaced(what));
    }
    let xattrs = xattrs_of(&file, shown);
    let c = sh.chunker;
    let mut bytes = 0u64;
    #[cfg(test)]
    let mut first = true;
    let mut send = |data: Bytes| -> Result<(), ReadError> {
        if sh.stop.is_cancelled() {
            return Err(ReadError::Stopped);
        }
        bytes += data.len() as u64;
        sink(data)?;
        #[cfg(test)]
        if std::mem::take(&mut first)
            && let Some(h) = &sh.hooks.after_first_chunk
        {
            h(&path);
        }
        Ok(())
    };
    // A file smaller than the largest chunk is read whole and cut in
    // memory: the streaming chunker allocates a buffer of the largest
    // chunk size per file. Both cut at the same points.
    let mut head = Vec::new();
    let size = stat::size(&start);
    if size < c.max as u64 {
        head.reserve_exact(size as usize + 1);
        (&file).take(c.max as u64).read_to_end(&mut head)?;
        if head.len() < c.max {
            let all = Bytes::from(head);
            for ch in fastcdc::v2020::FastCDC::new(&all, c.min, c.avg, c.max) {
                send(all.slice(ch.offset..ch.offset + ch.length))?;
            }
            return finish(&file, start, xattrs, bytes);
        }
        // It grew past one chunk meanwhile: stream the rest after it.
    }
    let source = io::Cursor::new(head).chain(&file);
    for chunk in fastcdc::v2020::StreamCDC::new(source, c.min, c.avg, c.max) {
        let chunk = chunk.map_err(io::Error::from)?;
        send(Bytes::from(chunk.data))?;
    }
    finish(&file, start, xattrs, bytes)
}

pub(super) fn finish(
    file: &File,
    start: rustix::fs::Stat,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    bytes: u64,
) -> Result<ReadDone, ReadError> {
    let end = rustix::fs::fstat(file).map_err(io::Error::from)?;
    let size = stat::size(&start);
    let changed =
        bytes != size || stat::size(&end) != size || stat::mtime_ns(&end) != stat::mtime_ns(&start);
    Ok(ReadDone {
        start,
        xattrs,
        bytes,
        changed,
    })
}

/// Reads and stores files smaller than the largest chunk, one after
/// another on the calling blocking thread: each read whole, cut, sealed
/// and added in place. Most files of a real tree are small, and for them
/// thread hand-offs (reader, sealer, task; and one task per file, which
/// was a tenth of a first backup of /usr/share in the scheduler) cost
/// more than the work.
pub(super) fn read_small(
    sh: &Shared,
    dir: &File,
    files: Vec<Small>,
    _permit: OwnedSemaphorePermit,
) -> Result<Vec<Node>, Stopped> {
    let mut out = Vec::with_capacity(files.len());
    for Small { rel, shown, node } in files {
        let mut content = Vec::new();
        let mut add_failed = None;
        let outcome = read_file(sh, dir, &rel, &shown, &node, &mut |data| match sh
            .writer
            .add_blocking(BlobKind::Data, data)
        {
            Ok((id, _)) => {
                content.push(id);
                Ok(())
            }
            Err(e) => {
                add_failed = Some(e);
                Err(ReadError::Stopped)
            }
        });
        if let Some(e) = add_failed {
            return Err(sh.fail(e));
        }
        out.extend(conclude(sh, rel, shown, node, content, outcome)?);
    }
    Ok(out)
}

/// A small file to read: its path in the volume, as shown, and as listed.
pub(super) struct Small {
    pub(super) rel: Vec<u8>,
    pub(super) shown: String,
    pub(super) node: Node,
}

/// Reads a larger file: chunks from a blocking reader, sealed up to one
/// per core at once and added in order.
pub(super) async fn read_task(
    sh: Arc<Shared>,
    dir: Arc<File>,
    rel: Vec<u8>,
    shown: String,
    node: Node,
    _permit: OwnedSemaphorePermit,
) -> Result<Option<Node>, Stopped> {
    use futures::StreamExt;
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHUNKS_QUEUED);
    let reader = {
        let sh = sh.clone();
        tokio::task::spawn_blocking(move || {
            let r = read_file(&sh, &dir, &rel, &shown, &node, &mut |data| {
                tx.blocking_send(data).map_err(|_| ReadError::Stopped)
            });
            (rel, shown, node, r)
        })
    };
    let mut content = Vec::new();
    let mut add_failed = None;
    {
        let mut added = futures::stream::poll_fn(|cx| rx.poll_recv(cx))
            .map(|data| sh.writer.add(BlobKind::Data, data))
            .buffered(sh.seals_per_file);
        while let Some(r) = added.next().await {
            match r {
                Ok((id, _)) => content.push(id),
                Err(e) => {
                    add_failed = Some(e);
                    break;
                }
            }
        }
    }
    drop(rx);
    let outcome = reader.await;
    if let Some(e) = add_failed {
        return Err(sh.fail(e));
    }
    let (rel, shown, node, outcome) = outcome.map_err(|e| sh.fail(join_err(e)))?;
    conclude(&sh, rel, shown, node, content, outcome)
}

/// The listed node completed from what reading the file found.
fn conclude(
    sh: &Shared,
    rel: Vec<u8>,
    shown: String,
    mut node: Node,
    content: Vec<crate::repo::BlobId>,
    outcome: Result<ReadDone, ReadError>,
) -> Result<Option<Node>, Stopped> {
    match outcome {
        Ok(done) => {
            let fresh = Node::from_stat(Vec::new(), &done.start);
            node.mode = fresh.mode;
            node.uid = fresh.uid;
            node.gid = fresh.gid;
            node.mtime_ns = fresh.mtime_ns;
            node.ctime_ns = fresh.ctime_ns;
            node.inode = fresh.inode;
            node.dev = fresh.dev;
            node.nlink = fresh.nlink;
            node.size = done.bytes;
            node.content = content;
            node.xattrs = done.xattrs;
            inc(&sh.stats.bytes_read, done.bytes);
            if done.changed {
                warn!(path = %shown, "file changed while it was read; stored as read");
                inc(&sh.stats.changed, 1);
                let mut list = sh.changed.lock().unwrap_or_else(|p| p.into_inner());
                if list.len() < MAX_LISTED {
                    list.push(shown);
                }
            } else {
                sh.recorder.record(rel, &node);
            }
            Ok(Some(node))
        }
        Err(ReadError::Stopped) => Err(Stopped),
        Err(ReadError::Replaced(what)) => {
            sh.replaced(&shown, &what);
            Ok(None)
        }
        Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            sh.vanished(&shown);
            Ok(None)
        }
        Err(ReadError::Io(e)) => {
            sh.unreadable(&shown, &e);
            Ok(None)
        }
    }
}
