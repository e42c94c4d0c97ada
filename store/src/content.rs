//! File contents in the catalog: a content is an ordered list of chunks with its SHA-256 and
//! [`chunk_list_hash`], shared by every inode with the same bytes. Reference counts: `contents.refs` counts inodes,
//! `chunks.refs` counts occurrences in content lists. Unreferenced chunks wait for gc.

use rusqlite::{params, OptionalExtension};

use crate::catalog::Tx;
use crate::error::{Result, StoreError};
use crate::pack::ChunkLocation;
use crate::ChunkHash;

/// A content's identity in the catalog: a BLAKE3 over its chunk ids in file order (keyed for
/// this use, so it never equals a chunk id). The same bytes cut by the same chunker have the
/// same list, and the ids prove the bytes, so this names the bytes as well as a BLAKE3 of the
/// whole file would, at no cost: hashing the bytes a second time was a fifth of an import's
/// CPU (docs/PERFORMANCE.md, seventh round). xet-core names files the same way.
pub fn chunk_list_hash<'a>(ids: impl IntoIterator<Item = &'a ChunkHash>) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("mlxfs 2026-12 content chunk list");
    for id in ids {
        hasher.update(id);
    }
    *hasher.finalize().as_bytes()
}

/// A chunk of a file about to be committed. `location` is where it was appended, or `None`
/// when the catalog already had it when the file was prepared.
#[derive(Debug, Clone)]
pub struct PreparedChunk {
    pub hash: ChunkHash,
    pub len: u32,
    /// Chaining values of the chunk's blocks (see blocks.rs); empty for a one-block chunk.
    pub cvs: Vec<u8>,
    pub location: Option<ChunkLocation>,
}

/// A file's bytes chunked, hashed and appended to packs, not yet referenced by the catalog.
#[derive(Debug, Clone)]
pub struct PreparedContent {
    pub size: u64,
    pub sha256: [u8; 32],
    /// See [`chunk_list_hash`].
    pub chunk_list_hash: [u8; 32],
    pub chunks: Vec<PreparedChunk>,
    /// Bytes appended to packs for this file (i.e. not deduplicated at prepare time).
    pub new_bytes: u64,
    /// A raw pack holding every byte of the file at the file's own offsets (its new chunks,
    /// and copies of the few it shares), for passthrough.
    pub whole_in: Option<u64>,
}

/// One chunk of a committed content, with everything the read path needs.
#[derive(Debug, Clone, Copy)]
pub struct MappedChunk {
    pub file_offset: u64,
    pub chunk_id: i64,
    pub hash: ChunkHash,
    pub location: ChunkLocation,
}

/// The chunk list of a committed content, ordered by file offset.
#[derive(Debug, Clone)]
pub struct ContentMap {
    pub id: i64,
    pub size: u64,
    pub sha256: [u8; 32],
    /// See [`chunk_list_hash`].
    pub chunk_list_hash: [u8; 32],
    pub chunks: Vec<MappedChunk>,
}

impl ContentMap {
    /// Index of the chunk holding byte `offset`, if within the content.
    pub fn chunk_index(&self, offset: u64) -> Option<usize> {
        if offset >= self.size {
            return None;
        }
        let idx = self.chunks.partition_point(|c| c.file_offset <= offset);
        idx.checked_sub(1)
    }
}

pub(crate) fn blob32(v: Vec<u8>) -> Result<[u8; 32]> {
    v.try_into()
        .map_err(|_| StoreError::Inconsistent("digest column is not 32 bytes".into()))
}

impl Tx<'_> {
    /// The committed location of a chunk, if the catalog has it.
    pub fn chunk_location(&self, hash: &ChunkHash) -> Result<Option<ChunkLocation>> {
        Ok(self
            .conn
            .prepare_cached("SELECT pack, offset, len FROM chunks WHERE hash = ?1")?
            .query_row([&hash[..]], |r| {
                Ok(ChunkLocation {
                    pack: r.get::<_, i64>(0)? as u64,
                    offset: r.get::<_, i64>(1)? as u64,
                    len: r.get::<_, i64>(2)? as u32,
                })
            })
            .optional()?)
    }

    /// The stored block chaining values of a chunk (blocks.rs), if it has any.
    pub fn chunk_cvs(&self, chunk_id: i64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT cvs FROM chunks WHERE id = ?1")?
            .query_row([chunk_id], |r| r.get::<_, Option<Vec<u8>>>(0))
            .optional()?
            .flatten())
    }

    /// A committed content with this SHA-256 and size, if any (lets import skip re-chunking
    /// bytes it already holds).
    pub fn content_by_sha256(&self, sha256: &[u8; 32], size: u64) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM contents WHERE sha256 = ?1 AND size = ?2 LIMIT 1")?
            .query_row(params![&sha256[..], size as i64], |r| r.get(0))
            .optional()?)
    }

    /// Inserts (or finds) the content row for prepared bytes and returns its id; chunk rows are
    /// created for chunks the catalog did not have. The caller must have synced the packs.
    pub fn insert_content(&self, prepared: &PreparedContent) -> Result<i64> {
        let existing: Option<i64> = self
            .conn
            .prepare_cached("SELECT id FROM contents WHERE chunk_list_hash = ?1")?
            .query_row([&prepared.chunk_list_hash[..]], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            return Ok(id);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO contents (size, sha256, chunk_list_hash, refs) VALUES (?1, ?2, ?3, 0)",
            )?
            .execute(params![
                prepared.size as i64,
                &prepared.sha256[..],
                &prepared.chunk_list_hash[..]
            ])?;
        let content = self.conn.last_insert_rowid();
        let mut offset = 0u64;
        for (seq, chunk) in prepared.chunks.iter().enumerate() {
            let chunk_id = self.reference_chunk(chunk)?;
            self.conn
                .prepare_cached(
                    "INSERT INTO content_chunks (content, seq, offset, chunk) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![content, seq as i64, offset as i64, chunk_id])?;
            offset += chunk.len as u64;
        }
        if offset != prepared.size {
            return Err(StoreError::Inconsistent(format!(
                "chunks cover {offset} bytes of a {}-byte file",
                prepared.size
            )));
        }
        if let Some(pack) = prepared.whole_in {
            self.conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO whole_copies (content, pack) VALUES (?1, ?2)",
                )?
                .execute(params![content, pack as i64])?;
            // The whole file is committed, shared chunks included: recovery must not cut the
            // pack back to its last new chunk.
            self.commit_pack_size(pack, prepared.size)?;
        }
        Ok(content)
    }

    /// Records that pack `pack` holds committed bytes up to `size` (recovery cuts what lies
    /// past the committed size of a pack).
    pub(crate) fn commit_pack_size(&self, pack: u64, size: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO packs (id, size) VALUES (?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET size = MAX(size, excluded.size)",
            )?
            .execute(params![pack as i64, size as i64])?;
        Ok(())
    }

    fn reference_chunk(&self, chunk: &PreparedChunk) -> Result<i64> {
        let found: Option<i64> = self
            .conn
            .prepare_cached("SELECT id FROM chunks WHERE hash = ?1")?
            .query_row([&chunk.hash[..]], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                let loc = chunk.location.ok_or_else(|| {
                    StoreError::Inconsistent(format!(
                        "chunk {} vanished from the catalog before commit",
                        hex::encode(chunk.hash)
                    ))
                })?;
                self.conn
                    .prepare_cached(
                        "INSERT INTO chunks (hash, pack, offset, len, refs, cvs)
                         VALUES (?1, ?2, ?3, ?4, 0, ?5)",
                    )?
                    .execute(params![
                        &chunk.hash[..],
                        loc.pack as i64,
                        loc.offset as i64,
                        loc.len as i64,
                        (!chunk.cvs.is_empty()).then_some(&chunk.cvs[..])
                    ])?;
                // Read the id now: the packs upsert below changes last_insert_rowid whenever it
                // inserts a new pack row.
                let id = self.conn.last_insert_rowid();
                self.commit_pack_size(loc.pack, loc.offset + loc.len as u64)?;
                id
            }
        };
        self.conn
            .prepare_cached("UPDATE chunks SET refs = refs + 1 WHERE id = ?1")?
            .execute([id])?;
        Ok(id)
    }

    /// Points an inode at a content (or at none: zeros), moving reference counts. Size is the
    /// caller's business: a file may be longer than its content (sparse tail).
    pub fn set_content(&self, ino: u64, content: Option<i64>) -> Result<()> {
        let old: Option<i64> = self
            .conn
            .prepare_cached("SELECT content FROM inodes WHERE ino = ?1")?
            .query_row([ino as i64], |r| r.get(0))
            .optional()?
            .flatten();
        if old == content {
            return Ok(());
        }
        if let Some(new) = content {
            self.conn
                .prepare_cached("UPDATE contents SET refs = refs + 1 WHERE id = ?1")?
                .execute([new])?;
        }
        self.conn
            .prepare_cached("UPDATE inodes SET content = ?2 WHERE ino = ?1")?
            .execute(params![ino as i64, content])?;
        if let Some(old) = old {
            self.release_content(old)?;
        }
        Ok(())
    }

    fn release_content(&self, content: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE contents SET refs = refs - 1 WHERE id = ?1")?
            .execute([content])?;
        let refs: i64 = self
            .conn
            .prepare_cached("SELECT refs FROM contents WHERE id = ?1")?
            .query_row([content], |r| r.get(0))?;
        if refs > 0 {
            return Ok(());
        }
        self.conn
            .prepare_cached(
                "UPDATE chunks SET refs = refs - (SELECT COUNT(*) FROM content_chunks cc
                     WHERE cc.content = ?1 AND cc.chunk = chunks.id)
                 WHERE id IN (SELECT chunk FROM content_chunks WHERE content = ?1)",
            )?
            .execute([content])?;
        self.conn
            .prepare_cached("DELETE FROM content_chunks WHERE content = ?1")?
            .execute([content])?;
        self.conn
            .prepare_cached("DELETE FROM whole_copies WHERE content = ?1")?
            .execute([content])?;
        self.conn
            .prepare_cached("DELETE FROM contents WHERE id = ?1")?
            .execute([content])?;
        Ok(())
    }

    /// Loads a content's chunk list for reading.
    pub fn content_map(&self, content: i64) -> Result<ContentMap> {
        let (size, sha256, chunk_list_hash): (i64, Vec<u8>, Vec<u8>) = self
            .conn
            .prepare_cached("SELECT size, sha256, chunk_list_hash FROM contents WHERE id = ?1")?
            .query_row([content], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("content {content}")))?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT cc.offset, c.id, c.hash, c.pack, c.offset, c.len
             FROM content_chunks cc JOIN chunks c ON c.id = cc.chunk
             WHERE cc.content = ?1 ORDER BY cc.seq",
        )?;
        let rows = stmt.query_map([content], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut chunks = Vec::new();
        for row in rows {
            let (file_offset, chunk_id, hash, pack, offset, len) = row?;
            chunks.push(MappedChunk {
                file_offset: file_offset as u64,
                chunk_id,
                hash: blob32(hash)?,
                location: ChunkLocation {
                    pack: pack as u64,
                    offset: offset as u64,
                    len: len as u32,
                },
            });
        }
        Ok(ContentMap {
            id: content,
            size: size as u64,
            sha256: blob32(sha256)?,
            chunk_list_hash: blob32(chunk_list_hash)?,
            chunks,
        })
    }

    /// SHA-256 of a content.
    pub fn content_sha256(&self, content: i64) -> Result<Option<[u8; 32]>> {
        let v: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT sha256 FROM contents WHERE id = ?1")?
            .query_row([content], |r| r.get(0))
            .optional()?;
        v.map(blob32).transpose()
    }

    /// The raw pack whose bytes are exactly `content`'s (pack.rs), with the content's size.
    pub fn pack_equal_to_content(&self, content: i64) -> Result<Option<(u64, u64)>> {
        let found: Option<(i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT w.pack, k.size FROM whole_copies w JOIN contents k ON k.id = w.content
                 WHERE w.content = ?1",
            )?
            .query_row([content], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(found.map(|(pack, size)| (pack as u64, size as u64)))
    }
}
