"""The status socket, `mlxfs status`, `mlxfs top`, `/.mlxfs/stats.json`, `--metrics-addr`, and
the shell integration commands (completions, man, service), against a real mount.

Needs: /dev/fuse, root (drop_caches, setpriv), tmux for the `top` test (skipped without it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mountlib import (  # noqa: E402,F401
    MountEnv, mlxfs_binary, mount_env, mounted, pid_alive, wait_until,
)

MiB = 1 << 20

# Every field `mlxfs status --json` must carry, mounted or not (docs/STATUS.md).
ISSUE_FIELDS = {
    "mounted", "mountpoint", "pid", "socket", "read_bytes", "written_bytes",
    "read_bytes_per_sec", "write_bytes_per_sec", "per_view", "per_model",
}
STORE_FIELDS = {
    "store", "exists", "logical_bytes", "physical_bytes", "saved_bytes", "saved_percent",
    "files", "chunks", "models", "models_by_layout", "pack_bytes", "catalog_bytes",
    "in_use_by_pid", "schema_version",
}
EXTRA_FIELDS = {"v", "source", "started", "uptime_secs", "passthrough", "commit_queue_files",
                "commit_queue_bytes", "at", "throughput", "ops"}
VIEWS = {"hf", "ollama", "mlx", "lmstudio", "other"}


# -- helpers ----------------------------------------------------------------------------------


def status_json(m) -> dict:
    return json.loads(m.cli("status", "--json").stdout)


def socket_path(m) -> str:
    rec = m.daemon_record()
    assert rec.get("socket"), f"daemon.json has no socket: {rec}"
    return rec["socket"]


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def request(path: str, req: dict | bytes, timeout: float = 10.0) -> dict:
    """One request, one answer line."""
    with connect(path, timeout) as s:
        data = req if isinstance(req, bytes) else json.dumps(req).encode() + b"\n"
        s.sendall(data)
        return json.loads(read_line(s))


def read_line(s: socket.socket, limit: int = 64 * MiB) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        b = s.recv(65536)
        if not b:
            break
        buf += b
        assert len(buf) < limit
    return bytes(buf)


def drop_page_cache(path: Path) -> None:
    """So the next read of `path` goes through FUSE rather than the kernel's page cache (only
    this file: a global drop_caches would also evict the mlxfs binary and slow its start)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_pattern(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            # Distinct blocks, so the store really keeps every byte.
            f.write(i.to_bytes(8, "little") + block[8:])


def read_all(path: Path, bs: int = 4 * MiB) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(bs)
            if not b:
                return n
            n += len(b)


def check_fields(st: dict) -> None:
    missing = (ISSUE_FIELDS | STORE_FIELDS | EXTRA_FIELDS) - set(st)
    assert not missing, f"status --json lacks {sorted(missing)}"
    assert set(st["per_view"]) >= VIEWS, st["per_view"]
    for v in st["per_view"].values():
        assert set(v) == {"read_bytes", "written_bytes", "read_bytes_per_sec",
                          "write_bytes_per_sec"}
    assert set(st["throughput"]) == {"1s", "10s", "60s"}
    assert isinstance(st["per_model"], list)


# -- bytes and throughput ---------------------------------------------------------------------


def test_256mib_written_and_read_show_in_status_with_live_throughput(mounted):
    m = mounted
    f = m / "huggingface" / "hub" / "big.bin"
    size = 256 * MiB
    write_pattern(f, size)
    drop_page_cache(f)
    assert read_all(f) == size
    read_done = time.monotonic()
    st = status_json(m)
    asked_after = time.monotonic() - read_done
    check_fields(st)
    print(f"\nstatus answered {asked_after * 1000:.0f} ms after the read: "
          f"read {st['read_bytes_per_sec'] / MiB:.1f} MiB/s (1 s), "
          f"{st['throughput']['10s']['read_bytes_per_sec'] / MiB:.1f} MiB/s (10 s)")
    assert asked_after < 1.0
    assert st["source"] == "daemon" and st["mounted"] is True
    assert st["pid"] == m.pid
    assert st["socket"] == socket_path(m)
    assert st["mountpoint"] == str(m.mountpoint.resolve())
    assert st["written_bytes"] >= size, st["written_bytes"]
    assert st["read_bytes"] >= size, st["read_bytes"]
    assert st["read_bytes_per_sec"] > 0, st["throughput"]
    assert st["throughput"]["10s"]["read_bytes_per_sec"] > 0
    assert st["throughput"]["60s"]["write_bytes_per_sec"] > 0
    assert st["ops"]["read"]["count"] > 0 and st["ops"]["write"]["count"] > 0
    assert st["logical_bytes"] >= size

    # The file lives in the hf tree: its bytes count there (the map is refreshed each second).
    def hf_counted():
        return status_json(m)["per_view"]["hf"]["read_bytes"] >= size
    assert wait_until(hf_counted, 5), status_json(m)["per_view"]

    # The human table says the same.
    out = m.cli("status").stdout.decode()
    assert "mounted   yes" in out and "read" in out and "MiB" in out, out

    # The same JSON, as a read-only file in the mount.
    stats = m / ".mlxfs" / "stats.json"
    assert stats.stat().st_mode & 0o777 == 0o444
    js = json.loads(stats.read_text())
    check_fields(js)
    assert js["read_bytes"] >= size and js["pid"] == m.pid
    with pytest.raises(OSError):
        open(stats, "w")
    # A fresh snapshot at each open.
    time.sleep(0.05)
    assert json.loads(stats.read_text())["at"] > js["at"]


def test_not_mounted_status_comes_from_the_catalog_with_every_field(mounted):
    m = mounted
    (m / "huggingface" / "hub" / "f").write_bytes(b"x" * 4096)
    sock = socket_path(m)
    m.stop()
    assert not os.path.exists(sock), "the socket outlived the daemon"
    st = status_json(m)
    check_fields(st)
    assert st["mounted"] is False and st["source"] == "catalog"
    assert st["pid"] is None and st["socket"] is None and st["mountpoint"] is None
    assert st["read_bytes"] == 0 and st["read_bytes_per_sec"] == 0
    assert st["logical_bytes"] == 4096
    out = m.cli("status").stdout.decode()
    assert "not mounted: figures from the catalog" in out, out


def test_unmount_without_a_path_takes_down_the_stores_own_mount(mounted):
    """`mlxfs --store S unmount` finds where S is mounted (here not ~/.mlx-cache) and waits
    until the daemon has committed and let go of the store."""
    m = mounted
    (m / "huggingface" / "hub" / "f").write_bytes(b"y" * 5000)
    pid = m.pid
    out = m.cli("unmount").stderr.decode()
    assert not m.mounted, f"{m.mountpoint} still mounted after `mlxfs unmount` with no path"
    assert f"unmounted {m.mountpoint}" in out, out
    assert wait_until(lambda: not pid_alive(pid), 30), "the daemon outlived the unmount"
    m.pid = None
    # Nothing of this store is mounted now: the default mount point is named, not mounted.
    again = m.cli("unmount", expect=1).stderr.decode()
    assert "is not mounted" in again and ".mlx-cache" in again, again
    m.start()
    assert (m / "huggingface" / "hub" / "f").read_bytes() == b"y" * 5000


def make_hf_repo(hub: Path, org: str, name: str, weights: bytes) -> Path:
    """A minimal HF cache repo (config.json + model.safetensors) written through the mount."""
    import hashlib
    repo = hub / f"models--{org}--{name}"
    commit = "c" * 40
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for fname, data in (("config.json", b'{"model_type": "llama"}'),
                        ("model.safetensors", weights)):
        etag = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / etag).write_bytes(data)
        os.symlink(f"../../blobs/{etag}", snap / fname)
    return repo


def test_reads_through_a_derived_view_count_for_the_model_and_its_source_tree(mounted):
    m = mounted
    weights = os.urandom(8 * MiB)
    make_hf_repo(m / "huggingface" / "hub", "acme", "tiny", weights)
    via_mlx = m / "mlx" / "acme" / "tiny" / "model.safetensors"
    assert wait_until(via_mlx.exists, 5)
    drop_page_cache(via_mlx)
    assert via_mlx.read_bytes() == weights

    def model_row():
        rows = [r for r in status_json(m)["per_model"] if r["name"] == "acme/tiny"]
        return rows[0] if rows and rows[0]["read_bytes"] >= len(weights) else None
    assert wait_until(model_row, 6), status_json(m)["per_model"]
    row = model_row()
    assert row["layout"] == "hf" and row["format"] == "safetensors"
    assert row["logical_bytes"] >= len(weights)
    st = status_json(m)
    # The derived file is its source inode: its bytes count under hf, not mlx (docs/STATUS.md).
    assert st["per_view"]["hf"]["read_bytes"] >= len(weights)
    assert st["per_view"]["mlx"]["read_bytes"] == 0
    assert st["models_by_layout"]["hf"] == 1

    models = request(socket_path(m), {"v": 1, "cmd": "models"})["models"]
    tiny = [x for x in models if x["name"] == "acme/tiny"]
    assert tiny and "mlx/acme/tiny" in tiny[0]["paths"], models
    assert tiny[0]["read_bytes"] >= len(weights)


# -- the socket: permissions, other uids ------------------------------------------------------

NOBODY_CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connect_error": e.errno})); sys.exit(0)
try:
    s.sendall(b'{"v":1,"cmd":"status"}\n')
    data = b""
    while not data.endswith(b"\n"):
        b = s.recv(65536)
        if not b:
            break
        data += b
except OSError as e:
    print(json.dumps({"io_error": e.errno})); sys.exit(0)
print(json.dumps({"answer": data.decode("utf-8", "replace")}))
"""


def as_nobody(sock: str) -> dict:
    setpriv = shutil.which("setpriv")
    if not setpriv or os.geteuid() != 0:
        pytest.skip("needs root and setpriv")
    p = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                        "/usr/bin/python3", "-c", NOBODY_CLIENT, sock],
                       capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def test_socket_is_private_and_refuses_other_uids(mounted):
    m = mounted
    sock = socket_path(m)
    st = os.lstat(sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700
    assert st.st_uid == os.geteuid()

    # Another uid cannot even reach it.
    got = as_nobody(sock)
    assert "connect_error" in got, f"uid 65534 connected: {got}"

    # Even with the permissions opened up, SO_PEERCRED refuses the other uid.
    run_dir = os.path.dirname(sock)
    os.chmod(run_dir, 0o755)
    os.chmod(sock, 0o666)
    try:
        got = as_nobody(sock)
    finally:
        os.chmod(sock, 0o600)
        os.chmod(run_dir, 0o700)
    assert "connect_error" not in got, got
    answer = got.get("answer", "")
    assert '"ok":true' not in answer and "read_bytes" not in answer, answer
    if answer:
        assert json.loads(answer)["code"] == "forbidden"
    # The owner is still served.
    assert request(sock, {"v": 1, "cmd": "status"})["ok"] is True


# -- the socket: hostile and many clients -----------------------------------------------------


def test_bad_requests_get_json_errors_and_connections_stay_usable(mounted):
    sock = socket_path(mounted)
    with connect(sock) as s:
        for line, code in [(b"garbage\n", "bad_json"),
                           (b"\x00\xff\xfe\n", "bad_json"),
                           (b'{"cmd":"status"}\n', "unsupported_version"),
                           (b'{"v":2,"cmd":"status"}\n', "unsupported_version"),
                           (b'{"v":1,"cmd":"nope"}\n', "unknown_command"),
                           (b'{"v":1,"cmd":"watch","interval_ms":-1}\n', "bad_request")]:
            s.sendall(line)
            ans = json.loads(read_line(s))
            assert ans["ok"] is False and ans["code"] == code and ans["v"] == 1, (line, ans)
        s.sendall(b'{"v":1,"cmd":"status"}\n')
        assert json.loads(read_line(s))["ok"] is True
        s.sendall(b'{"v":1,"cmd":"models"}\n')
        ans = json.loads(read_line(s))
        assert ans["ok"] is True and isinstance(ans["models"], list)
    # Half a line, then EOF.
    with connect(sock) as s:
        s.sendall(b'{"v":1,"cmd":"sta')
        s.shutdown(socket.SHUT_WR)
        assert json.loads(read_line(s))["code"] == "partial_request"


def send_100mb_without_newline(sock: str) -> tuple[int, bytes]:
    """Returns (bytes the daemon took before it hung up, what it said)."""
    sent = 0
    chunk = b"x" * MiB
    with connect(sock) as s:
        try:
            while sent < 100 * MiB:
                sent += s.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            said = read_line(s)
        except (ConnectionResetError, socket.timeout):
            said = b""
    return sent, said


def test_hostile_clients_and_100_watchers_leave_the_daemon_serving(mounted):
    m = mounted
    sock = socket_path(m)
    f = m / "huggingface" / "hub" / "data"
    payload = os.urandom(8 * MiB)
    f.write_bytes(payload)

    # 100 MB without a newline: the daemon gives up after its line limit and closes.
    sent, said = send_100mb_without_newline(sock)
    assert sent < 100 * MiB, "the daemon kept reading an endless line"
    if said:
        assert json.loads(said)["code"] == "line_too_long"

    # Clients that send half a line and hang on, or connect and vanish.
    idle = []
    for _ in range(10):
        s = connect(sock)
        s.sendall(b'{"v":1,"cm')
        idle.append(s)
    for _ in range(20):
        connect(sock).close()
    # A watcher that disconnects mid-stream.
    s = connect(sock)
    s.sendall(b'{"v":1,"cmd":"watch","interval_ms":50}\n')
    read_line(s)
    s.close()

    # 100 concurrent watchers.
    results: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    go = threading.Event()

    def watcher():
        try:
            with connect(sock, timeout=30) as c:
                c.sendall(b'{"v":1,"cmd":"watch","interval_ms":100}\n')
                reader = c.makefile("rb")
                n = 0
                while not go.is_set() or n < 3:
                    line = reader.readline()
                    if not line:
                        break
                    ans = json.loads(line)
                    assert ans["ok"] is True and ans["cmd"] == "watch"
                    assert "read_bytes" in ans["status"]
                    n += 1
                    if n >= 3 and go.is_set():
                        break
                with lock:
                    results.append(n)
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(repr(e))

    threads = [threading.Thread(target=watcher) for _ in range(100)]
    for t in threads:
        t.start()
    # While they watch, file reads and status still work.
    for _ in range(3):
        drop_page_cache(f)
        assert f.read_bytes() == payload
        assert status_json(m)["mounted"] is True
    go.set()
    for t in threads:
        t.join(60)
    assert not errors, errors[:5]
    assert len(results) == 100 and min(results) >= 3, results

    for s in idle:
        s.close()
    assert pid_alive(m.pid)
    drop_page_cache(f)
    assert f.read_bytes() == payload
    st = status_json(m)
    assert st["source"] == "daemon" and st["read_bytes"] >= 3 * len(payload)


# -- latency ----------------------------------------------------------------------------------


def test_status_latency_while_a_read_load_runs(mounted):
    m = mounted
    f = m / "huggingface" / "hub" / "load.bin"
    write_pattern(f, 64 * MiB)
    stop = threading.Event()
    passes = [0]

    def load():
        while not stop.is_set():
            drop_page_cache(f)
            read_all(f, MiB)
            passes[0] += 1

    t = threading.Thread(target=load)
    t.start()
    times = []
    rates = []
    try:
        time.sleep(0.5)
        cmd = [str(m.binary), "--store", str(m.store), "status", "--json"]
        for _ in range(30):
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, env=m.env, timeout=30)
            times.append(time.perf_counter() - t0)
            assert p.returncode == 0, p.stderr
            rates.append(json.loads(p.stdout)["read_bytes_per_sec"])
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(60)
    median = statistics.median(times) * 1000
    print(f"\n`mlxfs status --json` under a read load ({passes[0]} passes of 64 MiB): "
          f"median {median:.1f} ms, max {max(times) * 1000:.1f} ms; "
          f"read throughput seen {statistics.median(rates) / MiB:.0f} MiB/s (median)")
    assert max(rates) > 0
    assert median < 200, f"median status latency {median:.1f} ms (target 50 ms)"


# -- mlxfs top --------------------------------------------------------------------------------


def tmux(*args, check=True, server="") -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", "-L", server, *args], capture_output=True, text=True,
                          timeout=30, check=check)


def test_top_shows_numbers_under_tmux_and_q_restores_the_terminal(mounted):
    if not shutil.which("tmux"):
        pytest.skip("tmux is not installed (apt-get install tmux)")
    m = mounted
    f = m / "huggingface" / "hub" / "top.bin"
    write_pattern(f, 32 * MiB)
    server = f"mlxfs-top-{os.getpid()}"
    env_args = " ".join(f"{k}={json.dumps(v)}" for k, v in
                        [("HOME", m.env["HOME"]), ("TERM", "xterm-256color")])
    cmd = f"env {env_args} {m.binary} --store {m.store} top; echo TOP-EXITED-$?"
    try:
        tmux("new-session", "-d", "-s", "t", "-x", "120", "-y", "40",
             "bash --norc --noprofile", server=server)
        tmux("send-keys", "-t", "t", cmd, "Enter", server=server)

        def screen() -> str:
            return tmux("capture-pane", "-p", "-t", "t", server=server).stdout

        assert wait_until(lambda: "throughput" in screen(), 10), screen()
        drop_page_cache(f)
        read_all(f)
        # Within a refresh or two, the throughput table's read row shows the 32 MiB.
        assert wait_until(lambda: re.search(r"read\s+32\.0 MiB", screen()), 5), screen()
        shown = screen()
        assert str(m.mountpoint.resolve()) in shown and f"pid {m.pid}" in shown, shown
        assert "per view" in shown and "hf" in shown
        assert tmux("display", "-p", "-t", "t", "#{alternate_on}", server=server).stdout.strip() == "1"

        tmux("send-keys", "-t", "t", "q", server=server)
        assert wait_until(lambda: "TOP-EXITED-0" in screen(), 10), screen()
        after = screen()
        assert "throughput" not in after, f"the TUI is still on screen:\n{after}"
        assert tmux("display", "-p", "-t", "t", "#{alternate_on}",
                    server=server).stdout.strip() == "0"
        # The terminal is back in cooked mode: a typed line echoes and runs.
        tmux("send-keys", "-t", "t", "echo cooked-$((40+2))", "Enter", server=server)
        assert wait_until(lambda: "cooked-42" in screen(), 5), screen()

        # Ctrl-C quits too.
        tmux("send-keys", "-t", "t", "clear; " + cmd, "Enter", server=server)
        assert wait_until(lambda: "throughput" in screen(), 10), screen()
        tmux("send-keys", "-t", "t", "C-c", server=server)
        assert wait_until(lambda: "TOP-EXITED-0" in screen(), 10), screen()
    finally:
        tmux("kill-server", check=False, server=server)


def test_top_without_a_terminal_says_so(tmp_path):
    p = subprocess.run([str(mlxfs_binary()), "--store", str(tmp_path / "s"), "top"],
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 1 and b"needs a terminal" in p.stderr, p
    assert b"\x1b[" not in p.stdout, "escape sequences written to a non-terminal"


# -- Prometheus -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_addr_serves_prometheus_text_on_loopback_only():
    me = MountEnv()
    m = me.mount
    try:
        bad = m.cli("mount", m.mountpoint, "--daemon", "--metrics-addr", "0.0.0.0:9", expect=None)
        assert bad.returncode != 0 and b"loopback" in bad.stderr, bad.stderr
        assert not m.mounted
        port = free_port()
        m.cli("mount", m.mountpoint, "--daemon", "--metrics-addr", f"127.0.0.1:{port}")
        m.pid = int(m.daemon_record()["pid"])
        (m / "huggingface" / "hub" / "f").write_bytes(b"y" * 100_000)
        drop_page_cache(m / "huggingface" / "hub" / "f")
        (m / "huggingface" / "hub" / "f").read_bytes()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = r.read().decode()
        assert "# TYPE mlxfs_read_bytes_total counter" in text
        value = [ln for ln in text.splitlines() if ln.startswith("mlxfs_read_bytes_total ")]
        assert value and int(value[0].split()[1]) >= 100_000, value
        assert 'mlxfs_op_latency_seconds_bucket{op="read",le="+Inf"}' in text
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        assert e.value.code == 404
        m.stop()
    finally:
        me.close()


# -- shell integration ------------------------------------------------------------------------


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    p = subprocess.run([str(mlxfs_binary()), *args], capture_output=True, timeout=60,
                       env=env or dict(os.environ), stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr.decode()
    return p


def test_completions_man_and_service(tmp_path):
    bash = run_cli("completions", "bash").stdout.decode()
    assert "complete" in bash and "_mlxfs" in bash and "status" in bash
    assert "#compdef mlxfs" in run_cli("completions", "zsh").stdout.decode()
    assert "complete -c mlxfs" in run_cli("completions", "fish").stdout.decode()
    if shutil.which("bash"):
        # The bash script loads without errors.
        check = subprocess.run(["bash", "-c", "source /dev/stdin && complete -p mlxfs"],
                               input=bash.encode(), capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr

    man = run_cli("man").stdout.decode()
    assert man.startswith(".ie") or ".TH" in man
    assert ".TH mlxfs 1" in man and "status" in man
    run_cli("man", "--dir", str(tmp_path / "man1"))
    pages = sorted(p.name for p in (tmp_path / "man1").iterdir())
    assert "mlxfs.1" in pages and "mlxfs-status.1" in pages and "mlxfs-top.1" in pages

    env = dict(os.environ, HOME=str(tmp_path / "home"),
               XDG_CONFIG_HOME=str(tmp_path / "config"))
    printed = run_cli("--store", str(tmp_path / "store"), "service", "install", "--print",
                      str(tmp_path / "mnt"), env=env).stdout.decode()
    assert "ExecStart=" in printed and "mount" in printed and "--daemon" in printed
    assert f"--store {tmp_path / 'store'}" in printed
    assert not (tmp_path / "config").exists(), "--print wrote something"
    run_cli("--store", str(tmp_path / "store"), "service", "install", str(tmp_path / "mnt"),
            env=env)
    unit = tmp_path / "config" / "systemd" / "user" / "mlxfs.service"
    assert unit.read_text() == printed
    if shutil.which("systemd-analyze"):
        v = subprocess.run(["systemd-analyze", "verify", "--user", str(unit)],
                           capture_output=True, text=True, timeout=60, env=env)
        print(f"systemd-analyze verify: rc {v.returncode} {v.stderr.strip()[:300]}")
    plist = run_cli("service", "install", "--format", "launchd", env=env).stdout.decode()
    assert "<key>RunAtLoad</key>" in plist and "<string>mount</string>" in plist
    run_cli("service", "uninstall", env=env)
    assert not unit.exists()
