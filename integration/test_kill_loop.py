"""SIGKILL of the daemon at random points of a mixed write workload, 20 times in a row
(DESIGN.md §6, issue 7).

Each round three threads write through the mount, and `mlxfs gc` runs through the daemon in a
loop, until the daemon is killed at a random moment:
- plain files: create, overwrite (O_TRUNC), write + fsync + write more, rename (over an
  existing file or not), delete;
- the Ollama pull pattern: `blobs/sha256-<hex>-partial` created and pre-sized, four threads
  pwrite its parts at once while `-partial-N` JSON progress files are rewritten, close, rename to
  `sha256-<hex>`, delete the progress files, write the manifest;
- the huggingface_hub pattern: `blobs/<sha>.incomplete` written, chmod, renamed to
  `blobs/<sha>`, a relative symlink `snapshots/<rev>/<name>` -> `../../blobs/<sha>`, `refs/main`.

Every operation registers, before it starts, what the files it touches may look like if the
daemon dies in the middle (old content, a prefix of the new, zeros-or-new for a pre-sized file,
either side of a rename as a pair), and after it returns, the one state they must have. After
each kill the store is remounted and every tracked path must match one allowed state: a file
closed or fsynced before the kill has exactly its content, and no file shows bytes never
written to it. At the end `mlxfs verify` is clean.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import mount_env, mounted  # noqa: E402,F401

ROUNDS = int(os.environ.get("MLXFS_KILL_ROUNDS", "20"))
KiB, MiB = 1 << 10, 1 << 20


# --- what a path may look like ---------------------------------------------------------------

class Absent:
    def ok(self, got):
        return got is None

    def __repr__(self):
        return "absent"


class Exact:
    def __init__(self, data: bytes):
        self.data = data

    def ok(self, got):
        return isinstance(got, bytes) and got == self.data

    def __repr__(self):
        return f"exactly {len(self.data)} bytes {hashlib.sha256(self.data).hexdigest()[:12]}"


class Prefix:
    """`base` followed by any prefix of `more` (a sequential write cut short)."""

    def __init__(self, base: bytes, more: bytes):
        self.base, self.more = base, more

    def ok(self, got):
        if not isinstance(got, bytes) or len(got) < len(self.base):
            return False
        n = len(got) - len(self.base)
        return got[:len(self.base)] == self.base and self.more[:n] == got[len(self.base):]

    def __repr__(self):
        return f"{len(self.base)} bytes + a prefix of {len(self.more)} more"


class Sparse:
    """At most len(data) bytes, each either 0 (not written yet) or the byte written there."""

    def __init__(self, data: bytes):
        self.data = data

    def ok(self, got):
        if not isinstance(got, bytes) or len(got) > len(self.data):
            return False
        g = np.frombuffer(got, dtype=np.uint8)
        d = np.frombuffer(self.data, dtype=np.uint8)[:len(got)]
        return bool(np.all((g == d) | (g == 0)))

    def __repr__(self):
        return f"up to {len(self.data)} bytes, each 0 or the byte written"


class Link:
    def __init__(self, target: str):
        self.target = target

    def ok(self, got):
        return got == ("link", self.target)

    def __repr__(self):
        return f"symlink -> {self.target}"


class Group:
    """Alternatives for a set of paths that change together (a rename moves a file atomically:
    never both names gone, never both there)."""

    def __init__(self, alternatives: list[dict[str, object]]):
        self.alternatives = alternatives
        self.paths = sorted({p for alt in alternatives for p in alt})


def observe(path: str):
    try:
        if os.path.islink(path):
            return ("link", os.readlink(path))
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def describe(got) -> str:
    if got is None:
        return "absent"
    if isinstance(got, tuple):
        return f"symlink -> {got[1]}"
    return f"{len(got)} bytes {hashlib.sha256(got).hexdigest()[:12]}"


class World:
    def __init__(self):
        self.state: dict[str, Group] = {}
        self.killed = threading.Event()
        self.errors: list[str] = []
        self.cut_short = 0  # operations under way at a kill, checked against their alternatives

    def may(self, *alternatives: dict[str, object]) -> None:
        """Registers what the paths may look like while an operation is under way."""
        g = Group(list(alternatives))
        for p in g.paths:
            self.state[p] = g

    def now(self, outcomes: dict[str, object]) -> None:
        """Registers the state after an operation returned."""
        for p, o in outcomes.items():
            self.state[p] = Group([{p: o}])

    def content(self, path: str) -> bytes | None:
        """The settled content of a path (None: absent or not a settled file)."""
        g = self.state.get(path)
        if g is None or len(g.alternatives) != 1:
            return None
        o = g.alternatives[0][path]
        return o.data if isinstance(o, Exact) else None

    def check(self) -> list[str]:
        """Compares every tracked path with what it may be, then settles each group to what
        was observed."""
        problems = []
        groups = {id(g): g for g in self.state.values()}.values()
        for g in groups:
            self.cut_short += len(g.alternatives) > 1
            seen = {p: observe(p) for p in g.paths}
            if not any(all(alt.get(p, Absent()).ok(seen[p]) for p in g.paths)
                       for alt in g.alternatives):
                problems.append(
                    "; ".join(f"{p}: {describe(seen[p])}" for p in g.paths) + " -- allowed: " +
                    " | ".join("{" + ", ".join(f"{os.path.basename(p)}: {alt.get(p, Absent())}"
                                               for p in g.paths) + "}"
                               for alt in g.alternatives))
                continue
            for p in g.paths:
                got = seen[p]
                if got is None:
                    self.state.pop(p, None)
                elif isinstance(got, tuple):
                    self.state[p] = Group([{p: Link(got[1])}])
                else:
                    self.state[p] = Group([{p: Exact(got)}])
        return problems


# --- the workload ----------------------------------------------------------------------------

def write_all(fd: int, data: bytes, piece: int = 256 * KiB) -> None:
    for i in range(0, len(data), piece):
        view = memoryview(data)[i:i + piece]
        while view:
            view = view[os.write(fd, view):]


class Worker(threading.Thread):
    def __init__(self, world: World, rng: random.Random, name: str):
        super().__init__(daemon=True, name=name)
        self.world, self.rng = world, rng
        self.ops = 0

    def run(self):
        try:
            while True:
                self.step()
                self.ops += 1
        except OSError as e:
            if not self.world.killed.is_set():
                self.world.errors.append(f"{self.name}: {e!r} before the kill")
        except BaseException as e:  # noqa: BLE001
            self.world.errors.append(f"{self.name}: {type(e).__name__}: {e}")

    def create(self, path: str, data: bytes, mode: int = 0o644) -> None:
        w = self.world
        old = w.content(path)
        w.may({path: Absent()} if old is None else {path: Exact(old)}, {path: Prefix(b"", data)})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        w.now({path: Exact(data)})

    def rename(self, src: str, dst: str) -> None:
        w = self.world
        moving, old = w.content(src), w.content(dst)
        assert moving is not None, src
        w.may({src: Exact(moving), dst: Exact(old) if old is not None else Absent()},
              {src: Absent(), dst: Exact(moving)})
        os.rename(src, dst)
        w.now({src: Absent(), dst: Exact(moving)})

    def unlink(self, path: str) -> None:
        w = self.world
        old = w.content(path)
        w.may({path: Exact(old)}, {path: Absent()})
        os.unlink(path)
        w.now({path: Absent()})


class PlainFiles(Worker):
    """Many small files: create, overwrite, fsync'd writes, renames, deletes."""

    def __init__(self, world, rng, root):
        super().__init__(world, rng, "plain")
        self.root = root
        os.makedirs(root, exist_ok=True)

    def files(self) -> list[str]:
        return [p for p in list(self.world.state)
                if p.startswith(self.root + "/") and self.world.content(p) is not None]

    def step(self):
        rng, w = self.rng, self.world
        files = self.files()
        op = rng.choices(["create", "overwrite", "fsync", "rename", "delete"],
                         weights=[4, 2, 1, 2, 2 if len(files) > 40 else 0.5])[0]
        if op in ("overwrite", "rename", "delete") and not files:
            op = "create"
        data = rng.randbytes(rng.choice([0, 100, 4 * KiB, 64 * KiB, 300 * KiB, 1 * MiB]))
        if op == "create":
            self.create(f"{self.root}/f{rng.randrange(1 << 30):08x}", data)
        elif op == "overwrite":
            self.create(rng.choice(files), data)
        elif op == "fsync":
            path = f"{self.root}/s{rng.randrange(1 << 30):08x}"
            more = rng.randbytes(200 * KiB)
            w.may({path: Absent()}, {path: Prefix(b"", data)})
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                write_all(fd, data)
                os.fsync(fd)
                # fsynced: the data is there whatever happens to the rest.
                w.may({path: Prefix(data, more)})
                write_all(fd, more)
            finally:
                os.close(fd)
            w.now({path: Exact(data + more)})
        elif op == "rename":
            src = rng.choice(files)
            others = [f for f in files if f != src]
            dst = rng.choice(others) if others and rng.random() < 0.5 else \
                f"{self.root}/r{rng.randrange(1 << 30):08x}"
            self.rename(src, dst)
        else:
            self.unlink(rng.choice(files))


class OllamaPull(Worker):
    """What `ollama pull` does, one model after another."""

    def __init__(self, world, rng, root):
        super().__init__(world, rng, "ollama")
        self.root = root
        self.blobs = f"{root}/blobs"
        os.makedirs(self.blobs, exist_ok=True)
        self.pulled = 0

    def step(self):
        rng, w = self.rng, self.world
        data = rng.randbytes(rng.randint(1, 6) * MiB + rng.randrange(4096))
        hexd = hashlib.sha256(data).hexdigest()
        partial = f"{self.blobs}/sha256-{hexd}-partial"
        parts = 4
        cut = [len(data) * i // parts for i in range(parts + 1)]
        w.may({partial: Absent()}, {partial: Sparse(data)})
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, len(data))
            errors = []

            def part(i):
                try:
                    for off in range(cut[i], cut[i + 1], 128 * KiB):
                        end = min(off + 128 * KiB, cut[i + 1])
                        os.pwrite(fd, data[off:end], off)
                except OSError as e:
                    errors.append(e)

            writers = [threading.Thread(target=part, args=(i,), daemon=True) for i in range(parts)]
            for t in writers:
                t.start()
            # Progress files, rewritten while the parts download.
            for rewrite in range(3):
                for i in range(parts):
                    doc = json.dumps({"N": i, "Offset": cut[i], "Size": cut[i + 1] - cut[i],
                                      "Completed": (cut[i + 1] - cut[i]) * rewrite // 2})
                    self.create(f"{partial}-{i}", doc.encode())
            for t in writers:
                t.join()
            if errors:
                raise errors[0]
        finally:
            os.close(fd)
        w.now({partial: Exact(data)})
        self.rename(partial, f"{self.blobs}/sha256-{hexd}")
        for i in range(parts):
            self.unlink(f"{partial}-{i}")
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "layers": [{"mediaType": "application/vnd.ollama.image.model",
                        "digest": f"sha256:{hexd}", "size": len(data)}],
        }).encode()
        mdir = f"{self.root}/manifests/registry.ollama.ai/library/m{self.pulled % 5}"
        os.makedirs(mdir, exist_ok=True)
        self.create(f"{mdir}/latest", manifest)
        self.pulled += 1


class HubDownload(Worker):
    """What huggingface_hub does for each file of a repo."""

    def __init__(self, world, rng, root):
        super().__init__(world, rng, "hf")
        self.repo = f"{root}/models--killtest--m"
        self.rev = "%040x" % rng.randrange(1 << 160)
        for d in ("blobs", f"snapshots/{self.rev}", "refs"):
            os.makedirs(f"{self.repo}/{d}", exist_ok=True)
        self.n = 0

    def step(self):
        rng, w = self.rng, self.world
        data = rng.randbytes(rng.choice([2 * KiB, 700 * KiB, 3 * MiB]))
        sha = hashlib.sha256(data).hexdigest()
        incomplete = f"{self.repo}/blobs/{sha}.incomplete"
        self.create(incomplete, data, 0o600)
        os.chmod(incomplete, 0o644)
        self.rename(incomplete, f"{self.repo}/blobs/{sha}")
        link = f"{self.repo}/snapshots/{self.rev}/file-{self.n % 7}.safetensors"
        target = f"../../blobs/{sha}"
        old = self.world.state.get(link)
        old_alt = old.alternatives[0][link] if old and len(old.alternatives) == 1 else Absent()
        w.may({link: old_alt}, {link: Absent()}, {link: Link(target)})
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(target, link)
        w.now({link: Link(target)})
        self.create(f"{self.repo}/refs/main", self.rev.encode())
        self.n += 1


class GcLoop(threading.Thread):
    """`mlxfs gc` through the daemon, again and again: some kills land in the middle of one."""

    def __init__(self, world: World, mount):
        super().__init__(daemon=True, name="gc")
        self.world, self.mount = world, mount
        self.ops = 0

    def run(self):
        while not self.world.killed.is_set():
            p = self.mount.cli("gc", expect=None, timeout=120)
            if p.returncode != 0:
                if not self.world.killed.is_set():
                    self.world.errors.append(f"gc exited {p.returncode} before the kill: "
                                             f"{p.stderr.decode(errors='replace')}")
                return
            self.ops += 1
            time.sleep(0.05)


@pytest.mark.timeout(600)
def test_kill9_at_random_points_twenty_times(mounted):
    seed = int(os.environ.get("MLXFS_KILL_SEED", str(random.randrange(1 << 30))))
    print(f"\nMLXFS_KILL_SEED={seed}")
    rng = random.Random(seed)
    world = World()
    mnt = str(mounted.path)
    started = time.monotonic()
    ops = gcs = 0
    for round_ in range(ROUNDS):
        world.killed.clear()
        workers = [
            PlainFiles(world, random.Random(rng.random()), f"{mnt}/huggingface/hub/plain"),
            OllamaPull(world, random.Random(rng.random()), f"{mnt}/ollama/models"),
            HubDownload(world, random.Random(rng.random()), f"{mnt}/huggingface/hub"),
            GcLoop(world, mounted),
        ]
        for t in workers:
            t.start()
        time.sleep(rng.uniform(0.3, 2.5))
        assert not world.errors, "\n".join(world.errors) + f"\n{mounted.log_tail()}"
        world.killed.set()
        mounted.kill9()
        for t in workers:
            t.join(60)
            assert not t.is_alive(), f"{t.name} hangs on the dead mount"
        ops += sum(t.ops for t in workers[:-1])
        gcs += workers[-1].ops
        assert not world.errors, "\n".join(world.errors)
        mounted.start()
        problems = world.check()
        assert not problems, (f"round {round_ + 1} (seed {seed}): after kill -9 and remount:\n" +
                              "\n".join(problems[:20]) + f"\n--- daemon.log:\n{mounted.log_tail()}")
    elapsed = time.monotonic() - started
    print(f"{ROUNDS} kills in {elapsed:.0f} s, {ops} operations completed, "
          f"{world.cut_short} cut short by a kill, {gcs} gc runs, {len(world.state)} paths tracked")
    assert world.cut_short >= ROUNDS, "the kills did not land in the middle of operations"
    mounted.stop()
    v = mounted.verify()
    assert v.returncode == 0, v.stdout.decode(errors="replace") + v.stderr.decode(errors="replace")
