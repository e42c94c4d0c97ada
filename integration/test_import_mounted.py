"""`mlxfs import` while the store is mounted: the daemon imports, and the mount (and its views)
show the result at once, with kernel caches dropped for files whose content changed."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from mountlib import mount_env, sha256_file  # noqa: E402,F401  (pytest fixture)


def test_import_into_a_mounted_store(mount_env, corpus):
    m = mount_env.mount
    report = json.loads(m.cli("import", corpus.hf, corpus.ollama, "--json").stdout)
    assert report["files"] > 0 and report["new_bytes"] > 0 and report["skipped"] == []

    # Every imported file reads back through the mount, byte for byte.
    for dirpath, _, names in os.walk(corpus.hf):
        for name in names:
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, corpus.hf)
            assert sha256_file(src) == sha256_file(m.path / "huggingface/hub" / rel), rel
    # ...and appears in the derived views without a remount.
    repo = "mlxtest/llama-mini"
    snapshot = next((corpus.hf / "models--mlxtest--llama-mini" / "snapshots").iterdir())
    config = m.path / "mlx" / repo / "config.json"
    assert config.read_bytes() == (snapshot / "config.json").read_bytes()
    assert any((m.path / "lmstudio").iterdir())

    # A file rewritten in the source and imported again shows its new bytes through the mount,
    # even though the kernel had cached the old ones.
    ref_path = m.path / "huggingface/hub/models--mlxtest--llama-mini/refs/main"
    old = ref_path.read_bytes()
    (corpus.hf / "models--mlxtest--llama-mini/refs/main").write_bytes(b"f" * 40)
    try:
        again = json.loads(m.cli("import", corpus.hf, "--json").stdout)
        assert ref_path.read_bytes() == b"f" * 40
    finally:
        (corpus.hf / "models--mlxtest--llama-mini/refs/main").write_bytes(old)
    assert again["new_bytes"] <= 64, "re-importing stored data adds (almost) nothing"

    listing = json.loads(m.cli("ls", "--json").stdout)["models"]
    assert sum(1 for x in listing if x["name"] == repo) == 1
    m.stop()
    assert m.verify().returncode == 0


def one_file_repo(m, tmp_path, name):
    """An HF cache with one repo whose snapshot holds one 3 MiB file, imported into `m`:
    (the cache, the snapshot dir, the file's path in the mount)."""
    hub = tmp_path / "hub"
    repo = hub / f"models--org--{name}"
    commit = "c" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "weights.bin").write_bytes(os.urandom(3 << 20))
    m.cli("import", hub)
    in_mount = m.path / "huggingface/hub" / repo.name / "snapshots" / commit / "weights.bin"
    return hub, snap, in_mount


def test_importing_a_folder_of_the_mount_itself_is_refused_with_a_reason(mount_env, tmp_path):
    """`mlxfs import ~/.mlx-cache/huggingface/hub` (the mount, not the original cache): its
    files are in the store already, and the daemon would read them through its own mount for
    nothing (before: exit 0, "new 0 B"). It is refused at once, saying why, and the mount keeps
    serving the files unchanged."""
    m = mount_env.mount
    _, snap, in_mount = one_file_repo(m, tmp_path, "own")
    want = sha256_file(snap / "weights.bin")
    for inside in (m.path / "huggingface/hub", m.path / "ollama/models"):
        r = m.cli("import", inside, expect=None, timeout=60)
        err = r.stderr.decode(errors="replace")
        assert r.returncode == 1, (inside, r.returncode, err)
        assert "inside this store's mount" in err and str(inside) in err, err
    # A path reaching the mount through a symlink is caught too.
    link = tmp_path / "link-to-hub"
    link.symlink_to(m.path / "huggingface/hub")
    r = m.cli("import", link, expect=None, timeout=60)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1 and "inside this store's mount" in err, err
    assert sha256_file(in_mount) == want
    m.stop()
    assert m.verify().returncode == 0


def test_a_file_held_open_across_an_import_reads_the_new_bytes(mount_env, tmp_path):
    """An import that replaces the content of a file someone holds open: reads through the
    open descriptor give the new bytes (as after any in-place rewrite), never the old content
    cut to the new length, and a gc through the daemon right after changes nothing."""
    import hashlib
    m = mount_env.mount
    hub, snap, path = one_file_repo(m, tmp_path, "held")
    old = (snap / "weights.bin").read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 1 << 20, 0) == old[:1 << 20]
        new = os.urandom(5 << 20)
        (snap / "weights.bin").write_bytes(new)
        m.cli("import", hub)
        m.cli("gc")
        got = b"".join(os.pread(fd, 1 << 20, off) for off in range(0, 6 << 20, 1 << 20))
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(new).hexdigest(), \
            f"{len(got)} bytes, old content? {got[:len(old)] == old}"
    finally:
        os.close(fd)
    m.stop()
    assert m.verify().returncode == 0


def test_a_file_an_import_replaces_stays_readable_where_it_is_open(mount_env, tmp_path):
    """An import that replaces a file by something else (here a symlink, as when a snapshot
    file becomes a link to a blob): a descriptor open on the old file keeps reading and
    stat-ing it, as on a disk, and the old file's bytes are dropped once it is closed."""
    m = mount_env.mount
    hub, snap, path = one_file_repo(m, tmp_path, "swapped")
    repo = snap.parent.parent
    old = (snap / "weights.bin").read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 1 << 20, 0) == old[:1 << 20]
        new = os.urandom(2 << 20)
        (repo / "blobs").mkdir()
        (repo / "blobs" / "other").write_bytes(new)
        (snap / "weights.bin").unlink()
        (snap / "weights.bin").symlink_to("../../blobs/other")
        report = json.loads(m.cli("import", hub, "--json").stdout)
        assert report["skipped"] == [], report
        assert path.is_symlink(), (report, os.lstat(path))
        assert path.read_bytes() == new
        assert os.fstat(fd).st_size == len(old)
        got = b"".join(os.pread(fd, 1 << 20, off) for off in range(0, 4 << 20, 1 << 20))
        assert got == old
    finally:
        os.close(fd)
    m.stop()
    assert m.verify().returncode == 0
    status = json.loads(m.cli("status", "--json").stdout)
    assert status["logical_bytes"] < len(old) + len(new) + (1 << 20), status


def test_the_daemon_syncs_an_import_behind_it(mount_env, tmp_path):
    """An import through the daemon returns once committed, before its packs are known to be
    on disk; the daemon then makes them durable and drops their unsynced marks at once, not at
    its next start."""
    import sqlite3
    import time
    m = mount_env.mount
    _, snap, in_mount = one_file_repo(m, tmp_path, "behind")

    def marks():
        db = sqlite3.connect(m.store / "catalog.db")
        try:
            return db.execute("SELECT pack, session FROM unsynced_packs").fetchall()
        finally:
            db.close()

    deadline = time.monotonic() + 20
    while marks() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marks() == []
    assert in_mount.read_bytes() == (snap / "weights.bin").read_bytes()
