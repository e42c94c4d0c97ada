//! Garbage collection: forget chunks no file uses, and rewrite packs that are mostly dead.
//!
//! Crash safety: live chunks are copied into a new pack and synced; one catalog transaction then
//! moves their locations and forgets the old pack; only after that is the old file deleted.
//! A kill before the commit leaves uncommitted records that start-up recovery drops; a kill
//! after it leaves a pack no row names, which recovery deletes.

use rusqlite::params;

use crate::error::Result;
use crate::pack::{ChunkLocation, PACK_HEADER_LEN};
use crate::store::Store;

/// Packs with more than this fraction of dead bytes are rewritten.
pub const REWRITE_DEAD_FRACTION: f64 = 0.25;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    pub chunks_removed: u64,
    pub bytes_removed: u64,
    pub packs_rewritten: u64,
    pub packs_deleted: u64,
    /// Bytes of pack files on disk before and after.
    pub disk_bytes_before: u64,
    pub disk_bytes_after: u64,
}

impl Store {
    pub fn pack_disk_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for id in self.packs.list()? {
            total += std::fs::metadata(self.packs.path(id))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        Ok(total)
    }

    pub fn gc(&self, progress: &dyn Fn(u64)) -> Result<GcReport> {
        let mut report = GcReport {
            disk_bytes_before: self.pack_disk_bytes()?,
            ..GcReport::default()
        };
        self.pending.lock().clear();
        let (removed, bytes) = self.catalog.write(|tx| {
            let (n, b): (i64, i64) = tx.conn().query_row(
                "SELECT COUNT(*), COALESCE(SUM(len), 0) FROM chunks WHERE refs <= 0",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            tx.conn()
                .execute("DELETE FROM chunks WHERE refs <= 0", [])?;
            Ok((n as u64, b as u64))
        })?;
        report.chunks_removed = removed;
        report.bytes_removed = bytes;
        self.packs.seal_active()?;

        let packs: Vec<(u64, u64, u64)> = self.catalog.read(|tx| {
            let mut stmt = tx.conn().prepare(
                "SELECT p.id, p.size, COALESCE((SELECT SUM(len) FROM chunks c WHERE c.pack = p.id), 0)
                 FROM packs p ORDER BY p.id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64))
            })?;
            rows.collect::<std::result::Result<_, _>>().map_err(Into::into)
        })?;
        for (pack, size, live) in packs {
            let payload = size.saturating_sub(PACK_HEADER_LEN);
            if live == 0 {
                self.catalog.write(|tx| {
                    tx.conn()
                        .execute("DELETE FROM packs WHERE id = ?1", [pack as i64])?;
                    Ok(())
                })?;
                self.packs.remove(pack)?;
                report.packs_deleted += 1;
                continue;
            }
            let dead = payload.saturating_sub(live) as f64;
            if payload == 0 || dead / payload as f64 <= REWRITE_DEAD_FRACTION {
                continue;
            }
            self.rewrite_pack(pack, progress)?;
            report.packs_rewritten += 1;
        }
        self.packs.seal_active()?;
        report.disk_bytes_after = self.pack_disk_bytes()?;
        Ok(report)
    }

    fn rewrite_pack(&self, pack: u64, progress: &dyn Fn(u64)) -> Result<()> {
        let chunks: Vec<(i64, [u8; 32], ChunkLocation)> = self.catalog.read(|tx| {
            let mut stmt = tx.conn().prepare(
                "SELECT id, hash, offset, len FROM chunks WHERE pack = ?1 ORDER BY offset",
            )?;
            let rows = stmt.query_map([pack as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, hash, offset, len) = row?;
                let hash: [u8; 32] = hash.try_into().map_err(|_| {
                    crate::StoreError::Inconsistent("chunk hash is not 32 bytes".into())
                })?;
                out.push((
                    id,
                    hash,
                    ChunkLocation {
                        pack,
                        offset: offset as u64,
                        len: len as u32,
                    },
                ));
            }
            Ok(out)
        })?;
        let mut moved = Vec::with_capacity(chunks.len());
        for (id, hash, loc) in &chunks {
            // Copy only verified bytes: gc must not launder a damaged chunk into a fresh pack.
            let bytes = self.packs.read_verified(*loc, hash)?;
            let new_loc = self.packs.append(hash, &bytes)?;
            progress(bytes.len() as u64);
            moved.push((*id, new_loc));
        }
        self.packs.sync()?;
        self.catalog.write(|tx| {
            for (id, loc) in &moved {
                tx.conn()
                    .prepare_cached("UPDATE chunks SET pack = ?2, offset = ?3 WHERE id = ?1")?
                    .execute(params![id, loc.pack as i64, loc.offset as i64])?;
                tx.conn()
                    .prepare_cached(
                        "INSERT INTO packs (id, size) VALUES (?1, ?2)
                         ON CONFLICT(id) DO UPDATE SET size = MAX(size, excluded.size)",
                    )?
                    .execute(params![
                        loc.pack as i64,
                        (loc.offset + loc.len as u64) as i64
                    ])?;
            }
            tx.conn()
                .execute("DELETE FROM packs WHERE id = ?1", [pack as i64])?;
            Ok(())
        })?;
        self.packs.remove(pack)?;
        Ok(())
    }
}
