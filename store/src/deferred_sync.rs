//! Imports commit before their packs reach the disk, as `cp` returns before its copy does; this
//! module keeps that from ever showing a file with wrong bytes.
//!
//! An import (unless `--sync`) writes its packs through the page cache and commits without an
//! fsync, recording in the same catalog transaction every pack that may hold bytes not yet on
//! disk (`unsynced_packs`), with the *write session*: the boot id and the mount of the packs
//! directory. Dirty pages outlive the importing process; they are lost only with the machine (a
//! crash, a power cut) or with the file system (a forced unmount, a pulled disk), and each of
//! those changes the session. So:
//! - in the session that wrote them, marked packs are fsynced and their marks dropped: by the
//!   daemon right after an import it ran, by any command at its next open of the store (an
//!   fsync that fails sends its pack to the check below);
//! - in another session, every chunk of a marked pack is read back and checked against its
//!   BLAKE3 id before the store is used, and each file with a chunk that did not reach the disk
//!   is dropped from the tree (the import did not happen for it), never shown with wrong bytes.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

use rusqlite::params;

use crate::catalog::Tx;
use crate::error::Result;
use crate::store::Store;

/// How the new pack bytes of one write reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsynced before the commit that names them (the mount, gc, `import --sync`).
    BeforeCommit,
    /// Through the page cache; the commit marks their packs as unsynced (see the module).
    AfterCommit,
}

/// This boot of the machine, to tell page-cache contents that survived a process's death from
/// those a reboot may have lost (here and in the mount's commit queue). `None` where the kernel
/// does not say. Read once: it cannot change while the process runs.
#[cfg(target_os = "linux")]
pub fn boot_id() -> Option<String> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            let id = id.trim();
            (!id.is_empty() && !id.contains(char::is_whitespace)).then(|| id.to_string())
        })
        .clone()
}

#[cfg(not(target_os = "linux"))]
pub fn boot_id() -> Option<String> {
    None
}

/// This boot of the machine and this mount of the file system holding `dir`; `None` where the
/// kernel does not tell (then nothing is deferred). Bytes written to `dir` through the page
/// cache are on the disk, or still in memory, as long as the session is the same: a machine
/// crash changes the boot, a file system lost with its dirty pages (unplugged, forced off)
/// changes the mount.
#[cfg(target_os = "linux")]
pub fn write_session(dir: &std::path::Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let boot = boot_id()?;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statx fills the zeroed buffer we own; the path is a valid C string.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            0,
            libc::STATX_MNT_ID_UNIQUE | libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    if rc != 0 {
        return None;
    }
    // The unique id (Linux 6.8) is never reused within a boot; the older one may be, after
    // an unmount, which a remount at once would need to hit.
    let mount = if stx.stx_mask & libc::STATX_MNT_ID_UNIQUE != 0 {
        format!("u{}", stx.stx_mnt_id)
    } else if stx.stx_mask & libc::STATX_MNT_ID != 0 {
        format!("m{}", stx.stx_mnt_id)
    } else {
        return None;
    };
    Some(format!("{boot}/{mount}"))
}

#[cfg(not(target_os = "linux"))]
pub fn write_session(_dir: &std::path::Path) -> Option<String> {
    None
}

/// One `unsynced_packs` row.
struct Mark {
    row: i64,
    pack: u64,
    session: String,
}

impl Tx<'_> {
    /// Records that `packs` may hold committed bytes not yet on disk, written in `session`.
    pub(crate) fn mark_unsynced(&self, packs: &[u64], session: &str) -> Result<()> {
        let mut insert = self
            .conn
            .prepare_cached("INSERT INTO unsynced_packs (pack, session) VALUES (?1, ?2)")?;
        for pack in packs {
            insert.execute(params![*pack as i64, session])?;
        }
        Ok(())
    }

    fn unsynced_marks(&self) -> Result<Vec<Mark>> {
        let mut stmt = self
            .conn
            .prepare("SELECT rowid, pack, session FROM unsynced_packs ORDER BY rowid")?;
        let rows = stmt.query_map([], |r| {
            Ok(Mark {
                row: r.get(0)?,
                pack: r.get::<_, i64>(1)? as u64,
                session: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Drops marks up to row `last`: rows added since (a later import) stay.
    fn clear_unsynced_marks(&self, last: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM unsynced_packs WHERE rowid <= ?1", [last])?;
        Ok(())
    }

    /// Marks up to row `last` as from no session, so the next open checks their packs.
    fn refuse_unsynced_marks(&self, last: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE unsynced_packs SET session = 'sync-failed' WHERE rowid <= ?1",
            [last],
        )?;
        Ok(())
    }

    /// Whether any pack is marked unsynced.
    pub fn has_unsynced_packs(&self) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM unsynced_packs)", [], |r| {
                r.get(0)
            })?)
    }

    /// Removes every file whose content uses one of `chunks` (their bytes are lost), then the
    /// chunks themselves, so nothing can be stored against them again; returns the paths the
    /// files had.
    fn drop_files_with_chunks(&self, chunks: &[i64]) -> Result<Vec<String>> {
        let mut contents = BTreeSet::new();
        {
            let mut users = self
                .conn
                .prepare_cached("SELECT DISTINCT content FROM content_chunks WHERE chunk = ?1")?;
            for chunk in chunks {
                for content in users.query_map([chunk], |r| r.get::<_, i64>(0))? {
                    contents.insert(content?);
                }
            }
        }
        let mut paths = Vec::new();
        for content in contents {
            let inodes: Vec<u64> = {
                // Only files have contents.
                let mut stmt = self
                    .conn
                    .prepare_cached("SELECT ino FROM inodes WHERE content = ?1")?;
                let rows = stmt.query_map([content], |r| r.get::<_, i64>(0))?;
                rows.map(|r| r.map(|ino| ino as u64))
                    .collect::<rusqlite::Result<_>>()?
            };
            for ino in inodes {
                if let Some(path) = self.path_of(ino)? {
                    paths.push(path);
                }
                self.conn
                    .execute("DELETE FROM dentries WHERE ino = ?1", [ino as i64])?;
                self.conn
                    .execute("UPDATE inodes SET nlink = 0 WHERE ino = ?1", [ino as i64])?;
                self.delete_inode_if_unlinked(ino)?;
            }
        }
        let mut delete = self
            .conn
            .prepare_cached("DELETE FROM chunks WHERE id = ?1")?;
        for chunk in chunks {
            delete.execute([chunk])?;
        }
        Ok(paths)
    }
}

impl Store {
    /// At open: makes the packs marked unsynced durable, first checking, for marks from
    /// another session, which of their chunks reached the disk (see the module).
    pub(crate) fn settle_unsynced_at_open(&self) -> Result<()> {
        let marks = self.catalog.read(|tx| tx.unsynced_marks())?;
        let Some(last) = marks.last().map(|m| m.row) else {
            return Ok(());
        };
        let session = self.write_session.as_deref();
        let (same, other): (Vec<&Mark>, Vec<&Mark>) = marks
            .iter()
            .partition(|m| Some(m.session.as_str()) == session);
        // Same session: the page cache still has what the disk lacks; an fsync that fails
        // says the disk refused some of it, which is then checked like a crash's leftovers.
        let failed = self
            .packs
            .sync_existing(&same.iter().map(|m| m.pack).collect())?;
        let lost: BTreeSet<u64> = other.iter().map(|m| m.pack).chain(failed).collect();
        if !lost.is_empty() {
            tracing::warn!(
                packs = lost.len(),
                "an import committed bytes that may not have reached the disk (a crash, a \
                 lost disk, a failed write): checking the chunks it wrote"
            );
            let bad = self.chunks_not_on_disk(&lost)?;
            // A whole copy's bytes of chunks stored elsewhere are read by passthrough only:
            // one cut short loses its passthrough, not its file.
            let cut_copies = self.whole_copies_not_on_disk(&lost)?;
            if !cut_copies.is_empty() {
                tracing::warn!(
                    files = cut_copies.len(),
                    "whole copies cut short: read through the daemon"
                );
                self.catalog.write(|tx| {
                    for content in &cut_copies {
                        tx.conn()
                            .execute("DELETE FROM whole_copies WHERE content = ?1", [content])?;
                    }
                    Ok(())
                })?;
            }
            if !bad.is_empty() {
                let dropped = self.catalog.write(|tx| tx.drop_files_with_chunks(&bad))?;
                for path in &dropped {
                    tracing::warn!(path, "dropped: its bytes did not reach the disk");
                }
                tracing::warn!(
                    chunks = bad.len(),
                    files = dropped.len(),
                    "dropped what an interrupted import had not written; import it again"
                );
                self.refresh_models()?;
            }
        }
        self.packs.sync_existing(&lost)?;
        self.catalog.write(|tx| tx.clear_unsynced_marks(last))
    }

    /// Makes every pack written so far durable and drops the marks of those committed
    /// unsynced; how many marks. The daemon calls it after an import it ran.
    pub fn settle_unsynced(&self) -> Result<usize> {
        let marks = self.catalog.read(|tx| tx.unsynced_marks())?;
        let Some(last) = marks.last().map(|m| m.row) else {
            return Ok(0);
        };
        // Every marked pack was unsynced when its mark was committed, and only a sync takes
        // a pack off that list: this covers them all.
        if let Err(e) = self.packs.sync() {
            // The disk refused some bytes, and a later fsync may not say so again: the next
            // open checks these packs as after a crash.
            self.catalog.write(|tx| tx.refuse_unsynced_marks(last))?;
            return Err(e);
        }
        self.catalog.write(|tx| tx.clear_unsynced_marks(last))?;
        Ok(marks.len())
    }

    /// Contents whose whole copy is one of `packs` and lacks some of their bytes.
    fn whole_copies_not_on_disk(&self, packs: &BTreeSet<u64>) -> Result<Vec<i64>> {
        let mut cut = Vec::new();
        for &pack in packs {
            let contents: Vec<i64> = self.catalog.read(|tx| {
                let mut stmt = tx
                    .conn()
                    .prepare("SELECT content FROM whole_copies WHERE pack = ?1")?;
                let rows = stmt.query_map([pack as i64], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })?;
            for content in contents {
                let map = self.catalog.read(|tx| tx.content_map(content))?;
                if self.whole_copy_problem(&map, pack)?.is_some() {
                    cut.push(content);
                }
            }
        }
        Ok(cut)
    }

    /// Ids of the chunks in `packs` whose bytes on disk are missing or not what their id says.
    fn chunks_not_on_disk(&self, packs: &BTreeSet<u64>) -> Result<Vec<i64>> {
        let mut bad = Vec::new();
        for &pack in packs {
            let chunks: Vec<(i64, Vec<u8>, u64, u32)> = self.catalog.read(|tx| {
                let mut stmt = tx
                    .conn()
                    .prepare("SELECT id, hash, offset, len FROM chunks WHERE pack = ?1")?;
                let rows = stmt.query_map([pack as i64], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get::<_, i64>(2)? as u64,
                        r.get::<_, i64>(3)? as u32,
                    ))
                })?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })?;
            // Read with pread, not a mapping: a file cut short would fault a mapping.
            let file = match std::fs::File::open(self.packs.path(pack)) {
                Ok(file) => Some(file),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(crate::StoreError::io(
                        format!("opening pack {pack} to check it"),
                        e,
                    ))
                }
            };
            if let Some(file) = &file {
                forget_cached_pages(file);
            }
            let mut buf = Vec::new();
            for (id, hash, offset, len) in chunks {
                let intact = file.as_ref().is_some_and(|file| {
                    buf.resize(len as usize, 0);
                    file.read_exact_at(&mut buf, offset).is_ok()
                        && blake3::hash(&buf).as_bytes()[..] == hash[..]
                });
                if !intact {
                    bad.push(id);
                }
            }
        }
        Ok(bad)
    }
}

/// Drops a pack's clean cached pages, so it is checked as the disk holds it: after a failed
/// writeback the page cache may still have the bytes the disk refused.
fn forget_cached_pages(file: &std::fs::File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a hint on a descriptor we own.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::testgen::noise;
    use crate::import::ImportOptions;
    use crate::StoreOptions;
    use std::path::{Path, PathBuf};

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
    const SNAPSHOT: &str = "huggingface/hub/models--org--name/snapshots";

    /// A hub cache with one repo of two 3 MiB blobs; returns their file names and bytes.
    fn make_hub(root: &Path) -> Vec<(&'static str, Vec<u8>)> {
        make_hub_of(root, |seed| noise(seed, 3 << 20))
    }

    /// The same with the blobs `blob(0)` and `blob(1)`.
    fn make_hub_of(root: &Path, blob: impl Fn(u8) -> Vec<u8>) -> Vec<(&'static str, Vec<u8>)> {
        let repo = root.join("models--org--name");
        let snap = repo.join("snapshots").join(COMMIT);
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
        let mut files = Vec::new();
        for (seed, name) in ["a.safetensors", "b.safetensors"].into_iter().enumerate() {
            let data = blob(seed as u8);
            let etag = hex::encode(crate::ingest::sha256(&data));
            std::fs::write(repo.join("blobs").join(&etag), &data).unwrap();
            std::os::unix::fs::symlink(format!("../../blobs/{etag}"), snap.join(name)).unwrap();
            files.push((name, data));
        }
        files
    }

    fn open(dir: &Path) -> Store {
        Store::open(
            dir,
            StoreOptions {
                raw_pack_min_file: 1 << 20,
                ..StoreOptions::default()
            },
        )
        .unwrap()
    }

    fn import(store: &Store, hub: &Path, sync: bool) {
        let options = ImportOptions {
            sync,
            ..ImportOptions::default()
        };
        let report = store
            .import_with(&[hub.to_path_buf()], options, &|_| {})
            .unwrap();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    }

    /// The bytes of a file of the snapshot, or None if the tree has no such file.
    fn read(store: &Store, name: &str) -> Option<Vec<u8>> {
        let path = format!("{SNAPSHOT}/{COMMIT}/{name}");
        let inode = store
            .catalog()
            .read(|tx| match tx.resolve_path_follow(&path)? {
                Some(ino) => tx.inode(ino),
                None => Ok(None),
            })
            .unwrap()?;
        let map = store
            .catalog()
            .read(|tx| tx.content_map(inode.content.unwrap()))
            .unwrap();
        let mut buf = vec![0u8; inode.size as usize];
        assert_eq!(store.read(&map, 0, &mut buf).unwrap(), buf.len());
        Some(buf)
    }

    fn marked(store: &Store) -> bool {
        store.catalog().read(|tx| tx.has_unsynced_packs()).unwrap()
    }

    /// The pack file holding the first chunk of a file of the snapshot.
    fn pack_of(store: &Store, name: &str) -> PathBuf {
        let path = format!("{SNAPSHOT}/{COMMIT}/{name}");
        let map = store
            .catalog()
            .read(|tx| {
                let ino = tx.resolve_path_follow(&path)?.unwrap();
                tx.content_map(tx.inode_required(ino)?.content.unwrap())
            })
            .unwrap();
        store.packs().path(map.chunks[0].location.pack)
    }

    #[test]
    fn an_import_commits_unsynced_and_the_next_open_makes_its_packs_durable() {
        let tmp = tempfile::tempdir().unwrap();
        let files = make_hub(&tmp.path().join("hub"));
        let store = open(&tmp.path().join("store"));
        assert!(
            store.write_session.is_some(),
            "this kernel tells boot and mount"
        );
        import(&store, &tmp.path().join("hub"), false);
        assert!(
            marked(&store),
            "the import's packs are recorded as unsynced"
        );
        drop(store);
        let store = open(&tmp.path().join("store"));
        assert!(
            !marked(&store),
            "the next open in the same session syncs them"
        );
        for (name, data) in &files {
            assert_eq!(read(&store, name).as_ref(), Some(data), "{name}");
        }
    }

    #[test]
    fn import_with_sync_leaves_nothing_to_settle() {
        let tmp = tempfile::tempdir().unwrap();
        make_hub(&tmp.path().join("hub"));
        let store = open(&tmp.path().join("store"));
        import(&store, &tmp.path().join("hub"), true);
        assert!(!marked(&store));
    }

    #[test]
    fn the_daemon_settles_an_import_behind_it() {
        let tmp = tempfile::tempdir().unwrap();
        make_hub(&tmp.path().join("hub"));
        let store = open(&tmp.path().join("store"));
        import(&store, &tmp.path().join("hub"), false);
        assert!(store.packs().unsynced().len() >= 2);
        assert!(store.settle_unsynced().unwrap() >= 1);
        assert!(!marked(&store));
        assert!(store.packs().unsynced().is_empty());
        assert_eq!(store.settle_unsynced().unwrap(), 0);
    }

    #[test]
    fn after_a_crash_a_file_whose_bytes_missed_the_disk_is_dropped_not_shown() {
        let tmp = tempfile::tempdir().unwrap();
        let (hub, store_dir) = (tmp.path().join("hub"), tmp.path().join("store"));
        let files = make_hub(&hub);
        let store = open(&store_dir);
        import(&store, &hub, false);
        let lost_pack = pack_of(&store, "a.safetensors");
        assert_ne!(lost_pack, pack_of(&store, "b.safetensors"));
        let files_before = store.catalog().read(|tx| tx.totals()).unwrap().files;
        drop(store);
        // What a power cut leaves: the catalog's commit on disk, half of one pack's bytes not,
        // and a new boot.
        rusqlite::Connection::open(store_dir.join("catalog.db"))
            .unwrap()
            .execute("UPDATE unsynced_packs SET session = 'another-boot/u1'", [])
            .unwrap();
        let len = std::fs::metadata(&lost_pack).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&lost_pack)
            .unwrap()
            .set_len(len / 2)
            .unwrap();

        let store = open(&store_dir);
        assert!(!marked(&store));
        assert_eq!(
            read(&store, "a.safetensors"),
            None,
            "dropped, not shown cut"
        );
        assert_eq!(read(&store, "b.safetensors").as_ref(), Some(&files[1].1));
        assert_eq!(
            store.catalog().read(|tx| tx.totals()).unwrap().files,
            files_before - 1
        );
        let report = store.verify(&|_| {}).unwrap();
        assert!(report.ok, "{:?}", report.damaged);
        // Importing again brings it back.
        import(&store, &hub, false);
        assert_eq!(read(&store, "a.safetensors").as_ref(), Some(&files[0].1));
    }

    #[test]
    fn in_another_session_intact_packs_keep_their_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (hub, store_dir) = (tmp.path().join("hub"), tmp.path().join("store"));
        let files = make_hub(&hub);
        drop({
            let store = open(&store_dir);
            import(&store, &hub, false);
            store
        });
        rusqlite::Connection::open(store_dir.join("catalog.db"))
            .unwrap()
            .execute("UPDATE unsynced_packs SET session = 'another-boot/u1'", [])
            .unwrap();
        let store = open(&store_dir);
        assert!(!marked(&store));
        for (name, data) in &files {
            assert_eq!(read(&store, name).as_ref(), Some(data), "{name}");
        }
    }

    #[test]
    fn in_another_session_a_whole_copy_cut_short_loses_passthrough_not_its_file() {
        use crate::formats::testgen::make_safetensors;
        let tmp = tempfile::tempdir().unwrap();
        let (hub, store_dir) = (tmp.path().join("hub"), tmp.path().join("store"));
        // Two shards with the same header: the second's raw pack holds a copy of it.
        let files = make_hub_of(&hub, |seed| {
            make_safetensors(&[("w", "U8", vec![3 << 20], noise(seed, 3 << 20))])
        });
        let store = open(&store_dir);
        import(&store, &hub, false);
        let content = |store: &Store, name: &str| {
            let path = format!("{SNAPSHOT}/{COMMIT}/{name}");
            store
                .catalog()
                .read(|tx| {
                    let ino = tx.resolve_path_follow(&path)?.unwrap();
                    Ok(tx.inode_required(ino)?.content.unwrap())
                })
                .unwrap()
        };
        // The two were prepared at once: either may be the one holding the header's copy.
        let (copier, pack) = files
            .iter()
            .map(|(name, data)| {
                let id = content(&store, name);
                let (pack, _) = store
                    .passthrough_pack(id, data.len() as u64)
                    .unwrap()
                    .expect("both kept whole despite the shared header");
                let map = store.catalog().read(|tx| tx.content_map(id)).unwrap();
                (*name, pack, map.chunks[0].location.pack != pack)
            })
            .find(|(_, _, copied)| *copied)
            .map(|(name, pack, _)| (name, pack))
            .expect("one of them holds a copy of the other's header");
        let size = files.iter().find(|f| f.0 == copier).unwrap().1.len() as u64;
        let pack_path = store.packs().path(pack);
        drop(store);
        rusqlite::Connection::open(store_dir.join("catalog.db"))
            .unwrap()
            .execute("UPDATE unsynced_packs SET session = 'another-boot/u1'", [])
            .unwrap();
        // The header's copy did not reach the disk; the pack's own chunks did.
        let mut bytes = std::fs::read(&pack_path).unwrap();
        bytes[..64].fill(0);
        std::fs::write(&pack_path, &bytes).unwrap();

        let store = open(&store_dir);
        for (name, data) in &files {
            assert_eq!(read(&store, name).as_ref(), Some(data), "{name}");
        }
        let cut = content(&store, copier);
        assert!(store.passthrough_pack(cut, size).unwrap().is_none());
        assert!(store.verify(&|_| {}).unwrap().ok);
    }
}
