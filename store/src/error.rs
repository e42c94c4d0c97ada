//! Errors of the store. Every failure that can come from disk or input is a value, never a panic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("catalog: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store at {path} is locked by another mlxfs process (pid {pid}); unmount it first")]
    Locked { path: PathBuf, pid: String },
    #[error("corrupt chunk {chunk} in pack {pack} at offset {offset}: {reason}")]
    CorruptChunk {
        chunk: String,
        pack: u64,
        offset: u64,
        reason: String,
    },
    #[error("catalog is inconsistent: {0}")]
    Inconsistent(String),
    #[error("catalog schema version {found} is newer than this mlxfs understands ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("no space left on the store's disk")]
    NoSpace,
    #[error("not found: {0}")]
    NotFound(String),
    /// A file being read (imported, or committed from staging) changed or failed under the
    /// reader; nothing read from it is kept.
    #[error("{}: {what}; nothing of it was kept", path.display())]
    SourceChanged { path: PathBuf, what: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// Wraps an io::Error with what we were doing; ENOSPC is kept recognisable so the mount can
    /// answer ENOSPC to the writer instead of EIO.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return StoreError::NoSpace;
        }
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// The errno a filesystem should answer for this error.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::NoSpace => libc::ENOSPC,
            StoreError::NotFound(_) => libc::ENOENT,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull =>
            {
                libc::ENOSPC
            }
            StoreError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }
}

/// `.context()` for io results inside the store.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| StoreError::io(context(), e))
    }
}
