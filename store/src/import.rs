//! Adopting existing caches: `import` copies a Hugging Face hub cache or an Ollama models
//! directory into the namespace (contents deduplicated in the store), and `scan` reports what an
//! import would store without writing anything.
//!
//! Safety rules (DESIGN.md §6): the source tree is walked with `openat`/`fstatat` relative to
//! directory handles and `O_NOFOLLOW`, so no symlink is ever followed while reading and a tree
//! changed underneath us cannot redirect a read outside PATH. Symlinks are copied as symlinks,
//! and only when their target, resolved lexically from their own directory, stays inside PATH.
//! Names the namespace cannot hold, special files, blobs whose content does not match the digest
//! in their name, and unreadable files are skipped and reported; the import goes on.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use sha1::Digest as _;

use crate::catalog::{Catalog, Tx};
use crate::config::ChunkerConfig;
use crate::content::PreparedContent;
use crate::deferred_sync::Durability;
use crate::error::{Result as StoreResult, StoreError};
use crate::ingest::sha256_with_progress;
use crate::mapped::MappedFile;
use crate::models::{is_sha256_hex, parse_ollama_manifest, HF_ROOT, OLLAMA_ROOT};
use crate::namespace::{now_ns, Inode, NewInode, NodeKind};
use crate::prepare_pool::{PreparePool, Preparing};
use crate::store::Store;
use crate::ChunkHash;

/// Directories nested deeper than this below PATH are skipped (real caches are < 10 deep).
pub const MAX_DEPTH: usize = 128;
/// Longest name the namespace accepts, as on Linux file systems.
pub const MAX_NAME_LEN: usize = 255;

/// Files are committed in batches of at most this many operations or bytes.
const BATCH_OPS: usize = 512;
const BATCH_BYTES: u64 = 1 << 30;
/// Files at least this big are prepared on the import's worker threads; smaller ones on the
/// walking thread, where handing them over would cost more than it overlaps.
const POOL_MIN_FILE: u64 = 1 << 20;
/// How often a wait for a file being prepared passes on the progress of the pool.
const PROGRESS_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Which tool's layout a source tree has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Hf,
    Ollama,
}

impl Layout {
    /// Where this layout lives in the namespace.
    pub fn namespace_root(self) -> &'static str {
        match self {
            Layout::Hf => HF_ROOT,
            Layout::Ollama => OLLAMA_ROOT,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Hf => "hf",
            Layout::Ollama => "ollama",
        }
    }
}

/// Failures of import/scan as a whole (individual entries are skipped, not failed).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {reason}", path.display())]
    Unrecognised { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = ImportError> = std::result::Result<T, E>;

/// A recognised source tree.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Source {
    /// The path as given.
    pub path: PathBuf,
    /// The directory actually walked (the given path with symlinks resolved).
    #[serde(skip)]
    pub root: PathBuf,
    pub layout: Layout,
    /// Namespace path the tree lands at.
    pub namespace: String,
    /// Components between the layout root and the walked root: `[models--org--name]` when PATH
    /// is a single Hugging Face repo folder, else empty.
    #[serde(skip)]
    pub prefix: Vec<Vec<u8>>,
}

/// An entry that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// Something imported that deserves a look.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Warning {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ImportReport {
    pub sources: Vec<Source>,
    /// Regular files imported (a hard link counts once per name).
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Names imported as extra hard links of a file already imported in this run.
    pub hardlinks: u64,
    /// Logical bytes of the files imported (a digest-named file unchanged since the last import
    /// is counted but not re-read).
    pub bytes: u64,
    /// Bytes appended to packs (what the store grew by, before metadata).
    pub new_bytes: u64,
    /// Bytes of files whose content the store already held whole (attached without chunking).
    pub already_stored_bytes: u64,
    /// Of those, bytes of digest-named blobs that were not read at all: the store held content
    /// of that SHA-256 and size, so the name's promise is kept by the stored bytes (see
    /// [`ImportOptions::verify_sources`]).
    #[serde(default)]
    pub unread_bytes: u64,
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<Warning>,
    /// Entries (parent inode, name) that named something else before this import: a kernel
    /// caching them must forget them.
    #[serde(skip)]
    pub replaced_entries: Vec<(u64, Vec<u8>)>,
}

fn is_repo_folder(name: &[u8]) -> bool {
    [&b"models--"[..], b"datasets--", b"spaces--"]
        .iter()
        .any(|p| name.len() > p.len() && name.starts_with(p))
}

/// `true` if the namespace can hold this name.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Recognises PATH as a Hugging Face hub cache, a single `models--*` repo folder, or an Ollama
/// models directory.
pub fn recognise(path: &Path) -> Result<Source> {
    let unrecognised = |reason: String| ImportError::Unrecognised {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| unrecognised(e.to_string()))?;
    if !meta.is_dir() {
        return Err(unrecognised("not a directory".into()));
    }
    let root = std::fs::canonicalize(path).map_err(|e| unrecognised(e.to_string()))?;
    let is_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    if let Some(name) = root.file_name().map(|n| n.as_bytes().to_vec()) {
        if is_repo_folder(&name) && valid_name(&name) {
            return Ok(Source {
                path: path.to_path_buf(),
                namespace: format!("{HF_ROOT}/{}", lossy(&name)),
                root,
                layout: Layout::Hf,
                prefix: vec![name],
            });
        }
    }
    if is_dir(&root.join("blobs")) && is_dir(&root.join("manifests")) {
        return Ok(Source {
            path: path.to_path_buf(),
            root,
            layout: Layout::Ollama,
            namespace: OLLAMA_ROOT.into(),
            prefix: Vec::new(),
        });
    }
    let entries = std::fs::read_dir(&root).map_err(|e| unrecognised(e.to_string()))?;
    for entry in entries.flatten() {
        if is_repo_folder(entry.file_name().as_bytes()) && is_dir(&entry.path()) {
            return Ok(Source {
                path: path.to_path_buf(),
                root,
                layout: Layout::Hf,
                namespace: HF_ROOT.into(),
                prefix: Vec::new(),
            });
        }
    }
    let mut reason = String::from(
        "not a Hugging Face hub cache (no models--* folders) nor an Ollama models directory \
         (no blobs/ and manifests/)",
    );
    if is_dir(&root.join("hub")) {
        reason.push_str(&format!("; did you mean {}?", path.join("hub").display()));
    } else if is_dir(&root.join("models/blobs")) {
        reason.push_str(&format!(
            "; did you mean {}?",
            path.join("models").display()
        ));
    }
    Err(unrecognised(reason))
}

// ---------------------------------------------------------------------------------------------
// Walking a source tree without following symlinks.

mod sys {
    //! Thin wrappers over the `*at` system calls: every open and stat is relative to a directory
    //! handle and never follows a symlink in the last component.

    use std::ffi::{CStr, CString};
    use std::fs::File;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    /// The attributes import cares about (times in nanoseconds since the epoch).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Meta {
        pub mode: u32,
        pub uid: u32,
        pub gid: u32,
        pub size: u64,
        pub atime: i64,
        pub mtime: i64,
        pub dev: u64,
        pub ino: u64,
        pub nlink: u64,
    }

    #[allow(clippy::useless_conversion)] // mode_t is u16 on some platforms
    impl Meta {
        fn kind_bits(&self) -> u32 {
            self.mode & u32::from(libc::S_IFMT)
        }
        pub fn is_dir(&self) -> bool {
            self.kind_bits() == u32::from(libc::S_IFDIR)
        }
        pub fn is_file(&self) -> bool {
            self.kind_bits() == u32::from(libc::S_IFREG)
        }
        pub fn is_symlink(&self) -> bool {
            self.kind_bits() == u32::from(libc::S_IFLNK)
        }
        pub fn same_object(&self, other: &Meta) -> bool {
            self.dev == other.dev && self.ino == other.ino && self.kind_bits() == other.kind_bits()
        }
        pub fn perm(&self) -> u32 {
            self.mode & 0o7777
        }
        pub fn kind_name(&self) -> &'static str {
            match self.kind_bits() {
                k if k == u32::from(libc::S_IFIFO) => "a fifo",
                k if k == u32::from(libc::S_IFSOCK) => "a socket",
                k if k == u32::from(libc::S_IFCHR) => "a character device",
                k if k == u32::from(libc::S_IFBLK) => "a block device",
                _ => "not a regular file, directory or symlink",
            }
        }
    }

    fn ns(secs: i64, nsec: i64) -> i64 {
        secs.saturating_mul(1_000_000_000).saturating_add(nsec)
    }

    #[allow(clippy::useless_conversion)] // field types differ between platforms
    fn meta(st: &libc::stat) -> Meta {
        Meta {
            mode: u32::from(st.st_mode),
            uid: st.st_uid,
            gid: st.st_gid,
            size: u64::try_from(st.st_size).unwrap_or(0),
            atime: ns(i64::from(st.st_atime), i64::from(st.st_atime_nsec)),
            mtime: ns(i64::from(st.st_mtime), i64::from(st.st_mtime_nsec)),
            dev: u64::from(st.st_dev),
            ino: u64::from(st.st_ino),
            nlink: u64::from(st.st_nlink),
        }
    }

    fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    pub fn fstat(fd: &impl AsRawFd) -> io::Result<Meta> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: fstat fills the buffer we own; the fd is valid for the borrow.
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
        // SAFETY: fstat succeeded, so the struct is initialised (it was zeroed anyway).
        Ok(meta(unsafe { st.assume_init_ref() }))
    }

    /// An open directory.
    pub struct DirFd(OwnedFd);

    impl DirFd {
        /// Opens the root of a walk (following symlinks: the user named this path).
        pub fn open(path: &Path) -> io::Result<DirFd> {
            let c = CString::new(path.as_os_str().as_bytes())?;
            // SAFETY: plain open(2) of a NUL-terminated path.
            let fd = cvt(unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            })?;
            // SAFETY: fd was just returned by open and is owned by nobody else.
            Ok(DirFd(unsafe { OwnedFd::from_raw_fd(fd) }))
        }

        fn open_at(&self, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
            // SAFETY: openat(2) relative to our directory fd.
            let fd = cvt(unsafe {
                libc::openat(
                    self.0.as_raw_fd(),
                    name.as_ptr(),
                    flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY,
                )
            })?;
            // SAFETY: fd was just returned by openat.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }

        pub fn open_dir(&self, name: &CStr) -> io::Result<DirFd> {
            Ok(DirFd(
                self.open_at(name, libc::O_RDONLY | libc::O_DIRECTORY)?,
            ))
        }

        /// Opens a regular file; `O_NONBLOCK` so a fifo swapped in cannot hang us.
        pub fn open_file(&self, name: &CStr) -> io::Result<File> {
            Ok(File::from(
                self.open_at(name, libc::O_RDONLY | libc::O_NONBLOCK)?,
            ))
        }

        pub fn stat(&self) -> io::Result<Meta> {
            fstat(&self.0)
        }

        pub fn stat_at(&self, name: &CStr) -> io::Result<Meta> {
            let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
            // SAFETY: fstatat fills the buffer we own.
            cvt(unsafe {
                libc::fstatat(
                    self.0.as_raw_fd(),
                    name.as_ptr(),
                    st.as_mut_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
            // SAFETY: fstatat succeeded.
            Ok(meta(unsafe { st.assume_init_ref() }))
        }

        pub fn read_link(&self, name: &CStr) -> io::Result<Vec<u8>> {
            let mut buf = vec![0u8; 256];
            loop {
                // SAFETY: readlinkat writes at most buf.len() bytes into our buffer.
                let n = unsafe {
                    libc::readlinkat(
                        self.0.as_raw_fd(),
                        name.as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let n = n as usize;
                if n < buf.len() {
                    buf.truncate(n);
                    return Ok(buf);
                }
                if buf.len() >= 1 << 16 {
                    return Err(io::Error::other("symlink target too long"));
                }
                buf.resize(buf.len() * 4, 0);
            }
        }

        /// Names in the directory (without `.` and `..`), sorted.
        pub fn names(&self) -> io::Result<Vec<Vec<u8>>> {
            // SAFETY: duplicate our fd; fdopendir takes ownership of the duplicate and closedir
            // closes it.
            let dup = cvt(unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
            // SAFETY: dup is a valid directory fd we own.
            let dir = unsafe { libc::fdopendir(dup) };
            if dir.is_null() {
                let err = io::Error::last_os_error();
                // SAFETY: fdopendir failed, so dup is still ours to close.
                unsafe { libc::close(dup) };
                return Err(err);
            }
            // SAFETY: dir is a valid DIR*; the duplicate shares the offset, so rewind.
            unsafe { libc::rewinddir(dir) };
            let mut names = Vec::new();
            let result = loop {
                clear_errno();
                // SAFETY: dir is a valid DIR*.
                let ent = unsafe { libc::readdir(dir) };
                if ent.is_null() {
                    let err = io::Error::last_os_error();
                    break match err.raw_os_error() {
                        Some(0) | None => Ok(()),
                        Some(_) => Err(err),
                    };
                }
                // SAFETY: readdir returned a valid dirent whose d_name is NUL-terminated.
                let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
                if name != b"." && name != b".." {
                    names.push(name.to_vec());
                }
            };
            // SAFETY: dir is valid and closed once.
            unsafe { libc::closedir(dir) };
            result?;
            names.sort();
            Ok(names)
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn clear_errno() {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = 0 };
    }

    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    fn clear_errno() {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__error() = 0 };
    }

    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd"
    )))]
    fn clear_errno() {}
}

use sys::{DirFd, Meta};

/// A regular file met by the walk, opened only on request.
struct FileRef<'a> {
    dir: &'a DirFd,
    name: &'a CStr,
    meta: Meta,
}

impl FileRef<'_> {
    /// Opens the file without following symlinks and checks it is still the file we stat'ed.
    fn open(&self) -> std::io::Result<File> {
        let file = self.dir.open_file(self.name)?;
        let now = sys::fstat(&file)?;
        if !now.same_object(&self.meta) || !now.is_file() {
            return Err(std::io::Error::other("file was replaced while importing"));
        }
        Ok(file)
    }
}

/// What a walk reports to its user. `rel` is the path relative to the layout root (for a single
/// repo folder it starts with the folder's name); `path` is the source path for messages.
trait Visit {
    /// Called before a directory's entries; `false` skips them (and `leave_dir`).
    fn enter_dir(&mut self, rel: &[Vec<u8>], meta: &Meta) -> StoreResult<bool>;
    fn leave_dir(&mut self, rel: &[Vec<u8>], meta: &Meta) -> StoreResult<()>;
    fn file(&mut self, rel: &[Vec<u8>], path: &Path, file: FileRef) -> StoreResult<()>;
    fn symlink(
        &mut self,
        rel: &[Vec<u8>],
        path: &Path,
        meta: &Meta,
        target: Vec<u8>,
    ) -> StoreResult<()>;
    fn skip(&mut self, path: &Path, reason: String);
    fn warn(&mut self, path: &Path, message: String);
}

struct Walker<'a> {
    source: &'a Source,
}

impl Walker<'_> {
    fn display(&self, rel: &[Vec<u8>]) -> PathBuf {
        let mut p = self.source.path.clone();
        for part in &rel[self.source.prefix.len()..] {
            p.push(std::ffi::OsStr::from_bytes(part));
        }
        p
    }

    fn run(&self, visit: &mut dyn Visit) -> Result<()> {
        let source = self.source;
        let unreadable = |e: std::io::Error| ImportError::Unrecognised {
            path: source.path.clone(),
            reason: e.to_string(),
        };
        let root = DirFd::open(&source.root).map_err(unreadable)?;
        let meta = root.stat().map_err(unreadable)?;
        let mut rel = source.prefix.clone();
        if visit.enter_dir(&rel, &meta)? {
            self.walk_dir(&root, &mut rel, 0, visit)?;
            visit.leave_dir(&rel, &meta)?;
        }
        Ok(())
    }

    fn walk_dir(
        &self,
        dir: &DirFd,
        rel: &mut Vec<Vec<u8>>,
        depth: usize,
        visit: &mut dyn Visit,
    ) -> StoreResult<()> {
        let names = match dir.names() {
            Ok(names) => names,
            Err(e) => {
                visit.skip(&self.display(rel), format!("unreadable directory: {e}"));
                return Ok(());
            }
        };
        for name in names {
            rel.push(name);
            self.entry(dir, rel, depth, visit)?;
            rel.pop();
        }
        Ok(())
    }

    fn entry(
        &self,
        dir: &DirFd,
        rel: &mut Vec<Vec<u8>>,
        depth: usize,
        visit: &mut dyn Visit,
    ) -> StoreResult<()> {
        let path = self.display(rel);
        let name = rel.last().expect("entry has a name");
        if !valid_name(name) {
            let why = if name.len() > MAX_NAME_LEN {
                format!("name longer than {MAX_NAME_LEN} bytes")
            } else {
                "invalid name".to_string()
            };
            visit.skip(&path, why);
            return Ok(());
        }
        let cname = CString::new(name.clone()).expect("valid names hold no NUL");
        let meta = match dir.stat_at(&cname) {
            Ok(m) => m,
            Err(e) => {
                visit.skip(&path, format!("cannot stat: {e}"));
                return Ok(());
            }
        };
        if meta.is_dir() {
            if depth + 1 > MAX_DEPTH {
                visit.skip(&path, format!("nested deeper than {MAX_DEPTH} directories"));
                return Ok(());
            }
            let sub = match dir.open_dir(&cname) {
                Ok(sub) => sub,
                Err(e) => {
                    visit.skip(&path, format!("unreadable directory: {e}"));
                    return Ok(());
                }
            };
            match sub.stat() {
                Ok(now) if now.same_object(&meta) => {}
                _ => {
                    visit.skip(&path, "directory was replaced while importing".into());
                    return Ok(());
                }
            }
            if visit.enter_dir(rel, &meta)? {
                self.walk_dir(&sub, rel, depth + 1, visit)?;
                visit.leave_dir(rel, &meta)?;
            }
        } else if meta.is_file() {
            visit.file(
                rel,
                &path,
                FileRef {
                    dir,
                    name: &cname,
                    meta,
                },
            )?;
        } else if meta.is_symlink() {
            let target = match dir.read_link(&cname) {
                Ok(t) => t,
                Err(e) => {
                    visit.skip(&path, format!("unreadable symlink: {e}"));
                    return Ok(());
                }
            };
            // Depth of the link's directory below the walked root.
            let dir_depth = rel.len() - 1 - self.source.prefix.len();
            let roots = [self.source.root.as_path(), self.source.path.as_path()];
            match check_symlink_target(dir_depth, &target, &roots) {
                Ok(SymlinkTarget::Kept) => visit.symlink(rel, &path, &meta, target)?,
                Ok(SymlinkTarget::Rewritten(new)) => {
                    visit.warn(
                        &path,
                        format!(
                            "absolute symlink target {} made relative: {}",
                            lossy(&target),
                            lossy(&new)
                        ),
                    );
                    visit.symlink(rel, &path, &meta, new)?;
                }
                Err(reason) => visit.skip(&path, reason),
            }
        } else {
            visit.skip(
                &path,
                format!(
                    "{} (only files, directories and symlinks are imported)",
                    meta.kind_name()
                ),
            );
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SymlinkTarget {
    Kept,
    Rewritten(Vec<u8>),
}

/// Decides whether a symlink in a directory `dir_depth` levels below the walked root may be
/// copied. Relative targets must stay inside the root when resolved lexically, and may climb
/// (`..`) only before their first name: after a name, `..` would be resolved physically through
/// whatever that name is, which a lexical check cannot vouch for. Absolute targets inside the
/// root (one of `roots`, without `.`/`..`) are rewritten relative; any other is refused.
fn check_symlink_target(
    dir_depth: usize,
    target: &[u8],
    roots: &[&Path],
) -> Result<SymlinkTarget, String> {
    let shown = lossy(target);
    if target.is_empty() {
        return Err("symlink with an empty target".into());
    }
    if target.starts_with(b"/") {
        let abs = Path::new(std::ffi::OsStr::from_bytes(target));
        let clean = abs
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        for root in roots {
            let Ok(rest) = abs.strip_prefix(root) else {
                continue;
            };
            if !clean || !root.is_absolute() {
                break;
            }
            let mut new = b"../".repeat(dir_depth);
            new.extend_from_slice(rest.as_os_str().as_bytes());
            if new.is_empty() {
                new.push(b'.');
            }
            while new.len() > 1 && new.ends_with(b"/") {
                new.pop();
            }
            return Ok(SymlinkTarget::Rewritten(new));
        }
        return Err(format!(
            "symlink target {shown} is outside PATH (not followed)"
        ));
    }
    let mut depth = dir_depth as i64;
    let mut seen_name = false;
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if seen_name {
                    return Err(format!(
                        "symlink target {shown} climbs with `..` after a name (not followed)"
                    ));
                }
                depth -= 1;
                if depth < 0 {
                    return Err(format!("symlink target {shown} leaves PATH (not followed)"));
                }
            }
            _ => seen_name = true,
        }
    }
    Ok(SymlinkTarget::Kept)
}

/// What a file's name says about its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    None,
    /// HF LFS blob or Ollama blob: the SHA-256 of the content.
    Sha256([u8; 32]),
    /// HF small-file blob: the git blob SHA-1 of the content.
    GitSha1([u8; 20]),
    /// An Ollama or Hugging Face download in progress.
    Partial,
}

fn classify(layout: Layout, rel: &[Vec<u8>]) -> Claim {
    let hex32 = |s: &[u8]| -> Option<[u8; 32]> {
        let s = std::str::from_utf8(s).ok()?;
        if !is_sha256_hex(s) {
            return None;
        }
        hex::decode(s).ok()?.try_into().ok()
    };
    match layout {
        Layout::Hf => {
            if rel.len() != 3 || rel[1] != b"blobs" || !is_repo_folder(&rel[0]) {
                return Claim::None;
            }
            let name = &rel[2];
            // huggingface_hub downloads into `<etag>.incomplete` (newer versions
            // `<etag>.<8 hex>.incomplete`) and renames it once complete.
            if name.ends_with(b".incomplete") {
                return Claim::Partial;
            }
            if let Some(d) = hex32(name) {
                return Claim::Sha256(d);
            }
            if name.len() == 40
                && name
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            {
                if let Some(d) = hex::decode(name).ok().and_then(|v| v.try_into().ok()) {
                    return Claim::GitSha1(d);
                }
            }
            Claim::None
        }
        Layout::Ollama => {
            if rel.len() != 2 || rel[0] != b"blobs" {
                return Claim::None;
            }
            let Some(rest) = rel[1].strip_prefix(b"sha256-") else {
                return Claim::None;
            };
            if rest.len() > 64 && rest[64..].starts_with(b"-partial") {
                return Claim::Partial;
            }
            hex32(rest).map_or(Claim::None, Claim::Sha256)
        }
    }
}

fn is_manifest(layout: Layout, rel: &[Vec<u8>]) -> bool {
    layout == Layout::Ollama && rel.first().is_some_and(|p| p == b"manifests")
}

fn git_blob_sha1(data: &[u8]) -> [u8; 20] {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    h.finalize().into()
}

fn sha_mismatch(got: &[u8; 32], want: &[u8; 32]) -> String {
    format!(
        "content SHA-256 is {}, not the {} its name claims",
        hex::encode(got),
        hex::encode(want)
    )
}

/// Checks a file's content against what its name claims; `Err` is the skip reason. Warnings
/// (a git blob name that does not match) go to `warn`.
fn check_claim(
    claim: Claim,
    data: &[u8],
    sha: Option<[u8; 32]>,
    warn: &mut dyn FnMut(String),
) -> Result<(), String> {
    match claim {
        Claim::Sha256(want) => {
            let got = sha.unwrap_or_else(|| crate::ingest::sha256(data));
            if got != want {
                return Err(sha_mismatch(&got, &want));
            }
        }
        Claim::GitSha1(want) => {
            let got = git_blob_sha1(data);
            if got != want {
                warn(format!(
                    "name is not the git blob SHA-1 of the content ({}); imported anyway",
                    hex::encode(got)
                ));
            }
        }
        Claim::None | Claim::Partial => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Import.

enum Content {
    Prepared(PreparedContent),
    Existing(i64),
}

enum Op {
    File {
        parent: u64,
        name: Vec<u8>,
        meta: Meta,
        content: Content,
        path: String,
        link_key: Option<(u64, u64)>,
    },
    HardLink {
        parent: u64,
        name: Vec<u8>,
        key: (u64, u64),
        path: String,
    },
    Symlink {
        parent: u64,
        name: Vec<u8>,
        meta: Meta,
        target: Vec<u8>,
        path: String,
    },
    DirAttrs {
        ino: u64,
        meta: Meta,
    },
}

impl Op {
    /// Source bytes the op records (for batch limits).
    fn bytes(&self) -> u64 {
        match self {
            Op::File { meta, .. } => meta.size,
            _ => 0,
        }
    }
}

/// An entry of an import's uncommitted batch.
enum Queued {
    Ready(Op),
    /// A file whose content a worker is still preparing.
    Preparing(PendingFile, Preparing),
}

/// What becomes of a file once its content is prepared (see `Importer::finish_file`).
struct PendingFile {
    parent: u64,
    name: Vec<u8>,
    meta: Meta,
    path: String,
    link_key: Option<(u64, u64)>,
    /// The SHA-256 the file's name claims, checked against the prepared content.
    claimed: Option<[u8; 32]>,
    warnings: Vec<String>,
    progress: FileProgress,
}

/// How a file's bytes reach the import's progress callback.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileProgress {
    /// Counted while its SHA-256 was checked, before preparing.
    Reported,
    /// All at once when prepared.
    AtTheEnd,
    /// As a pool worker hashes them (see [`forward_pool_progress`]).
    FromThePool,
}

/// Tells `progress` of the bytes the pool hashed since `reported`.
fn forward_pool_progress(pool: &PreparePool, progress: &dyn Fn(u64), reported: &mut u64) {
    let hashed = pool.hashed_bytes();
    if hashed > *reported {
        progress(hashed - *reported);
        *reported = hashed;
    }
}

/// What applying an op did.
enum Applied {
    File,
    HardLink,
    Symlink,
    Dir,
    Skipped(String, String),
}

/// Removes whatever `name` in `parent` is (not a directory) so something else can take it.
/// The inode it named is left unlinked, for [`Store::import_with`] to delete once nothing holds
/// it (see `ImportOptions::leave_replaced_inodes`).
fn replace_entry(
    tx: &Tx,
    parent: u64,
    name: &[u8],
    replaced: &mut Vec<(u64, Vec<u8>)>,
) -> StoreResult<()> {
    tx.unlink_entry(parent, name)?;
    replaced.push((parent, name.to_vec()));
    Ok(())
}

/// What applying ops accumulates over an import.
#[derive(Default)]
struct Applying {
    /// Source (dev, ino) of multiply-linked files → their namespace inode.
    links: HashMap<(u64, u64), u64>,
    /// See [`ImportReport::replaced_entries`].
    replaced: Vec<(u64, Vec<u8>)>,
}

fn apply_attrs(tx: &Tx, mut inode: Inode, meta: &Meta, size: Option<u64>) -> StoreResult<()> {
    inode.perm = meta.perm();
    inode.uid = meta.uid;
    inode.gid = meta.gid;
    inode.atime = meta.atime;
    inode.mtime = meta.mtime;
    inode.ctime = now_ns();
    if let Some(size) = size {
        inode.size = size;
    }
    tx.update_inode(&inode)
}

fn new_inode(kind: NodeKind, meta: &Meta, target: Option<Vec<u8>>) -> NewInode {
    NewInode {
        kind,
        perm: meta.perm(),
        uid: meta.uid,
        gid: meta.gid,
        time: now_ns(),
        target,
        rdev: 0,
    }
}

fn apply(tx: &Tx, op: &Op, applying: &mut Applying) -> StoreResult<Applied> {
    match op {
        Op::File {
            parent,
            name,
            meta,
            content,
            path,
            link_key,
        } => {
            let content = match content {
                Content::Prepared(p) if p.size == 0 => None,
                Content::Prepared(p) => Some(tx.insert_content(p)?),
                Content::Existing(id) => Some(*id),
            };
            let existing = match tx.lookup(*parent, name)? {
                Some(ino) => Some(tx.inode_required(ino)?),
                None => None,
            };
            let ino = match existing {
                Some(inode) if inode.kind == NodeKind::Dir => {
                    return Ok(Applied::Skipped(
                        path.clone(),
                        "a directory of this name exists in the store".into(),
                    ));
                }
                // A file only this name uses is updated in place; anything else is replaced.
                Some(inode) if inode.kind == NodeKind::File && inode.nlink <= 1 => inode.ino,
                other => {
                    if other.is_some() {
                        replace_entry(tx, *parent, name, &mut applying.replaced)?;
                    }
                    let ino = tx.create_inode(&new_inode(NodeKind::File, meta, None))?;
                    tx.link_entry(*parent, name, ino)?;
                    ino
                }
            };
            tx.set_content(ino, content)?;
            apply_attrs(tx, tx.inode_required(ino)?, meta, Some(meta.size))?;
            if let Some(key) = link_key {
                applying.links.insert(*key, ino);
            }
            Ok(Applied::File)
        }
        Op::HardLink {
            parent,
            name,
            key,
            path,
        } => {
            let Some(&target) = applying.links.get(key) else {
                return Ok(Applied::Skipped(
                    path.clone(),
                    "hard link to a file that was not imported".into(),
                ));
            };
            match tx.lookup(*parent, name)? {
                Some(ino) if ino == target => return Ok(Applied::HardLink),
                Some(ino) => {
                    if tx.inode_required(ino)?.kind == NodeKind::Dir {
                        return Ok(Applied::Skipped(
                            path.clone(),
                            "a directory of this name exists in the store".into(),
                        ));
                    }
                    replace_entry(tx, *parent, name, &mut applying.replaced)?;
                }
                None => {}
            }
            tx.link_entry(*parent, name, target)?;
            Ok(Applied::HardLink)
        }
        Op::Symlink {
            parent,
            name,
            meta,
            target,
            path,
        } => {
            let existing = match tx.lookup(*parent, name)? {
                Some(ino) => Some(tx.inode_required(ino)?),
                None => None,
            };
            let inode = match existing {
                Some(inode) if inode.kind == NodeKind::Dir => {
                    return Ok(Applied::Skipped(
                        path.clone(),
                        "a directory of this name exists in the store".into(),
                    ));
                }
                Some(inode)
                    if inode.kind == NodeKind::Symlink
                        && inode.target.as_deref() == Some(target.as_slice()) =>
                {
                    inode
                }
                other => {
                    if other.is_some() {
                        replace_entry(tx, *parent, name, &mut applying.replaced)?;
                    }
                    let ino =
                        tx.create_inode(&new_inode(NodeKind::Symlink, meta, Some(target.clone())))?;
                    tx.link_entry(*parent, name, ino)?;
                    tx.inode_required(ino)?
                }
            };
            apply_attrs(tx, inode, meta, None)?;
            Ok(Applied::Symlink)
        }
        Op::DirAttrs { ino, meta } => {
            let inode = tx.inode_required(*ino)?;
            apply_attrs(tx, inode, meta, None)?;
            Ok(Applied::Dir)
        }
    }
}

/// How an import treats its sources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportOptions {
    /// Hash digest-named blobs even when the store already holds content of that SHA-256 and
    /// size. Off by default: what the namespace gets is the stored content, which does hash to
    /// the name, so reading the source would only find out whether the source copy is damaged.
    #[serde(default)]
    pub verify_sources: bool,
    /// Leave the inodes of replaced files unlinked rather than deleting them at the end of the
    /// import: a mounted store's daemon deletes each one once no open file or kernel lookup
    /// holds it (a reader of the old file keeps reading it, as on a disk). Set by the daemon,
    /// never sent by a client.
    #[serde(skip)]
    pub leave_replaced_inodes: bool,
    /// Return only once the imported bytes are on disk. Off by default: the import commits
    /// as soon as its packs are written, as `cp` returns, and the kernel writes them back in
    /// the next half minute (deferred_sync.rs: a crash before that drops those files, never
    /// shows them wrong). For scripts that delete the sources next.
    #[serde(default)]
    pub sync: bool,
}

struct Importer<'a> {
    store: &'a Store,
    options: ImportOptions,
    /// Where the commits' pack bytes stand (see [`ImportOptions::sync`]).
    durability: Durability,
    progress: &'a dyn Fn(u64),
    layout: Layout,
    report: &'a mut ImportReport,
    /// Namespace inodes of the directories being walked (innermost last).
    stack: Vec<u64>,
    /// The batch not yet committed, in walk order.
    queue: Vec<Queued>,
    /// Big files are prepared on these workers while the walk goes on.
    pool: &'a PreparePool,
    /// Of the pool's hashed bytes, those `progress` has been told of.
    pool_bytes_reported: u64,
    /// Hard links seen and entries replaced so far.
    applying: &'a mut Applying,
    /// Source (dev, ino) of multiply-linked files queued or imported in this run.
    seen_links: &'a mut HashSet<(u64, u64)>,
}

impl Importer<'_> {
    /// Waits for every file in flight and commits the whole batch.
    fn flush(&mut self) -> StoreResult<()> {
        while self.resolve_oldest(true)? {}
        self.commit_ready()
    }

    /// Commits the ops at the head of the batch that are ready (up to the first file still
    /// being prepared), so the catalog sees files in walk order.
    fn commit_ready(&mut self) -> StoreResult<()> {
        let ready = self
            .queue
            .iter()
            .take_while(|q| matches!(q, Queued::Ready(_)))
            .count();
        if ready == 0 {
            return Ok(());
        }
        let ops: Vec<Op> = self
            .queue
            .drain(..ready)
            .filter_map(|q| match q {
                Queued::Ready(op) => Some(op),
                Queued::Preparing(..) => None,
            })
            .collect();
        // Contents are committed only after the chunks they reference are durable, or in the
        // transaction that marks their packs unsynced (deferred_sync.rs).
        let unsynced = self.store.packs().unsynced();
        let deferred_in = match self.durability {
            Durability::AfterCommit => self.store.write_session.as_deref(),
            Durability::BeforeCommit => None,
        };
        if deferred_in.is_none() && !unsynced.is_empty() {
            self.store.packs().sync()?;
        }
        let applying = &mut *self.applying;
        let outcomes = self.store.catalog().write(|tx| {
            if let Some(session) = deferred_in {
                tx.mark_unsynced(&unsynced, session)?;
            }
            ops.iter()
                .map(|op| apply(tx, op, applying))
                .collect::<StoreResult<Vec<_>>>()
        })?;
        for outcome in outcomes {
            self.count(outcome);
        }
        Ok(())
    }

    /// Finishes the first file of the batch still being prepared (waiting for it only if
    /// `block`); whether there was one to finish.
    fn resolve_oldest(&mut self, block: bool) -> StoreResult<bool> {
        let Some(at) = self
            .queue
            .iter()
            .position(|q| matches!(q, Queued::Preparing(..)))
        else {
            return Ok(false);
        };
        let Queued::Preparing(_, preparing) = &self.queue[at] else {
            unreachable!("found above")
        };
        let prepared = if block {
            let (pool, progress, reported) =
                (self.pool, self.progress, &mut self.pool_bytes_reported);
            preparing.wait(PROGRESS_TICK, || {
                forward_pool_progress(pool, progress, reported)
            })
        } else {
            match preparing.try_wait() {
                Some(prepared) => prepared,
                None => return Ok(false),
            }
        };
        let Queued::Preparing(file, _) = self.queue.remove(at) else {
            unreachable!("found above")
        };
        if let Some(op) = self.finish_file(file, prepared)? {
            self.queue.insert(at, Queued::Ready(op));
        }
        Ok(true)
    }

    fn preparing_count(&self) -> usize {
        self.queue
            .iter()
            .filter(|q| matches!(q, Queued::Preparing(..)))
            .count()
    }

    /// Whether a file of the uncommitted batch has (or claims) this SHA-256.
    fn batch_has_digest(&self, sha256: &[u8; 32]) -> bool {
        self.queue.iter().any(|q| match q {
            Queued::Ready(Op::File {
                content: Content::Prepared(p),
                ..
            }) => p.sha256 == *sha256,
            Queued::Preparing(file, _) => file.claimed == Some(*sha256),
            _ => false,
        })
    }

    fn count(&mut self, outcome: Applied) {
        match outcome {
            Applied::File => self.report.files += 1,
            Applied::HardLink => {
                self.report.files += 1;
                self.report.hardlinks += 1;
            }
            Applied::Symlink => self.report.symlinks += 1,
            Applied::Dir => {}
            Applied::Skipped(path, reason) => self.report.skipped.push(Skipped { path, reason }),
        }
    }

    fn push(&mut self, op: Op) -> StoreResult<()> {
        self.queue.push(Queued::Ready(op));
        self.after_queueing()
    }

    /// Keeps the batch within its limits: finished files are picked up, no more files wait
    /// for the pool than it can take, and full batches are committed.
    fn after_queueing(&mut self) -> StoreResult<()> {
        forward_pool_progress(self.pool, self.progress, &mut self.pool_bytes_reported);
        while self.resolve_oldest(false)? {}
        while self.preparing_count() > self.pool.capacity() {
            self.resolve_oldest(true)?;
        }
        let (ops, bytes) = self
            .queue
            .iter()
            .take_while(|q| matches!(q, Queued::Ready(_)))
            .fold((0, 0), |(n, b), q| match q {
                Queued::Ready(op) => (n + 1, b + op.bytes()),
                Queued::Preparing(..) => (n, b),
            });
        if ops >= BATCH_OPS || bytes >= BATCH_BYTES {
            self.commit_ready()?;
        }
        if self.queue.len() >= 2 * BATCH_OPS {
            // Many small files behind one still being prepared.
            self.flush()?;
        }
        Ok(())
    }

    /// The namespace directory for `rel`, created (or made a directory) if needed.
    /// A non-directory in the way is replaced (the source says this name is a directory).
    fn ensure_dir(&mut self, rel: &[Vec<u8>], meta: &Meta) -> StoreResult<u64> {
        let layout_root: Vec<&[u8]> = self
            .layout
            .namespace_root()
            .split('/')
            .map(str::as_bytes)
            .collect();
        // SAFETY: these calls cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let parent = self.stack.last().copied();
        let name = rel.last().cloned();
        let replaced = &mut self.applying.replaced;
        self.store.catalog().write(|tx| {
            let parent = match parent {
                Some(p) => p,
                None => {
                    let root = tx.mkdir_p(&layout_root, 0o755, uid, gid)?;
                    if name.is_none() {
                        return Ok(root);
                    }
                    debug_assert_eq!(rel.len(), 1);
                    root
                }
            };
            let name = name.as_deref().unwrap_or_default();
            if let Some(ino) = tx.lookup(parent, name)? {
                let inode = tx.inode_required(ino)?;
                if inode.kind == NodeKind::Dir {
                    return Ok(ino);
                }
                replace_entry(tx, parent, name, replaced)?;
            }
            let ino = tx.create_inode(&new_inode(NodeKind::Dir, meta, None))?;
            tx.link_entry(parent, name, ino)?;
            Ok(ino)
        })
    }

    fn import_file(&mut self, rel: &[Vec<u8>], path: &Path, file: FileRef) -> StoreResult<()> {
        let meta = file.meta;
        let shown = path.display().to_string();
        let parent = *self.stack.last().expect("files live in a directory");
        let name = rel.last().expect("file has a name").clone();
        let claim = classify(self.layout, rel);
        if claim == Claim::Partial {
            self.report.skipped.push(Skipped {
                path: shown,
                reason: "partial download".into(),
            });
            return Ok(());
        }
        let link_key = (meta.nlink > 1).then_some((meta.dev, meta.ino));
        if let Some(key) = link_key {
            if !self.seen_links.insert(key) {
                let op = Op::HardLink {
                    parent,
                    name,
                    key,
                    path: shown,
                };
                return self.push(op);
            }
        }
        let progress = self.progress;
        let claimed = match claim {
            Claim::Sha256(want) if meta.size > 0 => Some(want),
            _ => None,
        };

        // A digest-named file: ask the store before reading anything.
        let mut stored = None;
        if let Some(want) = claimed {
            // The lookups below must see a file of this batch with the same digest.
            if self.batch_has_digest(&want) {
                self.flush()?;
            }
            let applying = &mut *self.applying;
            let verify_sources = self.options.verify_sources;
            let (attached, found) = self.store.catalog().write(|tx| {
                // Unchanged since it was imported (same path, size and mtime, and a content
                // with the digest the name claims): nothing to read.
                let mut unchanged = None;
                if let Some(ino) = tx.lookup(parent, &name)? {
                    let inode = tx.inode_required(ino)?;
                    if let (NodeKind::File, Some(content)) = (inode.kind, inode.content) {
                        if inode.size == meta.size
                            && inode.mtime == meta.mtime
                            && tx.content_sha256(content)? == Some(want)
                        {
                            unchanged = Some(content);
                        }
                    }
                }
                // Or the store holds content of that digest and size, which keeps the name's
                // promise: attached without reading the source unless sources are verified.
                let found = match unchanged {
                    Some(_) => None,
                    None => tx.content_by_sha256(&want, meta.size)?,
                };
                let Some(content) = unchanged.or(found.filter(|_| !verify_sources)) else {
                    return Ok((None, found));
                };
                let op = Op::File {
                    parent,
                    name: name.clone(),
                    meta,
                    content: Content::Existing(content),
                    path: shown.clone(),
                    link_key,
                };
                Ok((Some(apply(tx, &op, applying)?), None))
            })?;
            if let Some(outcome) = attached {
                progress(meta.size);
                self.report.bytes += meta.size;
                self.report.already_stored_bytes += meta.size;
                self.report.unread_bytes += meta.size;
                self.count(outcome);
                return Ok(());
            }
            stored = found;
        }

        let opened = file.open().and_then(|f| {
            let map = MappedFile::from_file(&f, path)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if map.len() as u64 != meta.size {
                return Err(std::io::Error::other("file changed size while importing"));
            }
            Ok(map)
        });
        let data = match opened {
            Ok(d) => d,
            Err(e) => {
                progress(meta.size);
                self.report.skipped.push(Skipped {
                    path: shown,
                    reason: format!("unreadable: {e}"),
                });
                return Ok(());
            }
        };
        // The store has the claimed content: hash the source to prove it, then attach without
        // chunking. A claimed digest the store lacks is checked after `prepare`, which computes
        // the SHA-256 on the second core anyway.
        let sha = stored.map(|_| sha256_with_progress(&data, progress));
        let mut warnings = Vec::new();
        if claimed.is_none() || sha.is_some() {
            if let Err(reason) = check_claim(claim, &data, sha, &mut |m| warnings.push(m)) {
                self.report.skipped.push(Skipped {
                    path: shown,
                    reason,
                });
                return Ok(());
            }
        }
        if is_manifest(self.layout, rel) {
            if let Err(e) = parse_ollama_manifest(&data) {
                warnings.push(format!(
                    "not a valid Ollama manifest ({e}); imported as a plain file"
                ));
            }
        }

        if let Some(sha) = sha {
            let applying = &mut *self.applying;
            let attached = self.store.catalog().write(|tx| {
                let Some(id) = tx.content_by_sha256(&sha, meta.size)? else {
                    return Ok(None);
                };
                let op = Op::File {
                    parent,
                    name: name.clone(),
                    meta,
                    content: Content::Existing(id),
                    path: shown.clone(),
                    link_key,
                };
                apply(tx, &op, applying).map(Some)
            })?;
            if let Some(outcome) = attached {
                self.add_warnings(&shown, warnings);
                self.report.bytes += meta.size;
                self.report.already_stored_bytes += meta.size;
                self.count(outcome);
                return Ok(());
            }
        }

        // A file whose bytes were counted as its SHA-256 was checked above is prepared here:
        // the pool would count them again.
        let progress = match sha {
            Some(_) => FileProgress::Reported,
            None if meta.size >= POOL_MIN_FILE => FileProgress::FromThePool,
            None => FileProgress::AtTheEnd,
        };
        let file = PendingFile {
            parent,
            name,
            meta,
            path: shown,
            link_key,
            claimed,
            warnings,
            progress,
        };
        if progress == FileProgress::FromThePool {
            let preparing = self.pool.submit(data);
            self.queue.push(Queued::Preparing(file, preparing));
            return self.after_queueing();
        }
        let prepared = self.store.prepare_import(
            &data,
            &std::sync::atomic::AtomicU64::new(0),
            self.durability,
        );
        drop(data);
        match self.finish_file(file, prepared)? {
            Some(op) => self.push(op),
            None => Ok(()),
        }
    }

    /// The op that records a file whose content is prepared, or `None` when the content is
    /// not what the file's name claims, or the file changed while it was read (reported as
    /// skipped).
    fn finish_file(
        &mut self,
        file: PendingFile,
        prepared: StoreResult<PreparedContent>,
    ) -> StoreResult<Option<Op>> {
        match file.progress {
            FileProgress::AtTheEnd => (self.progress)(file.meta.size),
            FileProgress::FromThePool => {
                forward_pool_progress(self.pool, self.progress, &mut self.pool_bytes_reported)
            }
            FileProgress::Reported => {}
        }
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(StoreError::SourceChanged { what, .. }) => {
                self.report.skipped.push(Skipped {
                    path: file.path,
                    reason: format!("{what}; import it again"),
                });
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if let Some(want) = file.claimed {
            if prepared.sha256 != want {
                // Its chunks stay unreferenced in the pack until gc (or recovery) drops them.
                self.report.skipped.push(Skipped {
                    path: file.path,
                    reason: sha_mismatch(&prepared.sha256, &want),
                });
                return Ok(None);
            }
        }
        self.add_warnings(&file.path, file.warnings);
        self.report.bytes += file.meta.size;
        self.report.new_bytes += prepared.new_bytes;
        Ok(Some(Op::File {
            parent: file.parent,
            name: file.name,
            meta: file.meta,
            content: Content::Prepared(prepared),
            path: file.path,
            link_key: file.link_key,
        }))
    }

    fn add_warnings(&mut self, path: &str, messages: Vec<String>) {
        for message in messages {
            self.report.warnings.push(Warning {
                path: path.to_string(),
                message,
            });
        }
    }
}

impl Visit for Importer<'_> {
    fn enter_dir(&mut self, rel: &[Vec<u8>], meta: &Meta) -> StoreResult<bool> {
        let ino = self.ensure_dir(rel, meta)?;
        self.stack.push(ino);
        self.report.dirs += 1;
        Ok(true)
    }

    fn leave_dir(&mut self, _rel: &[Vec<u8>], meta: &Meta) -> StoreResult<()> {
        let ino = self.stack.pop().expect("balanced enter/leave");
        self.push(Op::DirAttrs { ino, meta: *meta })
    }

    fn file(&mut self, rel: &[Vec<u8>], path: &Path, file: FileRef) -> StoreResult<()> {
        self.import_file(rel, path, file)
    }

    fn symlink(
        &mut self,
        rel: &[Vec<u8>],
        path: &Path,
        meta: &Meta,
        target: Vec<u8>,
    ) -> StoreResult<()> {
        let parent = *self.stack.last().expect("symlinks live in a directory");
        let op = Op::Symlink {
            parent,
            name: rel.last().expect("symlink has a name").clone(),
            meta: *meta,
            target,
            path: path.display().to_string(),
        };
        self.push(op)
    }

    fn skip(&mut self, path: &Path, reason: String) {
        self.report.skipped.push(Skipped {
            path: path.display().to_string(),
            reason,
        });
    }

    fn warn(&mut self, path: &Path, message: String) {
        self.report.warnings.push(Warning {
            path: path.display().to_string(),
            message,
        });
    }
}

impl Store {
    /// Imports each PATH (see [`recognise`]) into the namespace. Every PATH is recognised
    /// before anything is written; an unrecognised one fails the whole call. Entries that
    /// cannot be imported are skipped and listed in the report. `progress` receives bytes read.
    pub fn import(&self, paths: &[PathBuf], progress: &dyn Fn(u64)) -> Result<ImportReport> {
        self.import_with(paths, ImportOptions::default(), progress)
    }

    /// [`Store::import`] with options.
    pub fn import_with(
        &self,
        paths: &[PathBuf],
        options: ImportOptions,
        progress: &dyn Fn(u64),
    ) -> Result<ImportReport> {
        let imported = self.import_guarded(paths, options, progress);
        if matches!(imported, Err(ImportError::Store(StoreError::NoSpace))) {
            // The batches committed before the disk filled stay; the packs of the rest would
            // hold the disk full until the store is next opened (never, for a mount's store).
            if let Err(e) = self.reclaim_uncommitted() {
                tracing::warn!(error = %e, "giving back the room of a failed import");
            }
        }
        imported
    }

    fn import_guarded(
        &self,
        paths: &[PathBuf],
        options: ImportOptions,
        progress: &dyn Fn(u64),
    ) -> Result<ImportReport> {
        // Prepared contents wait for their batch's commit: keep reclaim_uncommitted out.
        let _ingest = self.ingest_guard();
        let sources = paths
            .iter()
            .map(|p| recognise(p))
            .collect::<Result<Vec<_>>>()?;
        let mut report = ImportReport {
            sources: sources.clone(),
            ..ImportReport::default()
        };
        let mut applying = Applying::default();
        let mut seen_links = HashSet::new();
        let durability = if options.sync || self.write_session.is_none() {
            Durability::BeforeCommit
        } else {
            Durability::AfterCommit
        };
        let imported = std::thread::scope(|scope| {
            let pool = PreparePool::start(scope, self, crate::prepare_pool::workers(), durability);
            for source in &sources {
                tracing::info!(path = %source.path.display(), layout = source.layout.as_str(), "importing");
                let mut importer = Importer {
                    store: self,
                    options,
                    durability,
                    progress,
                    layout: source.layout,
                    report: &mut report,
                    stack: Vec::new(),
                    queue: Vec::new(),
                    pool: &pool,
                    pool_bytes_reported: 0,
                    applying: &mut applying,
                    seen_links: &mut seen_links,
                };
                Walker { source }.run(&mut importer)?;
                importer.flush()?;
            }
            Ok::<_, ImportError>(())
        });
        if !options.leave_replaced_inodes {
            self.release_unlinked_inodes()?;
        }
        imported?;
        report.replaced_entries = applying.replaced;
        Ok(report)
    }
}

/// Bytes an import of `paths` will read (for a progress bar): regular files that would not be
/// skipped by name, each inode once.
pub fn import_total_bytes(paths: &[PathBuf]) -> Result<u64> {
    struct Count {
        layout: Layout,
        total: u64,
        seen: HashSet<(u64, u64)>,
    }
    impl Visit for Count {
        fn enter_dir(&mut self, _: &[Vec<u8>], _: &Meta) -> StoreResult<bool> {
            Ok(true)
        }
        fn leave_dir(&mut self, _: &[Vec<u8>], _: &Meta) -> StoreResult<()> {
            Ok(())
        }
        fn file(&mut self, rel: &[Vec<u8>], _: &Path, file: FileRef) -> StoreResult<()> {
            if classify(self.layout, rel) != Claim::Partial
                && (file.meta.nlink <= 1 || self.seen.insert((file.meta.dev, file.meta.ino)))
            {
                self.total += file.meta.size;
            }
            Ok(())
        }
        fn symlink(&mut self, _: &[Vec<u8>], _: &Path, _: &Meta, _: Vec<u8>) -> StoreResult<()> {
            Ok(())
        }
        fn skip(&mut self, _: &Path, _: String) {}
        fn warn(&mut self, _: &Path, _: String) {}
    }
    let mut total = 0;
    let mut seen = HashSet::new();
    for path in paths {
        let source = recognise(path)?;
        let mut count = Count {
            layout: source.layout,
            total: 0,
            seen: std::mem::take(&mut seen),
        };
        Walker { source: &source }.run(&mut count)?;
        total += count.total;
        seen = count.seen;
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// Scan.

/// One model as a scan sees it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScanModel {
    pub layout: String,
    /// `org/name` (`datasets/org/name` for datasets) or `host/namespace/model`.
    pub name: String,
    /// Commit in `refs/main`, or the Ollama tag.
    pub revision: String,
    pub files: u64,
    pub logical_bytes: u64,
    /// Bytes of the model's distinct chunks the store does not already hold.
    pub deduped_bytes: u64,
    /// Of those, bytes no other scanned model (or other scanned file) shares: what this model
    /// alone adds.
    pub unique_bytes: u64,
    pub saved_bytes: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScanReport {
    pub sources: Vec<Source>,
    pub files: u64,
    /// Sum of the sizes of the scanned files (each inode once).
    pub logical_bytes: u64,
    /// Bytes an import would append: distinct chunks, minus those already in the store.
    pub deduped_bytes: u64,
    pub saved_bytes: u64,
    pub saved_percent: f64,
    /// Bytes of distinct chunks the store already holds.
    pub already_stored_bytes: u64,
    /// Whether the scan compared against an existing store.
    pub compared_with_store: bool,
    /// Distinct chunks in the scanned files.
    pub chunks: u64,
    pub models: Vec<ScanModel>,
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<Warning>,
}

struct ScannedFile {
    source: usize,
    rel: Vec<Vec<u8>>,
    size: u64,
    /// Index into `Scanner::contents`; files sharing an inode share the entry.
    content: usize,
}

struct Scanner<'a> {
    config: ChunkerConfig,
    progress: &'a dyn Fn(u64),
    source: usize,
    layout: Layout,
    files: Vec<ScannedFile>,
    /// Size and chunks of each distinct inode scanned.
    contents: Vec<(u64, Vec<(ChunkHash, u32)>)>,
    by_inode: HashMap<(u64, u64), usize>,
    /// Small files whose bytes the model grouping needs (manifests, refs/main).
    small: HashMap<(usize, Vec<Vec<u8>>), Vec<u8>>,
    skipped: Vec<Skipped>,
    warnings: Vec<Warning>,
}

impl Visit for Scanner<'_> {
    fn enter_dir(&mut self, _: &[Vec<u8>], _: &Meta) -> StoreResult<bool> {
        Ok(true)
    }
    fn leave_dir(&mut self, _: &[Vec<u8>], _: &Meta) -> StoreResult<()> {
        Ok(())
    }
    fn file(&mut self, rel: &[Vec<u8>], path: &Path, file: FileRef) -> StoreResult<()> {
        let shown = path.display().to_string();
        let meta = file.meta;
        let claim = classify(self.layout, rel);
        if claim == Claim::Partial {
            self.skipped.push(Skipped {
                path: shown,
                reason: "partial download".into(),
            });
            return Ok(());
        }
        let key = (meta.dev, meta.ino);
        if let Some(&content) = self.by_inode.get(&key) {
            self.files.push(ScannedFile {
                source: self.source,
                rel: rel.to_vec(),
                size: 0,
                content,
            });
            return Ok(());
        }
        let data = match file.open().and_then(|f| {
            MappedFile::from_file(&f, path).map_err(|e| std::io::Error::other(e.to_string()))
        }) {
            Ok(d) => d,
            Err(e) => {
                (self.progress)(meta.size);
                self.skipped.push(Skipped {
                    path: shown,
                    reason: format!("unreadable: {e}"),
                });
                return Ok(());
            }
        };
        let config = self.config;
        // SHA-256 of claimed blobs runs on the second core while the first chunks.
        let (chunks, sha) = std::thread::scope(|s| {
            let sha =
                matches!(claim, Claim::Sha256(_)).then(|| s.spawn(|| crate::ingest::sha256(&data)));
            let chunks = Store::chunk_hashes(&data, &config);
            let sha = sha.map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
            (chunks, sha)
        });
        (self.progress)(meta.size);
        if let Err(StoreError::SourceChanged { what, .. }) = data.check_unchanged() {
            self.skipped.push(Skipped {
                path: shown,
                reason: format!("{what}; scan it again"),
            });
            return Ok(());
        }
        let mut warnings = Vec::new();
        if let Err(reason) = check_claim(claim, &data, sha, &mut |m| warnings.push(m)) {
            self.skipped.push(Skipped {
                path: shown,
                reason,
            });
            return Ok(());
        }
        let small = is_manifest(self.layout, rel)
            || (self.layout == Layout::Hf
                && rel.len() == 3
                && rel[1] == b"refs"
                && rel[2] == b"main");
        if small && data.len() <= 1 << 20 {
            self.small
                .insert((self.source, rel.to_vec()), data.to_vec());
        }
        if is_manifest(self.layout, rel) {
            if let Err(e) = parse_ollama_manifest(&data) {
                warnings.push(format!(
                    "not a valid Ollama manifest ({e}); would be imported as a plain file"
                ));
            }
        }
        for message in warnings {
            self.warnings.push(Warning {
                path: shown.clone(),
                message,
            });
        }
        let content = self.contents.len();
        self.contents.push((meta.size, chunks));
        if meta.nlink > 1 {
            self.by_inode.insert(key, content);
        }
        self.files.push(ScannedFile {
            source: self.source,
            rel: rel.to_vec(),
            size: meta.size,
            content,
        });
        Ok(())
    }
    fn symlink(&mut self, _: &[Vec<u8>], _: &Path, _: &Meta, _: Vec<u8>) -> StoreResult<()> {
        Ok(())
    }
    fn skip(&mut self, path: &Path, reason: String) {
        self.skipped.push(Skipped {
            path: path.display().to_string(),
            reason,
        });
    }
    fn warn(&mut self, path: &Path, message: String) {
        self.warnings.push(Warning {
            path: path.display().to_string(),
            message,
        });
    }
}

/// Dry run of an import: chunks every file of `paths` and reports logical and deduplicated
/// bytes per model and in total. Writes nothing; if `store_dir` holds a catalog, chunks already
/// stored there are not counted as new (the catalog is opened read-only).
pub fn scan(
    paths: &[PathBuf],
    store_dir: Option<&Path>,
    progress: &dyn Fn(u64),
) -> Result<ScanReport> {
    let sources = paths
        .iter()
        .map(|p| recognise(p))
        .collect::<Result<Vec<_>>>()?;
    let mut scanner = Scanner {
        config: crate::StoreOptions::from_env().chunker,
        progress,
        source: 0,
        layout: Layout::Hf,
        files: Vec::new(),
        contents: Vec::new(),
        by_inode: HashMap::new(),
        small: HashMap::new(),
        skipped: Vec::new(),
        warnings: Vec::new(),
    };
    for (i, source) in sources.iter().enumerate() {
        scanner.source = i;
        scanner.layout = source.layout;
        Walker { source }.run(&mut scanner)?;
    }

    // Distinct chunks, and which of them the store already holds.
    let mut distinct: HashMap<ChunkHash, u32> = HashMap::new();
    for (_, chunks) in &scanner.contents {
        for (hash, len) in chunks {
            distinct.insert(*hash, *len);
        }
    }
    let mut in_store: HashSet<ChunkHash> = HashSet::new();
    let mut compared = false;
    if let Some(dir) = store_dir {
        let db = dir.join("catalog.db");
        if db.is_file() {
            match stored_chunks(&db, distinct.keys()) {
                Ok(found) => {
                    in_store = found;
                    compared = true;
                }
                Err(e) => scanner.warnings.push(Warning {
                    path: db.display().to_string(),
                    message: format!("cannot read the store's catalog ({e}); compared within the scanned paths only"),
                }),
            }
        }
    }

    // Models: HF repo folders; Ollama manifests with the blobs they name.
    let mut model_index: HashMap<(Layout, String, String), usize> = HashMap::new();
    let mut models: Vec<(ScanModel, Vec<usize>)> = Vec::new();
    let mut add = |layout: Layout, name: String, revision: String, file: usize| {
        let idx = *model_index
            .entry((layout, name.clone(), revision.clone()))
            .or_insert_with(|| {
                models.push((
                    ScanModel {
                        layout: layout.as_str().into(),
                        name,
                        revision,
                        ..ScanModel::default()
                    },
                    Vec::new(),
                ));
                models.len() - 1
            });
        models[idx].1.push(file);
    };
    let mut file_by_rel: HashMap<(usize, &[Vec<u8>]), usize> = HashMap::new();
    for (i, f) in scanner.files.iter().enumerate() {
        file_by_rel.insert((f.source, f.rel.as_slice()), i);
    }
    for (i, f) in scanner.files.iter().enumerate() {
        match sources[f.source].layout {
            Layout::Hf => {
                let Some(folder) = f.rel.first().filter(|n| is_repo_folder(n)) else {
                    continue;
                };
                let folder = lossy(folder);
                let (kind, rest) = folder.split_once("--").unwrap_or(("models", &folder));
                let name = rest.replacen("--", "/", 1);
                let name = if kind == "models" {
                    name
                } else {
                    format!("{kind}/{name}")
                };
                let refs_main = vec![f.rel[0].clone(), b"refs".to_vec(), b"main".to_vec()];
                let revision = scanner
                    .small
                    .get(&(f.source, refs_main))
                    .map(|b| lossy(b).trim().to_string())
                    .unwrap_or_default();
                add(Layout::Hf, name, revision, i);
            }
            Layout::Ollama => {
                if !is_manifest(Layout::Ollama, &f.rel) || f.rel.len() != 5 {
                    continue;
                }
                let Some(bytes) = scanner.small.get(&(f.source, f.rel.clone())) else {
                    continue;
                };
                let Ok(manifest) = parse_ollama_manifest(bytes) else {
                    continue;
                };
                let name = f.rel[1..4]
                    .iter()
                    .map(|p| lossy(p))
                    .collect::<Vec<_>>()
                    .join("/");
                let tag = lossy(&f.rel[4]);
                add(Layout::Ollama, name.clone(), tag.clone(), i);
                for digest in manifest
                    .config
                    .iter()
                    .chain(manifest.layers.iter().map(|l| &l.0))
                {
                    let blob = vec![b"blobs".to_vec(), format!("sha256-{digest}").into_bytes()];
                    if let Some(&j) = file_by_rel.get(&(f.source, blob.as_slice())) {
                        add(Layout::Ollama, name.clone(), tag.clone(), j);
                    }
                }
            }
        }
    }

    // Owners of each chunk: every model using it, plus one for files outside any model.
    let mut in_model = vec![false; scanner.files.len()];
    let mut owners: HashMap<ChunkHash, u32> = HashMap::new();
    let mut model_chunks: Vec<HashMap<ChunkHash, u32>> = Vec::new();
    for (_, files) in &mut models {
        files.sort_unstable();
        files.dedup();
        let mut set = HashMap::new();
        for &f in files.iter() {
            in_model[f] = true;
            for (hash, len) in &scanner.contents[scanner.files[f].content].1 {
                set.insert(*hash, *len);
            }
        }
        for hash in set.keys() {
            *owners.entry(*hash).or_default() += 1;
        }
        model_chunks.push(set);
    }
    let mut outside = HashSet::new();
    for (f, file) in scanner.files.iter().enumerate() {
        if !in_model[f] {
            outside.extend(scanner.contents[file.content].1.iter().map(|(h, _)| *h));
        }
    }
    for hash in outside {
        *owners.entry(hash).or_default() += 1;
    }
    let mut out_models = Vec::with_capacity(models.len());
    for ((mut model, files), set) in models.into_iter().zip(model_chunks) {
        let mut inodes = HashSet::new();
        for &f in &files {
            let file = &scanner.files[f];
            model.files += 1;
            if inodes.insert(file.content) {
                model.logical_bytes += scanner.contents[file.content].0;
            }
        }
        for (hash, len) in &set {
            if in_store.contains(hash) {
                continue;
            }
            model.deduped_bytes += u64::from(*len);
            if owners.get(hash) == Some(&1) {
                model.unique_bytes += u64::from(*len);
            }
        }
        model.saved_bytes = model.logical_bytes.saturating_sub(model.deduped_bytes);
        out_models.push(model);
    }
    out_models
        .sort_by(|a, b| (&a.layout, &a.name, &a.revision).cmp(&(&b.layout, &b.name, &b.revision)));

    let logical_bytes: u64 = scanner.files.iter().map(|f| f.size).sum();
    let mut deduped_bytes = 0;
    let mut already_stored_bytes = 0;
    for (hash, len) in &distinct {
        if in_store.contains(hash) {
            already_stored_bytes += u64::from(*len);
        } else {
            deduped_bytes += u64::from(*len);
        }
    }
    let saved_bytes = logical_bytes.saturating_sub(deduped_bytes);
    Ok(ScanReport {
        sources,
        files: scanner.files.len() as u64,
        logical_bytes,
        deduped_bytes,
        saved_bytes,
        saved_percent: percent(saved_bytes, logical_bytes),
        already_stored_bytes,
        compared_with_store: compared,
        chunks: distinct.len() as u64,
        models: out_models,
        skipped: scanner.skipped,
        warnings: scanner.warnings,
    })
}

/// Which of `hashes` the catalog at `db` holds, without writing anything: a catalog that was
/// closed cleanly (no `-wal` file) is opened `immutable`, so SQLite creates no `-wal`/`-shm`
/// next to it; one in use goes through [`Catalog::open_read_only`].
fn stored_chunks<'a>(
    db: &Path,
    hashes: impl Iterator<Item = &'a ChunkHash>,
) -> StoreResult<HashSet<ChunkHash>> {
    let mut found = HashSet::new();
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    if Path::new(&wal).exists() {
        let catalog = Catalog::open_read_only(db)?;
        catalog.read(|tx| {
            for hash in hashes {
                if tx.chunk_location(hash)?.is_some() {
                    found.insert(*hash);
                }
            }
            Ok(())
        })?;
        return Ok(found);
    }
    let mut uri = b"file:".to_vec();
    for &b in db.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            uri.push(b);
        } else {
            uri.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    uri.extend_from_slice(b"?immutable=1");
    let uri = String::from_utf8(uri).expect("percent-encoded URI is ASCII");
    let conn = rusqlite::Connection::open_with_flags(
        uri,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_URI
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > crate::catalog::SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported: crate::catalog::SCHEMA_VERSION,
        });
    }
    let mut stmt = conn.prepare("SELECT 1 FROM chunks WHERE hash = ?1")?;
    for hash in hashes {
        if stmt.exists([&hash[..]])? {
            found.insert(*hash);
        }
    }
    Ok(found)
}

/// `part / whole` in percent with one decimal (0 when `whole` is 0).
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 * 1000.0 / whole as f64).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::testgen::{make_gguf, make_safetensors, noise};
    use crate::StoreOptions;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn sha_hex(data: &[u8]) -> String {
        hex::encode(crate::ingest::sha256(data))
    }

    fn tensor(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    fn weights(seed: u8) -> Vec<u8> {
        make_safetensors(&[
            ("a.weight", "F16", vec![64, 512], tensor(seed, 65536)),
            (
                "b.weight",
                "F16",
                vec![64, 512],
                tensor(seed.wrapping_add(1), 65536),
            ),
        ])
    }

    fn gguf(seed: u8) -> Vec<u8> {
        make_gguf(&[], &[("tok", 1, vec![1024, 32], tensor(seed, 65536))])
    }

    fn write(path: &Path, data: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    /// A hub cache with one repo: an LFS blob, a git blob, refs/main, snapshot symlinks.
    fn make_hub(root: &Path, repo: &str, seed: u8) -> (Vec<u8>, String) {
        let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
        let w = weights(seed);
        let etag = sha_hex(&w);
        write(&repo_dir.join("blobs").join(&etag), &w);
        let config = br#"{"model_type": "llama"}"#.to_vec();
        let git = hex::encode(git_blob_sha1(&config));
        write(&repo_dir.join("blobs").join(&git), &config);
        write(&repo_dir.join("refs/main"), COMMIT.as_bytes());
        let snap = repo_dir.join("snapshots").join(COMMIT);
        std::fs::create_dir_all(snap.join("sub")).unwrap();
        symlink(
            format!("../../blobs/{etag}"),
            snap.join("model.safetensors"),
        )
        .unwrap();
        symlink(format!("../../blobs/{git}"), snap.join("config.json")).unwrap();
        symlink(
            format!("../../../blobs/{git}"),
            snap.join("sub/config.json"),
        )
        .unwrap();
        std::fs::set_permissions(
            repo_dir.join("refs/main"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        (w, etag)
    }

    /// An Ollama models dir with one model (config blob + GGUF layer + manifest).
    fn make_ollama(root: &Path, seed: u8) -> Vec<u8> {
        let model = gguf(seed);
        let config = br#"{"model_format":"gguf","architecture":"amd64","os":"linux"}"#.to_vec();
        let (m, c) = (sha_hex(&model), sha_hex(&config));
        write(&root.join(format!("blobs/sha256-{m}")), &model);
        write(&root.join(format!("blobs/sha256-{c}")), &config);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{m}","size":{}}}]}}"#,
            config.len(),
            model.len()
        );
        write(
            &root.join("manifests/registry.ollama.ai/library/tiny/latest"),
            manifest.as_bytes(),
        );
        model
    }

    fn open_store(dir: &Path) -> Store {
        Store::open(
            dir,
            StoreOptions {
                chunker: ChunkerConfig::with_avg(4096),
                ..StoreOptions::default()
            },
        )
        .unwrap()
    }

    fn ns_read(store: &Store, path: &str) -> Option<Vec<u8>> {
        let inode = store.catalog().read(|tx| {
            let Some(ino) = tx.resolve_path_follow(path)? else {
                return Ok(None);
            };
            tx.inode(ino)
        });
        let inode = inode.unwrap()?;
        assert_eq!(inode.kind, NodeKind::File, "{path}");
        let mut buf = vec![0u8; inode.size as usize];
        if let Some(content) = inode.content {
            let map = store.catalog().read(|tx| tx.content_map(content)).unwrap();
            let n = store.read(&map, 0, &mut buf).unwrap();
            assert_eq!(n, buf.len());
        }
        Some(buf)
    }

    fn ns_inode(store: &Store, path: &str) -> Option<Inode> {
        store
            .catalog()
            .read(|tx| match tx.resolve_path(path)? {
                Some(ino) => tx.inode(ino),
                None => Ok(None),
            })
            .unwrap()
    }

    /// Every regular file and symlink under `src` is in the namespace under `ns` with the same
    /// bytes / target and attributes.
    fn assert_mirrors(store: &Store, src: &Path, ns: &str) {
        for entry in std::fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let (path, nspath) = (entry.path(), format!("{ns}/{name}"));
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let inode = ns_inode(store, &nspath).unwrap_or_else(|| panic!("{nspath} missing"));
            assert_eq!(inode.perm, meta.mode() & 0o7777, "{nspath}");
            assert_eq!(inode.uid, meta.uid());
            assert_eq!(
                inode.mtime,
                meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                "{nspath}"
            );
            if meta.is_dir() {
                assert_eq!(inode.kind, NodeKind::Dir);
                assert_mirrors(store, &path, &nspath);
            } else if meta.file_type().is_symlink() {
                assert_eq!(inode.kind, NodeKind::Symlink);
                let target = std::fs::read_link(&path).unwrap();
                assert_eq!(inode.target.unwrap(), target.as_os_str().as_bytes());
                // The link resolves inside the namespace to the same bytes.
                assert_eq!(
                    ns_read(store, &nspath).unwrap(),
                    std::fs::read(&path).unwrap()
                );
            } else {
                assert_eq!(inode.size, meta.len());
                assert_eq!(
                    ns_read(store, &nspath).unwrap(),
                    std::fs::read(&path).unwrap(),
                    "{nspath}"
                );
            }
        }
    }

    fn skipped_reason<'a>(report: &'a ImportReport, ends_with: &str) -> Option<&'a str> {
        report
            .skipped
            .iter()
            .find(|s| s.path.ends_with(ends_with))
            .map(|s| s.reason.as_str())
    }

    #[test]
    fn round_trip_hf_and_ollama() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        make_hub(&hub, "org/base", 1);
        make_hub(&hub, "org/other", 2);
        std::fs::write(
            hub.join("CACHEDIR.TAG"),
            b"Signature: 8a477f597d28d172789f06886806bc55",
        )
        .unwrap();
        let ollama = tmp.path().join("ollama");
        make_ollama(&ollama, 3);
        let store = open_store(&tmp.path().join("store"));
        let read = std::cell::Cell::new(0u64);
        let report = store
            .import(&[hub.clone(), ollama.clone()], &|n| {
                read.set(read.get() + n)
            })
            .unwrap();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert_eq!(report.files, 2 * 3 + 1 + 3);
        assert_eq!(report.symlinks, 2 * 3);
        assert_eq!(read.get(), report.bytes);
        assert_eq!(
            import_total_bytes(&[hub.clone(), ollama.clone()]).unwrap(),
            report.bytes
        );
        assert!(report.new_bytes > 0 && report.new_bytes <= report.bytes);
        assert_mirrors(&store, &hub, HF_ROOT);
        assert_mirrors(&store, &ollama, OLLAMA_ROOT);
        // refs/main stays exactly 40 bytes.
        let main = ns_read(&store, &format!("{HF_ROOT}/models--org--base/refs/main")).unwrap();
        assert_eq!(main, COMMIT.as_bytes());
        let models = store.refresh_models().unwrap();
        assert_eq!(models.len(), 3, "{models:?}");
    }

    #[test]
    fn second_import_adds_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        make_hub(&hub, "org/base", 1);
        let ollama = tmp.path().join("ollama");
        make_ollama(&ollama, 3);
        std::fs::write(
            hub.join("models--org--base/notes.txt"),
            b"plain file, no digest name",
        )
        .unwrap();
        let store = open_store(&tmp.path().join("store"));
        let paths = [hub.clone(), ollama.clone()];
        let first = store.import(&paths, &|_| {}).unwrap();
        let totals = store.catalog().read(|tx| tx.totals()).unwrap();
        let second = store.import(&paths, &|_| {}).unwrap();
        assert_eq!(second.new_bytes, 0);
        assert_eq!(second.files, first.files);
        assert_eq!(second.symlinks, first.symlinks);
        assert!(second.already_stored_bytes > 0);
        let again = store.catalog().read(|tx| tx.totals()).unwrap();
        assert_eq!(again.physical_bytes, totals.physical_bytes);
        assert_eq!(again.logical_bytes, totals.logical_bytes);
        assert_eq!(again.files, totals.files);
        assert_eq!(again.chunks, totals.chunks);
        // A single repo folder lands in the same place.
        let third = store
            .import(&[hub.join("models--org--base")], &|_| {})
            .unwrap();
        assert_eq!(third.new_bytes, 0);
        assert_eq!(
            third.sources[0].namespace,
            format!("{HF_ROOT}/models--org--base")
        );
        assert_eq!(
            store.catalog().read(|tx| tx.totals()).unwrap().files,
            totals.files
        );
        assert_mirrors(&store, &hub, HF_ROOT);
    }

    /// New data imported by a later session (which starts a new pack) reads back and verifies.
    #[test]
    fn import_in_a_second_session_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let (hub1, hub2) = (tmp.path().join("hub1"), tmp.path().join("hub2"));
        make_hub(&hub1, "org/one", 1);
        make_hub(&hub2, "org/two", 7);
        let dir = tmp.path().join("store");
        open_store(&dir)
            .import(std::slice::from_ref(&hub1), &|_| {})
            .unwrap();
        let store = open_store(&dir);
        let report = store.import(std::slice::from_ref(&hub2), &|_| {}).unwrap();
        assert!(report.new_bytes > 0);
        assert_mirrors(&store, &hub2, HF_ROOT);
        assert_mirrors(&store, &hub1, HF_ROOT);
        let verify = store.verify(&|_| {}).unwrap();
        assert!(verify.ok, "{:?}", verify.damaged);
    }

    #[test]
    fn unchanged_blobs_are_not_reread_but_touched_ones_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        let (w, etag) = make_hub(&hub, "org/base", 1);
        let store = open_store(&tmp.path().join("store"));
        store.import(std::slice::from_ref(&hub), &|_| {}).unwrap();
        let blob = hub.join(format!("models--org--base/blobs/{etag}"));
        // Unreadable now, but unchanged (same size and mtime): not re-read, not skipped.
        let kept = std::fs::read(&blob).unwrap();
        std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o000)).unwrap();
        let report = store.import(std::slice::from_ref(&hub), &|_| {}).unwrap();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert!(report.already_stored_bytes >= w.len() as u64);
        std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Rewritten with other bytes (new mtime): by default the stored content, which hashes
        // to the name, is attached without reading the source...
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&blob, weights(50)).unwrap();
        let report = store.import(std::slice::from_ref(&hub), &|_| {}).unwrap();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert!(report.unread_bytes >= w.len() as u64);
        let in_store = format!("{HF_ROOT}/models--org--base/blobs/{etag}");
        assert_eq!(ns_read(&store, &in_store).unwrap(), kept);
        // ...and with verify_sources the source is hashed and its lie skipped.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&blob, weights(51)).unwrap();
        let verify = ImportOptions {
            verify_sources: true,
            ..ImportOptions::default()
        };
        let report = store
            .import_with(std::slice::from_ref(&hub), verify, &|_| {})
            .unwrap();
        assert!(skipped_reason(&report, &etag).unwrap().contains("SHA-256"));
        assert_eq!(report.unread_bytes, 0);
        assert_eq!(ns_read(&store, &in_store).unwrap(), kept);
    }

    #[test]
    fn stored_digests_are_attached_without_reading_the_source() {
        let tmp = tempfile::tempdir().unwrap();
        let (hub_a, hub_b) = (tmp.path().join("a"), tmp.path().join("b"));
        let (w, etag) = make_hub(&hub_a, "org/base", 1);
        make_hub(&hub_b, "org/copy", 1);
        let store = open_store(&tmp.path().join("store"));
        store.import(std::slice::from_ref(&hub_a), &|_| {}).unwrap();
        // The same name under another repo, with damaged bytes: the stored content (which does
        // hash to the name) is attached; the source is never read, so the damage goes unseen.
        let blob = hub_b.join(format!("models--org--copy/blobs/{etag}"));
        let mut damaged = w.clone();
        damaged[7] ^= 0x40;
        std::fs::write(&blob, &damaged).unwrap();
        let report = store.import(std::slice::from_ref(&hub_b), &|_| {}).unwrap();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert_eq!(report.new_bytes, 0);
        assert!(report.unread_bytes >= w.len() as u64);
        let copy = format!("{HF_ROOT}/models--org--copy/blobs/{etag}");
        assert_eq!(ns_read(&store, &copy).unwrap(), w);
        // Asked to verify sources, the damaged copy is hashed and skipped.
        let store2 = open_store(&tmp.path().join("store2"));
        store2
            .import(std::slice::from_ref(&hub_a), &|_| {})
            .unwrap();
        let verify = ImportOptions {
            verify_sources: true,
            ..ImportOptions::default()
        };
        let report = store2
            .import_with(std::slice::from_ref(&hub_b), verify, &|_| {})
            .unwrap();
        assert!(skipped_reason(&report, &etag).unwrap().contains("SHA-256"));
        assert_eq!(report.unread_bytes, 0);
    }

    #[test]
    fn changed_file_replaces_content() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        make_hub(&hub, "org/base", 1);
        let store = open_store(&tmp.path().join("store"));
        store.import(std::slice::from_ref(&hub), &|_| {}).unwrap();
        let main = hub.join("models--org--base/refs/main");
        let newer = "fedcba9876543210fedcba9876543210fedcba98";
        std::fs::write(&main, newer).unwrap();
        store.import(std::slice::from_ref(&hub), &|_| {}).unwrap();
        assert_eq!(
            ns_read(&store, &format!("{HF_ROOT}/models--org--base/refs/main")).unwrap(),
            newer.as_bytes()
        );
        assert_eq!(store.catalog().read(|tx| tx.totals()).unwrap().files, 3);
    }

    #[test]
    fn hostile_symlinks_are_skipped_and_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("secret.bin");
        std::fs::write(&secret, b"outside the tree").unwrap();
        let hub = tmp.path().join("hub");
        make_hub(&hub, "org/base", 1);
        let snap = hub.join("models--org--base/snapshots").join(COMMIT);
        symlink("../../../../secret.bin", snap.join("escape")).unwrap();
        symlink(&secret, snap.join("absolute")).unwrap();
        symlink("sub/../../../../../secret.bin", snap.join("zigzag")).unwrap();
        symlink("..", hub.join("models--org--base/up")).unwrap();
        symlink("up/../..", snap.join("through_link")).unwrap();
        // An absolute target inside the tree is kept, made relative.
        let blob = std::fs::read_dir(hub.join("models--org--base/blobs"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        symlink(&blob, snap.join("abs_inside")).unwrap();
        // A directory symlink pointing outside must not be walked into.
        symlink(tmp.path(), hub.join("models--org--base/outside_dir")).unwrap();

        let store = open_store(&tmp.path().join("store"));
        let report = store.import(std::slice::from_ref(&hub), &|_| {}).unwrap();
        for name in [
            "escape",
            "absolute",
            "zigzag",
            "through_link",
            "outside_dir",
        ] {
            let reason = skipped_reason(&report, name)
                .unwrap_or_else(|| panic!("{name} not skipped: {report:?}"));
            assert!(reason.contains("not followed"), "{name}: {reason}");
        }
        for name in ["escape", "absolute", "zigzag", "through_link"] {
            assert!(ns_inode(
                &store,
                &format!("{HF_ROOT}/models--org--base/snapshots/{COMMIT}/{name}")
            )
            .is_none());
        }
        assert!(ns_inode(&store, &format!("{HF_ROOT}/models--org--base/outside_dir")).is_none());
        // `up -> ..` stays inside and is kept.
        assert!(ns_inode(&store, &format!("{HF_ROOT}/models--org--base/up")).is_some());
        let inside = ns_inode(
            &store,
            &format!("{HF_ROOT}/models--org--base/snapshots/{COMMIT}/abs_inside"),
        )
        .unwrap();
        let etag = blob.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            inside.target.unwrap(),
            format!("../../../models--org--base/blobs/{etag}").into_bytes()
        );
        assert_eq!(
            ns_read(
                &store,
                &format!("{HF_ROOT}/models--org--base/snapshots/{COMMIT}/abs_inside")
            )
            .unwrap(),
            std::fs::read(&blob).unwrap()
        );
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        // No byte of the secret entered the store.
        let totals = store.catalog().read(|tx| tx.totals()).unwrap();
        let expected = import_total_bytes(std::slice::from_ref(&hub)).unwrap();
        assert_eq!(report.bytes, expected);
        assert!(store
            .catalog()
            .read(|tx| tx.content_by_sha256(&crate::ingest::sha256(b"outside the tree"), 16))
            .unwrap()
            .is_none());
        assert!(totals.files > 0);
    }

    #[test]
    fn symlink_target_rules() {
        let roots = [Path::new("/data/hub")];
        let ok = |d, t: &str| check_symlink_target(d, t.as_bytes(), &roots);
        assert_eq!(ok(2, "../../blobs/abc"), Ok(SymlinkTarget::Kept));
        assert_eq!(ok(3, "../../../blobs/abc"), Ok(SymlinkTarget::Kept));
        assert_eq!(ok(0, "blobs/./abc"), Ok(SymlinkTarget::Kept));
        assert!(ok(2, "../../../x").is_err());
        assert!(ok(0, "..").is_err());
        assert!(ok(1, "a/../..").is_err());
        assert!(ok(1, "a/../b").is_err());
        assert!(ok(1, "").is_err());
        assert!(ok(1, "/etc/passwd").is_err());
        assert!(ok(1, "/data/hub/../etc").is_err());
        assert!(ok(1, "/data/hubx/y").is_err());
        assert_eq!(
            ok(2, "/data/hub/m/blobs/x"),
            Ok(SymlinkTarget::Rewritten(b"../../m/blobs/x".to_vec()))
        );
        assert_eq!(
            ok(0, "/data/hub"),
            Ok(SymlinkTarget::Rewritten(b".".to_vec()))
        );
    }

    #[test]
    fn names_the_namespace_cannot_hold() {
        assert!(valid_name(b"model.safetensors"));
        assert!(!valid_name(b""));
        assert!(!valid_name(b"."));
        assert!(!valid_name(b".."));
        assert!(!valid_name(b"a/b"));
        assert!(!valid_name(b"a\0b"));
        assert!(!valid_name(&[b'x'; 256]));
        assert!(valid_name(&[b'x'; 255]));
    }

    #[test]
    fn mismatched_digests_partials_and_specials_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        make_hub(&hub, "org/base", 1);
        let liar = "ab".repeat(32);
        write(
            &hub.join(format!("models--org--base/blobs/{liar}")),
            b"not what the name says",
        );
        let liar_git = "cd".repeat(20);
        write(
            &hub.join(format!("models--org--base/blobs/{liar_git}")),
            b"small git file",
        );
        let ollama = tmp.path().join("ollama");
        make_ollama(&ollama, 3);
        let olliar = "ef".repeat(32);
        write(
            &ollama.join(format!("blobs/sha256-{olliar}")),
            b"lying ollama blob",
        );
        write(
            &ollama.join(format!("blobs/sha256-{olliar}-partial")),
            b"half",
        );
        write(
            &ollama.join(format!("blobs/sha256-{olliar}-partial-0")),
            b"{}",
        );
        let hf_partial = format!("models--org--base/blobs/{}.incomplete", "ab".repeat(32));
        write(&hub.join(&hf_partial), b"half a download");
        let hf_partial_new = format!(
            "models--org--base/blobs/{}.0123abcd.incomplete",
            "cd".repeat(32)
        );
        write(&hub.join(&hf_partial_new), b"another half");
        write(
            &ollama.join("manifests/registry.ollama.ai/library/broken/latest"),
            b"{not json",
        );
        // A blob named like one the store will already hold, with other bytes of the same
        // length: the stored content, which does hash to the name, is attached unread.
        let (w, etag) = make_hub(&tmp.path().join("unused"), "org/x", 1);
        write(
            &hub.join(format!("models--org--zzz/blobs/{etag}")),
            &weights(99),
        );
        let fifo = CString::new(hub.join("models--org--base/pipe").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

        let store = open_store(&tmp.path().join("store"));
        let report = store
            .import(&[hub.clone(), ollama.clone()], &|_| {})
            .unwrap();
        assert!(skipped_reason(&report, &liar).unwrap().contains("SHA-256"));
        assert!(skipped_reason(&report, &format!("sha256-{olliar}"))
            .unwrap()
            .contains("SHA-256"));
        assert_eq!(
            skipped_reason(&report, &format!("sha256-{olliar}-partial")),
            Some("partial download")
        );
        assert_eq!(
            skipped_reason(&report, &format!("sha256-{olliar}-partial-0")),
            Some("partial download")
        );
        for partial in [&hf_partial, &hf_partial_new] {
            assert_eq!(skipped_reason(&report, partial), Some("partial download"));
            assert!(ns_inode(&store, &format!("{HF_ROOT}/{partial}")).is_none());
        }
        assert!(skipped_reason(&report, "pipe").unwrap().contains("fifo"));
        assert_eq!(
            skipped_reason(&report, &format!("models--org--zzz/blobs/{etag}")),
            None
        );
        assert_eq!(
            ns_read(&store, &format!("{HF_ROOT}/models--org--zzz/blobs/{etag}")).unwrap(),
            w
        );
        assert_eq!(report.skipped.len(), 7, "{:?}", report.skipped);
        assert!(ns_inode(&store, &format!("{HF_ROOT}/models--org--base/blobs/{liar}")).is_none());
        assert!(ns_inode(&store, &format!("{OLLAMA_ROOT}/blobs/sha256-{olliar}")).is_none());
        // Warnings: the git blob whose name does not match, and the broken manifest (imported).
        assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
        assert!(ns_read(
            &store,
            &format!("{OLLAMA_ROOT}/manifests/registry.ollama.ai/library/broken/latest")
        )
        .is_some());
        assert!(ns_read(
            &store,
            &format!("{HF_ROOT}/models--org--base/blobs/{liar_git}")
        )
        .is_some());
        // Everything else made it.
        assert_mirrors(
            &store,
            &ollama.join("manifests"),
            &format!("{OLLAMA_ROOT}/manifests"),
        );
    }

    #[test]
    fn unreadable_files_are_skipped() {
        if unsafe { libc::geteuid() } == 0 {
            return; // root reads anything; the CLI tests cover the message
        }
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        make_hub(&hub, "org/base", 1);
        let locked = hub.join("models--org--base/locked.txt");
        std::fs::write(&locked, b"secret").unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        let store = open_store(&tmp.path().join("store"));
        let report = store.import(std::slice::from_ref(&hub), &|_| {}).unwrap();
        assert!(skipped_reason(&report, "locked.txt")
            .unwrap()
            .starts_with("unreadable"));
    }

    /// Big files go to the import's workers, several at once: files sharing chunks still
    /// store each chunk once, a wrong digest among them is still caught, and a hard link
    /// queued behind its file still finds it.
    #[test]
    fn files_prepared_at_once_share_chunks_and_keep_their_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        let big = |seeds: &[u8]| {
            let tensors: Vec<_> = seeds
                .iter()
                .enumerate()
                .map(|(i, &seed)| {
                    (
                        ["a.weight", "b.weight", "c.weight"][i],
                        "F16",
                        vec![512, 1024],
                        noise(seed, 1 << 20),
                    )
                })
                .collect();
            make_safetensors(&tensors)
        };
        let base = big(&[10, 11, 12]);
        // Two thirds shared with base, and next to it in walk order: both are in flight at once.
        let tuned = big(&[10, 11, 20]);
        let other = big(&[30, 31, 32]);
        let blob = |repo: &str, data: &[u8], name: &str| {
            let path = hub.join(format!("models--org--{repo}/blobs/{name}"));
            write(&path, data);
            path
        };
        blob("a-base", &base, &sha_hex(&base));
        blob("c-copy", &base, &sha_hex(&base));
        let tuned_path = blob("b-tuned", &tuned, &sha_hex(&tuned));
        std::fs::hard_link(&tuned_path, hub.join("models--org--b-tuned/blobs/again")).unwrap();
        // Named for content the store does not have, holds other: read, and skipped.
        blob("liar", &other, &sha_hex(&big(&[40, 41, 42])));
        let store = Store::open(
            &tmp.path().join("store"),
            StoreOptions {
                chunker: ChunkerConfig::with_avg(64 << 10),
                raw_pack_min_file: 1 << 20,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let read = std::cell::Cell::new(0u64);
        let report = store
            .import(std::slice::from_ref(&hub), &|n| read.set(read.get() + n))
            .unwrap();
        let liar = skipped_reason(&report, &sha_hex(&big(&[40, 41, 42])));
        let truth = format!("content SHA-256 is {}", sha_hex(&other));
        assert!(liar.is_some_and(|r| r.starts_with(&truth)), "{liar:?}");
        assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
        assert_eq!(report.files, 4);
        assert_eq!(report.hardlinks, 1);
        assert_eq!(
            read.get(),
            import_total_bytes(std::slice::from_ref(&hub)).unwrap()
        );
        for (repo, data) in [("a-base", &base), ("c-copy", &base), ("b-tuned", &tuned)] {
            let path = format!("{HF_ROOT}/models--org--{repo}/blobs/{}", sha_hex(data));
            assert!(ns_read(&store, &path).unwrap() == *data, "{path}");
        }
        let a = ns_inode(
            &store,
            &format!("{HF_ROOT}/models--org--b-tuned/blobs/again"),
        )
        .unwrap();
        assert_eq!(a.nlink, 2);
        // Every distinct chunk of base and tuned is stored once.
        let config = store.options.chunker;
        let totals = store.catalog().read(|tx| tx.totals()).unwrap();
        let committed: u64 = [&base, &tuned]
            .iter()
            .flat_map(|d| Store::chunk_hashes(d, &config))
            .collect::<HashMap<_, _>>()
            .values()
            .map(|&len| len as u64)
            .sum();
        assert_eq!(totals.physical_bytes, committed);
        assert_eq!(report.new_bytes, committed);
    }

    /// A name an import gives to something else: reported, and its old inode deleted, unless
    /// the caller (a mounted store's daemon) deletes replaced inodes itself.
    #[test]
    fn replaced_entries_are_reported_and_their_inodes_released() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        let store = open_store(&tmp.path().join("store"));
        for leave in [false, true] {
            let repo = hub.join(format!("models--org--swap-{leave}"));
            write(&repo.join("snapshots/c/weights.bin"), &weights(7));
            store.import(std::slice::from_ref(&hub), &|_| {}).unwrap();
            std::fs::remove_file(repo.join("snapshots/c/weights.bin")).unwrap();
            write(&repo.join("blobs/other"), b"other");
            symlink("../../blobs/other", repo.join("snapshots/c/weights.bin")).unwrap();
            let options = ImportOptions {
                leave_replaced_inodes: leave,
                ..ImportOptions::default()
            };
            let report = store
                .import_with(std::slice::from_ref(&hub), options, &|_| {})
                .unwrap();
            assert_eq!(report.replaced_entries.len(), 1, "{leave}");
            assert_eq!(report.replaced_entries[0].1, b"weights.bin");
            let orphans = store.catalog().read(|tx| tx.orphan_inodes()).unwrap();
            assert_eq!(orphans.len(), usize::from(leave), "{leave}");
            store.release_unlinked_inodes().unwrap();
            std::fs::remove_dir_all(&repo).unwrap();
        }
    }

    #[test]
    fn hard_links_stay_one_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let ollama = tmp.path().join("ollama");
        make_ollama(&ollama, 3);
        std::fs::create_dir_all(ollama.join("blobs/extra")).unwrap();
        let blob = std::fs::read_dir(ollama.join("blobs"))
            .unwrap()
            .flatten()
            .find(|e| e.path().is_file())
            .unwrap()
            .path();
        std::fs::hard_link(&blob, ollama.join("blobs/extra/copy")).unwrap();
        let store = open_store(&tmp.path().join("store"));
        for _ in 0..2 {
            let report = store
                .import(std::slice::from_ref(&ollama), &|_| {})
                .unwrap();
            assert_eq!(report.hardlinks, 1);
            let name = blob.file_name().unwrap().to_str().unwrap();
            let a = ns_inode(&store, &format!("{OLLAMA_ROOT}/blobs/{name}")).unwrap();
            let b = ns_inode(&store, &format!("{OLLAMA_ROOT}/blobs/extra/copy")).unwrap();
            assert_eq!(a.ino, b.ino);
            assert_eq!(a.nlink, 2);
        }
    }

    #[test]
    fn unrecognised_paths_fail_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        make_hub(&hub, "org/base", 1);
        let plain = tmp.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        let store = open_store(&tmp.path().join("store"));
        let err = store.import(&[hub, plain.clone()], &|_| {}).unwrap_err();
        assert!(
            matches!(err, ImportError::Unrecognised { ref path, .. } if *path == plain),
            "{err}"
        );
        assert_eq!(store.catalog().read(|tx| tx.totals()).unwrap().files, 0);
        let parent = tmp.path().join("cache");
        make_hub(&parent.join("hub"), "org/x", 1);
        let err = recognise(&parent).unwrap_err().to_string();
        assert!(err.contains("did you mean"), "{err}");
    }

    #[test]
    fn scan_reports_dedup_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        let (w, _) = make_hub(&hub, "org/base", 1);
        // A second repo holding the same weights: all of its LFS bytes dedup.
        let copy = hub.join("models--org--copy/blobs");
        write(&copy.join(sha_hex(&w)), &w);
        let ollama = tmp.path().join("ollama");
        make_ollama(&ollama, 3);
        let store_dir = tmp.path().join("store");
        let report = scan(&[hub.clone(), ollama.clone()], Some(&store_dir), &|_| {}).unwrap();
        assert!(!store_dir.exists());
        assert!(!report.compared_with_store);
        assert_eq!(report.models.len(), 3, "{:?}", report.models);
        assert!(report.saved_bytes >= w.len() as u64, "{report:?}");
        assert_eq!(
            report.logical_bytes,
            report.deduped_bytes + report.saved_bytes
        );
        let base = report.models.iter().find(|m| m.name == "org/base").unwrap();
        assert_eq!(base.revision, COMMIT);
        assert!(base.unique_bytes < base.deduped_bytes, "{base:?}");
        let tiny = report.models.iter().find(|m| m.layout == "ollama").unwrap();
        assert_eq!(tiny.name, "registry.ollama.ai/library/tiny");
        assert_eq!(tiny.files, 3);

        // Against a store (same chunker as scan) that holds everything, nothing would be added.
        let store = Store::open(&store_dir, StoreOptions::default()).unwrap();
        store
            .import(&[hub.clone(), ollama.clone()], &|_| {})
            .unwrap();
        drop(store);
        let listing = |d: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .flatten()
                .map(|e| (e.file_name(), e.metadata().unwrap().len()))
                .collect();
            v.sort();
            v
        };
        let before = listing(&store_dir);
        let report = scan(&[hub, ollama], Some(&store_dir), &|_| {}).unwrap();
        assert!(report.compared_with_store);
        assert_eq!(report.deduped_bytes, 0, "{report:?}");
        assert_eq!(listing(&store_dir), before);
    }
}
