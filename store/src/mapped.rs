//! A file's bytes as one slice ([`MappedFile`]), and what keeps reading them safe when the
//! file changes or fails underneath.
//!
//! Chunking and hashing read a file through a memory map (no copy). A page of a map that the
//! file no longer has (another process truncated it) or that the disk cannot read delivers
//! SIGBUS, which would kill the whole process: the CLI mid-import, or the mount's daemon. So
//! while a map of a file is alive its address range is registered here, and a SIGBUS inside
//! it puts anonymous zero pages over the rest of the map and marks it faulted; the read goes
//! on, and [`MappedFile::check_intact`] afterwards turns the mark into an error, so nothing
//! read from a faulted map is kept. A SIGBUS anywhere else goes to the handler that was there
//! before (Rust's own, which reports stack overflows).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use memmap2::Mmap;

use crate::error::{IoContext, Result, StoreError};

/// A read-only view of a file's bytes: a memory map of the file, a copy of a sparse file's
/// data in anonymous memory (see [`MappedFile::from_file`]), or nothing for an empty file
/// (which cannot be mapped).
pub struct MappedFile {
    /// Declared before `map`, so the range is unregistered before it is unmapped (a new map
    /// at the same address must not inherit the guard).
    guard: Option<FaultGuard>,
    map: Option<Mmap>,
    /// Whether `map` maps the file itself (else it is a copy).
    maps_the_file: bool,
    /// The file (a descriptor of its own): an import may clone it, and
    /// [`MappedFile::check_unchanged`] looks at it again.
    source: Option<File>,
    /// The file as it was when mapped.
    stamp: Option<Stamp>,
    path: PathBuf,
}

/// What tells a file changed: any write moves its mtime and ctime, a truncation its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<MappedFile> {
        let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
        Self::from_file(&file, path)
    }

    pub fn from_file(file: &File, path: &Path) -> Result<MappedFile> {
        let meta = file.metadata().ctx(|| format!("stat {}", path.display()))?;
        let len = meta.len();
        let mut mapped = MappedFile {
            guard: None,
            map: None,
            maps_the_file: false,
            source: file.try_clone().ok(),
            stamp: Some(Stamp::of(&meta)),
            path: path.to_path_buf(),
        };
        if len == 0 {
            return Ok(mapped);
        }
        if first_hole(file, len).is_some_and(|hole| hole < len) {
            mapped.map = Some(copy_sparse(file, path, len)?);
            return Ok(mapped);
        }
        // SAFETY: the file is only read. Another process may still truncate it while it is
        // mapped, or the disk fail under it: the guard turns the SIGBUS that follows into an
        // error of this file (see the module's comment).
        let map = unsafe { Mmap::map(file) }.ctx(|| format!("mapping {}", path.display()))?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::Sequential);
        mapped.guard = FaultGuard::register(map.as_ptr() as usize, map.len());
        mapped.map = Some(map);
        mapped.maps_the_file = true;
        Ok(mapped)
    }

    /// Whether these bytes are a map of the file itself (so the file could become a pack).
    pub fn maps_the_file(&self) -> bool {
        self.maps_the_file
    }

    /// The mapped file's own descriptor, when the bytes are a map of it.
    pub(crate) fn source(&self) -> Option<&File> {
        self.source.as_ref().filter(|_| self.maps_the_file)
    }

    /// Err when a page of the map could not be read (the file shrank under it, or the disk
    /// failed): some bytes read through it were zeros standing in for the file's.
    pub fn check_intact(&self) -> Result<()> {
        if self.guard.as_ref().is_some_and(FaultGuard::faulted) {
            return Err(StoreError::SourceChanged {
                path: self.path.clone(),
                what: "part of it could not be read (truncated while being read, or an I/O \
                       error)"
                    .into(),
            });
        }
        Ok(())
    }

    /// [`MappedFile::check_intact`], and Err when the file was written, truncated or replaced
    /// in place since it was mapped: what was read of it may mix old and new bytes.
    pub fn check_unchanged(&self) -> Result<()> {
        self.check_intact()?;
        let (Some(source), Some(stamp)) = (&self.source, self.stamp) else {
            return Ok(());
        };
        let now = source
            .metadata()
            .ctx(|| format!("stat {}", self.path.display()))?;
        if Stamp::of(&now) != stamp {
            return Err(StoreError::SourceChanged {
                path: self.path.clone(),
                what: "it was written while being read".into(),
            });
        }
        Ok(())
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// A sparse file's bytes in anonymous memory: its data read in, its holes left as pages never
/// touched (zeros that take no memory). Reading a hole through a map of the file itself makes
/// tmpfs allocate a page, and on a full tmpfs that is a SIGBUS; `read` of a hole allocates
/// nothing. Tools make sparse files on purpose (an Ollama pull sets a blob's full size before
/// writing its parts), and a failed write on a full disk leaves one.
fn copy_sparse(file: &File, path: &Path, len: u64) -> Result<Mmap> {
    let ctx = || format!("reading sparse file {}", path.display());
    let size = usize::try_from(len).map_err(|_| {
        StoreError::io(
            ctx(),
            std::io::Error::other("larger than the address space"),
        )
    })?;
    let mut copy = memmap2::MmapOptions::new().len(size).map_anon().ctx(ctx)?;
    let mut at = 0u64;
    while let Some((start, end)) = next_data(file, at, len).ctx(ctx)? {
        file.read_exact_at(&mut copy[start as usize..end as usize], start)
            .ctx(ctx)?;
        at = end;
    }
    copy.make_read_only().ctx(ctx)
}

/// Where the first hole of a file starts (`len` if none), where the system can tell.
fn first_hole(file: &File, len: u64) -> Option<u64> {
    seek(file, 0, libc::SEEK_HOLE)
        .ok()
        .map(|hole| hole.min(len))
}

/// The next extent of data at or after `from` in a file of `len` bytes, as (start, end).
fn next_data(file: &File, from: u64, len: u64) -> std::io::Result<Option<(u64, u64)>> {
    if from >= len {
        return Ok(None);
    }
    let start = match seek(file, from, libc::SEEK_DATA) {
        Ok(start) => start,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
        Err(e) => return Err(e),
    };
    let end = seek(file, start, libc::SEEK_HOLE)?.min(len);
    Ok((start < end).then_some((start, end)))
}

/// lseek on a shared file description: callers here own the offset's only use (they read
/// with pread), so moving it is harmless.
fn seek(file: &File, offset: u64, whence: libc::c_int) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let offset = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
    // SAFETY: lseek on a descriptor we borrow; no memory is touched.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if at < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(at as u64)
}

/// Maps that may be alive at once with a guard; a map beyond them is read unguarded (an
/// import keeps a few in flight, the mount one per commit).
const GUARD_SLOTS: usize = 64;

/// One registered map: its address range and whether a fault replaced part of it. `start` is
/// 0 when the slot is free and `usize::MAX` while it is being filled in.
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    faulted: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // each array element is its own atomic
const FREE_SLOT: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    faulted: AtomicBool::new(false),
};

static SLOTS: [Slot; GUARD_SLOTS] = [FREE_SLOT; GUARD_SLOTS];
const FILLING: usize = usize::MAX;

/// The SIGBUS action found when ours was installed, to hand foreign faults on to.
static PREVIOUS_ACTION: OnceLock<libc::sigaction> = OnceLock::new();
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);

/// A map's registration; dropping it frees the slot.
struct FaultGuard {
    slot: usize,
}

impl FaultGuard {
    /// Registers `len` bytes at `start`; None when the handler could not be installed or every
    /// slot is taken (the map is then read as before, unguarded).
    fn register(start: usize, len: usize) -> Option<FaultGuard> {
        if len == 0 || !install_handler() {
            return None;
        }
        for (slot, entry) in SLOTS.iter().enumerate() {
            if entry
                .start
                .compare_exchange(0, FILLING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                entry.faulted.store(false, Ordering::Release);
                entry.end.store(start + len, Ordering::Release);
                entry.start.store(start, Ordering::Release);
                return Some(FaultGuard { slot });
            }
        }
        tracing::debug!("every map guard is taken; this map is read unguarded");
        None
    }

    fn faulted(&self) -> bool {
        SLOTS[self.slot].faulted.load(Ordering::Acquire)
    }
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        let entry = &SLOTS[self.slot];
        entry.end.store(0, Ordering::Release);
        entry.start.store(0, Ordering::Release);
    }
}

/// Installs the SIGBUS handler once per process; false if the system refused it.
fn install_handler() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        // SAFETY: sysconf and sigaction with valid, fully initialised arguments; the handler
        // only does what is safe in a signal handler (atomics, mmap, sigaction).
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE_SIZE.store(page as usize, Ordering::Relaxed);
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &action, &mut previous) != 0 {
                tracing::warn!(
                    error = %std::io::Error::last_os_error(),
                    "no SIGBUS handler: a file truncated while mapped would end the process"
                );
                return false;
            }
            let _ = PREVIOUS_ACTION.set(previous);
        }
        true
    })
}

extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel hands a valid siginfo for a SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE_SIZE.load(Ordering::Relaxed);
    for entry in &SLOTS {
        let start = entry.start.load(Ordering::Acquire);
        if start == 0 || start == FILLING {
            continue;
        }
        let end = entry.end.load(Ordering::Acquire);
        if addr < start || addr >= end {
            continue;
        }
        // Zero pages from the faulting one to the end of the map: the faulting read retries
        // on them, and later pages (gone too, after a truncation) do not fault one by one.
        let from = addr & !(page - 1);
        // SAFETY: replaces pages of a read-only map this process registered and still holds
        // (the guard is dropped before the map is unmapped); MAP_FIXED keeps the range's
        // address, so the map's owner unmaps it as before.
        let replaced = unsafe {
            libc::mmap(
                from as *mut libc::c_void,
                end - from,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if replaced != libc::MAP_FAILED {
            entry.faulted.store(true, Ordering::Release);
            return;
        }
    }
    pass_on(signal, info, context);
}

/// A SIGBUS outside every guarded map: what would have happened without us.
fn pass_on(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let previous = PREVIOUS_ACTION.get();
    match previous {
        Some(action)
            if action.sa_sigaction != libc::SIG_DFL && action.sa_sigaction != libc::SIG_IGN =>
        {
            if action.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this
                // signature.
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(action.sa_sigaction) };
                handler(signal, info, context);
            } else {
                // SAFETY: a plain handler installed without SA_SIGINFO.
                let handler: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute(action.sa_sigaction) };
                handler(signal);
            }
        }
        _ => {
            // The default action: restore it and return; the fault repeats and ends the
            // process as it would have.
            // SAFETY: sigaction with a zeroed (SIG_DFL) action.
            unsafe {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(dir: &Path, len: usize) -> PathBuf {
        let path = dir.join("f");
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        path
    }

    #[test]
    fn a_file_truncated_under_its_map_reads_as_an_error_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_of(dir.path(), 4 << 20);
        let mapped = MappedFile::open(&path).unwrap();
        assert!(mapped.maps_the_file());
        mapped.check_unchanged().unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        // Without the guard this read is a SIGBUS that ends the test binary.
        let sum: u64 = mapped.iter().map(|&b| b as u64).sum();
        assert!(sum > 0);
        assert_eq!(mapped[(1 << 20) - 1], (((1 << 20) - 1) % 251) as u8 + 1);
        assert_eq!(mapped[(3 << 20) + 5], 0, "past the new end reads zeros");
        let err = mapped.check_intact().unwrap_err();
        assert!(matches!(err, StoreError::SourceChanged { .. }), "{err}");
        assert!(err.to_string().contains("could not be read"), "{err}");
    }

    #[test]
    fn a_file_written_after_mapping_fails_the_change_check_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_of(dir.path(), 64 << 10);
        let mapped = MappedFile::open(&path).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(b"changed", 100)
            .unwrap();
        mapped.check_intact().unwrap();
        let err = mapped.check_unchanged().unwrap_err();
        assert!(
            err.to_string().contains("written while being read"),
            "{err}"
        );
    }

    #[test]
    fn guards_are_freed_with_their_maps() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_of(dir.path(), 8192);
        // More maps, one after another, than there are slots: each frees its own.
        for _ in 0..GUARD_SLOTS * 2 {
            let mapped = MappedFile::open(&path).unwrap();
            assert!(mapped.guard.is_some());
        }
    }
}
