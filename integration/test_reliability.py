"""Promises of DESIGN.md §6 under adverse conditions: a full disk and a flipped byte."""

import errno
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from mountlib import Mount, mlxfs_binary, pid_alive, sandbox_env, sha256_file  # noqa: E402


@pytest.fixture
def small_disk_mount():
    """A store on a 96 MiB tmpfs, mounted; always torn down."""
    base = Path(tempfile.mkdtemp(prefix="mlxfs-full-", dir="/tmp"))
    disk = base / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(disk)], check=True)
    m = Mount(mlxfs_binary(), disk / "store", base / "mnt", sandbox_env(base / "home"))
    try:
        m.start()
        yield m
    finally:
        m.cleanup()
        subprocess.run(["umount", "-l", str(disk)], check=False)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def fill_blocks(seed: int):
    """The 1 MiB blocks `fill` writes: distinct per seed, and every MiB differs, so nothing
    dedups."""
    block = (seed.to_bytes(8, "little") * (1 << 17))
    while True:
        yield block
        block = block[1:] + block[:1]


def fill(path: Path, seed: int, limit: int) -> tuple[int, int | None]:
    """Writes `fill_blocks(seed)` until `limit` bytes or an error; (bytes written, errno)."""
    written = 0
    try:
        with open(path, "wb") as f:
            for block in fill_blocks(seed):
                if written >= limit:
                    break
                written += f.write(block[: min(len(block), limit - written)])
    except OSError as e:
        return written, e.errno
    return written, None


def test_full_disk_gives_enospc_and_keeps_earlier_files(small_disk_mount):
    m = small_disk_mount
    keep = m.path / "huggingface/hub/keep.bin"
    keep.write_bytes(os.urandom(8 << 20))
    keep_sum = sha256_file(keep)

    # Staging and packs both live on the small disk: a big file cannot fit twice.
    big = m.path / "huggingface/hub/big.bin"
    written, err = fill(big, 1, 200 << 20)
    assert err == errno.ENOSPC, f"writer got {errno.errorcode.get(err, err)}, want ENOSPC"
    assert sha256_file(keep) == keep_sum
    # Writes are acknowledged before they are stored, so the one that failed was lost after
    # the writer heard "written": the file holds what was stored before it, no zeros, no
    # bytes from beyond it.
    got = big.read_bytes()
    assert 0 < len(got) <= written
    expected = b"".join(b for b, _ in zip(fill_blocks(1), range(len(got) // (1 << 20) + 1)))
    assert got == expected[: len(got)], "the failed file holds bytes that were not written there"

    # Space comes back after deleting, and writes work again.
    os.unlink(m.path / "huggingface/hub/big.bin")
    small = m.path / "huggingface/hub/after.bin"
    data = os.urandom(4 << 20)
    # The kernel sends RELEASE for the failed file a moment after close() returns; its staging
    # space is free from then on.
    deadline = time.monotonic() + 10
    while True:
        try:
            small.write_bytes(data)
            break
        except OSError as e:
            if e.errno != errno.ENOSPC or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert small.read_bytes() == data
    assert sha256_file(keep) == keep_sum

    m.stop()
    v = m.verify()
    assert v.returncode == 0, v.stdout.decode() + v.stderr.decode()


def test_a_file_bigger_than_half_the_free_space_fits(small_disk_mount):
    """The disk has room for the file once, not twice: its staging copy must become its pack
    (closes do not queue on a disk this full, and a copying commit would not fit)."""
    m = small_disk_mount
    st = os.statvfs(m.path)
    free = st.f_bavail * st.f_frsize
    data = os.urandom(int(free * 0.7) & ~0xFFFF)
    big = m.path / "huggingface/hub/big.bin"
    big.write_bytes(data)  # raises ENOSPC if the commit at close needed a second copy
    assert big.read_bytes() == data
    m.stop()
    m.start()
    assert sha256_file(big) == hashlib.sha256(data).hexdigest()
    m.stop()
    v = m.verify()
    assert v.returncode == 0, v.stdout.decode() + v.stderr.decode()


def test_a_sparse_file_bigger_than_the_free_space_commits(small_disk_mount):
    """A tool that sets a file's size before writing it (an Ollama pull) leaves holes; on a
    nearly full tmpfs store, committing it must not fault the holes in (SIGBUS: the daemon
    died and the mount with it). The zeros are stored once."""
    m = small_disk_mount
    keep = m.path / "ollama/models/blobs/keep.bin"
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_bytes(os.urandom(24 << 20))
    keep_sum = sha256_file(keep)
    assert os.statvfs(m.path).f_bavail * os.statvfs(m.path).f_frsize < 80 << 20

    sparse = m.path / "ollama/models/blobs/sha256-partial"
    data = os.urandom(1 << 20)
    with open(sparse, "wb") as f:
        f.truncate(80 << 20)
        f.seek(30 << 20)
        f.write(data)
    expected = bytearray(80 << 20)
    expected[30 << 20:(30 << 20) + len(data)] = data
    # Unmounting commits whatever is still queued, and the next mount reads the store.
    m.stop()
    m.start()
    assert sparse.read_bytes() == expected
    assert sha256_file(keep) == keep_sum
    assert pid_alive(m.pid)
    m.stop()
    v = m.verify()
    assert v.returncode == 0, v.stdout.decode() + v.stderr.decode()


def test_flipped_pack_byte_reads_as_eio_never_wrong_bytes(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="mlxfs-rot-", dir="/tmp"))
    m = Mount(mlxfs_binary(), base / "store", base / "mnt", sandbox_env(base / "home"))
    try:
        m.start()
        damaged = os.urandom(6 << 20)
        healthy = os.urandom(3 << 20)
        (m.path / "huggingface/hub/damaged.bin").write_bytes(damaged)
        (m.path / "huggingface/hub/healthy.bin").write_bytes(healthy)
        m.stop()
        packs = sorted((m.store / "packs").glob("*.pack"))
        pack = packs[0]
        raw = bytearray(pack.read_bytes())
        # The first file's bytes come first in the pack: flip one in its middle.
        where = raw.find(damaged[3 << 20: (3 << 20) + 64])
        assert where > 0
        raw[where] ^= 0xFF
        pack.write_bytes(bytes(raw))
        m.start()
        with open(m.path / "huggingface/hub/damaged.bin", "rb") as f:
            f.seek(0)
            head = f.read(1 << 20)
            assert head == damaged[: 1 << 20] or head == b"", "bytes before the damage"
            with pytest.raises(OSError) as e:
                f.seek(3 << 20)
                f.read(64)
            assert e.value.errno == errno.EIO
        assert (m.path / "huggingface/hub/healthy.bin").read_bytes() == healthy
        m.stop()
        v = m.verify()
        assert v.returncode == 1 and b"damaged.bin" in v.stdout + v.stderr
    finally:
        m.cleanup()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_an_import_into_a_mounted_full_disk_fails_cleanly_and_gives_the_room_back(
        small_disk_mount, tmp_path):
    """The daemon runs the import of a mounted store: on a disk that fills, the import fails
    with exit 1 and says why, the daemon gives back the failed import's packs at once (it keeps
    the store open, so no later start would), and the mount goes on working."""
    import numpy as np

    import corpus as C

    m = small_disk_mount
    keep = m.path / "huggingface/hub/keep.bin"
    keep.write_bytes(os.urandom(8 << 20))
    keep_sum = sha256_file(keep)
    disk = m.store.parent
    rng = np.random.default_rng(41)
    # The first blob's copy is adopted as its pack before the second fills the disk: that pack
    # is uncommitted too, and its room must come back with the rest.
    hub = tmp_path / "src" / "hub"
    C.write_hf_repo(hub, "o/toobig", {"config.json": b"{}\n",
                                      "model-1.safetensors": rng.bytes(20 << 20),
                                      "model-2.safetensors": rng.bytes(80 << 20)},
                    C.fake_commit("toobig", 0))
    before = os.statvfs(disk)
    p = m.cli("import", hub, expect=1)
    err = p.stderr.decode(errors="replace")
    assert "no space left" in err, err
    after = os.statvfs(disk)
    # A blob of a batch committed before the disk filled would be kept and read back whole
    # (a big import commits as it goes; this one is a single batch); nothing else stays.
    kept = 0
    for blob in (hub / "models--o--toobig" / "blobs").iterdir():
        in_mount = m.path / "huggingface/hub" / blob.relative_to(hub)
        if in_mount.exists():
            assert sha256_file(in_mount) == sha256_file(blob), blob.name
            kept += blob.stat().st_size
    # Within a few MiB of where it started, less what was kept: the uncommitted packs are gone.
    free_before = before.f_bavail * before.f_frsize
    free_after = after.f_bavail * after.f_frsize
    assert free_after >= free_before - kept - (4 << 20), (free_before, free_after, kept)
    assert sha256_file(keep) == keep_sum
    again = m.path / "huggingface/hub/after.bin"
    data = os.urandom(4 << 20)
    again.write_bytes(data)
    assert again.read_bytes() == data
    m.stop()
    v = m.verify()
    assert v.returncode == 0, v.stdout.decode() + v.stderr.decode()
