//! Turning bytes into a [`PreparedContent`]: chunk (tensor-aware CDC), name each chunk by
//! BLAKE3, append the ones the store lacks, and compute the whole-file SHA-256 and BLAKE3.
//! The whole-file digests run on a second core while the first chunks and hashes.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use crate::blocks::hash_chunk;
use crate::chunker::{chunk_spans, for_each_chunk_span};
use crate::content::{PreparedChunk, PreparedContent};
use crate::error::{IoContext, Result};
use crate::pack::RawPackWriter;
use crate::store::Store;

/// Whole-file digests of some bytes.
#[derive(Debug, Clone, Copy)]
pub struct Digests {
    pub sha256: [u8; 32],
    pub blake3: [u8; 32],
}

pub fn digests(data: &[u8]) -> Digests {
    // Both digests take each piece while it is still in the CPU cache (and, for a file read
    // from disk, right after it arrived), rather than one pass over the whole file each.
    const PIECE: usize = 1 << 20;
    let mut sha = Sha256::new();
    let mut b3 = blake3::Hasher::new();
    for piece in data.chunks(PIECE) {
        sha.update(piece);
        b3.update(piece);
    }
    Digests {
        sha256: sha.finalize().into(),
        blake3: *b3.finalize().as_bytes(),
    }
}

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

impl Store {
    /// Chunks, hashes and stores `data`; nothing is visible until [`Store::commit`].
    pub fn prepare(&self, data: &[u8]) -> Result<PreparedContent> {
        std::thread::scope(|scope| {
            let whole = scope.spawn(|| digests(data));
            let chunks = self.store_chunks(data);
            let digests = whole
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            let (chunks, new_bytes) = chunks?;
            Ok(PreparedContent {
                size: data.len() as u64,
                sha256: digests.sha256,
                blake3: digests.blake3,
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

    fn store_chunks(&self, data: &[u8]) -> Result<(Vec<PreparedChunk>, u64)> {
        let mut chunks = Vec::with_capacity(data.len() / self.options.chunker.avg_size + 1);
        let mut new_bytes = 0u64;
        // A big file's new chunks go to a raw pack of its own, made at its first new chunk.
        let own_pack = data.len() as u64 >= self.options.raw_pack_min_file;
        let mut raw: Option<RawPackWriter> = None;
        // Each chunk is hashed and stored as soon as it is cut, while the disk reads ahead.
        for_each_chunk_span(data, &self.options.chunker, |span| -> Result<()> {
            let start = span.offset as usize;
            let bytes = &data[start..start + span.len as usize];
            let (hash, cvs) = hash_chunk(bytes);
            let location = match self.known_chunk(&hash)? {
                Some(_) => None,
                None => {
                    new_bytes += bytes.len() as u64;
                    if own_pack && raw.is_none() {
                        raw = Some(self.packs.create_raw()?);
                    }
                    Some(self.append_chunk(raw.as_mut(), &hash, bytes)?)
                }
            };
            // A pending chunk appended by another writer is committed by whichever commits
            // first; carry its location so either can create the catalog row.
            let location = match location {
                Some(loc) => Some(loc),
                None => self.pending.lock().get(&hash).copied(),
            };
            chunks.push(PreparedChunk {
                hash,
                len: span.len,
                cvs,
                location,
            });
            Ok(())
        })?;
        if let Some(writer) = raw {
            writer.finish()?;
        }
        Ok((chunks, new_bytes))
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
