//! Append-only pack files holding chunks, in two layouts.
//!
//! A *record pack* (`NNNNNNNN.pack`, shared by small files and gc) starts with a 16-byte header
//! (magic + pack id). Each record is `magic "MXCK" | u32 LE length | BLAKE3-256 of the data |
//! data`, so a pack can be scanned and checked without the catalog.
//!
//! A *raw pack* (`NNNNNNNN.raw`) holds the new chunks of one large file back to back, with no
//! headers; its side file `NNNNNNNN.index` (magic `MLXFSIX1`, pack id, then `BLAKE3-256 | u32 LE
//! length` per chunk) keeps it scannable without the catalog. When (nearly) all of a file's
//! chunks were new, the raw pack's bytes *are* the file's bytes at the same offsets (a *whole
//! copy*, catalog table `whole_copies`; the few chunks the store had already, such as a
//! safetensors header another model shares, are copies the catalog does not locate), so the
//! kernel can serve the file from it directly (FUSE passthrough, see `Store::passthrough_pack`).
//!
//! Packs are only ever appended to (and rewritten whole by gc), so readers can memory-map them
//! and remap when a record lies past the current mapping.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::deferred_sync::Durability;
use crate::error::{IoContext, Result, StoreError};
use crate::mapped::MappedFile;
use crate::served::ServedPages;
use crate::ChunkHash;

pub const PACK_MAGIC: &[u8; 8] = b"MLXFSPK1";
pub const PACK_HEADER_LEN: u64 = 16;
pub const RECORD_MAGIC: &[u8; 4] = b"MXCK";
pub const RECORD_HEADER_LEN: u64 = 40;
pub const RAW_INDEX_MAGIC: &[u8; 8] = b"MLXFSIX1";
/// A raw pack's index: magic and pack id, then one entry per chunk.
pub const RAW_INDEX_HEADER_LEN: usize = 16;
pub const RAW_INDEX_ENTRY_LEN: usize = 36;

/// Where a chunk's bytes live: `offset` is the first data byte (after the record header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: u64,
    pub offset: u64,
    pub len: u32,
}

struct ActivePack {
    id: u64,
    file: Arc<File>,
    len: u64,
    /// Appended bytes before this offset have been handed to the disk (see `start_writeback`).
    writeback_from: u64,
    /// Appended bytes before this offset are durable.
    synced_len: u64,
}

/// Appends start the disk writing once this many bytes are waiting, so the fsync before a
/// commit finds most of them written while the writer was still hashing.
const WRITEBACK_BATCH: u64 = 8 << 20;

/// All pack files of a store: one active pack for appends, cached descriptors for reads.
pub struct Packs {
    dir: PathBuf,
    target_size: u64,
    active: Mutex<Option<ActivePack>>,
    files: RwLock<HashMap<u64, Arc<File>>>,
    /// Second descriptors with readahead off, for random reads of a few blocks: readahead
    /// state belongs to the open file, so sequential readers keep theirs.
    random_files: RwLock<HashMap<u64, Arc<File>>>,
    /// Ids of raw packs (the rest are record packs).
    raw: RwLock<HashSet<u64>>,
    /// Raw packs still being written; [`Packs::sync`] makes them durable too, since another
    /// writer may commit a chunk it found pending in one of them.
    raw_writing: Mutex<HashMap<u64, Arc<File>>>,
    /// Raw packs finished or adopted whose data, index and name no sync has made durable yet.
    raw_unsynced: Mutex<HashMap<u64, Arc<File>>>,
    /// The id the next new pack gets (one past the highest on disk at open; never scanned
    /// again, so making a pack costs the same with ten thousand of them).
    next_id: Mutex<u64>,
    writeback: Writeback,
    /// Pack pages read for readers, until every byte of them was served (served.rs).
    served: ServedPages,
}

/// Starts the disk writing appended pack bytes on a thread of its own: `sync_file_range`
/// blocks while the device's queue is full, and the writer should be hashing meanwhile.
#[derive(Default)]
struct Writeback {
    queue: Mutex<Option<std::sync::mpsc::Sender<WritebackRange>>>,
}

/// A range of a pack to start writing: the pack, from, to.
type WritebackRange = (Arc<File>, u64, u64);

impl Writeback {
    fn start(&self, file: &Arc<File>, from: u64, to: u64) {
        let mut queue = self.queue.lock();
        if queue.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<WritebackRange>();
            let spawned = std::thread::Builder::new()
                .name("mlxfs-writeback".into())
                .spawn(move || {
                    for (file, from, to) in rx {
                        start_writeback(&file, from, to);
                    }
                });
            if spawned.is_ok() {
                *queue = Some(tx);
            }
        }
        let queued = queue
            .as_ref()
            .is_some_and(|tx| tx.send((file.clone(), from, to)).is_ok());
        if !queued {
            start_writeback(file, from, to);
        }
    }
}

/// Asks the kernel to start writing `from..to` of a pack to disk without waiting for it
/// (durability still comes from the fsync before a commit; this only gets it started early).
fn start_writeback(file: &File, from: u64, to: u64) {
    #[cfg(target_os = "linux")]
    // SAFETY: a hint on a descriptor we own; failure only means the fsync does all the work.
    unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(file),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, to);
}

/// Page cache advice for a range of a pack (`len` 0: to the end of the file).
#[derive(Debug, Clone, Copy)]
enum Advice {
    /// Drop the range's pages.
    DontNeed,
    /// No readahead on this descriptor.
    Random,
}

/// Hints the kernel about a pack's pages; failure only means the hint is not taken.
fn advise(file: &File, offset: u64, len: u64, advice: Advice) {
    #[cfg(target_os = "linux")]
    // SAFETY: advice on a descriptor we own.
    unsafe {
        let advice = match advice {
            Advice::DontNeed => libc::POSIX_FADV_DONTNEED,
            Advice::Random => libc::POSIX_FADV_RANDOM,
        };
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(file),
            offset as libc::off_t,
            len as libc::off_t,
            advice,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len, advice);
}

/// Exactly `len` bytes at `offset` of a pack; a pack shorter than that is damage (the catalog
/// said the bytes of chunk `hash` are there), not an I/O error.
fn pread_exact(
    file: &File,
    pack: u64,
    offset: u64,
    len: usize,
    hash: &ChunkHash,
) -> Result<Vec<u8>> {
    let buf = read_uninit_at(file, len, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            StoreError::CorruptChunk {
                chunk: hex::encode(hash),
                pack,
                offset,
                reason: "pack is shorter than the catalog says".into(),
            }
        } else {
            StoreError::io(format!("reading pack {pack}"), e)
        }
    })?;
    Ok(buf)
}

/// `len` bytes at `offset`, read into memory that is not zeroed first: zeroing every chunk
/// buffer before pread overwrote it was a tenth of the daemon's CPU on a cold sequential read
/// (docs/PERFORMANCE.md). Fails with UnexpectedEof when the file ends first.
fn read_uninit_at(file: &File, len: usize, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let mut filled = 0;
    while filled < len {
        let at = libc::off_t::try_from(offset + filled as u64).map_err(std::io::Error::other)?;
        // SAFETY: the kernel writes at most `len - filled` bytes into the vector's spare
        // capacity, which is that long; nothing reads them before `set_len` below covers only
        // what the kernel reported written.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(filled).cast(),
                len - filled,
                at,
            )
        };
        match n {
            n if n > 0 => {
                filled += n as usize;
                // SAFETY: the first `filled` bytes were written by pread.
                unsafe { buf.set_len(filled) };
            }
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf)
}

pub fn pack_file_name(id: u64) -> String {
    format!("{id:08}.pack")
}

pub fn raw_pack_file_name(id: u64) -> String {
    format!("{id:08}.raw")
}

pub fn raw_index_file_name(id: u64) -> String {
    format!("{id:08}.index")
}

/// Whether a file in the packs directory holds chunk bytes (record or raw pack), by its name.
pub fn is_pack_file_name(name: &str) -> bool {
    pack_id_of(name).is_some()
}

/// The id and layout (`true`: raw) of a pack file, from its name.
fn pack_id_of(name: &str) -> Option<(u64, bool)> {
    if let Some(stem) = name.strip_suffix(".pack") {
        return stem.parse().ok().map(|id| (id, false));
    }
    let stem = name.strip_suffix(".raw")?;
    stem.parse().ok().map(|id| (id, true))
}

impl Packs {
    pub fn open(dir: &Path, target_size: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        let packs = Packs {
            dir: dir.to_path_buf(),
            target_size,
            active: Mutex::new(None),
            files: RwLock::new(HashMap::new()),
            random_files: RwLock::new(HashMap::new()),
            raw: RwLock::new(HashSet::new()),
            raw_writing: Mutex::new(HashMap::new()),
            raw_unsynced: Mutex::new(HashMap::new()),
            next_id: Mutex::new(1),
            writeback: Writeback::default(),
            served: ServedPages::default(),
        };
        let on_disk = packs.scan_dir()?;
        *packs.next_id.lock() = on_disk.last().map_or(1, |(last, _)| last + 1);
        *packs.raw.write() = on_disk
            .into_iter()
            .filter_map(|(id, raw)| raw.then_some(id))
            .collect();
        Ok(packs)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding pack `id`'s chunk bytes.
    pub fn path(&self, id: u64) -> PathBuf {
        if self.is_raw(id) {
            self.dir.join(raw_pack_file_name(id))
        } else {
            self.dir.join(pack_file_name(id))
        }
    }

    /// Whether pack `id` is a raw pack (one file's chunks back to back, no headers).
    pub fn is_raw(&self, id: u64) -> bool {
        self.raw.read().contains(&id)
    }

    /// Bytes before the first chunk of a pack (its header; none in a raw pack).
    pub fn header_len(&self, id: u64) -> u64 {
        if self.is_raw(id) {
            0
        } else {
            PACK_HEADER_LEN
        }
    }

    /// Removes index files whose raw pack is gone (a crash between removing the two).
    pub fn remove_orphan_indexes(&self) -> Result<()> {
        for entry in
            std::fs::read_dir(&self.dir).ctx(|| format!("listing {}", self.dir.display()))?
        {
            let entry = entry.ctx(|| format!("listing {}", self.dir.display()))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".index"))
                .and_then(|stem| stem.parse::<u64>().ok())
            else {
                continue;
            };
            if !self.is_raw(id) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Pack ids present on disk, ascending.
    pub fn list(&self) -> Result<Vec<u64>> {
        Ok(self.scan_dir()?.into_iter().map(|(id, _)| id).collect())
    }

    /// Pack ids on disk with their layout (`true`: raw), ascending.
    fn scan_dir(&self) -> Result<Vec<(u64, bool)>> {
        let mut ids = Vec::new();
        for entry in
            std::fs::read_dir(&self.dir).ctx(|| format!("listing {}", self.dir.display()))?
        {
            let entry = entry.ctx(|| format!("listing {}", self.dir.display()))?;
            if let Some(found) = pack_id_of(&entry.file_name().to_string_lossy()) {
                ids.push(found);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Appends one chunk record to the active pack, starting a new pack when it is full.
    /// The bytes are durable only after [`Packs::sync`].
    pub fn append(&self, hash: &ChunkHash, data: &[u8]) -> Result<ChunkLocation> {
        let len = u32::try_from(data.len())
            .map_err(|_| StoreError::Inconsistent("chunk larger than 4 GiB".into()))?;
        let mut active = self.active.lock();
        if active.as_ref().is_none_or(|a| a.len >= self.target_size) {
            if let Some(old) = active.take() {
                old.file
                    .sync_data()
                    .ctx(|| format!("syncing pack {}", old.id))?;
            }
            *active = Some(self.create_pack()?);
        }
        let pack = active.as_mut().expect("active pack was just ensured");
        let mut header = [0u8; RECORD_HEADER_LEN as usize];
        header[..4].copy_from_slice(RECORD_MAGIC);
        header[4..8].copy_from_slice(&len.to_le_bytes());
        header[8..40].copy_from_slice(hash);
        let record_start = pack.len;
        let result = pack
            .file
            .write_all_at(&header, record_start)
            .and_then(|()| {
                crate::page_cache::write_all_at(&pack.file, data, record_start + RECORD_HEADER_LEN)
            });
        if let Err(e) = result {
            // Leave no torn record behind: later appends start where this one started.
            let _ = pack.file.set_len(record_start);
            return Err(StoreError::io(format!("writing pack {}", pack.id), e));
        }
        pack.len = record_start + RECORD_HEADER_LEN + len as u64;
        if pack.len - pack.writeback_from >= WRITEBACK_BATCH {
            self.writeback
                .start(&pack.file, pack.writeback_from, pack.len);
            pack.writeback_from = pack.len;
        }
        Ok(ChunkLocation {
            pack: pack.id,
            offset: record_start + RECORD_HEADER_LEN,
            len,
        })
    }

    /// Makes every appended record and every raw pack written so far durable. Called before
    /// a catalog transaction that references them commits (unless the commit marks them
    /// unsynced, see deferred_sync.rs); sealed record packs were synced when they were closed.
    pub fn sync(&self) -> Result<()> {
        {
            let mut active = self.active.lock();
            if let Some(pack) = active.as_mut() {
                pack.file
                    .sync_data()
                    .ctx(|| format!("syncing pack {}", pack.id))?;
                pack.synced_len = pack.len;
            }
        }
        let writing = snapshot(&self.raw_writing);
        for (id, file) in &writing {
            file.sync_data().ctx(|| format!("syncing raw pack {id}"))?;
        }
        let finished = snapshot(&self.raw_unsynced);
        for (id, file) in &finished {
            file.sync_data().ctx(|| format!("syncing raw pack {id}"))?;
            self.sync_raw_index(*id)?;
        }
        if !writing.is_empty() || !finished.is_empty() {
            // A commit may name chunks of a raw pack another file is still writing (they were
            // pending when it was prepared): the pack's name must survive a crash too.
            sync_dir(&self.dir)?;
        }
        let mut unsynced = self.raw_unsynced.lock();
        for (id, _) in finished {
            unsynced.remove(&id);
        }
        Ok(())
    }

    /// Packs that may hold bytes no sync has made durable: what a commit that does not sync
    /// marks as unsynced.
    pub fn unsynced(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .active
            .lock()
            .as_ref()
            .filter(|pack| pack.len > pack.synced_len)
            .map(|pack| pack.id)
            .into_iter()
            .collect();
        ids.extend(self.raw_writing.lock().keys());
        ids.extend(self.raw_unsynced.lock().keys());
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Makes the files of `packs` that exist durable, with their names (the marks a previous
    /// process left, see deferred_sync.rs); returns the packs whose fsync failed (the disk
    /// refused their bytes: what reached it must be checked).
    pub fn sync_existing(&self, packs: &std::collections::BTreeSet<u64>) -> Result<Vec<u64>> {
        let mut failed = Vec::new();
        for &id in packs {
            let path = self.path(id);
            let synced = match File::open(&path) {
                Ok(file) => file.sync_data().and_then(|()| {
                    if self.is_raw(id) {
                        File::open(self.dir.join(raw_index_file_name(id)))?.sync_all()
                    } else {
                        Ok(())
                    }
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = synced {
                tracing::warn!(pack = id, error = %e, "syncing a pack an import wrote");
                failed.push(id);
            }
        }
        sync_dir(&self.dir)?;
        Ok(failed)
    }

    /// Closes the active pack so the next append starts a new one (gc uses this).
    pub fn seal_active(&self) -> Result<()> {
        if let Some(old) = self.active.lock().take() {
            old.file
                .sync_data()
                .ctx(|| format!("syncing pack {}", old.id))?;
        }
        Ok(())
    }

    /// The next free pack id, taken.
    fn take_id(&self) -> u64 {
        let mut next_id = self.next_id.lock();
        let id = *next_id;
        *next_id += 1;
        id
    }

    /// Writes raw pack `id`'s index; durable with the pack, at the next [`Packs::sync`].
    fn write_raw_index(&self, id: u64, index: &[u8]) -> Result<()> {
        let index_path = self.dir.join(raw_index_file_name(id));
        std::fs::write(&index_path, index).ctx(|| format!("writing {}", index_path.display()))
    }

    fn sync_raw_index(&self, id: u64) -> Result<()> {
        let index_path = self.dir.join(raw_index_file_name(id));
        match File::open(&index_path) {
            Ok(file) => file
                .sync_all()
                .ctx(|| format!("syncing {}", index_path.display())),
            // Gone with its pack (gc): nothing to make durable.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(
                format!("opening {}", index_path.display()),
                e,
            )),
        }
    }

    /// Creates the file of a new pack with the next free id.
    fn create_file(&self, raw: bool) -> Result<(u64, File, PathBuf)> {
        let id = self.take_id();
        let path = self.dir.join(if raw {
            raw_pack_file_name(id)
        } else {
            pack_file_name(id)
        });
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        if raw {
            self.raw.write().insert(id);
        }
        Ok((id, file, path))
    }

    /// Makes the file at `source`, whose bytes are exactly `chunks` back to back and which
    /// nobody writes any more, a raw pack without copying it: a hard link in the packs dir, and
    /// its index. Durable (file, index, directory entries) at the next [`Packs::sync`].
    pub fn adopt_raw(&self, source: &Path, chunks: &[(ChunkHash, u32)]) -> Result<u64> {
        let id = self.take_id();
        let path = self.dir.join(raw_pack_file_name(id));
        std::fs::hard_link(source, &path)
            .ctx(|| format!("linking {} as {}", source.display(), path.display()))?;
        self.raw.write().insert(id);
        let mut index = raw_index_header(id, chunks.len());
        for (hash, len) in chunks {
            push_raw_index_entry(&mut index, hash, *len);
        }
        let adopted = self.write_raw_index(id, &index).and_then(|()| {
            File::open(&path).ctx(|| format!("opening raw pack {}", path.display()))
        });
        match adopted {
            Ok(file) => {
                self.raw_unsynced.lock().insert(id, Arc::new(file));
                Ok(id)
            }
            Err(e) => {
                let _ = std::fs::remove_file(self.dir.join(raw_index_file_name(id)));
                let _ = std::fs::remove_file(&path);
                self.raw.write().remove(&id);
                Err(e)
            }
        }
    }

    /// Starts a raw pack for the new chunks of one file (see the module comment). Its bytes
    /// go to the disk as they are written when a sync will wait for them (`BeforeCommit`);
    /// else when the kernel sees fit, as a `cp`'s do.
    pub fn create_raw(&self, durability: Durability) -> Result<RawPackWriter<'_>> {
        let (id, file, path) = self.create_file(true)?;
        // The directory entry is made durable with the data, in `RawPackWriter::finish`.
        let file = Arc::new(file);
        self.raw_writing.lock().insert(id, file.clone());
        let index = raw_index_header(id, 64);
        Ok(RawPackWriter {
            packs: self,
            id,
            file,
            path,
            len: 0,
            writeback_from: 0,
            start_writeback: durability == Durability::BeforeCommit,
            index,
            finished: false,
        })
    }

    fn create_pack(&self) -> Result<ActivePack> {
        let (id, mut file, path) = self.create_file(false)?;
        let mut header = [0u8; PACK_HEADER_LEN as usize];
        header[..8].copy_from_slice(PACK_MAGIC);
        header[8..].copy_from_slice(&id.to_le_bytes());
        file.write_all(&header)
            .ctx(|| format!("writing {}", path.display()))?;
        file.sync_all()
            .ctx(|| format!("syncing {}", path.display()))?;
        sync_dir(&self.dir)?;
        Ok(ActivePack {
            id,
            file: Arc::new(file),
            len: PACK_HEADER_LEN,
            writeback_from: PACK_HEADER_LEN,
            synced_len: PACK_HEADER_LEN,
        })
    }

    /// The raw bytes at `loc` (those of chunk `hash`), unverified, read with pread: an I/O
    /// error of the disk is an error here, where a mapping would have been a SIGBUS. Use
    /// [`Packs::read_verified`] where the bytes are used.
    pub fn read(&self, loc: ChunkLocation, hash: &ChunkHash) -> Result<Vec<u8>> {
        let file = self.file(loc.pack)?;
        pread_exact(&file, loc.pack, loc.offset, loc.len as usize, hash)
    }

    /// The bytes at `loc`, checked against their BLAKE3 id; a mismatch is an error, never data.
    pub fn read_verified(&self, loc: ChunkLocation, hash: &ChunkHash) -> Result<Vec<u8>> {
        let bytes = self.read(loc, hash)?;
        if blake3::hash(&bytes).as_bytes() != hash {
            return Err(StoreError::CorruptChunk {
                chunk: hex::encode(hash),
                pack: loc.pack,
                offset: loc.offset,
                reason: "BLAKE3 mismatch".into(),
            });
        }
        Ok(bytes)
    }

    /// Reads the bytes at `loc` with pread and checks them against `hash`. With `readahead`
    /// (a sequential reader, who wants the bytes after them next) the kernel reads ahead in the
    /// pack; without, only these bytes are read: a random reader's neighbouring bytes come as
    /// requests of their own (an mmap fault's read-around), and readahead there read bytes
    /// from the disk that had been served already (docs/PERFORMANCE.md, eleventh round). The
    /// pack's pages stay cached until the bytes are served (see [`Packs::drop_served`]).
    pub fn read_verified_owned(
        &self,
        loc: ChunkLocation,
        hash: &ChunkHash,
        readahead: bool,
    ) -> Result<Vec<u8>> {
        let file = if readahead {
            self.file(loc.pack)?
        } else {
            self.random_file(loc.pack)?
        };
        let buf = pread_exact(&file, loc.pack, loc.offset, loc.len as usize, hash)?;
        self.drop_read_back(&file, loc.pack, loc.offset, loc.len as u64);
        if blake3::hash(&buf).as_bytes() != hash {
            return Err(StoreError::CorruptChunk {
                chunk: hex::encode(hash),
                pack: loc.pack,
                offset: loc.offset,
                reason: "BLAKE3 mismatch".into(),
            });
        }
        Ok(buf)
    }

    /// `len` raw bytes at `offset` of chunk `hash` in a pack, unverified (the caller checks
    /// them block by block, see blocks.rs), read without readahead; as for
    /// [`Packs::read_verified_owned`], their pages stay cached until served.
    pub fn read_span(
        &self,
        pack: u64,
        offset: u64,
        len: usize,
        hash: &ChunkHash,
    ) -> Result<Vec<u8>> {
        let file = self.random_file(pack)?;
        let buf = pread_exact(&file, pack, offset, len, hash)?;
        self.drop_read_back(&file, pack, offset, len as u64);
        Ok(buf)
    }

    /// Notes that a reader was served `len` bytes from `offset` of a pack, and drops the pack's
    /// pages whose every byte has now been served: the kernel caches them as the file that was
    /// read, and the pack's copy would hold them twice. See served.rs for why not sooner. A
    /// failure only means the pages stay cached.
    pub fn drop_served(&self, pack: u64, offset: u64, len: u64) {
        let Ok(file) = self.file(pack) else { return };
        let Ok(meta) = file.metadata() else { return };
        for (start, len) in self.served.serve(pack, offset, len, meta.len()) {
            advise(&file, start, len, Advice::DontNeed);
        }
    }

    /// Drops the pages just read of regions whose bytes were all served before (served.rs).
    fn drop_read_back(&self, file: &File, pack: u64, offset: u64, len: u64) {
        for (start, len) in self.served.read_back(pack, offset, len) {
            advise(file, start, len, Advice::DontNeed);
        }
    }

    fn random_file(&self, pack: u64) -> Result<Arc<File>> {
        self.open_cached(&self.random_files, pack, Some(Advice::Random))
    }

    fn file(&self, pack: u64) -> Result<Arc<File>> {
        self.open_cached(&self.files, pack, None)
    }

    /// A pack's descriptor from `cache`, opened (with `advice` for the whole file) if needed.
    fn open_cached(
        &self,
        cache: &RwLock<HashMap<u64, Arc<File>>>,
        pack: u64,
        advice: Option<Advice>,
    ) -> Result<Arc<File>> {
        if let Some(file) = cache.read().get(&pack) {
            return Ok(file.clone());
        }
        let path = self.path(pack);
        let file = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
        if let Some(advice) = advice {
            advise(&file, 0, 0, advice);
        }
        let file = Arc::new(file);
        cache.write().insert(pack, file.clone());
        Ok(file)
    }

    /// Forgets the open descriptors of a pack (before gc deletes or rewrites it).
    pub fn unmap(&self, pack: u64) {
        self.served.forget(pack);
        self.files.write().remove(&pack);
        self.random_files.write().remove(&pack);
    }

    /// Truncates a pack to `len` bytes (startup recovery drops records no catalog row commits).
    pub fn truncate(&self, pack: u64, len: u64) -> Result<()> {
        self.unmap(pack);
        let path = self.path(pack);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        file.set_len(len)
            .ctx(|| format!("truncating {}", path.display()))?;
        file.sync_all()
            .ctx(|| format!("syncing {}", path.display()))
    }

    pub fn remove(&self, pack: u64) -> Result<()> {
        self.unmap(pack);
        let raw = self.is_raw(pack);
        let path = self.path(pack);
        let removed = match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format!("removing {}", path.display()), e)),
        };
        if raw && removed.is_ok() {
            let _ = std::fs::remove_file(self.dir.join(raw_index_file_name(pack)));
            self.raw.write().remove(&pack);
            // Held for the next sync, these descriptors would keep the removed pack's room
            // (e.g. a failed import's adopted copy, dropped to give a full disk back).
            self.raw_unsynced.lock().remove(&pack);
            self.raw_writing.lock().remove(&pack);
        }
        removed
    }
}

/// Appends one file's new chunks to a raw pack of its own (see the module comment).
pub struct RawPackWriter<'a> {
    packs: &'a Packs,
    id: u64,
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    writeback_from: u64,
    /// Whether appends start the disk writing as they go (see [`Packs::create_raw`]).
    start_writeback: bool,
    index: Vec<u8>,
    finished: bool,
}

impl RawPackWriter<'_> {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Appends a chunk; durable only after [`RawPackWriter::finish`] (or [`Packs::sync`]).
    pub fn append(&mut self, hash: &ChunkHash, data: &[u8]) -> Result<ChunkLocation> {
        let len = u32::try_from(data.len())
            .map_err(|_| StoreError::Inconsistent("chunk larger than 4 GiB".into()))?;
        let start = self.len;
        if let Err(e) = crate::page_cache::write_all_at(&self.file, data, start) {
            let _ = self.file.set_len(start);
            return Err(StoreError::io(
                format!("writing {}", self.path.display()),
                e,
            ));
        }
        self.len = start + len as u64;
        push_raw_index_entry(&mut self.index, hash, len);
        if self.start_writeback && self.len - self.writeback_from >= WRITEBACK_BATCH {
            self.packs
                .writeback
                .start(&self.file, self.writeback_from, self.len);
            self.writeback_from = self.len;
        }
        Ok(ChunkLocation {
            pack: self.id,
            offset: start,
            len,
        })
    }

    /// Writes the index; pack, index and their names are durable at the next
    /// [`Packs::sync`].
    pub fn finish(mut self) -> Result<()> {
        self.packs.write_raw_index(self.id, &self.index)?;
        self.finished = true;
        // Listed as unsynced before it leaves the writing list, so a sync in between misses
        // neither.
        self.packs
            .raw_unsynced
            .lock()
            .insert(self.id, self.file.clone());
        self.packs.raw_writing.lock().remove(&self.id);
        Ok(())
    }
}

impl Drop for RawPackWriter<'_> {
    /// A writer given up on (an error while its file was chunked) leaves its pack for recovery
    /// or gc, durable, since another writer may have found one of its chunks pending.
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.file.sync_data();
            self.packs.raw_writing.lock().remove(&self.id);
        }
    }
}

/// The entries of a pack list, copied out so no lock is held while they are synced.
fn snapshot(list: &Mutex<HashMap<u64, Arc<File>>>) -> Vec<(u64, Arc<File>)> {
    list.lock()
        .iter()
        .map(|(id, file)| (*id, file.clone()))
        .collect()
}

/// One record found by scanning a pack file without the catalog.
#[derive(Debug, Clone)]
pub struct ScannedRecord {
    pub location: ChunkLocation,
    pub hash: ChunkHash,
    pub intact: bool,
}

/// Walks every record of a pack file (a raw pack through its index). Stops at the first torn or
/// unrecognisable record and reports the offset where valid records end.
pub fn scan_pack(path: &Path, pack: u64) -> Result<(Vec<ScannedRecord>, u64)> {
    if path.extension().is_some_and(|e| e == "raw") {
        return scan_raw_pack(path, &path.with_extension("index"), pack);
    }
    // Nobody truncates a pack while the store lock is held; a page the disk cannot read is an
    // error of the scan (see mapped.rs), not a SIGBUS.
    let map = MappedFile::open(path)?;
    let len = map.len() as u64;
    let mut records = Vec::new();
    if len < PACK_HEADER_LEN {
        return Ok((records, 0));
    }
    if &map[..8] != PACK_MAGIC {
        return Ok((records, 0));
    }
    let mut pos = PACK_HEADER_LEN;
    while pos + RECORD_HEADER_LEN <= len {
        let p = pos as usize;
        if &map[p..p + 4] != RECORD_MAGIC {
            break;
        }
        let data_len = u32::from_le_bytes(map[p + 4..p + 8].try_into().unwrap_or_default());
        let data_start = pos + RECORD_HEADER_LEN;
        let data_end = data_start + data_len as u64;
        if data_end > len {
            break;
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&map[p + 8..p + 40]);
        let intact = blake3::hash(&map[data_start as usize..data_end as usize]).as_bytes() == &hash;
        records.push(ScannedRecord {
            location: ChunkLocation {
                pack,
                offset: data_start,
                len: data_len,
            },
            hash,
            intact,
        });
        pos = data_end;
    }
    map.check_intact()?;
    Ok((records, pos))
}

/// The start of raw pack `id`'s index (magic, id), with room for `entries` entries.
fn raw_index_header(id: u64, entries: usize) -> Vec<u8> {
    let mut index = Vec::with_capacity(RAW_INDEX_HEADER_LEN + entries * RAW_INDEX_ENTRY_LEN);
    index.extend_from_slice(RAW_INDEX_MAGIC);
    index.extend_from_slice(&id.to_le_bytes());
    index
}

/// One index entry: the chunk's id and length, in the order of the pack's bytes.
fn push_raw_index_entry(index: &mut Vec<u8>, hash: &ChunkHash, len: u32) {
    index.extend_from_slice(hash);
    index.extend_from_slice(&len.to_le_bytes());
}

fn scan_raw_pack(path: &Path, index_path: &Path, pack: u64) -> Result<(Vec<ScannedRecord>, u64)> {
    let index = std::fs::read(index_path).ctx(|| format!("reading {}", index_path.display()))?;
    let mut records = Vec::new();
    if index.len() < RAW_INDEX_HEADER_LEN || &index[..8] != RAW_INDEX_MAGIC {
        return Ok((records, 0));
    }
    let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let len = file
        .metadata()
        .ctx(|| format!("stat {}", path.display()))?
        .len();
    let mut pos = 0u64;
    for entry in index[RAW_INDEX_HEADER_LEN..].chunks_exact(RAW_INDEX_ENTRY_LEN) {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&entry[..32]);
        let data_len = u32::from_le_bytes(entry[32..36].try_into().unwrap_or_default());
        let end = pos + data_len as u64;
        if end > len {
            break;
        }
        let mut data = vec![0u8; data_len as usize];
        file.read_exact_at(&mut data, pos)
            .ctx(|| format!("reading {}", path.display()))?;
        records.push(ScannedRecord {
            location: ChunkLocation {
                pack,
                offset: pos,
                len: data_len,
            },
            hash,
            intact: blake3::hash(&data).as_bytes() == &hash,
        });
        pos = end;
    }
    Ok((records, pos))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seed: u8, len: usize) -> (ChunkHash, Vec<u8>) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        (*blake3::hash(&data).as_bytes(), data)
    }

    #[test]
    fn raw_pack_holds_chunks_back_to_back_and_scans_through_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path(), 1 << 20).unwrap();
        let record = packs.append(&chunk(9, 10).0, &chunk(9, 10).1).unwrap();
        let mut writer = packs.create_raw(Durability::BeforeCommit).unwrap();
        let raw_id = writer.id();
        assert_ne!(
            raw_id, record.pack,
            "raw and record packs share one id space"
        );
        let (a, b) = (chunk(1, 1000), chunk(2, 3000));
        let la = writer.append(&a.0, &a.1).unwrap();
        let lb = writer.append(&b.0, &b.1).unwrap();
        assert_eq!((la.offset, lb.offset), (0, 1000));
        writer.finish().unwrap();

        let path = packs.path(raw_id);
        assert!(path.to_string_lossy().ends_with(".raw"));
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk, [a.1.clone(), b.1.clone()].concat(), "no headers");
        assert_eq!(packs.header_len(raw_id), 0);
        assert_eq!(&*packs.read_verified(lb, &b.0).unwrap(), &b.1[..]);

        let (records, end) = scan_pack(&path, raw_id).unwrap();
        assert_eq!(end, 4000);
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.intact));
        assert_eq!(records[1].location, lb);

        // Damage shows in the scan, and a reopened store still knows the layout.
        std::fs::write(&path, [a.1.clone(), vec![0u8; 3000]].concat()).unwrap();
        let (records, _) = scan_pack(&path, raw_id).unwrap();
        assert!(records[0].intact && !records[1].intact);
        let reopened = Packs::open(dir.path(), 1 << 20).unwrap();
        assert!(reopened.is_raw(raw_id) && !reopened.is_raw(record.pack));
        assert_eq!(reopened.list().unwrap(), vec![record.pack, raw_id]);

        reopened.remove(raw_id).unwrap();
        assert!(!path.exists());
        assert!(!dir.path().join(raw_index_file_name(raw_id)).exists());
        assert_eq!(reopened.list().unwrap(), vec![record.pack]);
    }

    /// Descriptors of this process open on `path` after it was unlinked.
    fn open_deleted(path: &Path) -> usize {
        let deleted = format!("{} (deleted)", path.display());
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy() == deleted)
            .count()
    }

    #[test]
    fn a_removed_unsynced_raw_pack_gives_its_room_back_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path(), 1 << 20).unwrap();
        let (h, d) = chunk(4, 5000);
        let copy = dir.path().join("copy");
        std::fs::write(&copy, &d).unwrap();
        let id = packs.adopt_raw(&copy, &[(h, d.len() as u32)]).unwrap();
        std::fs::remove_file(&copy).unwrap();
        assert_eq!(packs.unsynced(), vec![id], "adopted, not yet synced");
        let path = packs.path(id);
        packs.remove(id).unwrap();
        assert_eq!(
            open_deleted(&path),
            0,
            "no descriptor keeps the removed pack"
        );
        assert!(packs.unsynced().is_empty());
        packs.sync().unwrap();
    }

    #[test]
    fn sync_covers_raw_packs_still_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path(), 1 << 20).unwrap();
        let mut writer = packs.create_raw(Durability::BeforeCommit).unwrap();
        let (h, d) = chunk(3, 100);
        writer.append(&h, &d).unwrap();
        assert_eq!(packs.raw_writing.lock().len(), 1);
        packs.sync().unwrap();
        drop(writer);
        assert!(
            packs.raw_writing.lock().is_empty(),
            "a dropped writer is forgotten"
        );
    }
}
