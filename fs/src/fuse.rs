//! The `fuser::Filesystem` adapter: translates kernel requests into [`Vfs`] calls and results
//! into replies. No filesystem logic lives here.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, Config, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, MountOption, Notifier,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    SessionACL, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use store::NodeKind;

use crate::attr::{Attr, Caller, SetAttr, SetTime};
use crate::errno::Errno;
use crate::files::Passthrough;
use crate::metrics::Op;
use crate::vfs::{ChangeListener, Vfs};

/// Attributes and entries are cached by the kernel this long; every change that does not pass
/// through the kernel is announced with an invalidation.
const TTL: Duration = Duration::from_secs(60);
/// Largest read/write the kernel sends in one request.
pub const MAX_IO: u32 = 1 << 20;

pub struct MountConfig {
    pub allow_other: bool,
    /// Ask the kernel to read eligible files straight from their packs (see files::Passthrough).
    pub passthrough: bool,
    pub threads: usize,
}

pub struct FuseAdapter {
    vfs: Arc<Vfs>,
    /// Whether to ask the kernel for FUSE_PASSTHROUGH at init.
    want_passthrough: bool,
    /// Each inode's backing file registration, shared by all its passthrough handles: the
    /// kernel refuses a second backing file for an inode while one is in use.
    backings: Mutex<HashMap<u64, (u64, Weak<BackingId>)>>,
    /// The registration each passthrough handle holds until its release.
    handle_backings: Mutex<HashMap<u64, Arc<BackingId>>>,
}

impl FuseAdapter {
    pub fn new(vfs: Arc<Vfs>, want_passthrough: bool) -> FuseAdapter {
        FuseAdapter {
            vfs,
            want_passthrough,
            backings: Mutex::new(HashMap::new()),
            handle_backings: Mutex::new(HashMap::new()),
        }
    }

    /// The inode's backing registration for `pt.pack`: the live one, or a new one.
    fn backing_for(&self, ino: u64, pt: &Passthrough, reply: &ReplyOpen) -> Option<Arc<BackingId>> {
        let mut backings = self.backings.lock();
        if let Some((pack, live)) = backings.get(&ino) {
            if let Some(id) = live.upgrade().filter(|_| *pack == pt.pack) {
                return Some(id);
            }
        }
        match reply.open_backing(&pt.file) {
            Ok(id) => {
                let id = Arc::new(id);
                backings.insert(ino, (pt.pack, Arc::downgrade(&id)));
                Some(id)
            }
            Err(e) => {
                // EPERM without CAP_SYS_ADMIN: stop asking; the daemon serves reads itself.
                tracing::warn!(error = %e, "the kernel refused a passthrough backing file; reads go through the daemon");
                if e.raw_os_error() == Some(libc::EPERM) {
                    self.vfs.set_passthrough(false);
                }
                None
            }
        }
    }

    /// Replies to an open, passing the handle through to its pack where the core chose that.
    fn reply_open(&self, ino: u64, mut opened: crate::files::Opened, reply: ReplyOpen) {
        let fh = opened.fh;
        if let Some(pt) = opened.passthrough.take() {
            if let Some(id) = self.backing_for(ino, &pt, &reply) {
                // Recorded before the reply: the release may follow at once.
                self.handle_backings.lock().insert(fh, id.clone());
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                return;
            }
            self.vfs.passthrough_refused(fh);
            opened.direct_io = true;
        }
        reply.opened(FileHandle(fh), open_flags(&opened));
    }

    /// Drops a released handle's backing registration (closed once no handle holds it).
    fn release_backing(&self, ino: u64, fh: u64) {
        let Some(id) = self.handle_backings.lock().remove(&fh) else {
            return;
        };
        let mut backings = self.backings.lock();
        drop(id);
        if backings
            .get(&ino)
            .is_some_and(|(_, live)| live.strong_count() == 0)
        {
            backings.remove(&ino);
        }
    }
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

fn kind(k: NodeKind) -> FileType {
    match k {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
    }
}

fn file_attr(a: &Attr) -> fuser::FileAttr {
    fuser::FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.crtime),
        kind: kind(a.kind),
        perm: a.perm as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: match a.kind {
            NodeKind::File => crate::attr::IO_SIZE,
            _ => crate::attr::BLOCK_SIZE,
        },
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(ns(t)),
    }
}

fn open_flags(opened: &crate::files::Opened) -> FopenFlags {
    if opened.direct_io {
        FopenFlags::FOPEN_DIRECT_IO
    } else if opened.keep_cache {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

/// What the invalidation worker is asked to do.
enum Notice {
    Entry(u64, Vec<u8>),
    Refresh,
}

/// Forwards the core's change notices to the kernel from a thread of its own: invalidating
/// from inside a request handler could deadlock on the directory the kernel holds locked.
struct KernelInvalidator {
    queue: Mutex<std::sync::mpsc::Sender<Notice>>,
    /// For `content_changed`, which is only called off the request threads and must have
    /// taken effect when it returns (an import's caller reads right after).
    notifier: Notifier,
}

impl ChangeListener for KernelInvalidator {
    fn entry_changed(&self, parent: u64, name: &[u8]) {
        let _ = self.queue.lock().send(Notice::Entry(parent, name.to_vec()));
    }

    fn namespace_changed(&self) {
        let _ = self.queue.lock().send(Notice::Refresh);
    }

    fn entry_replaced(&self, parent: u64, name: &[u8]) {
        // ENOENT: the kernel had nothing cached for that name.
        let _ = self
            .notifier
            .inval_entry(INodeNo(parent), OsStr::from_bytes(name));
    }

    fn content_changed(&self, ino: u64) {
        // Offset 0, length 0: every cached page and the attributes. ENOENT: nothing cached.
        let _ = self.notifier.inval_inode(INodeNo(ino), 0, 0);
    }
}

fn invalidation_worker(
    vfs: std::sync::Weak<Vfs>,
    notifier: Notifier,
    queue: std::sync::mpsc::Receiver<Notice>,
) {
    while let Ok(first) = queue.recv() {
        let mut entries = Vec::new();
        let mut refresh = false;
        for notice in std::iter::once(first).chain(queue.try_iter()) {
            match notice {
                Notice::Entry(parent, name) => entries.push((parent, name)),
                Notice::Refresh => refresh = true,
            }
        }
        if refresh {
            let Some(vfs) = vfs.upgrade() else { return };
            match vfs.refresh_views() {
                Ok(found) => entries.extend(found),
                Err(e) => tracing::warn!(error = %e, "refreshing views"),
            }
        }
        for (parent, name) in entries {
            // ENOENT just means the kernel had nothing cached for that name.
            let _ = notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(&name));
        }
    }
}

impl FuseAdapter {
    /// Runs one core operation, counting it and its latency for the status report.
    fn timed<T>(
        &self,
        op: Op,
        f: impl FnOnce(&Vfs) -> crate::errno::FsResult<T>,
    ) -> crate::errno::FsResult<T> {
        let started = Instant::now();
        let result = f(&self.vfs);
        self.vfs.metrics.record(op, started, result.is_ok());
        result
    }

    /// Replies with an entry, which the kernel holds as one lookup until FORGET.
    fn entry(&self, reply: ReplyEntry, attr: &crate::attr::Attr) {
        self.vfs.entry_given(attr.ino);
        reply.entry(&TTL, &file_attr(attr), Generation(0));
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        // HANDLE_KILLPRIV_V2: we clear setuid/setgid ourselves on write, so the kernel does not
        // ask getxattr("security.capability") before every write.
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
        if self.want_passthrough && crate::platform::may_pass_through() {
            wanted |= InitFlags::FUSE_PASSTHROUGH;
        }
        let granted = wanted & config.capabilities();
        // Backing files (packs) sit on a plain disk filesystem: one level of stacking.
        let _ = config.set_max_stack_depth(1);
        let _ = config.add_capabilities(granted);
        self.vfs
            .set_passthrough(granted.contains(InitFlags::FUSE_PASSTHROUGH));
        // Hot files are read around the page cache only where that keeps mmap working.
        self.vfs
            .set_direct_io_maps(granted.contains(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP));
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.vfs.commit_all() {
            tracing::error!(error = %e, "committing open files at unmount");
        }
        self.vfs.forget_everything();
    }

    // BATCH_FORGET comes here too (fuser's default `batch_forget`).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.vfs.forget(ino.0, nlookup);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.timed(Op::Lookup, |vfs| vfs.lookup(parent.0, name.as_bytes())) {
            Ok(a) => self.entry(reply, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.timed(Op::Getattr, |vfs| vfs.getattr(ino.0)) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            ctime: ctime.map(ns),
        };
        match self.timed(Op::Setattr, |vfs| vfs.setattr(ino.0, set, caller(req))) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.vfs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self
            .vfs
            .mknod(parent.0, name.as_bytes(), mode, umask, rdev, caller(req))
        {
            Ok(a) => self.entry(reply, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self
            .vfs
            .mkdir(parent.0, name.as_bytes(), mode, umask, caller(req))
        {
            Ok(a) => self.entry(reply, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.timed(Op::Unlink, |vfs| vfs.unlink(parent.0, name.as_bytes())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.timed(Op::Unlink, |vfs| vfs.rmdir(parent.0, name.as_bytes())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self.vfs.symlink(
            parent.0,
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
            caller(req),
        ) {
            Ok(a) => self.entry(reply, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.timed(Op::Rename, |vfs| {
            vfs.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                flags.bits(),
            )
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.vfs.link(ino.0, newparent.0, newname.as_bytes()) {
            Ok(a) => self.entry(reply, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.timed(Op::Open, |vfs| vfs.open_as(ino.0, flags.0, caller(req))) {
            Ok(o) => self.reply_open(ino.0, o, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.timed(Op::Read, |vfs| vfs.read(ino.0, fh.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            if let Err(e) = self.vfs.kill_suid(ino.0) {
                return reply.error(errno(e));
            }
        }
        let append = flags.0 & libc::O_APPEND != 0;
        let mut reply = Some(reply);
        let result = self.timed(Op::Write, |vfs| {
            vfs.write_acknowledged(fh.0, offset, data, append, &mut |n| {
                if let Some(reply) = reply.take() {
                    reply.written(n);
                }
            })
        });
        if let (Err(e), Some(reply)) = (result, reply) {
            reply.error(errno(e));
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.timed(Op::Flush, |vfs| vfs.flush(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.release_backing(ino.0, fh.0);
        match self.timed(Op::Release, |vfs| vfs.release(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.timed(Op::Fsync, |vfs| vfs.fsync(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.vfs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.timed(Op::Readdir, |vfs| vfs.readdir(fh.0, offset)) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(
                        INodeNo(e.ino),
                        e.next_offset,
                        kind(e.kind),
                        OsStr::from_bytes(&e.name),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.timed(Op::Readdir, |vfs| vfs.readdir(fh.0, offset)) {
            Ok(entries) => {
                for e in entries {
                    let Ok(attr) = self.vfs.getattr(e.ino) else {
                        continue;
                    };
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(
                        INodeNo(e.ino),
                        e.next_offset,
                        name,
                        &TTL,
                        &file_attr(&attr),
                        Generation(0),
                    ) {
                        break;
                    }
                    // The kernel takes a lookup of every entry but `.` and `..`.
                    if e.name != b"." && e.name != b".." {
                        self.vfs.entry_given(e.ino);
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.vfs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every namespace change is committed to the catalog before it is answered.
        reply.ok();
    }

    /// No ioctl applies to these files, as on a plain disk file: ENOTTY, the answer callers
    /// expect (Python's `open` asks whether every file it opens is a terminal), not ENOSYS
    /// and a warning in the log per open.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(errno(Errno::ENOTTY));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.vfs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.vfs.setxattr(ino.0, name.as_bytes(), value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.vfs.getxattr(ino.0, name.as_bytes()) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(fuser::Errno::from_i32(libc::ERANGE)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.vfs.listxattr(ino.0) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(fuser::Errno::from_i32(libc::ERANGE)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.vfs.removexattr(ino.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions makes the kernel check modes; we only confirm the inode exists.
        match self.timed(Op::Getattr, |vfs| vfs.getattr(ino.0)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .vfs
            .create(parent.0, name.as_bytes(), mode, umask, flags, caller(req))
        {
            Ok((a, o)) => {
                self.vfs.entry_given(a.ino);
                reply.created(
                    &TTL,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(o.fh),
                    open_flags(&o),
                )
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// Mounts `vfs` at `mountpoint` and serves it on background threads until the returned
/// session is dropped or unmounted.
pub fn mount(
    vfs: Arc<Vfs>,
    mountpoint: &Path,
    config: &MountConfig,
) -> std::io::Result<fuser::BackgroundSession> {
    let mut options = vec![
        MountOption::FSName("mlxfs".into()),
        MountOption::Subtype("mlxfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    options.extend(crate::platform::extra_mount_options());
    let mut fuse_config = Config::default();
    fuse_config.mount_options = options;
    fuse_config.acl = if config.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    fuse_config.n_threads = Some(config.threads.max(1));
    let (sender, receiver) = std::sync::mpsc::channel();
    let weak = Arc::downgrade(&vfs);
    let session = fuser::Session::new(
        FuseAdapter::new(vfs.clone(), config.passthrough),
        mountpoint,
        &fuse_config,
    )?;
    let notifier = session.notifier();
    std::thread::Builder::new()
        .name("mlxfs-invalidate".into())
        .spawn(move || invalidation_worker(weak, notifier, receiver))?;
    vfs.set_listener(Arc::new(KernelInvalidator {
        queue: Mutex::new(sender),
        notifier: session.notifier(),
    }));
    // Last closes queue their commits for this thread (see `committer`); it ends when the
    // unmount commits what is left (`Vfs::commit_all`).
    vfs.start_committing();
    let committing = vfs.clone();
    std::thread::Builder::new()
        .name("mlxfs-commit".into())
        .spawn(move || committing.run_committer())?;
    session.spawn()
}
