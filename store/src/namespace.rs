//! The namespace kept in the catalog: inodes, directory entries and symlink targets.
//! The mount serves straight from these; `import` writes them.

use rusqlite::{params, OptionalExtension, Row};

use crate::catalog::Tx;
use crate::error::{Result, StoreError};

pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

impl NodeKind {
    fn code(self) -> i64 {
        match self {
            NodeKind::File => 1,
            NodeKind::Dir => 2,
            NodeKind::Symlink => 3,
        }
    }

    fn from_code(code: i64) -> Result<Self> {
        match code {
            1 => Ok(NodeKind::File),
            2 => Ok(NodeKind::Dir),
            3 => Ok(NodeKind::Symlink),
            other => Err(StoreError::Inconsistent(format!(
                "unknown inode kind {other}"
            ))),
        }
    }
}

/// One inode as the catalog stores it. Times are nanoseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    pub kind: NodeKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub crtime: i64,
    pub nlink: u32,
    /// The committed content; `None` means the file reads as `size` zero bytes.
    pub content: Option<i64>,
    pub target: Option<Vec<u8>>,
    pub rdev: u32,
}

/// What a new inode starts with.
#[derive(Debug, Clone)]
pub struct NewInode {
    pub kind: NodeKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub time: i64,
    pub target: Option<Vec<u8>>,
    pub rdev: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: NodeKind,
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

const INODE_COLUMNS: &str =
    "ino, kind, perm, uid, gid, size, atime, mtime, ctime, crtime, nlink, content, target, rdev";

fn inode_from_row(row: &Row) -> rusqlite::Result<(Inode, i64)> {
    let kind: i64 = row.get(1)?;
    Ok((
        Inode {
            ino: row.get::<_, i64>(0)? as u64,
            kind: NodeKind::File, // fixed up by the caller, which can return a typed error
            perm: row.get::<_, i64>(2)? as u32,
            uid: row.get::<_, i64>(3)? as u32,
            gid: row.get::<_, i64>(4)? as u32,
            size: row.get::<_, i64>(5)? as u64,
            atime: row.get(6)?,
            mtime: row.get(7)?,
            ctime: row.get(8)?,
            crtime: row.get(9)?,
            nlink: row.get::<_, i64>(10)? as u32,
            content: row.get(11)?,
            target: row.get(12)?,
            rdev: row.get::<_, i64>(13)? as u32,
        },
        kind,
    ))
}

fn finish(pair: (Inode, i64)) -> Result<Inode> {
    let (mut inode, kind) = pair;
    inode.kind = NodeKind::from_code(kind)?;
    Ok(inode)
}

impl Tx<'_> {
    /// Creates the root directory on a fresh catalog.
    pub fn ensure_root(&self, uid: u32, gid: u32) -> Result<()> {
        if self.inode(ROOT_INO)?.is_some() {
            return Ok(());
        }
        let t = now_ns();
        self.conn.execute(
            "INSERT INTO inodes (ino, kind, perm, uid, gid, size, atime, mtime, ctime, crtime, nlink)
             VALUES (?1, 2, 493, ?2, ?3, 0, ?4, ?4, ?4, ?4, 2)",
            params![ROOT_INO as i64, uid, gid, t],
        )?;
        Ok(())
    }

    pub fn inode(&self, ino: u64) -> Result<Option<Inode>> {
        let sql = format!("SELECT {INODE_COLUMNS} FROM inodes WHERE ino = ?1");
        let row = self
            .conn
            .prepare_cached(&sql)?
            .query_row([ino as i64], inode_from_row)
            .optional()?;
        row.map(finish).transpose()
    }

    /// Like [`Tx::inode`] but a missing inode is an error.
    pub fn inode_required(&self, ino: u64) -> Result<Inode> {
        self.inode(ino)?
            .ok_or_else(|| StoreError::NotFound(format!("inode {ino}")))
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Option<u64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT ino FROM dentries WHERE parent = ?1 AND name = ?2")?
            .query_row(params![parent as i64, name], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|i| i as u64))
    }

    /// Entries of a directory in name order, starting after `after` (for paged readdir).
    pub fn read_dir(&self, dir: u64, after: Option<&[u8]>) -> Result<Vec<DirEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT d.name, d.ino, i.kind FROM dentries d JOIN inodes i ON i.ino = d.ino
             WHERE d.parent = ?1 AND d.name > ?2 ORDER BY d.name",
        )?;
        let after = after.unwrap_or(b"");
        let rows = stmt.query_map(params![dir as i64, after], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut entries = Vec::new();
        for row in rows {
            let (name, ino, kind) = row?;
            entries.push(DirEntry {
                name,
                ino: ino as u64,
                kind: NodeKind::from_code(kind)?,
            });
        }
        Ok(entries)
    }

    pub fn dir_is_empty(&self, dir: u64) -> Result<bool> {
        let any: Option<i64> = self
            .conn
            .prepare_cached("SELECT 1 FROM dentries WHERE parent = ?1 LIMIT 1")?
            .query_row([dir as i64], |r| r.get(0))
            .optional()?;
        Ok(any.is_none())
    }

    /// The parent of a directory (directories have exactly one entry).
    pub fn parent_of_dir(&self, dir: u64) -> Result<Option<u64>> {
        if dir == ROOT_INO {
            return Ok(Some(ROOT_INO));
        }
        Ok(self
            .conn
            .prepare_cached("SELECT parent FROM dentries WHERE ino = ?1 LIMIT 1")?
            .query_row([dir as i64], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|p| p as u64))
    }

    /// Creates an inode with nlink 0; [`Tx::link_entry`] gives it a name.
    pub fn create_inode(&self, new: &NewInode) -> Result<u64> {
        self.conn
            .prepare_cached(
                "INSERT INTO inodes (kind, perm, uid, gid, size, atime, mtime, ctime, crtime,
                                     nlink, target, rdev)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?6, ?6, 0, ?7, ?8)",
            )?
            .execute(params![
                new.kind.code(),
                new.perm & 0o7777,
                new.uid,
                new.gid,
                new.target.as_ref().map_or(0, |t| t.len() as i64),
                new.time,
                new.target,
                new.rdev,
            ])?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    /// Adds `name` in `parent` pointing at `ino`, maintaining nlink of the inode and, for
    /// directories, of the parent (`..`).
    pub fn link_entry(&self, parent: u64, name: &[u8], ino: u64) -> Result<()> {
        let kind = self.inode_required(ino)?.kind;
        self.conn
            .prepare_cached("INSERT INTO dentries (parent, name, ino) VALUES (?1, ?2, ?3)")?
            .execute(params![parent as i64, name, ino as i64])?;
        let self_links = if kind == NodeKind::Dir { 2 } else { 1 };
        self.conn
            .prepare_cached("UPDATE inodes SET nlink = nlink + ?2 WHERE ino = ?1")?
            .execute(params![ino as i64, self_links])?;
        if kind == NodeKind::Dir {
            self.conn
                .prepare_cached("UPDATE inodes SET nlink = nlink + 1 WHERE ino = ?1")?
                .execute([parent as i64])?;
        }
        Ok(())
    }

    /// Removes `name` from `parent`; returns the inode it named, with its nlink already lowered.
    /// The inode row stays until [`Tx::delete_inode_if_unlinked`] (open files keep it alive).
    pub fn unlink_entry(&self, parent: u64, name: &[u8]) -> Result<Inode> {
        let ino = self
            .lookup(parent, name)?
            .ok_or_else(|| StoreError::NotFound(String::from_utf8_lossy(name).into_owned()))?;
        let inode = self.inode_required(ino)?;
        self.conn
            .prepare_cached("DELETE FROM dentries WHERE parent = ?1 AND name = ?2")?
            .execute(params![parent as i64, name])?;
        let self_links = if inode.kind == NodeKind::Dir { 2 } else { 1 };
        self.conn
            .prepare_cached("UPDATE inodes SET nlink = MAX(nlink - ?2, 0) WHERE ino = ?1")?
            .execute(params![ino as i64, self_links])?;
        if inode.kind == NodeKind::Dir {
            self.conn
                .prepare_cached("UPDATE inodes SET nlink = MAX(nlink - 1, 0) WHERE ino = ?1")?
                .execute([parent as i64])?;
        }
        self.inode_required(ino)
    }

    /// Deletes an inode that no entry names any more, releasing its content and xattrs.
    pub fn delete_inode_if_unlinked(&self, ino: u64) -> Result<bool> {
        let Some(inode) = self.inode(ino)? else {
            return Ok(false);
        };
        if inode.nlink > 0 || ino == ROOT_INO {
            return Ok(false);
        }
        self.set_content(ino, None)?;
        self.conn
            .execute("DELETE FROM xattrs WHERE ino = ?1", [ino as i64])?;
        self.conn
            .execute("DELETE FROM inodes WHERE ino = ?1", [ino as i64])?;
        Ok(true)
    }

    /// Inodes no directory entry names (left by a crash while a file was open but unlinked).
    pub fn orphan_inodes(&self) -> Result<Vec<u64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT ino FROM inodes WHERE nlink = 0 AND ino != ?1")?;
        let rows = stmt.query_map([ROOT_INO as i64], |r| r.get::<_, i64>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r? as u64);
        }
        Ok(out)
    }

    /// Writes every attribute column of `inode` back (the caller changed some of them).
    pub fn update_inode(&self, inode: &Inode) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE inodes SET perm = ?2, uid = ?3, gid = ?4, size = ?5, atime = ?6,
                 mtime = ?7, ctime = ?8, crtime = ?9 WHERE ino = ?1",
            )?
            .execute(params![
                inode.ino as i64,
                inode.perm & 0o7777,
                inode.uid,
                inode.gid,
                inode.size as i64,
                inode.atime,
                inode.mtime,
                inode.ctime,
                inode.crtime,
            ])?;
        Ok(())
    }

    pub fn touch_times(&self, ino: u64, mtime: Option<i64>, ctime: Option<i64>) -> Result<()> {
        if let Some(t) = mtime {
            self.conn
                .prepare_cached("UPDATE inodes SET mtime = ?2 WHERE ino = ?1")?
                .execute(params![ino as i64, t])?;
        }
        if let Some(t) = ctime {
            self.conn
                .prepare_cached("UPDATE inodes SET ctime = ?2 WHERE ino = ?1")?
                .execute(params![ino as i64, t])?;
        }
        Ok(())
    }

    /// Resolves a `/`-separated path from the root without following symlinks in the last
    /// component; symlinks in the middle are followed within the namespace.
    pub fn resolve_path(&self, path: &str) -> Result<Option<u64>> {
        self.resolve_from(ROOT_INO, path, false, 0)
    }

    /// Like [`Tx::resolve_path`] but follows a symlink in the last component too.
    pub fn resolve_path_follow(&self, path: &str) -> Result<Option<u64>> {
        self.resolve_from(ROOT_INO, path, true, 0)
    }

    fn resolve_from(
        &self,
        start: u64,
        path: &str,
        follow_last: bool,
        depth: u32,
    ) -> Result<Option<u64>> {
        if depth > 40 {
            return Err(StoreError::Inconsistent(format!(
                "too many symlinks resolving {path}"
            )));
        }
        let mut dir = if path.starts_with('/') {
            ROOT_INO
        } else {
            start
        };
        let parts: Vec<&str> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if *part == ".." {
                dir = self.parent_of_dir(dir)?.unwrap_or(ROOT_INO);
                continue;
            }
            let Some(ino) = self.lookup(dir, part.as_bytes())? else {
                return Ok(None);
            };
            let inode = self.inode_required(ino)?;
            if inode.kind == NodeKind::Symlink && (!last || follow_last) {
                let target = String::from_utf8_lossy(inode.target.as_deref().unwrap_or_default())
                    .into_owned();
                match self.resolve_from(dir, &target, true, depth + 1)? {
                    Some(resolved) => dir = resolved,
                    None => return Ok(None),
                }
                if last {
                    return Ok(Some(dir));
                }
                continue;
            }
            if last {
                return Ok(Some(ino));
            }
            dir = ino;
        }
        Ok(Some(dir))
    }

    /// Walks `parent`/`name` components, creating missing directories owned by uid/gid.
    pub fn mkdir_p(&self, path: &[&[u8]], perm: u32, uid: u32, gid: u32) -> Result<u64> {
        let mut dir = ROOT_INO;
        for part in path {
            dir = match self.lookup(dir, part)? {
                Some(ino) => ino,
                None => {
                    let ino = self.create_inode(&NewInode {
                        kind: NodeKind::Dir,
                        perm,
                        uid,
                        gid,
                        time: now_ns(),
                        target: None,
                        rdev: 0,
                    })?;
                    self.link_entry(dir, part, ino)?;
                    ino
                }
            };
        }
        Ok(dir)
    }

    /// Full path of an inode from the root (first name found), for reports.
    pub fn path_of(&self, ino: u64) -> Result<Option<String>> {
        let mut parts = Vec::new();
        let mut cur = ino;
        let mut guard = 0;
        while cur != ROOT_INO {
            let row: Option<(i64, Vec<u8>)> = self
                .conn
                .prepare_cached("SELECT parent, name FROM dentries WHERE ino = ?1 LIMIT 1")?
                .query_row([cur as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((parent, name)) = row else {
                return Ok(None);
            };
            parts.push(String::from_utf8_lossy(&name).into_owned());
            cur = parent as u64;
            guard += 1;
            if guard > 4096 {
                return Err(StoreError::Inconsistent("directory cycle".into()));
            }
        }
        parts.reverse();
        Ok(Some(parts.join("/")))
    }

    pub fn get_xattr(&self, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM xattrs WHERE ino = ?1 AND name = ?2")?
            .query_row(params![ino as i64, name], |r| r.get(0))
            .optional()?)
    }

    pub fn set_xattr(&self, ino: u64, name: &[u8], value: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?1, ?2, ?3)")?
            .execute(params![ino as i64, name, value])?;
        Ok(())
    }

    pub fn remove_xattr(&self, ino: u64, name: &[u8]) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM xattrs WHERE ino = ?1 AND name = ?2")?
            .execute(params![ino as i64, name])?
            > 0)
    }

    pub fn list_xattrs(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name FROM xattrs WHERE ino = ?1 ORDER BY name")?;
        let rows = stmt.query_map([ino as i64], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?);
        }
        Ok(out)
    }
}
