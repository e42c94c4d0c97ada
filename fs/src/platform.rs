//! Linux-only pieces, kept in one place so the crate builds for macOS (macFUSE) too.

/// Mount options only Linux's FUSE understands.
#[cfg(target_os = "linux")]
pub fn extra_mount_options() -> Vec<fuser::MountOption> {
    Vec::new()
}

#[cfg(not(target_os = "linux"))]
pub fn extra_mount_options() -> Vec<fuser::MountOption> {
    Vec::new()
}

/// Number of FUSE worker threads: enough that a long commit does not stall reads.
pub fn worker_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    if cfg!(target_os = "linux") {
        (cores * 2).clamp(4, 16)
    } else {
        1
    }
}
