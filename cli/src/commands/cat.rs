//! `mlxfs cat NSPATH`: a file of the store's tree to stdout.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use store::NodeKind;

use super::{ns_path, open_store, EXIT_OK};

#[derive(clap::Args, Debug)]
pub struct CatArgs {
    /// Path in the store's tree, e.g. huggingface/hub/models--org--name/refs/main.
    #[arg(value_name = "NSPATH")]
    pub path: String,
}

pub fn run(store_dir: &Path, args: &CatArgs) -> Result<i32> {
    let store = open_store(store_dir, false)?;
    let path = ns_path(&args.path);
    let inode = store
        .catalog()
        .read(|tx| match tx.resolve_path_follow(path)? {
            Some(ino) => tx.inode(ino),
            None => Ok(None),
        })?;
    let Some(inode) = inode else {
        bail!("{path}: no such file in the store");
    };
    match inode.kind {
        NodeKind::File => {}
        NodeKind::Dir => bail!("{path}: is a directory"),
        NodeKind::Symlink => bail!("{path}: symlink loop or dangling symlink"),
    }
    let map = match inode.content {
        Some(content) => Some(store.catalog().read(|tx| tx.content_map(content))?),
        None => None,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < inode.size {
        let want = (inode.size - offset).min(buf.len() as u64) as usize;
        let got = match &map {
            Some(map) => store
                .read(map, offset, &mut buf[..want])
                .with_context(|| format!("reading {path} at offset {offset}"))?,
            None => 0,
        };
        // Past the end of the content the file reads as zeros (sparse tail).
        let n = if got == 0 {
            buf[..want].fill(0);
            want
        } else {
            got
        };
        match out.write_all(&buf[..n]) {
            Ok(()) => {}
            // `mlxfs cat ... | head`: the reader left; that is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(EXIT_OK),
            Err(e) => return Err(e).context("writing to stdout"),
        }
        offset += n as u64;
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(EXIT_OK),
    }
}
