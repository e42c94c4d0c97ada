"""The derived views (mlx/, lmstudio/, Ollama entries for HF GGUFs) proven with the real clients.

A fake Hugging Face hub (fakehub.py) serves tiny generated models (tinymodels.py);
`huggingface_hub.snapshot_download` downloads them into `<mount>/huggingface/hub` (2.x from the
clients venv, 0.36.x from a second venv); then mlx-lm, safetensors and gguf read them back
through the other views, and an Ollama pull is replayed into `<mount>/ollama/models`.

Every client library runs in a subprocess of the venv that has it (this file re-invokes itself
with `--driver ...`), so this module runs under any Python with pytest, numpy, safetensors and
gguf (the main integration venv or the clients venv).

Environment:
  MLXFS_BIN              the mlxfs binary (default: <repo>/target/release/mlxfs)
  MLXFS_CLIENTS_PYTHON   Python with huggingface_hub 2.x, mlx[cpu], mlx-lm, tokenizers
                         (default: integration/.venv-clients/bin/python)
  MLXFS_HF036_PYTHON     Python with huggingface_hub 0.36.x (default: integration/.venv-hf036/...)
  MLXFS_PAGECACHE_MB     size of the model of the page-cache test (default 512)
  MLXFS_REQUIRE_CLIENTS  1: a missing client venv fails the tests that need it (else they skip)

Set-up of the two client venvs (from the repo root):
  python3 -m venv integration/.venv-clients
  integration/.venv-clients/bin/pip install -r integration/requirements-clients.txt
  python3 -m venv integration/.venv-hf036
  integration/.venv-hf036/bin/pip install -r integration/requirements-hf036.txt
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RESULT_MARK = "@@mlxfs-driver-result@@ "


# ================================================================================================
# Driver: runs inside a client venv (`python test_views_clients.py --driver CMD JSON`), prints
# one result line. Only the standard library and the client libraries are imported here.


def _driver(cmd: str, args: dict) -> dict:
    if cmd == "hf-download":
        import huggingface_hub as h
        kw = {}
        if args.get("allow_patterns"):
            kw["allow_patterns"] = args["allow_patterns"]
        path = h.snapshot_download(args["repo_id"], **kw)
        return {"version": h.__version__, "path": path}
    if cmd == "hf-scan":
        import huggingface_hub as h
        info = h.scan_cache_dir()
        repos = []
        for r in info.repos:
            revs = []
            for v in r.revisions:
                revs.append({
                    "commit_hash": v.commit_hash,
                    "snapshot_path": str(v.snapshot_path),
                    "refs": sorted(v.refs),
                    "nb_files": v.nb_files,
                    "size_on_disk": v.size_on_disk,
                    "files": [{"file_name": f.file_name, "file_path": str(f.file_path),
                               "blob_path": str(f.blob_path), "size_on_disk": f.size_on_disk,
                               "blob_last_accessed": f.blob_last_accessed,
                               "blob_last_modified": f.blob_last_modified}
                              for f in v.files],
                })
            repos.append({"repo_id": r.repo_id, "repo_type": r.repo_type,
                          "repo_path": str(r.repo_path), "size_on_disk": r.size_on_disk,
                          "nb_files": r.nb_files, "revisions": revs,
                          "last_accessed": r.last_accessed, "last_modified": r.last_modified})
        return {"version": h.__version__, "size_on_disk": info.size_on_disk, "repos": repos,
                "warnings": [f"{type(w).__name__}: {w}" for w in info.warnings]}
    if cmd == "mlx-generate":
        import mlx_lm
        out = []
        for p in args["paths"]:
            model, tok = mlx_lm.load(p)
            toks = [r.token for r in mlx_lm.stream_generate(
                model, tok, args["prompt"], max_tokens=args["max_tokens"])]
            out.append({"path": p, "tokens": toks, "text": tok.decode(toks)})
        return {"results": out}
    if cmd == "probe":
        import importlib
        have = {}
        for m in args["modules"]:
            try:
                mod = importlib.import_module(m)
                have[m] = getattr(mod, "__version__", "?")
            except Exception as e:  # noqa: BLE001
                have[m] = None
                have[m + ":error"] = f"{type(e).__name__}: {e}"
        return have
    raise SystemExit(f"unknown driver command {cmd}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--driver":
        res = _driver(sys.argv[2], json.loads(sys.argv[3]))
        sys.stdout.write("\n" + RESULT_MARK + json.dumps(res) + "\n")
        sys.stdout.flush()
        sys.exit(0)
    sys.exit("usage: test_views_clients.py --driver CMD JSON  (or run it with pytest)")


# ================================================================================================
# Tests

import pytest  # noqa: E402

import tinymodels  # noqa: E402
from fakehub import FakeHub  # noqa: E402
from mountlib import (  # noqa: E402,F401  (fixtures are used by name)
    _clip, mount_env, resident_bytes_under, resident_fraction, sha256_file, wait_until,
)

pytestmark = [pytest.mark.timeout(900)]

ORG = "tinyorg"
LLAMA = f"{ORG}/tiny-llama"
LLAMA_SHARDED = f"{ORG}/tiny-llama-sharded"
GGUF_REPO = f"{ORG}/tiny-gguf"
BIG = f"{ORG}/big-llama"
GGUF_FILES = {"tiny-F16.gguf": "F16", "tiny-Q8_0.gguf": "Q8_0"}
PROMPT = "Hello world"
MAX_TOKENS = 8

OLLAMA_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
OLLAMA_CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
OLLAMA_MODEL_TYPE = "application/vnd.ollama.image.model"


# ------------------------------------------------------------------------------------------------
# Client interpreters


def _python_from(env_var: str, default: Path) -> Path | None:
    p = os.environ.get(env_var)
    if p:
        return Path(p)
    return default if default.exists() else None


def _run_driver(py: Path | str, cmd: str, args: dict, env: dict | None = None,
                timeout: float = 600) -> dict:
    p = subprocess.run([str(py), str(Path(__file__).resolve()), "--driver", cmd,
                        json.dumps(args)],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                       timeout=timeout, cwd=str(HERE))
    res = None
    for line in p.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            res = json.loads(line[len(RESULT_MARK):])
    if p.returncode != 0 or res is None:
        raise AssertionError(
            f"driver `{cmd}` under {py} exited {p.returncode}\n"
            f"--- args: {args}\n--- stdout:\n{_clip(p.stdout)}\n"
            f"--- stderr:\n{_clip(p.stderr, 6000)}")
    return res


def _probe(py: Path, modules: list[str]) -> dict:
    try:
        return _run_driver(py, "probe", {"modules": modules}, timeout=300)
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}


def _missing(msg: str, explicit: bool):
    """No such client venv: a failure when it was asked for (env var, or MLXFS_REQUIRE_CLIENTS=1
    as CI sets it), else a skip."""
    if explicit or os.environ.get("MLXFS_REQUIRE_CLIENTS") == "1":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def clients_py() -> Path:
    """Python of the clients venv (huggingface_hub 2.x, mlx, mlx-lm, tokenizers)."""
    explicit = bool(os.environ.get("MLXFS_CLIENTS_PYTHON"))
    py = _python_from("MLXFS_CLIENTS_PYTHON", HERE / ".venv-clients" / "bin" / "python")
    if py is None:
        py = Path(sys.executable)
    have = _probe(py, ["huggingface_hub", "mlx_lm", "tokenizers"])
    if not all(have.get(m) for m in ("huggingface_hub", "mlx_lm", "tokenizers")):
        _missing(f"no clients venv: {py} lacks huggingface_hub/mlx-lm/tokenizers ({have}); "
                 f"create integration/.venv-clients from requirements-clients.txt", explicit)
    major = int(have["huggingface_hub"].split(".")[0])
    assert major >= 1, f"clients venv has huggingface_hub {have['huggingface_hub']}, want 2.x"
    return py


@pytest.fixture(scope="session")
def hf036_py() -> Path:
    explicit = bool(os.environ.get("MLXFS_HF036_PYTHON"))
    py = _python_from("MLXFS_HF036_PYTHON", HERE / ".venv-hf036" / "bin" / "python")
    if py is None:
        _missing("no integration/.venv-hf036 (huggingface_hub 0.36.x): create it from "
                 "requirements-hf036.txt", explicit)
    have = _probe(py, ["huggingface_hub"])
    v = have.get("huggingface_hub")
    if not (v and v.startswith("0.36.")):
        _missing(f"{py}: huggingface_hub {v!r}, want 0.36.x ({have})", explicit)
    return py


# ------------------------------------------------------------------------------------------------
# Models and the hub


@pytest.fixture(scope="session")
def hub():
    with FakeHub() as h:
        yield h


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def _dir_files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_llama(clients_py, models_dir, hub) -> dict:
    """The tiny llama (single file and 2-shard variants) generated with mlx-lm's classes and
    added to the hub. {"dir", "sharded_dir", "commit", "sharded_commit"}"""
    out = {}
    for key, repo, shards in (("", LLAMA, 1), ("sharded_", LLAMA_SHARDED, 2)):
        d = models_dir / repo.split("/")[1]
        p = subprocess.run([str(clients_py), str(HERE / "tinymodels.py"), "llama", str(d),
                            "--shards", str(shards)], capture_output=True, text=True,
                           timeout=600, cwd=str(HERE))
        assert p.returncode == 0, f"tinymodels llama failed:\n{p.stdout}\n{p.stderr}"
        # A file in a subdirectory: snapshots keep subdirs (one more ../ in the link), and so
        # must mlx/.
        (d / "original").mkdir()
        (d / "original" / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2}))
        out[key + "dir"] = d
        out[key + "commit"] = hub.add_repo(repo, _dir_files(d))
    return out


@pytest.fixture(scope="session")
def tiny_ggufs(models_dir, hub) -> dict:
    """tiny-F16.gguf and tiny-Q8_0.gguf in the hub repo GGUF_REPO.
    {"dir", "commit", "info": {file name: make_tiny_gguf result}}"""
    d = models_dir / "tiny-gguf"
    d.mkdir()
    info = {}
    for fn, q in GGUF_FILES.items():
        info[fn] = tinymodels.make_tiny_gguf(d / fn, q, seed=3)
    (d / "README.md").write_text("---\nlibrary_name: gguf\n---\n# tiny-gguf\n")
    commit = hub.add_repo(GGUF_REPO, _dir_files(d))
    return {"dir": d, "commit": commit, "info": info}


# ------------------------------------------------------------------------------------------------
# Helpers


def hf_env(me, hub: FakeHub, offline: bool = False) -> dict:
    env = dict(me.mount.env)
    for k in list(env):
        if k.startswith("HF_") or k.lower() in ("http_proxy", "https_proxy", "all_proxy") \
                or k in ("HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_OFFLINE"):
            env.pop(k)
    env.update({
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(me.base / "hf-home"),
        "HF_HUB_CACHE": str(me.mount.path / "huggingface" / "hub"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def hf_download(py, me, hub, repo_id: str, offline: bool = False) -> dict:
    return _run_driver(py, "hf-download", {"repo_id": repo_id}, hf_env(me, hub, offline))


def repo_dir(me, repo_id: str) -> Path:
    return me.mount.path / "huggingface" / "hub" / ("models--" + repo_id.replace("/", "--"))


def hf_blob(me, hub, repo_id: str, path: str) -> Path:
    return repo_dir(me, repo_id) / "blobs" / hub.repo(repo_id).files[path].etag


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def appear(path: Path, timeout: float = 5.0) -> tuple[bool, float]:
    """(exists now, seconds it took); checks at once first, then polls (for the message only)."""
    t0 = time.monotonic()
    if os.path.lexists(path):
        return True, 0.0
    ok = wait_until(lambda: os.path.lexists(path), timeout, 0.1)
    return ok, time.monotonic() - t0


def assert_appears(path: Path, what: str, me) -> None:
    ok, dt = appear(path)
    parent = path.parent
    while not parent.exists() and parent != me.mount.path:
        parent = parent.parent
    listing = sorted(os.listdir(parent)) if parent.is_dir() else "?"
    assert ok and dt == 0.0, (
        f"{what}: {path} " + (f"appeared only after {dt:.1f}s (stale dentry? views must update "
                              f"at once)" if ok else "does not exist")
        + f"; {parent} lists {listing}\n--- daemon.log (tail):\n{me.mount.log_tail()}")


def check_hf_layout(me, hub, repo_id: str) -> Path:
    """The HF cache layout of a downloaded repo; returns the snapshot dir."""
    repo = hub.repo(repo_id)
    rd = repo_dir(me, repo_id)
    ref = (rd / "refs" / "main").read_bytes()
    assert ref == repo.sha.encode(), f"refs/main is {ref!r}, expected {repo.sha!r} (40 hex, no \\n)"
    blobs = rd / "blobs"
    names = set(os.listdir(blobs))
    want = {f.etag for f in repo.files.values()}
    assert names == want, (f"blobs/ lists {sorted(names)}, expected the etags {sorted(want)} "
                           f"(leftover .incomplete files?)")
    snap = rd / "snapshots" / repo.sha
    for path, f in repo.files.items():
        b = blobs / f.etag
        st = os.lstat(b)
        assert stat.S_ISREG(st.st_mode), f"blob {b} is not a regular file: {oct(st.st_mode)}"
        assert st.st_size == f.size, f"blob {b}: size {st.st_size}, expected {f.size}"
        assert sha256_file(b) == f.sha256, f"blob {b}: content differs from {path}"
        link = snap / path
        lst = os.lstat(link)
        assert stat.S_ISLNK(lst.st_mode), f"snapshot entry {link} is not a symlink"
        target = os.readlink(link)
        want_t = "../" * (2 + path.count("/")) + "blobs/" + f.etag
        assert target == want_t, f"{link} -> {target!r}, expected {want_t!r}"
        assert os.stat(link).st_ino == st.st_ino, f"{link} does not resolve to its blob"
    got = {str(p.relative_to(snap)) for p in snap.rglob("*") if not p.is_dir()}
    assert got == set(repo.files), f"snapshot lists {sorted(got)}, expected {sorted(repo.files)}"
    return snap


def hub_summary(hub: FakeHub) -> str:
    return "\n".join(f"  {m} {p} -> {s}" for m, p, s in hub.requests()[-40:])


def walk_files(root: Path) -> dict[str, os.stat_result]:
    """{relative path: lstat} of every non-directory under root."""
    out = {}
    for dp, dns, fns in os.walk(root):
        for fn in fns:
            p = Path(dp) / fn
            out[str(p.relative_to(root))] = os.lstat(p)
        for dn in dns:  # os.walk reports symlinks to dirs as dirs; a view has none
            p = Path(dp) / dn
            if os.path.islink(p):
                out[str(p.relative_to(root))] = os.lstat(p)
    return out


# ================================================================================================
# 1. snapshot_download into the mount: layout, scan_cache_dir, offline mode (2.x and 0.36.x)


@pytest.fixture(params=["hf2", "hf036"])
def hf_client(request) -> Path:
    if request.param == "hf2":
        return request.getfixturevalue("clients_py")
    return request.getfixturevalue("hf036_py")


def test_hf_snapshot_download_scan_and_offline(hf_client, mount_env, hub, tiny_llama):
    me = mount_env
    hub.reset_log()
    res = hf_download(hf_client, me, hub, LLAMA)
    online = hub.requests()
    print(f"\nhuggingface_hub {res['version']}: {len(online)} requests")
    snap = repo_dir(me, LLAMA) / "snapshots" / hub.repo(LLAMA).sha
    assert res["path"] == str(snap), f"snapshot_download returned {res['path']}, expected {snap}"
    assert any(m == "GET" and "/resolve/" in p for m, p, _ in online), \
        f"no file was downloaded from the fake hub:\n{hub_summary(hub)}"
    assert all(s < 400 for _, _, s in online), f"failed requests:\n{hub_summary(hub)}"

    check_hf_layout(me, hub, LLAMA)
    for path, src in _dir_files(tiny_llama["dir"]).items():
        assert (snap / path).read_bytes() == src.read_bytes(), f"{path} differs after download"

    # scan_cache_dir: the repo, once, no warnings, real sizes
    scan = _run_driver(hf_client, "hf-scan", {}, hf_env(me, hub))
    assert scan["warnings"] == [], f"scan_cache_dir warnings: {scan['warnings']}"
    repos = [r for r in scan["repos"] if r["repo_id"] == LLAMA]
    assert len(repos) == 1, f"scan_cache_dir repos: {[r['repo_id'] for r in scan['repos']]}"
    r = repos[0]
    files = hub.repo(LLAMA).files
    blob_sizes = {f.etag: f.size for f in files.values()}
    assert r["repo_type"] == "model"
    assert r["size_on_disk"] == sum(blob_sizes.values()), r
    assert r["nb_files"] == len(blob_sizes), r
    assert len(r["revisions"]) == 1, r["revisions"]
    rev = r["revisions"][0]
    assert rev["commit_hash"] == hub.repo(LLAMA).sha and rev["refs"] == ["main"], rev
    assert rev["snapshot_path"] == str(snap)
    got = {f["file_name"]: f["size_on_disk"] for f in rev["files"]}
    want = {p.rsplit("/", 1)[-1]: f.size for p, f in files.items()}
    assert got == want, f"scan files {got}, expected {want}"
    for f in rev["files"]:
        assert f["blob_last_modified"] > 0 and f["blob_last_accessed"] > 0, f

    # offline: same path, not one request
    hub.reset_log()
    off = hf_download(hf_client, me, hub, LLAMA, offline=True)
    assert off["path"] == str(snap), f"offline snapshot_download returned {off['path']}"
    assert hub.count() == 0, f"HF_HUB_OFFLINE=1 still sent requests:\n{hub_summary(hub)}"

    # and online again: nothing is downloaded a second time
    hub.reset_log()
    again = hf_download(hf_client, me, hub, LLAMA)
    assert again["path"] == str(snap)
    gets = [p for m, p, _ in hub.requests() if m == "GET" and "/resolve/" in p]
    assert gets == [], f"a second snapshot_download downloaded again: {gets}"


def test_hf036_resumes_an_incomplete_download(hf036_py, mount_env, hub, tiny_llama):
    """0.36.x resumes `blobs/<etag>.incomplete` by appending after a `Range: bytes=N-` GET
    (2.x always starts over in a uniquely named temp file)."""
    me = mount_env
    f = hub.repo(LLAMA).files["model.safetensors"]
    blobs = repo_dir(me, LLAMA) / "blobs"
    blobs.mkdir(parents=True)
    src = (tiny_llama["dir"] / "model.safetensors").read_bytes()
    half = len(src) // 2 + 123
    (blobs / f"{f.etag}.incomplete").write_bytes(src[:half])
    hub.reset_log()
    hf_download(hf036_py, me, hub, LLAMA)
    ranged = [(m, p, s) for m, p, s in hub.requests()
              if m == "GET" and p.endswith("/model.safetensors")]
    assert [s for _, _, s in ranged] == [206], \
        f"expected one ranged GET (206) of model.safetensors:\n{hub_summary(hub)}"
    check_hf_layout(me, hub, LLAMA)
    assert not os.path.exists(blobs / f"{f.etag}.incomplete")


# ================================================================================================
# 2. mlx/ view: every snapshot file as a regular file with the HF blob's inode; mlx-lm loads it


def _check_mlx_view(me, hub, repo_id: str) -> Path:
    org, name = repo_id.split("/")
    mdir = me.mount.path / "mlx" / org / name
    assert_appears(mdir, "mlx view of a downloaded repo", me)
    st = os.lstat(mdir)
    assert stat.S_ISDIR(st.st_mode), f"{mdir} is not a directory"
    files = hub.repo(repo_id).files
    seen = walk_files(mdir)
    assert set(seen) == set(files), (f"mlx/{org}/{name} lists {sorted(seen)}, expected every "
                                     f"file of the snapshot {sorted(files)}")
    for path, f in files.items():
        lst = seen[path]
        assert stat.S_ISREG(lst.st_mode), f"mlx/{repo_id}/{path} is not a regular file " \
                                          f"(mode {oct(lst.st_mode)})"
        blob = os.stat(hf_blob(me, hub, repo_id, path))
        assert lst.st_ino == blob.st_ino, (f"mlx/{repo_id}/{path}: st_ino {lst.st_ino} != HF "
                                           f"blob's {blob.st_ino}")
        assert lst.st_size == f.size, f"mlx/{repo_id}/{path}: size {lst.st_size} != {f.size}"
        assert sha256_file(mdir / path) == f.sha256, f"mlx/{repo_id}/{path}: content differs"
    return mdir


def test_mlx_view_mlx_lm_load_and_generate(clients_py, mount_env, hub, tiny_llama):
    me = mount_env
    views = []
    for repo_id in (LLAMA, LLAMA_SHARDED):
        org, name = repo_id.split("/")
        mdir = me.mount.path / "mlx" / org / name
        # Look the name up before it exists (the kernel may cache the miss): it must still show
        # up at once when the download finishes.
        assert not os.path.lexists(mdir), f"{mdir} exists before the download"
        hf_download(clients_py, me, hub, repo_id)
        views.append(_check_mlx_view(me, hub, repo_id))

    orig = [str(tiny_llama["dir"]), str(tiny_llama["sharded_dir"])]
    res = _run_driver(clients_py, "mlx-generate",
                      {"paths": orig + [str(v) for v in views], "prompt": PROMPT,
                       "max_tokens": MAX_TOKENS})["results"]
    o1, o2, v1, v2 = res
    print(f"\nmlx-lm via {views[0]}: {v1['tokens']} {v1['text']!r}")
    assert len(v1["tokens"]) >= 1 and len(v2["tokens"]) >= 1, res
    assert v1["tokens"] == o1["tokens"], f"generation through mlx/ differs: {v1} vs {o1}"
    assert v2["tokens"] == o2["tokens"], f"sharded generation through mlx/ differs: {v2} vs {o2}"


def test_mlx_view_safetensors_safe_open(clients_py, mount_env, hub, tiny_llama):
    np = pytest.importorskip("numpy")
    safetensors = pytest.importorskip("safetensors")
    me = mount_env
    for repo_id, src in ((LLAMA, tiny_llama["dir"]), (LLAMA_SHARDED, tiny_llama["sharded_dir"])):
        hf_download(clients_py, me, hub, repo_id)
        mdir = _check_mlx_view(me, hub, repo_id)
        shards = sorted(p.name for p in src.glob("model*.safetensors"))
        assert shards
        n = 0
        for fn in shards:
            with safetensors.safe_open(str(src / fn), framework="numpy") as a, \
                    safetensors.safe_open(str(mdir / fn), framework="numpy") as b:
                assert a.metadata() == b.metadata(), fn
                assert sorted(a.keys()) == sorted(b.keys()), fn
                for k in a.keys():
                    x, y = a.get_tensor(k), b.get_tensor(k)
                    assert x.dtype == y.dtype and x.shape == y.shape, k
                    assert np.array_equal(x, y), f"{repo_id}/{fn}: tensor {k} differs via mlx/"
                    n += 1
        assert n > 0


# ================================================================================================
# 3. A GGUF downloaded into the HF tree: Ollama manifest + blobs, lmstudio/, one inode


def _check_blob(blobs: Path, digest: str, size: int | None) -> Path:
    assert digest.startswith("sha256:") and len(digest) == 7 + 64, digest
    p = blobs / ("sha256-" + digest[7:])
    assert p.is_file(), f"blob {p} missing; blobs/ lists {sorted(os.listdir(blobs))}"
    data = p.read_bytes()
    assert sha256_bytes(data) == digest[7:], f"{p}: content does not hash to its name"
    if size is not None:
        assert len(data) == size and os.stat(p).st_size == size, \
            f"{p}: {len(data)} bytes (st_size {os.stat(p).st_size}), manifest says {size}"
    return p


def test_hf_gguf_appears_in_ollama_and_lmstudio(clients_py, mount_env, hub, tiny_ggufs):
    gguf = pytest.importorskip("gguf")
    me = mount_env
    ollama = me.mount.path / "ollama" / "models"
    mdir = ollama / "manifests" / "hf.co" / ORG / "tiny-gguf"
    assert not os.path.lexists(mdir), f"{mdir} exists before the download"
    hf_download(clients_py, me, hub, GGUF_REPO)
    check_hf_layout(me, hub, GGUF_REPO)
    repo = hub.repo(GGUF_REPO)

    for fn, tag in GGUF_FILES.items():
        src = tiny_ggufs["dir"] / fn
        f = repo.files[fn]
        man_path = mdir / tag
        assert_appears(man_path, f"Ollama manifest of {fn}", me)
        raw = man_path.read_bytes()
        try:
            man = json.loads(raw)
        except ValueError as e:
            raise AssertionError(f"{man_path} is not JSON ({e}): {raw[:500]!r}")
        assert man.get("schemaVersion") == 2, man
        assert man.get("mediaType") == OLLAMA_MANIFEST_TYPE, man
        # every layer and the config are blobs named by their content's sha256
        models = [layer for layer in man["layers"] if layer.get("mediaType") == OLLAMA_MODEL_TYPE]
        assert len(models) == 1, f"{man_path}: model layers {models}"
        assert models[0]["digest"] == "sha256:" + f.sha256, (models[0], f.sha256)
        assert models[0]["size"] == f.size, models[0]
        for layer in man["layers"]:
            _check_blob(ollama / "blobs", layer["digest"], layer.get("size"))
        cfg = man["config"]
        assert cfg.get("mediaType") == OLLAMA_CONFIG_TYPE, cfg
        cfg_path = _check_blob(ollama / "blobs", cfg["digest"], cfg.get("size"))
        conf = json.loads(cfg_path.read_bytes())
        assert conf.get("model_format") == "gguf", conf
        assert conf.get("model_family") == "llama", conf
        assert "llama" in (conf.get("model_families") or []), conf
        # Ollama's ConfigV2.FileType is a string ("F16", "Q8_0", ...): a number breaks its JSON
        # decoding.
        assert conf.get("file_type") == tag, conf
        assert isinstance(conf.get("model_type"), str), conf
        assert conf.get("architecture") and conf.get("os"), conf

        # one content, one inode
        hf_ino = os.stat(hf_blob(me, hub, GGUF_REPO, fn)).st_ino
        blob = ollama / "blobs" / ("sha256-" + f.sha256)
        assert os.stat(blob).st_ino == hf_ino, \
            f"{blob}: st_ino {os.stat(blob).st_ino} != HF blob's {hf_ino}"
        lms = me.mount.path / "lmstudio" / ORG / "tiny-gguf" / fn
        assert_appears(lms, f"lmstudio view of {fn}", me)
        lst = os.lstat(lms)
        assert stat.S_ISREG(lst.st_mode), f"{lms} is not a regular file"
        assert lst.st_ino == hf_ino, f"{lms}: st_ino {lst.st_ino} != HF blob's {hf_ino}"
        assert lst.st_size == f.size and sha256_file(lms) == f.sha256, f"{lms}: content differs"

        # gguf reads its tensors from the Ollama blob path (it mmaps the file)
        r = gguf.GGUFReader(str(blob))
        ft = r.fields["general.file_type"]
        assert int(ft.parts[ft.data[0]][0]) == tiny_ggufs["info"][fn]["file_type"]
        got = {t.name: sha256_bytes(bytes(t.data.tobytes())) for t in r.tensors}
        assert got == tiny_ggufs["info"][fn]["tensors"], f"{blob}: tensors differ"
        ref = gguf.GGUFReader(str(src))
        assert [t.name for t in r.tensors] == [t.name for t in ref.tensors]

    # readdir agrees with lookup (Ollama's `ollama list` walks manifests/)
    listed = set()
    for dp, _, fns in os.walk(ollama / "manifests"):
        listed |= {os.path.relpath(os.path.join(dp, x), ollama / "manifests") for x in fns}
    want = {f"hf.co/{ORG}/tiny-gguf/{t}" for t in GGUF_FILES.values()}
    assert want <= listed, f"walking manifests/ finds {sorted(listed)}, expected {sorted(want)}"
    blobs_listed = set(os.listdir(ollama / "blobs"))
    for fn in GGUF_FILES:
        assert "sha256-" + repo.files[fn].sha256 in blobs_listed, \
            f"blobs/ listing lacks the blob of {fn}: {sorted(blobs_listed)}"
    lms_listed = set(os.listdir(me.mount.path / "lmstudio" / ORG / "tiny-gguf"))
    assert lms_listed == set(GGUF_FILES), lms_listed


def test_ollama_pull_of_hf_gguf_overrides_the_synthesized_manifest(clients_py, mount_env, hub,
                                                                   tiny_ggufs):
    """`ollama pull hf.co/<org>/<repo>:F16` after the HF download: the model blob exists already
    (Ollama stats it and skips it), the config blob is pulled, and the manifest is written with
    os.Create (O_RDWR|O_CREAT|O_TRUNC; server/manifest.go WriteManifest) over the synthesized
    one: the real file wins, also after a remount."""
    me = mount_env
    hf_download(clients_py, me, hub, GGUF_REPO)
    ollama = me.mount.path / "ollama" / "models"
    man_path = ollama / "manifests" / "hf.co" / ORG / "tiny-gguf" / "F16"
    assert_appears(man_path, "synthesized Ollama manifest", me)
    f = hub.repo(GGUF_REPO).files["tiny-F16.gguf"]
    model_blob = ollama / "blobs" / f"sha256-{f.sha256}"
    assert model_blob.is_file(), f"{model_blob} missing"
    config = json.dumps({"model_format": "gguf", "model_family": "llama",
                         "model_families": ["llama"], "model_type": "1M", "file_type": "F16",
                         "architecture": "amd64", "os": "linux", "pulled_by": "ollama"}).encode()
    cd = _ollama_download(ollama / "blobs", config, parts=1)
    manifest = (json.dumps({
        "schemaVersion": 2, "mediaType": OLLAMA_MANIFEST_TYPE,
        "config": {"mediaType": OLLAMA_CONFIG_TYPE, "digest": f"sha256:{cd}", "size": len(config)},
        "layers": [{"mediaType": OLLAMA_MODEL_TYPE, "digest": f"sha256:{f.sha256}",
                    "size": f.size},
                   {"mediaType": "application/vnd.ollama.image.template",
                    "digest": f"sha256:{_ollama_download(ollama / 'blobs', b'{{ .Prompt }}', 1)}",
                    "size": len(b"{{ .Prompt }}")}],
    }) + "\n").encode()
    fd = os.open(man_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)  # os.Create
    try:
        assert os.write(fd, manifest) == len(manifest)
    finally:
        os.close(fd)

    def check(when: str):
        got = man_path.read_bytes()
        assert got == manifest, f"{when}: {man_path} reads {got[:300]!r}, not what Ollama wrote"
        assert os.stat(man_path).st_size == len(manifest), when
        assert sha256_file(ollama / "blobs" / f"sha256-{cd}") == cd, when
        assert sha256_file(model_blob) == f.sha256, when
        lms = me.mount.path / "lmstudio" / ORG / "tiny-gguf" / "tiny-F16.gguf"
        assert lms.is_file() and os.stat(lms).st_ino == os.stat(hf_blob(
            me, hub, GGUF_REPO, "tiny-F16.gguf")).st_ino, f"{when}: {lms}"

    check("after the write")
    me.mount.stop()
    me.mount.start()
    check("after unmount + mount")


# ================================================================================================
# 4. An Ollama pull, replayed syscall for syscall, appears in lmstudio/ and survives a remount


def _ollama_download(blobs: Path, data: bytes, parts: int = 16, piece: int = 32 << 10,
                     seed: int = 0) -> str:
    """What `ollama pull` does for one blob (server/download.go): `sha256-<hex>-partial`,
    ftruncate to the full size, one `-partial-N` JSON file per part rewritten as it progresses,
    `parts` goroutines writing their parts at their offsets (pwrite) at the same time, then the
    part files removed, rename, and one full read to verify the digest."""
    digest = sha256_bytes(data)
    final = blobs / f"sha256-{digest}"
    if final.exists():
        return digest
    partial = blobs / f"sha256-{digest}-partial"
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, len(data))
        size = -(-len(data) // parts)
        ranges = [(i, i * size, min(size, len(data) - i * size)) for i in range(parts)
                  if i * size < len(data)]
        lock = threading.Lock()

        def write_part_file(n, off, sz, done):
            with lock:  # Ollama serializes nothing here; the lock only keeps Python tidy
                pfd = os.open(f"{partial}-{n}", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
                try:  # os.Create + json.NewEncoder(f).Encode(part)
                    os.write(pfd, (json.dumps({"N": n, "Offset": off, "Size": sz,
                                               "Completed": done}) + "\n").encode())
                finally:
                    os.close(pfd)

        for n, off, sz in ranges:
            write_part_file(n, off, sz, 0)
        rnd = random.Random(seed)
        order = ranges[:]
        rnd.shuffle(order)
        barrier = threading.Barrier(len(order))
        errors: list[BaseException] = []

        def worker(n, off, sz, jitter):
            try:
                barrier.wait(30)
                time.sleep(jitter)
                done = 0
                while done < sz:
                    k = min(piece, sz - done)
                    w = os.pwrite(fd, data[off + done:off + done + k], off + done)
                    assert w == k, f"short pwrite {w} < {k}"
                    done += k
                    if rnd.random() < 0.3:
                        write_part_file(n, off, sz, done)
                write_part_file(n, off, sz, done)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(*r, rnd.random() * 0.02)) for r in order]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
    finally:
        os.close(fd)
    for n, _, _ in ranges:
        os.unlink(f"{partial}-{n}")
    os.rename(partial, final)
    assert sha256_file(final) == digest, f"{final}: pulled blob does not verify"
    return digest


def _ollama_pull(ollama: Path, gguf_bytes: bytes) -> dict:
    blobs = ollama / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    layers_content = [
        (OLLAMA_MODEL_TYPE, gguf_bytes),
        ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
        ("application/vnd.ollama.image.params", b'{"stop":["<|end_of_text|>"]}'),
        ("application/vnd.ollama.image.license", b"Random weights; no license needed.\n"),
    ]
    layers = []
    for mt, data in layers_content:
        d = _ollama_download(blobs, data, parts=16 if mt == OLLAMA_MODEL_TYPE else 1)
        layers.append({"mediaType": mt, "digest": f"sha256:{d}", "size": len(data)})
    config = json.dumps({
        "model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
        "model_type": "3M", "file_type": "F16", "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
    }).encode()
    cd = _ollama_download(blobs, config, parts=1)
    manifest = {
        "schemaVersion": 2, "mediaType": OLLAMA_MANIFEST_TYPE,
        "config": {"mediaType": OLLAMA_CONFIG_TYPE, "digest": f"sha256:{cd}", "size": len(config)},
        "layers": layers,
    }
    mp = ollama / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    mp.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(mp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)  # os.Create
    try:  # + json.NewEncoder(f).Encode(m): one write, with a newline
        os.write(fd, (json.dumps(manifest) + "\n").encode())
    finally:
        os.close(fd)
    return {"manifest": mp, "bytes": mp.read_bytes(), "model_digest": layers[0]["digest"]}


@pytest.fixture(scope="session")
def pull_gguf(models_dir) -> bytes:
    """A GGUF of a few MiB (16 parts of ~200 KiB) for the replayed Ollama pull; not in the hub."""
    pytest.importorskip("gguf")
    src = models_dir / "pull" / "tiny-F16.gguf"
    tinymodels.make_tiny_gguf(src, "F16", hidden=256, vocab=1024, seed=7)
    return src.read_bytes()


def test_ollama_pull_appears_in_lmstudio_and_survives_remount(mount_env, pull_gguf):
    me = mount_env
    data = pull_gguf
    ollama = me.mount.path / "ollama" / "models"
    lms = me.mount.path / "lmstudio" / "library" / "tiny" / "latest.gguf"
    assert not os.path.lexists(lms), f"{lms} exists before the pull"
    pulled = _ollama_pull(ollama, data)
    digest = pulled["model_digest"][7:]
    blob = ollama / "blobs" / f"sha256-{digest}"

    def check(when: str):
        leftovers = [n for n in os.listdir(ollama / "blobs") if "-partial" in n]
        assert not leftovers, f"{when}: leftover partial files {leftovers}"
        assert pulled["manifest"].read_bytes() == pulled["bytes"], f"{when}: manifest changed"
        assert sha256_file(blob) == digest, f"{when}: {blob} does not verify"
        assert_appears(lms, f"{when}: lmstudio view of the pulled model", me)
        lst = os.lstat(lms)
        assert stat.S_ISREG(lst.st_mode), f"{when}: {lms} is not a regular file"
        assert lst.st_size == len(data), f"{when}: {lms} size {lst.st_size} != {len(data)}"
        assert lst.st_ino == os.stat(blob).st_ino, \
            f"{when}: {lms} st_ino {lst.st_ino} != blob's {os.stat(blob).st_ino}"
        assert sha256_file(lms) == digest, f"{when}: {lms} content differs"

    check("after the pull")
    me.mount.stop()
    me.mount.start()
    check("after unmount + mount")


# ================================================================================================
# 5. Page cache: the same bytes read through huggingface/ and mlx/ are cached once


def _meminfo_cached() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no Cached: in /proc/meminfo")


def _drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _read_all(path: Path) -> int:
    buf = bytearray(8 << 20)
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                return n
            n += k


def _daemon_read_requests(mount) -> int:
    time.sleep(0.1)  # status answers are reused for 20 ms
    return json.loads(mount.cli("status", "--json").stdout)["ops"]["read"]["count"]


def test_page_cache_holds_the_bytes_once(clients_py, mount_env, hub, tmp_path):
    if os.geteuid() != 0 or not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        pytest.skip("needs root and a writable /proc/sys/vm/drop_caches")
    me = mount_env
    size = int(os.environ.get("MLXFS_PAGECACHE_MB", "512")) << 20
    src = tmp_path / "big-llama"
    info = tinymodels.make_big_safetensors_model(src, size)
    hub.add_repo(BIG, _dir_files(src))
    hf_download(clients_py, me, hub, BIG)
    shutil.rmtree(src)  # the served copy is not needed any more: keep the page cache quiet
    f = hub.repo(BIG).files["model.safetensors"]
    n = f.size
    assert n == info["size"]
    snap_file = repo_dir(me, BIG) / "snapshots" / hub.repo(BIG).sha / "model.safetensors"
    mlx_file = me.mount.path / "mlx" / ORG / "big-llama" / "model.safetensors"
    assert os.stat(snap_file).st_size == n

    assert os.stat(mlx_file).st_ino == os.stat(snap_file).st_ino, \
        f"{mlx_file}: st_ino differs from the HF blob's"

    # Other processes also fill the page cache (right after drop_caches the running programs
    # fault their code back in): the Cached measurement is retried, a real double caching fails
    # every time. Then the exact count: mincore() of the file and of the store's own files (pages
    # the daemon keeps mapped survive drop_caches, so Cached alone can miss them).
    mib = 1 << 20
    attempts = []
    daemon_read_before = _daemon_read_requests(me.mount)
    for _ in range(3):
        _drop_caches()
        time.sleep(2)  # let running programs fault their code and data back in
        c0 = _meminfo_cached()
        s0 = resident_bytes_under(me.store)
        assert _read_all(snap_file) == n
        c1 = _meminfo_cached()
        resident = resident_fraction(mlx_file)
        assert _read_all(mlx_file) == n
        c2 = _meminfo_cached()
        file_cached = resident_fraction(snap_file) * n
        store_cached = resident_bytes_under(me.store)
        msg = (f"Cached: +{(c1 - c0) / mib:.0f} MiB after reading {n / mib:.0f} MiB via "
               f"huggingface/, +{(c2 - c1) / mib:.0f} MiB more via mlx/ (total "
               f"+{(c2 - c0) / mib:.0f} MiB); {resident:.0%} of the mlx/ file was resident before "
               f"reading it; the file now holds {file_cached / mib:.0f} MiB of page cache, the "
               f"store's own files ({me.store}) {store_cached / mib:.0f} MiB (before the reads: "
               f"{s0 / mib:.0f} MiB)")
        print("\n" + msg)
        attempts.append(msg)
        assert c1 - c0 >= 0.75 * n or file_cached >= 0.75 * n, (
            "reading through huggingface/ did not fill the page cache (direct_io?): " + msg)
        if c2 - c0 < 1.5 * n:
            break
    else:
        raise AssertionError("the page cache holds the bytes twice (Cached rose by >= 1.5x the "
                             "file size in each of 3 tries):\n  " + "\n  ".join(attempts))
    if _daemon_read_requests(me.mount) == daemon_read_before:
        # FUSE passthrough: the kernel read the file from its pack, so the mounted file's pages
        # are the pack's pages, counted by both mincore() measurements.
        store_cached = max(0.0, store_cached - file_cached)
    assert file_cached + store_cached < 1.5 * n, (
        "the bytes are in RAM twice: once in the mounted file's page cache and once in the "
        "store's files that the daemon read them from: " + msg)
    assert resident >= 0.9, ("opening the mlx/ path did not find the pages cached through "
                             "huggingface/ (another kernel inode, or the cache is dropped on "
                             "open): " + msg)


# ================================================================================================
# 6. Views are read-only; `mlxfs ls` lists each model once with its paths


def test_views_are_read_only(clients_py, mount_env, hub, tiny_llama, tiny_ggufs):
    me = mount_env
    hf_download(clients_py, me, hub, LLAMA)
    hf_download(clients_py, me, hub, GGUF_REPO)
    mdir = me.mount.path / "mlx" / ORG / "tiny-llama"
    ldir = me.mount.path / "lmstudio" / ORG / "tiny-gguf"
    assert_appears(mdir / "config.json", "mlx view", me)
    assert_appears(ldir / "tiny-F16.gguf", "lmstudio view", me)
    originals = {p: p.read_bytes() for p in (mdir / "config.json", ldir / "tiny-F16.gguf")}
    modes = {p: os.stat(p).st_mode for p in originals}
    problems = []

    def erofs(what, fn, *a):
        try:
            r = fn(*a)
        except OSError as e:
            if e.errno != errno.EROFS:
                problems.append(f"{what}: {errno.errorcode.get(e.errno)}, want EROFS")
            return
        if isinstance(r, int) and fn is os.open:
            os.close(r)
        problems.append(f"{what}: succeeded, want EROFS")

    for d, fname in ((mdir, "config.json"), (ldir, "tiny-F16.gguf")):
        p = d / fname
        erofs(f"open {p} O_WRONLY", os.open, p, os.O_WRONLY)
        erofs(f"open {p} O_RDWR", os.open, p, os.O_RDWR)
        erofs(f"truncate {p}", os.truncate, p, len(originals[p]))
        erofs(f"chmod {p}", os.chmod, p, stat.S_IMODE(modes[p]))
        # Times stay settable on purpose: Ollama touches blobs it shares (utimensat), and a
        # time changes no byte of the model.
        os.utime(p, None)
        erofs(f"create in {d}", os.open, d / "new", os.O_WRONLY | os.O_CREAT, 0o644)
        erofs(f"mkdir in {d}", os.mkdir, d / "newdir")
        erofs(f"symlink in {d}", os.symlink, "x", d / "link")
        erofs(f"unlink {p}", os.unlink, p)
        erofs(f"rename {p}", os.rename, p, d / "renamed")
    erofs(f"rmdir {mdir}", os.rmdir, mdir)
    erofs("mkdir in mlx/", os.mkdir, me.mount.path / "mlx" / "neworg")
    erofs("mkdir in lmstudio/", os.mkdir, me.mount.path / "lmstudio" / "neworg")
    for p, data in originals.items():
        if p.read_bytes() != data:
            problems.append(f"{p}: content changed")
    assert not problems, "views are not read-only:\n  " + "\n  ".join(problems)


def test_mlxfs_ls_lists_each_model_once_with_its_paths(clients_py, mount_env, hub, tiny_llama,
                                                       tiny_ggufs, pull_gguf):
    me = mount_env
    hf_download(clients_py, me, hub, LLAMA)
    hf_download(clients_py, me, hub, GGUF_REPO)
    assert_appears(me.mount.path / "mlx" / ORG / "tiny-llama", "mlx view", me)
    pulled = _ollama_pull(me.mount.path / "ollama" / "models", pull_gguf)
    assert pulled["manifest"].exists()

    def problems_of(models: list[dict]) -> list[str]:
        out = []
        llama = [m for m in models if m.get("name") == LLAMA]
        if len(llama) != 1:
            return [f"{LLAMA} listed {len(llama)} times"]
        paths = llama[0].get("paths") or []
        if not any(x.rstrip("/").endswith(f"mlx/{LLAMA}") or f"mlx/{LLAMA}/" in x
                   for x in paths):
            out.append(f"{LLAMA}: paths {paths} lack mlx/{LLAMA}")
        if not any(f"models--{ORG}--tiny-llama" in x for x in paths):
            out.append(f"{LLAMA}: paths {paths} lack its huggingface/hub path")
        everything = [x for m in models for x in m.get("paths") or []]
        dup = sorted({x for x in everything if everything.count(x) > 1})
        if dup:
            out.append(f"paths listed twice: {dup}")
        for want in (f"lmstudio/{GGUF_REPO}/tiny-F16.gguf", f"manifests/hf.co/{GGUF_REPO}/F16",
                     "lmstudio/library/tiny/latest.gguf"):
            owners = [m.get("name") for m in models if any(want in x for x in m.get("paths") or [])]
            if len(owners) != 1:
                out.append(f"{want} is listed under {len(owners)} models {owners}, want 1")
        return out

    mounted = json.loads(me.mount.cli("ls", "--json").stdout)["models"]
    me.mount.stop()
    unmounted = json.loads(me.mount.cli("ls", "--json").stdout)["models"]
    p1, p2 = problems_of(mounted), problems_of(unmounted)
    assert not p1 and not p2, (
        f"`mlxfs ls --json` while mounted: {p1 or 'ok'}\n  {json.dumps(mounted)}\n"
        f"after unmount: {p2 or 'ok'}\n  {json.dumps(unmounted)}")
