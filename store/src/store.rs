//! The `Store` facade: opens the directory, takes the lock, recovers after a crash, and offers
//! prepare/commit for writers and verified reads for the mount.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::blocks;
use crate::cache::ChunkCache;
use crate::catalog::{Catalog, Tx};
use crate::config::{
    ChunkerConfig, CHUNK_CACHE_BYTES, DEFAULT_PACK_TARGET, DEFAULT_RAW_PACK_MIN_FILE, VERIFY_BLOCK,
};
use crate::content::{ContentMap, MappedChunk, PreparedContent};
use crate::error::{IoContext, Result, StoreError};
use crate::pack::{ChunkLocation, Packs, RawPackWriter};
use crate::ChunkHash;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub chunker: ChunkerConfig,
    pub pack_target: u64,
    /// Smallest file stored in a raw pack of its own; `u64::MAX` turns raw packs off.
    pub raw_pack_min_file: u64,
}

impl StoreOptions {
    /// Defaults, with the chunker tunable for experiments and benchmarks:
    /// `MLXFS_CHUNK_AVG` (average chunk size in bytes, min/max scale with it) and
    /// `MLXFS_TENSOR_CUTS=0` (plain FastCDC, no cuts at tensor boundaries), and
    /// `MLXFS_RAW_PACKS=0` (every file's chunks in shared record packs: no passthrough).
    pub fn from_env() -> Self {
        let mut options = StoreOptions::default();
        if let Some(avg) = std::env::var("MLXFS_CHUNK_AVG")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            let avg = avg.clamp(fastcdc::v2020::AVERAGE_MIN, fastcdc::v2020::AVERAGE_MAX);
            options.chunker = ChunkerConfig::with_avg(avg);
        }
        if std::env::var("MLXFS_TENSOR_CUTS").is_ok_and(|v| v == "0") {
            options.chunker.tensor_aware = false;
        }
        if std::env::var("MLXFS_RAW_PACKS").is_ok_and(|v| v == "0") {
            options.raw_pack_min_file = u64::MAX;
        }
        options
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            chunker: ChunkerConfig::default(),
            pack_target: DEFAULT_PACK_TARGET,
            raw_pack_min_file: DEFAULT_RAW_PACK_MIN_FILE,
        }
    }
}

/// An open, locked store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    root: PathBuf,
    pub(crate) options: StoreOptions,
    pub(crate) catalog: Catalog,
    pub(crate) packs: Packs,
    /// Chunks appended but possibly not yet committed, so concurrent writers of the same bytes
    /// store them once.
    pub(crate) pending: Mutex<HashMap<ChunkHash, ChunkLocation>>,
    /// Held from "is this chunk new?" until it is stored and pending, so two files prepared at
    /// once (import workers, the mount's commits) never both store a chunk they share.
    pub(crate) chunk_claims: Mutex<()>,
    /// Verified chunk bytes being read through the mount.
    cache: ChunkCache,
    /// One chunk load at a time per stripe of chunk hashes (see `chunk_in`).
    loading: [Mutex<()>; LOADING_STRIPES],
    /// Block chaining values of chunks read at random, proven against their chunk ids.
    block_cvs: Mutex<HashMap<ChunkHash, Arc<Vec<u8>>>>,
    /// Held (shared) from prepare to commit; held exclusively to drop what no commit will claim.
    pub(crate) ingest_gate: RwLock<()>,
    /// Held (shared) by a read of committed content from the moment it takes a content map
    /// until it is done; held exclusively by gc while it forgets chunks and deletes packs
    /// (see [`Store::read_guard`] and gc.rs).
    pub(crate) read_gate: RwLock<()>,
    /// One gc at a time.
    pub(crate) gc_lock: Mutex<()>,
    /// This boot and mount of the packs' file system (deferred_sync.rs); `None`: every
    /// commit syncs first.
    pub(crate) write_session: Option<String>,
    _lock: File,
}

const PENDING_LIMIT: usize = 100_000;
const RESERVE_FILE: &str = "reserve";
const RESERVE_BYTES: u64 = 16 << 20;

/// Proof that a writer is between prepare and commit (see [`Store::ingest_guard`]).
pub struct IngestGuard<'a>(#[allow(dead_code)] RwLockReadGuard<'a, ()>);

/// Proof that a read may be using chunk locations of a content map (see [`Store::read_guard`]).
pub struct ReadGuard<'a>(#[allow(dead_code)] RwLockReadGuard<'a, ()>);

impl Store {
    /// Opens (creating if needed) the store at `root` for writing, taking its exclusive lock.
    pub fn open(root: &Path, options: StoreOptions) -> Result<Store> {
        std::fs::create_dir_all(root).ctx(|| format!("creating store {}", root.display()))?;
        let lock = take_lock(root)?;
        let catalog = Catalog::open(&root.join("catalog.db"))?;
        let packs = Packs::open(&root.join("packs"), options.pack_target)?;
        let write_session = crate::deferred_sync::write_session(packs.dir());
        let uid = unsafe { libc::geteuid() };
        let gid = unsafe { libc::getegid() };
        catalog.write(|tx| tx.ensure_root(uid, gid))?;
        let store = Store {
            root: root.to_path_buf(),
            options,
            catalog,
            packs,
            pending: Mutex::new(HashMap::new()),
            chunk_claims: Mutex::new(()),
            cache: ChunkCache::new(CHUNK_CACHE_BYTES),
            loading: std::array::from_fn(|_| Mutex::new(())),
            block_cvs: Mutex::new(HashMap::new()),
            ingest_gate: RwLock::new(()),
            read_gate: RwLock::new(()),
            gc_lock: Mutex::new(()),
            write_session,
            _lock: lock,
        };
        store.recover()?;
        store.ensure_reserve();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn chunker(&self) -> &ChunkerConfig {
        &self.options.chunker
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn packs(&self) -> &Packs {
        &self.packs
    }

    /// Directory for files being written through the mount (same disk as the packs).
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// Brings the disk back in line with the catalog after a crash: packs an import committed
    /// unsynced are made durable, or checked (deferred_sync.rs), pack bytes no commit claimed
    /// go (see [`Store::drop_uncommitted_pack_bytes`]), and so do inodes unlinked while open.
    fn recover(&self) -> Result<()> {
        self.settle_unsynced_at_open()?;
        self.drop_uncommitted_pack_bytes()?;
        // Copies an import made aside and did not adopt (see `ingest::CopyAside`); the mount's
        // own staging files are its business (fs recovers queued commits from them).
        if let Ok(dir) = std::fs::read_dir(self.staging_dir()) {
            for entry in dir.flatten() {
                let name = entry.file_name();
                if name
                    .to_str()
                    .is_some_and(|n| n.ends_with(crate::ingest::IMPORT_COPY_SUFFIX))
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let released = self.release_unlinked_inodes()?;
        if released > 0 {
            tracing::info!(count = released, "released unlinked inodes left by a crash");
        }
        Ok(())
    }

    /// Deletes every inode no directory entry names, with its content's references; returns
    /// how many. Only for a store nobody has mounted: a mounted store's unlinked inodes may
    /// still be open or held by the kernel, and its daemon deletes each one when it is free.
    pub fn release_unlinked_inodes(&self) -> Result<usize> {
        let orphans = self.catalog.read(|tx| tx.orphan_inodes())?;
        if !orphans.is_empty() {
            self.catalog.write(|tx| {
                for ino in &orphans {
                    tx.delete_inode_if_unlinked(*ino)?;
                }
                Ok(())
            })?;
        }
        Ok(orphans.len())
    }

    /// Taken by every writer from [`Store::prepare`] until its [`Store::commit`] returns, so
    /// [`Store::reclaim_uncommitted`] never drops bytes a commit is about to claim.
    pub fn ingest_guard(&self) -> IngestGuard<'_> {
        IngestGuard(self.ingest_gate.read())
    }

    /// Taken by a reader before it takes a content map and held until it has read the bytes:
    /// while any is held, gc neither forgets chunks nor deletes packs, so every location of a
    /// map taken under the guard (or found again in the catalog, see [`Store::read`]) stays
    /// readable. Cheap; hold it for one read, not for the life of an open file.
    pub fn read_guard(&self) -> ReadGuard<'_> {
        ReadGuard(self.read_gate.read())
    }

    /// After a failed write (a full disk): drops pack bytes no commit claimed and frees the
    /// space reserve, so the user can delete files (the catalog needs room to record that).
    pub fn reclaim_uncommitted(&self) -> Result<()> {
        let _exclusive = self.ingest_gate.write();
        let _ = std::fs::remove_file(self.root.join(RESERVE_FILE));
        self.pending.lock().clear();
        self.packs.seal_active()?;
        tracing::info!("dropping uncommitted pack bytes after a failed write");
        self.drop_uncommitted_pack_bytes()
    }

    /// Records past a pack's committed size, and packs no committed chunk lives in, were never
    /// visible: they go. Only while no writer is between prepare and commit (at open, or with
    /// the ingest gate held exclusively), since a writer's appended chunks are uncommitted.
    fn drop_uncommitted_pack_bytes(&self) -> Result<()> {
        let committed: HashMap<u64, u64> = self.catalog.read(|tx| {
            let mut stmt = tx.conn().prepare("SELECT id, size FROM packs")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?;
            let mut map = HashMap::new();
            for row in rows {
                let (id, size) = row?;
                map.insert(id, size);
            }
            Ok(map)
        })?;
        for id in self.packs.list()? {
            let path = self.packs.path(id);
            let len = std::fs::metadata(&path)
                .ctx(|| format!("stat {}", path.display()))?
                .len();
            match committed.get(&id) {
                None => {
                    tracing::info!(pack = id, "removing pack with no committed chunks");
                    self.packs.remove(id)?;
                }
                Some(&size) if len > size => {
                    tracing::info!(pack = id, len, size, "dropping uncommitted pack tail");
                    self.packs.truncate(id, size)?;
                }
                Some(_) => {}
            }
        }
        self.packs.remove_orphan_indexes()
    }

    /// A few MiB held back on the store's disk, released when the disk fills up so that
    /// deleting (which writes the catalog) still works.
    fn ensure_reserve(&self) {
        let path = self.root.join(RESERVE_FILE);
        if path.exists() {
            return;
        }
        let made = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|f| {
                // SAFETY: fallocate on a descriptor we own; real blocks, unlike a sparse set_len.
                let rc = unsafe {
                    libc::posix_fallocate(
                        std::os::fd::AsRawFd::as_raw_fd(&f),
                        0,
                        RESERVE_BYTES as libc::off_t,
                    )
                };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::from_raw_os_error(rc))
                }
            });
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            tracing::warn!(error = %e, "could not set aside the space reserve");
        }
    }

    /// Where a chunk already is, committed or pending, if anywhere.
    pub(crate) fn known_chunk(&self, hash: &ChunkHash) -> Result<Option<ChunkLocation>> {
        if let Some(loc) = self.pending.lock().get(hash) {
            return Ok(Some(*loc));
        }
        self.catalog.read(|tx| tx.chunk_location(hash))
    }

    /// Forgets where the chunks of `prepared` are pending, for a content that will not be
    /// committed (its source changed while it was read): no file prepared later takes a chunk
    /// from it. Its bytes stay in the packs, unreferenced, until gc or recovery drops them.
    pub fn forget_prepared(&self, prepared: &PreparedContent) {
        let mut pending = self.pending.lock();
        for chunk in &prepared.chunks {
            if chunk.location.is_some() && pending.get(&chunk.hash) == chunk.location.as_ref() {
                pending.remove(&chunk.hash);
            }
        }
    }

    /// Appends a chunk nobody has (to `raw`, the file's own raw pack, if it has one),
    /// remembering it as pending.
    pub(crate) fn append_chunk(
        &self,
        raw: Option<&mut RawPackWriter<'_>>,
        hash: &ChunkHash,
        data: &[u8],
    ) -> Result<ChunkLocation> {
        let loc = match raw {
            Some(writer) => writer.append(hash, data)?,
            None => self.packs.append(hash, data)?,
        };
        let mut pending = self.pending.lock();
        if pending.len() >= PENDING_LIMIT {
            pending.clear();
        }
        pending.insert(*hash, loc);
        Ok(loc)
    }

    /// Makes prepared bytes durable and runs `attach` in the same catalog transaction that
    /// records the content; `attach` gets the content id (`None` for an empty file).
    pub fn commit<T>(
        &self,
        prepared: &PreparedContent,
        attach: impl FnOnce(&Tx, Option<i64>) -> Result<T>,
    ) -> Result<T> {
        // Also with no new bytes: its chunks may be another writer's, not yet durable (an
        // import's, committed unsynced or still pending).
        if prepared.new_bytes > 0 || !self.packs.unsynced().is_empty() {
            self.packs.sync()?;
        }
        self.catalog.write(|tx| {
            let content = if prepared.size == 0 {
                None
            } else {
                Some(tx.insert_content(prepared)?)
            };
            attach(tx, content)
        })
    }

    /// Verified bytes of chunk `index` of a content.
    pub fn chunk(&self, map: &ContentMap, index: usize) -> Result<Arc<Vec<u8>>> {
        self.chunk_in(None, map, index, Access::Sequential)
    }

    /// [`Store::chunk`] from inside a catalog transaction (`tx`), or outside one (`None`).
    ///
    /// A map may be older than the chunks' locations: gc moves live chunks out of mostly-dead
    /// packs and deletes those packs (gc.rs). A chunk that cannot be read where the map says is
    /// looked up again by its hash and read from where the catalog has it now. Inside a
    /// transaction the map cannot be stale (gc commits before it deletes, and its commit waits
    /// for ours), so no gate is taken there — taking it could deadlock with gc, which holds the
    /// gate while it writes the catalog.
    ///
    /// `access` says whether the pack is read with kernel readahead (see
    /// [`Packs::read_verified_owned`]).
    fn chunk_in(
        &self,
        tx: Option<&Tx>,
        map: &ContentMap,
        index: usize,
        access: Access,
    ) -> Result<Arc<Vec<u8>>> {
        let chunk = map
            .chunks
            .get(index)
            .ok_or_else(|| StoreError::Inconsistent(format!("chunk {index} out of range")))?;
        if let Some(bytes) = self.cache.get(&chunk.hash) {
            return Ok(bytes);
        }
        // Readahead sends neighbouring requests in parallel, and a request often ends inside
        // the chunk the next one starts in: one thread loads a chunk while the others wait for
        // it, instead of each reading and hashing it again.
        let _loading = self.loading[chunk.hash[0] as usize % LOADING_STRIPES].lock();
        if let Some(bytes) = self.cache.get(&chunk.hash) {
            return Ok(bytes);
        }
        // Recursive: the caller may already hold it (see `read_guard`).
        let _reading = tx.is_none().then(|| self.read_gate.read_recursive());
        let readahead = access == Access::Sequential;
        let bytes = match self
            .packs
            .read_verified_owned(chunk.location, &chunk.hash, readahead)
        {
            Ok(bytes) => bytes,
            Err(first) => {
                let now = match tx {
                    Some(tx) => tx.chunk_location(&chunk.hash)?,
                    None => self.catalog.read(|tx| tx.chunk_location(&chunk.hash))?,
                };
                match now {
                    Some(loc) if loc != chunk.location => {
                        tracing::debug!(
                            chunk = %hex::encode(chunk.hash),
                            from = ?chunk.location,
                            to = ?loc,
                            "chunk moved by gc since its map was loaded"
                        );
                        self.packs
                            .read_verified_owned(loc, &chunk.hash, readahead)?
                    }
                    // Not moved: the failure is real (bit rot, a missing pack).
                    _ => return Err(missing_pack_is_damage(first, chunk)),
                }
            }
        };
        let bytes = Arc::new(bytes);
        self.cache.insert(chunk.hash, bytes.clone());
        Ok(bytes)
    }

    /// Reads up to `buf.len()` bytes at `offset` of a content (verified); returns the count.
    /// Callers outside a catalog transaction should hold [`Store::read_guard`] from before
    /// they took `map` (see there); chunks gc moved since are found again.
    pub fn read(&self, map: &ContentMap, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_into_slice(None, map, offset, buf, Access::Sequential)
    }

    /// Appends up to `len` bytes of the content from `offset` to `out` (fewer at its end), as
    /// [`Store::read`] or, with `random`, [`Store::read_random`] would read them, without a
    /// zeroed buffer to copy them into first (the mount's read path). Returns the count.
    pub fn read_appending(
        &self,
        map: &ContentMap,
        offset: u64,
        len: usize,
        random: bool,
        out: &mut Vec<u8>,
    ) -> Result<usize> {
        let access = if random {
            Access::Random
        } else {
            Access::Sequential
        };
        self.read_in(None, map, offset, len, out, access)
    }

    /// A read-only descriptor of the raw pack (pack.rs) whose bytes are exactly `content`'s, if
    /// there is one, for the kernel to read the file from directly (FUSE passthrough); `size`
    /// is the inode's (a file longer than its content has a sparse tail the pack lacks).
    ///
    /// Those reads are not checked against the chunk ids as the daemon's reads are; `mlxfs
    /// verify` checks the pack. A pack gc deletes later stays readable through the descriptor,
    /// unchanged: gc writes moved chunks elsewhere and never rewrites a pack in place.
    pub fn passthrough_pack(&self, content: i64, size: u64) -> Result<Option<(u64, File)>> {
        let Some((pack, content_size)) =
            self.catalog.read(|tx| tx.pack_equal_to_content(content))?
        else {
            return Ok(None);
        };
        if content_size != size || !self.packs.is_raw(pack) {
            return Ok(None);
        }
        let path = self.packs.path(pack);
        let file = match File::open(&path) {
            Ok(file) => file,
            // Moved by gc since the catalog was read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(format!("opening {}", path.display()), e)),
        };
        let len = file
            .metadata()
            .ctx(|| format!("stat {}", path.display()))?
            .len();
        // Longer on disk: uncommitted bytes a crash left, dropped at the next start.
        Ok((len == size).then_some((pack, file)))
    }

    /// [`Store::read`] for a read that does not continue the previous one (mmap faults, pread
    /// at scattered offsets): a small part of a big chunk is read and checked block by block
    /// (blocks.rs) instead of reading and checking the whole chunk.
    pub fn read_random(&self, map: &ContentMap, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_into_slice(None, map, offset, buf, Access::Random)
    }

    /// [`Store::read`] from inside the catalog transaction `tx` that loaded `map`.
    pub fn read_in_tx(
        &self,
        tx: &Tx,
        map: &ContentMap,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        self.read_into_slice(Some(tx), map, offset, buf, Access::Sequential)
    }

    fn read_into_slice(
        &self,
        tx: Option<&Tx>,
        map: &ContentMap,
        offset: u64,
        buf: &mut [u8],
        access: Access,
    ) -> Result<usize> {
        let mut out = Vec::with_capacity(buf.len());
        let n = self.read_in(tx, map, offset, buf.len(), &mut out, access)?;
        buf[..n].copy_from_slice(&out);
        Ok(n)
    }

    /// Appends up to `len` bytes from `offset` to `out`; returns how many.
    fn read_in(
        &self,
        tx: Option<&Tx>,
        map: &ContentMap,
        offset: u64,
        len: usize,
        out: &mut Vec<u8>,
        access: Access,
    ) -> Result<usize> {
        let Some(mut index) = map.chunk_index(offset) else {
            return Ok(0);
        };
        let want = len.min((map.size - offset) as usize);
        let mut done = 0;
        while done < want {
            let chunk = &map.chunks[index];
            let in_chunk = (offset + done as u64 - chunk.file_offset) as usize;
            let n = (chunk.location.len as usize)
                .saturating_sub(in_chunk)
                .min(want - done);
            // Block by block outside transactions: on random access, and after a whole chunk
            // failed its check (a damaged chunk then fails only the reads that need its damaged
            // blocks; a readahead request that merely ends inside it still gets its bytes).
            let by_blocks = tx.is_none() && n > 0;
            if !(by_blocks
                && access == Access::Random
                && self.read_blocks(chunk, in_chunk, n, out, false))
            {
                match self.chunk_in(tx, map, index, access) {
                    Ok(bytes) => {
                        out.extend_from_slice(bytes.get(in_chunk..in_chunk + n).ok_or_else(
                            || StoreError::Inconsistent("chunk shorter than its location".into()),
                        )?)
                    }
                    Err(e @ StoreError::CorruptChunk { .. }) => {
                        if !(by_blocks && self.read_blocks(chunk, in_chunk, n, out, true)) {
                            return Err(e);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            self.packs.drop_served(
                chunk.location.pack,
                chunk.location.offset + in_chunk as u64,
                n as u64,
            );
            done += n;
            index += 1;
            if index >= map.chunks.len() {
                break;
            }
        }
        Ok(done)
    }
}

/// Whether a read continues the one before it (see [`Store::read_random`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Sequential,
    Random,
}

/// Stripes of the chunk-load locks: loads of different chunks rarely share one.
const LOADING_STRIPES: usize = 64;

/// Block CV lists kept in memory (256 bytes each for a 1 MiB chunk).
const BLOCK_CVS_CACHED: usize = 8192;

impl Store {
    /// Appends `len` bytes from byte `start` of `chunk` to `out` by reading and checking only
    /// the blocks they touch (nothing is appended when it returns false). `false` when that is not worth it (a small chunk, most of a chunk wanted, the
    /// chunk already cached) or not possible (no CVs stored, a read or check failed): the
    /// caller then reads the whole chunk, which also reports any damage properly.
    /// With `always`, the blocks are read whenever CVs exist (after the whole chunk failed).
    fn read_blocks(
        &self,
        chunk: &MappedChunk,
        start: usize,
        wanted: usize,
        out: &mut Vec<u8>,
        always: bool,
    ) -> bool {
        let len = chunk.location.len as u64;
        let worth_it = wanted as u64 * 2 <= len && !self.cache.contains(&chunk.hash);
        if len <= VERIFY_BLOCK || !(always || worth_it) {
            return false;
        }
        let Some(cvs) = self.block_cvs(chunk) else {
            return false;
        };
        let block = VERIFY_BLOCK as usize;
        let first = start / block;
        let last = (start + wanted - 1) / block;
        let span_start = first * block;
        let span_end = ((last + 1) * block).min(len as usize);
        let _reading = self.read_gate.read_recursive();
        let Ok(span) = self.packs.read_span(
            chunk.location.pack,
            chunk.location.offset + span_start as u64,
            span_end - span_start,
            &chunk.hash,
        ) else {
            return false;
        };
        for (i, bytes) in span.chunks(block).enumerate() {
            if !blocks::block_matches(&cvs, first + i, bytes) {
                return false;
            }
        }
        let from = start - span_start;
        out.extend_from_slice(&span[from..from + wanted]);
        true
    }

    /// The proven CV list of a chunk, if the catalog has one.
    fn block_cvs(&self, chunk: &MappedChunk) -> Option<Arc<Vec<u8>>> {
        if let Some(cvs) = self.block_cvs.lock().get(&chunk.hash) {
            return Some(cvs.clone());
        }
        let cvs = self
            .catalog
            .read(|tx| tx.chunk_cvs(chunk.chunk_id))
            .ok()
            .flatten()?;
        if !blocks::cvs_match(&cvs, chunk.location.len as u64, &chunk.hash) {
            tracing::warn!(chunk = %hex::encode(chunk.hash), "stored block CVs do not match the chunk");
            return None;
        }
        let cvs = Arc::new(cvs);
        let mut cached = self.block_cvs.lock();
        if cached.len() >= BLOCK_CVS_CACHED {
            cached.clear();
        }
        cached.insert(chunk.hash, cvs.clone());
        Some(cvs)
    }
}

/// A pack the catalog names but the disk lacks is damage like a flipped byte: the reader gets
/// EIO, not the ENOENT of opening the file (which read(2) would pass on as if the file it
/// reads were gone).
fn missing_pack_is_damage(e: StoreError, chunk: &MappedChunk) -> StoreError {
    match e {
        StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            StoreError::CorruptChunk {
                chunk: hex::encode(chunk.hash),
                pack: chunk.location.pack,
                offset: chunk.location.offset,
                reason: "pack file is missing".into(),
            }
        }
        other => other,
    }
}

/// Takes the store's exclusive lock, or says which process holds it.
fn take_lock(root: &Path) -> Result<File> {
    let path = root.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(StoreError::Locked {
            path: root.to_path_buf(),
            pid: pid.trim().to_string(),
        });
    }
    file.set_len(0)
        .ctx(|| format!("writing {}", path.display()))?;
    file.rewind()
        .ctx(|| format!("writing {}", path.display()))?;
    write!(file, "{}", std::process::id()).ctx(|| format!("writing {}", path.display()))?;
    Ok(file)
}

/// The pid recorded in a store's lock file when another process holds the lock.
pub fn lock_holder(root: &Path) -> Option<String> {
    let path = root.join("lock");
    let file = File::open(&path).ok()?;
    // SAFETY: flock on a file descriptor we own; we release it at once.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_SH | libc::LOCK_NB,
        )
    };
    if rc == 0 {
        return None;
    }
    std::fs::read_to_string(&path)
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::ChunkerConfig;

    use crate::formats::testgen::pseudo_random as random;

    #[test]
    fn random_reads_check_only_their_blocks_and_never_return_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            chunker: ChunkerConfig::with_avg(512 << 10),
            ..StoreOptions::default()
        };
        let store = Store::open(tmp.path(), options).unwrap();
        let data = random(6 << 20, 7);
        let prepared = store.prepare(&data).unwrap();
        let id = store.commit(&prepared, |_, c| Ok(c)).unwrap().unwrap();
        let map = store.catalog.read(|tx| tx.content_map(id)).unwrap();
        assert!(map
            .chunks
            .iter()
            .all(|c| c.location.len as u64 > VERIFY_BLOCK));

        let mut x = 12345u64;
        for _ in 0..300 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let offset = (x >> 16) % data.len() as u64;
            let len = 1 + ((x >> 40) % (96 << 10)) as usize;
            let mut got = vec![0u8; len];
            let n = store.read_random(&map, offset, &mut got).unwrap();
            let end = (offset as usize + len).min(data.len());
            assert_eq!(n, end - offset as usize);
            assert_eq!(&got[..n], &data[offset as usize..end], "at {offset}+{len}");
        }
        // The partial path really ran: CV lists were loaded and no chunk was cached whole.
        assert!(!store.block_cvs.lock().is_empty());

        // Damage one byte in the middle of the second chunk's third block.
        let chunk = map.chunks[1];
        let damaged_at = chunk.location.offset + 2 * VERIFY_BLOCK + 100;
        let pack = store
            .root()
            .join("packs")
            .join(crate::pack::pack_file_name(chunk.location.pack));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pack)
            .unwrap();
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, damaged_at).unwrap();
        file.write_all_at(&[byte[0] ^ 0x20], damaged_at).unwrap();
        drop(file);
        let in_file = chunk.file_offset + 2 * VERIFY_BLOCK;
        let mut buf = vec![0u8; 4096];
        assert!(store.read_random(&map, in_file + 64, &mut buf).is_err());
        assert!(store.read(&map, in_file + 64, &mut buf).is_err());
        // Another block of the same chunk still reads, and is right.
        let other = chunk.file_offset + 100;
        let n = store.read_random(&map, other, &mut buf).unwrap();
        assert_eq!(&buf[..n], &data[other as usize..other as usize + n]);
        // So does a sequential read of the chunk's intact part (the whole chunk fails its
        // check; its intact blocks are then checked one by one), but not one that spans the
        // damaged block.
        let mut head = vec![0u8; (2 * VERIFY_BLOCK) as usize];
        let n = store.read(&map, chunk.file_offset, &mut head).unwrap();
        assert_eq!(n, head.len());
        let start = chunk.file_offset as usize;
        assert_eq!(&head[..], &data[start..start + n]);
        let mut span = vec![0u8; (3 * VERIFY_BLOCK) as usize];
        assert!(store.read(&map, chunk.file_offset, &mut span).is_err());
    }

    /// Options that give files of 1 MiB or more a raw pack, cut in 64 KiB chunks.
    fn small_raw_packs() -> StoreOptions {
        StoreOptions {
            chunker: ChunkerConfig::with_avg(64 << 10),
            raw_pack_min_file: 1 << 20,
            ..StoreOptions::default()
        }
    }

    /// Writes `data` to `dir/name`, prepares it mapped (as an import does) and commits it:
    /// the content id and what preparing it stored.
    fn commit_mapped(store: &Store, dir: &Path, data: &[u8], name: &str) -> (i64, u64) {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        let mapped = crate::mapped::MappedFile::open(&path).unwrap();
        let prepared = store.prepare(&mapped).unwrap();
        let id = store.commit(&prepared, |_, c| Ok(c)).unwrap().unwrap();
        (id, prepared.new_bytes)
    }

    #[test]
    fn a_file_whose_chunks_are_all_new_is_adopted_as_its_raw_pack() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), small_raw_packs()).unwrap();
        let commit_file = |data: &[u8], name: &str| {
            let path = tmp.path().join(name);
            std::fs::write(&path, data).unwrap();
            let prepared = store.prepare_adopting(data, &path).unwrap();
            let id = store.commit(&prepared, |_, c| Ok(c)).unwrap().unwrap();
            (id, path, prepared.new_bytes)
        };
        let data = random(3 << 20, 21);
        let (id, path, new_bytes) = commit_file(&data, "staged-a");
        assert_eq!(new_bytes, data.len() as u64);
        let (pack, file) = store
            .passthrough_pack(id, data.len() as u64)
            .unwrap()
            .expect("one raw pack holds the file");
        assert_eq!(
            file.metadata().unwrap().ino(),
            std::fs::metadata(&path).unwrap().ino(),
            "the pack is the file itself, not a copy"
        );
        std::fs::remove_file(&path).unwrap();
        let map = store.catalog.read(|tx| tx.content_map(id)).unwrap();
        let mut got = vec![0u8; data.len()];
        assert_eq!(store.read(&map, 0, &mut got).unwrap(), data.len());
        assert!(got == data);
        assert!(store.packs.is_raw(pack));

        // Some chunks known already: copied as usual, the known ones not stored again.
        let mut mixed = data[..1 << 20].to_vec();
        mixed.extend(random(2 << 20, 22));
        let (mixed_id, mixed_path, new_bytes) = commit_file(&mixed, "staged-b");
        assert!(new_bytes < mixed.len() as u64 && new_bytes >= 1 << 20);
        let map = store.catalog.read(|tx| tx.content_map(mixed_id)).unwrap();
        let mixed_ino = std::fs::metadata(&mixed_path).unwrap().ino();
        for pack in map.chunks.iter().map(|c| c.location.pack) {
            let pack_path = store.packs.path(pack);
            assert_ne!(std::fs::metadata(pack_path).unwrap().ino(), mixed_ino);
        }
        let mut got = vec![0u8; mixed.len()];
        assert_eq!(store.read(&map, 0, &mut got).unwrap(), mixed.len());
        assert!(got == mixed);

        // Reopened, the adopted pack is a pack like any other.
        drop(store);
        let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
        let map = store.catalog.read(|tx| tx.content_map(id)).unwrap();
        let mut got = vec![0u8; data.len()];
        assert_eq!(store.read(&map, 0, &mut got).unwrap(), data.len());
        assert!(got == data);
    }

    /// A sparse file is read (its data extents only) rather than mapped: mapped, its holes
    /// would have tmpfs allocate pages, a SIGBUS on a full tmpfs.
    #[test]
    fn a_sparse_file_is_read_not_mapped_and_stores_its_zeros_once() {
        use crate::mapped::MappedFile;
        use std::os::unix::fs::FileExt;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), small_raw_packs()).unwrap();
        let path = tmp.path().join("sparse");
        let file = std::fs::File::create(&path).unwrap();
        let data = random(300 << 10, 5);
        file.set_len(40 << 20).unwrap();
        file.write_all_at(&data, 17 << 20).unwrap();
        file.write_all_at(b"tail", (40 << 20) - 4).unwrap();
        let mut expected = vec![0u8; 40 << 20];
        expected[17 << 20..(17 << 20) + data.len()].copy_from_slice(&data);
        expected[(40 << 20) - 4..].copy_from_slice(b"tail");

        let mapped = MappedFile::open(&path).unwrap();
        assert!(!mapped.maps_the_file(), "a file with holes is copied");
        assert!(*mapped == expected[..]);
        let prepared = store.prepare(&mapped).unwrap();
        // The zeros are a handful of distinct chunks, whatever their count.
        assert!(prepared.new_bytes < 4 << 20, "{}", prepared.new_bytes);
        let id = store.commit(&prepared, |_, c| Ok(c)).unwrap().unwrap();
        let map = store.catalog.read(|tx| tx.content_map(id)).unwrap();
        let mut got = vec![1u8; expected.len()];
        assert_eq!(store.read(&map, 0, &mut got).unwrap(), expected.len());
        assert!(got == expected);

        // A file without holes is mapped as before.
        std::fs::write(&path, &data).unwrap();
        assert!(MappedFile::open(&path).unwrap().maps_the_file());
    }

    /// An import source truncated, or written, while it is read is an error of that file: no
    /// crash (SIGBUS), nothing of it stays pending for later files, and the store reads on.
    #[test]
    fn an_import_source_that_changes_while_read_is_refused_and_forgotten() {
        use crate::deferred_sync::Durability;
        use crate::mapped::MappedFile;
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::AtomicU64;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), small_raw_packs()).unwrap();
        for (round, durability) in [Durability::BeforeCommit, Durability::AfterCommit]
            .into_iter()
            .enumerate()
        {
            let data = random(24 << 20, 40 + round as u64);
            let path = tmp.path().join(format!("source{round}"));
            std::fs::write(&path, &data).unwrap();
            let mapped = MappedFile::open(&path).unwrap();
            assert!(mapped.maps_the_file());
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let pending_before = store.pending.lock().clone();
            let err = if round == 0 {
                // Truncated: every page past 5 MiB is gone from under the map.
                file.set_len(5 << 20).unwrap();
                store
                    .prepare_import(&mapped, &AtomicU64::new(0), durability)
                    .unwrap_err()
            } else {
                file.write_all_at(b"rewritten", 7 << 20).unwrap();
                store
                    .prepare_import(&mapped, &AtomicU64::new(0), durability)
                    .unwrap_err()
            };
            assert!(matches!(err, StoreError::SourceChanged { .. }), "{err}");
            assert!(*store.pending.lock() == pending_before, "round {round}");

            // The same bytes, read whole this time, are stored and read back intact.
            let (id, _) = commit_mapped(&store, tmp.path(), &data, &format!("again{round}"));
            let map = store.catalog.read(|tx| tx.content_map(id)).unwrap();
            let mut got = vec![0u8; data.len()];
            assert_eq!(store.read(&map, 0, &mut got).unwrap(), data.len());
            assert!(got == data);
        }
    }

    #[test]
    fn a_mapped_big_file_is_copied_aside_and_adopted_unless_the_store_has_some_of_it() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), small_raw_packs()).unwrap();
        let import = |data: &[u8], name: &str| {
            let (id, new_bytes) = commit_mapped(&store, tmp.path(), data, name);
            let leftovers = std::fs::read_dir(store.staging_dir()).map_or(0, |d| d.count());
            assert_eq!(leftovers, 0, "the copy's staging name is gone");
            (id, tmp.path().join(name), new_bytes)
        };
        let read_back = |id: i64, len: usize| {
            let map = store.catalog.read(|tx| tx.content_map(id)).unwrap();
            let mut got = vec![0u8; len];
            assert_eq!(store.read(&map, 0, &mut got).unwrap(), len);
            got
        };
        // Not a multiple of the O_DIRECT block: the tail is padded, then cut back.
        let data = random((3 << 20) + 1234, 31);
        let (id, source, new_bytes) = import(&data, "source-a");
        assert_eq!(new_bytes, data.len() as u64);
        let (pack, mut file) = store
            .passthrough_pack(id, data.len() as u64)
            .unwrap()
            .expect("one raw pack holds the file");
        assert!(store.packs.is_raw(pack));
        assert_ne!(
            file.metadata().unwrap().ino(),
            std::fs::metadata(&source).unwrap().ino(),
            "the pack is a copy, not the user's file"
        );
        let mut on_disk = Vec::new();
        file.read_to_end(&mut on_disk).unwrap();
        assert!(on_disk == data, "the raw pack is the file's bytes");
        assert!(read_back(id, data.len()) == data);

        // Most chunks known: only the new ones are stored, none twice.
        let mut mixed = data[..2 << 20].to_vec();
        mixed.extend(random(2 << 20, 32));
        let (mixed_id, _, new_bytes) = import(&mixed, "source-b");
        assert!((2 << 20..(2 << 20) + (256 << 10)).contains(&new_bytes));
        assert!(read_back(mixed_id, mixed.len()) == mixed);

        // Reopened, both read back, and a copy a crashed import left is gone.
        let left = store.staging_dir().join("import-1-1.import-copy");
        std::fs::write(&left, b"partial").unwrap();
        drop(store);
        let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
        assert!(!left.exists());
        for (id, bytes) in [(id, &data), (mixed_id, &mixed)] {
            let map = store.catalog.read(|tx| tx.content_map(id)).unwrap();
            let mut got = vec![0u8; bytes.len()];
            assert_eq!(store.read(&map, 0, &mut got).unwrap(), bytes.len());
            assert!(&got == bytes);
        }
    }

    #[test]
    fn a_big_file_sharing_only_its_header_is_kept_whole_for_passthrough() {
        use crate::formats::testgen::make_safetensors;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), small_raw_packs()).unwrap();
        let import = |data: &[u8], name: &str| commit_mapped(&store, tmp.path(), data, name);
        let whole_copy = |id: i64, len: usize| {
            let (pack, mut file) = store.passthrough_pack(id, len as u64).unwrap()?;
            let mut on_disk = Vec::new();
            file.read_to_end(&mut on_disk).unwrap();
            Some((pack, on_disk))
        };
        // Two fine-tunes of one architecture: the same safetensors header, other weights.
        let model = |a: &[u8], b: &[u8]| {
            make_safetensors(&[
                ("a.weight", "F16", vec![1024, 1024], a.to_vec()),
                ("b.weight", "F16", vec![1024, 1024], b.to_vec()),
            ])
        };
        let (a1, b1, a2, b2) = (
            random(2 << 20, 1),
            random(2 << 20, 2),
            random(2 << 20, 3),
            random(2 << 20, 4),
        );
        let first = model(&a1, &b1);
        let second = model(&a2, &b2);
        let header = first.len() - (4 << 20);
        assert_eq!(first[..header], second[..header]);
        let (first_id, _) = import(&first, "first");
        let (second_id, new_bytes) = import(&second, "second");
        assert_eq!(new_bytes, (4 << 20) as u64, "the header is stored once");
        let (pack1, copy1) = whole_copy(first_id, first.len()).expect("first: passthrough");
        let (pack2, copy2) = whole_copy(second_id, second.len()).expect("second: passthrough too");
        assert_ne!(pack1, pack2);
        assert!(
            copy1 == first && copy2 == second,
            "each raw pack is its file, header included"
        );

        // Sharing a whole tensor (half the file) is dedup's business: no second copy.
        let third = model(&a2, &random(2 << 20, 5));
        let (third_id, new_bytes) = import(&third, "third");
        assert_eq!(new_bytes, (2 << 20) as u64);
        assert!(whole_copy(third_id, third.len()).is_none());
        assert!(store.verify(&|_| {}).unwrap().ok);

        // The header's bytes in the second copy are checked by verify, though its chunk is
        // the first file's: passthrough would serve them.
        let path2 = store.packs.path(pack2);
        let mut bytes = std::fs::read(&path2).unwrap();
        bytes[8] ^= 0xff;
        std::fs::write(&path2, &bytes).unwrap();
        let report = store.verify(&|_| {}).unwrap();
        assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
        assert_eq!(report.damaged[0].content, second_id);
        assert!(
            report.damaged[0].reason.contains("whole copy"),
            "{}",
            report.damaged[0].reason
        );
        // The daemon's reads take the header from the first file's pack, checked.
        let map = store.catalog.read(|tx| tx.content_map(second_id)).unwrap();
        let mut got = vec![0u8; second.len()];
        assert_eq!(store.read(&map, 0, &mut got).unwrap(), second.len());
        assert!(got == second);
    }

    #[test]
    fn a_big_new_file_gets_a_raw_pack_equal_to_its_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), small_raw_packs()).unwrap();
        let commit = |data: &[u8]| {
            let prepared = store.prepare(data).unwrap();
            store.commit(&prepared, |_, c| Ok(c)).unwrap().unwrap()
        };
        let data = random(3 << 20, 11);
        let whole = commit(&data);
        let (_, mut file) = store
            .passthrough_pack(whole, data.len() as u64)
            .unwrap()
            .unwrap();
        let mut on_disk = Vec::new();
        file.read_to_end(&mut on_disk).unwrap();
        assert!(on_disk == data, "the raw pack is the file's bytes");
        // A file size other than the content's (a sparse tail): no passthrough.
        assert!(store
            .passthrough_pack(whole, data.len() as u64 + 1)
            .unwrap()
            .is_none());

        // A file made of the first one's chunks plus new ones: its chunks are not all in one
        // pack at their offsets, so no passthrough; the new ones still got a raw pack.
        let mut mixed = data.clone();
        mixed.extend(random(2 << 20, 12));
        let mixed_id = commit(&mixed);
        assert!(store
            .passthrough_pack(mixed_id, mixed.len() as u64)
            .unwrap()
            .is_none());
        let map = store.catalog.read(|tx| tx.content_map(mixed_id)).unwrap();
        let last = map.chunks.last().unwrap().location.pack;
        assert!(store.packs.is_raw(last));
        let mut got = vec![0u8; mixed.len()];
        assert_eq!(store.read(&map, 0, &mut got).unwrap(), mixed.len());
        assert!(got == mixed);

        // A small file shares the record packs.
        let small = random(100 << 10, 13);
        let small_id = commit(&small);
        let map = store.catalog.read(|tx| tx.content_map(small_id)).unwrap();
        assert!(map
            .chunks
            .iter()
            .all(|c| !store.packs.is_raw(c.location.pack)));
        assert!(store
            .passthrough_pack(small_id, small.len() as u64)
            .unwrap()
            .is_none());
    }

    #[test]
    fn raw_packs_no_commit_claimed_are_dropped_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let options = small_raw_packs();
        let store = Store::open(tmp.path(), options.clone()).unwrap();
        let kept = random(2 << 20, 21);
        let prepared = store.prepare(&kept).unwrap();
        store.commit(&prepared, |_, c| Ok(c)).unwrap();
        // Prepared, never committed (a crash between prepare and commit).
        store.prepare(&random(2 << 20, 22)).unwrap();
        let before = store.packs.list().unwrap();
        assert_eq!(before.len(), 2, "{before:?}");
        drop(store);
        let store = Store::open(tmp.path(), options).unwrap();
        let after = store.packs.list().unwrap();
        assert_eq!(after, before[..1].to_vec());
        let index = tmp
            .path()
            .join("packs")
            .join(crate::pack::raw_index_file_name(before[1]));
        assert!(!index.exists(), "the dropped pack's index went with it");
        // An index left without its pack (a crash between the two removals) goes at open.
        let stray = tmp
            .path()
            .join("packs")
            .join(crate::pack::raw_index_file_name(999));
        std::fs::write(&stray, b"MLXFSIX1").unwrap();
        drop(store);
        let _store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
        assert!(!stray.exists());
    }
}
