//! The core Vfs without a mount: namespace and file semantics, persistence across reopen.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fs::{Caller, Errno, SetAttr, Vfs};
use store::{NodeKind, Store, StoreOptions, ROOT_INO};

fn caller() -> Caller {
    Caller {
        uid: 1000,
        gid: 1000,
        pid: 1,
    }
}

fn open_vfs(dir: &Path) -> Vfs {
    let store = Store::open(dir, StoreOptions::default()).expect("open store");
    Vfs::new(Arc::new(store)).expect("vfs")
}

fn write_file(vfs: &Vfs, parent: u64, name: &[u8], data: &[u8]) -> u64 {
    let (attr, opened) = vfs
        .create(parent, name, 0o644, 0o022, libc::O_WRONLY, caller())
        .unwrap();
    let mut off = 0;
    for piece in data.chunks(100_000) {
        vfs.write(attr.ino, opened.fh, off, piece, false).unwrap();
        off += piece.len() as u64;
    }
    vfs.flush(opened.fh).unwrap();
    vfs.release(opened.fh).unwrap();
    attr.ino
}

fn read_all(vfs: &Vfs, ino: u64) -> Vec<u8> {
    let opened = vfs.open(ino, libc::O_RDONLY).unwrap();
    let size = vfs.getattr(ino).unwrap().size;
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let piece = vfs.read(ino, opened.fh, out.len() as u64, 1 << 20).unwrap();
        assert!(!piece.is_empty(), "short read at {}", out.len());
        out.extend_from_slice(&piece);
    }
    vfs.release(opened.fh).unwrap();
    out
}

use store::formats::testgen::pseudo_random;

#[test]
fn roots_exist_and_files_round_trip_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(3 << 20, 1);
    let ino;
    {
        let vfs = open_vfs(dir.path());
        let hf = vfs.lookup(ROOT_INO, b"huggingface").unwrap();
        let hub = vfs.lookup(hf.ino, b"hub").unwrap();
        assert_eq!(hub.kind, NodeKind::Dir);
        ino = write_file(&vfs, hub.ino, b"blob", &data);
        assert_eq!(read_all(&vfs, ino), data);
    }
    let vfs = open_vfs(dir.path());
    assert_eq!(vfs.getattr(ino).unwrap().size, data.len() as u64);
    assert_eq!(read_all(&vfs, ino), data);
}

#[test]
fn readers_see_writes_before_close_and_sparse_growth_reads_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = open_vfs(dir.path());
    let (attr, w) = vfs
        .create(ROOT_INO, b"partial", 0o644, 0, libc::O_RDWR, caller())
        .unwrap();
    vfs.setattr(
        attr.ino,
        SetAttr {
            size: Some(1 << 20),
            ..Default::default()
        },
        caller(),
    )
    .unwrap();
    vfs.write(attr.ino, w.fh, 4096, b"hello", false).unwrap();
    let r = vfs.open(attr.ino, libc::O_RDONLY).unwrap();
    let got = vfs.read(attr.ino, r.fh, 4090, 16).unwrap();
    assert_eq!(&got[..6], &[0; 6]);
    assert_eq!(&got[6..11], b"hello");
    assert_eq!(vfs.getattr(attr.ino).unwrap().size, 1 << 20);
    vfs.release(r.fh).unwrap();
    vfs.release(w.fh).unwrap();
    let all = read_all(&vfs, attr.ino);
    assert_eq!(all.len(), 1 << 20);
    assert_eq!(&all[4096..4101], b"hello");
    assert!(all[..4096].iter().all(|&b| b == 0));
}

#[test]
fn copy_on_write_leaves_files_sharing_chunks_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = open_vfs(dir.path());
    let data = pseudo_random(2 << 20, 7);
    let a = write_file(&vfs, ROOT_INO, b"a", &data);
    let b = write_file(&vfs, ROOT_INO, b"b", &data);
    let w = vfs.open(b, libc::O_WRONLY).unwrap();
    vfs.write(b, w.fh, 10, b"CHANGED", false).unwrap();
    vfs.release(w.fh).unwrap();
    assert_eq!(read_all(&vfs, a), data);
    let mut expected = data.clone();
    expected[10..17].copy_from_slice(b"CHANGED");
    assert_eq!(read_all(&vfs, b), expected);
}

#[test]
fn truncate_down_then_up_shows_zeros_not_old_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = open_vfs(dir.path());
    let data = pseudo_random(100_000, 3);
    let ino = write_file(&vfs, ROOT_INO, b"f", &data);
    vfs.setattr(
        ino,
        SetAttr {
            size: Some(10),
            ..Default::default()
        },
        caller(),
    )
    .unwrap();
    vfs.setattr(
        ino,
        SetAttr {
            size: Some(1000),
            ..Default::default()
        },
        caller(),
    )
    .unwrap();
    let got = read_all(&vfs, ino);
    assert_eq!(&got[..10], &data[..10]);
    assert!(got[10..].iter().all(|&b| b == 0));
}

#[test]
fn namespace_errors_and_link_counts() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = open_vfs(dir.path());
    let d = vfs.mkdir(ROOT_INO, b"d", 0o755, 0, caller()).unwrap();
    assert_eq!(d.nlink, 2);
    assert_eq!(
        vfs.mkdir(ROOT_INO, b"d", 0o755, 0, caller()),
        Err(Errno::EEXIST)
    );
    let f = write_file(&vfs, d.ino, b"f", b"x");
    assert_eq!(vfs.rmdir(ROOT_INO, b"d"), Err(Errno::ENOTEMPTY));
    assert_eq!(vfs.unlink(ROOT_INO, b"d"), Err(Errno::EISDIR));
    assert_eq!(vfs.rmdir(d.ino, b"f"), Err(Errno::ENOTDIR));
    let linked = vfs.link(f, ROOT_INO, b"hard").unwrap();
    assert_eq!(linked.nlink, 2);
    vfs.unlink(d.ino, b"f").unwrap();
    assert_eq!(vfs.getattr(f).unwrap().nlink, 1);
    let sub = vfs.mkdir(d.ino, b"sub", 0o755, 0, caller()).unwrap();
    assert_eq!(vfs.getattr(d.ino).unwrap().nlink, 3);
    assert_eq!(
        vfs.rename(ROOT_INO, b"d", sub.ino, b"x", 0),
        Err(Errno::EINVAL)
    );
    vfs.rmdir(d.ino, b"sub").unwrap();
    assert_eq!(vfs.getattr(d.ino).unwrap().nlink, 2);
    vfs.rmdir(ROOT_INO, b"d").unwrap();
    assert_eq!(vfs.lookup(ROOT_INO, b"d"), Err(Errno::ENOENT));
    assert_eq!(vfs.lookup(ROOT_INO, &[b'a'; 256]), Err(Errno::ENAMETOOLONG));
}

#[test]
fn rename_replaces_noreplace_refuses_exchange_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = open_vfs(dir.path());
    let a = write_file(&vfs, ROOT_INO, b"a", b"AAAA");
    let b = write_file(&vfs, ROOT_INO, b"b", b"BB");
    assert_eq!(
        vfs.rename(ROOT_INO, b"a", ROOT_INO, b"b", libc::RENAME_NOREPLACE),
        Err(Errno::EEXIST)
    );
    vfs.rename(ROOT_INO, b"a", ROOT_INO, b"b", libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(vfs.lookup(ROOT_INO, b"a").unwrap().ino, b);
    assert_eq!(vfs.lookup(ROOT_INO, b"b").unwrap().ino, a);
    vfs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0).unwrap();
    assert_eq!(vfs.lookup(ROOT_INO, b"a"), Err(Errno::ENOENT));
    assert_eq!(
        read_all(&vfs, vfs.lookup(ROOT_INO, b"b").unwrap().ino),
        b"BB"
    );
    assert_eq!(vfs.getattr(a), Err(Errno::ENOENT), "replaced inode is gone");
}

#[test]
fn unlinked_open_file_stays_readable_until_release() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = open_vfs(dir.path());
    let ino = write_file(&vfs, ROOT_INO, b"f", b"still here");
    let r = vfs.open(ino, libc::O_RDONLY).unwrap();
    vfs.unlink(ROOT_INO, b"f").unwrap();
    assert_eq!(vfs.read(ino, r.fh, 0, 100).unwrap(), b"still here");
    vfs.release(r.fh).unwrap();
    assert_eq!(vfs.getattr(ino), Err(Errno::ENOENT));
}

#[test]
fn symlinks_and_xattrs() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = open_vfs(dir.path());
    let l = vfs
        .symlink(ROOT_INO, b"l", b"../../blobs/x", caller())
        .unwrap();
    assert_eq!(l.kind, NodeKind::Symlink);
    assert_eq!(l.size, 13);
    assert_eq!(vfs.readlink(l.ino).unwrap(), b"../../blobs/x");
    let f = write_file(&vfs, ROOT_INO, b"f", b"");
    assert_eq!(vfs.getxattr(f, b"user.k"), Err(Errno::ENODATA));
    vfs.setxattr(f, b"user.k", b"v", 0).unwrap();
    assert_eq!(
        vfs.setxattr(f, b"user.k", b"v", libc::XATTR_CREATE),
        Err(Errno::EEXIST)
    );
    assert_eq!(vfs.getxattr(f, b"user.k").unwrap(), b"v");
    assert_eq!(vfs.listxattr(f).unwrap(), b"user.k\0");
    vfs.removexattr(f, b"user.k").unwrap();
    assert_eq!(vfs.removexattr(f, b"user.k"), Err(Errno::ENODATA));
}

#[test]
fn open_with_o_trunc_empties_a_committed_file_durably() {
    let dir = tempfile::tempdir().unwrap();
    let ino;
    {
        let vfs = open_vfs(dir.path());
        ino = write_file(&vfs, ROOT_INO, b"f", &pseudo_random(100_000, 9));
        let mtime_before = vfs.getattr(ino).unwrap().mtime;
        let w = vfs.open(ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
        assert_eq!(vfs.getattr(ino).unwrap().size, 0);
        vfs.release(w.fh).unwrap();
        let attr = vfs.getattr(ino).unwrap();
        assert_eq!(attr.size, 0);
        assert!(attr.mtime >= mtime_before);
        // A reader racing a rewrite sees only bytes that were written.
        let w = vfs.open(ino, libc::O_RDWR | libc::O_TRUNC).unwrap();
        vfs.write(ino, w.fh, 0, b"{\"status\":1}", false).unwrap();
        let r = vfs.open(ino, libc::O_RDONLY).unwrap();
        assert_eq!(vfs.read(ino, r.fh, 0, 4096).unwrap(), b"{\"status\":1}");
        vfs.release(r.fh).unwrap();
        vfs.release(w.fh).unwrap();
    }
    let vfs = open_vfs(dir.path());
    assert_eq!(read_all(&vfs, ino), b"{\"status\":1}");
}

fn mkdir_p(vfs: &Vfs, path: &[&str]) -> u64 {
    let mut dir = ROOT_INO;
    for part in path {
        dir = match vfs.lookup(dir, part.as_bytes()) {
            Ok(a) => a.ino,
            Err(_) => {
                vfs.mkdir(dir, part.as_bytes(), 0o755, 0, caller())
                    .unwrap()
                    .ino
            }
        };
    }
    dir
}

/// An HF repo laid out as huggingface_hub writes it: blobs named by etag, relative links.
fn hf_repo(vfs: &Vfs, org: &str, name: &str, files: &[(&str, Vec<u8>)]) -> Vec<u64> {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = format!("models--{org}--{name}");
    let blobs = mkdir_p(vfs, &["huggingface", "hub", &repo, "blobs"]);
    let snap = mkdir_p(vfs, &["huggingface", "hub", &repo, "snapshots", commit]);
    let refs = mkdir_p(vfs, &["huggingface", "hub", &repo, "refs"]);
    write_file(vfs, refs, b"main", commit.as_bytes());
    let mut inos = Vec::new();
    for (file, data) in files {
        let etag = hex::encode(store::ingest::sha256(data));
        inos.push(write_file(vfs, blobs, etag.as_bytes(), data));
        vfs.symlink(
            snap,
            file.as_bytes(),
            format!("../../blobs/{etag}").as_bytes(),
            caller(),
        )
        .unwrap();
    }
    inos
}

#[test]
fn views_show_sources_with_their_inode_and_keep_them_read_only() {
    use store::formats::gguf::GgufValue;
    use store::formats::testgen::{make_gguf, make_safetensors};
    let dir = tempfile::tempdir().unwrap();
    let vfs = open_vfs(dir.path());
    let weights = make_safetensors(&[("w", "F16", vec![4, 4], vec![7; 32])]);
    let inos = hf_repo(
        &vfs,
        "org",
        "model",
        &[
            ("config.json", b"{}".to_vec()),
            ("model.safetensors", weights),
        ],
    );
    let mlx = vfs.lookup(ROOT_INO, b"mlx").unwrap();
    let org = vfs.lookup(mlx.ino, b"org").unwrap();
    let model = vfs.lookup(org.ino, b"model").unwrap();
    let shown = vfs.lookup(model.ino, b"model.safetensors").unwrap();
    assert_eq!(shown.ino, inos[1], "a derived entry is its source inode");
    assert_eq!(
        vfs.mkdir(model.ino, b"x", 0o755, 0, caller()),
        Err(Errno::EROFS)
    );
    assert_eq!(vfs.unlink(model.ino, b"config.json"), Err(Errno::EROFS));
    assert_eq!(
        vfs.open(shown.ino, libc::O_WRONLY).map(|_| ()),
        Err(Errno::EROFS)
    );
    let chmod = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    assert_eq!(
        vfs.setattr(shown.ino, chmod, caller()).map(|_| ()),
        Err(Errno::EROFS)
    );
    let touch = SetAttr {
        mtime: Some(fs::SetTime::Now),
        ..Default::default()
    };
    vfs.setattr(shown.ino, touch, caller()).unwrap();

    let gguf = make_gguf(
        &[
            ("general.architecture", GgufValue::String("llama".into())),
            ("general.file_type", GgufValue::U32(1)),
        ],
        &[(
            "t",
            store::formats::gguf::GGML_TYPE_F16,
            vec![8],
            vec![3; 16],
        )],
    );
    let gguf_ino = hf_repo(
        &vfs,
        "org",
        "model-GGUF",
        &[("model-F16.gguf", gguf.clone())],
    )[0];
    let lm = vfs.lookup(ROOT_INO, b"lmstudio").unwrap();
    let lm_org = vfs.lookup(lm.ino, b"org").unwrap();
    let lm_repo = vfs.lookup(lm_org.ino, b"model-GGUF").unwrap();
    assert_eq!(
        vfs.lookup(lm_repo.ino, b"model-F16.gguf").unwrap().ino,
        gguf_ino
    );
    let ollama = mkdir_p(&vfs, &["ollama", "models"]);
    let blobs = vfs.lookup(ollama, b"blobs").unwrap();
    let blob_name = format!("sha256-{}", hex::encode(store::ingest::sha256(&gguf)));
    assert_eq!(
        vfs.lookup(blobs.ino, blob_name.as_bytes()).unwrap().ino,
        gguf_ino
    );
    let repo_dir = mkdir_p(
        &vfs,
        &[
            "ollama",
            "models",
            "manifests",
            "hf.co",
            "org",
            "model-GGUF",
        ],
    );
    let manifest = vfs.lookup(repo_dir, b"F16").unwrap();
    let bytes = read_all(&vfs, manifest.ino);
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["schemaVersion"], 2);
    assert_eq!(
        json["layers"][0]["digest"],
        format!("sha256:{}", &blob_name[7..])
    );

    // Ollama writing its own manifest there gets a real file, which wins from then on.
    let w = vfs
        .open(manifest.ino, libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC)
        .unwrap();
    vfs.write(manifest.ino, w.fh, 0, b"{\"real\":true}", false)
        .unwrap();
    vfs.release(w.fh).unwrap();
    let real = vfs.lookup(repo_dir, b"F16").unwrap();
    assert!(real.ino < fs::views::VIRTUAL_BASE);
    assert_eq!(read_all(&vfs, real.ino), b"{\"real\":true}");
    // The kernel may still know the name under the synthesized inode for a moment: that inode
    // now opens and stats as the real file.
    assert_eq!(read_all(&vfs, manifest.ino), b"{\"real\":true}");
    assert_eq!(vfs.getattr(manifest.ino).unwrap().size, 13);
    // Once the real file is gone, the synthesized one shows again.
    vfs.unlink(repo_dir, b"F16").unwrap();
    assert_eq!(read_all(&vfs, manifest.ino), bytes);
}

#[test]
fn passthrough_handles_share_one_pack_and_keep_writers_out() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        raw_pack_min_file: 1 << 20,
        ..StoreOptions::default()
    };
    let vfs = Vfs::new(Arc::new(Store::open(dir.path(), options).unwrap())).unwrap();
    vfs.set_passthrough(true);
    let hf = vfs.lookup(ROOT_INO, b"huggingface").unwrap();
    let data = pseudo_random(3 << 20, 9);
    let ino = write_file(&vfs, hf.ino, b"big", &data);
    let small = write_file(&vfs, hf.ino, b"small", &data[..100_000]);

    // Just written: hot, so read through the daemon (and that handle keeps it so).
    let hot = vfs.open(ino, libc::O_RDONLY).unwrap();
    assert!(hot.passthrough.is_none());
    vfs.release(hot.fh).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));

    let first = vfs.open(ino, libc::O_RDONLY).unwrap();
    let pt = first
        .passthrough
        .as_ref()
        .expect("a cold big file is passed through");
    let mut on_disk = Vec::new();
    std::io::Read::read_to_end(&mut &pt.file, &mut on_disk).unwrap();
    assert!(on_disk == data, "the backing file is the file's bytes");
    let second = vfs.open(ino, libc::O_RDONLY).unwrap();
    assert_eq!(second.passthrough.as_ref().map(|p| p.pack), Some(pt.pack));
    assert!(vfs
        .open(small, libc::O_RDONLY)
        .unwrap()
        .passthrough
        .is_none());

    for flags in [libc::O_RDWR, libc::O_WRONLY | libc::O_TRUNC] {
        assert_eq!(vfs.open(ino, flags).unwrap_err(), Errno(libc::ETXTBSY));
    }
    let truncate = SetAttr {
        size: Some(1),
        ..SetAttr::default()
    };
    assert_eq!(
        vfs.setattr(ino, truncate, caller()).unwrap_err(),
        Errno(libc::ETXTBSY)
    );
    vfs.release(first.fh).unwrap();
    vfs.release(second.fh).unwrap();

    // Once they are closed, writers are welcome, and the rewritten file is hot again.
    let writer = vfs.open(ino, libc::O_RDWR).unwrap();
    assert!(writer.passthrough.is_none());
    vfs.write(ino, writer.fh, 0, b"changed", false).unwrap();
    vfs.release(writer.fh).unwrap();
    let reader = vfs.open(ino, libc::O_RDONLY).unwrap();
    assert!(reader.passthrough.is_none());
    vfs.release(reader.fh).unwrap();
    assert_eq!(&read_all(&vfs, ino)[..7], b"changed");
}

/// Files under the staging dir of the store at `dir`.
fn staging_files(dir: &Path) -> Vec<PathBuf> {
    let staging = Store::open(dir, StoreOptions::default())
        .map(|s| s.staging_dir())
        .unwrap_or_else(|_| dir.join("staging"));
    std::fs::read_dir(staging)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn a_queued_commit_is_seen_at_once_and_recovered_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(3 << 20, 7);
    let ino;
    {
        let vfs = open_vfs(dir.path());
        // Queueing allowed, but no thread commits: the daemon "dies" with the file queued.
        vfs.start_committing();
        ino = write_file(&vfs, ROOT_INO, b"queued", &data);
        assert_eq!(vfs.commit_backlog(), (1, data.len() as u64));
        assert_eq!(vfs.getattr(ino).unwrap().size, data.len() as u64);
        assert_eq!(read_all(&vfs, ino), data, "reads see the queued bytes");
        let stored = vfs.store().catalog().read(|tx| tx.inode(ino)).unwrap();
        assert_eq!(stored.unwrap().size, 0, "not committed yet");
        // Dropped without commit_all, as by SIGKILL.
    }
    let vfs = open_vfs(dir.path());
    assert_eq!(vfs.getattr(ino).unwrap().size, data.len() as u64);
    assert_eq!(
        read_all(&vfs, ino),
        data,
        "the restart committed the closed file"
    );
    drop(vfs);
    assert!(staging_files(dir.path()).is_empty());
}

/// Rewrites file "f" (made with "old bytes") to `bytes` through a store whose committer never
/// runs, then closes the store: the commit stays queued, as in a crash. Returns the inode and
/// the one commit record left in staging.
fn leave_a_queued_commit(dir: &Path, bytes: &[u8]) -> (u64, PathBuf) {
    let vfs = open_vfs(dir);
    let ino = write_file(&vfs, ROOT_INO, b"f", b"old bytes");
    vfs.start_committing();
    let opened = vfs.open(ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    vfs.write(ino, opened.fh, 0, bytes, false).unwrap();
    vfs.flush(opened.fh).unwrap();
    vfs.release(opened.fh).unwrap();
    assert_eq!(vfs.commit_backlog().0, 1);
    drop(vfs);
    let records: Vec<_> = staging_files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "commit"))
        .collect();
    assert_eq!(records.len(), 1);
    (ino, records[0].clone())
}

#[test]
fn a_commit_queued_before_a_reboot_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (ino, record) = leave_a_queued_commit(dir.path(), b"new bytes, never synced");
    let text = std::fs::read_to_string(&record).unwrap();
    let boot_line = text.lines().nth(1).unwrap().to_string();
    std::fs::write(&record, text.replace(&boot_line, "boot another-boot")).unwrap();
    let vfs = open_vfs(dir.path());
    // O_TRUNC emptied the file durably at open; the unsynced bytes after it are gone.
    assert_eq!(read_all(&vfs, ino), b"");
    drop(vfs);
    assert!(staging_files(dir.path()).is_empty());
}

/// A record of this boot but another mount of the store's file system (pulled out and
/// plugged back, its dirty pages lost) is dropped as one from another boot is; one of a build
/// before sessions (the boot id alone, this boot) is still committed.
#[test]
fn a_commit_queued_before_a_remount_is_dropped_and_an_old_record_of_this_boot_kept() {
    for (bound, kept) in [("other-mount", false), ("boot-only", true)] {
        let dir = tempfile::tempdir().unwrap();
        let (ino, record) = leave_a_queued_commit(dir.path(), b"queued bytes");
        let text = std::fs::read_to_string(&record).unwrap();
        let boot_line = text.lines().nth(1).unwrap().to_string();
        let session = boot_line.strip_prefix("boot ").unwrap();
        let (boot, mount) = session.split_once('/').expect("boot/mount");
        assert!(!mount.is_empty());
        let replaced = match bound {
            "other-mount" => format!("boot {boot}/u999999999"),
            _ => format!("boot {boot}"),
        };
        std::fs::write(&record, text.replace(&boot_line, &replaced)).unwrap();
        let vfs = open_vfs(dir.path());
        let expected: &[u8] = if kept { b"queued bytes" } else { b"" };
        assert_eq!(read_all(&vfs, ino), expected, "{bound}");
        drop(vfs);
        assert!(staging_files(dir.path()).is_empty());
    }
}

#[test]
fn the_commit_thread_lands_queued_files_and_settle_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = Arc::new(open_vfs(dir.path()));
    vfs.start_committing();
    let thread = {
        let vfs = vfs.clone();
        std::thread::spawn(move || vfs.run_committer())
    };
    let files: Vec<(u64, Vec<u8>)> = (0..5)
        .map(|i| {
            let data = pseudo_random((1 << 20) + i * 4099, 100 + i as u64);
            let name = format!("f{i}");
            (write_file(&vfs, ROOT_INO, name.as_bytes(), &data), data)
        })
        .collect();
    // Unlinked while queued: deleted once committed.
    let gone = write_file(&vfs, ROOT_INO, b"gone", b"short-lived");
    vfs.unlink(ROOT_INO, b"gone").unwrap();
    vfs.settle();
    assert_eq!(vfs.commit_backlog(), (0, 0));
    for (ino, data) in &files {
        let stored = vfs.store().catalog().read(|tx| tx.inode(*ino)).unwrap();
        assert_eq!(stored.unwrap().size, data.len() as u64);
        assert_eq!(&read_all(&vfs, *ino), data);
    }
    assert_eq!(vfs.getattr(gone), Err(Errno::ENOENT));
    assert!(
        staging_files(dir.path()).is_empty(),
        "staging and records dropped"
    );
    // Unmount: the thread stops, and closes commit before they return again.
    vfs.commit_all().unwrap();
    thread.join().unwrap();
    let ino = write_file(&vfs, ROOT_INO, b"late", b"late bytes");
    assert_eq!(vfs.commit_backlog(), (0, 0));
    let stored = vfs.store().catalog().read(|tx| tx.inode(ino)).unwrap();
    assert_eq!(stored.unwrap().size, 10);
}

#[test]
fn acknowledged_writes_are_seen_by_every_reader_after_the_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = open_vfs(dir.path());
    let data = pseudo_random(8 << 20, 11);
    let (attr, w) = vfs
        .create(ROOT_INO, b"acked", 0o644, 0, libc::O_WRONLY, caller())
        .unwrap();
    let mut acks = Vec::new();
    std::thread::scope(|s| {
        let mut readers = Vec::new();
        for (i, piece) in data.chunks(1 << 20).enumerate() {
            let offset = (i << 20) as u64;
            let stored = vfs
                .write_acknowledged(w.fh, offset, piece, false, &mut |n| {
                    acks.push(n);
                    // A reader that starts once the writer heard "written" reads the bytes,
                    // though they may still be on their way to the staging file.
                    let vfs = &vfs;
                    readers.push(s.spawn(move || {
                        let r = vfs.open(attr.ino, libc::O_RDONLY).unwrap();
                        let size = vfs.getattr(attr.ino).unwrap().size;
                        let got = vfs.read(attr.ino, r.fh, offset, 1 << 20).unwrap();
                        vfs.release(r.fh).unwrap();
                        (offset, size, got)
                    }));
                })
                .unwrap();
            assert_eq!(stored as usize, piece.len());
        }
        for reader in readers {
            let (offset, size, got) = reader.join().unwrap();
            assert!(
                size >= offset + (1 << 20),
                "size {size} before the write at {offset}"
            );
            assert_eq!(
                got,
                &data[offset as usize..][..1 << 20],
                "bytes at {offset}"
            );
        }
    });
    assert_eq!(acks, vec![1 << 20; 8]);
    // A write refused before its acknowledgement never calls it.
    let mut called = false;
    let refused = vfs.write_acknowledged(w.fh + 1000, 0, b"x", false, &mut |_| called = true);
    assert_eq!(refused.unwrap_err(), Errno::EBADF);
    assert!(!called);
    vfs.flush(w.fh).unwrap();
    vfs.release(w.fh).unwrap();
    assert_eq!(read_all(&vfs, attr.ino), data);
}

#[test]
fn an_unlinked_inode_the_kernel_still_holds_opens_until_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = open_vfs(dir.path());
    let ino = write_file(&vfs, ROOT_INO, b"held", b"old bytes");
    let forgotten = write_file(&vfs, ROOT_INO, b"not-held", b"gone");
    vfs.entry_given(ino);
    vfs.entry_given(ino);
    vfs.unlink(ROOT_INO, b"held").unwrap();
    vfs.unlink(ROOT_INO, b"not-held").unwrap();
    assert_eq!(read_all(&vfs, ino), b"old bytes");
    assert!(vfs.open(forgotten, libc::O_RDONLY).is_err());
    vfs.forget(ino, 1);
    assert_eq!(
        read_all(&vfs, ino),
        b"old bytes",
        "one lookup is still held"
    );
    vfs.forget(ino, 1);
    assert_eq!(
        vfs.open(ino, libc::O_RDONLY).unwrap_err(),
        Errno(libc::ESTALE)
    );
}
