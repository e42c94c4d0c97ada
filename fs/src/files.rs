//! File contents through the mount: open handles, write staging, commit, and reads.
//!
//! A file that is written gets a staging file on the store's disk holding its whole current
//! bytes; reads see writes at once. On fsync, and on the last close, the staged bytes are
//! chunked, deduplicated and committed in one catalog transaction; the last close usually
//! leaves that to a background thread (see `committer`). Writing to a committed file copies it
//! to staging first, so files sharing its chunks are untouched (copy-on-write).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use store::mapped::MappedFile;
use store::namespace::now_ns;
use store::{ContentMap, Inode, NodeKind};

use crate::attr::{Attr, Caller, SetAttr};
use crate::committer::{self, Record};
use crate::errno::{Errno, FsResult};
use crate::vfs::Vfs;
use crate::views::{is_virtual, Target, VNode};

/// A handle's reads that continue each other: where the last one ended, and how many bytes
/// they covered (0: no run yet).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReadRun {
    end: u64,
    covered: u64,
}

/// Sequential runs followed per file handle (see `continues_reading`).
const RUNS_PER_HANDLE: usize = 4;

/// A handle's runs, the one read most recently first.
pub(crate) type ReadRuns = [ReadRun; RUNS_PER_HANDLE];

/// Largest file the mount accepts (ext4's limit with 4 KiB blocks).
pub const MAX_FILE_SIZE: u64 = 16 << 40;

/// A read starting this close to where the handle's last read ended continues its run: the
/// kernel sends a sequential reader's readahead as requests in order, which the daemon's
/// workers take up nearly in order. Wider, a random reader of a small file (all its mmap
/// faults' windows near each other) made runs too.
const SEQUENTIAL_SLACK: u64 = 4 << 20;
/// Bytes a run of reads must have covered before it counts as sequential. An mmap fault is
/// answered by a read-around window of the mount's readahead size (the disk's, 8 MiB here):
/// a burst of requests that continue each other and then stop. Read as sequential, its pack
/// reads went with kernel readahead, which read past the window bytes no one asked for yet or
/// any more (docs/PERFORMANCE.md, eleventh round).
const SEQUENTIAL_RUN: u64 = 16 << 20;

/// A file being written, or changed through the mount this recently, is read around the page
/// cache. Without this a reader racing an `O_TRUNC` rewrite can copy out a page the kernel filled
/// while the file was momentarily empty, under the length of the next write: zeros that were
/// never written. Mapping such a file still works (`FUSE_DIRECT_IO_ALLOW_MMAP`).
pub const HOT_FILE_WINDOW_NS: i64 = 1_000_000_000;

/// Smaller files are not looked up for passthrough (raw packs are made for files of 16 MiB or
/// more; see `store::config::DEFAULT_RAW_PACK_MIN_FILE`).
const PASSTHROUGH_MIN_SIZE: u64 = 1 << 20;

/// How long an open for writing waits for closed passthrough readers' releases.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Copy granularity when staging a committed file.
const STAGE_COPY_BUF: usize = 4 << 20;

/// What an open inode holds between open and last release.
pub(crate) struct OpenFile {
    ino: u64,
    /// Open handles; atomic so opening never waits on a file busy committing.
    handles: AtomicU32,
    state: Mutex<FileState>,
    /// Its own lock, so opening never waits on a file busy committing either.
    io: Mutex<IoModes>,
    /// Signalled when a passthrough handle is released.
    io_released: Condvar,
}

/// How the kernel reads an inode's open handles. It fails an open (EIO, at the caller) that
/// would put a passthrough handle beside one of any other kind, or a second backing file beside
/// the first; and it would send a passthrough handle's writes to the pack itself. So a
/// passthrough handle is given only while every open handle of the inode is one on the same
/// pack; while one is, opening the inode for writing or changing its size fails with ETXTBSY
/// (as writing a running executable does; replacing the file by rename works), and other
/// read-only opens are passthrough handles too (or, if the inode's content changed since, by an
/// import while mounted, fail like a writer).
#[derive(Default)]
struct IoModes {
    /// Handles that are not passthrough.
    other: u32,
    /// Passthrough handles, all reading `pack`.
    passthrough: HashSet<u64>,
    /// Passthrough handles whose descriptor was closed (flushed) and whose release may still
    /// be on its way: the kernel sends it after close(2) returns.
    closing: HashSet<u64>,
    pack: Option<u64>,
}

impl IoModes {
    /// Waits (a little) for passthrough handles that are only closing to be released, so a
    /// writer right after the readers closed is not refused. Returns whether none is left.
    fn wait_passthrough_released(this: &mut MutexGuard<'_, IoModes>, released: &Condvar) -> bool {
        let deadline = Instant::now() + RELEASE_WAIT;
        while !this.passthrough.is_empty() {
            if !this.passthrough.is_subset(&this.closing)
                || released.wait_until(this, deadline).timed_out()
            {
                return this.passthrough.is_empty();
            }
        }
        true
    }

    /// Forgets a handle; returns whether it was the inode's last passthrough handle.
    fn release(&mut self, fh: u64) -> bool {
        self.closing.remove(&fh);
        if self.passthrough.remove(&fh) {
            if self.passthrough.is_empty() {
                self.pack = None;
                return true;
            }
        } else {
            self.other = self.other.saturating_sub(1);
        }
        false
    }
}

/// The kernel reads a passthrough handle straight from `file`, the raw pack `pack` whose bytes
/// are the file's (see `store::Store::passthrough_pack`), without asking the daemon.
#[derive(Debug)]
pub struct Passthrough {
    pub pack: u64,
    pub file: File,
}

struct FileState {
    staged: Option<Staged>,
    /// The file waits in the commit queue (which holds one handle count on it).
    queued: bool,
    /// Committed content loaded for reads (absent while staged or for all-zero files).
    content: Option<Arc<ContentMap>>,
    content_loaded: bool,
    /// A write acknowledged before its bytes were stored (see [`Vfs::write_acknowledged`])
    /// failed to store them: every later write fails with it until a flush or fsync has
    /// reported it.
    write_error: Option<Errno>,
}

struct Staged {
    file: File,
    path: PathBuf,
    size: u64,
    dirty: bool,
    mtime: i64,
    ctime: i64,
    /// The commit record last written beside this staging file, if any (see `committer`).
    recorded: Option<Record>,
    /// The committed content the staging copy started from.
    base: Option<i64>,
}

/// How an open went: the handle, and whether the kernel may keep its page cache.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    pub keep_cache: bool,
    /// Bypass the page cache: `/.mlxfs/stats.json`, whose size changes between opens,
    /// read-only opens of a file that is hot (see [`HOT_FILE_WINDOW_NS`]), and writers.
    pub direct_io: bool,
    /// Let the kernel read this read-only handle from a pack directly.
    pub passthrough: Option<Passthrough>,
}

impl OpenFile {
    pub(crate) fn new(ino: u64) -> OpenFile {
        OpenFile {
            ino,
            handles: AtomicU32::new(0),
            state: Mutex::new(FileState {
                staged: None,
                queued: false,
                content: None,
                content_loaded: false,
                write_error: None,
            }),
            io: Mutex::new(IoModes::default()),
            io_released: Condvar::new(),
        }
    }

    /// Drops the loaded content map, so the next read loads the inode's content afresh: its
    /// content was changed behind the mount (an import while mounted). A file being written
    /// keeps its staged bytes: its close commits them over whatever the import put there.
    pub(crate) fn forget_content(&self) {
        let mut state = self.state.lock();
        if state.staged.is_none() {
            state.content = None;
            state.content_loaded = false;
        }
    }

    /// Lays the staged size and times over `attr`; returns whether the file is staged.
    pub(crate) fn overlay_attr(&self, attr: &mut Attr) -> bool {
        let state = self.state.lock();
        let Some(staged) = &state.staged else {
            return false;
        };
        attr.size = staged.size;
        attr.blocks = staged.size.div_ceil(512);
        if staged.dirty {
            attr.mtime = staged.mtime;
            attr.ctime = staged.ctime;
        }
        true
    }

    /// A setattr that went to the catalog also changes the staged view (times; size was
    /// applied by truncate).
    pub(crate) fn absorb_setattr(&self, set: &SetAttr, inode: &Inode) {
        let mut state = self.state.lock();
        if let Some(staged) = state.staged.as_mut() {
            if set.mtime.is_some() {
                staged.mtime = inode.mtime;
            }
            staged.ctime = inode.ctime;
            if staged.recorded.is_some() {
                // A queued commit must not bring back the times from before this change.
                if let Err(e) = staged.write_record(self.ino) {
                    tracing::warn!(ino = self.ino, error = %e, "rewriting a commit record");
                }
            }
        }
    }
}

impl Staged {
    /// Takes in a write of the bytes up to `end`, stored.
    fn store_written(&mut self, end: u64) {
        self.size = self.size.max(end);
        self.dirty = true;
        let now = now_ns();
        self.mtime = now;
        self.ctime = now;
    }

    /// The commit record of these staged bytes.
    fn record(&self, ino: u64, boot: String) -> Record {
        Record {
            boot,
            ino,
            base: self.base,
            size: self.size,
            mtime: self.mtime,
            ctime: self.ctime,
        }
    }

    /// Writes the commit record of these staged bytes, unless the one written last says the
    /// same (a close's flush wrote it, its release asks again).
    fn write_record(&mut self, ino: u64) -> std::io::Result<()> {
        let session = self
            .path
            .parent()
            .and_then(store::deferred_sync::write_session)
            .ok_or_else(|| std::io::Error::other("no write session to bind a commit record to"))?;
        let record = self.record(ino, session);
        if self.recorded.as_ref() != Some(&record) {
            record.write(&self.path)?;
            self.recorded = Some(record);
        }
        Ok(())
    }

    /// Removes the commit record, if one was written.
    fn drop_record(&mut self) {
        if self.recorded.take().is_some() {
            let _ = std::fs::remove_file(committer::record_path(&self.path));
        }
    }
}

/// How long a settle waits for the releases closes promised (see [`AwaitingRelease`]). The
/// kernel sends a release right after close(2) returns; a file whose descriptor was
/// duplicated stays open after that close, and is not waited for longer than this.
const CLOSE_RELEASE_WAIT: Duration = Duration::from_millis(250);

/// Files whose close (flush) wrote a commit record, until their release queues the commit:
/// without it, `mlxfs status` right after a `cp` could run before the kernel's release of
/// the file reached the daemon, find the queue empty and miss the file.
#[derive(Default)]
pub(crate) struct AwaitingRelease {
    inos: Mutex<HashSet<u64>>,
    released: Condvar,
}

impl AwaitingRelease {
    fn add(&self, ino: u64) {
        self.inos.lock().insert(ino);
    }

    fn remove(&self, ino: u64) {
        if self.inos.lock().remove(&ino) {
            self.released.notify_all();
        }
    }

    /// Waits, at most `limit`, until no release is awaited.
    fn wait(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut inos = self.inos.lock();
        while !inos.is_empty() {
            if self.released.wait_until(&mut inos, deadline).timed_out() {
                return;
            }
        }
    }
}

impl Vfs {
    /// The open state of an inode, with one more handle counted on it.
    fn hold_file(&self, ino: u64) -> Arc<OpenFile> {
        let mut files = self.files.lock();
        let file = files
            .entry(ino)
            .or_insert_with(|| Arc::new(OpenFile::new(ino)))
            .clone();
        file.handles.fetch_add(1, Ordering::SeqCst);
        file
    }

    /// Drops one handle count; forgets the open state when it was the last. Returns whether
    /// the file is now idle.
    fn unhold_file(&self, file: &Arc<OpenFile>) -> bool {
        let mut files = self.files.lock();
        if file.handles.fetch_sub(1, Ordering::SeqCst) != 1 {
            return false;
        }
        if files.get(&file.ino).is_some_and(|f| Arc::ptr_eq(f, file)) {
            files.remove(&file.ino);
        }
        true
    }

    /// Whether a derived entry shows this inode (then its bytes and mode are read-only).
    pub(crate) fn is_view_source(&self, ino: u64) -> FsResult<bool> {
        Ok(self.view_tree()?.sources.contains(&ino))
    }

    fn derived_handle(&self, fh: u64) -> bool {
        self.handles
            .lock()
            .get(&fh)
            .is_some_and(|&(ino, _)| is_virtual(ino))
    }

    fn handle_file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        let ino = self.handles.lock().get(&fh).ok_or(Errno::EBADF)?.0;
        self.files.lock().get(&ino).cloned().ok_or(Errno::EBADF)
    }

    /// Opens a regular file; `O_TRUNC` is applied here.
    pub fn open(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        self.open_as(ino, flags, Caller::root())
    }

    /// Opens for `caller` (whose ids own a file materialized over a synthesized one).
    pub fn open_as(&self, ino: u64, flags: i32, caller: Caller) -> FsResult<Opened> {
        if is_virtual(ino) {
            return self.open_derived(ino, flags, caller);
        }
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writing && self.is_view_source(ino)? {
            return Err(Errno::EROFS);
        }
        // Held before the inode is read: an unlink deletes an inode only while nobody holds it
        // (see `delete_if_unlinked_and_closed`), so the inode read here stays until release.
        let file = self.hold_file(ino);
        let inode = match self.read_tx(|tx| tx.inode(ino)) {
            Ok(Some(inode)) if inode.kind == NodeKind::File => inode,
            other => {
                self.unhold_file(&file);
                return Err(match other {
                    Ok(Some(inode)) if inode.kind == NodeKind::Dir => Errno::EISDIR,
                    Ok(Some(_)) => Errno(libc::ELOOP),
                    // Deleted since the kernel looked it up (replaced by a rename): ESTALE
                    // makes the kernel look the name up again.
                    Ok(None) => Errno(libc::ESTALE),
                    Err(e) => e,
                });
            }
        };
        let staged = file.state.lock().staged.is_some();
        let changed_lately = staged || now_ns().saturating_sub(inode.ctime) < HOT_FILE_WINDOW_NS;
        let maps_survive_direct_io = self.direct_io_maps.load(Ordering::Relaxed);
        let hot = changed_lately && maps_survive_direct_io;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .insert(fh, (ino, self.metrics.file(ino)));
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let candidate = (!writing && !staged)
            .then(|| self.passthrough_for(&inode))
            .flatten();
        let passthrough = match self.admit_handle(&file, fh, candidate, changed_lately) {
            Ok(passthrough) => passthrough,
            Err(e) => {
                self.handles.lock().remove(&fh);
                self.unhold_file(&file);
                return Err(e);
            }
        };
        if writable && flags & libc::O_TRUNC != 0 {
            if let Err(e) = self.truncate(ino, 0) {
                let _ = self.release(fh);
                return Err(e);
            }
        }
        Ok(Opened {
            fh,
            keep_cache: !staged && flags & libc::O_TRUNC == 0,
            // A writer's bytes go from its buffer to the daemon without a stop in the mount's
            // page cache (a third of the cost of a write); the kernel still flushes and drops
            // mapped pages around each direct write, so maps of the file stay coherent.
            direct_io: if writable {
                maps_survive_direct_io
            } else {
                hot
            },
            passthrough,
        })
    }

    /// Counts a new handle in the inode's `IoModes`: a passthrough handle on `candidate`'s pack
    /// where that is allowed, else a handle the daemon serves, unless the inode has passthrough
    /// handles, which only other passthrough handles on the same pack may join (ETXTBSY).
    /// A hot file is not passed through (its writer may come back, and would be refused),
    /// unless it already is.
    fn admit_handle(
        &self,
        file: &OpenFile,
        fh: u64,
        candidate: Option<Passthrough>,
        hot: bool,
    ) -> FsResult<Option<Passthrough>> {
        let mut io = file.io.lock();
        match candidate {
            Some(pt)
                if io.other == 0 && (io.pack == Some(pt.pack) || (io.pack.is_none() && !hot)) =>
            {
                if io.passthrough.is_empty() {
                    self.passthrough_meter
                        .opened(file.ino, &pt.file, self.metrics.file(file.ino));
                }
                io.pack = Some(pt.pack);
                io.passthrough.insert(fh);
                Ok(Some(pt))
            }
            _ if !IoModes::wait_passthrough_released(&mut io, &file.io_released) => {
                Err(Errno(libc::ETXTBSY))
            }
            _ => {
                io.other += 1;
                Ok(None)
            }
        }
    }

    /// The raw pack a read-only open of this committed inode could be passed through to.
    fn passthrough_for(&self, inode: &Inode) -> Option<Passthrough> {
        // Small files (configs, tokenizers) are not worth the catalog query at each open.
        if !self.passthrough.load(Ordering::Relaxed) || inode.size < PASSTHROUGH_MIN_SIZE {
            return None;
        }
        let content = inode.content?;
        match self.store.passthrough_pack(content, inode.size) {
            Ok(found) => found.map(|(pack, file)| Passthrough { pack, file }),
            Err(e) => {
                tracing::debug!(ino = inode.ino, error = %e, "no passthrough");
                None
            }
        }
    }

    /// The adapter could not pass `fh` through after all (the kernel refused its backing
    /// file): count it as a handle the daemon serves.
    pub fn passthrough_refused(&self, fh: u64) {
        let Ok(file) = self.handle_file(fh) else {
            return;
        };
        let mut io = file.io.lock();
        if io.release(fh) {
            self.passthrough_meter.closed(file.ino, &self.metrics);
        }
        io.other += 1;
    }

    /// Counts what the kernel read by passthrough since the last look (see `passthrough.rs`):
    /// `now` for a status report, else at most a few times a second (the throughput sampler).
    pub fn count_passthrough_reads(&self, now: bool) {
        self.passthrough_meter.look(&self.metrics, now);
    }

    /// Whether read-only opens may be passed through to packs (see [`Passthrough`]).
    pub fn passthrough_enabled(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Called by the FUSE adapter once the kernel said whether it passes files through.
    pub fn set_passthrough(&self, granted: bool) {
        self.passthrough.store(granted, Ordering::Relaxed);
    }

    /// Creates and opens a file (O_CREAT|O_EXCL semantics are the kernel's: it only calls
    /// create when the name is absent).
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Attr, Opened)> {
        let attr = self.create_file(parent, name, mode, umask, caller)?;
        let opened = self.open(attr.ino, flags & !libc::O_TRUNC)?;
        Ok((attr, opened))
    }

    /// Synthesized files are read-only and read from memory.
    fn open_derived(&self, ino: u64, flags: i32, caller: Caller) -> FsResult<Opened> {
        if let Some(real) = self.materialized_as(ino) {
            return self.open_as(real, flags, caller);
        }
        let tree = self.view_tree_for(ino)?;
        let parent = match tree.nodes.get(&ino) {
            Some(VNode::File { parent, .. }) => *parent,
            Some(VNode::Dir { .. }) => return Err(Errno::EISDIR),
            None => return Err(Errno::ENOENT),
        };
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            // A tool writing a file we synthesized in its own tree (Ollama writing the manifest
            // of a model it pulls itself) gets a real file in its place: real files win.
            let name = tree.overlay.get(&parent).and_then(|entries| {
                entries
                    .iter()
                    .find(|(_, t)| **t == Target::Virtual(ino))
                    .map(|(n, _)| n.clone())
            });
            let Some(name) = name.filter(|_| !is_virtual(parent)) else {
                return Err(Errno::EROFS);
            };
            let attr = self.create_file(parent, &name, 0o644, 0o022, caller)?;
            self.materialized.lock().insert(ino, (parent, name.clone()));
            self.notify_entry(parent, &name);
            return self.open_as(attr.ino, flags & !libc::O_TRUNC, caller);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .insert(fh, (ino, self.metrics.file(ino)));
        let stats = tree.stats_ino == Some(ino);
        if stats {
            self.views.stats.open(fh);
        }
        Ok(Opened {
            fh,
            keep_cache: !stats,
            direct_io: stats,
            passthrough: None,
        })
    }

    fn read_derived(&self, ino: u64, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let tree = self.view_tree()?;
        let stats = self.views.stats.snapshot(fh);
        let bytes = match (tree.nodes.get(&ino), &stats) {
            (Some(VNode::File { .. }), Some(snapshot)) => snapshot,
            (Some(VNode::File { bytes, .. }), None) => bytes,
            _ => return Err(Errno::ENOENT),
        };
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        Ok(bytes[start..end].to_vec())
    }

    fn load_content(&self, file: &OpenFile, state: &mut FileState) -> FsResult<()> {
        if state.content_loaded {
            return Ok(());
        }
        let inode = self
            .read_tx(|tx| tx.inode(file.ino))?
            .ok_or(Errno::ENOENT)?;
        state.content = match inode.content {
            Some(id) => Some(Arc::new(self.read_tx(|tx| tx.content_map(id))?)),
            None => None,
        };
        state.content_loaded = true;
        Ok(())
    }

    /// Reads up to `size` bytes at `offset`: staged bytes if the file is being written, else
    /// verified committed chunks; zeros past the content (sparse tail); short at end of file.
    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        // From before the content map is taken until its bytes are read: gc then neither
        // forgets the chunks nor deletes their packs under this read (store/src/gc.rs).
        let reading = self.store.read_guard();
        let data = self.read_inner(ino, fh, offset, size)?;
        drop(reading);
        let counters = self.handles.lock().get(&fh).map(|h| h.1.clone());
        self.metrics
            .add_read(counters.as_deref(), data.len() as u64);
        Ok(data)
    }

    fn read_inner(&self, ino: u64, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        // The handle says what was opened: a synthesized file may have been replaced by a real
        // one that the kernel still knows under the synthesized inode.
        let opened = self.handles.lock().get(&fh).map_or(ino, |h| h.0);
        if is_virtual(opened) {
            return self.read_derived(opened, fh, offset, size);
        }
        let file = self.handle_file(fh)?;
        let ino = file.ino;
        let (content, file_size) = {
            let mut state = file.state.lock();
            if let Some(staged) = &state.staged {
                let end = staged.size.min(offset.saturating_add(size as u64));
                if offset >= end {
                    return Ok(Vec::new());
                }
                let mut buf = vec![0u8; (end - offset) as usize];
                read_full_at(&staged.file, &mut buf, offset)?;
                return Ok(buf);
            }
            // The inode's content may have changed behind the mount (an import while mounted)
            // since the map was loaded: the old map under the new length would read old bytes,
            // or zeros, as the new file. Inode and map are read together, in one transaction
            // that also loads the map the first time.
            let loaded = state.content.as_ref().map(|m| m.id);
            let (inode, fresh) = self.read_tx(|tx| {
                let Some(inode) = tx.inode(ino)? else {
                    return Ok((None, None));
                };
                let fresh = match inode.content {
                    Some(id) if Some(id) != loaded => Some(tx.content_map(id)?),
                    _ => None,
                };
                Ok((Some(inode), fresh))
            })?;
            let inode = inode.ok_or(Errno::ENOENT)?;
            if let Some(map) = fresh {
                state.content = Some(Arc::new(map));
            } else if inode.content.is_none() {
                state.content = None;
            }
            state.content_loaded = true;
            (state.content.clone(), inode.size)
        };
        let end = file_size.min(offset.saturating_add(size as u64));
        if offset >= end {
            return Ok(Vec::new());
        }
        let len = (end - offset) as usize;
        let mut buf = Vec::with_capacity(len);
        if let Some(map) = content {
            if offset < map.size {
                let want = ((map.size - offset) as usize).min(len);
                let random = !self.continues_reading(fh, offset, end);
                let got = self
                    .store
                    .read_appending(&map, offset, want, random, &mut buf)?;
                if got != want {
                    return Err(Errno::EIO);
                }
            }
        }
        // Past the content's end (a file extended by truncate): zeros.
        buf.resize(len, 0);
        Ok(buf)
    }

    /// Called by the FUSE adapter once the kernel said whether it maps direct-I/O files.
    pub fn set_direct_io_maps(&self, granted: bool) {
        self.direct_io_maps.store(granted, Ordering::Relaxed);
    }

    /// Whether a read at `offset` is part of a sequential run of the handle's reads: it starts
    /// near where one of the handle's runs ended (readahead requests may arrive a little out of
    /// order, hence "near"), and that run has covered [`SEQUENTIAL_RUN`] bytes. A handle has
    /// up to [`RUNS_PER_HANDLE`] runs: readers like mlx-lm read one file with parallel 32 MiB
    /// preads on one descriptor, each sequential. A run from the start of the file is no
    /// exception: an mmap fault near the start gets a read-around window there too.
    fn continues_reading(&self, fh: u64, offset: u64, end: u64) -> bool {
        let mut all = self.read_runs.lock();
        let runs = all.entry(fh).or_default();
        let len = end.saturating_sub(offset);
        let continued = runs
            .iter()
            .position(|run| run.covered > 0 && offset.abs_diff(run.end) <= SEQUENTIAL_SLACK);
        let (slot, covered) = match continued {
            Some(slot) => (slot, runs[slot].covered.saturating_add(len)),
            // A new run takes the place of the one read least recently.
            None => (runs.len() - 1, len),
        };
        // Most recent first.
        runs[..=slot].rotate_right(1);
        runs[0] = ReadRun { end, covered };
        covered >= SEQUENTIAL_RUN
    }

    /// Makes sure the file has a staging copy of its current bytes (copy-on-write).
    fn stage(&self, file: &OpenFile, state: &mut FileState) -> FsResult<()> {
        if state.staged.is_some() {
            return Ok(());
        }
        let inode = self
            .read_tx(|tx| tx.inode(file.ino))?
            .ok_or(Errno::ENOENT)?;
        self.load_content(file, state)?;
        let path = self
            .store
            .staging_dir()
            .join(format!("{}-{}", file.ino, now_ns()));
        let staging = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let result = (|| -> FsResult<()> {
            if let Some(map) = &state.content {
                let mut offset = 0u64;
                let mut buf = vec![0u8; STAGE_COPY_BUF];
                let limit = map.size.min(inode.size);
                while offset < limit {
                    let n = ((limit - offset) as usize).min(buf.len());
                    let got = self.store.read(map, offset, &mut buf[..n])?;
                    if got != n {
                        return Err(Errno::EIO);
                    }
                    store::page_cache::write_all_at(&staging, &buf[..n], offset)?;
                    offset += n as u64;
                }
            }
            // Not to 0: ext4 writes a file back at its close once it was truncated to 0
            // (its replace-by-truncate guard), and a writer's close would wait for that.
            if inode.size > 0 {
                staging.set_len(inode.size)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        state.staged = Some(Staged {
            file: staging,
            path,
            size: inode.size,
            dirty: false,
            mtime: inode.mtime,
            ctime: inode.ctime,
            recorded: None,
            base: inode.content,
        });
        Ok(())
    }

    pub fn write(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        append: bool,
    ) -> FsResult<u32> {
        // The handle, not the inode the kernel names, says which file is written (see read).
        let _ = ino;
        let written = self.write_inner(fh, offset, data, append, None)?;
        self.count_written(fh, written);
        Ok(written)
    }

    /// Writes like [`Vfs::write`], but calls `accepted` with the count as soon as the write is
    /// checked and the file's new length is set, before the bytes are stored: the writer's next
    /// `write(2)` (its read of the source, the kernel's copy to the daemon) then overlaps this
    /// one's copy into the staging file, instead of waiting for it. The file's lock stays held
    /// until the bytes are stored, so every read, stat, flush and commit of the file sees them.
    /// An error storing them (a full disk) undoes the new length and is reported by the file's
    /// later writes and its next flush (close) or fsync, as a disk file system reports a failed
    /// writeback. Returns
    /// `Err` without calling `accepted` for errors found before it (EBADF, EFBIG, a staging
    /// failure); after it, the error goes to the file instead.
    pub fn write_acknowledged(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        append: bool,
        accepted: &mut dyn FnMut(u32),
    ) -> FsResult<u32> {
        let written = self.write_inner(fh, offset, data, append, Some(accepted))?;
        self.count_written(fh, written);
        Ok(written)
    }

    fn count_written(&self, fh: u64, written: u32) {
        let counters = self.handles.lock().get(&fh).map(|h| h.1.clone());
        self.metrics
            .add_written(counters.as_deref(), written as u64);
    }

    fn write_inner(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        append: bool,
        accepted: Option<&mut dyn FnMut(u32)>,
    ) -> FsResult<u32> {
        let file = self.handle_file(fh)?;
        let mut state = file.state.lock();
        // Every write fails until a flush or fsync has reported the error: the kernel splits
        // a write into several requests and returns the bytes of those that went before a
        // failed one, so the writer learns of it only from a request that fails after it.
        if let Some(e) = state.write_error {
            return Err(e);
        }
        self.stage(&file, &mut state)?;
        let staged = state.staged.as_mut().ok_or(Errno::EIO)?;
        let offset = if append { staged.size } else { offset };
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        let Some(accepted) = accepted else {
            store::page_cache::write_all_at(&staged.file, data, offset)?;
            staged.store_written(end);
            return Ok(data.len() as u32);
        };
        let size_before = staged.size;
        staged.size = size_before.max(end);
        accepted(data.len() as u32);
        if let Err(e) = store::page_cache::write_all_at(&staged.file, data, offset) {
            // Nothing saw the new length (the lock is held): the file is as before this
            // write, except for bytes it overwrote, as after any failed write.
            staged.size = size_before;
            if end > size_before {
                let _ = staged.file.set_len(size_before);
            }
            let e = Errno::from(e);
            tracing::warn!(ino = file.ino, error = %e, "storing an acknowledged write");
            state.write_error = Some(e);
            return Err(e);
        }
        staged.store_written(end);
        Ok(data.len() as u32)
    }

    /// Changes a file's length: staged files are resized; a committed file not open for
    /// writing is shrunk by restaging (so old bytes never reappear) or grown sparsely.
    pub(crate) fn truncate(&self, ino: u64, size: u64) -> FsResult<()> {
        if size > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        let inode = self.read_tx(|tx| tx.inode(ino))?.ok_or(Errno::ENOENT)?;
        match inode.kind {
            NodeKind::Dir => return Err(Errno::EISDIR),
            NodeKind::Symlink => return Err(Errno::EINVAL),
            NodeKind::File => {}
        }
        let file = self.hold_file(ino);
        if !IoModes::wait_passthrough_released(&mut file.io.lock(), &file.io_released) {
            // Its readers read the pack, which a new size would not change (see `IoModes`).
            self.unhold_file(&file);
            return Err(Errno(libc::ETXTBSY));
        }
        let mut state = file.state.lock();
        let was_staged = state.staged.is_some();
        let result = (|| {
            if state.staged.is_none() && (size == 0 || size >= inode.size) {
                // Emptying drops the content outright; growing reads zeros past the content,
                // which is what sparse growth means. Either way nothing needs copying, and the
                // new length and times are committed with the content change, in one step.
                let now = now_ns();
                self.write_tx(|tx| {
                    let Some(mut current) = tx.inode(ino)? else {
                        return Err(Errno::ENOENT);
                    };
                    if size == 0 {
                        tx.set_content(ino, None)?;
                    }
                    // truncate(2) marks the times even when the length does not change.
                    current.size = size;
                    current.mtime = now;
                    current.ctime = now;
                    tx.update_inode(&current)?;
                    Ok(())
                })?;
                if size == 0 {
                    state.content = None;
                    state.content_loaded = true;
                }
                return Ok(());
            }
            self.stage(&file, &mut state)?;
            let staged = state.staged.as_mut().ok_or(Errno::EIO)?;
            if staged.file.metadata()?.len() != size {
                staged.file.set_len(size)?;
            }
            staged.size = size;
            staged.dirty = true;
            let now = now_ns();
            staged.mtime = now;
            staged.ctime = now;
            if !was_staged {
                // Nobody was writing the file: nobody's close will commit the new length, so
                // commit it now.
                self.commit_locked(&file, &mut state, false)?;
                if file.handles.load(Ordering::SeqCst) == 1 {
                    self.drop_staging(&mut state);
                }
            }
            Ok(())
        })();
        drop(state);
        self.unhold_file(&file);
        result
    }

    /// Chunks and commits the staged bytes of a file if they changed. `adopt`: nobody will
    /// write the staging file again (the caller drops it before unlocking `state`), so it may
    /// become the file's raw pack (see `Store::prepare_adopting`).
    fn commit_locked(&self, file: &OpenFile, state: &mut FileState, adopt: bool) -> FsResult<()> {
        let Some(staged) = state.staged.as_mut() else {
            return Ok(());
        };
        if !staged.dirty {
            return Ok(());
        }
        let data = MappedFile::from_file(&staged.file, &staged.path)?;
        let record = staged.record(file.ino, String::new());
        let adopt_from = adopt.then_some(staged.path.as_path());
        let (new_bytes, content) = self
            .commit_bytes(&data, &record, false, adopt_from)
            .map_err(|e| self.after_failed_commit(e))?;
        staged.dirty = false;
        // Writes after this commit (after an fsync) are staged over what it committed.
        staged.base = content;
        self.commits.fetch_add(1, Ordering::SeqCst);
        staged.drop_record();
        self.namespace_changed();
        state.content_loaded = false;
        state.content = None;
        tracing::debug!(
            ino = file.ino,
            size = record.size,
            new_bytes,
            "committed file"
        );
        Ok(())
    }

    /// Commits the first `to.size` bytes of `data` as the content of inode `to.ino`, with its
    /// times. `only_over_base`: leave an inode whose content is no longer `to.base` alone
    /// (recovery of a record that a later change overtook). Returns the bytes new to the store
    /// and the content committed. `adopt_from`: the file `data` was read from, which nobody
    /// writes any more; when `data` maps it and is exactly the committed bytes, it may become
    /// their pack (a sparse file is read into memory instead, see `MappedFile::from_file`: its
    /// holes must not become a pack's, which the read path maps).
    fn commit_bytes(
        &self,
        data: &MappedFile,
        to: &Record,
        only_over_base: bool,
        adopt_from: Option<&std::path::Path>,
    ) -> Result<(u64, Option<i64>), store::StoreError> {
        let adopt_from =
            adopt_from.filter(|_| data.maps_the_file() && data.len() as u64 == to.size);
        let bytes = &data[..(to.size as usize).min(data.len())];
        let _guard = self.store.ingest_guard();
        let prepared = match adopt_from {
            Some(path) => self.store.prepare_adopting(bytes, path)?,
            None => self.store.prepare(bytes)?,
        };
        // A staging page the disk could not read was hashed as zeros: not the file's bytes.
        if let Err(e) = data.check_intact() {
            self.store.forget_prepared(&prepared);
            return Err(e);
        }
        let attached = self.store.commit(&prepared, |tx, content| {
            let Some(mut inode) = tx.inode(to.ino)? else {
                return Ok(to.base);
            };
            if inode.kind != NodeKind::File || (only_over_base && inode.content != to.base) {
                return Ok(to.base);
            }
            tx.set_content(to.ino, content)?;
            inode.size = to.size;
            inode.mtime = to.mtime;
            // A rename or chmod after the close (commits may be queued) keeps its later ctime.
            inode.ctime = inode.ctime.max(to.ctime);
            tx.update_inode(&inode)?;
            Ok(content)
        })?;
        Ok((prepared.new_bytes, attached))
    }

    /// A commit that failed (typically a full disk) leaves pack bytes nobody claims: give the
    /// space back at once rather than at the next start.
    fn after_failed_commit(&self, e: store::StoreError) -> Errno {
        let errno = Errno::from(e);
        if errno == Errno::ENOSPC {
            if let Err(e) = self.store.reclaim_uncommitted() {
                tracing::warn!(error = %e, "reclaiming pack space after ENOSPC");
            }
        }
        errno
    }

    fn drop_staging(&self, state: &mut FileState) {
        if let Some(mut staged) = state.staged.take() {
            staged.drop_record();
            let _ = std::fs::remove_file(&staged.path);
        }
    }

    /// close(2) of one descriptor: commit what was written, unless the last close of the file
    /// is about to queue the commit (see `committer`).
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        if self.derived_handle(fh) {
            return Ok(());
        }
        let file = self.handle_file(fh)?;
        {
            let mut io = file.io.lock();
            if io.passthrough.contains(&fh) {
                io.closing.insert(fh);
            }
        }
        let mut state = file.state.lock();
        let write_error = state.write_error.take();
        // The record is written here, not at the release that queues the commit: close(2)
        // returns before the kernel sends the release, and the daemon may die in between.
        let committed =
            if self.may_queue(&file, &state) && self.write_record(&file, &mut state).is_some() {
                self.awaiting_release.add(file.ino);
                Ok(())
            } else {
                self.commit_last_handle(&file, &mut state)
            };
        write_error.map_or(committed, Err)
    }

    /// Commits at the close of a handle. When it is the file's last, the staging file may
    /// become the pack, so the commit needs no room beside the file (a disk with less free
    /// space than the file's size twice over, where closes do not queue, could not take it
    /// otherwise): nobody can write the staging file before it is dropped below, and a later
    /// write through a duplicate of the closed descriptor stages afresh.
    fn commit_last_handle(&self, file: &OpenFile, state: &mut FileState) -> FsResult<()> {
        let last = file.handles.load(Ordering::SeqCst) == 1;
        self.commit_locked(file, state, last)?;
        if last {
            self.drop_staging(state);
        }
        Ok(())
    }

    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        if self.derived_handle(fh) {
            return Ok(());
        }
        let file = self.handle_file(fh)?;
        let mut state = file.state.lock();
        let write_error = state.write_error.take();
        let committed = self.commit_locked(&file, &mut state, false);
        write_error.map_or(committed, Err)
    }

    /// Whether the close of the file's only handle may leave the commit to the queue: there
    /// is something to commit, room in the queue and on the disk, and a way to recover it.
    fn may_queue(&self, file: &OpenFile, state: &FileState) -> bool {
        let Some(staged) = state.staged.as_ref() else {
            return false;
        };
        staged.dirty
            && !state.queued
            && file.handles.load(Ordering::SeqCst) == 1
            && crate::platform::boot_id().is_some()
            && self
                .committer
                .has_room(staged.size, || self.disk_free_bytes())
    }

    /// Queues the commit of a file whose last handle is closing; the handle's count passes to
    /// the queue. Returns false (commit now) when it may not queue.
    fn queue_commit(&self, file: &Arc<OpenFile>, state: &mut FileState) -> bool {
        if !self.may_queue(file, state) {
            return false;
        }
        let Some(size) = self.write_record(file, state) else {
            return false;
        };
        state.queued = true;
        self.committer.push(file.clone(), size);
        true
    }

    /// Writes (or rewrites) the commit record of the file's staged bytes; returns their size,
    /// or `None` when there is no record to rely on.
    fn write_record(&self, file: &OpenFile, state: &mut FileState) -> Option<u64> {
        let staged = state.staged.as_mut()?;
        if let Err(e) = staged.write_record(file.ino) {
            tracing::warn!(ino = file.ino, error = %e, "no commit record; committing at close");
            return None;
        }
        Some(staged.size)
    }

    /// Runs the commit queue until [`Vfs::stop_committing`]: call on a thread of its own after
    /// [`Vfs::start_committing`].
    pub fn run_committer(&self) {
        while let Some((file, size)) = self.committer.next() {
            self.commit_queued(&file);
            self.committer.done(size);
        }
    }

    /// Lets last closes queue their commits; the caller runs [`Vfs::run_committer`].
    pub fn start_committing(&self) {
        self.committer.enable();
    }

    /// Stops the commit queue after the commit under way: later closes commit themselves,
    /// and files still queued are left to [`Vfs::commit_all`].
    pub fn stop_committing(&self) {
        self.committer.stop();
    }

    /// Waits until every closed file is committed, so the catalog shows them (status, model
    /// lists, import and gc run after this).
    pub fn settle(&self) {
        self.awaiting_release.wait(CLOSE_RELEASE_WAIT);
        self.committer.settle(None);
    }

    /// [`Vfs::settle`] for at most `limit` (a status report must not wait on a long queue);
    /// returns whether the queue is empty.
    pub fn settle_within(&self, limit: std::time::Duration) -> bool {
        let started = std::time::Instant::now();
        self.awaiting_release.wait(CLOSE_RELEASE_WAIT.min(limit));
        self.committer
            .settle(Some(limit.saturating_sub(started.elapsed())))
    }

    /// Whether no close is waiting for its release or its queued commit: nothing closed has
    /// yet to show in the store.
    pub fn commits_settled(&self) -> bool {
        self.awaiting_release.inos.lock().is_empty() && self.committer.backlog().0 == 0
    }

    /// Files queued or being committed, and their bytes.
    pub fn commit_backlog(&self) -> (usize, u64) {
        self.committer.backlog()
    }

    fn commit_queued(&self, file: &Arc<OpenFile>) {
        let mut state = file.state.lock();
        state.queued = false;
        // With no other handle now, none can write the staging file before it is dropped below
        // (a new writer takes this lock, then stages afresh), so it may become the pack.
        let adopt = file.handles.load(Ordering::SeqCst) == 1;
        if let Err(e) = self.commit_locked(file, &mut state, adopt) {
            // Kept staged and held: reads still see the bytes, the next close or the unmount
            // retries, and the record recovers them if the daemon dies first.
            tracing::error!(ino = file.ino, error = %e, "could not commit a closed file");
            return;
        }
        if adopt || file.handles.load(Ordering::SeqCst) == 1 {
            // Handles opened meanwhile read the committed content, the same bytes.
            self.drop_staging(&mut state);
        }
        drop(state);
        if self.unhold_file(file) {
            if let Err(e) = self.delete_if_unlinked_and_closed(file.ino) {
                tracing::warn!(ino = file.ino, error = %e, "deleting an unlinked file");
            }
        }
    }

    /// Commits the files that were queued when a previous daemon stopped (their records in
    /// `staging`), as their closes promised. A record from another write session (an earlier
    /// boot, or an earlier mount of the store's file system: its dirty pages may be lost) is
    /// dropped.
    pub(crate) fn recover_queued_commits(&self, staging: &std::path::Path) -> FsResult<()> {
        let Ok(dir) = std::fs::read_dir(staging) else {
            return Ok(());
        };
        let session = store::deferred_sync::write_session(staging);
        // Records of a build before sessions hold the boot id alone.
        let boot = crate::platform::boot_id();
        let same_session = |bound: &String| {
            Some(bound) == session.as_ref()
                || (!bound.contains('/') && Some(bound) == boot.as_ref())
        };
        let mut records = Vec::new();
        for entry in dir.flatten() {
            let path = entry.path();
            let Some(staged) = committer::staging_of_record(&path) else {
                continue;
            };
            match std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| Record::parse(&t))
            {
                Some(record) if same_session(&record.boot) => records.push((record, staged)),
                Some(record) => tracing::warn!(
                    ino = record.ino,
                    "dropping a commit queued before the last reboot or remount of the store's \
                     disk (its bytes may be lost)"
                ),
                None => {
                    tracing::warn!(path = %path.display(), "ignoring an unreadable commit record")
                }
            }
        }
        // In the order the files were changed, so the last change of a file wins.
        records.sort_by_key(|(record, _)| record.ctime);
        for (record, staged) in &records {
            let data = match MappedFile::open(staged) {
                Ok(data) if data.len() as u64 >= record.size => data,
                _ => {
                    tracing::warn!(
                        ino = record.ino,
                        "staging file of a queued commit is gone or short"
                    );
                    continue;
                }
            };
            // The dead daemon's staging file is written by nobody now: it may become the pack.
            let (new_bytes, _) = self.commit_bytes(&data, record, true, Some(staged.as_path()))?;
            tracing::info!(
                ino = record.ino,
                size = record.size,
                new_bytes,
                "committed a file closed before the daemon stopped"
            );
        }
        Ok(())
    }

    /// Last close of a handle: commit, drop staging when nobody holds the file, and delete an
    /// inode that was unlinked while open.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        if self.derived_handle(fh) {
            self.handles.lock().remove(&fh);
            self.views.stats.close(fh);
            return Ok(());
        }
        let file = self.handle_file(fh)?;
        let released = self.release_file(fh, &file);
        // After the commit is queued (or done), so a settle sees one or the other.
        self.awaiting_release.remove(file.ino);
        released
    }

    fn release_file(&self, fh: u64, file: &Arc<OpenFile>) -> FsResult<()> {
        self.handles.lock().remove(&fh);
        self.read_runs.lock().remove(&fh);
        let last_passthrough = file.io.lock().release(fh);
        file.io_released.notify_all();
        if last_passthrough {
            self.passthrough_meter.closed(file.ino, &self.metrics);
        }
        let mut state = file.state.lock();
        if state.queued {
            // The queued commit takes this handle's writes too; the queue holds the file.
            drop(state);
            self.unhold_file(file);
            return Ok(());
        }
        if self.queue_commit(file, &mut state) {
            return Ok(());
        }
        let committed = self.commit_last_handle(file, &mut state);
        if file.handles.load(Ordering::SeqCst) == 1 {
            self.drop_staging(&mut state);
        }
        drop(state);
        if !self.unhold_file(file) {
            return committed;
        }
        self.delete_if_unlinked_and_closed(file.ino)?;
        committed
    }

    /// Commits every file with unsaved writes, queued ones included, and stops the commit
    /// queue: later closes commit before they return (on unmount and on SIGTERM).
    pub fn commit_all(&self) -> FsResult<()> {
        self.stop_committing();
        let files: Vec<Arc<OpenFile>> = self.files.lock().values().cloned().collect();
        let mut result = Ok(());
        for file in files {
            let mut state = file.state.lock();
            if let Err(e) = self.commit_locked(&file, &mut state, false) {
                tracing::error!(ino = file.ino, error = %e, "could not commit open file");
                result = Err(e);
            }
        }
        result
    }
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> FsResult<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            // Past the staging file's end the file is sparse: zeros are already in buf.
            break;
        }
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_read_around_burst_counts_as_random_and_a_long_run_as_sequential() {
        let dir = tempfile::tempdir().unwrap();
        let store = store::Store::open(dir.path(), store::StoreOptions::default()).unwrap();
        let vfs = Vfs::new(Arc::new(store)).unwrap();
        // An mmap fault's read-around window: eight requests continuing each other, at the
        // start of the file or anywhere.
        for i in 0..8 {
            assert!(!vfs.continues_reading(1, i * MIB, (i + 1) * MIB));
        }
        let at = 300 * MIB;
        for i in 0..8 {
            assert!(!vfs.continues_reading(2, at + i * MIB, at + (i + 1) * MIB));
        }
        // A jump, then a long run: sequential once it has covered 16 MiB.
        let at = 40 * MIB;
        let sequential: Vec<bool> = (0..20)
            .map(|i| vfs.continues_reading(2, at + i * MIB, at + (i + 1) * MIB))
            .collect();
        assert_eq!(sequential.iter().position(|s| *s), Some(15));
        assert!(sequential[15..].iter().all(|s| *s));
        // Each handle has its own runs.
        assert!(!vfs.continues_reading(3, at + 20 * MIB, at + 21 * MIB));
        // Four threads reading 32 MiB pieces of one descriptor in parallel: each piece is a run
        // of its own, sequential once it has covered 16 MiB.
        let sequential: Vec<bool> = (0..32)
            .flat_map(|i| (0..4).map(move |t| (t * 32 + 200) * MIB + i * MIB))
            .map(|at| vfs.continues_reading(4, at, at + MIB))
            .collect();
        assert!(sequential[..60].iter().all(|s| !*s));
        assert!(sequential[60..].iter().all(|s| *s));
        // A fifth stream replaces the one read least recently (the first piece, ended at
        // 232 MiB); the last piece's run goes on.
        assert!(!vfs.continues_reading(4, 900 * MIB, 901 * MIB));
        assert!(vfs.continues_reading(4, 328 * MIB, 329 * MIB));
        assert!(!vfs.continues_reading(4, 232 * MIB, 233 * MIB));
    }
}
