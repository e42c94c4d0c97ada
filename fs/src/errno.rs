//! The core's error type: a plain errno, so the Vfs is testable without FUSE.

use store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const EMLINK: Errno = Errno(libc::EMLINK);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const ENOTTY: Errno = Errno(libc::ENOTTY);
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl From<StoreError> for Errno {
    fn from(e: StoreError) -> Self {
        let errno = Errno(e.errno());
        if errno == Errno::EIO {
            tracing::error!(error = %e, "store error");
        } else {
            tracing::debug!(error = %e, "store error");
        }
        errno
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

pub type FsResult<T> = Result<T, Errno>;
