//! `verify`: re-hash every stored chunk and every whole-file SHA-256, check every content's
//! chunk list against its hash, and name the files damage belongs to.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use std::os::unix::fs::FileExt;

use crate::content::{chunk_list_hash, ContentMap};
use crate::error::Result;
use crate::store::Store;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Damage {
    /// Namespace paths of every file with this content.
    pub paths: Vec<String>,
    pub content: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub files_checked: u64,
    pub contents_checked: u64,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub damaged: Vec<Damage>,
}

impl Store {
    /// Total bytes `verify` will read (for a progress bar).
    pub fn verify_total_bytes(&self) -> Result<u64> {
        self.catalog.read(|tx| {
            Ok(tx
                .conn()
                .query_row("SELECT COALESCE(SUM(size), 0) FROM contents", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64)
        })
    }

    /// Checks every content: each chunk against its BLAKE3 id, the whole file against its
    /// SHA-256, and its chunk list against its `chunk_list_hash`. `progress` receives bytes as they are checked.
    pub fn verify(&self, progress: &dyn Fn(u64)) -> Result<VerifyReport> {
        let contents: Vec<i64> = self.catalog.read(|tx| {
            let mut stmt = tx.conn().prepare("SELECT id FROM contents ORDER BY id")?;
            let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
            rows.collect::<std::result::Result<_, _>>()
                .map_err(Into::into)
        })?;
        let mut report = VerifyReport::default();
        let mut chunk_ok: HashMap<i64, bool> = HashMap::new();
        for content in contents {
            let map = self.catalog.read(|tx| tx.content_map(content))?;
            let mut sha = Sha256::new();
            let mut problem = None;
            for chunk in &map.chunks {
                let bytes = match self.packs.read(chunk.location, &chunk.hash) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        problem.get_or_insert(format!("chunk unreadable: {e}"));
                        chunk_ok.insert(chunk.chunk_id, false);
                        continue;
                    }
                };
                let good = *chunk_ok.entry(chunk.chunk_id).or_insert_with(|| {
                    report.chunks_checked += 1;
                    blake3::hash(&bytes).as_bytes() == &chunk.hash
                });
                if !good {
                    problem.get_or_insert(format!(
                        "chunk {} at pack {} offset {} does not match its BLAKE3",
                        hex::encode(chunk.hash),
                        chunk.location.pack,
                        chunk.location.offset
                    ));
                }
                sha.update(&bytes[..]);
                progress(bytes.len() as u64);
                report.bytes_checked += bytes.len() as u64;
            }
            let whole_copy = self.catalog.read(|tx| tx.pack_equal_to_content(content))?;
            if let (None, Some((pack, _))) = (&problem, whole_copy) {
                problem = self.whole_copy_problem(&map, pack)?;
            }
            if problem.is_none() {
                let sha: [u8; 32] = sha.finalize().into();
                let listed = chunk_list_hash(map.chunks.iter().map(|c| &c.hash));
                if sha != map.sha256 {
                    problem = Some("whole-file SHA-256 mismatch".into());
                } else if listed != map.chunk_list_hash {
                    problem =
                        Some("chunk list does not match the content's chunk list hash".into());
                }
            }
            report.contents_checked += 1;
            let paths = self.paths_of_content(content)?;
            report.files_checked += paths.len() as u64;
            if let Some(reason) = problem {
                report.damaged.push(Damage {
                    paths,
                    content,
                    reason,
                });
            }
        }
        report.ok = report.damaged.is_empty();
        Ok(report)
    }

    /// What is wrong with raw pack `pack` as the whole copy of a content (passthrough reads
    /// it as the file), if anything: the content's chunks stored elsewhere must be there too,
    /// byte for byte, at their file offsets (the chunks located in it are checked as chunks).
    pub(crate) fn whole_copy_problem(&self, map: &ContentMap, pack: u64) -> Result<Option<String>> {
        let path = self.packs.path(pack);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) => return Ok(Some(format!("its whole copy, pack {pack}: {e}"))),
        };
        let mut buf = Vec::new();
        for chunk in &map.chunks {
            if chunk.location.pack == pack && chunk.location.offset == chunk.file_offset {
                continue;
            }
            buf.resize(chunk.location.len as usize, 0);
            // pread, not a mapping: a pack cut short would fault a mapping.
            let same = file.read_exact_at(&mut buf, chunk.file_offset).is_ok()
                && blake3::hash(&buf).as_bytes() == &chunk.hash;
            if !same {
                return Ok(Some(format!(
                    "its whole copy, pack {pack}, differs from chunk {} at offset {}",
                    hex::encode(chunk.hash),
                    chunk.file_offset
                )));
            }
        }
        Ok(None)
    }

    /// Every namespace path whose inode has this content.
    pub fn paths_of_content(&self, content: i64) -> Result<Vec<String>> {
        self.catalog.read(|tx| {
            let mut stmt = tx.conn().prepare_cached(
                "SELECT d.parent, d.name FROM inodes i JOIN dentries d ON d.ino = i.ino
                 WHERE i.content = ?1",
            )?;
            let rows = stmt.query_map([content], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            let mut paths = Vec::new();
            for row in rows {
                let (parent, name) = row?;
                let dir = tx.path_of(parent as u64)?.unwrap_or_else(|| "?".into());
                let name = String::from_utf8_lossy(&name);
                paths.push(if dir.is_empty() {
                    name.into_owned()
                } else {
                    format!("{dir}/{name}")
                });
            }
            paths.sort();
            Ok(paths)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::formats::testgen::pseudo_random as random;
    use crate::{ChunkerConfig, Store, StoreOptions};

    /// A content whose chunks are all intact but whose catalog row no longer matches its chunk
    /// list (a damaged or tampered catalog) is reported, as damaged bytes are.
    #[test]
    fn a_content_is_checked_against_its_chunk_list_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            chunker: ChunkerConfig::with_avg(64 << 10),
            ..StoreOptions::default()
        };
        let store = Store::open(tmp.path(), options).unwrap();
        let prepared = store.prepare(&random(1 << 20, 3)).unwrap();
        assert!(prepared.chunks.len() > 2);
        let id = store.commit(&prepared, |_, c| Ok(c)).unwrap().unwrap();
        let report = store.verify(&|_| {}).unwrap();
        assert!(report.ok && report.contents_checked == 1, "{report:?}");

        store
            .catalog()
            .write(|tx| {
                tx.conn().execute(
                    "UPDATE contents SET chunk_list_hash = zeroblob(32) WHERE id = ?1",
                    [id],
                )?;
                Ok(())
            })
            .unwrap();
        let report = store.verify(&|_| {}).unwrap();
        assert!(!report.ok);
        assert_eq!(report.damaged[0].content, id);
        assert!(
            report.damaged[0].reason.contains("chunk list"),
            "{report:?}"
        );
    }

    /// A pack cut short under the store (a lost write, a damaged disk) is a finding of
    /// verify about the files in it, not a failure of the command; the other files check out.
    #[test]
    fn a_pack_cut_short_is_reported_as_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
        let intact = store.prepare(&random(300 << 10, 4)).unwrap();
        let intact = store.commit(&intact, |_, c| Ok(c)).unwrap().unwrap();
        let prepared = store.prepare(&random(3 << 20, 5)).unwrap();
        let cut = store.commit(&prepared, |_, c| Ok(c)).unwrap().unwrap();
        let last = prepared.chunks.last().unwrap().location.unwrap();
        let pack = store.packs().path(last.pack);
        let len = std::fs::metadata(&pack).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&pack)
            .unwrap()
            .set_len(len - 4096)
            .unwrap();
        let report = store.verify(&|_| {}).unwrap();
        assert!(!report.ok, "{report:?}");
        let damaged: Vec<i64> = report.damaged.iter().map(|d| d.content).collect();
        assert!(
            damaged.contains(&cut) && !damaged.contains(&intact),
            "{report:?}"
        );
        assert!(report.damaged[0].reason.contains("shorter"), "{report:?}");
    }
}
