//! The catalog: one SQLite database (WAL) holding the namespace, file contents as chunk lists,
//! chunk locations with reference counts, packs, and the model registry.
//!
//! All access goes through one connection behind a mutex; callers get a [`Tx`] (a transaction)
//! and the namespace and content operations are methods on it (see `namespace.rs`, `content.rs`).

use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::content::chunk_list_hash;
use crate::error::Result;
use crate::error::StoreError;
use crate::ChunkHash;

/// Newest schema this build understands; each entry of [`MIGRATIONS`] moves one version up.
pub const SCHEMA_VERSION: i64 = 4;

/// One schema step: SQL, then (for steps SQL cannot express) code in the same transaction.
struct Migration {
    sql: &'static str,
    then: Option<fn(&Connection) -> Result<()>>,
}

const MIGRATIONS: &[Migration] = &[
    // v1: the first schema.
    Migration {
        sql: r#"
    CREATE TABLE inodes (
        ino      INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the kernel caches inode numbers
        kind     INTEGER NOT NULL,          -- 1 file, 2 directory, 3 symlink
        perm     INTEGER NOT NULL,          -- mode & 07777
        uid      INTEGER NOT NULL,
        gid      INTEGER NOT NULL,
        size     INTEGER NOT NULL DEFAULT 0,
        atime    INTEGER NOT NULL,          -- nanoseconds since the epoch
        mtime    INTEGER NOT NULL,
        ctime    INTEGER NOT NULL,
        crtime   INTEGER NOT NULL,
        nlink    INTEGER NOT NULL,
        content  INTEGER REFERENCES contents(id),  -- NULL: all zeros (empty or sparse)
        target   BLOB,                      -- symlink target
        rdev     INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE dentries (
        parent INTEGER NOT NULL,
        name   BLOB NOT NULL,
        ino    INTEGER NOT NULL,
        PRIMARY KEY (parent, name)
    ) WITHOUT ROWID;
    CREATE INDEX dentries_by_ino ON dentries(ino);
    CREATE TABLE contents (
        id      INTEGER PRIMARY KEY,
        size    INTEGER NOT NULL,
        sha256  BLOB NOT NULL,
        blake3  BLOB NOT NULL UNIQUE,
        refs    INTEGER NOT NULL DEFAULT 0   -- inodes using this content
    );
    CREATE INDEX contents_by_sha256 ON contents(sha256);
    CREATE TABLE chunks (
        id      INTEGER PRIMARY KEY,
        hash    BLOB NOT NULL UNIQUE,        -- BLAKE3-256
        pack    INTEGER NOT NULL,
        offset  INTEGER NOT NULL,            -- first data byte in the pack
        len     INTEGER NOT NULL,
        refs    INTEGER NOT NULL DEFAULT 0   -- occurrences in content_chunks
    );
    CREATE INDEX chunks_by_pack ON chunks(pack);
    CREATE TABLE content_chunks (
        content INTEGER NOT NULL,
        seq     INTEGER NOT NULL,
        offset  INTEGER NOT NULL,            -- offset of the chunk in the file
        chunk   INTEGER NOT NULL,
        PRIMARY KEY (content, seq)
    ) WITHOUT ROWID;
    CREATE INDEX content_chunks_by_chunk ON content_chunks(chunk);
    CREATE TABLE packs (
        id       INTEGER PRIMARY KEY,
        size     INTEGER NOT NULL            -- bytes covered by committed records
    );
    CREATE TABLE xattrs (
        ino   INTEGER NOT NULL,
        name  BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (ino, name)
    ) WITHOUT ROWID;
    CREATE TABLE models (
        id        INTEGER PRIMARY KEY,
        layout    TEXT NOT NULL,             -- hf | ollama
        name      TEXT NOT NULL,             -- org/name, or host/namespace/model
        revision  TEXT NOT NULL,             -- commit, or tag
        format    TEXT NOT NULL,             -- safetensors | gguf | mixed | other
        files     INTEGER NOT NULL,
        last_read INTEGER,                   -- nanoseconds since the epoch
        last_view TEXT,                      -- hf | ollama | mlx | lmstudio
        reads     INTEGER NOT NULL DEFAULT 0,
        UNIQUE (layout, name, revision)
    );
    -- Running totals so `mlxfs status` never scans a million rows.
    CREATE TABLE totals (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        logical_bytes  INTEGER NOT NULL,
        files          INTEGER NOT NULL,
        physical_bytes INTEGER NOT NULL,
        chunks         INTEGER NOT NULL
    );
    INSERT INTO totals VALUES (1, 0, 0, 0, 0);
    CREATE TRIGGER file_added AFTER INSERT ON inodes WHEN NEW.kind = 1 BEGIN
        UPDATE totals SET logical_bytes = logical_bytes + NEW.size, files = files + 1;
    END;
    CREATE TRIGGER file_removed AFTER DELETE ON inodes WHEN OLD.kind = 1 BEGIN
        UPDATE totals SET logical_bytes = logical_bytes - OLD.size, files = files - 1;
    END;
    CREATE TRIGGER file_resized AFTER UPDATE OF size ON inodes WHEN NEW.kind = 1 BEGIN
        UPDATE totals SET logical_bytes = logical_bytes - OLD.size + NEW.size;
    END;
    CREATE TRIGGER chunk_added AFTER INSERT ON chunks BEGIN
        UPDATE totals SET physical_bytes = physical_bytes + NEW.len, chunks = chunks + 1;
    END;
    CREATE TRIGGER chunk_removed AFTER DELETE ON chunks BEGIN
        UPDATE totals SET physical_bytes = physical_bytes - OLD.len, chunks = chunks - 1;
    END;
    "#,
        then: None,
    },
    // v2: the chaining values of each chunk's blocks (blocks.rs), so a random read checks only
    // the blocks it reads. NULL for chunks stored before: they are read and checked whole.
    Migration {
        sql: "ALTER TABLE chunks ADD COLUMN cvs BLOB;",
        then: None,
    },
    // v3: a content is named by the hash of its chunk list (content.rs `chunk_list_hash`)
    // instead of a BLAKE3 of its bytes, which cost a second pass over every file stored.
    Migration {
        sql: "ALTER TABLE contents RENAME COLUMN blake3 TO chunk_list_hash;",
        then: Some(rename_contents_by_chunk_list),
    },
    // v4: packs an import committed before they reached the disk, with the boot and mount
    // that wrote them (deferred_sync.rs), one row per commit that marked the pack; and the raw
    // packs that hold a content whole (pack.rs), for passthrough.
    Migration {
        sql: "CREATE TABLE unsynced_packs (pack INTEGER NOT NULL, session TEXT NOT NULL);
              CREATE TABLE whole_copies (
                  content INTEGER PRIMARY KEY,   -- its bytes are exactly the pack's
                  pack    INTEGER NOT NULL
              );
              CREATE INDEX whole_copies_by_pack ON whole_copies(pack);
              INSERT INTO whole_copies (content, pack)
                  SELECT cc.content, MIN(c.pack) FROM content_chunks cc
                  JOIN chunks c ON c.id = cc.chunk
                  JOIN contents k ON k.id = cc.content
                  LEFT JOIN packs p ON p.id = c.pack
                  GROUP BY cc.content
                  HAVING MIN(c.pack) = MAX(c.pack) AND SUM(c.offset != cc.offset) = 0
                     AND MAX(p.size) = MAX(k.size);",
        then: None,
    },
];

/// Migration v3: every content's `chunk_list_hash` from its chunk list.
fn rename_contents_by_chunk_list(conn: &Connection) -> Result<()> {
    let mut contents = conn.prepare("SELECT id FROM contents")?;
    let ids = contents
        .query_map([], |r| r.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    let mut list = conn.prepare(
        "SELECT c.hash FROM content_chunks cc JOIN chunks c ON c.id = cc.chunk
         WHERE cc.content = ?1 ORDER BY cc.seq",
    )?;
    let mut update = conn.prepare("UPDATE contents SET chunk_list_hash = ?2 WHERE id = ?1")?;
    for id in ids {
        let hashes = list
            .query_map([id], |r| r.get::<_, Vec<u8>>(0))?
            .map(|hash| crate::content::blob32(hash?))
            .collect::<Result<Vec<ChunkHash>>>()?;
        update.execute(rusqlite::params![id, &chunk_list_hash(&hashes)[..]])?;
    }
    Ok(())
}

/// Counters kept by triggers.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Totals {
    pub logical_bytes: u64,
    pub files: u64,
    pub physical_bytes: u64,
    pub chunks: u64,
}

pub struct Catalog {
    conn: Mutex<Connection>,
}

/// A catalog transaction (or, from [`Catalog::read`], a plain connection); the namespace and
/// content operations are methods on it.
pub struct Tx<'a> {
    pub(crate) conn: &'a Connection,
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        Self::configure(&conn)?;
        let catalog = Catalog {
            conn: Mutex::new(conn),
        };
        catalog.migrate()?;
        Ok(catalog)
    }

    /// Opens an existing catalog without writing to it (for `status` and `ls` while another
    /// process owns the store).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let catalog = Catalog {
            conn: Mutex::new(conn),
        };
        let version = catalog.read(|tx| tx.schema_version())?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(catalog)
    }

    fn configure(conn: &Connection) -> Result<()> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL mode: a committed transaction survives the process being killed; the
        // packs it references were fsynced before the commit.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        conn.pragma_update(None, "cache_size", -16_000)?;
        Ok(())
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tracing::info!(to = i + 1, "migrating catalog schema");
            tx.execute_batch(migration.sql)?;
            if let Some(then) = migration.then {
                then(&tx)?;
            }
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    /// Runs `f` in one immediate transaction; it commits only if `f` returns Ok.
    pub fn write<T>(&self, f: impl FnOnce(&Tx) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&Tx { conn: &tx })?;
        tx.commit()?;
        Ok(value)
    }

    /// Copies the WAL into the database file and empties it: after gc deleted many rows the
    /// WAL holds them until the next automatic checkpoint, and it counts as catalog bytes.
    pub fn checkpoint(&self) -> Result<()> {
        let conn = self.conn.lock();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Runs `f` on the connection without opening a write transaction.
    pub fn read<T>(&self, f: impl FnOnce(&Tx) -> Result<T>) -> Result<T> {
        let conn = self.conn.lock();
        f(&Tx { conn: &conn })
    }
}

impl Tx<'_> {
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    pub fn totals(&self) -> Result<Totals> {
        let totals = self
            .conn
            .query_row(
                "SELECT logical_bytes, files, physical_bytes, chunks FROM totals WHERE id = 1",
                [],
                |r| {
                    Ok(Totals {
                        logical_bytes: r.get::<_, i64>(0)? as u64,
                        files: r.get::<_, i64>(1)? as u64,
                        physical_bytes: r.get::<_, i64>(2)? as u64,
                        chunks: r.get::<_, i64>(3)? as u64,
                    })
                },
            )
            .optional()?;
        Ok(totals.unwrap_or_default())
    }

    /// Direct access for modules of this crate that need a query of their own.
    pub fn conn(&self) -> &Connection {
        self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catalog made by this build, turned back by `downgrade` into what an older build left
    /// behind, then opened (migrated) again.
    fn migrated_from(downgrade: &str) -> (tempfile::TempDir, Catalog) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("catalog.db");
        drop(Catalog::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch(downgrade)
            .unwrap();
        let catalog = Catalog::open(&path).unwrap();
        assert_eq!(
            catalog.read(|tx| tx.schema_version()).unwrap(),
            SCHEMA_VERSION
        );
        (tmp, catalog)
    }

    #[test]
    fn a_version_1_catalog_gains_block_cvs_and_keeps_its_rows() {
        // Version 1, with one chunk row.
        let (_tmp, catalog) = migrated_from(
            "DROP TABLE unsynced_packs;
             DROP TABLE whole_copies;
             ALTER TABLE chunks DROP COLUMN cvs;
             ALTER TABLE contents RENAME COLUMN chunk_list_hash TO blake3;
             INSERT INTO chunks (hash, pack, offset, len, refs) VALUES (x'00', 1, 40, 5, 1);
             PRAGMA user_version = 1;",
        );
        let (len, cvs): (i64, Option<Vec<u8>>) = catalog
            .read(|tx| {
                Ok(tx.conn.query_row("SELECT len, cvs FROM chunks", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?)
            })
            .unwrap();
        assert_eq!((len, cvs), (5, None));
    }

    #[test]
    fn a_version_2_catalog_names_its_contents_by_chunk_list() {
        // Version 2: two contents named by a BLAKE3 of their bytes.
        let (_tmp, catalog) = migrated_from(
            "DROP TABLE unsynced_packs;
             DROP TABLE whole_copies;
             ALTER TABLE contents RENAME COLUMN chunk_list_hash TO blake3;
             INSERT INTO chunks (id, hash, pack, offset, len, refs) VALUES
                 (1, zeroblob(32), 1, 40, 5, 2), (2, x'1100000000000000000000000000000000000000000000000000000000000000', 1, 90, 7, 1);
             INSERT INTO contents (id, size, sha256, blake3, refs) VALUES
                 (1, 12, zeroblob(32), x'01', 1), (2, 5, zeroblob(32), x'02', 1);
             INSERT INTO content_chunks VALUES (1, 0, 0, 2), (1, 1, 7, 1), (2, 0, 0, 1);
             PRAGMA user_version = 2;",
        );
        let (zero, one) = ([0u8; 32], {
            let mut h = [0u8; 32];
            h[0] = 0x11;
            h
        });
        for (content, list) in [(1, vec![one, zero]), (2, vec![zero])] {
            let map = catalog.read(|tx| tx.content_map(content)).unwrap();
            assert_eq!(
                map.chunk_list_hash,
                chunk_list_hash(&list),
                "content {content}"
            );
        }
        // And they are found by it: the same list prepared again is the same content.
        let found: i64 = catalog
            .read(|tx| {
                Ok(tx.conn.query_row(
                    "SELECT id FROM contents WHERE chunk_list_hash = ?1",
                    [&chunk_list_hash(&[zero])[..]],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(found, 2);
    }

    #[test]
    fn a_version_3_catalog_gains_unsynced_packs_and_its_whole_copies() {
        // Content 1 tiles raw pack 5 at its own offsets; content 2 lies in record pack 6.
        let (_tmp, catalog) = migrated_from(
            "DROP TABLE unsynced_packs;
             DROP TABLE whole_copies;
             INSERT INTO packs VALUES (5, 100), (6, 200);
             INSERT INTO contents (id, size, sha256, chunk_list_hash, refs) VALUES
                 (1, 100, zeroblob(32), x'01', 1), (2, 50, zeroblob(32), x'02', 1);
             INSERT INTO chunks (id, hash, pack, offset, len, refs) VALUES
                 (1, x'01', 5, 0, 60, 1), (2, x'02', 5, 60, 40, 1), (3, x'03', 6, 56, 50, 1);
             INSERT INTO content_chunks VALUES (1, 0, 0, 1), (1, 1, 60, 2), (2, 0, 0, 3);
             PRAGMA user_version = 3;",
        );
        assert_eq!(
            catalog.read(|tx| tx.pack_equal_to_content(1)).unwrap(),
            Some((5, 100))
        );
        assert_eq!(
            catalog.read(|tx| tx.pack_equal_to_content(2)).unwrap(),
            None
        );
        assert!(!catalog.read(|tx| tx.has_unsynced_packs()).unwrap());
        catalog
            .write(|tx| tx.mark_unsynced(&[7], "boot/u1"))
            .unwrap();
        assert!(catalog.read(|tx| tx.has_unsynced_packs()).unwrap());
    }
}
