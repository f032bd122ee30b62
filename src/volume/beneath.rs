//! Entries named relative to their directory's descriptor.
//!
//! Backup and restore hold a descriptor for each directory along the
//! current path and reach an entry only by its name in that directory,
//! never following a symlink. Whatever a tenant swaps in while a backup
//! runs, or whatever a hostile tree makes a restore create, no path can
//! lead outside the volume: there is no path to resolve again.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::tree::is_safe_rel;

/// Set once `openat2` turned out to be missing (ENOSYS, before Linux 5.6)
/// or filtered (EPERM from a seccomp profile that predates it), so later
/// opens go straight to `openat`.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens `path` (one name, or `/`-separated names) beneath `dir`, following
/// no symlink in any component: `openat2` with `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS`, or `openat` with `O_NOFOLLOW` one component at a
/// time where the kernel lacks it. A symlink fails with ELOOP (or ENOTDIR
/// with `O_DIRECTORY`).
pub(crate) fn open_beneath(
    dir: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    // The fallback walks components itself: `..` or an absolute path
    // would leave `dir` there.
    if !is_safe_rel(path) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a relative path of plain names",
        ));
    }
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if !NO_OPENAT2.load(Relaxed) {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
        match rustix::fs::openat2(dir, path, flags, mode, how) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOSYS) => NO_OPENAT2.store(true, Relaxed),
            // A filtered openat2: openat works. A real EPERM: it fails too.
            Err(Errno::PERM) => {
                let fd = open_walk(dir, path, flags, mode)?;
                NO_OPENAT2.store(true, Relaxed);
                return Ok(fd);
            }
            // Only a concurrent rename makes openat2 ask for a retry; the
            // component walk is as safe.
            Err(Errno::AGAIN) => return open_walk(dir, path, flags, mode),
            Err(e) => return Err(e.into()),
        }
    }
    open_walk(dir, path, flags, mode)
}

/// `openat` one component at a time, each intermediate one a real
/// directory (`O_NOFOLLOW | O_DIRECTORY`).
fn open_walk(dir: BorrowedFd<'_>, path: &[u8], flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let mut parts = path.split(|b| *b == b'/');
    let last = parts.next_back().unwrap_or_default();
    let mut held: Option<OwnedFd> = None;
    for part in parts {
        let at = held.as_ref().map_or(dir, |f| f.as_fd());
        let next = rustix::fs::openat(
            at,
            part,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        held = Some(next);
    }
    let at = held.as_ref().map_or(dir, |f| f.as_fd());
    Ok(rustix::fs::openat(at, last, flags, mode)?)
}

/// Opens a directory beneath `dir` for listing it and setting its metadata.
pub(crate) fn open_dir(dir: BorrowedFd<'_>, path: &[u8]) -> io::Result<File> {
    open_beneath(dir, path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).map(File::from)
}

/// `/proc/self/fd/<dir>/<name>`: `name` in exactly the directory `dir`
/// holds, for the calls that have no `*at` form (the `l*xattr` family).
/// The kernel resolves the descriptor itself, so no swapped-in symlink is
/// followed on the way; the `l*` calls do not follow `name` either.
pub(crate) fn proc_path(dir: &impl AsRawFd, name: &[u8]) -> PathBuf {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    PathBuf::from(std::ffi::OsString::from_vec(p))
}

/// Whether [`proc_path`] works here: `/proc` is mounted and shows `dir`.
pub(crate) fn proc_works(dir: &File) -> bool {
    let via_proc = rustix::fs::stat(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    match (via_proc, rustix::fs::fstat(dir)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

/// Whether an error is `errno`.
pub(crate) fn is_errno(e: &io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno.raw_os_error())
}
