//! Filesystem backend: one file per object, atomic writes by temp file,
//! fsync and rename, then fsync of the directory so the rename is durable.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, BackendError, MAX_OBJECT_LEN, ObjectInfo, Result, check_key};

/// Stores each object as a file under a root directory, at the key's path.
#[derive(Debug, Clone)]
pub struct FsBackend {
    root: PathBuf,
}

impl FsBackend {
    /// A backend rooted at `root`.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn err(&self, op: &'static str, key: &str, e: std::io::Error) -> BackendError {
        let location = self.location();
        let message = e.to_string();
        match e.kind() {
            ErrorKind::NotFound => BackendError::NotFound {
                location,
                key: key.into(),
            },
            ErrorKind::Interrupted
            | ErrorKind::TimedOut
            | ErrorKind::WouldBlock
            | ErrorKind::ResourceBusy => BackendError::Transient {
                location,
                op,
                key: key.into(),
                message,
            },
            _ => BackendError::Permanent {
                location,
                op,
                key: key.into(),
                message,
            },
        }
    }

    fn too_large(&self, op: &'static str, key: &str, size: u64) -> BackendError {
        BackendError::TooLarge {
            location: self.location(),
            op,
            key: key.into(),
            size,
            max: MAX_OBJECT_LEN,
        }
    }

    /// Runs blocking file I/O off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        key: &str,
        f: impl FnOnce(PathBuf) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T> {
        check_key(&self.location(), op, key)?;
        let path = self.root.join(key);
        match tokio::task::spawn_blocking(move || f(path)).await {
            Ok(r) => r.map_err(|e| self.err(op, key, e)),
            Err(join) => Err(BackendError::Permanent {
                location: self.location(),
                op,
                key: key.into(),
                message: format!("I/O task failed: {join}"),
            }),
        }
    }
}

fn walk(dir: &Path, root: &Path, prefix: &str, out: &mut Vec<ObjectInfo>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        // Temp files of in-flight writes start with '.'.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let ft = entry.file_type()?;
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        if ft.is_dir() {
            if prefix.starts_with(&rel) || rel.starts_with(prefix) || prefix.is_empty() {
                walk(&path, root, prefix, out)?;
            }
        } else if ft.is_file() && rel.starts_with(prefix) {
            out.push(ObjectInfo {
                key: rel,
                size: entry.metadata()?.len(),
            });
        }
    }
    Ok(())
}

/// One positioned read: no size probe or seek first; the size is looked
/// up only to explain a short read.
fn read_range(path: &Path, offset: u64, len: u64) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; len as usize];
    match f.read_exact_at(&mut buf, offset) {
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
            let size = f.metadata()?.len();
            Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("range {offset}+{len} beyond object size {size}"),
            ))
        }
        r => r.map(|()| Bytes::from(buf)),
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl Backend for FsBackend {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let start = match prefix.rfind('/') {
            Some(i) => root.join(&prefix[..i]),
            None => root.clone(),
        };
        let p = prefix.to_string();
        let r = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&start, &root, &p, &mut out).map(|()| out)
        })
        .await;
        match r {
            Ok(r) => r.map_err(|e| self.err("list", prefix, e)),
            Err(j) => Err(self.err("list", prefix, std::io::Error::other(j.to_string()))),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        // `Err(size)`: too large. The size is checked before allocating, and
        // the read is capped too, in case the file grows in between.
        let read = self
            .blocking("get", key, |p| {
                let f = std::fs::File::open(p)?;
                let size = f.metadata()?.len();
                if size > MAX_OBJECT_LEN {
                    return Ok(Err(size));
                }
                let mut buf = Vec::with_capacity(size as usize);
                f.take(MAX_OBJECT_LEN + 1).read_to_end(&mut buf)?;
                if buf.len() as u64 > MAX_OBJECT_LEN {
                    return Ok(Err(buf.len() as u64));
                }
                Ok(Ok(Bytes::from(buf)))
            })
            .await?;
        read.map_err(|size| self.too_large("get", key, size))
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        if len > MAX_OBJECT_LEN {
            return Err(self.too_large("get range", key, len));
        }
        self.blocking("get range", key, move |p| read_range(&p, offset, len))
            .await
    }

    fn get_range_blocking(&self, key: &str, offset: u64, len: u64) -> Option<Result<Bytes>> {
        const OP: &str = "get range";
        if len > MAX_OBJECT_LEN {
            return Some(Err(self.too_large(OP, key, len)));
        }
        if let Err(e) = check_key(&self.location(), OP, key) {
            return Some(Err(e));
        }
        Some(read_range(&self.root.join(key), offset, len).map_err(|e| self.err(OP, key, e)))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.blocking("put", key, move |path| {
            let dir = path
                .parent()
                .expect("object keys have a parent")
                .to_path_buf();
            std::fs::create_dir_all(&dir)?;
            let name = path
                .file_name()
                .expect("object keys have a name")
                .to_string_lossy()
                .into_owned();
            let mut rnd = [0u8; 8];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut rnd);
            let tmp = dir.join(format!(".{name}.tmp-{:016x}", u64::from_le_bytes(rnd)));
            let result = (|| {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&data)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                fsync_dir(&dir)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.blocking("delete", key, |p| match std::fs::remove_file(&p) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        self.blocking("head", key, |p| match std::fs::metadata(p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    async fn probe(&self) -> Result<()> {
        // The root may not exist yet (STOW_INIT creates it); its nearest
        // existing ancestor must be a directory we can reach.
        let mut p = self.root.clone();
        loop {
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => return Ok(()),
                Ok(_) => {
                    return Err(BackendError::Permanent {
                        location: self.location(),
                        op: "probe",
                        key: p.display().to_string(),
                        message: "not a directory".into(),
                    });
                }
                Err(e) if e.kind() == ErrorKind::NotFound && p.pop() => continue,
                Err(e) => return Err(self.err("probe", "", e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn oversized_files_are_refused_before_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let b = FsBackend::new(dir.path().to_path_buf());
        std::fs::create_dir_all(dir.path().join("index")).unwrap();
        // Sparse: costs no disk, but reading it would allocate over 1 GiB.
        let f = std::fs::File::create(dir.path().join("index/big")).unwrap();
        f.set_len(MAX_OBJECT_LEN + 1).unwrap();

        let err = b.get("index/big").await.unwrap_err();
        match &err {
            BackendError::TooLarge { key, size, max, .. } => {
                assert_eq!(key, "index/big");
                assert_eq!((*size, *max), (MAX_OBJECT_LEN + 1, MAX_OBJECT_LEN));
            }
            other => panic!("{other}"),
        }
        assert!(!err.is_retriable());
        assert!(err.to_string().contains("index/big"), "{err}");
        let err = b
            .get_range("index/big", 0, MAX_OBJECT_LEN + 1)
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::TooLarge { .. }), "{err}");
        // A range of such a file is read as usual.
        assert_eq!(&b.get_range("index/big", 7, 3).await.unwrap()[..], &[0; 3]);
    }
}
