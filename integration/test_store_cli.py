"""End-to-end tests of the mlxfs store CLI: import, scan, status, ls, cat, rm, verify, gc.

Every test runs the real binary ($MLXFS_BIN) on throw-away stores under pytest's tmp dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import struct
from pathlib import Path

import numpy as np
import pytest

import corpus as C
from mlxfs_helpers import Mlxfs, assert_reads_back, sha256_file, store_contains, tree_entries

STATUS_KEYS = ("logical_bytes", "physical_bytes", "files", "chunks", "models", "mounted")


def corpus_entries(corpus) -> list[tuple[str, Path]]:
    return tree_entries(corpus.hf, C.NS_HF) + tree_entries(corpus.ollama, C.NS_OLLAMA)


def regular_bytes(root: Path) -> int:
    """Sum of sizes of the regular files under root (symlinks not counted)."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for fn in filenames:
            p = Path(dirpath) / fn
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def model_count(status: dict) -> int:
    m = status["models"]
    return len(m) if isinstance(m, list) else m


def norm_ns(path: str) -> str:
    return path.lstrip("/")


def snapshot_dir(store: Path) -> dict[str, tuple[int, str]]:
    """path -> (size, sha256) of every file under a store directory."""
    out = {}
    for dirpath, _, filenames in os.walk(store):
        for fn in filenames:
            p = Path(dirpath) / fn
            out[str(p.relative_to(store))] = (p.stat().st_size, sha256_file(p))
    return out


def small_safetensors(rng: np.random.Generator, n_bytes: int = 300_000) -> bytes:
    a = rng.standard_normal(n_bytes // 2, dtype=np.float32).astype(np.float16)
    b = rng.standard_normal(333, dtype=np.float32).astype(np.float16)
    return C.safetensors_bytes([("w.weight", a), ("n.weight", b)], {"format": "pt"})


def good_repo(hub: Path, rng: np.random.Generator, repo_id: str = "good/repo") -> Path:
    """A small well-formed HF repo; returns its folder."""
    files = {"config.json": b'{"model_type": "llama"}\n',
             "model.safetensors": small_safetensors(rng),
             "nested/dir/extra.bin": rng.bytes(70_001)}
    C.write_hf_repo(hub, repo_id, files, C.fake_commit(repo_id, 0))
    return hub / ("models--" + repo_id.replace("/", "--"))


def tiny_gguf(path: Path, rng: np.random.Generator, custom_alignment: bool = False) -> bytes:
    import logging

    import gguf

    logging.getLogger("gguf").setLevel(logging.WARNING)
    w = gguf.GGUFWriter(path, "llama")
    if custom_alignment:
        w.add_custom_alignment(32)
    w.add_name("tiny")
    w.add_file_type(1)
    for i in range(4):
        w.add_tensor(f"blk.{i}.ffn_up.weight",
                     rng.standard_normal((37, 29 + i), dtype=np.float32).astype(np.float16))
    w.add_tensor("output_norm.weight", rng.standard_normal(29, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = path.read_bytes()
    path.unlink()
    return data


# --------------------------------------------------------------------------------------------
# the corpus itself


def test_corpus_is_well_formed(corpus):
    """The generator's output has the layouts the other tests rely on."""
    from gguf import GGUFReader
    from safetensors.numpy import load_file

    info = corpus.info
    if info["scale"] == 1:
        assert 60e6 <= info["logical_bytes"] <= 120e6
    assert 0 < info["optimum_bytes"] < info["file_level_dedup_bytes"] < info["logical_bytes"]
    assert info["logical_bytes"] == regular_bytes(corpus.hf) + regular_bytes(corpus.ollama)

    for repo in info["hf_repos"]:
        d = corpus.hf / repo["folder"]
        ref = (d / "refs" / "main").read_bytes()
        assert re.fullmatch(rb"[0-9a-f]{40}", ref) and ref.decode() == repo["commit"]
        for f in repo["files"]:
            link = d / "snapshots" / repo["commit"] / f
            target = os.readlink(link)
            etag = Path(target).name
            assert target == "../" * (2 + f.count("/")) + "blobs/" + etag
            data = link.read_bytes()
            want = C.sha256_hex(data) if f.endswith(C.LFS_SUFFIXES) else C.git_blob_sha1(data)
            assert etag == want, f

    def snap(repo_id, name):
        r = next(r for r in info["hf_repos"] if r["repo_id"] == repo_id)
        return corpus.hf / r["folder"] / "snapshots" / r["commit"] / name

    def load_sharded(repo_id):
        t = {}
        for i in (1, 2):
            t.update(load_file(snap(repo_id, f"model-0000{i}-of-00002.safetensors")))
        return t

    base = load_sharded(C.BASE_REPO)
    ft = load_sharded(C.FINETUNE_REPO)
    mlx_path = snap(C.MLX_REPO, "model.safetensors")
    mlx = load_file(mlx_path)
    assert len(base) == info["base_tensor_count"] and set(base) == set(ft) == set(mlx)
    assert all(np.array_equal(base[k], mlx[k]) for k in base)
    changed = {k for k in base if not np.array_equal(base[k], ft[k])}
    assert changed == set(info["finetune_changed_tensors"])
    assert len(changed) == len(base) // 3
    # the MLX copy really has another tensor order than the base's shards
    (n,) = struct.unpack("<Q", mlx_path.read_bytes()[:8])
    mlx_order = [k for k in json.loads(mlx_path.read_bytes()[8:8 + n]) if k != "__metadata__"]
    assert mlx_order != sorted(mlx_order)

    gguf_path = snap(C.GGUF_REPO, C.GGUF_FILE)
    r = GGUFReader(gguf_path)
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["general.file_type"].contents() == 1
    st_payloads = {hashlib.sha256(a.tobytes()).hexdigest() for a in base.values()}
    shared = [t for t in r.tensors
              if hashlib.sha256(bytes(t.data.tobytes())).hexdigest() in st_payloads]
    assert len(shared) >= len(r.tensors) // 2  # most tensors share bytes with the safetensors

    manifest = json.loads((corpus.root / info["ollama_models"][0]["manifest"]).read_bytes())
    assert manifest["schemaVersion"] == 2
    for desc in [manifest["config"], *manifest["layers"]]:
        blob = corpus.ollama / "blobs" / desc["digest"].replace(":", "-")
        assert blob.stat().st_size == desc["size"]
        assert "sha256:" + sha256_file(blob) == desc["digest"]
    model_layer = manifest["layers"][0]
    assert model_layer["mediaType"] == "application/vnd.ollama.image.model"
    assert model_layer["digest"] == "sha256:" + sha256_file(gguf_path)


# --------------------------------------------------------------------------------------------
# the corpus in one store


def test_import_reaches_dedup_optimum(imported, corpus):
    r = imported.result
    n_files, n_links = len(corpus.info["files"]), len(corpus.info["symlinks"])
    assert r["skipped"] == []
    assert r["bytes"] == corpus.logical
    assert r["files"] in (n_files, n_files + n_links), r["files"]
    assert 0 < r["new_bytes"] <= 1.01 * corpus.optimum

    st = imported.m.status()
    missing = [k for k in STATUS_KEYS if k not in st]
    assert not missing, f"status --json lacks {missing}: {st}"
    ratio = st["physical_bytes"] / corpus.optimum
    print(f"\nphysical {st['physical_bytes']} / optimum {corpus.optimum} = {ratio:.4f}; "
          f"logical {st['logical_bytes']}, chunks {st['chunks']}, "
          f"saved {100 * (1 - st['physical_bytes'] / corpus.logical):.1f}% "
          f"(optimum saves {100 * (1 - corpus.optimum / corpus.logical):.1f}%)")
    assert st["logical_bytes"] == corpus.logical
    assert st["mounted"] is False
    assert st["chunks"] > 0
    assert model_count(st) == 5
    assert st["physical_bytes"] <= 1.01 * corpus.optimum, f"physical/optimum = {ratio:.4f}"


def test_every_file_reads_back(imported, corpus):
    n = assert_reads_back(imported.m, corpus_entries(corpus))
    assert n == len(corpus.info["files"]) + len(corpus.info["symlinks"])
    p = imported.m.run("cat", f"{C.NS_HF}/models--nobody--nothing/refs/main", expect=None)
    assert p.returncode != 0 and p.stdout == b""


def test_ls_lists_repos_and_ollama_model(imported, corpus):
    models = imported.m.json("ls")["models"]
    hf = [m for m in models if m["layout"] == "hf"]
    ollama = [m for m in models if m["layout"] == "ollama"]
    assert len(hf) == 4 and len(ollama) == 1 and len(models) == 5, models
    commits = {r["repo_id"]: r["commit"] for r in corpus.info["hf_repos"]}
    assert {m["name"] for m in hf} == set(commits)
    for m in hf:
        assert m["revision"] == commits[m["name"]], m
    assert C.OLLAMA_MODEL in ollama[0]["name"]
    for m in models:
        assert isinstance(m["logical_bytes"], int) and isinstance(m["unique_bytes"], int)
        assert 0 < m["logical_bytes"] and 0 <= m["unique_bytes"] <= m["logical_bytes"], m
        assert m["paths"] and all(isinstance(p, str) for p in m["paths"]), m
    by_name = {m["name"]: m for m in hf}
    # the fine-tune's changed third is its own; the base shares its tensors with the MLX copy
    assert by_name[C.FINETUNE_REPO]["unique_bytes"] > by_name[C.BASE_REPO]["unique_bytes"]


def test_verify_passes_on_fresh_store(imported):
    imported.m.run("verify")
    v = imported.m.json("verify")
    assert v["ok"] is True and not v.get("damaged"), v


def test_scan_is_a_dry_run(corpus, make_store, imported):
    m = make_store("never-created")
    s = m.json("scan", corpus.hf, corpus.ollama)
    assert not m.store.exists(), "scan created the store directory"
    print(f"\nscan: logical {s['logical_bytes']} deduped {s['deduped_bytes']} "
          f"saved {s['saved_bytes']} (optimum {corpus.optimum})")
    assert s["saved_bytes"] > 0
    assert s["logical_bytes"] == corpus.logical
    assert s["deduped_bytes"] + s["saved_bytes"] == s["logical_bytes"]
    assert len(s["models"]) == 5
    for mod in s["models"]:
        assert {"layout", "name", "logical_bytes", "unique_bytes"} <= set(mod), mod

    # nor does it touch an existing store
    before = snapshot_dir(imported.m.store)
    imported.m.json("scan", corpus.hf, corpus.ollama)
    assert snapshot_dir(imported.m.store) == before, "scan changed an existing store"


def test_second_import_adds_nothing(imported, corpus):
    before = imported.m.status()
    r = imported.m.import_(corpus.hf, corpus.ollama)
    assert r["new_bytes"] == 0 and r["skipped"] == [] and r["bytes"] == corpus.logical, r
    after = imported.m.status()
    for k in ("physical_bytes", "logical_bytes", "chunks"):
        assert after[k] == before[k], (k, before, after)
    assert_reads_back(imported.m, corpus_entries(corpus))


# --------------------------------------------------------------------------------------------
# damage and removal (each on its own store)


def test_verify_names_the_damaged_file(corpus, make_store):
    m = make_store()
    m.import_(corpus.hf, corpus.ollama)
    m.run("verify")
    packs = sorted((m.store / "packs").glob("*.pack"), key=lambda p: p.stat().st_size)
    assert packs, f"no packs in {m.store / 'packs'}"
    biggest = packs[-1]
    off = biggest.stat().st_size // 2
    with open(biggest, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0xFF]))

    p = m.run("verify", expect=1)
    out = p.stdout + p.stderr
    nspaths = corpus.nspaths()
    assert any(ns.encode() in out for ns in nspaths), (
        f"verify named no corpus file:\n{out.decode(errors='replace')[:3000]}")

    v = m.json("verify", expect=1)
    assert v["ok"] is False
    # each entry names its file by "path" (the spec) or "paths" (every path of one content)
    damaged = [norm_ns(p) for d in v["damaged"]
               for p in ([d["path"]] if "path" in d else d["paths"])]
    assert damaged and set(damaged) <= nspaths, damaged
    # reads return verified bytes or an error, never wrong bytes
    by_ns = {f["nspath"]: f for f in corpus.info["files"]}
    for ns in damaged:
        q = m.run("cat", ns, expect=None)
        if q.returncode == 0 and ns in by_ns:
            assert hashlib.sha256(q.stdout).hexdigest() == by_ns[ns]["sha256"], (
                f"cat {ns} returned wrong bytes with exit 0")


def test_rm_and_gc_reclaim_space(corpus, make_store):
    m = make_store()
    m.import_(corpus.hf, corpus.ollama)
    before = m.status()
    ft = "models--" + C.FINETUNE_REPO.replace("/", "--")
    ft_bytes = regular_bytes(corpus.hf / ft)

    m.run("rm", "-r", f"{C.NS_HF}/{ft}")
    assert m.run("cat", f"{C.NS_HF}/{ft}/refs/main", expect=None).returncode != 0
    m.json("gc")
    after = m.status()
    print(f"\nrm fine-tune + gc: physical {before['physical_bytes']} -> {after['physical_bytes']}")
    assert after["logical_bytes"] == before["logical_bytes"] - ft_bytes
    assert after["physical_bytes"] < before["physical_bytes"]
    assert model_count(after) == 4
    m.run("verify")
    rest = [(ns, src) for ns, src in corpus_entries(corpus) if f"/{ft}/" not in ns]
    assert_reads_back(m, rest)

    # remove everything else: gc must give (nearly) all the space back
    for tree, ns in ((corpus.hf, C.NS_HF), (corpus.ollama, C.NS_OLLAMA)):
        for name in sorted(os.listdir(tree)):
            if name != ft:
                m.run("rm", "-r", f"{ns}/{name}")
    m.json("gc")
    empty = m.status()
    print(f"rm all + gc: physical {empty['physical_bytes']}")
    assert empty["logical_bytes"] == 0 and model_count(empty) == 0
    assert empty["physical_bytes"] <= 0.01 * before["physical_bytes"]
    m.run("verify")


# --------------------------------------------------------------------------------------------
# hostile input


def test_import_skips_hf_blob_with_wrong_sha256(tmp_path, make_store):
    rng = np.random.default_rng(7)
    hub = tmp_path / "src" / "hub"
    good_repo(hub, rng)
    claimed, actual = small_safetensors(rng), b"LIAR-BLOB-" + rng.bytes(200_000)
    etag = C.sha256_hex(claimed)
    C.write_hf_repo(hub, "evil/liar", {"config.json": b'{"liar": true}\n',
                                       "model.safetensors": claimed}, C.fake_commit("liar", 0))
    liar = hub / "models--evil--liar"
    (liar / "blobs" / etag).write_bytes(actual)
    liar_ns = f"{C.NS_HF}/models--evil--liar/blobs/{etag}"
    honest = [(ns, src) for ns, src in tree_entries(hub, C.NS_HF)
              if not (src.is_symlink() and src.resolve().name == etag) and ns != liar_ns]

    m = make_store("plain")
    p = m.run("import", hub, expect=3)
    assert etag.encode() in p.stderr, p.stderr.decode(errors="replace")
    assert_reads_back(m, honest)
    q = m.run("cat", liar_ns, expect=None)
    assert q.returncode != 0 and actual[:64] not in q.stdout

    m2 = make_store("json")
    r = m2.import_(hub, expect=3)
    assert len(r["skipped"]) == 1 and etag in r["skipped"][0]["path"], r
    assert r["skipped"][0]["reason"]
    assert_reads_back(m2, honest)


def test_import_skips_downloads_in_progress(tmp_path, make_store):
    """huggingface_hub writes `blobs/<etag>.incomplete` (newer: `<etag>.<8 hex>.incomplete`)
    and Ollama `blobs/sha256-<hex>-partial*` until a download completes: half a file is not
    imported under any name; the rest of the cache is."""
    rng = np.random.default_rng(8)
    hub = tmp_path / "src" / "hub"
    good_repo(hub, rng)
    blobs = next(hub.glob("models--*")) / "blobs"
    half = rng.bytes(300_000)
    etag = C.sha256_hex(half + rng.bytes(300_000))
    partials = [blobs / f"{etag}.incomplete", blobs / f"{etag}.0f1e2d3c.incomplete"]
    for p in partials:
        p.write_bytes(half)
    honest = [(ns, src) for ns, src in tree_entries(hub, C.NS_HF) if src not in partials]

    m = make_store("json")
    r = m.import_(hub, expect=3)
    skipped = {Path(s["path"]).name: s["reason"] for s in r["skipped"]}
    assert skipped == {p.name: "partial download" for p in partials}, r
    assert_reads_back(m, honest)
    for p in partials:
        q = m.run("cat", f"{C.NS_HF}/{blobs.parent.name}/blobs/{p.name}", expect=None)
        assert q.returncode != 0 and half[:64] not in q.stdout


def test_a_blob_truncated_while_it_is_imported_is_skipped_not_a_crash(tmp_path, make_store):
    """Another process truncates a blob while `mlxfs import` has it mapped: before, the next
    read of a vanished page was a SIGBUS that killed the import; now that file is skipped (or,
    if the truncation came after it was read whole, imported with its bytes of then)."""
    import subprocess
    import time

    rng = np.random.default_rng(21)
    hub = tmp_path / "src" / "hub"
    good_repo(hub, rng)
    big = rng.bytes(600 << 20)
    C.write_hf_repo(hub, "big/trunc", {"config.json": b'{"big": true}\n',
                                       "model.safetensors": big}, C.fake_commit("trunc", 0))
    etag = C.sha256_hex(big)
    blob = hub / "models--big--trunc" / "blobs" / etag
    honest = [(ns, src) for ns, src in tree_entries(hub, C.NS_HF)
              if not (src.is_symlink() and src.resolve().name == etag) and src != blob]
    m = make_store()
    proc = subprocess.Popen([str(m.binary), "--store", str(m.store), "import", "--json",
                             str(hub)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=m.env)
    deadline = time.monotonic() + 60
    mapped = False
    while time.monotonic() < deadline and proc.poll() is None and not mapped:
        try:
            mapped = str(blob) in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            break
        if not mapped:
            time.sleep(0.002)
    with open(blob, "r+b") as f:
        f.truncate(1 << 20)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 3), (
        f"import exited {proc.returncode} (mapped when truncated: {mapped})\n"
        f"{err.decode(errors='replace')[-3000:]}")
    report = json.loads(out)
    assert_reads_back(m, honest)
    blob_ns = f"{C.NS_HF}/models--big--trunc/blobs/{etag}"
    skipped = [s for s in report["skipped"] if etag in s["path"]]
    if skipped:
        assert skipped[0]["reason"], report
        assert m.run("cat", blob_ns, expect=None).returncode != 0
    else:
        got = m.run("cat", blob_ns).stdout
        assert hashlib.sha256(got).hexdigest() == etag, "imported, but not its bytes of then"
    m.run("verify")


def test_an_import_that_fills_the_disk_says_so_keeps_earlier_files_and_gives_the_room_back(
        tmp_path, mlxfs_bin, base_env):
    """A store on a 64 MiB tmpfs (16 MiB of it the store's reserve): 20 MiB imported, then 32 MiB
    more that cannot fit beside it. The import fails with exit 1 and a message that says what
    happened and what to do; the first model reads back, verify is clean, the failed import's
    packs are gone at once, and after room is made the same import goes through."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], check=True)
    try:
        rng = np.random.default_rng(31)
        small_hub, big_hub = tmp_path / "small" / "hub", tmp_path / "big" / "hub"
        C.write_hf_repo(small_hub, "o/small", {"config.json": b"{}\n",
                                               "model.safetensors": rng.bytes(20 << 20)},
                        C.fake_commit("small", 0))
        C.write_hf_repo(big_hub, "o/big", {"config.json": b'{"big": 1}\n',
                                           "model-1.safetensors": rng.bytes(16 << 20),
                                           "model-2.safetensors": rng.bytes(16 << 20)},
                        C.fake_commit("big", 0))
        m = Mlxfs(mlxfs_bin, disk / "store", base_env)
        m.run("import", small_hub)
        p = m.run("import", big_hub, expect=1)
        err = p.stderr.decode(errors="replace")
        assert "no space left on the store's disk" in err and "import again" in err, err
        assert "free of" in err, err
        free = os.statvfs(disk)
        assert free.f_bavail * free.f_frsize > 36 << 20, "the failed import's packs stayed"
        assert_reads_back(m, tree_entries(small_hub, C.NS_HF))
        m.run("verify")
        m.run("rm", "-r", f"{C.NS_HF}/models--o--small")
        m.run("gc")
        m.run("import", big_hub)
        assert_reads_back(m, tree_entries(big_hub, C.NS_HF))
        m.run("verify")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_import_skips_ollama_blob_with_wrong_digest(tmp_path, make_store):
    rng = np.random.default_rng(8)
    models = tmp_path / "src" / "models"
    template = b"{{ .Prompt }}" + rng.bytes(5000)
    C.write_ollama_model(models, "tiny", "latest",
                         [("application/vnd.ollama.image.model", tiny_gguf(tmp_path / "t.gguf", rng)),
                          ("application/vnd.ollama.image.template", template)],
                         {"model_format": "gguf", "model_family": "llama"})
    bad = models / "blobs" / f"sha256-{C.sha256_hex(template)}"
    bad.write_bytes(b"NOT-THE-TEMPLATE" + rng.bytes(5000))
    bad_ns = f"{C.NS_OLLAMA}/blobs/{bad.name}"

    m = make_store()
    r = m.import_(models, expect=3)
    assert len(r["skipped"]) == 1 and bad.name in r["skipped"][0]["path"], r
    assert_reads_back(m, [(ns, s) for ns, s in tree_entries(models, C.NS_OLLAMA) if ns != bad_ns])
    assert m.run("cat", bad_ns, expect=None).returncode != 0


def test_import_never_follows_escaping_symlinks(tmp_path, make_store):
    rng = np.random.default_rng(9)
    src = tmp_path / "src"
    hub = src / "hub"
    good_repo(hub, rng)
    outside = b"OUTSIDE-FILE-MARKER-" + rng.bytes(3000)
    (src / "outside").write_bytes(outside)
    secret = b"OUTSIDE-DIR-MARKER-" + rng.bytes(3000)
    (src / "outside_dir").mkdir()
    (src / "outside_dir" / "secret.bin").write_bytes(secret)
    C.write_hf_repo(hub, "evil/links", {"config.json": b'{"links": 1}\n'}, C.fake_commit("l", 0))
    snap = hub / "models--evil--links" / "snapshots" / C.fake_commit("l", 0)
    escaping = {"passwd": "/etc/passwd", "escape": "../../../../outside",
                "dirlink": "../../../../outside_dir", "etcdir": "/etc"}
    for name, target in escaping.items():
        os.symlink(target, snap / name)
    os.symlink("escape", snap / "hop")  # in-tree link to an escaping one
    assert (snap / "escape").read_bytes() == outside  # the layout really escapes
    assert (snap / "dirlink" / "secret.bin").read_bytes() == secret
    passwd = Path("/etc/passwd").read_bytes()

    m = make_store()
    p = m.run("import", hub, expect=3)
    for name in ("passwd", "escape", "dirlink", "etcdir"):
        assert name.encode() in p.stderr, (name, p.stderr.decode(errors="replace"))
    good = [(ns, s) for ns, s in tree_entries(hub, C.NS_HF) if s.name not in {*escaping, "hop"}]
    assert_reads_back(m, good)
    for name in (*escaping, "hop", "dirlink/secret.bin", "etcdir/passwd"):
        q = m.run("cat", f"{C.NS_HF}/models--evil--links/snapshots/{C.fake_commit('l', 0)}/{name}",
                  expect=None)
        for needle in (outside, secret, passwd):
            assert needle not in q.stdout, f"cat {name} returned content from outside the import"
    for needle, what in ((outside, "outside"), (secret, "outside_dir/secret.bin"),
                         (passwd, "/etc/passwd")):
        hits = store_contains(m.store, needle)
        assert not hits, f"content of {what} is in the store: {hits}"


def test_import_malformed_headers_as_plain_bytes(tmp_path, make_store):
    rng = np.random.default_rng(10)
    hub = tmp_path / "src" / "hub"
    gguf_ok = tiny_gguf(tmp_path / "a.gguf", rng)
    (tmp_path / "ok.gguf").write_bytes(gguf_ok)
    data_start = min(s for s, _ in C.gguf_ranges(tmp_path / "ok.gguf"))
    gguf_al = bytearray(tiny_gguf(tmp_path / "b.gguf", rng, custom_alignment=True))
    k = gguf_al.index(b"general.alignment") + len(b"general.alignment") + 4
    assert struct.unpack_from("<I", gguf_al, k)[0] == 32
    struct.pack_into("<I", gguf_al, k, 0)
    gguf_counts = bytearray(gguf_ok)
    struct.pack_into("<QQ", gguf_counts, 8, 2**63 - 1, 2**62)

    body = rng.bytes(200_000)
    hdr = json.dumps({"w": {"dtype": "F16", "shape": [10**6], "data_offsets": [0, 10**12]}}).encode()
    rev = json.dumps({"a": {"dtype": "U8", "shape": [5000], "data_offsets": [5000, 100]},
                      "b": {"dtype": "U8", "shape": [9000], "data_offsets": [0, 9000]}}).encode()
    files = {
        "huge-header.safetensors": struct.pack("<Q", 1 << 60) + body,
        "header-past-eof.safetensors": struct.pack("<Q", len(body) + 1) + body,
        "offsets-past-eof.safetensors": struct.pack("<Q", len(hdr)) + hdr + body,
        "reversed-offsets.safetensors": struct.pack("<Q", len(rev)) + rev + body,
        "not-json.safetensors": struct.pack("<Q", 64) + b"\xff" * 64 + body[:50_000],
        "empty.safetensors": b"",
        "tiny.safetensors": b"\x01\x02\x03",
        "truncated-data.gguf": gguf_ok[: data_start + (len(gguf_ok) - data_start) // 2],
        "truncated-header.gguf": gguf_ok[:100],
        "huge-counts.gguf": bytes(gguf_counts),
        "zero-alignment.gguf": bytes(gguf_al),
        "magic-only.gguf": b"GGUF",
        "valid.gguf": gguf_ok,
    }
    C.write_hf_repo(hub, "evil/malformed", files, C.fake_commit("m", 0))
    m = make_store()
    r = m.import_(hub)
    assert r["skipped"] == [], r
    assert_reads_back(m, tree_entries(hub, C.NS_HF))
    m.run("verify")


# --------------------------------------------------------------------------------------------
# property test: random files


SIZES = [0, 1, 2, 3, 7, 8, 31, 32, 33, 63, 64, 65, 4095, 4096, 4097, 65535, 65536, 65537,
         (1 << 20) - 1, 1 << 20, (1 << 20) + 1]
SUFFIXES = [".bin", ".safetensors", ".gguf", ".json", ".txt", ""]


def random_safetensors(rng: np.random.Generator, r: random.Random) -> bytes:
    tensors = []
    for i in range(r.randrange(0, 6)):
        dtype = r.choice([np.float16, np.float32, np.uint8])
        shape = [r.choice([0, 1, 3, 17, 255, 1000, 4099]) for _ in range(r.randrange(1, 3))]
        n = int(np.prod(shape))
        a = (rng.standard_normal(n, dtype=np.float32).astype(dtype) if dtype != np.uint8
             else rng.integers(0, 256, n, dtype=np.uint8)).reshape(shape)
        tensors.append((f"t{i}.{r.randrange(10**6)}", a))
    r.shuffle(tensors)
    return C.safetensors_bytes(tensors, {"format": "pt"} if r.random() < 0.5 else None)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_files_read_back(seed, tmp_path, make_store):
    rng = np.random.default_rng(seed)
    r = random.Random(seed)
    contents: list[bytes] = []
    for i in range(30):
        x = r.random()
        size = 0 if i == 0 else 1 if i == 1 else (
            r.choice(SIZES) if x < 0.5 else int(r.triangular(0, 3 << 20, 0)))
        if i > 1 and x < 0.2:
            data = r.choice(contents)                                  # duplicate
        elif x < 0.3:
            data = random_safetensors(rng, r)
        elif x < 0.35:
            data = tiny_gguf(tmp_path / f"{i}.gguf", rng)
        elif x < 0.45:
            data = bytes([r.randrange(256)]) * size                    # low entropy
        else:
            data = rng.bytes(size)
        contents.append(data)

    hub = tmp_path / "src" / "hub"
    repos: dict[str, dict[str, bytes]] = {f"prop{seed}/repo{j}": {} for j in range(3)}
    for i, data in enumerate(contents):
        repo = r.choice(list(repos))
        dirs = [f"d{r.randrange(3)}" for _ in range(r.randrange(0, 3))]
        name = "/".join(dirs + [f"f{i}{r.choice(SUFFIXES)}"])
        repos[repo][name] = data
    for j, (repo_id, files) in enumerate(repos.items()):
        if j == 0 and files:  # an older snapshot with part of the files, as a hub cache has
            old = dict(list(files.items())[: len(files) // 2])
            C.write_hf_repo(hub, repo_id, old, C.fake_commit(repo_id + "@old", seed))
        C.write_hf_repo(hub, repo_id, files, C.fake_commit(repo_id, seed))

    m = make_store()
    res = m.import_(hub)
    assert res["skipped"] == [], res
    entries = tree_entries(hub, C.NS_HF)
    assert_reads_back(m, entries)
    st = m.status()
    assert st["logical_bytes"] == regular_bytes(hub)


def test_store_from_env_var(tmp_path, make_store, base_env):
    hub = tmp_path / "src" / "hub"
    good_repo(hub, np.random.default_rng(11))
    m = make_store("from-env")
    m.run("import", hub, env=dict(base_env, MLXFS_STORE=str(m.store)), store=False)
    assert m.store.is_dir()
    assert m.status()["logical_bytes"] == regular_bytes(hub)
    assert_reads_back(m, tree_entries(hub, C.NS_HF))


@pytest.fixture
def btrfs_dir(tmp_path):
    """A fresh btrfs file system on a loop device (a file under tmp_path), mounted; torn down
    after the test. CI installs btrfs-progs (test.sh)."""
    import shutil
    import subprocess
    if shutil.which("mkfs.btrfs") is None:
        pytest.fail("mkfs.btrfs missing: test.sh installs btrfs-progs")
    image, where = tmp_path / "btrfs.img", tmp_path / "btrfs"
    with open(image, "wb") as f:
        f.truncate(1 << 30)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    where.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def used_bytes(path: Path) -> int:
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_import_on_btrfs_clones_instead_of_copying(btrfs_dir, base_env, mlxfs_bin):
    """Source and store on one file system that can clone (btrfs, XFS): a big new file's pack
    is a clone of it (FICLONE), so the import writes no data; the pack keeps its bytes when the
    source is rewritten in place afterwards (copy-on-write)."""
    from mlxfs_helpers import Mlxfs
    rng = np.random.default_rng(11)
    hub = btrfs_dir / "hub"
    weights = rng.bytes(96 << 20)
    C.write_hf_repo(hub, "org/cloned", {"model.bin": weights, "config.json": b"{}\n"},
                    C.fake_commit("cloned", 0))
    m = Mlxfs(mlxfs_bin, btrfs_dir / "store", base_env)
    before = used_bytes(btrfs_dir)
    report = m.import_(hub)
    assert report["new_bytes"] >= len(weights), report
    grew = used_bytes(btrfs_dir) - before
    assert grew < len(weights) // 4, f"the store grew by {grew} bytes for a {len(weights)}-byte file"
    assert not any((btrfs_dir / "store" / "staging").iterdir())

    blob = hub / "models--org--cloned" / "blobs" / C.sha256_hex(weights)
    with open(blob, "r+b") as f:
        f.write(b"\0" * (1 << 20))
    ns = f"{C.NS_HF}/models--org--cloned/blobs/{C.sha256_hex(weights)}"
    assert hashlib.sha256(m.run("cat", ns).stdout).digest() == hashlib.sha256(weights).digest()
    v = m.run("verify")
    assert b"all good" in v.stdout, v.stdout


def unsynced_marks(store: Path) -> list[tuple[int, str]]:
    """The packs an import committed before they were known to be on disk."""
    import sqlite3
    db = sqlite3.connect(store / "catalog.db")
    try:
        return db.execute("SELECT pack, session FROM unsynced_packs").fetchall()
    finally:
        db.close()


def cut_short_repo(tmp_path: Path) -> tuple[Path, str, dict[str, bytes]]:
    """A repo of two 24 MiB shards (each its own raw pack); returns hub, snapshot ns path, files."""
    rng = np.random.default_rng(11)
    files = {"config.json": b'{"model_type": "llama"}\n',
             "a.safetensors": small_safetensors(rng, 24 << 20),
             "b.safetensors": small_safetensors(rng, 24 << 20)}
    commit = C.fake_commit("cut/short", 0)
    hub = tmp_path / "hub"
    C.write_hf_repo(hub, "cut/short", files, commit)
    return hub, f"huggingface/hub/models--cut--short/snapshots/{commit}", files


def test_an_import_cut_short_by_a_crash_drops_files_never_shows_them_wrong(tmp_path, make_store):
    """import returns before its packs are on disk, as cp does. After a power cut (a new boot)
    the next command checks what it wrote: a file whose bytes did not reach the disk is gone
    from the tree, never shown cut; the others stay; importing again brings it back."""
    hub, snap, files = cut_short_repo(tmp_path)
    m = make_store()
    m.import_(hub)
    assert unsynced_marks(m.store), "the import recorded its packs as not yet on disk"

    # What a power cut leaves: the catalog's commit on disk, half of one pack not, a new boot.
    import sqlite3
    db = sqlite3.connect(m.store / "catalog.db")
    db.execute("UPDATE unsynced_packs SET session = 'another-boot/u1'")
    db.commit()
    db.close()
    raw = sorted((m.store / "packs").glob("*.raw"))
    assert len(raw) == 2, raw
    os.truncate(raw[0], raw[0].stat().st_size // 2)

    p = m.run("verify")  # the first command after the "reboot" checks, drops, then verifies
    assert b"did not reach the disk" in p.stderr, p.stderr.decode(errors="replace")
    assert unsynced_marks(m.store) == []
    shown = {}
    for name in ("a.safetensors", "b.safetensors"):
        q = m.run("cat", f"{snap}/{name}", expect=None)
        if q.returncode == 0:
            assert q.stdout == files[name], f"{name} shown with wrong bytes"
            shown[name] = True
        else:
            assert b"no such" in q.stderr.lower() or b"not found" in q.stderr.lower(), q.stderr
    assert len(shown) == 1, f"exactly the cut file is dropped, got {shown}"
    assert m.cat(f"{snap}/config.json") == files["config.json"]

    m.import_(hub)
    for name in ("a.safetensors", "b.safetensors"):
        assert m.cat(f"{snap}/{name}") == files[name]


def test_import_sync_and_the_next_command_leave_nothing_unsynced(tmp_path, make_store):
    hub, snap, files = cut_short_repo(tmp_path)
    m = make_store()
    m.run("import", hub, "--sync")
    assert unsynced_marks(m.store) == [], "--sync returns with the packs on disk"
    m2 = make_store("other")
    m2.import_(hub)
    assert unsynced_marks(m2.store)
    m2.run("ls")  # the next open in the same boot syncs them
    assert unsynced_marks(m2.store) == []
    assert m2.cat(f"{snap}/a.safetensors") == files["a.safetensors"]
