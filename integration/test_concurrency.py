"""Concurrency with gc (DESIGN.md §6, issue 7): readers, writers and `mlxfs gc` through the
mount daemon at the same time.

8 reader threads and 4 writer threads work on the same few files for 60 s (MLXFS_CONC_SECONDS)
while `mlxfs gc` runs in a loop through the daemon's status socket. Writers rewrite files
(O_TRUNC), pwrite at block offsets, append, rename a new version over the old one, and delete
and recreate files, so every gc has garbage to drop and packs to compact.

What readers check:
- every 4 KiB block they read is a block that some writer wrote at that offset of that file
  (no zeros or bytes that were never written, no EIO);
- a read that no write to the file overlapped (a per-file sequence counter, seqlock style) is
  exactly one of the versions ever written to the file. A read that a write did overlap may mix
  versions block by block, as POSIX allows: only the block check applies to it.
Afterwards every file equals its reference copy (kept in memory), and `mlxfs verify` is clean.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import random
import re
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import mount_env, mounted, read_file, write_file  # noqa: E402,F401

BLOCK = 4096
FILES = 6
READERS = 8
WRITERS = 4
MAX_BLOCKS = 384  # files stay under 1.5 MiB so many versions pass in a minute
SECONDS = float(os.environ.get("MLXFS_CONC_SECONDS", "60"))


def digest(b: bytes) -> bytes:
    return hashlib.blake2b(b, digest_size=16).digest()


class Tracked:
    """One file: its reference bytes, every version and every block ever written to it."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()  # writers of this file take turns
        self.seq = 0  # odd while a write is in progress
        self.ref = b""
        self.versions: set[bytes] = set()
        self.blocks: dict[int, set[bytes]] = {}

    def register(self, data: bytes, at_block: int) -> None:
        """Records the blocks of `data` (written at block `at_block`) before they are written."""
        for i in range(0, len(data), BLOCK):
            self.blocks.setdefault(at_block + i // BLOCK, set()).add(digest(data[i:i + BLOCK]))


def fresh_blocks(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n * BLOCK)


def page_aligned(data: bytes) -> mmap.mmap:
    """`data` in page-aligned memory. The kernel cuts a write into FUSE requests at page
    boundaries of the user's buffer: from an aligned buffer every request holds whole blocks,
    so a reader never sees half a block (which would be a legitimate mix, but uncheckable)."""
    buf = mmap.mmap(-1, max(len(data), 1))
    buf[:len(data)] = data
    return buf


def write_all(fd: int, data: bytes) -> None:
    with page_aligned(data) as buf:
        view = memoryview(buf)[:len(data)]
        try:
            while view:
                view = view[os.write(fd, view):]
        finally:
            view.release()


class Writer(threading.Thread):
    def __init__(self, idx, files, root, stop, errors, rng):
        super().__init__(daemon=True, name=f"writer-{idx}")
        self.files, self.root, self.stop, self.errors, self.rng = files, root, stop, errors, rng
        self.ops: dict[str, int] = {}

    def run(self):
        try:
            while not self.stop.is_set():
                f = self.rng.choice(self.files)
                with f.lock:
                    op = self.rng.choices(
                        ["rewrite", "pwrite", "append", "rename", "recreate"],
                        weights=[3, 4, 2, 2, 1])[0]
                    f.seq += 1
                    try:
                        getattr(self, op)(f)
                        f.versions.add(digest(f.ref))
                    finally:
                        f.seq += 1
                self.ops[op] = self.ops.get(op, 0) + 1
        except BaseException as e:  # noqa: BLE001
            self.errors.append(f"{self.name}: {type(e).__name__}: {e}")
            self.stop.set()

    def _new_content(self, f: Tracked) -> bytes:
        n = self.rng.randint(1, MAX_BLOCKS)
        if f.ref and self.rng.random() < 0.5:
            # Mostly the old bytes with a few blocks changed: versions share chunks, so gc
            # finds packs that are partly live.
            old = bytearray(f.ref[:n * BLOCK].ljust(n * BLOCK, b"\1"))
            for _ in range(self.rng.randint(1, 8)):
                i = self.rng.randrange(n)
                old[i * BLOCK:(i + 1) * BLOCK] = fresh_blocks(self.rng, 1)
            return bytes(old)
        return fresh_blocks(self.rng, n)

    def rewrite(self, f: Tracked):
        data = self._new_content(f)
        f.register(data, 0)
        fd = os.open(f.path, os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o644)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        f.ref = data

    def pwrite(self, f: Tracked):
        size_blocks = len(f.ref) // BLOCK
        at = self.rng.randint(0, size_blocks)  # never past the end: no holes
        n = self.rng.randint(1, min(64, MAX_BLOCKS - at) if at < MAX_BLOCKS else 1)
        data = fresh_blocks(self.rng, n)
        f.register(data, at)
        fd = os.open(f.path, os.O_RDWR)
        try:
            with page_aligned(data) as buf, memoryview(buf) as view:
                assert os.pwrite(fd, view[:len(data)], at * BLOCK) == len(data)
        finally:
            os.close(fd)
        ref = bytearray(f.ref)
        ref[at * BLOCK:at * BLOCK + len(data)] = data
        f.ref = bytes(ref)

    def append(self, f: Tracked):
        if len(f.ref) >= MAX_BLOCKS * BLOCK:
            return self.rewrite(f)
        data = fresh_blocks(self.rng, self.rng.randint(1, 32))
        f.register(data, len(f.ref) // BLOCK)
        fd = os.open(f.path, os.O_WRONLY | os.O_APPEND)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        f.ref = f.ref + data

    def rename(self, f: Tracked):
        data = self._new_content(f)
        f.register(data, 0)
        tmp = f"{f.path}.tmp-{self.name}"
        write_file(tmp, data)
        os.rename(tmp, f.path)
        f.ref = data

    def recreate(self, f: Tracked):
        os.unlink(f.path)
        data = fresh_blocks(self.rng, self.rng.randint(1, MAX_BLOCKS))
        f.register(data, 0)
        fd = os.open(f.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        f.ref = data


def read_whole(fd: int) -> bytes:
    """The file's bytes, read into page-aligned memory: the kernel cuts a read into FUSE
    requests at page boundaries of the buffer, so a read that a truncation cuts short still
    ends on a block boundary."""
    out = []
    offset = 0
    with mmap.mmap(-1, 1 << 20) as buf:
        while True:
            n = os.preadv(fd, [buf], offset)
            if not n:
                return b"".join(out)
            out.append(buf[:n])
            offset += n


class Reader(threading.Thread):
    """Reads whole files; every other read keeps the file open and reads it again after a
    pause (its content map is then older than gc's latest moves)."""

    def __init__(self, idx, files, stop, errors, rng):
        super().__init__(daemon=True, name=f"reader-{idx}")
        self.files, self.stop, self.errors, self.rng = files, stop, errors, rng
        self.reads = self.exact = self.mixed = self.absent = 0

    def check(self, f: Tracked, data: bytes, s1: int, s2: int) -> None:
        if len(data) % BLOCK:
            raise AssertionError(f"{f.path}: read {len(data)} bytes, not whole blocks")
        for i in range(0, len(data), BLOCK):
            if digest(data[i:i + BLOCK]) not in f.blocks.get(i // BLOCK, ()):
                zeros = data[i:i + BLOCK] == bytes(BLOCK)
                raise AssertionError(
                    f"{f.path}: block {i // BLOCK} of a {len(data)}-byte read was never written "
                    f"there{' (zeros)' if zeros else ''}")
        if s1 == s2 and s1 % 2 == 0:
            if digest(data) not in f.versions:
                raise AssertionError(
                    f"{f.path}: a read no write overlapped ({len(data)} bytes) is none of the "
                    f"{len(f.versions)} versions written (reference has {len(f.ref)} bytes)")
            self.exact += 1
        else:
            self.mixed += 1

    def run(self):
        try:
            while not self.stop.is_set():
                f = self.rng.choice(self.files)
                s1 = f.seq
                try:
                    fd = os.open(f.path, os.O_RDONLY)
                except FileNotFoundError:
                    self.absent += 1
                    continue
                try:
                    data = read_whole(fd)
                    self.check(f, data, s1, f.seq)
                    self.reads += 1
                    if self.rng.random() < 0.5:
                        time.sleep(self.rng.uniform(0.05, 0.5))
                        # Read the open file again, around the page cache where possible.
                        try:
                            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        except OSError:
                            pass
                        s1 = f.seq
                        data = read_whole(fd)
                        # The open file may have been replaced (rename, recreate): its old
                        # inode still reads as some version of this file, or as a mix.
                        self.check(f, data, s1, f.seq)
                        self.reads += 1
                finally:
                    os.close(fd)
        except OSError as e:
            self.errors.append(f"{self.name}: {errno.errorcode.get(e.errno, e.errno)}: {e}")
            self.stop.set()
        except BaseException as e:  # noqa: BLE001
            self.errors.append(f"{self.name}: {type(e).__name__}: {e}")
            self.stop.set()


class GcLoop(threading.Thread):
    """`mlxfs gc --json` through the daemon, again and again."""

    def __init__(self, mount, stop, errors):
        super().__init__(daemon=True, name="gc")
        self.mount, self.stop, self.errors = mount, stop, errors
        self.runs = 0
        self.totals = {"chunks_removed": 0, "packs_rewritten": 0, "packs_deleted": 0}

    def run(self):
        while not self.stop.is_set():
            p = self.mount.cli("gc", "--json", expect=None, timeout=300)
            if p.returncode != 0:
                self.errors.append(f"gc exited {p.returncode}: {p.stderr.decode(errors='replace')}")
                self.stop.set()
                return
            report = json.loads(p.stdout)
            for k in self.totals:
                self.totals[k] += report[k]
            self.runs += 1
            time.sleep(0.2)


@pytest.mark.timeout(600)
def test_readers_writers_and_gc_through_the_daemon(mounted):
    root = mounted.path / "huggingface" / "hub" / "concurrency"
    os.makedirs(root)
    seed = int(os.environ.get("MLXFS_CONC_SEED", str(random.randrange(1 << 30))))
    print(f"\nMLXFS_CONC_SEED={seed}")
    rng = random.Random(seed)
    files = [Tracked(str(root / f"file-{i}.bin")) for i in range(FILES)]
    for f in files:
        data = fresh_blocks(rng, rng.randint(16, MAX_BLOCKS))
        f.register(data, 0)
        write_file(f.path, data)
        f.ref = data
        f.versions.add(digest(data))

    stop = threading.Event()
    errors: list[str] = []
    writers = [Writer(i, files, root, stop, errors, random.Random(rng.random()))
               for i in range(WRITERS)]
    readers = [Reader(i, files, stop, errors, random.Random(rng.random())) for i in range(READERS)]
    gc = GcLoop(mounted, stop, errors)
    started = time.monotonic()
    for t in [*writers, *readers, gc]:
        t.start()
    stop.wait(SECONDS)
    stop.set()
    for t in [*writers, *readers, gc]:
        t.join(300)
        assert not t.is_alive(), f"{t.name} hangs"
    elapsed = time.monotonic() - started

    ops: dict[str, int] = {}
    for w in writers:
        for k, v in w.ops.items():
            ops[k] = ops.get(k, 0) + v
    reads = sum(r.reads for r in readers)
    exact = sum(r.exact for r in readers)
    mixed = sum(r.mixed for r in readers)
    print(f"{elapsed:.0f} s: writes {ops}, reads {reads} ({exact} exact, {mixed} overlapped), "
          f"gc runs {gc.runs} {gc.totals}")
    assert not errors, "\n".join(errors) + f"\n--- daemon.log:\n{mounted.log_tail()}"
    assert sum(ops.values()) > 50 and reads > 100 and exact > 20, "too little work was done"
    assert gc.runs >= 3 and gc.totals["chunks_removed"] > 0, f"gc had no work: {gc.totals}"

    # One last gc with everything quiet, then every file is exactly its reference copy.
    mounted.cli("gc")
    for f in files:
        got = read_file(f.path)
        assert got == f.ref, f"{f.path}: {len(got)} bytes, reference {len(f.ref)}"
    mounted.stop()
    v = mounted.verify()
    assert v.returncode == 0, v.stdout.decode(errors="replace") + v.stderr.decode(errors="replace")
    mounted.start()
    for f in files:
        assert read_file(f.path) == f.ref, f"{f.path} after remount"


def test_gc_through_the_daemon_reports_like_offline_gc(mounted):
    """`mlxfs gc` while mounted goes through the daemon: same human and JSON output as offline,
    and the files still read back."""
    root = mounted.path / "huggingface" / "hub" / "gc"
    os.makedirs(root)
    keep = os.urandom(3 << 20)
    write_file(root / "keep", keep)
    for i in range(4):
        write_file(root / f"drop-{i}", os.urandom(2 << 20))
    for i in range(4):
        os.unlink(root / f"drop-{i}")

    online = json.loads(mounted.cli("gc", "--json").stdout)
    assert set(online) == {"chunks_removed", "bytes_removed", "packs_rewritten", "packs_deleted",
                           "disk_bytes_before", "disk_bytes_after"}
    # (The kernel may send the last RELEASE of a deleted file a moment after close(): its
    # chunks can be left for the next gc.)
    assert online["chunks_removed"] > 0 and online["bytes_removed"] >= 2 << 20, online
    assert online["disk_bytes_after"] < online["disk_bytes_before"], online
    assert read_file(root / "keep") == keep
    human = mounted.cli("gc").stdout.decode()
    assert re.match(r"removed \S+ unreferenced chunks \(.*\); rewrote \d+ packs, deleted \d+\n"
                    r"packs on disk: .* -> .* \(reclaimed .*\)\n$", human), human

    mounted.stop()
    offline = json.loads(mounted.cli("gc", "--json").stdout)
    assert set(offline) == set(online)
    assert offline["chunks_removed"] == 0
    assert mounted.verify().returncode == 0
    mounted.start()
    assert read_file(root / "keep") == keep
