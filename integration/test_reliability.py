"""Promises of DESIGN.md §6 under adverse conditions: a full disk and a flipped byte."""

import errno
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from mountlib import Mount, mlxfs_binary, sandbox_env, sha256_file  # noqa: E402


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


def fill(path: Path, seed: int, limit: int) -> tuple[int, int | None]:
    """Writes random-ish data until `limit` bytes or an error; (bytes written, errno)."""
    block = (seed.to_bytes(8, "little") * (1 << 17))  # 1 MiB, distinct per seed
    written = 0
    try:
        with open(path, "wb") as f:
            while written < limit:
                written += f.write(block[: min(len(block), limit - written)])
                block = block[1:] + block[:1]  # every MiB differs, so nothing dedups
    except OSError as e:
        return written, e.errno
    return written, None


def test_full_disk_gives_enospc_and_keeps_earlier_files(small_disk_mount):
    m = small_disk_mount
    keep = m.path / "huggingface/hub/keep.bin"
    keep.write_bytes(os.urandom(8 << 20))
    keep_sum = sha256_file(keep)

    # Staging and packs both live on the small disk: a big file cannot fit twice.
    _, err = fill(m.path / "huggingface/hub/big.bin", 1, 200 << 20)
    assert err == errno.ENOSPC, f"writer got {errno.errorcode.get(err, err)}, want ENOSPC"
    assert sha256_file(keep) == keep_sum

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
