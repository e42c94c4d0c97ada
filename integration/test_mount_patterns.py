"""The tools' real I/O patterns on the mount, byte-exact: Ollama's pull, huggingface_hub's
download, mmap reads, flock exclusion, a large cp, page-cache reuse and invalidation."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import mmap
import os
import queue
import random
import shutil
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import (  # noqa: E402,F401
    errno_name, mount_env, mounted, read_file, sha256_file, write_file,
)

MiB = 1 << 20


def _only_zeros_or(got: bytes, want: bytes) -> bool:
    """Every byte is either 0 (not written yet) or the byte that was written there."""
    if got == want:
        return True
    g = np.frombuffer(got, dtype=np.uint8)
    w = np.frombuffer(want[:len(got)], dtype=np.uint8)
    return bool(np.all((g == 0) | (g == w)))


def _first_diff(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    x = np.frombuffer(a[:n], dtype=np.uint8) != np.frombuffer(b[:n], dtype=np.uint8)
    idx = np.flatnonzero(x)
    return int(idx[0]) if len(idx) else n


class Errors:
    """Collects failures from worker threads."""

    def __init__(self):
        self.items: list[str] = []
        self.lock = threading.Lock()

    def add(self, msg: str):
        with self.lock:
            if len(self.items) < 20:
                self.items.append(msg)

    def check(self):
        assert not self.items, "\n".join(self.items)


# ------------------------------------------------------------------------------------------------
# (a) Ollama pull


@pytest.mark.timeout(600)
def test_ollama_pull_pattern(mounted):
    size = 64 * MiB
    part = 1 * MiB
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    blobs = mounted.path / "ollama" / "models" / "blobs"
    os.makedirs(blobs, exist_ok=True)
    partial = blobs / f"sha256-{digest}-partial"
    final = blobs / f"sha256-{digest}"

    # Go: os.OpenFile(name, O_RDWR|O_CREATE, 0644); file.Truncate(size)
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, size)
    assert os.fstat(fd).st_size == size
    assert os.stat(partial).st_size == size

    nparts = size // part
    order = list(range(nparts))
    random.Random(1).shuffle(order)
    work: queue.Queue = queue.Queue()
    for n in order:
        work.put(n)
    done_parts: set[int] = set()
    state_lock = threading.Lock()
    errors = Errors()
    stop_readers = threading.Event()
    progress_writes = [0]
    reads_checked = [0, 0]  # completed parts verified, in-flight reads checked

    def write_progress(n: int, completed: int):
        # Ollama's writePart: O_CREATE|O_RDWR|O_TRUNC, json.NewEncoder(f).Encode(part)
        pf = blobs / f"sha256-{digest}-partial-{n}"
        doc = {"N": n, "Offset": n * part, "Size": part, "Completed": completed}
        body = (json.dumps(doc) + "\n").encode()
        pfd = os.open(pf, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
        try:
            os.write(pfd, body)
        finally:
            os.close(pfd)
        with state_lock:
            progress_writes[0] += 1

    def writer(wid: int):
        rng = random.Random(wid)
        try:
            while True:
                try:
                    n = work.get_nowait()
                except queue.Empty:
                    return
                off = n * part
                pos = 0
                k = 0
                while pos < part:
                    step = min(rng.choice([32 * 1024, 64 * 1024, 100_000, 256 * 1024]), part - pos)
                    w = os.pwrite(fd, data[off + pos:off + pos + step], off + pos)
                    if w != step:
                        errors.add(f"short pwrite {w} of {step} at {off + pos}")
                        return
                    pos += step
                    k += 1
                    if k % 3 == 0:
                        write_progress(n, pos)
                write_progress(n, part)
                with state_lock:
                    done_parts.add(n)
        except Exception as e:  # noqa: BLE001
            errors.add(f"writer {wid}: {type(e).__name__}: {e}")

    def reader(rid: int):
        rng = random.Random(100 + rid)
        rfd = os.open(partial, os.O_RDONLY)
        try:
            while not stop_readers.is_set():
                with state_lock:
                    done = list(done_parts)
                if done and rng.random() < 0.7:
                    n = rng.choice(done)
                    got = os.pread(rfd, part, n * part)
                    want = data[n * part:(n + 1) * part]
                    if got != want:
                        errors.add(f"reader {rid}: completed part {n} reads wrong "
                                   f"(len {len(got)}, first diff at {_first_diff(got, want)})")
                        return
                    reads_checked[0] += 1
                else:
                    off = rng.randrange(0, size - 4096)
                    got = os.pread(rfd, 256 * 1024, off)
                    if len(got) != min(256 * 1024, size - off):
                        errors.add(f"reader {rid}: short read {len(got)} at {off} "
                                   f"(file is {size} bytes from the ftruncate)")
                        return
                    if not _only_zeros_or(got, data[off:off + len(got)]):
                        errors.add(f"reader {rid}: bytes never written at offset {off}")
                        return
                    reads_checked[1] += 1
        except Exception as e:  # noqa: BLE001
            errors.add(f"reader {rid}: {type(e).__name__}: {e}")
        finally:
            os.close(rfd)

    writers = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    readers = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop_readers.set()
    for t in readers:
        t.join()
    errors.check()
    assert len(done_parts) == nparts
    assert reads_checked[0] > 0, "the readers never checked a completed part"

    # each progress file holds exactly its last document (O_TRUNC rewrites)
    for n in range(nparts):
        body = read_file(blobs / f"sha256-{digest}-partial-{n}")
        doc = json.loads(body)
        assert doc == {"N": n, "Offset": n * part, "Size": part, "Completed": part}, \
            f"progress file {n}: {body!r}"
    os.close(fd)

    # verify and rename, as Ollama does; then drop the progress files
    assert sha256_file(partial) == digest, "the -partial file's sha256 differs"
    os.rename(partial, final)
    for n in range(nparts):
        os.unlink(blobs / f"sha256-{digest}-partial-{n}")
    assert not partial.exists()
    assert os.listdir(blobs) == [final.name]
    assert os.stat(final).st_size == size
    assert sha256_file(final) == digest, "the blob's sha256 differs from the bytes pulled"
    # `ollama create`/pull then sets times on the blob
    os.utime(final, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))

    mounted.stop()
    mounted.start()
    assert os.listdir(blobs) == [final.name]
    assert sha256_file(final) == digest, "the blob's sha256 differs after remount"
    assert os.stat(final).st_mtime_ns == 1_700_000_000_000_000_000
    print(f"\nollama pull: {progress_writes[0]} progress rewrites, {reads_checked} reads checked")


@pytest.mark.timeout(300)
def test_rewrite_with_o_trunc_seen_by_concurrent_reader(mount_env):
    """A small file rewritten again and again with O_TRUNC + write (Ollama's -partial-N progress
    files, json state files): a concurrent reader sees an empty file or one whole document,
    never bytes that were never written (zeros), exactly as on the native disk."""

    def race(d, rewrites=4000):
        p = os.path.join(d, "sha256-x-partial-0")
        stop = threading.Event()
        bad: list[bytes] = []
        reads = [0]

        def writer():
            try:
                for i in range(rewrites):
                    body = (json.dumps({"N": 0, "Offset": 0, "Size": MiB,
                                        "Completed": (i * 7919) % MiB}) + "\n").encode()
                    fd = os.open(p, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
                    try:
                        os.write(fd, body)
                    finally:
                        os.close(fd)
            finally:
                stop.set()

        def reader():
            while not stop.is_set():
                try:
                    with open(p, "rb") as fh:
                        b = fh.read()
                except FileNotFoundError:
                    continue
                reads[0] += 1
                if b and b"\0" in b:
                    bad.append(b)

        ts = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        with open(p, "rb") as fh:
            last = json.loads(fh.read())
        return bad, reads[0], last

    nbad, nreads, nlast = race(str(mount_env.native))
    assert not nbad, "the native disk showed zeros (test bug)"
    bad, reads, last = race(str(mount_env.mount.path))
    assert last == nlast, f"final document: mount {last}, native {nlast}"
    assert not bad, (f"{len(bad)} of {reads} concurrent reads saw bytes never written "
                     f"(NUL bytes), e.g. {bad[0][:80]!r}")


# ------------------------------------------------------------------------------------------------
# (b) huggingface_hub download


@pytest.mark.timeout(600)
def test_huggingface_download_pattern(mounted):
    hub = mounted.path / "huggingface" / "hub"
    repo = hub / "models--o--n"
    data = os.urandom(48 * MiB + 12345)
    etag = hashlib.sha256(data).hexdigest()
    commit = hashlib.sha1(b"commit").hexdigest()
    blobs = repo / "blobs"
    locks = hub / ".locks" / "models--o--n"
    for d in (blobs, locks, repo / "refs", repo / "snapshots" / commit / "sub"):
        os.makedirs(d, exist_ok=True)
    (hub / "CACHEDIR.TAG").write_bytes(b"Signature: 8a477f597d28d172789f06886806bc55\n")

    # a stale blob already sits at the final name: os.replace must swap it atomically
    stale = b"stale content " * 1000
    write_file(blobs / etag, stale)

    # filelock: os.open(O_RDWR|O_CREAT|O_TRUNC), then flock(LOCK_EX|LOCK_NB)
    lock_path = locks / f"{etag}.lock"
    lfd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    fcntl.flock(lfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lfd2 = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with pytest.raises(BlockingIOError) as ei:
            fcntl.flock(lfd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert ei.value.errno == errno.EWOULDBLOCK
    finally:
        os.close(lfd2)

    # disk space check (shutil.disk_usage -> statvfs)
    du = shutil.disk_usage(blobs)
    assert du.total > 0 and du.free >= len(data)

    # O_TMPFILE probe: a working fd or EOPNOTSUPP
    try:
        tfd = os.open(blobs, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as e:
        assert e.errno in (errno.EOPNOTSUPP, errno.EISDIR), \
            f"O_TMPFILE probe: {errno_name(e.errno)}"
    else:
        os.write(tfd, b"probe")
        os.close(tfd)

    incomplete = blobs / f"{etag}.{random.Random(2).getrandbits(32):08x}.incomplete"
    errors = Errors()
    written = [0]
    finished = threading.Event()

    def reader():
        try:
            while not incomplete.exists() and not finished.is_set():
                time.sleep(0.001)
            rfd = os.open(incomplete, os.O_RDONLY)
            try:
                checks = 0
                while not finished.is_set() or checks == 0:
                    n = written[0]
                    if n:
                        off = random.randrange(0, n)
                        got = os.pread(rfd, min(4 * MiB, n - off), off)
                        if got != data[off:off + len(got)]:
                            errors.add(f"reader: .incomplete bytes at {off} differ "
                                       f"(first diff +{_first_diff(got, data[off:])})")
                            return
                        checks += 1
                    time.sleep(0.002)
            finally:
                os.close(rfd)
        except Exception as e:  # noqa: BLE001
            errors.add(f"reader: {type(e).__name__}: {e}")

    rt = threading.Thread(target=reader)
    rt.start()
    try:
        with open(incomplete, "xb") as fh:  # O_CREAT|O_EXCL
            pos = 0
            piece = 10 * MiB
            while pos < len(data):
                fh.write(data[pos:pos + piece])
                fh.flush()
                pos = min(pos + piece, len(data))
                written[0] = pos
    finally:
        finished.set()
        rt.join()
    errors.check()

    # _chmod_and_move: probe the cache dir's mode with a temp file, chmod, move
    probe = hub / f"tmp_{random.Random(3).getrandbits(64):016x}"
    probe.touch()
    cache_mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    os.chmod(incomplete, cache_mode)
    os.replace(incomplete, blobs / etag)
    (repo / "refs" / "main").write_text(commit)
    link = repo / "snapshots" / commit / "sub" / "file"
    rel = os.path.relpath(blobs / etag, link.parent)
    assert rel == f"../../../blobs/{etag}"
    os.symlink(rel, link)
    os.utime(blobs / etag, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    fcntl.flock(lfd, fcntl.LOCK_UN)
    os.close(lfd)

    def check():
        assert os.listdir(blobs) == [etag], f"blobs: {os.listdir(blobs)}"
        assert os.readlink(link) == f"../../../blobs/{etag}"
        assert os.path.realpath(link) == os.path.realpath(blobs / etag)
        st = os.stat(link)
        assert st.st_size == len(data)
        assert stat.S_IMODE(st.st_mode) == cache_mode == 0o644
        assert st.st_mtime_ns == 1_600_000_000_000_000_000
        assert sha256_file(link) == etag
        assert (repo / "refs" / "main").read_bytes() == commit.encode()
        assert os.path.exists(lock_path)

    check()
    mounted.stop()
    mounted.start()
    check()


# ------------------------------------------------------------------------------------------------
# (c) mmap


@pytest.mark.timeout(300)
def test_mmap_shared_and_private(mounted):
    p = mounted.path / "ollama" / "models" / "blobs"
    os.makedirs(p, exist_ok=True)
    f = p / "sha256-mmap"
    data = os.urandom(24 * MiB + 777)
    write_file(f, data)
    rng = random.Random(4)

    def check_map(flags, prot, access_name):
        fd = os.open(f, os.O_RDONLY)
        try:
            mm = mmap.mmap(fd, 0, flags=flags, prot=prot)
        finally:
            os.close(fd)
        try:
            assert len(mm) == len(data)
            assert mm[len(data) - 4096:] == data[-4096:], f"{access_name}: last page differs"
            for _ in range(200):
                off = rng.randrange(0, len(data))
                n = rng.choice([4096, 65536, MiB])
                assert mm[off:off + n] == data[off:off + n], f"{access_name}: bytes at {off}"
            assert hashlib.sha256(mm).hexdigest() == hashlib.sha256(data).hexdigest(), \
                f"{access_name}: whole mapping differs"
        finally:
            mm.close()

    check_map(mmap.MAP_SHARED, mmap.PROT_READ, "MAP_SHARED")
    check_map(mmap.MAP_PRIVATE, mmap.PROT_READ, "MAP_PRIVATE")
    # MAP_SHARED|MAP_POPULATE, as llama.cpp does
    populate = getattr(mmap, "MAP_POPULATE", 0x8000)
    check_map(mmap.MAP_SHARED | populate, mmap.PROT_READ, "MAP_SHARED|MAP_POPULATE")

    # a private writable mapping: writes stay private
    fd = os.open(f, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    mm[0:5] = b"XXXXX"
    assert mm[0:5] == b"XXXXX"
    mm.close()
    assert read_file(f)[:5] == data[:5], "a MAP_PRIVATE write reached the file"

    # mmap of a file that is still open for writing (staged, not yet committed)
    g = p / "staged"
    wfd = os.open(g, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(wfd, data[:3 * MiB])
        mm = mmap.mmap(wfd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        assert mm[:] == data[:3 * MiB], "MAP_SHARED of a file being written differs"
        mm.close()
    finally:
        os.close(wfd)
    fd = os.open(g, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        assert mm[:] == data[:3 * MiB]
        mm.close()
    finally:
        os.close(fd)


@pytest.mark.timeout(300)
def test_mmap_shared_write(mounted):
    """A writable MAP_SHARED mapping reaches the file (msync) and survives a remount."""
    f = mounted.path / "shared"
    data = bytearray(os.urandom(2 * MiB))
    write_file(f, bytes(data))
    fd = os.open(f, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        mm[100:110] = b"0123456789"
        mm[MiB:MiB + 4] = b"WXYZ"
        mm.flush()
        mm.close()
    finally:
        os.close(fd)
    data[100:110] = b"0123456789"
    data[MiB:MiB + 4] = b"WXYZ"
    assert read_file(f) == bytes(data)
    mounted.stop()
    mounted.start()
    assert read_file(f) == bytes(data), "MAP_SHARED writes lost across remount"


# ------------------------------------------------------------------------------------------------
# (d) locks


def test_flock_exclusion(mounted):
    p = mounted.path / "huggingface" / "hub" / "x.lock"
    fd1 = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    fd2 = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError) as ei:
            fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert ei.value.errno == errno.EWOULDBLOCK
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd2, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd1, fcntl.LOCK_UN)
        fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)  # now free
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd2, fcntl.LOCK_SH)
        fcntl.flock(fd1, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared locks coexist
    finally:
        os.close(fd1)
        os.close(fd2)
    # closing releases the lock
    fd3 = os.open(p, os.O_RDWR)
    try:
        fcntl.flock(fd3, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd3)


def test_flock_blocks_other_process(mounted):
    p = mounted.path / "l"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        code = ("import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR)\n"
                "try:\n fcntl.flock(fd,fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
                " sys.exit(7)\nsys.exit(0)\n")
        r = subprocess.run([sys.executable, "-c", code, str(p)], timeout=30)
        assert r.returncode == 7, "another process got an exclusive flock that is held"
        fcntl.flock(fd, fcntl.LOCK_UN)
        r = subprocess.run([sys.executable, "-c", code, str(p)], timeout=30)
        assert r.returncode == 0, "flock still held after LOCK_UN"
    finally:
        os.close(fd)


def test_posix_lock_between_processes(mounted):
    p = mounted.path / "pl"
    write_file(p, b"x" * 100)
    fd = os.open(p, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)
        code = ("import fcntl,os,sys\nfd=os.open(sys.argv[1],os.O_RDWR)\n"
                "try:\n fcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB,10,0)\n"
                "except OSError as e:\n sys.exit(7 if e.errno in (11,13) else 9)\n"
                "fcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB,10,50)\nsys.exit(0)\n")
        r = subprocess.run([sys.executable, "-c", code, str(p)], timeout=30)
        assert r.returncode == 7, f"a conflicting POSIX lock was granted (exit {r.returncode})"
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# (e) cp of a large file


@pytest.mark.timeout(600)
def test_cp_200mib(mount_env):
    src = mount_env.native / "big.bin"
    h = hashlib.sha256()
    with open(src, "wb") as fh:
        for _ in range(25):
            b = os.urandom(8 * MiB)
            h.update(b)
            fh.write(b)
    want = h.hexdigest()
    dst = mount_env.mount.path / "huggingface" / "hub" / "big.bin"
    t0 = time.monotonic()
    subprocess.run(["cp", str(src), str(dst)], check=True, timeout=600)
    t_cp = time.monotonic() - t0
    assert os.stat(dst).st_size == 200 * MiB
    t0 = time.monotonic()
    got = sha256_file(dst)
    t_read = time.monotonic() - t0
    assert got == want, "200 MiB copied with cp reads back different"
    r = subprocess.run(["cmp", str(src), str(dst)], capture_output=True, timeout=600)
    assert r.returncode == 0, f"cmp: {r.stdout!r} {r.stderr!r}"
    print(f"\ncp 200 MiB into the mount: {t_cp:.2f} s; sha256 read back: {t_read:.2f} s")
    src.unlink()


# ------------------------------------------------------------------------------------------------
# (f) page cache


@pytest.mark.timeout(300)
def test_page_cache_reread_and_invalidation(mounted):
    p = mounted.path / "cached"
    data = os.urandom(16 * MiB)
    write_file(p, data)
    assert read_file(p) == data
    assert read_file(p) == data, "second read differs"
    with open(p, "rb") as a, open(p, "rb") as b:
        assert a.read() == data and b.read() == data

    # a change through another fd is seen by a fresh reader (no stale cached pages)
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, b"NEW!" * 1024, 8 * MiB)
    finally:
        os.close(fd)
    data2 = data[:8 * MiB] + b"NEW!" * 1024 + data[8 * MiB + 4096:]
    assert read_file(p) == data2, "read after a rewrite shows stale cached bytes"
    assert read_file(p) == data2

    # replacing the file by rename: the name shows the new content, an old fd the old one
    old_fd = os.open(p, os.O_RDONLY)
    try:
        q = mounted.path / "cached.new"
        data3 = os.urandom(5 * MiB)
        write_file(q, data3)
        os.rename(q, p)
        assert read_file(p) == data3, "after rename-over, the name shows the old content"
        assert os.pread(old_fd, 16 * MiB + 10, 0) == data2, "the old fd lost its file"
    finally:
        os.close(old_fd)

    # truncate + rewrite with different bytes of the same length
    data4 = os.urandom(5 * MiB)
    write_file(p, data4)
    assert read_file(p) == data4, "O_TRUNC rewrite: stale bytes"

    # after a remount (cold cache for the daemon), twice again
    mounted.stop()
    mounted.start()
    assert read_file(p) == data4
    assert read_file(p) == data4
