//! The allocator's memory retention, the crate's only `unsafe` code (libc
//! calls, reviewed here).
//!
//! glibc serves a large allocation (a 1-16 MiB chunk, a pack) with `mmap`
//! only until such a block is freed; then it raises its threshold to that
//! size and serves the next ones from its heaps, which keep the memory
//! after `free`. A backup frees many such blocks, and with glibc's default
//! per-thread arenas its resident memory grew to twice the heap it used
//! (131 MiB resident for a 50 MiB heap on a 49k-file tree).
//!
//! Sending every block of 2 MiB or more to `mmap` (the previous setting)
//! bounded that, but each such block was faulted in afresh and handed back
//! on `free`: a 1.1 GiB backup took ~500k page faults, and on a VM whose
//! balloon reports freed 2 MiB blocks to the host, each later touch of that
//! memory (the next buffer, the page cache a pack is written into) faulted
//! on the host too; the kernel took more time than kubestow itself. So
//! large blocks now come from one heap that keeps at most 32 MiB free at
//! its top: measured side by side on the 1.1 GiB bench dataset (idle, three
//! rounds, medians), the first backup went from 4.0 s to 3.5 s with 4
//! channels and from 5.5 s to 5.1 s with 1, faults from ~500k to
//! ~115-190k, and peak RSS with 1 channel from 73-81 MiB to 88-103 MiB (restic:
//! ~130). On 10.4 GiB with 1 channel: 104 s to 59 s, 95 to 101-142 MiB
//! (restic: ~230).
//! One arena, not one per thread: with several, each kept its own free
//! memory (about 30 MiB more at 1 channel); glibc's per-thread caches
//! still serve small blocks without the arena lock.

/// Blocks of at least this size go to `mmap` (only the largest pack buffers).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 64 << 20;

/// Free memory the heap keeps at its top before returning it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 32 << 20;

/// Fixes glibc's `mmap` and trim thresholds and its arena count; a no-op
/// elsewhere. Call before any thread starts.
pub fn limit_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only changes the allocator's
    // parameters; it is called before the runtime starts threads. A
    // refusal (0) leaves that parameter's default, which only keeps more
    // memory or faults more.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
