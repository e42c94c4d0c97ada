//! `mlxfs rm [-r] NSPATH...`: remove entries from the store's tree, releasing their contents
//! (the chunks go at the next `mlxfs gc`).

use std::path::Path;

use anyhow::{Context, Result};
use store::{NodeKind, StoreError, Tx};

use super::{ns_path, open_store, EXIT_FAILURE, EXIT_OK};

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// Remove directories and everything in them.
    #[arg(short, long)]
    pub recursive: bool,
    /// Paths in the store's tree, e.g. huggingface/hub/models--org--name.
    #[arg(required = true, value_name = "NSPATH")]
    pub paths: Vec<String>,
}

#[derive(Default)]
struct Removed {
    files: u64,
    dirs: u64,
    symlinks: u64,
}

/// Unlinks `name` in `parent`, and everything below it when it is a directory.
fn remove(tx: &Tx, parent: u64, name: &[u8], removed: &mut Removed) -> store::Result<()> {
    let ino = tx
        .lookup(parent, name)?
        .ok_or_else(|| StoreError::NotFound(String::from_utf8_lossy(name).into_owned()))?;
    let kind = tx.inode_required(ino)?.kind;
    if kind == NodeKind::Dir {
        for entry in tx.read_dir(ino, None)? {
            remove(tx, ino, &entry.name, removed)?;
        }
    }
    let inode = tx.unlink_entry(parent, name)?;
    tx.delete_inode_if_unlinked(inode.ino)?;
    match kind {
        NodeKind::File => removed.files += 1,
        NodeKind::Dir => removed.dirs += 1,
        NodeKind::Symlink => removed.symlinks += 1,
    }
    Ok(())
}

pub fn run(store_dir: &Path, args: &RmArgs) -> Result<i32> {
    let store = open_store(store_dir, false)?;
    let mut removed = Removed::default();
    let mut failed = false;
    for raw in &args.paths {
        let path = ns_path(raw);
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (dir, name),
            None => ("", path),
        };
        if name.is_empty() || name == "." || name == ".." {
            eprintln!("mlxfs: rm: refusing to remove {raw:?}");
            failed = true;
            continue;
        }
        let result = store.catalog().write(|tx| {
            let Some(parent) = tx.resolve_path_follow(dir)? else {
                return Ok(Err("no such file or directory"));
            };
            let Some(ino) = tx.lookup(parent, name.as_bytes())? else {
                return Ok(Err("no such file or directory"));
            };
            if tx.inode_required(ino)?.kind == NodeKind::Dir && !args.recursive {
                return Ok(Err("is a directory (use -r)"));
            }
            remove(tx, parent, name.as_bytes(), &mut removed)?;
            Ok(Ok(()))
        });
        match result.with_context(|| format!("removing {path}"))? {
            Ok(()) => tracing::info!(path, "removed"),
            Err(why) => {
                eprintln!("mlxfs: rm: {path}: {why}");
                failed = true;
            }
        }
    }
    store
        .refresh_models()
        .context("updating the model registry")?;
    if removed.files + removed.symlinks + removed.dirs > 0 {
        println!(
            "removed {} files, {} symlinks, {} directories (run `mlxfs gc` to reclaim space)",
            removed.files, removed.symlinks, removed.dirs
        );
    }
    Ok(if failed { EXIT_FAILURE } else { EXIT_OK })
}
