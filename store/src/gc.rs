//! Garbage collection: forget chunks no file uses, and rewrite packs that are mostly dead.
//!
//! Crash safety: live chunks are copied into a new pack and synced; one catalog transaction then
//! moves their locations and forgets the old pack; only after that is the old file deleted.
//! A kill before the commit leaves uncommitted records that start-up recovery drops; a kill
//! after it leaves a pack no row names, which recovery deletes.
//!
//! gc may run inside the mount daemon, beside writers and readers:
//!
//! - Writers: forgetting unreferenced chunks happens with no writer between prepare and commit
//!   (the ingest gate held exclusively), since a writer may have found such a chunk at prepare
//!   and count on it at commit. Copying a pack holds the gate shared, like any writer, so that
//!   dropping uncommitted bytes after a full disk never drops gc's copies.
//! - Readers: an open file holds a content map with chunk locations, loaded at some point in
//!   the past. Two things can invalidate a location: gc moved the chunk (the pack was rewritten
//!   and deleted), or the content was released and gc forgot the chunk and deleted its pack.
//!   Moves are handled on the read path: a chunk that cannot be read where the map says is
//!   looked up again by its hash ([`Store::chunk`]). Forgetting is handled here: chunk rows are
//!   deleted and pack files removed only with the read gate held exclusively, and a read holds
//!   it shared from before it takes its map until it has the bytes ([`Store::read_guard`]). A
//!   map taken under the gate names contents that were live at that moment; their chunks are
//!   neither forgotten nor their packs deleted until the read ends, and wherever gc moved them
//!   meanwhile, the catalog says so. So a read racing gc returns the right bytes, never EIO.
//!   (Deferring every pack deletion until no old map exists would need tracking each open
//!   file's maps, and a file kept open for days would hold back all reclaimed space.)

use std::time::Duration;

use parking_lot::RwLockWriteGuard;
use rusqlite::params;

use crate::error::Result;
use crate::pack::ChunkLocation;
use crate::store::Store;

/// Packs with more than this fraction of dead bytes are rewritten.
pub const REWRITE_DEAD_FRACTION: f64 = 0.25;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    pub chunks_removed: u64,
    pub bytes_removed: u64,
    pub packs_rewritten: u64,
    pub packs_deleted: u64,
    /// Bytes of pack files on disk before and after.
    pub disk_bytes_before: u64,
    pub disk_bytes_after: u64,
}

/// Both gates held exclusively: no writer between prepare and commit, no read in flight.
struct Quiet<'a> {
    _ingest: RwLockWriteGuard<'a, ()>,
    _reads: RwLockWriteGuard<'a, ()>,
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

    /// Takes both gates exclusively. Never waits on one while holding the other (a writer
    /// holding the ingest gate may wait for a read, a read may wait for a writer's file lock),
    /// so it cannot deadlock; it only waits until both are free at once.
    fn quiet(&self) -> Quiet<'_> {
        loop {
            if let Some(ingest) = self.ingest_gate.try_write_for(Duration::from_millis(50)) {
                if let Some(reads) = self.read_gate.try_write_for(Duration::from_millis(50)) {
                    return Quiet {
                        _ingest: ingest,
                        _reads: reads,
                    };
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Removes a pack file once no read can be using a location in it (see the module doc).
    fn remove_pack_file(&self, pack: u64) -> Result<()> {
        let _reads = self.read_gate.write();
        self.packs.remove(pack)
    }

    pub fn gc(&self, progress: &dyn Fn(u64)) -> Result<GcReport> {
        let _one_at_a_time = self.gc_lock.lock();
        let mut report = GcReport {
            disk_bytes_before: self.pack_disk_bytes()?,
            ..GcReport::default()
        };
        let quiet = self.quiet();
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
        // Sealed, and listed while no writer can commit: every listed pack is closed for good,
        // and packs made from now on (by writers, or by gc's own copies) are not listed.
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
        drop(quiet);
        for (pack, size, live) in packs {
            let payload = size.saturating_sub(self.packs.header_len(pack));
            if live == 0 {
                self.catalog.write(|tx| {
                    tx.conn()
                        .execute("DELETE FROM packs WHERE id = ?1", [pack as i64])?;
                    tx.conn()
                        .execute("DELETE FROM whole_copies WHERE pack = ?1", [pack as i64])?;
                    Ok(())
                })?;
                self.remove_pack_file(pack)?;
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
        if let Err(e) = self.catalog.checkpoint() {
            tracing::debug!(error = %e, "checkpoint after gc");
        }
        Ok(report)
    }

    fn rewrite_pack(&self, pack: u64, progress: &dyn Fn(u64)) -> Result<()> {
        let writing = self.ingest_guard();
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
                tx.commit_pack_size(loc.pack, loc.offset + loc.len as u64)?;
            }
            tx.conn()
                .execute("DELETE FROM packs WHERE id = ?1", [pack as i64])?;
            // Its files' chunks now lie elsewhere: they are read through the daemon.
            tx.conn()
                .execute("DELETE FROM whole_copies WHERE pack = ?1", [pack as i64])?;
            Ok(())
        })?;
        drop(writing);
        self.remove_pack_file(pack)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::namespace::now_ns;
    use crate::{ChunkerConfig, ContentMap, NewInode, NodeKind, Store, StoreOptions};

    fn open(dir: &std::path::Path) -> Store {
        Store::open(
            dir,
            StoreOptions {
                chunker: ChunkerConfig::with_avg(16 << 10),
                ..StoreOptions::default()
            },
        )
        .unwrap()
    }

    use crate::formats::testgen::pseudo_random as random;

    /// Commits `data` as a new file inode (no name needed) and returns (ino, content id).
    fn put(store: &Store, data: &[u8]) -> (u64, i64) {
        let _writing = store.ingest_guard();
        let prepared = store.prepare(data).unwrap();
        store
            .commit(&prepared, |tx, content| {
                let ino = tx.create_inode(&NewInode {
                    kind: NodeKind::File,
                    perm: 0o644,
                    uid: 0,
                    gid: 0,
                    time: now_ns(),
                    target: None,
                    rdev: 0,
                })?;
                tx.set_content(ino, content)?;
                let mut inode = tx.inode_required(ino)?;
                inode.size = data.len() as u64;
                tx.update_inode(&inode)?;
                Ok((ino, content.unwrap()))
            })
            .unwrap()
    }

    /// Drops a file's content, as an overwrite or delete would: its chunks become garbage.
    fn release(store: &Store, ino: u64) {
        store
            .catalog()
            .write(|tx| tx.set_content(ino, None))
            .unwrap();
    }

    fn map(store: &Store, content: i64) -> ContentMap {
        store.catalog().read(|tx| tx.content_map(content)).unwrap()
    }

    fn read_all(store: &Store, map: &ContentMap) -> crate::Result<Vec<u8>> {
        let mut buf = vec![0u8; map.size as usize];
        let n = store.read(map, 0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// A reader loaded a content map (chunk locations) before gc moved the chunks to a new pack
    /// and deleted the old one: the read finds the chunks at their new place, never EIO.
    #[test]
    fn read_with_a_map_loaded_before_gc_rewrote_its_pack() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let keep = random(1 << 20, 1);
        let (_, keep_content) = put(&store, &keep);
        let (doomed, _) = put(&store, &random(3 << 20, 2));
        let old_map = map(&store, keep_content);
        let old_pack = old_map.chunks[0].location.pack;

        release(&store, doomed);
        let report = store.gc(&|_| {}).unwrap();
        assert_eq!(report.packs_rewritten, 1, "{report:?}");
        assert!(!store.packs().path(old_pack).exists(), "old pack deleted");
        assert_ne!(
            map(&store, keep_content).chunks[0].location,
            old_map.chunks[0].location,
            "the chunks moved"
        );

        assert_eq!(read_all(&store, &old_map).unwrap(), keep);
    }

    /// A pack that vanished from under the catalog (not moved by gc) reads as damage: EIO to
    /// the reader, not ENOENT.
    #[test]
    fn a_missing_pack_is_damage_not_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (_, content) = put(&store, &random(1 << 20, 4));
        let map = map(&store, content);
        std::fs::remove_file(store.packs().path(map.chunks[0].location.pack)).unwrap();
        let err = read_all(&store, &map).unwrap_err();
        assert!(
            matches!(err, crate::StoreError::CorruptChunk { .. }),
            "{err:?}"
        );
        assert_eq!(err.errno(), libc::EIO);
    }

    /// A read in flight (holding [`Store::read_guard`]) with the map of a content that an
    /// overwrite released meanwhile: gc waits for the read before it forgets those chunks and
    /// deletes their pack, so the read returns the old bytes, never EIO.
    #[test]
    fn gc_waits_for_reads_in_flight_before_deleting_their_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
        let old = random(2 << 20, 3);
        let (ino, content) = put(&store, &old);
        let guard = store.read_guard();
        let in_flight = map(&store, content);
        let pack = in_flight.chunks[0].location.pack;
        release(&store, ino);
        let gc = {
            let store = store.clone();
            std::thread::spawn(move || store.gc(&|_| {}).unwrap())
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(!gc.is_finished(), "gc must wait for the read in flight");
        assert!(store.packs().path(pack).exists());
        assert_eq!(read_all(&store, &in_flight).unwrap(), old);
        drop(guard);
        let report = gc.join().unwrap();
        assert!(
            report.chunks_removed > 0 && report.packs_deleted == 1,
            "{report:?}"
        );
        assert!(!store.packs().path(pack).exists());
        // Later, the stale map gets the old bytes (from the verified cache) or an error; never
        // other bytes.
        if let Ok(bytes) = read_all(&store, &in_flight) {
            assert_eq!(bytes, old);
        }
    }
}
