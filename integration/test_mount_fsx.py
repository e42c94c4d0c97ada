"""fsx-style randomized model test: the same random operations on the mount and on a native
directory, in lockstep, compared after every step; then unmount, remount, compare again.

Seed: env FSX_SEED (else random, printed). Steps: env FSX_STEPS (default 3000).
A failure message names the seed and the step, with the last operations.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import (  # noqa: E402,F401
    diff_snapshots, errno_name, mount_env, tree_snapshot,
)

MiB = 1 << 20
NAMES = ["a", "b", "c", "d", "e", "f"]
MAX_FDS = 5
MAX_DEPTH = 3

# POSIX allows either for "directory not empty" in rename and rmdir
_EQUIV = {errno.EEXIST: errno.ENOTEMPTY}


def _norm(e):
    return _EQUIV.get(e, e)


class Mismatch(AssertionError):
    pass


class Fsx:
    def __init__(self, seed: int, mroot: str, nroot: str):
        self.seed = seed
        self.rng = random.Random(seed)
        self.roots = (mroot, nroot)
        self.fds: list[list] = []  # [rel path at open, fd_mount, fd_native, flags]
        self.step = 0
        self.log: list[str] = []
        self.counts: dict[str, int] = {}
        self.touched: list[str] = []  # paths the current step used
        self._entries_step = -1
        self._entries = None

    # -- helpers ----------------------------------------------------------------------------

    def fail(self, msg: str):
        tail = "\n".join(self.log[-25:])
        raise Mismatch(f"FSX_SEED={self.seed} step {self.step}: {msg}\n"
                       f"--- last operations:\n{tail}")

    def p(self, side: int, rel: str) -> str:
        return os.path.join(self.roots[side], rel) if rel else self.roots[side]

    def native_entries(self):
        """(dirs, files, others) as relative paths, from the native tree (as of this step)."""
        if self._entries_step != self.step:
            self._entries = self._native_entries()
            self._entries_step = self.step
        return self._entries

    def _native_entries(self):
        dirs, files, others = [""], [], []
        root = self.roots[1]
        for dp, dns, fns in os.walk(root):
            rel = os.path.relpath(dp, root)
            rel = "" if rel == "." else rel
            for d in dns:
                full = os.path.join(rel, d)
                if os.path.islink(os.path.join(root, full)):
                    others.append(full)
                else:
                    dirs.append(full)
            for f in fns:
                full = os.path.join(rel, f)
                (files if os.path.isfile(os.path.join(root, full))
                 and not os.path.islink(os.path.join(root, full)) else others).append(full)
        return dirs, files, others

    def pick_path(self, want: str = "any") -> str:
        rel = self._pick_path(want)
        self.touched.append(rel)
        return rel

    def _pick_path(self, want: str) -> str:
        dirs, files, others = self.native_entries()
        r = self.rng.random()
        if want == "file" and files and r < 0.85:
            return self.rng.choice(files)
        if want == "dir" and len(dirs) > 1 and r < 0.7:
            return self.rng.choice(dirs[1:])
        if want == "any" and r < 0.6:
            pool = files + dirs[1:] + others
            if pool:
                return self.rng.choice(pool)
        # a fresh (or maybe existing) name in an existing directory, sometimes in a missing one
        parent = self.rng.choice(dirs)
        if parent.count("/") >= MAX_DEPTH - 1:
            parent = ""
        if self.rng.random() < 0.03:
            parent = os.path.join(parent, "missing")
        return os.path.join(parent, self.rng.choice(NAMES))

    def both(self, name: str, fn, compare_value: bool = True, equiv: bool = False):
        """Run fn(side) on both sides; compare success/errno (and the value)."""
        out = []
        for side in (0, 1):
            try:
                out.append(("ok", fn(side)))
            except OSError as e:
                out.append(("err", _norm(e.errno) if equiv else e.errno))
        self.counts[name] = self.counts.get(name, 0) + 1
        (km, vm), (kn, vn) = out
        self.log[-1] += f" -> {kn}:{errno_name(vn) if kn == 'err' else _short(vn)}"
        if km != kn or (km == "err" and vm != vn):
            self.fail(f"{name}: mount {km}:{errno_name(vm) if km == 'err' else _short(vm)}, "
                      f"native {kn}:{errno_name(vn) if kn == 'err' else _short(vn)}")
        if km == "ok" and compare_value and vm != vn:
            self.fail(f"{name}: mount returned {_short(vm)}, native {_short(vn)}")
        return km == "ok", vm, vn

    def data(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def length(self) -> int:
        r = self.rng.random()
        if r < 0.6:
            return self.rng.randint(1, 8192)
        if r < 0.95:
            return self.rng.randint(1, 256 * 1024)
        return self.rng.randint(1, int(1.5 * MiB))

    def offset(self, size: int) -> int:
        r = self.rng.random()
        if r < 0.5 or size == 0:
            return self.rng.randint(0, max(size, 1))
        if r < 0.8:
            return size  # append
        return min(size + self.rng.randint(1, MiB), 3 * MiB)  # past EOF: a hole

    def native_size(self, rel: str) -> int:
        try:
            return os.stat(self.p(1, rel)).st_size
        except OSError:
            return 0

    # -- operations -------------------------------------------------------------------------

    def op_open(self):
        rel = self.pick_path("file")
        flags = os.O_RDWR
        r = self.rng.random()
        if r < 0.5:
            flags |= os.O_CREAT
        if r < 0.1:
            flags |= os.O_EXCL
        if self.rng.random() < 0.08:
            flags |= os.O_TRUNC
        if self.rng.random() < 0.08:
            flags |= os.O_APPEND
        self.log.append(f"{self.step}: open {rel!r} flags={flags:#o}")
        if len(self.fds) >= MAX_FDS:
            self.op_close()
            self.log.append(f"{self.step}: open {rel!r} flags={flags:#o}")
        ok, fm, fn = self.both("open", lambda s: os.open(self.p(s, rel), flags, 0o644),
                               compare_value=False)
        if ok:
            self.fds.append([rel, fm, fn, flags])

    def op_close(self):
        if not self.fds:
            self.log.append(f"{self.step}: close (none open)")
            return
        i = self.rng.randrange(len(self.fds))
        rel, fm, fn, _ = self.fds.pop(i)
        self.log.append(f"{self.step}: close fd#{i} ({rel!r})")
        self.both("close", lambda s: os.close((fm, fn)[s]))

    def op_reopen(self):
        if not self.fds:
            return self.op_open()
        i = self.rng.randrange(len(self.fds))
        rel, fm, fn, _ = self.fds.pop(i)
        self.log.append(f"{self.step}: reopen fd#{i} ({rel!r})")
        self.both("close", lambda s: os.close((fm, fn)[s]))
        self.log.append(f"{self.step}: open {rel!r} O_RDWR")
        ok, fm, fn = self.both("open", lambda s: os.open(self.p(s, rel), os.O_RDWR),
                               compare_value=False)
        if ok:
            self.fds.append([rel, fm, fn, os.O_RDWR])

    def _fd(self):
        i = self.rng.randrange(len(self.fds))
        return i, self.fds[i]

    def op_pwrite(self):
        if self.fds and self.rng.random() < 0.7:
            i, (rel, fm, fn, flags) = self._fd()
            size = os.fstat(fn).st_size
            off, n = self.offset(size), self.length()
            data = self.data(n)
            self.log.append(f"{self.step}: pwrite fd#{i} ({rel!r}) off={off} len={n}")
            self.both("pwrite", lambda s: os.pwrite((fm, fn)[s], data, off))
            return
        rel = self.pick_path("file")
        size = self.native_size(rel)
        off, n = self.offset(size), self.length()
        data = self.data(n)
        self.log.append(f"{self.step}: open+pwrite+close {rel!r} off={off} len={n}")

        def f(s):
            fd = os.open(self.p(s, rel), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                return os.pwrite(fd, data, off)
            finally:
                os.close(fd)
        self.both("pwrite_path", f)

    def op_write_seq(self):
        """write() at the current offset of an fd (lseek first), as cp and downloads do."""
        if not self.fds:
            return self.op_pwrite()
        i, (rel, fm, fn, flags) = self._fd()
        size = os.fstat(fn).st_size
        off = self.offset(size)
        data = self.data(self.length())
        self.log.append(f"{self.step}: lseek+write fd#{i} ({rel!r}) off={off} len={len(data)}")

        def f(s):
            fd = (fm, fn)[s]
            os.lseek(fd, off, os.SEEK_SET)
            n = os.write(fd, data)
            return n, os.lseek(fd, 0, os.SEEK_CUR)
        self.both("write", f)

    def op_pread(self):
        if not self.fds:
            return self.op_read_compare()
        i, (rel, fm, fn, _) = self._fd()
        size = os.fstat(fn).st_size
        off = self.rng.randint(0, size + 100)
        n = self.rng.randint(1, 512 * 1024)
        self.log.append(f"{self.step}: pread fd#{i} ({rel!r}) off={off} len={n}")
        self.both("pread", lambda s: os.pread((fm, fn)[s], n, off))

    def op_read_compare(self):
        rel = self.pick_path("file")
        self.log.append(f"{self.step}: read whole {rel!r}")

        def f(s):
            with open(self.p(s, rel), "rb") as fh:
                return fh.read()
        self.both("read", f)

    def op_truncate(self):
        rel = self.pick_path("file")
        size = self.rng.choice([0, self.rng.randint(0, 4096), self.rng.randint(0, 3 * MiB),
                                self.native_size(rel) + self.rng.randint(-5000, 5000)])
        size = max(size, 0)
        self.log.append(f"{self.step}: truncate {rel!r} {size}")
        self.both("truncate", lambda s: os.truncate(self.p(s, rel), size))

    def op_ftruncate(self):
        if not self.fds:
            return self.op_truncate()
        i, (rel, fm, fn, _) = self._fd()
        size = self.rng.choice([0, self.rng.randint(0, 3 * MiB),
                                max(0, os.fstat(fn).st_size - self.rng.randint(0, 10000))])
        self.log.append(f"{self.step}: ftruncate fd#{i} ({rel!r}) {size}")
        self.both("ftruncate", lambda s: os.ftruncate((fm, fn)[s], size))

    def op_fsync(self):
        if not self.fds:
            return
        i, (rel, fm, fn, _) = self._fd()
        self.log.append(f"{self.step}: fsync fd#{i} ({rel!r})")
        self.both("fsync", lambda s: os.fsync((fm, fn)[s]))

    def op_rename(self):
        src = self.pick_path("any")
        dst = self.pick_path("any")
        self.log.append(f"{self.step}: rename {src!r} -> {dst!r}")
        self.both("rename", lambda s: os.rename(self.p(s, src), self.p(s, dst)), equiv=True)

    def op_link(self):
        src = self.pick_path("file")
        dst = self.pick_path("any")
        self.log.append(f"{self.step}: link {src!r} -> {dst!r}")
        self.both("link", lambda s: os.link(self.p(s, src), self.p(s, dst)))

    def op_unlink(self):
        rel = self.pick_path("any")
        self.log.append(f"{self.step}: unlink {rel!r}")
        self.both("unlink", lambda s: os.unlink(self.p(s, rel)))

    def op_mkdir(self):
        rel = self.pick_path("new")
        self.log.append(f"{self.step}: mkdir {rel!r}")
        self.both("mkdir", lambda s: os.mkdir(self.p(s, rel), 0o755))

    def op_rmdir(self):
        rel = self.pick_path("dir")
        self.log.append(f"{self.step}: rmdir {rel!r}")
        self.both("rmdir", lambda s: os.rmdir(self.p(s, rel)), equiv=True)

    def op_symlink(self):
        rel = self.pick_path("new")
        target = self.rng.choice(NAMES + ["../" + self.rng.choice(NAMES), "x" * 300])
        self.log.append(f"{self.step}: symlink {rel!r} -> {target!r}")
        self.both("symlink", lambda s: os.symlink(target, self.p(s, rel)))

    def op_chmod(self):
        rel = self.pick_path("file")
        mode = self.rng.choice([0o600, 0o644, 0o755, 0o400, 0o640])
        self.log.append(f"{self.step}: chmod {rel!r} {mode:o}")
        self.both("chmod", lambda s: os.chmod(self.p(s, rel), mode))

    def op_stat(self):
        rel = self.pick_path("any")
        self.log.append(f"{self.step}: stat {rel!r}")

        def f(s):
            st = os.stat(self.p(s, rel))
            return (stat.S_IFMT(st.st_mode), st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                    st.st_nlink)
        self.both("stat", f)

    OPS = [("pwrite", 20), ("write_seq", 6), ("pread", 8), ("read_compare", 5), ("truncate", 5),
           ("ftruncate", 4), ("open", 9), ("close", 6), ("reopen", 3), ("fsync", 3),
           ("rename", 8), ("link", 4), ("unlink", 5), ("mkdir", 5), ("rmdir", 3),
           ("symlink", 1), ("chmod", 1), ("stat", 4)]

    # -- checks -----------------------------------------------------------------------------

    def check_metadata(self, full: bool = True):
        """Kind, size, nlink and mode of every entry, the size and nlink of every open fd, and
        directory listings: all of them when `full`, else those of the directories the last
        operation touched (listing through FUSE costs ~1 ms per directory)."""
        if full:
            dirs = None
        else:
            dirs = set()
            for rel in self.touched:
                dirs.add(os.path.dirname(rel))
                dirs.add(rel)
        self.touched = []
        nroot = self.roots[1]
        for dp, dns, fns in os.walk(nroot):
            rel = os.path.relpath(dp, nroot)
            rel = "" if rel == "." else rel
            if dirs is None or rel in dirs:
                lm = sorted(os.listdir(self.p(0, rel)))
                ln = sorted(dns + fns)
                if lm != ln:
                    self.fail(f"listing of {rel or '/'!r}: mount {lm}, native {ln}")
            for name in dns + fns:
                r = os.path.join(rel, name)
                try:
                    sm = os.lstat(self.p(0, r))
                except OSError as e:
                    self.fail(f"lstat {r!r} on the mount: {errno_name(e.errno)}; native has it")
                dm, dn = _desc(sm), _desc(os.lstat(self.p(1, r)))
                if dm != dn:
                    self.fail(f"lstat {r!r}: mount {dm}, native {dn}")
        for i, (rel, fm, fn, _) in enumerate(self.fds):
            sm, sn = os.fstat(fm), os.fstat(fn)
            if (sm.st_size, sm.st_nlink) != (sn.st_size, sn.st_nlink):
                self.fail(f"fstat of open fd#{i} ({rel!r}): mount size={sm.st_size} "
                          f"nlink={sm.st_nlink}, native size={sn.st_size} nlink={sn.st_nlink}")

    def check_contents(self):
        a = tree_snapshot(self.roots[0])
        b = tree_snapshot(self.roots[1])
        if a != b:
            self.fail("trees differ:\n" + "\n".join(diff_snapshots(a, b)))
        for i, (rel, fm, fn, _) in enumerate(self.fds):
            size = os.fstat(fn).st_size
            if os.pread(fm, size + 10, 0) != os.pread(fn, size + 10, 0):
                self.fail(f"content of open fd#{i} ({rel!r}) differs")

    def close_all(self):
        while self.fds:
            rel, fm, fn, _ = self.fds.pop()
            self.log.append(f"{self.step}: final close ({rel!r})")
            self.both("close", lambda s: os.close((fm, fn)[s]))

    def run(self, steps: int, content_every: int = 100, listing_every: int = 10):
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        for self.step in range(steps):
            op = self.rng.choices(names, weights)[0]
            getattr(self, "op_" + op)()
            self.check_metadata(full=self.step % listing_every == 0)
            if self.step % content_every == content_every - 1:
                self.check_contents()


def _desc(st):
    mode = stat.S_IFMT(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return ("link", st.st_size)
    if stat.S_ISDIR(st.st_mode):
        return ("dir", oct(stat.S_IMODE(st.st_mode)), st.st_nlink)
    return (oct(mode), oct(stat.S_IMODE(st.st_mode)), st.st_size, st.st_nlink)


def _short(v):
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    if isinstance(v, tuple):
        return "(" + ", ".join(_short(x) for x in v) + ")"
    return repr(v)


def _seed() -> int:
    env = os.environ.get("FSX_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 32)


@pytest.mark.timeout(600)
def test_fsx_lockstep_then_remount(mount_env):
    seed = _seed()
    steps = int(os.environ.get("FSX_STEPS", "3000"))
    print(f"\nFSX_SEED={seed} steps={steps}")
    mount = mount_env.mount
    mroot = str(mount.path / "fsx")
    nroot = str(mount_env.native / "fsx")
    os.mkdir(mroot)
    os.mkdir(nroot)
    fsx = Fsx(seed, mroot, nroot)
    t0 = time.monotonic()
    try:
        fsx.run(steps)
        fsx.close_all()
        fsx.check_metadata()
        fsx.check_contents()
    except Mismatch:
        raise
    except Exception as e:
        raise AssertionError(f"FSX_SEED={seed} step {fsx.step}: {type(e).__name__}: {e}\n"
                             f"--- last operations:\n" + "\n".join(fsx.log[-25:]) +
                             f"\n--- daemon.log:\n{mount.log_tail()}") from e
    elapsed = time.monotonic() - t0
    print(f"{steps} steps in {elapsed:.1f} s; ops: {sorted(fsx.counts.items())}")
    # every kind of operation really ran
    for name in ("pwrite", "pread", "truncate", "rename", "link", "unlink", "mkdir", "rmdir",
                 "fsync", "open", "close", "read"):
        assert fsx.counts.get(name, 0) > 0, f"operation {name} never ran (seed {seed})"

    before = tree_snapshot(mroot, times=True)
    want = tree_snapshot(nroot)
    assert len(want) > 0, f"FSX_SEED={seed}: the final tree is empty; the test proves little"
    mount.stop()
    mount.start()
    after = tree_snapshot(mroot, times=True)
    assert after == before, (f"FSX_SEED={seed}: the tree changed across unmount+remount:\n" +
                             "\n".join(diff_snapshots(after, before, ("after", "before"))))
    got = tree_snapshot(mroot)
    assert got == want, (f"FSX_SEED={seed}: after remount, mount != native:\n" +
                         "\n".join(diff_snapshots(got, want)))
    print(f"final tree: {len(want)} entries; remount compare ok")
