"""Durability: `kill -9` of the daemon during writes, then remount; and plain unmount + remount
persistence of content, modes, times, owners, symlinks and hard links."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import (  # noqa: E402,F401
    diff_snapshots, errno_name, mount_env, mounted, read_file, sha256_file, tree_snapshot,
    write_file,
)

MiB = 1 << 20


def _is_prefix_state(got: bytes | None, base: bytes, appended: bytes) -> bool:
    """got == base + appended[:k] for some k (the file holds a prefix of what was written)."""
    if got is None:
        return False
    return (len(got) >= len(base) and got[:len(base)] == base
            and appended[:len(got) - len(base)] == got[len(base):])


def _read_or_none(p):
    try:
        return read_file(p)
    except FileNotFoundError:
        return None


def _describe(got: bytes | None) -> str:
    if got is None:
        return "absent"
    return f"{len(got)} bytes, sha256 {hashlib.sha256(got).hexdigest()[:16]}"


class BusyWriter(threading.Thread):
    """Writes `data` sequentially in 256 KiB pieces to an fd until done or the mount dies."""

    def __init__(self, path, data: bytes, flags: int, truncate_first: bool = False):
        super().__init__(daemon=True)
        self.path, self.data, self.flags = path, data, flags
        self.truncate_first = truncate_first
        self.written = 0
        self.error: OSError | None = None
        self.fd: int | None = None

    def run(self):
        try:
            self.fd = os.open(self.path, self.flags, 0o644)
            if self.truncate_first:
                os.ftruncate(self.fd, 0)
            piece = 256 * 1024
            while self.written < len(self.data):
                n = os.write(self.fd, self.data[self.written:self.written + piece])
                self.written += n
        except OSError as e:
            self.error = e


@pytest.mark.timeout(600)
def test_kill9_during_writes(mounted):
    root = mounted.path / "huggingface" / "hub" / "crash"
    os.makedirs(root)
    closed: dict[str, bytes] = {}
    for i in range(6):
        data = os.urandom(int((0.5 + i) * MiB) + i)
        write_file(root / f"closed-{i}", data)
        closed[f"closed-{i}"] = data
    os.mkdir(root / "sub")
    write_file(root / "sub" / "small", b"tiny")
    closed["sub/small"] = b"tiny"
    write_file(root / "empty", b"")
    closed["empty"] = b""
    os.symlink("closed-1", root / "link")
    os.link(root / "closed-2", root / "closed-2.hard")
    closed["closed-2.hard"] = closed["closed-2"]
    # an existing file that the busy writer will overwrite from offset 0 (after ftruncate 0)
    old = os.urandom(3 * MiB)
    write_file(root / "rewritten", old)

    # fsynced and kept open
    fsynced = os.urandom(5 * MiB + 17)
    fd_sync = os.open(root / "fsynced-open", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd_sync, fsynced)
    os.fsync(fd_sync)
    # fsynced, then more written (not fsynced), kept open
    base2, more2 = os.urandom(2 * MiB), os.urandom(3 * MiB)
    fd_sync2 = os.open(root / "fsynced-then-more", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd_sync2, base2)
    os.fsync(fd_sync2)
    os.write(fd_sync2, more2)

    new_data = os.urandom(400 * MiB)
    w_new = BusyWriter(root / "in-progress", new_data, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    rew_data = os.urandom(400 * MiB)
    w_old = BusyWriter(root / "rewritten", rew_data, os.O_WRONLY, truncate_first=True)
    w_new.start()
    w_old.start()
    deadline = time.monotonic() + 60
    while (w_new.written < 16 * MiB or w_old.written < 16 * MiB) and time.monotonic() < deadline:
        if w_new.error or w_old.error:
            break
        time.sleep(0.005)
    assert w_new.error is None and w_old.error is None, \
        f"writers failed before the kill: {w_new.error} / {w_old.error}"
    assert w_new.is_alive() and w_old.is_alive(), "a writer finished before the kill"

    # one more file, closed the instant before the kill
    last = os.urandom(MiB + 3)
    write_file(root / "closed-last", last)
    closed["closed-last"] = last

    mounted.kill9()
    w_new.join(60)
    w_old.join(60)
    assert not w_new.is_alive() and not w_old.is_alive(), "writers hang on the dead mount"
    written_new, written_old = w_new.written, w_old.written

    # the mountpoint is stale now (statvfs always asks the daemon; a stat may be cached)
    try:
        os.statvfs(mounted.path)
    except OSError as e:
        assert e.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO), \
            f"statvfs on the dead mount: {errno_name(e.errno)}"
    else:
        pytest.fail("statvfs on the mount of a SIGKILLed daemon succeeded")
    for fd in (fd_sync, fd_sync2, w_new.fd, w_old.fd):
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    mounted.start()  # clears the stale mount by itself

    problems = []
    for name, data in closed.items():
        got = _read_or_none(root / name)
        if got != data:
            problems.append(f"closed file {name}: want {_describe(data)}, got {_describe(got)}")
    got = _read_or_none(root / "fsynced-open")
    if got != fsynced:
        problems.append(f"fsynced-open: want {_describe(fsynced)}, got {_describe(got)}")
    got = _read_or_none(root / "fsynced-then-more")
    if not _is_prefix_state(got, base2, more2):
        problems.append(f"fsynced-then-more: want the fsynced 2 MiB plus a prefix of the later "
                        f"write, got {_describe(got)}")
    got = _read_or_none(root / "in-progress")
    if got is not None and not _is_prefix_state(got, b"", new_data[:written_new]):
        problems.append(f"in-progress (new file, {written_new} bytes written): got "
                        f"{_describe(got)}, which is not a prefix of the written bytes")
    got = _read_or_none(root / "rewritten")
    if got != old and not _is_prefix_state(got, b"", rew_data[:written_old]):
        problems.append(f"rewritten ({written_old} bytes rewritten): got {_describe(got)}, "
                        f"neither the old content nor a prefix of the new bytes")
    if os.readlink(root / "link") != "closed-1":
        problems.append(f"symlink: {os.readlink(root / 'link')!r}")
    if os.stat(root / "closed-2").st_ino != os.stat(root / "closed-2.hard").st_ino:
        problems.append("hard link closed-2/closed-2.hard: different inodes")
    if os.stat(root / "closed-2").st_nlink != 2:
        problems.append(f"closed-2 nlink {os.stat(root / 'closed-2').st_nlink}, want 2")
    assert not problems, "after kill -9 + remount:\n" + "\n".join(problems) + \
        f"\n--- daemon.log:\n{mounted.log_tail()}"

    # the filesystem still works, and the store is clean
    write_file(root / "after", b"after the crash")
    assert read_file(root / "after") == b"after the crash"
    mounted.stop()
    # the dead daemon's staging files were recovered or discarded at start; after a clean
    # unmount nothing is staged any more
    staging = mounted.store / "staging"
    left = sorted(os.listdir(staging)) if staging.is_dir() else []
    assert not left, f"staging files left after kill -9, remount and unmount: {left[:10]}"
    v = mounted.verify()
    assert v.returncode == 0, (f"`mlxfs verify` after kill -9 exited {v.returncode}\n"
                               f"{v.stdout.decode(errors='replace')[-3000:]}\n"
                               f"{v.stderr.decode(errors='replace')[-3000:]}")
    mounted.start()
    assert read_file(root / "after") == b"after the crash"


@pytest.mark.timeout(300)
def test_kill9_twice_and_idle(mounted):
    """kill -9 of an idle daemon (nothing open), twice in a row: everything closed is kept."""
    files = {}
    for i in range(3):
        files[f"f{i}"] = os.urandom(MiB * (i + 1))
        write_file(mounted.path / f"f{i}", files[f"f{i}"])
    for round_ in range(2):
        mounted.kill9()
        mounted.start()
        for name, data in files.items():
            assert read_file(mounted.path / name) == data, f"{name} after kill #{round_ + 1}"
        files[f"r{round_}"] = os.urandom(MiB)
        write_file(mounted.path / f"r{round_}", files[f"r{round_}"])
    mounted.stop()
    assert mounted.verify().returncode == 0


@pytest.mark.timeout(300)
def test_persistence_across_unmount(mounted):
    root = mounted.path / "ollama" / "models"
    os.makedirs(root / "blobs", exist_ok=True)
    os.makedirs(root / "manifests" / "registry.ollama.ai" / "library" / "m", exist_ok=True)
    os.mkdir(root / "private", 0o700)
    os.chmod(root / "private", 0o700)
    data = os.urandom(7 * MiB + 5)
    write_file(root / "blobs" / "sha256-a", data, 0o644)
    write_file(root / "private" / "x", b"x" * 10, 0o600)
    os.chmod(root / "private" / "x", 0o640)
    os.chmod(root / "blobs" / "sha256-a", 0o444)
    write_file(root / "exec", b"#!/bin/sh\n", 0o755)
    os.chmod(root / "exec", 0o4755)
    write_file(root / "empty", b"")
    # a sparse file
    fd = os.open(root / "sparse", os.O_WRONLY | os.O_CREAT, 0o644)
    os.pwrite(fd, b"end", 50 * MiB)
    os.close(fd)
    os.symlink("../blobs/sha256-a", root / "manifests" / "rel-link")
    os.symlink("/absolute/nowhere", root / "dangling")
    os.link(root / "blobs" / "sha256-a", root / "blobs" / "hard")
    os.link(root / "blobs" / "sha256-a", root / "manifests" / "hard2")
    os.chown(root / "private" / "x", 1234, 5678)
    os.utime(root / "blobs" / "sha256-a", ns=(1_111_111_111_123_456_789, 1_234_567_890_987_654_321))
    os.utime(root / "exec", ns=(5, 6))
    os.utime(root / "private", ns=(7_000_000_000, 8_000_000_000))
    if hasattr(os, "setxattr"):
        try:
            os.setxattr(root / "empty", "user.k", b"v")
            has_xattr = True
        except OSError:
            has_xattr = False

    def snap():
        # only the tree written here: the root also holds derived views and live status files
        out = tree_snapshot(root, times=True)
        for rel in list(out):
            st = os.lstat(root / rel)
            out[rel]["owner"] = (st.st_uid, st.st_gid)
            out[rel]["ino"] = st.st_ino
        return out

    before = snap()
    assert before["blobs/hard"]["ino"] == before["blobs/sha256-a"]["ino"]
    mounted.stop()
    mounted.start()
    after = snap()
    assert after == before, "changed across unmount + remount:\n" + \
        "\n".join(diff_snapshots(after, before, ("after", "before")))
    st = os.stat(root / "blobs" / "sha256-a")
    assert st.st_mtime_ns == 1_234_567_890_987_654_321
    assert st.st_atime_ns == 1_111_111_111_123_456_789
    assert st.st_nlink == 3 and stat.S_IMODE(st.st_mode) == 0o444
    assert os.stat(root / "blobs" / "hard").st_ino == st.st_ino
    assert os.stat(root / "manifests" / "hard2").st_ino == st.st_ino
    assert stat.S_IMODE(os.stat(root / "exec").st_mode) == 0o4755
    assert os.stat(root / "exec").st_mtime_ns == 6
    assert os.stat(root / "private").st_mtime_ns == 8_000_000_000
    assert (os.stat(root / "private" / "x").st_uid, os.stat(root / "private" / "x").st_gid) == \
        (1234, 5678)
    assert read_file(root / "manifests" / "rel-link") == data
    assert os.readlink(root / "dangling") == "/absolute/nowhere"
    sp = read_file(root / "sparse")
    assert len(sp) == 50 * MiB + 3 and sp[-3:] == b"end" and sp[:-3].count(0) == 50 * MiB
    if has_xattr:
        assert os.getxattr(root / "empty", "user.k") == b"v"
    # the link count survives unlinking one name after the remount
    os.unlink(root / "blobs" / "hard")
    assert os.stat(root / "blobs" / "sha256-a").st_nlink == 2
    mounted.stop()
    assert mounted.verify().returncode == 0


@pytest.mark.timeout(300)
def test_files_closed_just_before_kill9_are_committed_at_the_next_start(mounted):
    """close(2) queues the commit (it returns before the file is chunked): a daemon killed with
    commits still queued commits them when it starts again, renames and chmods included."""
    m = mounted
    d = m.path / "huggingface" / "hub" / "queued"
    d.mkdir(parents=True)
    files = {f"big{i}": os.urandom(48 * MiB + i * 4099) for i in range(3)}
    files["small"] = b"small and last"
    for name, data in files.items():
        write_file(d / f"{name}.incomplete", data)
        os.rename(d / f"{name}.incomplete", d / name)
    os.chmod(d / "small", 0o600)
    # Killed at once: at least the last big file is still being committed (a second per GiB).
    m.kill9()
    m.start()
    for name, data in files.items():
        assert read_file(d / name) == data, name
        assert not (d / f"{name}.incomplete").exists()
    assert stat.S_IMODE(os.stat(d / "small").st_mode) == 0o600
    staging = m.store / "staging"
    assert not staging.exists() or not list(staging.iterdir()), list(staging.iterdir())
    m.stop()
    assert m.verify().returncode == 0


def test_status_right_after_close_counts_the_file(mounted):
    """Status waits for queued commits: the bytes of a file closed just before are counted."""
    m = mounted
    before = json.loads(m.cli("status", "--json").stdout)
    data = os.urandom(64 * MiB)
    write_file(m.path / "huggingface" / "hub" / "counted.bin", data)
    after = json.loads(m.cli("status", "--json").stdout)
    assert after["logical_bytes"] - before["logical_bytes"] == len(data)
    assert after["physical_bytes"] - before["physical_bytes"] >= len(data)
    assert (after["commit_queue_files"], after["commit_queue_bytes"]) == (0, 0)


def test_status_right_after_each_of_several_closes_counts_each(mounted):
    """A status asked within moments of the previous one still waits for a file closed in
    between (status answers are shared for a few milliseconds between watchers)."""
    m = mounted
    datas = [os.urandom(24 * MiB) for _ in range(3)]
    before = json.loads(m.cli("status", "--json").stdout)
    for n, data in enumerate(datas, 1):
        write_file(m.path / "huggingface" / "hub" / f"each-{n}.bin", data)
        after = json.loads(m.cli("status", "--json").stdout)
        assert after["files"] - before["files"] == n, (n, after["files"], before["files"])
