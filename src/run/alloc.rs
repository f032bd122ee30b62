//! The allocator's memory retention, the crate's only `unsafe` code (one
//! libc call, reviewed here).
//!
//! glibc serves a large allocation (a 1-16 MiB chunk, a pack) with `mmap`
//! only until such a block is freed; then it raises its threshold to that
//! size and serves the next ones from its heaps, which keep the memory
//! after `free`. A backup frees many such blocks, so its resident memory
//! grew to twice the heap it used (131 MiB resident for a 50 MiB heap on a
//! 49k-file tree). A fixed threshold keeps large blocks in `mmap`, which
//! `free` returns at once. 2 MiB, not glibc's 128 KiB start: every `mmap`
//! block is faulted in afresh, and at 128 KiB a 1 GiB backup spent a third
//! more time (4.3-5.5 s against 4.2 s) for 30 MiB less resident memory.

/// Blocks of at least this size go straight to `mmap`, always.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 2 << 20;

/// Fixes glibc's `mmap` threshold; a no-op elsewhere. Call before any
/// thread starts.
pub fn limit_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only changes the allocator's
    // parameters; it is called once, before the runtime starts threads.
    // A refusal (0) leaves the default behaviour, which is only slower to
    // return memory.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
