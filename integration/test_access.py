"""Access (DESIGN.md §6): the mount refuses other users unless mounted with --allow-other.
(The status socket's side is test_status.py::test_socket_is_private_and_refuses_other_uids.)"""

import errno
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import as_user, mount_env, mount_env_other, mounted  # noqa: E402,F401


def mount_options(path) -> set[str]:
    target = os.path.realpath(str(path))
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == target:
                super_opts = line.split(" - ")[1].split()[2]
                return set(fields[5].split(",")) | set(super_opts.split(","))
    raise AssertionError(f"{path} is not mounted")


def test_mount_refuses_other_users_by_default(mounted):
    os.chmod(mounted.path, 0o777)
    (mounted.path / "huggingface" / "hub" / "open.bin").write_bytes(b"x")
    os.chmod(mounted.path / "huggingface" / "hub" / "open.bin", 0o666)
    assert "allow_other" not in mount_options(mounted.path)

    def look():
        return sorted(os.listdir(str(mounted.path)))

    def read():
        with open(str(mounted.path / "huggingface" / "hub" / "open.bin"), "rb") as f:
            return f.read().decode()

    # Not even mode 0777/0666 lets uid 65534 in: the kernel refuses before any permission check.
    assert as_user(look) == ["err", errno.EACCES]
    assert as_user(read) == ["err", errno.EACCES]
    assert look()  # the owner is served


def test_allow_other_lets_other_users_in_with_permission_checks(mount_env_other):
    m = mount_env_other.mount
    assert "allow_other" in mount_options(m.path)
    os.chmod(m.path, 0o755)
    secret = m.path / "huggingface" / "hub" / "secret.bin"
    secret.write_bytes(b"secret")
    os.chmod(secret, 0o600)

    def read():
        with open(str(secret), "rb") as f:
            return f.read().decode()

    assert as_user(lambda: "huggingface" in os.listdir(str(m.path)))[0] == "ok"
    assert as_user(read) == ["err", errno.EACCES]
