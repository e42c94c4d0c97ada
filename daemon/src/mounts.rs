//! Mount table queries and unmounting, Linux first, with the fusermount fallback for users
//! who are not root.

use std::path::Path;
use std::process::Command;

/// Whether `path` is a mount point (per /proc/self/mountinfo on Linux).
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(canonical) = path.canonicalize() else {
        return false;
    };
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = canonical.to_string_lossy();
    table.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mount_path(mp) == wanted)
    })
}

fn unescape_mount_path(raw: &str) -> String {
    raw.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn path_cstring(path: &Path) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn umount2(path: &Path, flags: libc::c_int) -> std::io::Result<()> {
    let c = path_cstring(path)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn fusermount(path: &Path, lazy: bool) -> std::io::Result<()> {
    let mut last = None;
    for tool in ["fusermount3", "fusermount"] {
        let mut cmd = Command::new(tool);
        cmd.arg(if lazy { "-uz" } else { "-u" }).arg(path);
        match cmd.output() {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                last = Some(std::io::Error::other(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no fusermount")))
}

/// Unmounts a FUSE mount; fails with EBUSY while files are open.
pub fn unmount(path: &Path) -> std::io::Result<()> {
    match umount2(path, 0) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => fusermount(path, false),
        Err(e) => Err(e),
    }
}

/// Detaches a mount even if busy (or dead); it goes away once the last file closes.
pub fn unmount_lazy(path: &Path) -> std::io::Result<()> {
    match umount2(path, libc::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => fusermount(path, true),
        Err(e) => Err(e),
    }
}

/// The errno of statfs(2) on `path`, or `None` when it succeeds.
pub fn statfs_error(path: &Path) -> Option<i32> {
    store::disk_space::DiskSpace::of(path)
        .err()
        .and_then(|e| e.raw_os_error())
}
