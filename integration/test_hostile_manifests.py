"""Hostile Ollama manifests and names (DESIGN.md §6, issue 7): digests with `..`, `/`, NUL,
absolute paths or the wrong form, manifests that are not JSON, nested past any sane depth or
huge, odd model/namespace/tag names, and links that leave the tree. Each item gets a clear
message naming it, nothing outside the tree is read, nothing panics, the rest of the import
proceeds, and the mount serves every view of the result.

(test_store_cli.py covers blobs whose content does not match their name, escaping symlinks in
Hugging Face caches, and lying safetensors/GGUF headers.)"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corpus as C  # noqa: E402
from mlxfs_helpers import assert_reads_back, store_contains, tree_entries  # noqa: E402
from mountlib import Mount, wait_until  # noqa: E402

HEX = "0123456789abcdef"


def manifest(*digests, config=None) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": d, "size": 1}
                   for d in digests],
    }
    if config is not None:
        doc["config"] = {"mediaType": "application/vnd.docker.container.image.v1+json",
                         "digest": config, "size": 1}
    return json.dumps(doc).encode()


def test_hostile_ollama_manifests_and_names(tmp_path, make_store, mlxfs_bin, base_env):
    rng = np.random.default_rng(71)
    src = tmp_path / "src"
    models = src / "models"
    good_layer = b"GGUF" + rng.bytes(20_000)
    good_manifest = C.write_ollama_model(
        models, "good", "latest", [("application/vnd.ollama.image.model", good_layer)],
        {"model_format": "gguf", "model_family": "llama"})
    good_digest = f"sha256:{C.sha256_hex(good_layer)}"

    # A file outside the tree; hostile manifests point at it every way they can.
    outside = src / "outside"
    outside.mkdir()
    secret = b"OUTSIDE-THE-TREE-" + rng.bytes(4000)
    (outside / "secret").write_bytes(secret)
    secret_hex = hashlib.sha256(secret).hexdigest()
    (outside / f"sha256-{secret_hex}").write_bytes(secret)

    lib = models / "manifests" / "registry.ollama.ai" / "library"
    bad_digests = {
        "dotdot": "sha256:../../../outside/secret",
        "dotdot-hex": f"sha256:{secret_hex[:60]}/../../../outside/sha256-{secret_hex}",
        "absolute": "/etc/passwd",
        "absolute-sha": "sha256:/etc/passwd",
        "nul": "sha256:" + secret_hex[:32] + "\0" + secret_hex[33:],
        "upper": "sha256:" + secret_hex.upper(),
        "short": "sha256:" + secret_hex[:63],
        "long": "sha256:" + secret_hex + "0",
        "sha512": "sha512:" + secret_hex * 2,
        "no-algo": secret_hex,
        "empty": "",
    }
    broken: dict[str, bytes] = {}
    for name, digest in bad_digests.items():
        broken[f"d-{name}"] = manifest(good_digest, digest)
        broken[f"c-{name}"] = manifest(good_digest, config=digest)
    broken["not-json"] = b"\x00\xff\xfe garbage \x89PNG" + rng.bytes(3000)
    broken["truncated"] = manifest(good_digest)[:-7]
    broken["deep"] = b"[" * 200_000 + b"]" * 200_000
    broken["deep-object"] = b'{"layers":' * 100_000 + b"1" + b"}" * 100_000
    broken["digest-number"] = b'{"schemaVersion":2,"layers":[{"digest":12345}]}'
    broken["layers-not-list"] = b'{"schemaVersion":2,"layers":"sha256:../../x"}'
    broken["no-layers"] = b'{"schemaVersion":2}'
    broken["json-array"] = b'["sha256:../../outside/secret"]'
    # Huge: 40 MB of valid JSON naming a million layers (and the outside file's digest).
    broken["huge"] = manifest(*([good_digest] * 400_000), f"sha256:{secret_hex}")
    for name, data in broken.items():
        p = lib / name / "latest"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    # A well-formed digest of bytes that exist only outside the tree: no blob by that name
    # in the tree, so nothing is read, and the model simply lacks that layer.
    p = lib / "outside-digest" / "latest"
    p.parent.mkdir(parents=True)
    p.write_bytes(manifest(good_digest, f"sha256:{secret_hex}"))

    # Odd names: valid on disk, so they are imported as they are, and views must cope.
    odd = [
        ("registry.ollama.ai", "...", "m", "latest"),
        ("registry.ollama.ai", "..ns", "a..b", "..."),
        ("registry.ollama.ai", "library", "-rf", "--all"),
        ("registry.ollama.ai", "library", "new\nline", "tab\ttag"),
        ("registry.ollama.ai", "library", "x" * 255, "y" * 255),
        ("registry.ollama.ai", "library", "sp ace", "latest"),
    ]
    odd_paths = []
    for host, ns, model, tag in odd:
        d = models / "manifests" / host / ns / model
        d.mkdir(parents=True, exist_ok=True)
        (d / tag).write_bytes(good_manifest.read_bytes())
        odd_paths.append(d / tag)
    # Non-UTF-8 names.
    raw = os.fsencode(models / "manifests" / "registry.ollama.ai" / "library") + b"/\xff\xfe"
    os.makedirs(raw)
    with open(raw + b"/\xc3\x28", "wb") as f:
        f.write(good_manifest.read_bytes())

    # Links that leave the tree: an absolute manifest link, a manifest dir link, a blob link.
    os.symlink("/etc/passwd", lib / "good" / "passwd")
    os.symlink("../../../../../outside", lib / "escape-dir")
    os.symlink(f"../../outside/sha256-{secret_hex}", models / "blobs" / f"sha256-{secret_hex}")
    # A manifest where the blobs should be, and a blob where a manifest should be.
    (models / "blobs" / "sha256-not-a-digest").write_bytes(manifest("sha256:../../../etc/passwd"))

    m = make_store()
    p = m.run("import", models, "--json", expect=3)
    report = json.loads(p.stdout)
    stderr = p.stderr.decode(errors="replace")
    assert "panicked" not in stderr and "RUST_BACKTRACE" not in stderr, stderr[-3000:]

    messages = {**{s["path"]: s["reason"] for s in report["skipped"]},
                **{w["path"]: w["message"] for w in report["warnings"]}}
    # Each broken manifest is named, with the reason, and imported as a plain file.
    for name in broken:
        path = str(lib / name / "latest")
        assert path in messages, f"no message for manifest {name}: {sorted(messages)[:40]}"
        assert "manifest" in messages[path], (name, messages[path])
        assert path in stderr, f"manifest {name} not named on stderr"
    # The escaping links are skipped, each by name.
    for link in (lib / "good" / "passwd", lib / "escape-dir",
                 models / "blobs" / f"sha256-{secret_hex}"):
        assert str(link) in messages and str(link) in stderr, (link, sorted(messages)[:40])
        assert str(link) in {s["path"] for s in report["skipped"]}, link

    # Nothing from outside the tree is in the store, and nothing reads as it.
    for needle, what in ((secret, "outside/secret"), (Path("/etc/passwd").read_bytes(),
                                                       "/etc/passwd")):
        hits = store_contains(m.store, needle)
        assert not hits, f"content of {what} is in the store: {hits}"
    assert m.run("cat", f"{C.NS_OLLAMA}/blobs/sha256-{secret_hex}", expect=None).returncode != 0

    # The rest of the import went through: every regular file reads back, broken manifests
    # included (as plain bytes).
    skipped = {s["path"] for s in report["skipped"]}
    entries = [(ns, s) for ns, s in tree_entries(models, C.NS_OLLAMA)
               if str(s) not in skipped and not s.is_symlink()]
    # (`mlxfs cat` takes UTF-8 paths only: the non-UTF-8 name is read through the mount below.)
    utf8 = [(ns, s) for ns, s in entries if ns.isprintable() or "\n" in ns or "\t" in ns]
    utf8 = [(ns, s) for ns, s in utf8 if not any(0xDC80 <= ord(c) <= 0xDCFF for c in ns)]
    assert len(entries) - len(utf8) == 1
    assert_reads_back(m, utf8)
    listing = m.json("ls")
    names = {(x["name"], x["revision"]) for x in listing["models"]}
    assert ("registry.ollama.ai/library/good", "latest") in names, names
    for name in broken:
        assert ("registry.ollama.ai/library/" + name, "latest") not in names, name
    assert m.run("verify").returncode == 0

    # Mounted, every view of this store lists and reads without an error.
    mnt = tmp_path / "mnt"
    mount = Mount(mlxfs_bin, m.store, mnt, base_env)
    try:
        mount.start()
        seen = 0
        for dirpath, dirnames, filenames in os.walk(mnt):
            for name in filenames:
                path = os.path.join(dirpath, name)
                if os.path.islink(path) and not os.path.exists(path):
                    continue  # a dangling link in the mirror is fine
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass
                seen += 1
        assert seen > len(broken)
        mirrored = os.fsencode(mnt / C.NS_OLLAMA / "manifests/registry.ollama.ai/library")
        with open(mirrored + b"/\xff\xfe/\xc3\x28", "rb") as f:
            assert f.read() == good_manifest.read_bytes()
        assert wait_until(lambda: mount.cli("status", "--json").returncode == 0, 10)
        assert "panicked" not in mount.log_tail(100_000)
    finally:
        mount.cleanup()
