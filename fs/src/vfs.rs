//! The core filesystem: namespace operations over the catalog, with plain Rust signatures
//! returning `Result<_, Errno>`. File contents (open files, staging, commit) live in `files.rs`;
//! the FUSE adapter in `fuse.rs` only translates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use store::namespace::now_ns;
use store::{Inode, NewInode, NodeKind, Store, Tx, ROOT_INO};

use crate::attr::{Attr, Caller, SetAttr, SetTime, StatFs};
use crate::errno::{Errno, FsResult};
use crate::files::OpenFile;
use crate::metrics::{FileBytes, Metrics};
use crate::views::{is_virtual, Invalidations, Target, VNode, ViewTree, Views};

/// Longest name a directory entry may have.
pub const NAME_MAX: usize = 255;

/// The writable trees every mount starts with.
pub const WRITABLE_ROOTS: &[&str] = &["huggingface/hub", "ollama/models"];

/// Notified after a name or content changes, so the adapter can invalidate kernel caches.
pub trait ChangeListener: Send + Sync {
    /// A name the kernel may have cached now means something else (a view changed).
    fn entry_changed(&self, parent: u64, name: &[u8]);
    /// The namespace changed; views should be refreshed soon (not from this thread).
    fn namespace_changed(&self);
    /// The bytes of a file changed behind the kernel's back (an import into the mounted store);
    /// takes effect before it returns, so it must not be called from a request handler.
    fn content_changed(&self, ino: u64);
    /// A name now means another inode, changed behind the kernel's back (an import replaced
    /// it); like `content_changed`, takes effect before it returns.
    fn entry_replaced(&self, parent: u64, name: &[u8]);
}

/// One entry returned by readdir; `next_offset` resumes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaddirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: NodeKind,
    pub next_offset: u64,
}

/// What kind of node to make, with its mode bits and kind-specific data.
struct NodeSpec {
    kind: NodeKind,
    perm: u32,
    target: Option<Vec<u8>>,
    rdev: u32,
}

impl NodeSpec {
    fn new(kind: NodeKind, perm: u32) -> NodeSpec {
        NodeSpec {
            kind,
            perm,
            target: None,
            rdev: 0,
        }
    }
}

/// A directory listing captured at opendir, served to readdir by offset.
pub(crate) struct DirListing {
    pub entries: Vec<(Vec<u8>, u64, NodeKind)>,
}

pub struct Vfs {
    pub(crate) store: Arc<Store>,
    pub(crate) files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Open file handles: inode and that file's byte counters.
    pub(crate) handles: Mutex<HashMap<u64, (u64, Arc<FileBytes>)>>,
    /// The runs of reads of each file handle (tell sequential reads from random).
    pub(crate) read_runs: Mutex<HashMap<u64, crate::files::ReadRuns>>,
    /// The kernel maps files opened with direct I/O (FUSE_DIRECT_IO_ALLOW_MMAP), so hot files
    /// may be opened that way (see `files::HOT_FILE_WINDOW_NS`).
    pub(crate) direct_io_maps: std::sync::atomic::AtomicBool,
    /// The kernel passes reads of some files through to a pack (FUSE_PASSTHROUGH; see
    /// `files::Passthrough`).
    pub(crate) passthrough: std::sync::atomic::AtomicBool,
    /// Counts what the kernel reads by passthrough (the daemon never sees those reads).
    pub(crate) passthrough_meter: crate::passthrough::PassthroughMeter,
    pub(crate) dirs: Mutex<HashMap<u64, Arc<DirListing>>>,
    pub(crate) next_fh: AtomicU64,
    pub(crate) listener: Mutex<Option<Arc<dyn ChangeListener>>>,
    pub(crate) views: Views,
    /// Closed files waiting for their commit.
    pub(crate) committer: crate::committer::Committer,
    /// Files whose close (flush) promised a queued commit, until their release queues it:
    /// close(2) returns before the kernel sends the release (see [`Vfs::settle`]).
    pub(crate) awaiting_release: crate::files::AwaitingRelease,
    /// Counts commits of staged files (see [`Vfs::overlay`]).
    pub(crate) commits: AtomicU64,
    /// Synthesized inodes a tool wrote over, and where (directory, name) the real file that
    /// took each one's place was made: the kernel may still know the name under the
    /// synthesized inode until its entry invalidation (sent by another thread) arrives, and
    /// must then find the real file there.
    pub(crate) materialized: Mutex<HashMap<u64, (u64, Vec<u8>)>>,
    /// The kernel's lookups, and the unlinked inodes kept for them (see `kernel_refs`).
    pub(crate) kernel_refs: crate::kernel_refs::KernelRefs,
    pub metrics: Metrics,
}

/// How long a reader of the views waits for queued commits (see `committer`).
const VIEW_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) fn check_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Errno::EINVAL);
    }
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

fn set_time(t: SetTime) -> i64 {
    match t {
        SetTime::Now => now_ns(),
        SetTime::At(t) => t,
    }
}

impl Vfs {
    /// Wraps an open store: commits files whose queued commit a previous daemon left, clears
    /// leftover staging and creates the writable roots.
    pub fn new(store: Arc<Store>) -> FsResult<Vfs> {
        let uid = unsafe { libc::geteuid() };
        let gid = unsafe { libc::getegid() };
        store.catalog().write(|tx| {
            for root in WRITABLE_ROOTS {
                let parts: Vec<&[u8]> = root.split('/').map(str::as_bytes).collect();
                tx.mkdir_p(&parts, 0o755, uid, gid)?;
            }
            Ok(())
        })?;
        let store_for_views = store.clone();
        let vfs = Vfs {
            store,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            read_runs: Mutex::new(HashMap::new()),
            direct_io_maps: std::sync::atomic::AtomicBool::new(false),
            passthrough: std::sync::atomic::AtomicBool::new(false),
            passthrough_meter: Default::default(),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            listener: Mutex::new(None),
            views: Views::new(store_for_views),
            committer: Default::default(),
            awaiting_release: Default::default(),
            commits: AtomicU64::new(0),
            materialized: Mutex::new(HashMap::new()),
            kernel_refs: Default::default(),
            metrics: Metrics::default(),
        };
        let staging = vfs.store.staging_dir();
        if staging.exists() {
            vfs.recover_queued_commits(&staging)?;
            // Other bytes written but never closed or fsynced were never promised; the
            // committed content of those files is what the catalog has.
            let leftovers = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
            if leftovers > 0 {
                tracing::info!(count = leftovers, "discarding uncommitted staging files");
            }
            std::fs::remove_dir_all(&staging)?;
        }
        std::fs::create_dir_all(&staging)?;
        Ok(vfs)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn set_listener(&self, listener: Arc<dyn ChangeListener>) {
        *self.listener.lock() = Some(listener);
    }

    pub(crate) fn notify_entry(&self, parent: u64, name: &[u8]) {
        let listener = self.listener.lock().clone();
        if let Some(l) = listener {
            l.entry_changed(parent, name);
        }
    }

    /// The namespace changed: views must be rebuilt and stale kernel entries dropped.
    pub(crate) fn namespace_changed(&self) {
        self.views.touch();
        let listener = self.listener.lock().clone();
        if let Some(l) = listener {
            l.namespace_changed();
        }
    }

    /// The store was changed by someone other than the kernel (an import run by the daemon):
    /// drop the kernel's entries for the names in `replaced` (every name under `roots` when
    /// they are not known: a failed import) and every cached page and attribute of the files
    /// under `roots`, and refresh views.
    pub fn changed_outside(
        &self,
        roots: &[&str],
        replaced: Option<&[(u64, Vec<u8>)]>,
    ) -> FsResult<()> {
        let mut files = Vec::new();
        let mut every_entry = Vec::new();
        self.read_tx(|tx| {
            for root in roots {
                if let Some(dir) = tx.resolve_path(root)? {
                    tx.walk_files(dir, "", &mut files)?;
                    if replaced.is_none() {
                        walk_entries(tx, dir, &mut every_entry)?;
                    }
                }
            }
            Ok(())
        })?;
        let replaced = replaced.unwrap_or(&every_entry);
        // Open files read their content map from before: the old content, which the import
        // released (and a gc may since have dropped). Forget it so reads see the new bytes.
        let open: Vec<_> = {
            let held = self.files.lock();
            files
                .iter()
                .filter_map(|(_, ino)| held.get(ino).cloned())
                .collect()
        };
        for file in open {
            file.forget_content();
        }
        let listener = self.listener.lock().clone();
        if let Some(l) = listener {
            for (parent, name) in replaced {
                l.entry_replaced(*parent, name);
            }
            for (_, ino) in files {
                l.content_changed(ino);
            }
        }
        self.namespace_changed();
        Ok(())
    }

    /// Rebuilds the views if needed and returns the kernel entries that changed meaning.
    pub fn refresh_views(&self) -> FsResult<Invalidations> {
        Ok(self.views.tree()?.1)
    }

    /// The current views; invalidations found while rebuilding are forwarded.
    pub(crate) fn view_tree(&self) -> FsResult<Arc<ViewTree>> {
        let (tree, invalidations) = self.views.tree()?;
        for (parent, name) in invalidations {
            self.notify_entry(parent, &name);
        }
        Ok(tree)
    }

    /// The views, for a request on `node`. Under a derived directory, files closed just before
    /// show in them, since their queued commits land first (waiting [`VIEW_SETTLE`] at most):
    /// views describe committed files (an Ollama view names a blob by its content's SHA-256).
    /// A request on a real directory does not wait: `cp` looks its target name up first, and
    /// must not queue behind the previous file's commit.
    pub(crate) fn view_tree_for(&self, node: u64) -> FsResult<Arc<ViewTree>> {
        if is_virtual(node) && self.commit_backlog().0 > 0 {
            self.settle_within(VIEW_SETTLE);
        }
        self.view_tree()
    }

    /// Refuses changes to derived directories and to names that exist only in a view.
    fn writable_dir(&self, dir: u64) -> FsResult<()> {
        if is_virtual(dir) {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    /// ENOENT for a name absent from the catalog becomes EROFS when a view shows that name.
    fn missing_or_derived(&self, parent: u64, name: &[u8], e: Errno) -> Errno {
        if e != Errno::ENOENT {
            return e;
        }
        match self.view_tree() {
            Ok(tree)
                if tree
                    .overlay
                    .get(&parent)
                    .is_some_and(|o| o.contains_key(name)) =>
            {
                Errno::EROFS
            }
            _ => e,
        }
    }

    pub(crate) fn read_tx<T>(&self, f: impl FnOnce(&Tx) -> store::Result<T>) -> FsResult<T> {
        Ok(self.store.catalog().read(f)?)
    }

    pub(crate) fn write_tx<T>(&self, f: impl FnOnce(&Tx) -> FsResult<T>) -> FsResult<T> {
        // Errno from inside the transaction must abort it; carry it through StoreError.
        let mut inner = None;
        let result = self.store.catalog().write(|tx| match f(tx) {
            Ok(v) => Ok(v),
            Err(e) => {
                inner = Some(e);
                Err(store::StoreError::Inconsistent("aborted".into()))
            }
        });
        match (result, inner) {
            (Ok(v), _) => {
                self.namespace_changed();
                Ok(v)
            }
            (Err(_), Some(errno)) => Err(errno),
            (Err(e), None) => Err(e.into()),
        }
    }

    fn inode(&self, tx: &Tx, ino: u64) -> FsResult<Inode> {
        tx.inode(ino)?.ok_or(Errno::ENOENT)
    }

    /// Attributes, with size and times of a file being written taken from its open state.
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        if let Some(real) = self.materialized_as(ino) {
            if let Ok(attr) = self.getattr(real) {
                return Ok(Attr { ino, ..attr });
            }
        }
        if is_virtual(ino) {
            let tree = self.view_tree_for(ino)?;
            return self.views.attr(&tree, ino);
        }
        let seen = self.commits.load(Ordering::SeqCst);
        let inode = self.read_tx(|tx| tx.inode(ino))?.ok_or(Errno::ENOENT)?;
        Ok(self.overlay(Attr::from_inode(&inode), seen))
    }

    /// The real file that replaced synthesized inode `ino` (see [`Vfs::materialized`]), while
    /// its name still shows a real file.
    pub(crate) fn materialized_as(&self, ino: u64) -> Option<u64> {
        if !is_virtual(ino) {
            return None;
        }
        let (parent, name) = self.materialized.lock().get(&ino).cloned()?;
        let found = self
            .read_tx(|tx| tx.lookup(parent, &name))
            .ok()
            .flatten()
            .filter(|&real| !is_virtual(real));
        if found.is_none() {
            self.materialized.lock().remove(&ino);
        }
        found
    }

    /// `attr` as read from the catalog when [`Vfs::commits`] was `seen`, with the open state of
    /// a file being written laid over it. A file whose commit landed since `seen` has dropped
    /// that state, and the catalog read may predate the commit: read it again.
    pub(crate) fn overlay(&self, mut attr: Attr, seen: u64) -> Attr {
        if attr.kind == NodeKind::File {
            let file = self.files.lock().get(&attr.ino).cloned();
            if let Some(file) = file {
                if !file.overlay_attr(&mut attr) && self.commits.load(Ordering::SeqCst) != seen {
                    if let Ok(Some(inode)) = self.read_tx(|tx| tx.inode(attr.ino)) {
                        attr = Attr::from_inode(&inode);
                    }
                }
            }
        }
        attr
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let seen = self.commits.load(Ordering::SeqCst);
        let found = if is_virtual(parent) {
            None
        } else {
            self.read_tx(|tx| {
                let Some(ino) = tx.lookup(parent, name)? else {
                    return Ok(None);
                };
                tx.inode(ino)
            })?
        };
        if let Some(inode) = found {
            return Ok(self.overlay(Attr::from_inode(&inode), seen));
        }
        let tree = self.view_tree_for(parent)?;
        let target = match tree.nodes.get(&parent) {
            Some(VNode::Dir { children, .. }) => children.get(name).copied(),
            Some(VNode::File { .. }) => return Err(Errno::ENOTDIR),
            None => tree.overlay.get(&parent).and_then(|o| o.get(name).copied()),
        };
        match target.ok_or(Errno::ENOENT)? {
            Target::Virtual(ino) => self.views.attr(&tree, ino),
            Target::Real(ino) => self.getattr(ino),
        }
    }

    fn parent_dir(&self, tx: &Tx, parent: u64) -> FsResult<Inode> {
        let dir = self.inode(tx, parent)?;
        if dir.kind != NodeKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        if dir.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        Ok(dir)
    }

    /// Creates a node of any kind under `parent`, following ext4's ownership rules (setgid
    /// directories pass their group, and the bit to subdirectories).
    fn make_node(
        &self,
        parent: u64,
        name: &[u8],
        node: NodeSpec,
        caller: Caller,
    ) -> FsResult<Attr> {
        let NodeSpec {
            kind,
            perm,
            target,
            rdev,
        } = node;
        check_name(name)?;
        self.writable_dir(parent)?;
        let inode = self.write_tx(|tx| {
            let dir = self.parent_dir(tx, parent)?;
            if tx.lookup(parent, name)?.is_some() {
                return Err(Errno::EEXIST);
            }
            let mut perm = perm & 0o7777;
            let gid = if dir.perm & 0o2000 != 0 {
                if kind == NodeKind::Dir {
                    perm |= 0o2000;
                }
                dir.gid
            } else {
                caller.gid
            };
            let now = now_ns();
            let ino = tx.create_inode(&NewInode {
                kind,
                perm,
                uid: caller.uid,
                gid,
                time: now,
                target,
                rdev,
            })?;
            tx.link_entry(parent, name, ino)?;
            tx.touch_times(parent, Some(now), Some(now))?;
            Ok(tx.inode_required(ino)?)
        })?;
        Ok(Attr::from_inode(&inode))
    }

    pub fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        self.make_node(
            parent,
            name,
            NodeSpec::new(NodeKind::Dir, mode & !umask),
            caller,
        )
    }

    /// Only regular files can be made (FIFOs, sockets and devices have no place in a model
    /// store).
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        let fmt = mode & libc::S_IFMT;
        if fmt != 0 && fmt != libc::S_IFREG {
            return Err(Errno::EPERM);
        }
        let node = NodeSpec {
            rdev,
            ..NodeSpec::new(NodeKind::File, mode & !umask)
        };
        self.make_node(parent, name, node, caller)
    }

    pub(crate) fn create_file(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        self.make_node(
            parent,
            name,
            NodeSpec::new(NodeKind::File, mode & !umask),
            caller,
        )
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> FsResult<Attr> {
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.len() > 4095 {
            return Err(Errno::ENAMETOOLONG);
        }
        let node = NodeSpec {
            target: Some(target.to_vec()),
            ..NodeSpec::new(NodeKind::Symlink, 0o777)
        };
        self.make_node(parent, name, node, caller)
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        if is_virtual(ino) {
            return Err(Errno::EINVAL);
        }
        let inode = self.read_tx(|tx| tx.inode(ino))?.ok_or(Errno::ENOENT)?;
        match (inode.kind, inode.target) {
            (NodeKind::Symlink, Some(target)) => Ok(target),
            _ => Err(Errno::EINVAL),
        }
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> FsResult<Attr> {
        check_name(new_name)?;
        self.writable_dir(new_parent)?;
        if is_virtual(ino) {
            return Err(Errno::EPERM);
        }
        let seen = self.commits.load(Ordering::SeqCst);
        let inode = self.write_tx(|tx| {
            self.parent_dir(tx, new_parent)?;
            let inode = self.inode(tx, ino)?;
            if inode.kind == NodeKind::Dir {
                return Err(Errno::EPERM);
            }
            if inode.nlink == 0 {
                return Err(Errno::ENOENT);
            }
            if inode.nlink >= 65_000 {
                return Err(Errno::EMLINK);
            }
            if tx.lookup(new_parent, new_name)?.is_some() {
                return Err(Errno::EEXIST);
            }
            tx.link_entry(new_parent, new_name, ino)?;
            let now = now_ns();
            tx.touch_times(ino, None, Some(now))?;
            tx.touch_times(new_parent, Some(now), Some(now))?;
            Ok(tx.inode_required(ino)?)
        })?;
        Ok(self.overlay(Attr::from_inode(&inode), seen))
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &[u8], dir: bool) -> FsResult<()> {
        if name == b"." {
            return Err(Errno::EINVAL);
        }
        if name == b".." {
            return Err(Errno::ENOTEMPTY);
        }
        self.writable_dir(parent)?;
        let removed = self.write_tx(|tx| {
            self.parent_dir(tx, parent)?;
            let ino = tx.lookup(parent, name)?.ok_or(Errno::ENOENT)?;
            let inode = self.inode(tx, ino)?;
            match (dir, inode.kind == NodeKind::Dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !tx.dir_is_empty(ino)? => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            self.unlink_in_tx(tx, parent, name)
        });
        let gone = removed.map_err(|e| self.missing_or_derived(parent, name, e))?;
        if let Some(ino) = gone {
            self.delete_if_unlinked_and_closed(ino)?;
        }
        Ok(())
    }

    /// Deletes an inode with no names left unless an open file holds it (its last release
    /// does it then) or the kernel still knows it (its FORGET does it then; see
    /// `kernel_refs`). Checked and deleted under the open-files lock, which open takes before
    /// it reads the inode: an open racing the unlink either holds the inode first, or finds
    /// it gone.
    pub(crate) fn delete_if_unlinked_and_closed(&self, ino: u64) -> FsResult<()> {
        let files = self.files.lock();
        if files.contains_key(&ino) {
            return Ok(());
        }
        let unlinked = || {
            // Unsure counts as unlinked: the deletion at FORGET checks again.
            self.read_tx(|tx| tx.inode(ino))
                .map_or(true, |inode| inode.is_some_and(|i| i.nlink == 0))
        };
        if self.kernel_refs.keep_if_held(ino, unlinked) {
            return Ok(());
        }
        self.write_tx(|tx| {
            tx.delete_inode_if_unlinked(ino)?;
            Ok(())
        })?;
        drop(files);
        Ok(())
    }

    /// Deletes every unlinked inode that is neither open nor held by the kernel (the files an
    /// import into the mounted store replaced); the others go at their last close or FORGET.
    pub fn release_unlinked_inodes(&self) -> FsResult<()> {
        let orphans = self.read_tx(|tx| tx.orphan_inodes())?;
        for ino in orphans {
            self.delete_if_unlinked_and_closed(ino)?;
        }
        Ok(())
    }

    /// The kernel was handed an entry for `ino` (a lookup, create, mkdir, mknod, symlink or
    /// link reply, or a readdirplus entry other than `.` and `..`): it now holds one lookup
    /// more, until FORGET ([`Vfs::forget`]).
    pub fn entry_given(&self, ino: u64) {
        if ino != ROOT_INO && !is_virtual(ino) {
            self.kernel_refs.looked_up(ino);
        }
    }

    /// FORGET: the kernel drops `count` lookups of `ino`; an unlinked, closed inode kept for
    /// them is deleted with the last.
    pub fn forget(&self, ino: u64, count: u64) {
        if self.kernel_refs.forget(ino, count) {
            if let Err(e) = self.delete_if_unlinked_and_closed(ino) {
                tracing::warn!(ino, error = %e, "deleting an unlinked file the kernel forgot");
            }
        }
    }

    /// The mount is going away and the kernel with it: deletes every unlinked inode kept for
    /// the kernel (those still open are deleted at their release, or at the next start).
    pub fn forget_everything(&self) {
        for ino in self.kernel_refs.take_kept() {
            if let Err(e) = self.delete_if_unlinked_and_closed(ino) {
                tracing::warn!(ino, error = %e, "deleting an unlinked file at unmount");
            }
        }
    }

    /// Removes an entry inside a transaction. Returns the inode if that was its last name: the
    /// caller deletes it after the commit, unless an open file holds it
    /// ([`Vfs::delete_if_unlinked_and_closed`]).
    fn unlink_in_tx(&self, tx: &Tx, parent: u64, name: &[u8]) -> FsResult<Option<u64>> {
        let inode = tx.unlink_entry(parent, name)?;
        let now = now_ns();
        tx.touch_times(parent, Some(now), Some(now))?;
        if inode.nlink > 0 {
            tx.touch_times(inode.ino, None, Some(now))?;
            return Ok(None);
        }
        Ok(Some(inode.ino))
    }

    /// rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        check_name(new_name)?;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || (noreplace && exchange)
        {
            return Err(Errno::EINVAL);
        }
        self.writable_dir(parent)?;
        self.writable_dir(new_parent)?;
        let renamed = self.write_tx(|tx| {
            self.parent_dir(tx, parent)?;
            self.parent_dir(tx, new_parent)?;
            let ino = tx.lookup(parent, name)?.ok_or(Errno::ENOENT)?;
            let source = self.inode(tx, ino)?;
            let target = tx.lookup(new_parent, new_name)?;
            if target == Some(ino) {
                return Ok(None);
            }
            if source.kind == NodeKind::Dir && self.is_ancestor(tx, ino, new_parent)? {
                return Err(Errno::EINVAL);
            }
            let now = now_ns();
            let mut replaced = None;
            if exchange {
                let target = target.ok_or(Errno::ENOENT)?;
                let target_inode = self.inode(tx, target)?;
                if target_inode.kind == NodeKind::Dir && self.is_ancestor(tx, target, parent)? {
                    return Err(Errno::EINVAL);
                }
                tx.unlink_entry(parent, name)?;
                tx.unlink_entry(new_parent, new_name)?;
                tx.link_entry(parent, name, target)?;
                tx.link_entry(new_parent, new_name, ino)?;
                tx.touch_times(target, None, Some(now))?;
            } else {
                if let Some(target) = target {
                    if noreplace {
                        return Err(Errno::EEXIST);
                    }
                    let target_inode = self.inode(tx, target)?;
                    match (
                        source.kind == NodeKind::Dir,
                        target_inode.kind == NodeKind::Dir,
                    ) {
                        (true, false) => return Err(Errno::ENOTDIR),
                        (false, true) => return Err(Errno::EISDIR),
                        (true, true) if !tx.dir_is_empty(target)? => return Err(Errno::ENOTEMPTY),
                        _ => {}
                    }
                    replaced = self.unlink_in_tx(tx, new_parent, new_name)?;
                }
                tx.unlink_entry(parent, name)?;
                tx.link_entry(new_parent, new_name, ino)?;
            }
            tx.touch_times(ino, None, Some(now))?;
            tx.touch_times(parent, Some(now), Some(now))?;
            tx.touch_times(new_parent, Some(now), Some(now))?;
            Ok(replaced)
        });
        let replaced = renamed.map_err(|e| self.missing_or_derived(parent, name, e))?;
        if let Some(gone) = replaced {
            self.delete_if_unlinked_and_closed(gone)?;
        }
        Ok(())
    }

    /// Whether `dir` is `node` or lies below it (renaming a directory into itself is EINVAL).
    fn is_ancestor(&self, tx: &Tx, node: u64, mut dir: u64) -> FsResult<bool> {
        for _ in 0..4096 {
            if dir == node {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = tx.parent_of_dir(dir)?.unwrap_or(ROOT_INO);
        }
        Err(Errno::EIO)
    }

    /// chmod, chown, utimens and truncate. The kernel has already checked permissions
    /// (default_permissions); what is left is ext4's bookkeeping.
    pub fn setattr(&self, ino: u64, set: SetAttr, caller: Caller) -> FsResult<Attr> {
        if is_virtual(ino) {
            return Err(Errno::EROFS);
        }
        // Times may change (Ollama touches blobs it shares); bytes, length, mode and owner of a
        // file a view shows may not.
        let changes_file =
            set.size.is_some() || set.mode.is_some() || set.uid.is_some() || set.gid.is_some();
        if changes_file && self.is_view_source(ino)? {
            return Err(Errno::EROFS);
        }
        if let Some(size) = set.size {
            self.truncate(ino, size)?;
        }
        let inode = self.write_tx(|tx| {
            let mut inode = self.inode(tx, ino)?;
            let now = now_ns();
            let mut changed = false;
            if let Some(mode) = set.mode {
                inode.perm = mode & 0o7777;
                // ext4 drops setgid when the caller is not in the file's group.
                if caller.uid != 0 && caller.gid != inode.gid && inode.kind != NodeKind::Dir {
                    inode.perm &= !0o2000;
                }
                changed = true;
            }
            if set.uid.is_some() || set.gid.is_some() {
                let uid_changes = set.uid.is_some_and(|u| u != inode.uid);
                let gid_changes = set.gid.is_some_and(|g| g != inode.gid);
                if let Some(uid) = set.uid {
                    inode.uid = uid;
                }
                if let Some(gid) = set.gid {
                    inode.gid = gid;
                }
                // chown clears setuid/setgid on regular files (as ext4 does), even for root.
                if (uid_changes || gid_changes || caller.uid != 0) && inode.kind == NodeKind::File {
                    inode.perm &= !0o6000;
                }
                changed = true;
            }
            if let Some(t) = set.atime {
                inode.atime = set_time(t);
                changed = true;
            }
            if let Some(t) = set.mtime {
                inode.mtime = set_time(t);
                changed = true;
            }
            if changed || set.size.is_some() {
                inode.ctime = set.ctime.unwrap_or(now);
            }
            if let Some(size) = set.size {
                inode.size = size;
            }
            tx.update_inode(&inode)?;
            Ok(inode)
        })?;
        let mut attr = Attr::from_inode(&inode);
        let file = self.files.lock().get(&ino).cloned();
        if let Some(file) = file {
            file.absorb_setattr(&set, &inode);
            let _staged = file.overlay_attr(&mut attr);
        }
        Ok(attr)
    }

    /// Clears setuid/setgid after an unprivileged write, as ext4 does.
    pub fn kill_suid(&self, ino: u64) -> FsResult<()> {
        let inode = self.read_tx(|tx| tx.inode(ino))?.ok_or(Errno::ENOENT)?;
        if inode.perm & 0o6000 == 0 {
            return Ok(());
        }
        self.write_tx(|tx| {
            let mut inode = self.inode(tx, ino)?;
            // setgid without group-exec is a mandatory-locking marker, which ext4 keeps.
            let mask = if inode.perm & 0o010 != 0 {
                0o6000
            } else {
                0o4000
            };
            inode.perm &= !mask;
            inode.ctime = now_ns();
            tx.update_inode(&inode)?;
            Ok(())
        })
    }

    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let tree = self.view_tree_for(ino)?;
        let mut listing = Vec::new();
        let extra = if is_virtual(ino) {
            let Some(VNode::Dir { parent, children }) = tree.nodes.get(&ino) else {
                return Err(if tree.nodes.contains_key(&ino) {
                    Errno::ENOTDIR
                } else {
                    Errno::ENOENT
                });
            };
            listing.push((b".".to_vec(), ino, NodeKind::Dir));
            listing.push((b"..".to_vec(), *parent, NodeKind::Dir));
            children.clone()
        } else {
            let inode = self.read_tx(|tx| tx.inode(ino))?.ok_or(Errno::ENOENT)?;
            if inode.kind != NodeKind::Dir {
                return Err(Errno::ENOTDIR);
            }
            let parent = self
                .read_tx(|tx| tx.parent_of_dir(ino))?
                .unwrap_or(ROOT_INO);
            listing.push((b".".to_vec(), ino, NodeKind::Dir));
            listing.push((b"..".to_vec(), parent, NodeKind::Dir));
            let entries = self.read_tx(|tx| tx.read_dir(ino, None))?;
            listing.extend(entries.into_iter().map(|e| (e.name, e.ino, e.kind)));
            tree.overlay.get(&ino).cloned().unwrap_or_default()
        };
        for (name, target) in extra {
            // A real entry of the same name wins over a derived one.
            if listing.iter().any(|(n, _, _)| *n == name) {
                continue;
            }
            let kind = match target {
                Target::Virtual(v) => match tree.nodes.get(&v) {
                    Some(VNode::Dir { .. }) => NodeKind::Dir,
                    _ => NodeKind::File,
                },
                Target::Real(_) => NodeKind::File,
            };
            listing.push((name, target.ino(), kind));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .insert(fh, Arc::new(DirListing { entries: listing }));
        Ok(fh)
    }

    /// Entries from `offset` on: (name, ino, kind, next offset).
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<ReaddirEntry>> {
        let listing = self.dirs.lock().get(&fh).cloned().ok_or(Errno::EBADF)?;
        Ok(listing
            .entries
            .iter()
            .enumerate()
            .skip(offset as usize)
            .map(|(i, (name, ino, kind))| ReaddirEntry {
                name: name.clone(),
                ino: *ino,
                kind: *kind,
                next_offset: i as u64 + 1,
            })
            .collect())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    /// The store disk's numbers, as statfs reports them (namelen is the mount's).
    fn disk_stat(&self) -> FsResult<StatFs> {
        let disk = store::disk_space::DiskSpace::of(self.store.root())?;
        Ok(StatFs {
            blocks: disk.blocks,
            bfree: disk.blocks_free,
            bavail: disk.blocks_available,
            files: disk.files,
            ffree: disk.files_free,
            bsize: disk.block_size,
            namelen: NAME_MAX as u32,
            frsize: disk.fragment_size,
        })
    }

    /// Free bytes on the store's disk for unprivileged writers.
    pub(crate) fn disk_free_bytes(&self) -> Option<u64> {
        store::disk_space::DiskSpace::of(self.store.root())
            .ok()
            .map(|disk| disk.bytes_available())
    }

    pub fn statfs(&self) -> FsResult<StatFs> {
        let mut st = self.disk_stat()?;
        let totals = self.read_tx(|tx| tx.totals())?;
        st.files = st.files.max(totals.files + st.ffree);
        Ok(st)
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if is_virtual(ino) {
            return Err(Errno::ENODATA);
        }
        self.read_tx(|tx| tx.get_xattr(ino, name))?
            .ok_or(Errno::ENODATA)
    }

    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        if is_virtual(ino) {
            return Err(Errno::EROFS);
        }
        if name.is_empty() || name.len() > 255 {
            return Err(Errno::ERANGE);
        }
        if value.len() > 64 * 1024 {
            return Err(Errno(libc::E2BIG));
        }
        self.write_tx(|tx| {
            self.inode(tx, ino)?;
            let exists = tx.get_xattr(ino, name)?.is_some();
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(Errno::EEXIST);
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(Errno::ENODATA);
            }
            tx.set_xattr(ino, name, value)?;
            tx.touch_times(ino, None, Some(now_ns()))?;
            Ok(())
        })
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        if is_virtual(ino) {
            return Ok(Vec::new());
        }
        let names = self.read_tx(|tx| tx.list_xattrs(ino))?;
        let mut out = Vec::new();
        for name in names {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        if is_virtual(ino) {
            return Err(Errno::EROFS);
        }
        self.write_tx(|tx| {
            if !tx.remove_xattr(ino, name)? {
                return Err(Errno::ENODATA);
            }
            tx.touch_times(ino, None, Some(now_ns()))?;
            Ok(())
        })
    }
}

/// Every (parent, name) under `dir`, depth first.
fn walk_entries(tx: &store::Tx, dir: u64, out: &mut Vec<(u64, Vec<u8>)>) -> store::Result<()> {
    for entry in tx.read_dir(dir, None)? {
        if entry.kind == NodeKind::Dir {
            walk_entries(tx, entry.ino, out)?;
        }
        out.push((dir, entry.name));
    }
    Ok(())
}
