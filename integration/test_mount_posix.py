"""POSIX conformance of the mounted filesystem, in the spirit of pjdfstest.

For each operation: the errno of the failure cases and the resulting attributes (size, mode,
nlink, owner, times), and permission denials for a non-root uid. Where the expected outcome is
simply "what ext4 does", the same operation runs on a native directory and the results are
compared.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import (  # noqa: E402,F401  (fixtures are used by name)
    NOBODY_GID, NOBODY_UID, RENAME_EXCHANGE, RENAME_NOREPLACE, UTIME_NOW, UTIME_OMIT, as_user,
    call, errno_name, expect_errno, mount_env, mount_env_other, mounted, native, read_file,
    renameat2, utimensat, write_file,
)

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, setuid to nobody)"),
]


@pytest.fixture(autouse=True)
def _umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def tw(mount_env):
    """(mount dir, native dir): the same empty directory `t` in the mount and on the disk."""
    m = mount_env.mount.path / "t"
    n = mount_env.native / "t"
    os.mkdir(m)
    os.mkdir(n)
    return m, n


@pytest.fixture
def m(tw):
    return tw[0]


@pytest.fixture
def other(mount_env_other):
    """(mount dir, native dir), mounted with --allow-other; both dirs 0777 so uid 65534 can work
    in them."""
    me = mount_env_other
    mdir = me.mount.path / "t"
    ndir = me.native / "t"
    for d in (mdir, ndir):
        os.mkdir(d)
        os.chmod(d, 0o777)
    return mdir, ndir


def both(tw, fn):
    """Run fn(root) on the mount and on the native twin; return both (result, errno) pairs."""
    return call(fn, tw[0]), call(fn, tw[1])


def assert_same(tw, fn, what=""):
    got, want = both(tw, fn)
    assert got == want, f"{what or fn.__name__}: mount gave {_fmt(got)}, native gave {_fmt(want)}"
    return got


def _fmt(r):
    res, e = r
    return f"errno {errno_name(e)}" if e is not None else f"{res!r}"


def mode_of(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


def tick():
    """Sleep long enough for a coarse (jiffy-based) timestamp to advance."""
    time.sleep(0.02)


# ------------------------------------------------------------------------------------------------
# open / creat


def test_creat_excl(tw):
    def f(root):
        p = root / "a"
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
        os.close(fd)
        st = os.stat(p)
        res = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, st.st_nlink,
               st.st_uid, st.st_gid]
        res.append(call(os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)[1])
        os.symlink("dangling", root / "l")
        res.append(call(os.open, root / "l", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)[1])
        # plain O_CREAT through a dangling symlink creates the target
        fd = os.open(root / "l", os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
        res.append(stat.S_IMODE(os.stat(root / "dangling").st_mode))
        return res

    got = assert_same(tw, f)
    assert got[0][:6] == [stat.S_IFREG, 0o640, 0, 1, 0, 0]
    assert got[0][6] == errno.EEXIST and got[0][7] == errno.EEXIST


def test_creat_mode_umask(m):
    old = os.umask(0o027)
    try:
        fd = os.open(m / "f", os.O_CREAT | os.O_WRONLY, 0o777)
        os.close(fd)
        os.mkdir(m / "d", 0o777)
    finally:
        os.umask(old)
    assert mode_of(m / "f") == 0o750
    assert mode_of(m / "d") == 0o750


def test_open_errors(tw):
    def f(root):
        write_file(root / "file", b"x")
        os.mkdir(root / "dir")
        return [
            call(os.open, root / "nope", os.O_RDONLY)[1],
            call(os.open, root / "file" / "x", os.O_RDONLY)[1],
            call(os.open, root / "file" / "x", os.O_CREAT | os.O_WRONLY, 0o644)[1],
            call(os.open, root / "file", os.O_RDONLY | os.O_DIRECTORY)[1],
            call(os.open, root / "dir", os.O_WRONLY)[1],
            call(os.open, root / "dir", os.O_RDWR)[1],
            call(os.open, root / "nodir" / "x", os.O_CREAT | os.O_WRONLY, 0o644)[1],
        ]

    got = assert_same(tw, f)
    assert got[0] == [errno.ENOENT, errno.ENOTDIR, errno.ENOTDIR, errno.ENOTDIR, errno.EISDIR,
                      errno.EISDIR, errno.ENOENT]


def test_o_trunc(m):
    p = m / "f"
    write_file(p, b"x" * 100000)
    st0 = os.stat(p)
    tick()
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    st1 = os.stat(p)
    assert st1.st_size == 0
    assert st1.st_ino == st0.st_ino
    assert st1.st_mtime_ns > st0.st_mtime_ns, "O_TRUNC did not update mtime"
    assert st1.st_ctime_ns > st0.st_ctime_ns, "O_TRUNC did not update ctime"
    assert read_file(p) == b""
    # O_TRUNC on an empty file, then write again: no old bytes come back
    fd = os.open(p, os.O_RDWR | os.O_TRUNC)
    os.pwrite(fd, b"ab", 99998)
    os.close(fd)
    assert read_file(p) == b"\0" * 99998 + b"ab"


def test_o_append(m):
    p = m / "f"
    write_file(p, b"hello")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    assert os.write(fd, b" world") == 6
    fd2 = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(fd2, b"!")
    os.write(fd, b"?")
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    os.close(fd)
    os.close(fd2)
    assert read_file(p) == b"hello world!?"
    assert pos == 13
    assert os.stat(p).st_size == 13


def test_read_write_pread_pwrite(m):
    p = m / "f"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.write(fd, b"0123456789") == 10
        assert os.pread(fd, 4, 3) == b"3456"
        assert os.pwrite(fd, b"AB", 4) == 2
        assert os.lseek(fd, 0, os.SEEK_CUR) == 10, "pwrite moved the file offset"
        assert os.pread(fd, 100, 0) == b"0123AB6789"
        assert os.pread(fd, 10, 10) == b""
        assert os.pread(fd, 10, 1 << 40) == b""
        # pwrite past EOF: a hole of zeros
        assert os.pwrite(fd, b"Z", 100) == 1
        assert os.fstat(fd).st_size == 101
        assert os.pread(fd, 200, 0) == b"0123AB6789" + b"\0" * 90 + b"Z"
        os.lseek(fd, 0, os.SEEK_SET)
        assert os.read(fd, 3) == b"012"
        assert os.read(fd, 3) == b"3AB"
        os.lseek(fd, 0, os.SEEK_END)
        os.write(fd, b"end")
        # a big write crossing the 1 MiB request size
        big = os.urandom(3 * 1024 * 1024 + 123)
        assert os.pwrite(fd, big, 5000) == len(big)
        assert os.pread(fd, len(big), 5000) == big
        os.fsync(fd)
    finally:
        os.close(fd)
    data = read_file(p)
    assert len(data) == 5000 + len(big)
    assert data[:10] == b"0123AB6789" and data[100:104] == b"Zend" and data[5000:] == big
    assert data[104:5000] == b"\0" * (5000 - 104)


def test_write_visible_to_other_fd_before_close(m):
    p = m / "f"
    w = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    r = os.open(p, os.O_RDONLY)
    try:
        os.write(w, b"abc")
        assert os.pread(r, 10, 0) == b"abc"
        assert os.stat(p).st_size == 3
        os.pwrite(w, b"X", 1)
        assert os.pread(r, 10, 0) == b"aXc"
    finally:
        os.close(w)
        os.close(r)


# ------------------------------------------------------------------------------------------------
# truncate


def test_truncate_up_down(m):
    p = m / "f"
    data = os.urandom(200_000)
    write_file(p, data)
    os.truncate(p, 1_000_000)  # up: sparse zeros
    assert os.stat(p).st_size == 1_000_000
    got = read_file(p)
    assert got[:200_000] == data and got[200_000:] == b"\0" * 800_000
    os.truncate(p, 1000)  # down
    assert os.stat(p).st_size == 1000
    assert read_file(p) == data[:1000]
    os.truncate(p, 5000)  # up again: the cut bytes must not come back
    assert read_file(p) == data[:1000] + b"\0" * 4000
    os.truncate(p, 0)
    assert read_file(p) == b"" and os.stat(p).st_size == 0


def test_ftruncate_open_fd(m):
    p = m / "f"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"a" * 10000)
        os.ftruncate(fd, 10)
        assert os.fstat(fd).st_size == 10
        os.pwrite(fd, b"b", 20)
        assert os.pread(fd, 100, 0) == b"a" * 10 + b"\0" * 10 + b"b"
        os.ftruncate(fd, 3 << 20)
        assert os.fstat(fd).st_size == 3 << 20
    finally:
        os.close(fd)
    d = read_file(p)
    assert d[:21] == b"a" * 10 + b"\0" * 10 + b"b" and d[21:] == b"\0" * ((3 << 20) - 21)


def test_truncate_times_and_errors(tw):
    m_, _ = tw
    p = m_ / "f"
    write_file(p, b"abc")
    st0 = os.stat(p)
    tick()
    os.truncate(p, 1)
    st1 = os.stat(p)
    assert st1.st_mtime_ns > st0.st_mtime_ns and st1.st_ctime_ns > st0.st_ctime_ns

    def f(root):
        os.mkdir(root / "d")
        return [call(os.truncate, root / "d", 0)[1], call(os.truncate, root / "nope", 0)[1],
                call(os.truncate, root / "d" / "x" / "y", 0)[1]]

    got = assert_same(tw, f)
    assert got[0] == [errno.EISDIR, errno.ENOENT, errno.ENOENT]


# ------------------------------------------------------------------------------------------------
# chmod / chown


def test_chmod(tw):
    def f(root):
        write_file(root / "f", b"x")
        os.mkdir(root / "d")
        out = []
        for mode in (0o000, 0o4755, 0o2750, 0o1777, 0o644, 0o7777):
            os.chmod(root / "f", mode)
            out.append(oct(mode_of(root / "f")))
            os.chmod(root / "d", mode)
            out.append(oct(mode_of(root / "d")))
        out.append(call(os.chmod, root / "nope", 0o644)[1])
        return out

    got = assert_same(tw, f)
    assert got[0][0] == "0o0" and got[0][2] == "0o4755"


def test_chmod_ctime(m):
    p = m / "f"
    write_file(p, b"x")
    st0 = os.stat(p)
    tick()
    os.chmod(p, 0o600)
    st1 = os.stat(p)
    assert stat.S_IMODE(st1.st_mode) == 0o600
    assert st1.st_ctime_ns > st0.st_ctime_ns, "chmod did not update ctime"
    assert st1.st_mtime_ns == st0.st_mtime_ns, "chmod changed mtime"


def test_chown_root(tw):
    def f(root):
        write_file(root / "f", b"x")
        os.chown(root / "f", 1234, 5678)
        st = os.stat(root / "f")
        out = [st.st_uid, st.st_gid]
        os.chown(root / "f", -1, 42)
        st = os.stat(root / "f")
        out += [st.st_uid, st.st_gid]
        os.chown(root / "f", 7, -1)
        st = os.stat(root / "f")
        out += [st.st_uid, st.st_gid]
        # chown of a setuid/setgid executable clears those bits (as ext4 does)
        os.chmod(root / "f", 0o6755)
        os.chown(root / "f", 8, 9)
        out.append(oct(mode_of(root / "f")))
        os.symlink("f", root / "l")
        os.lchown(root / "l", 11, 12)
        st = os.lstat(root / "l")
        out += [st.st_uid, st.st_gid, os.stat(root / "f").st_uid]
        return out

    got = assert_same(tw, f)
    assert got[0][:6] == [1234, 5678, 1234, 42, 7, 42]


def test_chown_ctime(m):
    p = m / "f"
    write_file(p, b"x")
    st0 = os.stat(p)
    tick()
    os.chown(p, 1, 1)
    st1 = os.stat(p)
    assert (st1.st_uid, st1.st_gid) == (1, 1)
    assert st1.st_ctime_ns > st0.st_ctime_ns


def test_chown_chmod_denied_nonroot(other):
    mdir, ndir = other
    for d in (mdir, ndir):
        write_file(d / "mine", b"x")
        os.chown(d / "mine", NOBODY_UID, NOBODY_GID)
        write_file(d / "roots", b"x")

    def f(d):
        def child():
            return [call(os.chown, str(d / "mine"), 0, -1)[1],          # give away: EPERM
                    call(os.chown, str(d / "mine"), -1, 0)[1],          # not in group 0: EPERM
                    call(os.chown, str(d / "mine"), NOBODY_UID, NOBODY_GID)[1],  # no-op: ok
                    call(os.chown, str(d / "roots"), NOBODY_UID, -1)[1],  # not owner: EPERM
                    call(os.chmod, str(d / "roots"), 0o777)[1],          # not owner: EPERM
                    call(os.chmod, str(d / "mine"), 0o600)[1]]           # owner: ok
        return as_user(child)

    got, want = f(mdir), f(ndir)
    assert got == want, f"non-root chown/chmod: mount {got}, native {want}"
    assert got == ["ok", [errno.EPERM, errno.EPERM, None, errno.EPERM, errno.EPERM, None]]
    st = os.stat(mdir / "mine")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY_UID, NOBODY_GID, 0o600)
    st = os.stat(mdir / "roots")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)


# ------------------------------------------------------------------------------------------------
# utimensat


def test_utimensat_explicit(m):
    p = m / "f"
    write_file(p, b"x")
    os.utime(p, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(p)
    assert st.st_atime_ns == 1_000_000_123
    assert st.st_mtime_ns == 2_000_000_456
    os.utime(p, ns=(-5_000_000_000, 4_102_444_800_000_000_001))  # before 1970, after 2100
    st = os.stat(p)
    assert st.st_atime_ns == -5_000_000_000
    assert st.st_mtime_ns == 4_102_444_800_000_000_001


def test_utimensat_now_omit(m):
    p = m / "f"
    write_file(p, b"x")
    utimensat(p, (100, 1), (200, 2))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (100_000_000_001, 200_000_000_002)
    c0 = st.st_ctime_ns
    tick()
    # UTIME_OMIT for atime, explicit mtime
    utimensat(p, (0, UTIME_OMIT), (300, 3))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (100_000_000_001, 300_000_000_003)
    assert st.st_ctime_ns > c0, "utimensat did not update ctime"
    # UTIME_NOW for mtime, UTIME_OMIT for atime
    before = time.time_ns()
    utimensat(p, (0, UTIME_OMIT), (0, UTIME_NOW))
    after = time.time_ns()
    st = os.stat(p)
    assert st.st_atime_ns == 100_000_000_001
    assert before - 10_000_000 <= st.st_mtime_ns <= after + 10_000_000, \
        f"UTIME_NOW set mtime {st.st_mtime_ns}, not in [{before}, {after}]"
    # both OMIT: nothing changes
    m0 = st.st_mtime_ns
    utimensat(p, (0, UTIME_OMIT), (0, UTIME_OMIT))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (100_000_000_001, m0)
    # UTIME_NOW for both (as touch does)
    before = time.time_ns()
    os.utime(p)
    st = os.stat(p)
    assert st.st_atime_ns >= before - 10_000_000 and st.st_mtime_ns >= before - 10_000_000
    # on a directory and with AT_SYMLINK_NOFOLLOW on a symlink
    os.mkdir(m / "d")
    utimensat(m / "d", (5, 0), (6, 0))
    st = os.stat(m / "d")
    assert (st.st_atime_ns, st.st_mtime_ns) == (5_000_000_000, 6_000_000_000)


def test_utimensat_nonroot(other):
    mdir, ndir = other

    def f(d):
        write_file(d / "roots", b"x")
        os.chmod(d / "roots", 0o666)
        write_file(d / "ro", b"x")

        def child():
            return [
                # UTIME_NOW needs only write permission
                call(utimensat, str(d / "roots"), (0, UTIME_NOW), (0, UTIME_NOW))[1],
                # explicit times need ownership
                call(utimensat, str(d / "roots"), (1, 0), (1, 0))[1],
                # UTIME_NOW without write permission and not owner
                call(utimensat, str(d / "ro"), (0, UTIME_NOW), (0, UTIME_NOW))[1],
            ]
        return as_user(child)

    got, want = f(mdir), f(ndir)
    assert got == want, f"mount {got}, native {want}"
    assert got == ["ok", [None, errno.EPERM, errno.EACCES]]


# ------------------------------------------------------------------------------------------------
# mkdir / rmdir


def test_mkdir_rmdir(tw):
    def f(root):
        out = []
        os.mkdir(root / "d", 0o751)
        out.append(oct(mode_of(root / "d")))
        st = os.stat(root / "d")
        out += [stat.S_ISDIR(st.st_mode), st.st_nlink]
        out.append(call(os.mkdir, root / "d")[1])
        write_file(root / "d" / "f", b"x")
        out.append(call(os.rmdir, root / "d")[1])
        out.append(call(os.rmdir, root / "d" / "f")[1])
        out.append(call(os.rmdir, root / "nope")[1])
        out.append(call(os.mkdir, root / "d" / "f" / "x")[1])
        out.append(call(os.mkdir, root / "nope" / "x")[1])
        out.append(call(os.rmdir, str(root / "d") + "/.")[1])
        os.unlink(root / "d" / "f")
        os.rmdir(root / "d")
        out.append(os.path.exists(root / "d"))
        out.append(sorted(os.listdir(root)))
        return out

    got = assert_same(tw, f)
    assert got[0] == ["0o751", True, 2, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR,
                      errno.ENOENT, errno.ENOTDIR, errno.ENOENT, errno.EINVAL, False, []]


def test_dir_nlink(m):
    d = m / "d"
    os.mkdir(d)
    assert os.stat(d).st_nlink == 2
    for i in range(5):
        os.mkdir(d / f"s{i}")
        assert os.stat(d).st_nlink == 3 + i, f"after {i + 1} subdirs"
    write_file(d / "file", b"x")
    os.symlink("x", d / "link")
    assert os.stat(d).st_nlink == 7, "files and symlinks must not count in a dir's nlink"
    os.rmdir(d / "s0")
    assert os.stat(d).st_nlink == 6
    os.rename(d / "s1", m / "s1")
    assert os.stat(d).st_nlink == 5
    assert os.stat(m).st_nlink == 4  # t: 2 + d + s1
    os.rename(m / "s1", d / "s2" / "s1")
    assert os.stat(m).st_nlink == 3
    assert os.stat(d / "s2").st_nlink == 3


def test_dir_mtime_on_entry_change(m):
    d = m / "d"
    os.mkdir(d)
    os.utime(d, ns=(1_000_000_000, 1_000_000_000))
    write_file(d / "f", b"x")
    st = os.stat(d)
    assert st.st_mtime_ns > 1_000_000_000, "creating an entry did not update the dir's mtime"
    for op in (lambda: os.rename(d / "f", d / "g"), lambda: os.link(d / "g", d / "h"),
               lambda: os.unlink(d / "h"), lambda: os.mkdir(d / "s"), lambda: os.rmdir(d / "s"),
               lambda: os.symlink("g", d / "l")):
        os.utime(d, ns=(1_000_000_000, 1_000_000_000))
        op()
        st = os.stat(d)
        assert st.st_mtime_ns > 1_000_000_000 and st.st_ctime_ns > 1_000_000_000, \
            "an entry change did not update the dir's mtime/ctime"


# ------------------------------------------------------------------------------------------------
# unlink


def test_unlink(tw):
    def f(root):
        out = []
        os.mkdir(root / "d")
        out.append(call(os.unlink, root / "d")[1])
        out.append(call(os.unlink, root / "nope")[1])
        write_file(root / "f", b"x")
        out.append(call(os.unlink, root / "f" / "x")[1])
        os.link(root / "f", root / "g")
        os.unlink(root / "f")
        out.append(os.stat(root / "g").st_nlink)
        out.append(read_file(root / "g"))
        os.symlink("g", root / "l")
        os.unlink(root / "l")  # removes the link, not the target
        out.append(sorted(os.listdir(root)))
        return out

    got = assert_same(tw, f)
    assert got[0] == [errno.EISDIR, errno.ENOENT, errno.ENOTDIR, 1, b"x", ["d", "g"]]


def test_unlink_open_file_stays_usable(m):
    p = m / "f"
    write_file(p, b"hello")
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert not os.path.exists(p)
        assert os.pread(fd, 10, 0) == b"hello"
        os.pwrite(fd, b"J", 0)
        assert os.pread(fd, 10, 0) == b"Jello"
        assert os.fstat(fd).st_nlink == 0
        # a new file with the same name is a different file
        write_file(p, b"new")
        assert read_file(p) == b"new"
        assert os.pread(fd, 10, 0) == b"Jello"
    finally:
        os.close(fd)
    assert read_file(p) == b"new"
    assert os.listdir(m) == ["f"]


def test_a_path_resolved_before_its_name_was_replaced_still_opens(tw):
    """An O_PATH descriptor holds the inode its name had (no open reaches the file system);
    reopening it after a rename replaced the name, or after an unlink, opens that inode, as
    on a disk: the kernel still holds the inode, so the daemon keeps it until FORGET."""
    def f(root):
        out = []
        write_file(root / "f", b"old")
        write_file(root / "g", b"new")
        held = os.open(root / "f", os.O_PATH)
        try:
            os.rename(root / "g", root / "f")
            with open(f"/proc/self/fd/{held}", "rb") as r:
                out.append(r.read())
            os.unlink(root / "f")
            with open(f"/proc/self/fd/{held}", "rb") as r:
                out.append(r.read())
        finally:
            os.close(held)
        out.append(os.listdir(root))
        return out

    got = assert_same(tw, f)
    assert got[0] == [b"old", b"old", []]


def test_ioctls_answer_enotty_as_on_a_disk_file(mount_env, tw, m):
    """Python's open() asks every file it opens whether it is a terminal: the answer is
    ENOTTY, as from ext4, and the daemon logs nothing for it."""
    import fcntl
    import termios

    def f(root):
        write_file(root / "f", b"x")
        fd = os.open(root / "f", os.O_RDONLY)
        try:
            return fcntl.ioctl(fd, termios.TCGETS, bytes(64))
        finally:
            os.close(fd)

    got = assert_same(tw, f)
    assert got[1] == errno.ENOTTY
    for _ in range(3):
        with open(m / "f", "rb"):
            pass
    log = (mount_env.mount.store / "daemon.log").read_text(errors="replace")
    assert "ioctl" not in log, log[-2000:]


def test_an_unlinked_file_the_kernel_forgot_gives_its_space_back(mount_env):
    m = mount_env.mount
    p = m.path / "huggingface/hub/forgotten.bin"
    data = os.urandom(8 << 20)
    write_file(p, data)
    stored = json.loads(m.cli("status", "--json").stdout)["physical_bytes"]
    held = os.open(p, os.O_PATH)
    try:
        os.unlink(p)
        with open(f"/proc/self/fd/{held}", "rb") as r:
            assert r.read() == data
    finally:
        os.close(held)
    # The kernel sends FORGET once it evicts the inode (at once for an unlinked one); gc then
    # drops the chunks only that inode used.
    deadline = time.monotonic() + 20
    while True:
        m.cli("gc")
        now = json.loads(m.cli("status", "--json").stdout)["physical_bytes"]
        if now <= stored - len(data):
            break
        assert time.monotonic() < deadline, f"stored {stored} -> {now}: the inode was kept"
        time.sleep(0.5)


# ------------------------------------------------------------------------------------------------
# rename


def test_rename_files(tw):
    def f(root):
        out = []
        write_file(root / "a", b"A")
        write_file(root / "b", b"BB")
        ino_a = os.stat(root / "a").st_ino
        os.rename(root / "a", root / "b")  # over an existing file
        out += [os.path.exists(root / "a"), read_file(root / "b"),
                os.stat(root / "b").st_ino == ino_a]
        # over a file that has another hard link: that inode loses one link
        write_file(root / "c", b"C")
        os.link(root / "c", root / "c2")
        os.rename(root / "b", root / "c")
        out += [read_file(root / "c"), os.stat(root / "c2").st_nlink, read_file(root / "c2")]
        # rename onto itself / onto another name of the same inode: no-op, both names stay
        os.rename(root / "c", root / "c")
        os.link(root / "c", root / "c3")
        os.rename(root / "c", root / "c3")
        out += [sorted(os.listdir(root)), os.stat(root / "c").st_nlink]
        out.append(call(os.rename, root / "nope", root / "x")[1])
        out.append(call(os.rename, root / "c", root / "nodir" / "x")[1])
        out.append(call(os.rename, root / "c", root / "c3" / "x")[1])
        return out

    got = assert_same(tw, f)
    assert got[0] == [False, b"A", True, b"A", 1, b"C", ["c", "c2", "c3"], 2, errno.ENOENT,
                      errno.ENOENT, errno.ENOTDIR]


def test_rename_dirs(tw):
    def f(root):
        out = []
        os.mkdir(root / "d1")
        write_file(root / "d1" / "f", b"x")
        os.mkdir(root / "empty")
        os.rename(root / "d1", root / "empty")  # over an empty dir
        out += [sorted(os.listdir(root)), read_file(root / "empty" / "f")]
        os.mkdir(root / "d2")
        os.mkdir(root / "full")
        write_file(root / "full" / "g", b"y")
        out.append(call(os.rename, root / "d2", root / "full")[1])          # ENOTEMPTY
        out.append(call(os.rename, root / "d2", root / "d2" / "sub")[1])    # EINVAL
        os.mkdir(root / "d2" / "sub")
        out.append(call(os.rename, root / "d2", root / "d2" / "sub" / "x")[1])  # EINVAL
        out.append(call(os.rename, root / "d2", root / "empty" / "f")[1])   # dir over file
        out.append(call(os.rename, root / "empty" / "f", root / "d2")[1])   # file over dir
        out.append(call(os.rename, root / "d2" / "sub", str(root / "d2") + "/.")[1])
        out.append(sorted(os.listdir(root)))
        out.append([os.stat(root / x).st_nlink for x in ("d2", "empty", "full")])
        out.append(os.stat(root).st_nlink)
        return out

    got = assert_same(tw, f)
    assert got[0][0] == ["empty"] and got[0][1] == b"x"
    assert got[0][2] in (errno.ENOTEMPTY, errno.EEXIST)
    assert got[0][3:7] == [errno.EINVAL, errno.EINVAL, errno.ENOTDIR, errno.EISDIR]


def test_rename_ctime_and_content_survives(m):
    p = m / "a"
    data = os.urandom(300_000)
    write_file(p, data)
    st0 = os.stat(p)
    tick()
    os.mkdir(m / "sub")
    os.rename(p, m / "sub" / "b")
    st1 = os.stat(m / "sub" / "b")
    assert st1.st_ino == st0.st_ino and st1.st_nlink == 1
    assert st1.st_mtime_ns == st0.st_mtime_ns
    assert st1.st_ctime_ns >= st0.st_ctime_ns
    assert read_file(m / "sub" / "b") == data


def test_rename_open_file(m):
    """A file renamed while open for writing keeps its writes under the new name."""
    fd = os.open(m / "a", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"one")
        os.rename(m / "a", m / "b")
        os.write(fd, b"two")
    finally:
        os.close(fd)
    assert read_file(m / "b") == b"onetwo"
    assert not os.path.exists(m / "a")


def test_renameat2_noreplace(tw):
    def f(root):
        write_file(root / "a", b"A")
        write_file(root / "b", b"B")
        out = [call(renameat2, root / "a", root / "b", RENAME_NOREPLACE)[1],
               read_file(root / "a"), read_file(root / "b")]
        renameat2(root / "a", root / "c", RENAME_NOREPLACE)
        out += [sorted(os.listdir(root)), read_file(root / "c")]
        os.mkdir(root / "d")
        out.append(call(renameat2, root / "c", root / "d", RENAME_NOREPLACE)[1])
        return out

    got = assert_same(tw, f)
    assert got[0] == [errno.EEXIST, b"A", b"B", ["b", "c"], b"A", errno.EEXIST]


def test_renameat2_exchange(m):
    write_file(m / "a", b"AAA")
    os.mkdir(m / "d")
    write_file(m / "d" / "inner", b"I")
    ino_a, ino_d = os.stat(m / "a").st_ino, os.stat(m / "d").st_ino
    res, e = call(renameat2, m / "a", m / "d", RENAME_EXCHANGE)
    if e is not None:
        assert e == errno.EINVAL, f"RENAME_EXCHANGE: {errno_name(e)}, expected success or EINVAL"
        assert read_file(m / "a") == b"AAA" and read_file(m / "d" / "inner") == b"I"
        return
    assert os.path.isdir(m / "a") and os.path.isfile(m / "d")
    assert read_file(m / "d") == b"AAA"
    assert read_file(m / "a" / "inner") == b"I"
    assert os.stat(m / "d").st_ino == ino_a and os.stat(m / "a").st_ino == ino_d
    # missing target
    expect_errno(errno.ENOENT, renameat2, m / "a", m / "nope", RENAME_EXCHANGE)


# ------------------------------------------------------------------------------------------------
# symlink / readlink


def test_symlink_readlink(tw):
    long_target = "x/" * 500 + "y"

    def f(root):
        out = []
        write_file(root / "f", b"content")
        os.symlink("f", root / "l")
        st = os.lstat(root / "l")
        out += [stat.S_ISLNK(st.st_mode), st.st_size, os.readlink(root / "l"),
                read_file(root / "l"), os.stat(root / "l").st_ino == os.stat(root / "f").st_ino]
        os.symlink("../t/f", root / "rel")
        out.append(read_file(root / "rel"))
        os.symlink(long_target, root / "long")
        out += [os.readlink(root / "long"), os.lstat(root / "long").st_size]
        os.symlink("nowhere", root / "dang")
        out += [call(os.stat, root / "dang")[1], os.readlink(root / "dang")]
        out.append(call(os.symlink, "x", root / "f")[1])
        out.append(call(os.readlink, root / "f")[1])
        out.append(call(os.readlink, root / "nope")[1])
        os.symlink("loop", root / "loop")
        out.append(call(os.stat, root / "loop")[1])
        # writing through a symlink writes the target
        with open(root / "l", "ab") as fh:
            fh.write(b"+")
        out.append(read_file(root / "f"))
        out.append(sorted(os.listdir(root)))
        return out

    got = assert_same(tw, f)
    assert got[0][:5] == [True, 1, "f", b"content", True]
    assert got[0][7] == len(long_target)


def test_symlink_mode(m):
    os.symlink("target", m / "l")
    assert stat.S_IMODE(os.lstat(m / "l").st_mode) == 0o777


# ------------------------------------------------------------------------------------------------
# link


def test_link_nlink(tw):
    def f(root):
        out = []
        write_file(root / "f", b"data")
        os.link(root / "f", root / "g")
        sf, sg = os.stat(root / "f"), os.stat(root / "g")
        out += [sf.st_nlink, sg.st_nlink, sf.st_ino == sg.st_ino]
        os.mkdir(root / "d")
        os.link(root / "g", root / "d" / "h")
        out.append(os.stat(root / "f").st_nlink)
        with open(root / "d" / "h", "r+b") as fh:
            fh.write(b"DA")
        out.append(read_file(root / "f"))
        out.append(call(os.link, root / "f", root / "g")[1])
        out.append(call(os.link, root / "d", root / "d2")[1])
        out.append(call(os.link, root / "nope", root / "x")[1])
        out.append(call(os.link, root / "f", root / "nodir" / "x")[1])
        os.unlink(root / "f")
        out.append(os.stat(root / "g").st_nlink)
        os.unlink(root / "g")
        out.append(os.stat(root / "d" / "h").st_nlink)
        out.append(read_file(root / "d" / "h"))
        return out

    got = assert_same(tw, f)
    assert got[0] == [2, 2, True, 3, b"DAta", errno.EEXIST, errno.EPERM, errno.ENOENT,
                      errno.ENOENT, 2, 1, b"DAta"]


def test_link_ctime(m):
    write_file(m / "f", b"x")
    st0 = os.stat(m / "f")
    tick()
    os.link(m / "f", m / "g")
    st1 = os.stat(m / "f")
    assert st1.st_nlink == 2
    assert st1.st_ctime_ns > st0.st_ctime_ns, "link did not update ctime"


def test_link_of_open_written_file(m):
    fd = os.open(m / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"abc")
        os.link(m / "f", m / "g")
        os.write(fd, b"def")
    finally:
        os.close(fd)
    assert read_file(m / "f") == b"abcdef" and read_file(m / "g") == b"abcdef"
    assert os.stat(m / "g").st_nlink == 2


# ------------------------------------------------------------------------------------------------
# mknod, statfs, readdir, fsync


def test_mknod_regular(tw):
    def f(root):
        os.mknod(root / "n", stat.S_IFREG | 0o640)
        st = os.stat(root / "n")
        return [stat.S_ISREG(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size,
                call(os.mknod, root / "n", stat.S_IFREG | 0o600)[1]]

    got = assert_same(tw, f)
    assert got[0] == [True, 0o640, 0, errno.EEXIST]
    write_file(tw[0] / "n", b"now a normal file")
    assert read_file(tw[0] / "n") == b"now a normal file"


def test_statfs(mounted):
    sv = os.statvfs(mounted.path)
    assert sv.f_blocks > 0, f"f_blocks = {sv.f_blocks}"
    assert sv.f_bsize > 0 and sv.f_frsize > 0
    assert sv.f_bfree <= sv.f_blocks, f"f_bfree {sv.f_bfree} > f_blocks {sv.f_blocks}"
    assert sv.f_bavail <= sv.f_bfree, f"f_bavail {sv.f_bavail} > f_bfree {sv.f_bfree}"
    assert sv.f_bavail > 0
    assert sv.f_namemax == 255, f"f_namemax = {sv.f_namemax}"
    # real numbers: those of the disk the store lives on
    disk = os.statvfs(mounted.store)
    total, disk_total = sv.f_blocks * sv.f_frsize, disk.f_blocks * disk.f_frsize
    assert abs(total - disk_total) <= disk_total * 0.01, \
        f"statfs total {total} B, the store's disk has {disk_total} B"
    avail, disk_avail = sv.f_bavail * sv.f_frsize, disk.f_bavail * disk.f_frsize
    assert abs(avail - disk_avail) <= max(disk_total * 0.01, 256 << 20), \
        f"statfs avail {avail} B, the store's disk has {disk_avail} B available"


def test_readdir_many_and_types(tw):
    m_, n_ = tw
    names = [f"file-{i:04d}-" + "n" * (i % 50) for i in range(600)]
    for root in (m_, n_):
        for nm in names:
            write_file(root / nm, b"")
        os.mkdir(root / "sub")
        os.symlink("x", root / "sym")
    lm = sorted(os.listdir(m_))
    assert lm == sorted(os.listdir(n_))
    assert len(lm) == 602
    types = {e.name: (e.is_dir(follow_symlinks=False), e.is_symlink(),
                      e.is_file(follow_symlinks=False), e.inode() == os.lstat(e.path).st_ino)
             for e in os.scandir(m_)}
    assert types["sub"] == (True, False, False, True)
    assert types["sym"] == (False, True, False, True)
    assert types[names[7]] == (False, False, True, True)
    # delete while iterating (rm -rf does this)
    with os.scandir(m_) as it:
        for e in it:
            if e.name.startswith("file-"):
                os.unlink(e.path)
    assert sorted(os.listdir(m_)) == ["sub", "sym"]


def test_fsync_file_and_dir(m):
    fd = os.open(m / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 10000)
        os.fsync(fd)
        os.fdatasync(fd)
        os.write(fd, b"y")
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert read_file(m / "f") == b"x" * 10000 + b"y"


# ------------------------------------------------------------------------------------------------
# xattrs


def test_xattrs(tw):
    m_, n_ = tw
    p = m_ / "f"
    write_file(p, b"x")
    r, e = call(os.setxattr, p, "user.k1", b"v1")
    if e is not None:
        # the issue allows "a clean ENOTSUP": then every xattr call says so (or ENODATA)
        assert e == errno.EOPNOTSUPP, f"setxattr: {errno_name(e)}, expected success or ENOTSUP"
        assert call(os.listxattr, p) in (([], None), (None, errno.EOPNOTSUPP))
        assert call(os.getxattr, p, "user.k1")[1] in (errno.ENODATA, errno.EOPNOTSUPP)
        pytest.skip("xattrs not supported (clean ENOTSUP)")

    def f(root):
        q = root / "g"
        write_file(q, b"x")
        out = []
        os.setxattr(q, "user.k1", b"v1")
        os.setxattr(q, "user.k2", b"\0binary\xff" * 500)
        out.append(os.getxattr(q, "user.k1"))
        out.append(os.getxattr(q, "user.k2"))
        out.append(sorted(x for x in os.listxattr(q) if x.startswith("user.")))
        out.append(call(os.setxattr, q, "user.k1", b"z", os.XATTR_CREATE)[1])
        out.append(call(os.setxattr, q, "user.nope", b"z", os.XATTR_REPLACE)[1])
        os.setxattr(q, "user.k1", b"replaced", os.XATTR_REPLACE)
        os.setxattr(q, "user.k3", b"", os.XATTR_CREATE)
        out.append(os.getxattr(q, "user.k1"))
        out.append(os.getxattr(q, "user.k3"))
        out.append(call(os.getxattr, q, "user.nope")[1])
        os.removexattr(q, "user.k2")
        out.append(call(os.removexattr, q, "user.k2")[1])
        out.append(sorted(x for x in os.listxattr(q) if x.startswith("user.")))
        os.mkdir(root / "d")
        os.setxattr(root / "d", "user.dir", b"D")
        out.append(os.getxattr(root / "d", "user.dir"))
        # xattrs follow the inode through rename and link
        os.rename(q, root / "h")
        os.link(root / "h", root / "i")
        out.append(os.getxattr(root / "i", "user.k1"))
        return out

    got = assert_same(tw, f)
    assert got[0][:3] == [b"v1", b"\0binary\xff" * 500, ["user.k1", "user.k2"]]
    assert got[0][3:5] == [errno.EEXIST, errno.ENODATA]
    assert got[0][7] == errno.ENODATA and got[0][8] == errno.ENODATA


def test_xattr_size_probe(m):
    """getxattr/listxattr with a zero-size buffer return the needed size (libattr does this)."""
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    p = os.fsencode(str(m / "f"))
    write_file(m / "f", b"x")
    if call(os.setxattr, m / "f", "user.a", b"12345")[1] == errno.EOPNOTSUPP:
        pytest.skip("xattrs not supported")
    libc.getxattr.restype = ctypes.c_ssize_t
    libc.listxattr.restype = ctypes.c_ssize_t
    assert libc.getxattr(p, b"user.a", None, ctypes.c_size_t(0)) == 5
    n = libc.listxattr(p, None, ctypes.c_size_t(0))
    assert n >= len(b"user.a\0")
    buf = ctypes.create_string_buffer(2)
    assert libc.getxattr(p, b"user.a", buf, ctypes.c_size_t(2)) == -1
    assert ctypes.get_errno() == errno.ERANGE


# ------------------------------------------------------------------------------------------------
# O_TMPFILE, access, names


def test_o_tmpfile(m):
    flags = os.O_RDWR | getattr(os, "O_TMPFILE", 0o20000000 | os.O_DIRECTORY)
    fd, e = call(os.open, m, flags, 0o600)
    if e is not None:
        assert e in (errno.EOPNOTSUPP, errno.EISDIR), \
            f"O_TMPFILE: {errno_name(e)}, expected a working fd or EOPNOTSUPP/EISDIR"
        assert os.listdir(m) == [], "a failed O_TMPFILE left an entry behind"
        return
    try:
        assert os.write(fd, b"temp") == 4
        assert os.pread(fd, 10, 0) == b"temp"
        assert os.listdir(m) == [], "an O_TMPFILE file is visible in its directory"
        assert os.fstat(fd).st_nlink == 0
        # linkat(AT_EMPTY_PATH)-style naming through /proc
        os.link(f"/proc/self/fd/{fd}", m / "named", follow_symlinks=True)
        assert read_file(m / "named") == b"temp"
    finally:
        os.close(fd)
    assert read_file(m / "named") == b"temp"


def test_access_root(tw):
    def f(root):
        out = []
        write_file(root / "f", b"x")
        for mode in (0o000, 0o100, 0o444, 0o755):
            os.chmod(root / "f", mode)
            out.append([os.access(root / "f", x) for x in (os.R_OK, os.W_OK, os.X_OK, os.F_OK)])
        out.append(os.access(root / "nope", os.F_OK))
        return out

    got = assert_same(tw, f)
    assert got[0][0] == [True, True, False, True]  # root: rw always, x only if some x bit
    assert got[0][1] == [True, True, True, True]


def test_access_nonroot(other):
    mdir, ndir = other

    def f(d):
        write_file(d / "f600", b"x")
        os.chmod(d / "f600", 0o600)
        write_file(d / "f644", b"x")
        write_file(d / "f755", b"x")
        os.chmod(d / "f755", 0o755)

        def child():
            return [[os.access(str(d / n), x) for x in (os.R_OK, os.W_OK, os.X_OK)]
                    for n in ("f600", "f644", "f755")]
        return as_user(child)

    got, want = f(mdir), f(ndir)
    assert got == want, f"mount {got}, native {want}"
    assert got == ["ok", [[False, False, False], [True, False, False], [True, False, True]]]


def test_name_too_long(tw):
    def f(root):
        ok, long = "a" * 255, "b" * 256
        out = []
        write_file(root / ok, b"x")
        out.append(os.path.exists(root / ok))
        out.append(call(os.open, root / long, os.O_CREAT | os.O_WRONLY, 0o644)[1])
        out.append(call(os.mkdir, root / long)[1])
        out.append(call(os.symlink, "x", root / long)[1])
        out.append(call(os.link, root / ok, root / long)[1])
        out.append(call(os.rename, root / ok, root / long)[1])
        out.append(call(os.stat, root / long)[1])
        out.append(call(os.mknod, root / long, stat.S_IFREG | 0o644)[1])
        out.append(sorted(os.listdir(root)))
        return out

    got = assert_same(tw, f)
    assert got[0][1:8] == [errno.ENAMETOOLONG] * 7


def test_special_names(tw):
    names = ["sp ace", "uni-é漢字", "new\nline", "-dash", ".hidden", "..dots", "a" * 255, "#%*?"]

    def f(root):
        for nm in names:
            write_file(root / nm, nm.encode())
        return sorted(os.listdir(root)), [read_file(root / nm) for nm in names]

    got = assert_same(tw, f)
    assert len(got[0][0]) == len(names)


# ------------------------------------------------------------------------------------------------
# permission denials for a non-root uid (mounted --allow-other, default_permissions)


def test_perm_0700_dir(other):
    mdir, ndir = other

    def f(d):
        os.mkdir(d / "priv", 0o700)
        write_file(d / "priv" / "f", b"secret")
        os.chmod(d / "priv" / "f", 0o644)

        def child():
            return [call(os.listdir, str(d / "priv"))[1],
                    call(os.stat, str(d / "priv" / "f"))[1],
                    call(lambda: open(str(d / "priv" / "f"), "rb").read())[1],
                    call(os.open, str(d / "priv" / "new"), os.O_CREAT | os.O_WRONLY, 0o644)[1],
                    call(os.mkdir, str(d / "priv" / "sub"))[1],
                    call(os.unlink, str(d / "priv" / "f"))[1],
                    call(os.rename, str(d / "priv" / "f"), str(d / "stolen"))[1],
                    call(os.rmdir, str(d / "priv"))[1],  # parent d is 0777: allowed but ENOTEMPTY
                    ]
        return as_user(child)

    got, want = f(mdir), f(ndir)
    assert got == want, f"mount {got}, native {want}"
    assert got == ["ok", [errno.EACCES] * 7 + [errno.ENOTEMPTY]]
    assert read_file(mdir / "priv" / "f") == b"secret"


def test_perm_write_0444(other):
    mdir, ndir = other

    def f(d):
        write_file(d / "ro", b"readonly")
        os.chmod(d / "ro", 0o444)
        os.chown(d / "ro", NOBODY_UID, NOBODY_GID)  # even the owner cannot write it
        write_file(d / "rootfile", b"rootfile")     # 0644 root

        def child():
            return [call(os.open, str(d / "ro"), os.O_WRONLY)[1],
                    call(os.open, str(d / "ro"), os.O_RDWR)[1],
                    call(os.open, str(d / "ro"), os.O_WRONLY | os.O_TRUNC)[1],
                    call(os.truncate, str(d / "ro"), 0)[1],
                    call(os.open, str(d / "rootfile"), os.O_WRONLY | os.O_APPEND)[1],
                    call(os.truncate, str(d / "rootfile"), 0)[1],
                    call(lambda: open(str(d / "rootfile"), "rb").read().decode())[0],
                    call(lambda: open(str(d / "ro"), "rb").read().decode())[0]]
        return as_user(child)

    got, want = f(mdir), f(ndir)
    assert got == want, f"mount {got}, native {want}"
    assert got == ["ok", [errno.EACCES] * 6 + ["rootfile", "readonly"]]
    assert read_file(mdir / "ro") == b"readonly" and read_file(mdir / "rootfile") == b"rootfile"
    # root ignores the mode bits for writing
    with open(mdir / "ro", "r+b") as fh:
        fh.write(b"R")
    assert read_file(mdir / "ro") == b"Readonly"


def test_perm_sticky_dir(other):
    mdir, ndir = other

    def f(d):
        os.mkdir(d / "sticky")
        os.chmod(d / "sticky", 0o1777)
        write_file(d / "sticky" / "roots", b"r")
        os.chmod(d / "sticky" / "roots", 0o666)
        os.mkdir(d / "sticky" / "rootdir")
        os.chmod(d / "sticky" / "rootdir", 0o777)

        def child():
            s = d / "sticky"
            out = [call(os.unlink, str(s / "roots"))[1],
                   call(os.rename, str(s / "roots"), str(s / "mine"))[1],
                   call(os.rmdir, str(s / "rootdir"))[1]]
            write_file(s / "own", b"o")
            out.append(call(os.rename, str(s / "own"), str(s / "roots"))[1])  # replace other's
            out.append(call(os.unlink, str(s / "own"))[1])
            # writing to the other's 0666 file is allowed
            out.append(call(lambda: open(str(s / "roots"), "ab").write(b"+"))[0])
            return out
        return as_user(child)

    got, want = f(mdir), f(ndir)
    assert got == want, f"mount {got}, native {want}"
    assert got == ["ok", [errno.EPERM, errno.EPERM, errno.EPERM, errno.EPERM, None, 1]]
    assert sorted(os.listdir(mdir / "sticky")) == ["rootdir", "roots"]
    assert read_file(mdir / "sticky" / "roots") == b"r+"


def test_perm_create_owner(other):
    """Files created by a non-root uid belong to it; setgid dirs pass their group on."""
    mdir, ndir = other

    def f(d):
        os.mkdir(d / "sg")
        os.chown(d / "sg", 0, 4321)
        os.chmod(d / "sg", 0o2777)

        def child():
            write_file(d / "nb", b"x")
            os.mkdir(d / "nbdir")
            write_file(d / "sg" / "f", b"x")
            os.mkdir(d / "sg" / "sub")
            out = []
            for p in (d / "nb", d / "nbdir", d / "sg" / "f", d / "sg" / "sub"):
                st = os.stat(p)
                out.append([st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode))])
            return out
        return as_user(child)

    got, want = f(mdir), f(ndir)
    assert got == want, f"mount {got}, native {want}"
    assert got[1][0][:2] == [NOBODY_UID, NOBODY_GID]
    assert got[1][2][:2] == [NOBODY_UID, 4321]


def test_perm_search_needed_for_path(other):
    mdir, ndir = other

    def f(d):
        os.mkdir(d / "noexec", 0o766)
        write_file(d / "noexec" / "f", b"x")

        def child():
            return [call(os.stat, str(d / "noexec" / "f"))[1],
                    sorted(os.listdir(str(d / "noexec")))]
        return as_user(child)

    got, want = f(mdir), f(ndir)
    assert got == want, f"mount {got}, native {want}"
    assert got == ["ok", [errno.EACCES, ["f"]]]


# ------------------------------------------------------------------------------------------------
# times on write


def test_times_change_on_write(m):
    p = m / "f"
    write_file(p, b"a" * 1000)
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    st0 = os.stat(p)
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, b"b", 10)
        st_open = os.fstat(fd)
    finally:
        os.close(fd)
    st1 = os.stat(p)
    now = time.time_ns()
    assert st1.st_mtime_ns > st0.st_mtime_ns, "write did not update mtime"
    assert st1.st_ctime_ns >= st0.st_ctime_ns
    assert abs(st1.st_mtime_ns - now) < 5_000_000_000, \
        f"mtime after write {st1.st_mtime_ns} is not close to now {now}"
    assert st_open.st_mtime_ns > 1_000_000_000, "fstat during the write shows the old mtime"
    # a later utime sticks (no delayed mtime update from the close overwrites it)
    os.utime(p, ns=(2_000_000_000, 3_000_000_000))
    time.sleep(0.1)
    st2 = os.stat(p)
    assert st2.st_mtime_ns == 3_000_000_000


def test_utime_after_write_before_close(m):
    """Tools (huggingface_hub, ollama) set times right after writing; close must not undo it."""
    p = m / "f"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"payload")
    os.utime(p, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    os.close(fd)
    st = os.stat(p)
    assert st.st_mtime_ns == 1_500_000_000_000_000_000, \
        f"mtime {st.st_mtime_ns} after close; utime set 1500000000 s"


def test_nlink_on_rename_over_hardlink(m):
    write_file(m / "a", b"a")
    os.link(m / "a", m / "a2")
    write_file(m / "b", b"b")
    os.rename(m / "b", m / "a")
    assert os.stat(m / "a2").st_nlink == 1
    assert os.stat(m / "a").st_nlink == 1
    assert read_file(m / "a") == b"b" and read_file(m / "a2") == b"a"
