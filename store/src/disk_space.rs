//! The numbers statvfs(3) reports for the file system holding a path: free room for the
//! import's full-disk message, the mount's statfs, and whether a mount point answers.

use std::path::Path;

/// A file system's size and free room, in its own units (see [`DiskSpace::bytes_available`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    pub blocks: u64,
    pub blocks_free: u64,
    /// Free blocks an unprivileged writer may use (ext4 keeps some for root).
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    /// Preferred I/O size.
    pub block_size: u32,
    /// The unit of the block counts.
    pub fragment_size: u32,
}

impl DiskSpace {
    /// statvfs of the file system holding `path`; the error is the call's (ENOTCONN for a
    /// FUSE mount whose daemon died).
    pub fn of(path: &Path) -> std::io::Result<DiskSpace> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: statvfs fills the zeroed struct we own; the path is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The field types differ between platforms: the casts are not all no-ops everywhere.
        #[allow(clippy::unnecessary_cast)]
        Ok(DiskSpace {
            blocks: st.f_blocks as u64,
            blocks_free: st.f_bfree as u64,
            blocks_available: st.f_bavail as u64,
            files: st.f_files as u64,
            files_free: st.f_ffree as u64,
            block_size: st.f_bsize as u32,
            fragment_size: st.f_frsize as u32,
        })
    }

    /// Bytes an unprivileged writer can still write.
    pub fn bytes_available(&self) -> u64 {
        self.blocks_available
            .saturating_mul(u64::from(self.fragment_size))
    }

    /// The file system's size in bytes.
    pub fn bytes_total(&self) -> u64 {
        self.blocks.saturating_mul(u64::from(self.fragment_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_disk_of_a_path_and_the_error_of_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::of(dir.path()).unwrap();
        assert!(space.bytes_total() > 0);
        assert!(space.bytes_available() <= space.bytes_total());
        let missing = DiskSpace::of(&dir.path().join("not here")).unwrap_err();
        assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
        let nul = DiskSpace::of(Path::new("a\0b")).unwrap_err();
        assert_eq!(nul.raw_os_error(), Some(libc::EINVAL));
    }
}
