//! Turning bytes into a [`PreparedContent`]: chunk (tensor cuts, see `chunker`), name each
//! chunk by BLAKE3, append the ones the store lacks, and compute the whole-file SHA-256 (on a
//! second core) and the content's `chunk_list_hash` (from the chunk ids, no second pass).

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use crate::blocks::hash_chunk;
use crate::chunker::{chunk_spans, for_each_chunk_span};
use crate::content::{chunk_list_hash, PreparedChunk, PreparedContent};
use crate::deferred_sync::Durability;
use crate::error::Result;
use crate::mapped::MappedFile;
use crate::pack::ChunkLocation;
use crate::pack::RawPackWriter;
use crate::store::Store;
use crate::ChunkHash;

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Progress granularity while hashing a large file.
const PROGRESS_PIECE: usize = 32 << 20;

/// SHA-256 of `data`, telling `progress` of every piece hashed (the slowest pass over a file
/// being prepared, so its progress is the file's).
pub(crate) fn sha256_with_progress(data: &[u8], progress: &dyn Fn(u64)) -> [u8; 32] {
    let mut sha = Sha256::new();
    for piece in data.chunks(PROGRESS_PIECE) {
        sha.update(piece);
        progress(piece.len() as u64);
    }
    sha.finalize().into()
}

/// One chunk cut and hashed: its offset in the file, id, block CVs and length.
type HashedSpan = (u64, ChunkHash, Vec<u8>, u32);

/// What storing one file's chunks did.
struct StoredChunks {
    chunks: Vec<PreparedChunk>,
    /// Bytes of chunks the store did not have.
    new_bytes: u64,
    /// The raw pack holding the whole file, if one does (see [`PreparedContent::whole_in`]).
    whole_in: Option<u64>,
}

/// Whether a big file is kept whole in a raw pack of its own, for passthrough, though some of
/// its bytes are stored already (or repeat within it): when those are at most a 64th of it.
/// Models of one architecture share each shard's safetensors header (tensor names, shapes and
/// offsets), a few KiB; without this, the second such model's shards could never be read
/// by passthrough. At most 1/64 of such a file is stored twice.
fn may_keep_whole(shared_bytes: u64, size: u64) -> bool {
    shared_bytes <= size / 64
}

/// The bytes of a file, chunk by chunk, that the store has already or that repeat within it:
/// what [`may_keep_whole`] weighs.
struct SharedTally {
    seen: HashSet<ChunkHash>,
    bytes: u64,
    size: u64,
}

impl SharedTally {
    fn new(size: u64, chunks: usize) -> SharedTally {
        SharedTally {
            seen: HashSet::with_capacity(chunks),
            bytes: 0,
            size,
        }
    }

    /// Whether the chunk is shared, counting its bytes if so.
    fn count(&mut self, store: &Store, hash: &ChunkHash, len: u32) -> Result<bool> {
        let shared = !self.seen.insert(*hash) || store.known_chunk(hash)?.is_some();
        if shared {
            self.bytes += len as u64;
        }
        Ok(shared)
    }

    fn keeps_whole(&self) -> bool {
        may_keep_whole(self.bytes, self.size)
    }
}

/// Where the new chunks of one file go: a raw pack of its own for a big file (made at its
/// first new chunk), else the shared packs.
struct NewChunks<'s> {
    store: &'s Store,
    own_pack: bool,
    raw: Option<RawPackWriter<'s>>,
    durability: Durability,
    new_bytes: u64,
    /// No chunk so far was stored already: the raw pack, if any, is the file from its start.
    all_new: bool,
}

impl<'s> NewChunks<'s> {
    fn new(store: &'s Store, file_size: u64, durability: Durability) -> NewChunks<'s> {
        NewChunks {
            store,
            own_pack: file_size >= store.options.raw_pack_min_file,
            raw: None,
            durability,
            new_bytes: 0,
            all_new: true,
        }
    }

    /// Stores one chunk unless the store has it.
    fn put(&mut self, hash: ChunkHash, cvs: Vec<u8>, bytes: &[u8]) -> Result<PreparedChunk> {
        let claim = self.store.chunk_claims.lock();
        let location = match self.store.known_chunk(&hash)? {
            Some(_) => {
                self.all_new = false;
                None
            }
            None => {
                self.new_bytes += bytes.len() as u64;
                if self.own_pack && self.raw.is_none() {
                    self.raw = Some(self.store.packs.create_raw(self.durability)?);
                }
                Some(self.store.append_chunk(self.raw.as_mut(), &hash, bytes)?)
            }
        };
        drop(claim);
        // A pending chunk appended by another writer is committed by whichever commits
        // first; carry its location so either can create the catalog row.
        let location = match location {
            Some(loc) => Some(loc),
            None => self.store.pending.lock().get(&hash).copied(),
        };
        Ok(PreparedChunk {
            hash,
            len: bytes.len() as u32,
            cvs,
            location,
        })
    }

    /// Finishes the file's raw pack (durable at the next sync): the bytes that were new, and
    /// the pack when it holds the whole file.
    fn finish(self) -> Result<(u64, Option<u64>)> {
        let mut whole_in = None;
        if let Some(writer) = self.raw {
            whole_in = self.all_new.then(|| writer.id());
            writer.finish()?;
        }
        Ok((self.new_bytes, whole_in))
    }
}

/// Files at least this big are chunked and hashed on a thread of lower priority than their
/// SHA-256 (see [`yield_to_the_digest`]); below it, a thread more costs more than it gives.
const YIELD_TO_DIGEST_MIN_FILE: u64 = 16 << 20;

/// Lowers the calling thread's priority to 5 below the process's (its main thread's nice
/// value +5; a thread started by one that yielded already stays there) for the rest of its
/// life. A big file's
/// SHA-256 is one stream, the longest job of its preparation; the chunk hashing and the copy
/// beside it have time to spare, and when all three want a core the digest should get it.
/// Measured on two cores, cold: import of one 1 GiB file 0.661 s -> 0.627 s, of two 512 MiB
/// shards 0.633 s -> 0.604 s (medians of nine and eight alternating runs).
/// Only on threads that end with their job: an unprivileged thread cannot raise its priority
/// back, and threads it starts would inherit it.
fn yield_to_the_digest() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id; a failure leaves the priority.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        let process = libc::getpriority(libc::PRIO_PROCESS, libc::getpid() as libc::id_t);
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        let lower = (process + 5).min(19);
        if now < lower {
            libc::setpriority(libc::PRIO_PROCESS, tid, lower);
        }
    }
}

/// Alignment of O_DIRECT buffers, offsets and lengths (the largest logical block size in use).
const DIRECT_ALIGN: usize = 4096;
/// How the staging names of [`CopyAside`] files end.
pub(crate) const IMPORT_COPY_SUFFIX: &str = ".import-copy";
/// Bytes per write of [`CopyAside::write`] with O_DIRECT.
const COPY_PIECE: usize = 8 << 20;

/// A new name in the staging directory for a copy of a file being imported (a copy aside or
/// a clone). Removed by its user; one a crash left is removed when the store is next opened
/// (`Store::recover`).
#[cfg(target_os = "linux")]
fn import_copy_path(staging: &Path) -> Option<std::path::PathBuf> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::fs::create_dir_all(staging).ok()?;
    Some(staging.join(format!(
        "import-{}-{}{IMPORT_COPY_SUFFIX}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )))
}

/// A clone of `source` in the staging directory that shares its data on disk (FICLONE, as
/// `cp --reflink`: btrfs, XFS, bcachefs), or None where the file system cannot clone (ext4;
/// the store on another file system than the source). Nothing is copied, and a later write to
/// either file is copy-on-write: the clone keeps exactly the bytes it was made with.
#[cfg(target_os = "linux")]
fn clone_into(staging: &Path, source: &File) -> Option<std::path::PathBuf> {
    use std::os::fd::AsRawFd;
    let path = import_copy_path(staging)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .ok()?;
    // SAFETY: an ioctl on two descriptors we hold; the kernel touches no memory of ours.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        tracing::debug!(error = %e, "no clone of the import source");
        drop(file);
        let _ = std::fs::remove_file(&path);
        return None;
    }
    Some(path)
}

#[cfg(not(target_os = "linux"))]
fn clone_into(_staging: &Path, _source: &File) -> Option<std::path::PathBuf> {
    None
}

/// A file in the staging directory for a copy of a big file being prepared (see
/// `Store::store_copying`): written with O_DIRECT when its bytes must be durable before the
/// commit (straight to the disk, no stop in the page cache), through the page cache when the
/// commit does not wait for them (an import, see deferred_sync.rs).
struct CopyAside {
    file: File,
    path: std::path::PathBuf,
    durability: Durability,
}

impl CopyAside {
    /// None where the file system refuses O_DIRECT (or the staging directory is unusable): the
    /// caller stores chunk by chunk instead.
    #[cfg(not(target_os = "linux"))]
    fn create(_staging: &Path, _durability: Durability) -> Option<CopyAside> {
        None
    }

    #[cfg(target_os = "linux")]
    fn create(staging: &Path, durability: Durability) -> Option<CopyAside> {
        use std::os::unix::fs::OpenOptionsExt;
        let direct = durability == Durability::BeforeCommit;
        let path = import_copy_path(staging)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(if direct { libc::O_DIRECT } else { 0 })
            .open(&path)
            .map_err(|e| tracing::debug!(error = %e, direct, "no copy aside"))
            .ok()?;
        Some(CopyAside {
            file,
            path,
            durability,
        })
    }

    /// Copies `data` (page-aligned) into the file; Ok(false) when `stop` was set first.
    fn write(&self, data: &[u8], stop: &std::sync::atomic::AtomicBool) -> std::io::Result<bool> {
        let aligned = if self.durability == Durability::BeforeCommit {
            data.len() - data.len() % DIRECT_ALIGN
        } else {
            data.len()
        };
        // Through the page cache, big writes cost more than their bytes (page_cache.rs).
        let piece = if self.durability == Durability::BeforeCommit {
            COPY_PIECE
        } else {
            crate::page_cache::PAGE_CACHE_WRITE_PIECE
        };
        let mut offset = 0;
        while offset < aligned {
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let end = aligned.min(offset + piece);
            self.file.write_all_at(&data[offset..end], offset as u64)?;
            offset = end;
        }
        if aligned < data.len() {
            // The last partial block goes from an aligned buffer, padded, and is cut back.
            let mut buf = vec![0u8; 2 * DIRECT_ALIGN];
            let at = buf.as_ptr().align_offset(DIRECT_ALIGN);
            let block = &mut buf[at..at + DIRECT_ALIGN];
            block[..data.len() - aligned].copy_from_slice(&data[aligned..]);
            self.file.write_all_at(block, aligned as u64)?;
            self.file.set_len(data.len() as u64)?;
        }
        Ok(!stop.load(Ordering::Relaxed))
    }
}

impl Store {
    /// Chunks, hashes and stores `data`; nothing is visible until [`Store::commit`].
    pub fn prepare(&self, data: &[u8]) -> Result<PreparedContent> {
        self.prepare_counting(data, &AtomicU64::new(0), Durability::BeforeCommit)
    }

    /// Prepares a file being imported. Where its file system can clone it into the store's
    /// staging directory (btrfs, XFS: `clone_into`), the clone is what is chunked and hashed,
    /// and when its chunks are all new it becomes the raw pack: the import then writes no data
    /// at all, and the pack holds exactly the bytes its chunk ids were computed from even if
    /// the source changes meanwhile. Elsewhere as [`Store::prepare_counting`].
    /// Err([`crate::StoreError::SourceChanged`]) when the file was written, truncated or could
    /// not be read while it was being read: what was prepared is then forgotten (see
    /// [`Store::forget_prepared`]), never committed.
    pub(crate) fn prepare_import(
        &self,
        data: &MappedFile,
        hashed: &AtomicU64,
        durability: Durability,
    ) -> Result<PreparedContent> {
        let prepared = self.prepare_import_unchecked(data, hashed, durability)?;
        if let Err(changed) = data.check_unchanged() {
            self.forget_prepared(&prepared);
            return Err(changed);
        }
        Ok(prepared)
    }

    fn prepare_import_unchecked(
        &self,
        data: &MappedFile,
        hashed: &AtomicU64,
        durability: Durability,
    ) -> Result<PreparedContent> {
        let big = data.len() as u64 >= self.options.raw_pack_min_file;
        let clone = data
            .source()
            .filter(|_| big)
            .and_then(|source| clone_into(&self.staging_dir(), source));
        let Some(clone) = clone else {
            return self.prepare_counting(data, hashed, durability);
        };
        let prepared = match MappedFile::open(&clone) {
            Ok(copy) if copy.len() == data.len() && copy.maps_the_file() => {
                self.prepare_adopting_counting(&copy, &clone, hashed, durability)
            }
            // Changed since it was mapped, or holes: the source's mapping, as elsewhere.
            _ => self.prepare_counting(data, hashed, durability),
        };
        // Adoption linked the clone into the packs: its staging name goes either way.
        let _ = std::fs::remove_file(&clone);
        prepared
    }

    /// [`Store::prepare`], adding the bytes hashed so far to `hashed` (for progress bars); a
    /// big file's new bytes reach the disk as `durability` says.
    pub(crate) fn prepare_counting(
        &self,
        data: &[u8],
        hashed: &AtomicU64,
        durability: Durability,
    ) -> Result<PreparedContent> {
        if (data.len() as u64) >= self.options.raw_pack_min_file
            && (data.as_ptr() as usize) % DIRECT_ALIGN == 0
        {
            if let Some(copy) = CopyAside::create(&self.staging_dir(), durability) {
                return self.prepare_with(data, hashed, || self.store_copying(data, copy));
            }
        }
        self.prepare_with(data, hashed, || self.store_chunks(data, durability))
    }

    /// Stores a big file's chunks by copying the whole file aside (on a thread of its own)
    /// while its chunks are hashed, then adopting the copy as its raw pack if (nearly) every
    /// chunk is new (see `Packs::adopt_raw`, [`may_keep_whole`]); else the new chunks are
    /// stored one by one, as [`Store::store_chunks`] does. A copy that must be durable goes
    /// from the source's pages to the disk with O_DIRECT: through the page cache and then
    /// fsynced, it cost a third of an import's CPU (docs/PERFORMANCE.md). It stops once more
    /// than that 64th is stored already, so importing a file the store mostly holds writes
    /// little more than its new chunks. Nothing names the copy's chunks before it is complete
    /// and adopted.
    fn store_copying(&self, data: &[u8], copy: CopyAside) -> Result<StoredChunks> {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (spans, copied) = std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                yield_to_the_digest();
                copy.write(data, &stop)
            });
            let mut tally = SharedTally::new(data.len() as u64, 0);
            let spans = self.hash_spans(data, |hash, len| {
                if !stop.load(Ordering::Relaxed)
                    && tally.count(self, hash, len)?
                    && !tally.keeps_whole()
                {
                    stop.store(true, Ordering::Relaxed);
                }
                Ok(())
            });
            if spans.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            let copied = writer
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            (spans, copied)
        });
        // Closed first: an unlinked file still open keeps its room (on tmpfs, its pages).
        let CopyAside {
            file,
            path,
            durability,
        } = copy;
        drop(file);
        let adopt = match copied {
            Ok(complete) => complete,
            Err(e) => {
                tracing::debug!(error = %e, "copy aside failed; storing chunk by chunk");
                false
            }
        };
        if !adopt {
            // Its room goes back before the chunks are stored (the copy may have filled the disk).
            let _ = std::fs::remove_file(&path);
        }
        let stored = spans.and_then(|spans| {
            self.store_hashed(data, adopt.then_some(path.as_path()), spans, durability)
        });
        // Adoption linked the copy into the packs: its staging name goes either way.
        let _ = std::fs::remove_file(&path);
        stored
    }

    /// Runs `store` (which chunks `data` and stores the chunks) beside the SHA-256 on a second
    /// core, and puts the two together. SHA-256 is the slower digest (one stream, ~1.8 GB/s
    /// with SHA-NI): alone on its core it does not wait for the chunk hashing.
    fn prepare_with(
        &self,
        data: &[u8],
        hashed: &AtomicU64,
        store: impl FnOnce() -> Result<StoredChunks> + Send,
    ) -> Result<PreparedContent> {
        std::thread::scope(|scope| {
            let sha256 = scope.spawn(|| {
                sha256_with_progress(data, &|n| {
                    hashed.fetch_add(n, Ordering::Relaxed);
                })
            });
            let chunks = if data.len() as u64 >= YIELD_TO_DIGEST_MIN_FILE {
                scope
                    .spawn(|| {
                        yield_to_the_digest();
                        store()
                    })
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e))
            } else {
                store()
            };
            let sha256 = sha256
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            let StoredChunks {
                chunks,
                new_bytes,
                whole_in,
            } = chunks?;
            Ok(PreparedContent {
                size: data.len() as u64,
                sha256,
                chunk_list_hash: chunk_list_hash(chunks.iter().map(|c| &c.hash)),
                chunks,
                new_bytes,
                whole_in,
            })
        })
    }

    /// Like [`Store::prepare`] for a file on disk.
    pub fn prepare_file(&self, path: &Path) -> Result<PreparedContent> {
        let data = MappedFile::open(path)?;
        self.prepare(&data)
    }

    fn store_chunks(&self, data: &[u8], durability: Durability) -> Result<StoredChunks> {
        let mut chunks = Vec::with_capacity(data.len() / self.options.chunker.avg_size + 1);
        let mut sink = NewChunks::new(self, data.len() as u64, durability);
        // Each chunk is hashed and stored as soon as it is cut, while the disk reads ahead.
        for_each_chunk_span(data, &self.options.chunker, |span| -> Result<()> {
            let start = span.offset as usize;
            let bytes = &data[start..start + span.len as usize];
            let (hash, cvs) = hash_chunk(bytes);
            chunks.push(sink.put(hash, cvs, bytes)?);
            Ok(())
        })?;
        let (new_bytes, whole_in) = sink.finish()?;
        Ok(StoredChunks {
            chunks,
            new_bytes,
            whole_in,
        })
    }

    /// Like [`Store::prepare`] for `data`, the whole of the file at `path`, which nobody will
    /// write again (a staging file being committed). When the file is big enough for a raw
    /// pack of its own and every chunk is new, the file itself becomes that pack (see
    /// `Packs::adopt_raw`): no copy, and its pages in the page cache are the pack's.
    pub fn prepare_adopting(&self, data: &[u8], path: &Path) -> Result<PreparedContent> {
        self.prepare_adopting_counting(data, path, &AtomicU64::new(0), Durability::BeforeCommit)
    }

    fn prepare_adopting_counting(
        &self,
        data: &[u8],
        path: &Path,
        hashed: &AtomicU64,
        durability: Durability,
    ) -> Result<PreparedContent> {
        if (data.len() as u64) < self.options.raw_pack_min_file {
            return self.prepare_counting(data, hashed, durability);
        }
        self.prepare_with(data, hashed, || {
            let spans = self.hash_spans(data, |_, _| Ok(()))?;
            self.store_hashed(data, Some(path), spans, durability)
        })
    }

    /// Cuts `data` and hashes every chunk in file order, telling `each` every chunk id and
    /// length as it is made.
    fn hash_spans(
        &self,
        data: &[u8],
        mut each: impl FnMut(&ChunkHash, u32) -> Result<()>,
    ) -> Result<Vec<HashedSpan>> {
        chunk_spans(data, &self.options.chunker)
            .into_iter()
            .map(|span| {
                let start = span.offset as usize;
                let (hash, cvs) = hash_chunk(&data[start..start + span.len as usize]);
                each(&hash, span.len)?;
                Ok((span.offset, hash, cvs, span.len))
            })
            .collect()
    }

    /// Stores chunks cut and hashed already: by adopting the file at `path` (a copy of `data`)
    /// as their raw pack when (nearly) all are new and distinct (see [`may_keep_whole`]), else
    /// one by one.
    fn store_hashed(
        &self,
        data: &[u8],
        path: Option<&Path>,
        spans: Vec<HashedSpan>,
        durability: Durability,
    ) -> Result<StoredChunks> {
        let claim = self.chunk_claims.lock();
        if let Some(path) = path {
            // Chunks stored already, or met earlier in this file: their bytes in the pack are
            // a copy only passthrough reads; the catalog keeps their first location.
            let mut tally = SharedTally::new(data.len() as u64, spans.len());
            let mut shared = Vec::with_capacity(spans.len());
            for (_, hash, _, len) in &spans {
                shared.push(tally.count(self, hash, *len)?);
                if !tally.keeps_whole() {
                    break;
                }
            }
            if tally.keeps_whole() {
                let entries: Vec<(ChunkHash, u32)> = spans.iter().map(|s| (s.1, s.3)).collect();
                let pack = self.packs.adopt_raw(path, &entries)?;
                let mut pending = self.pending.lock();
                let mut new_bytes = 0;
                let chunks = spans
                    .into_iter()
                    .zip(shared)
                    .map(|((offset, hash, cvs, len), is_shared)| {
                        let location = if is_shared {
                            // Pending in another writer's pack, or earlier in this one.
                            pending.get(&hash).copied()
                        } else {
                            new_bytes += len as u64;
                            let location = ChunkLocation { pack, offset, len };
                            pending.insert(hash, location);
                            Some(location)
                        };
                        PreparedChunk {
                            hash,
                            len,
                            cvs,
                            location,
                        }
                    })
                    .collect();
                return Ok(StoredChunks {
                    chunks,
                    new_bytes,
                    whole_in: Some(pack),
                });
            }
        }
        drop(claim);
        let mut sink = NewChunks::new(self, data.len() as u64, durability);
        let mut chunks = Vec::with_capacity(spans.len());
        for (offset, hash, cvs, len) in spans {
            let start = offset as usize;
            chunks.push(sink.put(hash, cvs, &data[start..start + len as usize])?);
        }
        let (new_bytes, whole_in) = sink.finish()?;
        Ok(StoredChunks {
            chunks,
            new_bytes,
            whole_in,
        })
    }

    /// What storing `data` would add, without writing: (chunk hashes, lengths). Used by scan.
    pub fn chunk_hashes(
        data: &[u8],
        config: &crate::ChunkerConfig,
    ) -> Vec<(crate::ChunkHash, u32)> {
        chunk_spans(data, config)
            .into_iter()
            .map(|span| {
                let start = span.offset as usize;
                let bytes = &data[start..start + span.len as usize];
                (*blake3::hash(bytes).as_bytes(), span.len)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    fn own_nice() -> i32 {
        // SAFETY: reads the calling thread's own priority.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn yielding_to_the_digest_lowers_only_the_calling_threads_priority() {
        let mine = own_nice();
        let theirs = std::thread::spawn(|| {
            yield_to_the_digest();
            own_nice()
        })
        .join()
        .unwrap();
        assert_eq!(theirs, (mine + 5).min(19));
        assert_eq!(own_nice(), mine);
        // A thread started by one that yielded, yielding in turn, stays 5 below the process.
        let nested = std::thread::spawn(|| {
            yield_to_the_digest();
            std::thread::spawn(|| {
                yield_to_the_digest();
                own_nice()
            })
            .join()
            .unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(nested, (mine + 5).min(19));
    }
}
