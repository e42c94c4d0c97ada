//! The mlxfs filesystem: a core [`Vfs`] over the store (plain Rust, `Result<_, Errno>`), and a
//! thin `fuser` adapter that mounts it.

pub mod attr;
mod committer;
pub mod errno;
pub mod files;
pub mod fuse;
mod kernel_refs;
pub mod metrics;
mod passthrough;
pub mod platform;
pub mod stats;
pub mod vfs;
pub mod views;

pub use attr::{Attr, Caller, SetAttr, SetTime, StatFs};
pub use errno::{Errno, FsResult};
pub use files::Opened;
pub use stats::StatsProvider;
pub use vfs::{ChangeListener, Vfs};
