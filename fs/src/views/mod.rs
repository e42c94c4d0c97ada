//! Derived views: the same stored files shown in other tools' layouts, computed from the
//! catalog, never copied.
//!
//! - `mlx/<org>/<name>/…`: every file of an HF repo's `refs/main` snapshot (see `mlx.rs`).
//! - `lmstudio/<publisher>/<repo>/<file>.gguf`: every GGUF in HF snapshots and every Ollama model
//!   layer (see `lmstudio.rs`).
//! - In `ollama/models/`: a manifest and config blob for each HF GGUF, and the GGUF itself as
//!   `blobs/sha256-<hex>` (see `ollama.rs`).
//!
//! A derived file is the source inode itself (same st_ino), so the kernel page cache holds its
//! bytes once. Derived directories and synthesized files get numbers from a reserved range
//! ([`VIRTUAL_BASE`] and up), stable for the daemon's life. The tree is rebuilt lazily after the
//! namespace changes; a diff against the previous tree says which kernel entries to invalidate.

pub mod hf;
pub mod lmstudio;
pub mod mlx;
pub mod ollama;
pub mod paths;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use store::namespace::now_ns;
use store::{NodeKind, Store, ROOT_INO};

use crate::attr::Attr;
use crate::errno::{Errno, FsResult};

/// Inode numbers at or above this are derived directories and synthesized files.
pub const VIRTUAL_BASE: u64 = 1 << 56;

pub fn is_virtual(ino: u64) -> bool {
    ino >= VIRTUAL_BASE
}

/// What a name in a derived directory (or an overlay name in a real one) points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A catalog inode: the source file itself.
    Real(u64),
    /// A derived directory or synthesized file.
    Virtual(u64),
}

impl Target {
    pub fn ino(self) -> u64 {
        match self {
            Target::Real(i) | Target::Virtual(i) => i,
        }
    }
}

#[derive(Debug, Clone)]
pub enum VNode {
    Dir {
        parent: u64,
        children: BTreeMap<Vec<u8>, Target>,
    },
    File {
        parent: u64,
        bytes: Arc<Vec<u8>>,
    },
}

/// One built projection of the catalog.
#[derive(Debug, Default, Clone)]
pub struct ViewTree {
    /// Derived directories and synthesized files by inode.
    pub nodes: HashMap<u64, VNode>,
    /// Extra names shown inside real directories (root: `mlx`, `lmstudio`; Ollama's blobs and
    /// manifests). A real entry of the same name wins.
    pub overlay: HashMap<u64, BTreeMap<Vec<u8>, Target>>,
    /// Catalog inodes that some derived entry shows: their bytes and modes are read-only,
    /// since the kernel cannot tell which of their names a write came through.
    pub sources: HashSet<u64>,
    /// `/.mlxfs/stats.json`, when a stats provider is installed (its bytes are not in `nodes`).
    pub stats_ino: Option<u64>,
}

/// Hands out stable inode numbers for derived paths.
#[derive(Default)]
pub(crate) struct InoAllocator {
    by_key: HashMap<String, u64>,
    next: u64,
}

impl InoAllocator {
    fn get(&mut self, key: &str) -> u64 {
        if let Some(&ino) = self.by_key.get(key) {
            return ino;
        }
        let ino = VIRTUAL_BASE + self.next;
        self.next += 1;
        self.by_key.insert(key.to_string(), ino);
        ino
    }
}

/// `true` when `name` can be a single path component: not empty, `.`, `..`, no `/` or NUL.
pub fn safe_component(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= crate::vfs::NAME_MAX
}

/// Builds a [`ViewTree`]: directories are created on demand along derived paths.
pub(crate) struct TreeBuilder<'a> {
    pub tree: ViewTree,
    inos: &'a mut InoAllocator,
}

impl<'a> TreeBuilder<'a> {
    fn new(inos: &'a mut InoAllocator) -> Self {
        TreeBuilder {
            tree: ViewTree::default(),
            inos,
        }
    }

    /// The derived directory at `path` (components below the root), created if needed, hung
    /// from the root as an overlay entry.
    fn dir(&mut self, path: &[&str]) -> u64 {
        let mut parent = ROOT_INO;
        let mut key = String::new();
        for (depth, part) in path.iter().enumerate() {
            key.push('/');
            key.push_str(part);
            let ino = self.inos.get(&key);
            if let std::collections::hash_map::Entry::Vacant(slot) = self.tree.nodes.entry(ino) {
                slot.insert(VNode::Dir {
                    parent,
                    children: BTreeMap::new(),
                });
                self.link(parent, depth == 0, part.as_bytes(), Target::Virtual(ino));
            }
            parent = ino;
        }
        parent
    }

    fn link(&mut self, parent: u64, parent_is_real: bool, name: &[u8], target: Target) -> bool {
        let children = if parent_is_real || !is_virtual(parent) {
            self.tree.overlay.entry(parent).or_default()
        } else {
            match self.tree.nodes.get_mut(&parent) {
                Some(VNode::Dir { children, .. }) => children,
                _ => return false,
            }
        };
        if children.contains_key(name) {
            return false;
        }
        children.insert(name.to_vec(), target);
        if let Target::Real(ino) = target {
            self.tree.sources.insert(ino);
        }
        true
    }

    /// Adds `name` → `target` in the derived directory `path`; first come wins.
    pub fn add_file(&mut self, path: &[&str], name: &str, target: Target) -> bool {
        if !safe_component(name) || !path.iter().all(|p| safe_component(p)) {
            tracing::warn!(
                ?path,
                name,
                "skipping a derived name that is not a safe path component"
            );
            return false;
        }
        let dir = self.dir(path);
        self.link(dir, false, name.as_bytes(), target)
    }

    /// Adds `name` to a real directory's overlay.
    pub fn add_overlay(&mut self, real_dir: u64, name: &str, target: Target) -> bool {
        if !safe_component(name) {
            return false;
        }
        self.link(real_dir, true, name.as_bytes(), target)
    }

    /// A synthesized read-only file with these bytes; its inode is stable per `key`.
    pub fn synth(&mut self, key: &str, parent: u64, bytes: Vec<u8>) -> Target {
        let ino = self.inos.get(&format!("synth:{key}"));
        self.tree.nodes.insert(
            ino,
            VNode::File {
                parent,
                bytes: Arc::new(bytes),
            },
        );
        Target::Virtual(ino)
    }
}

/// The live views: the current tree, rebuilt when the namespace generation moves.
pub struct Views {
    store: Arc<Store>,
    generation: AtomicU64,
    state: Mutex<ViewState>,
    pub(crate) gguf_cache: ollama::GgufCache,
    pub(crate) stats: crate::stats::StatsFile,
    mounted_at: i64,
    uid: u32,
    gid: u32,
}

struct ViewState {
    built: u64,
    tree: Arc<ViewTree>,
    inos: InoAllocator,
}

/// Names to invalidate in the kernel after a rebuild: (parent inode, name).
pub type Invalidations = Vec<(u64, Vec<u8>)>;

impl Views {
    pub fn new(store: Arc<Store>) -> Views {
        Views {
            store,
            generation: AtomicU64::new(1),
            state: Mutex::new(ViewState {
                built: 0,
                tree: Arc::new(ViewTree::default()),
                inos: InoAllocator::default(),
            }),
            gguf_cache: ollama::GgufCache::default(),
            stats: Default::default(),
            mounted_at: now_ns(),
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
        }
    }

    /// Marks the namespace as changed; the next view access rebuilds.
    pub fn touch(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The current tree, rebuilt first if the namespace changed; with the kernel entries that
    /// changed meaning since the previous build.
    pub fn tree(&self) -> FsResult<(Arc<ViewTree>, Invalidations)> {
        let mut state = self.state.lock();
        let generation = self.generation.load(Ordering::SeqCst);
        if state.built == generation {
            return Ok((state.tree.clone(), Vec::new()));
        }
        let mut builder = TreeBuilder::new(&mut state.inos);
        let scan = hf::scan(&self.store)?;
        mlx::build(&scan, &mut builder);
        lmstudio::build_from_hf(&scan, &mut builder);
        ollama::build(self, &scan, &mut builder)?;
        if self.stats.installed() {
            use crate::stats::{STATS_DIR, STATS_FILE};
            let dir = builder.dir(&[STATS_DIR]);
            let file = builder.synth(STATS_FILE, dir, Vec::new());
            builder.add_file(&[STATS_DIR], STATS_FILE, file);
            builder.tree.stats_ino = Some(file.ino());
        }
        let tree = Arc::new(builder.tree);
        let invalidations = diff(&state.tree, &tree);
        state.tree = tree.clone();
        // The build itself may have created real directories (Ollama's hf.co manifests), which
        // moved the generation; the tree already reflects them.
        state.built = self.generation.load(Ordering::SeqCst);
        Ok((tree, invalidations))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Attributes of a derived directory or synthesized file.
    pub fn attr(&self, tree: &ViewTree, ino: u64) -> FsResult<Attr> {
        let node = tree.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let (kind, perm, size, nlink) = match node {
            VNode::Dir { children, .. } => {
                let subdirs = children
                    .values()
                    .filter(|t| matches!(t, Target::Virtual(i) if matches!(tree.nodes.get(i), Some(VNode::Dir { .. }))))
                    .count() as u32;
                (
                    NodeKind::Dir,
                    0o555,
                    crate::attr::BLOCK_SIZE as u64,
                    2 + subdirs,
                )
            }
            VNode::File { .. } if tree.stats_ino == Some(ino) => {
                (NodeKind::File, 0o444, self.stats.current().len() as u64, 1)
            }
            VNode::File { bytes, .. } => (NodeKind::File, 0o444, bytes.len() as u64, 1),
        };
        Ok(Attr {
            ino,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            size,
            blocks: size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            rdev: 0,
        })
    }
}

/// Entries whose target changed or vanished between two builds.
fn diff(old: &ViewTree, new: &ViewTree) -> Invalidations {
    let mut out = Vec::new();
    let children_of = |tree: &ViewTree, dir: u64| -> Option<BTreeMap<Vec<u8>, Target>> {
        match tree.nodes.get(&dir) {
            Some(VNode::Dir { children, .. }) => Some(children.clone()),
            _ => tree.overlay.get(&dir).cloned(),
        }
    };
    let dirs: Vec<u64> = old
        .overlay
        .keys()
        .copied()
        .chain(
            old.nodes
                .iter()
                .filter(|(_, n)| matches!(n, VNode::Dir { .. }))
                .map(|(i, _)| *i),
        )
        .collect();
    for dir in dirs {
        let before = children_of(old, dir).unwrap_or_default();
        let after = children_of(new, dir).unwrap_or_default();
        for (name, target) in before {
            if after.get(&name) != Some(&target) {
                out.push((dir, name));
            }
        }
    }
    out
}
