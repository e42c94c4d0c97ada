"""Helpers and fixtures for the tests that mount the real filesystem.

Import from test files with `from mountlib import mounted, Mount, ...` (the fixtures become
available to the module that imports them).

Every mount made here is torn down at the end of its test, even when the test failed: first
`mlxfs unmount`, then `fusermount3 -u`, then `umount -l` as a last resort; a daemon still alive
after that is killed.

Environment:
  MLXFS_BIN           the mlxfs binary (default: <repo>/target/release/mlxfs)
  MLXFS_KEEP_FAILED   1: keep the temp dir (store, daemon.log) of a failed test
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import mmap
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CMD_TIMEOUT = 120

NOBODY_UID = 65534
NOBODY_GID = 65534


def mlxfs_binary() -> Path:
    env = os.environ.get("MLXFS_BIN")
    if not env:
        return REPO_ROOT / "target" / "release" / "mlxfs"
    p = Path(env)
    if not p.is_absolute() and not p.exists():
        p = REPO_ROOT / p
    return p.resolve()


def _clip(b: bytes | str, n: int = 4000) -> str:
    s = b.decode("utf-8", "replace") if isinstance(b, bytes) else b
    return s if len(s) <= n else s[:n] + f"... [{len(s) - n} more chars]"


def is_mountpoint(path: Path | str) -> bool:
    """True when `path` is a mount point in /proc/self/mountinfo (works for stale FUSE mounts,
    where stat() fails with ENOTCONN)."""
    target = os.path.realpath(str(path))
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4:
                    mp = fields[4].encode().decode("unicode_escape")
                    if mp == target:
                        return True
    except OSError:
        pass
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def wait_until(pred, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def sandbox_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLXFS_STORE", None)
    env.update({
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "RUST_BACKTRACE": "1",
    })
    (home / "run").mkdir(mode=0o700, parents=True, exist_ok=True)
    return env


class Mount:
    """One store mounted at one mountpoint by `mlxfs mount --daemon`."""

    def __init__(self, binary: Path, store: Path, mountpoint: Path, env: dict[str, str],
                 allow_other: bool = False):
        self.binary = Path(binary)
        self.store = Path(store)
        self.mountpoint = Path(mountpoint)
        self.env = env
        self.allow_other = allow_other
        self.pid: int | None = None
        self.mount_count = 0
        # More `mlxfs mount` flags for the next start (e.g. ["--verify-reads"]).
        self.extra_args: list[str] = []

    # -- running the CLI ----------------------------------------------------------------------

    def cli(self, *args, expect: int | None = 0, timeout: float = CMD_TIMEOUT
            ) -> subprocess.CompletedProcess:
        cmd = [str(self.binary), "--store", str(self.store), *[str(a) for a in args]]
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                           env=self.env)
        if expect is not None:
            assert p.returncode == expect, (
                f"`{' '.join(cmd)}` exited {p.returncode}, expected {expect}\n"
                f"--- stdout:\n{_clip(p.stdout)}\n--- stderr:\n{_clip(p.stderr)}\n"
                f"--- daemon.log (tail):\n{self.log_tail()}")
        return p

    def log_tail(self, n: int = 3000) -> str:
        try:
            data = (self.store / "daemon.log").read_bytes()
        except OSError:
            return "(no daemon.log)"
        return _clip(data[-n:], n)

    def daemon_record(self) -> dict:
        return json.loads((self.store / "daemon.json").read_text())

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.mountpoint

    def __truediv__(self, other) -> Path:
        return self.mountpoint / other

    @property
    def mounted(self) -> bool:
        return is_mountpoint(self.mountpoint)

    def start(self) -> "Mount":
        args = ["mount", str(self.mountpoint), "--daemon"]
        if self.allow_other:
            args.append("--allow-other")
        args.extend(self.extra_args)
        self.cli(*args)
        assert self.mounted, f"`mlxfs mount --daemon` exited 0 but {self.mountpoint} is not a " \
                             f"mount point\n{self.log_tail()}"
        rec = self.daemon_record()
        self.pid = int(rec["pid"])
        assert pid_alive(self.pid), f"daemon.json names pid {self.pid}, which is not running"
        self.mount_count += 1
        return self

    def stop(self) -> None:
        """Clean unmount through the CLI; asserts that it worked and the daemon is gone."""
        self.cli("unmount", str(self.mountpoint))
        assert not self.mounted, f"{self.mountpoint} still mounted after `mlxfs unmount`"
        if self.pid is not None:
            assert wait_until(lambda: not pid_alive(self.pid), 30), \
                f"daemon pid {self.pid} still running 30 s after `mlxfs unmount`"
        self.pid = None

    def kill9(self) -> None:
        """SIGKILL the daemon and wait for it to die; the mountpoint is left stale."""
        pid = self.pid if self.pid is not None else int(self.daemon_record()["pid"])
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid), 30), f"daemon {pid} survived SIGKILL"
        self.pid = None

    def remount(self) -> "Mount":
        if self.mounted and self.pid is not None:
            self.stop()
        return self.start()

    def verify(self) -> subprocess.CompletedProcess:
        return self.cli("verify", expect=None, timeout=600)

    def cleanup(self) -> None:
        """Best effort, never raises: leave no mount and no daemon behind."""
        pid = self.pid
        if pid is None:
            try:
                pid = int(self.daemon_record()["pid"])
            except Exception:
                pid = None
        if self.mounted:
            try:
                self.cli("unmount", str(self.mountpoint), expect=None, timeout=60)
            except Exception:
                pass
        for cmd in (["fusermount3", "-u", str(self.mountpoint)],
                    ["fusermount", "-u", str(self.mountpoint)],
                    ["umount", str(self.mountpoint)],
                    ["umount", "-l", str(self.mountpoint)]):
            if not self.mounted:
                break
            try:
                subprocess.run(cmd, capture_output=True, timeout=30)
            except Exception:
                pass
        if pid is not None and pid_alive(pid):
            if not wait_until(lambda: not pid_alive(pid), 10):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                wait_until(lambda: not pid_alive(pid), 10)
        self.pid = None


class MountEnv:
    """A fresh store, mountpoint and native twin directory under one world-traversable base."""

    def __init__(self, allow_other: bool = False):
        # Under /tmp with mode 0755 so a non-root uid can reach the mountpoint and the twin
        # (pytest's tmp_path lives in a 0700 directory).
        self.base = Path(tempfile.mkdtemp(prefix="mlxfs-mt-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        self.store = self.base / "store"
        self.mnt_dir = self.base / "mnt"
        self.native = self.base / "native"
        self.native.mkdir()
        os.chmod(self.native, 0o755)
        env = sandbox_env(self.base / "home")
        self.mount = Mount(mlxfs_binary(), self.store, self.mnt_dir, env, allow_other)

    def close(self, keep: bool = False) -> None:
        self.mount.cleanup()
        if not keep and not self.mount.mounted:
            shutil.rmtree(self.base, ignore_errors=True)


def _require_binary():
    b = mlxfs_binary()
    if not (b.is_file() and os.access(b, os.X_OK)):
        pytest.fail(f"mlxfs binary not found at {b}: run `cargo build --release -p mlxfs` "
                    f"or set MLXFS_BIN")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing")


def _make_env(request, allow_other: bool):
    _require_binary()
    me = MountEnv(allow_other=allow_other)
    try:
        me.mount.start()
    except BaseException:
        me.close(keep=True)
        raise
    return me


def _finish(request, me: MountEnv, failed_before: int):
    # With MLXFS_KEEP_FAILED=1 the store of a failed test is kept for inspection (the mount
    # itself is always removed). A test's failure is counted before its teardown runs.
    failed = request.session.testsfailed > failed_before
    keep = failed and os.environ.get("MLXFS_KEEP_FAILED") == "1"
    if keep:
        print(f"\nkeeping {me.base} (store, daemon.log) of the failed test")
    me.close(keep=keep)


@pytest.fixture
def mount_env(request):
    """MountEnv with the filesystem mounted (not allow_other)."""
    before = request.session.testsfailed
    me = _make_env(request, allow_other=False)
    yield me
    _finish(request, me, before)


@pytest.fixture
def mount_env_other(request):
    """MountEnv mounted with --allow-other (for tests that act as a non-root uid)."""
    before = request.session.testsfailed
    me = _make_env(request, allow_other=True)
    yield me
    _finish(request, me, before)


@pytest.fixture
def mounted(mount_env) -> Mount:
    """A Mount of a fresh store on a fresh mountpoint; unmounted at teardown whatever happens."""
    return mount_env.mount


@pytest.fixture
def native(mount_env) -> Path:
    """A plain directory on the native disk, the twin of `mounted` for comparisons."""
    return mount_env.native


# ---------------------------------------------------------------------------------------------
# Syscalls Python does not wrap


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4


def renameat2(old: str | Path, new: str | Path, flags: int) -> None:
    """renameat2(2); raises OSError with the errno."""
    f = getattr(_libc, "renameat2", None)
    o, n = os.fsencode(str(old)), os.fsencode(str(new))
    if f is not None:
        f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        r = f(AT_FDCWD, o, AT_FDCWD, n, flags)
    else:  # glibc < 2.28: raw syscall (x86_64: 316, aarch64: 276)
        import platform
        nr = {"x86_64": 316, "aarch64": 276}[platform.machine()]
        sc = _libc.syscall
        sc.restype = ctypes.c_long
        r = sc(ctypes.c_long(nr), ctypes.c_int(AT_FDCWD), o, ctypes.c_int(AT_FDCWD), n,
               ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"renameat2({old!r}, {new!r}, {flags}): {os.strerror(e)}")


# ---------------------------------------------------------------------------------------------
# Running code as another uid


def as_user(fn, uid: int = NOBODY_UID, gid: int = NOBODY_GID, timeout: float = 30.0):
    """Run fn() in a forked child with the given uid/gid and no supplementary groups.

    Returns ["ok", value] with value a JSON-able result of fn, or ["err", errno] when fn raised
    OSError, or ["exc", text] for any other exception."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            try:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                try:
                    res = ("ok", fn())
                except OSError as e:
                    res = ("err", e.errno)
                except BaseException as e:  # noqa: BLE001
                    res = ("exc", f"{type(e).__name__}: {e}")
                data = json.dumps(res).encode()
            except BaseException as e:  # noqa: BLE001
                data = json.dumps(("exc", f"setup: {e}")).encode()
            os.write(w, data)
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    end = time.monotonic() + timeout
    try:
        while True:
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
            if time.monotonic() > end:
                break
    finally:
        os.close(r)
    os.waitpid(pid, 0)
    raw = b"".join(chunks)
    if not raw:
        return ["exc", "child wrote nothing"]
    kind, val = json.loads(raw)
    return [kind, val]


def errno_name(e: int | None) -> str:
    if e is None:
        return "success"
    return errno.errorcode.get(e, str(e))


def call(fn, *a, **kw):
    """(result, None) or (None, errno)."""
    try:
        return fn(*a, **kw), None
    except OSError as e:
        return None, e.errno


def expect_errno(expected: int | tuple[int, ...], fn, *a, **kw) -> int:
    """Assert fn(*a) raises OSError with one of the expected errnos; return it."""
    exp = expected if isinstance(expected, tuple) else (expected,)
    try:
        res = fn(*a, **kw)
    except OSError as e:
        assert e.errno in exp, (f"{getattr(fn, '__name__', fn)}{a}: errno {errno_name(e.errno)}, "
                                f"expected {'/'.join(errno_name(x) for x in exp)}")
        return e.errno
    raise AssertionError(f"{getattr(fn, '__name__', fn)}{a} succeeded (returned {res!r}), "
                         f"expected {'/'.join(errno_name(x) for x in exp)}")


# ---------------------------------------------------------------------------------------------
# Content helpers


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_file(path: Path | str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_file(path: Path | str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def tree_snapshot(root: Path | str, content: bool = True, times: bool = False) -> dict:
    """{relative path: description} for everything under root (root itself excluded).

    Files: kind, mode, size, nlink, sha256 (if content); dirs: mode, nlink, sorted listing;
    symlinks: target. Inode numbers are replaced by the first path seen with that inode, so hard
    links can be compared across two different filesystems."""
    root = str(root)
    out: dict[str, dict] = {}
    first_name: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            d: dict = {"mode": oct(stat.S_IMODE(st.st_mode))}
            if stat.S_ISLNK(st.st_mode):
                d["kind"] = "symlink"
                d["target"] = os.readlink(p)
                del d["mode"]
            elif stat.S_ISDIR(st.st_mode):
                d["kind"] = "dir"
                d["nlink"] = st.st_nlink
                d["list"] = sorted(os.listdir(p))
            elif stat.S_ISREG(st.st_mode):
                d["kind"] = "file"
                d["size"] = st.st_size
                d["nlink"] = st.st_nlink
                d["same_as"] = first_name.setdefault(st.st_ino, rel)
                if content:
                    d["sha256"] = sha256_file(p)
            else:
                d["kind"] = f"other:{stat.S_IFMT(st.st_mode):o}"
            if times and d["kind"] != "symlink":
                d["mtime_ns"] = st.st_mtime_ns
            out[rel] = d
    return out


def diff_snapshots(a: dict, b: dict, names=("mount", "native"), limit: int = 30) -> list[str]:
    lines = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            lines.append(f"{k}: missing in {names[0]}; {names[1]} has {b[k]}")
        elif k not in b:
            lines.append(f"{k}: missing in {names[1]}; {names[0]} has {a[k]}")
        elif a[k] != b[k]:
            lines.append(f"{k}: {names[0]} {a[k]} != {names[1]} {b[k]}")
        if len(lines) >= limit:
            lines.append("...")
            break
    return lines


UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
AT_SYMLINK_NOFOLLOW = 0x100


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path: str | Path, atime: tuple[int, int], mtime: tuple[int, int],
              flags: int = 0) -> None:
    """utimensat(2) with (sec, nsec) pairs; nsec may be UTIME_NOW or UTIME_OMIT."""
    f = _libc.utimensat
    f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
    ts = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    if f(AT_FDCWD, os.fsencode(str(path)), ts, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"utimensat({path!r}): {os.strerror(e)}")


def resident_fraction(path: Path) -> float:
    """Fraction of the file's pages in the page cache (mmap + mincore; reads nothing)."""
    size = os.stat(path).st_size
    page = mmap.PAGESIZE
    npages = -(-size // page)
    mm_ = _libc.mmap
    mm_.restype = ctypes.c_void_p
    mm_.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                    ctypes.c_long]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = mm_(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            e = ctypes.get_errno()
            raise OSError(e, f"mmap {path}: {os.strerror(e)}")
        try:
            vec = (ctypes.c_ubyte * npages)()
            _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
            if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"mincore {path}: {os.strerror(e)}")
            return sum(1 for v in vec if v & 1) / npages
        finally:
            _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            _libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
    finally:
        os.close(fd)


def resident_bytes_under(root: Path) -> int:
    """Page-cache bytes of all regular files under root (for the diagnostic message)."""
    total = 0
    for dp, _, fns in os.walk(root):
        for fn in fns:
            p = Path(dp) / fn
            try:
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                    total += int(resident_fraction(p) * st.st_size)
            except OSError:
                pass
    return total
