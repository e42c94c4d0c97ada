//! Reading the Hugging Face hub tree out of the catalog: for each `models--{org}--{name}` repo,
//! the files of the snapshot `refs/main` names, each resolved to the inode it stores.

use store::models::HF_ROOT;
use store::{NodeKind, Store, Tx};

use crate::errno::FsResult;

/// One file of a snapshot, resolved through its `../../blobs/<etag>` symlink.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    /// Path inside the snapshot, `/`-separated.
    pub path: String,
    pub ino: u64,
    pub size: u64,
    pub content: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct HfRepo {
    pub org: String,
    pub name: String,
    pub commit: String,
    pub files: Vec<SnapshotFile>,
}

impl HfRepo {
    pub fn has(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.files.iter().any(|f| pred(&f.path))
    }
}

/// Splits `models--org--name` into (org, name); repos without an org are skipped by views that
/// need both.
pub fn split_repo_folder(folder: &str) -> Option<(String, String)> {
    let rest = folder.strip_prefix("models--")?;
    let (org, name) = rest.split_once("--")?;
    if org.is_empty() || name.is_empty() || name.contains("--") {
        return None;
    }
    Some((org.to_string(), name.to_string()))
}

/// Every HF model repo with a readable `refs/main` and its snapshot's files.
pub fn scan(store: &Store) -> FsResult<Vec<HfRepo>> {
    Ok(store.catalog().read(|tx| {
        let mut repos = Vec::new();
        let Some(hub) = tx.resolve_path(HF_ROOT)? else {
            return Ok(repos);
        };
        for entry in tx.read_dir(hub, None)? {
            if entry.kind != NodeKind::Dir {
                continue;
            }
            let folder = String::from_utf8_lossy(&entry.name).into_owned();
            let Some((org, name)) = split_repo_folder(&folder) else {
                continue;
            };
            let Some(commit) = read_ref(store, tx, entry.ino)? else {
                continue;
            };
            let Some(snapshots) = tx.lookup(entry.ino, b"snapshots")? else {
                continue;
            };
            let Some(snapshot) = tx.lookup(snapshots, commit.as_bytes())? else {
                continue;
            };
            let mut files = Vec::new();
            collect(tx, snapshot, "", 0, &mut files)?;
            repos.push(HfRepo {
                org,
                name,
                commit,
                files,
            });
        }
        Ok(repos)
    })?)
}

/// `refs/main` as a commit hash, if it is one.
fn read_ref(store: &Store, tx: &Tx, repo: u64) -> store::Result<Option<String>> {
    let Some(refs) = tx.lookup(repo, b"refs")? else {
        return Ok(None);
    };
    let Some(main) = tx.lookup(refs, b"main")? else {
        return Ok(None);
    };
    let Some(buf) = tx.read_small_file(store, main, 128)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&buf).trim().to_string();
    let valid =
        !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric());
    Ok(valid.then_some(text))
}

fn collect(
    tx: &Tx,
    dir: u64,
    prefix: &str,
    depth: u32,
    out: &mut Vec<SnapshotFile>,
) -> store::Result<()> {
    if depth > 32 {
        return Ok(());
    }
    for entry in tx.read_dir(dir, None)? {
        let name = String::from_utf8_lossy(&entry.name).into_owned();
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let ino = match entry.kind {
            NodeKind::Dir => {
                collect(tx, entry.ino, &path, depth + 1, out)?;
                continue;
            }
            NodeKind::File => entry.ino,
            NodeKind::Symlink => {
                // Resolve within the namespace relative to the link's directory; links that
                // leave the hub or dangle are not shown.
                let inode = tx.inode_required(entry.ino)?;
                let target = String::from_utf8_lossy(inode.target.as_deref().unwrap_or_default())
                    .into_owned();
                if target.starts_with('/') {
                    continue;
                }
                match resolve_relative(tx, dir, &target)? {
                    Some(ino) => ino,
                    None => continue,
                }
            }
        };
        let inode = tx.inode_required(ino)?;
        if inode.kind != NodeKind::File {
            continue;
        }
        out.push(SnapshotFile {
            path,
            ino,
            size: inode.size,
            content: inode.content,
        });
    }
    Ok(())
}

/// Follows a relative symlink target from `dir` inside the namespace (no further symlinks).
fn resolve_relative(tx: &Tx, dir: u64, target: &str) -> store::Result<Option<u64>> {
    let mut cur = dir;
    let parts: Vec<&str> = target
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for (i, part) in parts.iter().enumerate() {
        if *part == ".." {
            cur = match tx.parent_of_dir(cur)? {
                Some(p) => p,
                None => return Ok(None),
            };
            continue;
        }
        let Some(next) = tx.lookup(cur, part.as_bytes())? else {
            return Ok(None);
        };
        if i + 1 < parts.len() && tx.inode_required(next)?.kind != NodeKind::Dir {
            return Ok(None);
        }
        cur = next;
    }
    Ok(Some(cur))
}
