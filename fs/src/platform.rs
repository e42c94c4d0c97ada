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

/// Whether this process may register FUSE passthrough backing files: the kernel asks for
/// CAP_SYS_ADMIN (root, or a binary given it with setcap), so a mount run by a plain user reads
/// every file through the daemon.
#[cfg(target_os = "linux")]
pub fn may_pass_through() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

#[cfg(not(target_os = "linux"))]
pub fn may_pass_through() -> bool {
    false
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

/// Readahead the mount gets, at least: FUSE starts every mount at 128 KiB, far below what a
/// disk gets (Debian gives a virtio disk 8 MiB), and both sequential reads and mmap faults
/// (which read around the faulting page by the same amount) pay for it.
pub const MIN_MOUNT_READAHEAD_KB: u64 = 1024;

/// Gives the mount at `mountpoint` the readahead of the disk holding `store_dir` (at least
/// [`MIN_MOUNT_READAHEAD_KB`]), through the mount's backing device info in sysfs. Needs root;
/// returns what it set, or why not (the mount works either way, only slower on cold reads).
#[cfg(target_os = "linux")]
pub fn match_disk_readahead(
    mountpoint: &std::path::Path,
    store_dir: &std::path::Path,
) -> Result<u64, String> {
    use std::os::unix::fs::MetadataExt;
    let bdi = |dev: u64| {
        format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            libc::major(dev),
            libc::minor(dev)
        )
    };
    let store_dev = std::fs::metadata(store_dir)
        .map_err(|e| format!("stat {}: {e}", store_dir.display()))?
        .dev();
    // A partition has no queue of its own: its disk's is one directory up.
    let block = format!(
        "/sys/dev/block/{}:{}",
        libc::major(store_dev),
        libc::minor(store_dev)
    );
    let disk_kb = [
        format!("{block}/queue/read_ahead_kb"),
        format!("{block}/../queue/read_ahead_kb"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| s.trim().parse::<u64>().ok())
    .unwrap_or(0);
    let want = disk_kb.max(MIN_MOUNT_READAHEAD_KB);
    let mount_dev = std::fs::metadata(mountpoint)
        .map_err(|e| format!("stat {}: {e}", mountpoint.display()))?
        .dev();
    let path = bdi(mount_dev);
    std::fs::write(&path, want.to_string()).map_err(|e| format!("writing {path}: {e}"))?;
    Ok(want)
}

#[cfg(not(target_os = "linux"))]
pub fn match_disk_readahead(
    _mountpoint: &std::path::Path,
    _store_dir: &std::path::Path,
) -> Result<u64, String> {
    Err("not supported on this platform".into())
}

/// Keeps the daemon's own memory flat under long read and write loads (glibc only). Reads and
/// commits allocate and free buffers of 1–4 MiB on many threads; by default glibc keeps freed
/// memory in up to 8 arenas per core (~155 MB of anonymous RSS after a few GB read). Two arenas
/// bound that (~90 MB). The mmap threshold is fixed at 8 MiB so chunk buffers stay on the heap:
/// at 256 KiB every 1 MiB read buffer was a fresh mapping, faulted in and zeroed page by page,
/// which cut reads from cached packs from 1.9 GB/s to 0.8 GB/s.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before the worker threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// This boot of the machine, to tell page-cache contents that survived a daemon's death from
/// those a reboot may have lost (see `committer`). `None` where the kernel does not say.
pub fn boot_id() -> Option<String> {
    store::deferred_sync::boot_id()
}
