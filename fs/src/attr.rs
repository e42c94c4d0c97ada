//! File attributes as the core reports them (FUSE-independent).

use store::{Inode, NodeKind};

pub const BLOCK_SIZE: u32 = 4096;

/// The I/O size regular files advertise (`st_blksize`). `cp`, `dd`-less tools and stdio size
/// their buffers from it: 1 MiB writes (the mount's largest request) cost an eighth of the
/// round trips of the 128 KiB that 4 KiB would lead `cp` to use.
pub const IO_SIZE: u32 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub blocks: u64,
    /// Nanoseconds since the epoch.
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub crtime: i64,
    pub rdev: u32,
}

impl Attr {
    pub fn from_inode(inode: &Inode) -> Attr {
        let size = match inode.kind {
            NodeKind::Dir => BLOCK_SIZE as u64,
            _ => inode.size,
        };
        Attr {
            ino: inode.ino,
            kind: inode.kind,
            perm: inode.perm,
            nlink: inode.nlink,
            uid: inode.uid,
            gid: inode.gid,
            size,
            blocks: size.div_ceil(512),
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
            crtime: inode.crtime,
            rdev: inode.rdev,
        }
    }
}

/// A time given to setattr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(i64),
}

/// The attribute changes of one setattr call; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    pub ctime: Option<i64>,
}

/// Who is asking: the calling process's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    pub fn root() -> Caller {
        Caller {
            uid: 0,
            gid: 0,
            pid: 0,
        }
    }
}

/// Filesystem-wide numbers for statfs.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}
