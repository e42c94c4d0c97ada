//! Turning bytes into a [`PreparedContent`]: chunk (tensor cuts, see `chunker`), name each
//! chunk by BLAKE3, append the ones the store lacks, and compute the whole-file SHA-256 and
//! BLAKE3. The SHA-256 runs on a second core; the first chunks, hashes each chunk, and feeds it
//! to the whole-file BLAKE3 (see [`hash_in_order`]).

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use crate::blocks::hash_chunk;
use crate::chunker::{chunk_spans, for_each_chunk_span};
use crate::content::{PreparedChunk, PreparedContent};
use crate::error::{IoContext, Result};
use crate::pack::ChunkLocation;
use crate::pack::RawPackWriter;
use crate::store::Store;
use crate::ChunkHash;

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A read-only view of a file's bytes: a memory map, or nothing for an empty file (which
/// cannot be mapped).
pub struct MappedFile {
    map: Option<Mmap>,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<MappedFile> {
        let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
        Self::from_file(&file, path)
    }

    pub fn from_file(file: &File, path: &Path) -> Result<MappedFile> {
        let len = file
            .metadata()
            .ctx(|| format!("stat {}", path.display()))?
            .len();
        if len == 0 {
            return Ok(MappedFile { map: None });
        }
        // SAFETY: the file is only read; a concurrent truncation by another process could fault,
        // which is why callers map files they own (staging) or that the user hands to import.
        let map = unsafe { Mmap::map(file) }.ctx(|| format!("mapping {}", path.display()))?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(MappedFile { map: Some(map) })
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// Hashes one chunk and feeds it to the whole-file BLAKE3: chunks must come in file order.
fn hash_in_order(bytes: &[u8], whole: &mut blake3::Hasher) -> (ChunkHash, Vec<u8>) {
    whole.update(bytes);
    hash_chunk(bytes)
}

/// Where the new chunks of one file go: a raw pack of its own for a big file (made at its
/// first new chunk), else the shared packs.
struct NewChunks<'s> {
    store: &'s Store,
    own_pack: bool,
    raw: Option<RawPackWriter<'s>>,
    new_bytes: u64,
}

impl<'s> NewChunks<'s> {
    fn new(store: &'s Store, file_size: u64) -> NewChunks<'s> {
        NewChunks {
            store,
            own_pack: file_size >= store.options.raw_pack_min_file,
            raw: None,
            new_bytes: 0,
        }
    }

    /// Stores one chunk unless the store has it.
    fn put(&mut self, hash: ChunkHash, cvs: Vec<u8>, bytes: &[u8]) -> Result<PreparedChunk> {
        let location = match self.store.known_chunk(&hash)? {
            Some(_) => None,
            None => {
                self.new_bytes += bytes.len() as u64;
                if self.own_pack && self.raw.is_none() {
                    self.raw = Some(self.store.packs.create_raw()?);
                }
                Some(self.store.append_chunk(self.raw.as_mut(), &hash, bytes)?)
            }
        };
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

    /// Makes the file's raw pack durable; returns the bytes that were new.
    fn finish(self) -> Result<u64> {
        if let Some(writer) = self.raw {
            writer.finish()?;
        }
        Ok(self.new_bytes)
    }
}

impl Store {
    /// Chunks, hashes and stores `data`; nothing is visible until [`Store::commit`].
    pub fn prepare(&self, data: &[u8]) -> Result<PreparedContent> {
        self.prepare_with(data, |whole| self.store_chunks(data, whole))
    }

    /// Runs `store` (which chunks `data`, stores the chunks, and feeds them in order to the
    /// whole-file BLAKE3 while they are in the CPU cache) beside the SHA-256 on a second core,
    /// and puts the two together. SHA-256 is the slower digest (one stream, ~1.5 GB/s with
    /// SHA-NI): alone on its core it no longer waits for the BLAKE3 it shared the core with.
    fn prepare_with(
        &self,
        data: &[u8],
        store: impl FnOnce(&mut blake3::Hasher) -> Result<(Vec<PreparedChunk>, u64)>,
    ) -> Result<PreparedContent> {
        std::thread::scope(|scope| {
            let sha256 = scope.spawn(|| sha256(data));
            let mut whole = blake3::Hasher::new();
            let chunks = store(&mut whole);
            let sha256 = sha256
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            let (chunks, new_bytes) = chunks?;
            Ok(PreparedContent {
                size: data.len() as u64,
                sha256,
                blake3: *whole.finalize().as_bytes(),
                chunks,
                new_bytes,
            })
        })
    }

    /// Like [`Store::prepare`] for a file on disk.
    pub fn prepare_file(&self, path: &Path) -> Result<PreparedContent> {
        let data = MappedFile::open(path)?;
        self.prepare(&data)
    }

    fn store_chunks(
        &self,
        data: &[u8],
        whole: &mut blake3::Hasher,
    ) -> Result<(Vec<PreparedChunk>, u64)> {
        let mut chunks = Vec::with_capacity(data.len() / self.options.chunker.avg_size + 1);
        let mut sink = NewChunks::new(self, data.len() as u64);
        // Each chunk is hashed and stored as soon as it is cut, while the disk reads ahead.
        for_each_chunk_span(data, &self.options.chunker, |span| -> Result<()> {
            let start = span.offset as usize;
            let bytes = &data[start..start + span.len as usize];
            let (hash, cvs) = hash_in_order(bytes, whole);
            chunks.push(sink.put(hash, cvs, bytes)?);
            Ok(())
        })?;
        Ok((chunks, sink.finish()?))
    }

    /// Like [`Store::prepare`] for `data`, the whole of the file at `path`, which nobody will
    /// write again (a staging file being committed). When the file is big enough for a raw
    /// pack of its own and every chunk is new, the file itself becomes that pack (see
    /// `Packs::adopt_raw`): no copy, and its pages in the page cache are the pack's.
    pub fn prepare_adopting(&self, data: &[u8], path: &Path) -> Result<PreparedContent> {
        if (data.len() as u64) < self.options.raw_pack_min_file {
            return self.prepare(data);
        }
        self.prepare_with(data, |whole| {
            let spans: Vec<(u64, ChunkHash, Vec<u8>, u32)> =
                chunk_spans(data, &self.options.chunker)
                    .into_iter()
                    .map(|span| {
                        let start = span.offset as usize;
                        let (hash, cvs) =
                            hash_in_order(&data[start..start + span.len as usize], whole);
                        (span.offset, hash, cvs, span.len)
                    })
                    .collect();
            self.store_hashed(data, path, spans)
        })
    }

    /// Stores chunks cut and hashed already: by adopting the file at `path` as their raw pack
    /// when all are new and distinct, else one by one.
    fn store_hashed(
        &self,
        data: &[u8],
        path: &Path,
        spans: Vec<(u64, ChunkHash, Vec<u8>, u32)>,
    ) -> Result<(Vec<PreparedChunk>, u64)> {
        let mut distinct = HashSet::with_capacity(spans.len());
        let mut all_new = true;
        for (_, hash, _, _) in &spans {
            if !distinct.insert(*hash) || self.known_chunk(hash)?.is_some() {
                all_new = false;
                break;
            }
        }
        if all_new {
            let entries: Vec<(ChunkHash, u32)> = spans.iter().map(|s| (s.1, s.3)).collect();
            let pack = self.packs.adopt_raw(path, &entries)?;
            let mut pending = self.pending.lock();
            let chunks = spans
                .into_iter()
                .map(|(offset, hash, cvs, len)| {
                    let location = ChunkLocation { pack, offset, len };
                    pending.insert(hash, location);
                    PreparedChunk {
                        hash,
                        len,
                        cvs,
                        location: Some(location),
                    }
                })
                .collect();
            return Ok((chunks, data.len() as u64));
        }
        let mut sink = NewChunks::new(self, data.len() as u64);
        let mut chunks = Vec::with_capacity(spans.len());
        for (offset, hash, cvs, len) in spans {
            let start = offset as usize;
            chunks.push(sink.put(hash, cvs, &data[start..start + len as usize])?);
        }
        Ok((chunks, sink.finish()?))
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
