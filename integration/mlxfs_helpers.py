"""Helpers shared by the integration tests: running the CLI, walking trees, comparing bytes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

CMD_TIMEOUT = 600


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _clip(b: bytes, n: int = 4000) -> str:
    s = b.decode("utf-8", "replace")
    return s if len(s) <= n else s[:n] + f"... [{len(s) - n} more chars]"


class Mlxfs:
    """Runs the mlxfs CLI against one store."""

    def __init__(self, binary: Path, store: Path, env: dict[str, str]):
        self.binary = binary
        self.store = store
        self.env = env

    def run(self, *args: str, expect: int | None = 0, env: dict | None = None,
            store: bool = True) -> subprocess.CompletedProcess:
        """Run `mlxfs [--store S] ARGS`; assert the exit status when expect is not None."""
        cmd = [str(self.binary)]
        if store:
            cmd += ["--store", str(self.store)]
        cmd += [str(a) for a in args]
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=CMD_TIMEOUT, env=env or self.env)
        if expect is not None:
            assert p.returncode == expect, (
                f"`{' '.join(cmd)}` exited {p.returncode}, expected {expect}\n"
                f"--- stdout:\n{_clip(p.stdout)}\n--- stderr:\n{_clip(p.stderr)}")
        return p

    def json(self, cmd: str, *args: str, expect: int | None = 0) -> dict:
        """Run `mlxfs CMD --json ARGS` and parse stdout as JSON."""
        p = self.run(cmd, "--json", *args, expect=expect)
        try:
            return json.loads(p.stdout)
        except ValueError as e:
            raise AssertionError(f"`mlxfs {cmd} --json` printed no JSON ({e}):\n"
                                 f"{_clip(p.stdout)}\n--- stderr:\n{_clip(p.stderr)}") from None

    def import_(self, *paths, expect: int | None = 0) -> dict:
        return self.json("import", *paths, expect=expect)

    def status(self) -> dict:
        return self.json("status")

    def cat(self, nspath: str) -> bytes:
        return self.run("cat", nspath).stdout



def tree_entries(src_root: Path, ns_prefix: str) -> list[tuple[str, Path]]:
    """(namespace path, source path) of every regular file and symlink under src_root."""
    out = []
    for dirpath, dirnames, filenames in os.walk(src_root):
        dirnames.sort()
        names = sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))])
        for fn in names:
            p = Path(dirpath) / fn
            out.append((ns_prefix + "/" + str(p.relative_to(src_root)), p))
    return out


def assert_reads_back(m: Mlxfs, entries: list[tuple[str, Path]]) -> int:
    """Every entry's `mlxfs cat` equals the source content (symlinks resolved). Returns count."""
    bad = []
    for ns, src in entries:
        want = sha256_file(src)
        p = m.run("cat", ns, expect=None)
        if p.returncode != 0:
            bad.append(f"{ns}: cat exited {p.returncode}: {_clip(p.stderr, 300)}")
        elif hashlib.sha256(p.stdout).hexdigest() != want:
            bad.append(f"{ns}: content differs ({len(p.stdout)} bytes read, "
                       f"{src.stat().st_size} expected)")
    assert not bad, f"{len(bad)} of {len(entries)} files do not read back:\n" + "\n".join(bad[:30])
    return len(entries)


def store_contains(store: Path, needle: bytes) -> list[str]:
    """Files anywhere in the store directory whose bytes contain needle."""
    hits = []
    for dirpath, _, filenames in os.walk(store):
        for fn in filenames:
            p = Path(dirpath) / fn
            try:
                if needle in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
    return hits
