//! `/.mlxfs/stats.json`: a read-only file whose bytes come from a [`StatsProvider`] the daemon
//! installs (the same JSON as `mlxfs status --json`), for programs that cannot use the status
//! socket. Each open takes a snapshot that its reads serve, with direct I/O, so the size may
//! change from one open to the next without the kernel clipping or caching stale bytes.
//!
//! Also the few read-only accessors the daemon's metrics need (namespace generation, which
//! top-level tree an inode belongs to).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use store::ROOT_INO;

use crate::vfs::Vfs;
use crate::views::{is_virtual, Target, VNode};

/// The directory at the root of the mount holding status files.
pub const STATS_DIR: &str = ".mlxfs";
/// The JSON status file inside [`STATS_DIR`].
pub const STATS_FILE: &str = "stats.json";

/// Supplies the bytes of `/.mlxfs/stats.json`; called at each open (and stat) of the file.
pub trait StatsProvider: Send + Sync {
    fn stats_json(&self) -> Vec<u8>;
}

/// The installed provider and the snapshots of open handles.
#[derive(Default)]
pub(crate) struct StatsFile {
    provider: Mutex<Option<Arc<dyn StatsProvider>>>,
    open: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
}

impl StatsFile {
    pub(crate) fn installed(&self) -> bool {
        self.provider.lock().is_some()
    }

    fn set(&self, provider: Arc<dyn StatsProvider>) {
        *self.provider.lock() = Some(provider);
    }

    /// Fresh bytes from the provider (empty without one).
    pub(crate) fn current(&self) -> Vec<u8> {
        let provider = self.provider.lock().clone();
        provider.map(|p| p.stats_json()).unwrap_or_default()
    }

    /// Takes the snapshot handle `fh` will read.
    pub(crate) fn open(&self, fh: u64) {
        let bytes = Arc::new(self.current());
        self.open.lock().insert(fh, bytes);
    }

    pub(crate) fn snapshot(&self, fh: u64) -> Option<Arc<Vec<u8>>> {
        self.open.lock().get(&fh).cloned()
    }

    pub(crate) fn close(&self, fh: u64) {
        self.open.lock().remove(&fh);
    }
}

impl Vfs {
    /// Shows `/.mlxfs/stats.json` with the provider's bytes.
    pub fn set_stats_provider(&self, provider: Arc<dyn StatsProvider>) {
        self.views.stats.set(provider);
        self.namespace_changed();
    }

    /// A counter that moves whenever the namespace changes (to know when cached model lists
    /// are stale).
    pub fn namespace_generation(&self) -> u64 {
        self.views.generation()
    }

    /// The top-level directory an inode is shown under: the first component of a catalog
    /// inode's path (`huggingface`, `ollama`), or the view a derived entry hangs from (`mlx`,
    /// `lmstudio`, `.mlxfs`, or the real tree an overlay entry sits in). `None` when unknown
    /// (e.g. the file was deleted).
    pub fn top_dir_of(&self, ino: u64) -> Option<String> {
        let real_top = |ino: u64| -> Option<String> {
            let path = self.read_tx(|tx| tx.path_of(ino)).ok()??;
            path.split('/').next().map(str::to_string)
        };
        if !is_virtual(ino) {
            return real_top(ino);
        }
        let tree = self.view_tree().ok()?;
        let mut cur = ino;
        for _ in 0..256 {
            let parent = match tree.nodes.get(&cur)? {
                VNode::Dir { parent, .. } | VNode::File { parent, .. } => *parent,
            };
            if parent == ROOT_INO {
                let names = tree.overlay.get(&ROOT_INO)?;
                return names
                    .iter()
                    .find(|(_, t)| **t == Target::Virtual(cur))
                    .map(|(name, _)| String::from_utf8_lossy(name).into_owned());
            }
            if !is_virtual(parent) {
                return real_top(parent);
            }
            cur = parent;
        }
        None
    }
}
