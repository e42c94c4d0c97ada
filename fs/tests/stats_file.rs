//! `/.mlxfs/stats.json` (bytes from an installed provider, a snapshot per open) and the
//! accessors the daemon's metrics use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fs::stats::{StatsProvider, STATS_DIR, STATS_FILE};
use fs::{Caller, Errno, Vfs};
use store::{Store, StoreOptions, ROOT_INO};

struct Counter(AtomicU64);

impl StatsProvider for Counter {
    fn stats_json(&self) -> Vec<u8> {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        // Grows with n, so a stale size would clip the newer, longer bytes.
        format!("{{\"n\":{n},\"pad\":\"{}\"}}\n", "x".repeat(n as usize)).into_bytes()
    }
}

fn open_vfs(dir: &std::path::Path) -> Vfs {
    let store = Store::open(dir, StoreOptions::default()).expect("open store");
    Vfs::new(Arc::new(store)).expect("vfs")
}

fn read_handle(vfs: &Vfs, ino: u64, fh: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let piece = vfs.read(ino, fh, out.len() as u64, 7).unwrap();
        if piece.is_empty() {
            return out;
        }
        out.extend(piece);
    }
}

#[test]
fn stats_file_appears_only_with_a_provider_and_snapshots_each_open() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = open_vfs(dir.path());
    assert_eq!(
        vfs.lookup(ROOT_INO, STATS_DIR.as_bytes()).unwrap_err(),
        Errno::ENOENT
    );

    vfs.set_stats_provider(Arc::new(Counter(AtomicU64::new(0))));
    let dir_attr = vfs.lookup(ROOT_INO, STATS_DIR.as_bytes()).unwrap();
    let attr = vfs.lookup(dir_attr.ino, STATS_FILE.as_bytes()).unwrap();
    assert_eq!(attr.perm, 0o444);
    assert!(attr.size > 0, "stat reports the current length");

    let first = vfs.open(attr.ino, libc::O_RDONLY).unwrap();
    assert!(first.direct_io && !first.keep_cache);
    let second = vfs.open(attr.ino, libc::O_RDONLY).unwrap();
    let a = read_handle(&vfs, attr.ino, first.fh);
    let b = read_handle(&vfs, attr.ino, second.fh);
    assert!(a.ends_with(b"}\n") && b.ends_with(b"}\n"));
    assert_ne!(a, b, "each open takes a fresh snapshot");
    // A handle keeps reading its own snapshot.
    assert_eq!(read_handle(&vfs, attr.ino, first.fh), a);
    vfs.release(first.fh).unwrap();
    vfs.release(second.fh).unwrap();

    assert_eq!(
        vfs.open(attr.ino, libc::O_WRONLY).unwrap_err(),
        Errno::EROFS
    );
    assert_eq!(vfs.top_dir_of(attr.ino).as_deref(), Some(STATS_DIR));
}

#[test]
fn top_dir_and_generation() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = open_vfs(dir.path());
    let caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
    };
    let hf = vfs.lookup(ROOT_INO, b"huggingface").unwrap().ino;
    let hub = vfs.lookup(hf, b"hub").unwrap().ino;
    let before = vfs.namespace_generation();
    let (attr, opened) = vfs
        .create(hub, b"f", 0o644, 0o022, libc::O_WRONLY, caller)
        .unwrap();
    vfs.release(opened.fh).unwrap();
    assert!(vfs.namespace_generation() > before);
    assert_eq!(vfs.top_dir_of(attr.ino).as_deref(), Some("huggingface"));
    let mlx = vfs.lookup(ROOT_INO, b"mlx").unwrap().ino;
    assert_eq!(vfs.top_dir_of(mlx).as_deref(), Some("mlx"));
    assert_eq!(vfs.top_dir_of(u64::MAX), None);
}
