#!/usr/bin/env python3
"""Deterministic mixed model corpus for mlxfs tests, with its exact dedup optimum.

    python corpus.py OUTDIR [--scale N] [--seed S]

builds, under OUTDIR:

* ``hf/hub``          a Hugging Face hub cache (layout of DESIGN.md section 4) with four repos:
  (a) ``mlxtest/llama-mini``           base llama-like model, 2 safetensors shards + index
  (b) ``mlxtest/llama-mini-finetune``  same tensor names, one third of the tensors changed
  (c) ``mlx-community/llama-mini-mlx`` the base re-saved in another tensor order, one shard
  (d) ``mlxtest/llama-mini-GGUF``      an F16 GGUF of the base (Q/K row-permuted, norms F32)
* ``ollama/models``   an Ollama models dir holding the same GGUF as (d) as model layer of
  ``registry.ollama.ai/library/llama-mini:f16``
* ``corpus.json``     ``optimum_bytes``, ``logical_bytes``, ``files`` (every regular file) and more.

The optimum is computed from the files as written (their headers are parsed again): the sum of
the lengths of the distinct tensor payloads (by SHA-256 of the payload bytes) plus every byte of
every distinct file (by SHA-256 of the whole file) that is not tensor payload (headers, JSON,
manifests, GGUF metadata and alignment padding).

The same seed and scale give byte-identical output (given the same numpy and gguf versions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

DEFAULT_SEED = 20251125

# Where the trees live under OUTDIR, and where `mlxfs import` puts them in its namespace.
HF_DIR = "hf/hub"
OLLAMA_DIR = "ollama/models"
NS_HF = "huggingface/hub"
NS_OLLAMA = "ollama/models"

BASE_REPO = "mlxtest/llama-mini"
FINETUNE_REPO = "mlxtest/llama-mini-finetune"
MLX_REPO = "mlx-community/llama-mini-mlx"
GGUF_REPO = "mlxtest/llama-mini-GGUF"
GGUF_FILE = "llama-mini-F16.gguf"
OLLAMA_MODEL = "llama-mini"
OLLAMA_TAG = "f16"

# Files stored through git LFS in a real hub repo get a SHA-256 etag, the rest a git blob SHA-1.
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".npz")


# --------------------------------------------------------------------------------------------
# hashing and small helpers


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def hf_etag(relpath: str, data: bytes) -> str:
    if relpath.endswith(LFS_SUFFIXES):
        return sha256_hex(data)
    return git_blob_sha1(data)


def fake_commit(name: str, seed: int) -> str:
    """A deterministic 40-hex commit id."""
    return hashlib.sha1(f"commit:{name}:{seed}".encode()).hexdigest()


def json_bytes(obj, indent: int | None = 2) -> bytes:
    return (json.dumps(obj, indent=indent, sort_keys=False, ensure_ascii=False) + "\n").encode()


# --------------------------------------------------------------------------------------------
# writing layouts


def write_hf_repo(hub: Path, repo_id: str, files: dict[str, bytes], commit: str) -> list[Path]:
    """Write one repo of a HF hub cache: blobs, snapshot symlinks, refs/main, .locks.

    Returns the paths of the snapshot entries (symlinks)."""
    org, name = repo_id.split("/")
    folder = f"models--{org}--{name}"
    repo = hub / folder
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    locks = hub / ".locks" / folder
    locks.mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / commit
    links = []
    for relpath, data in files.items():
        etag = hf_etag(relpath, data)
        blob = repo / "blobs" / etag
        if not blob.exists():
            blob.write_bytes(data)
        (locks / f"{etag}.lock").touch()
        link = snap / relpath
        link.parent.mkdir(parents=True, exist_ok=True)
        depth = relpath.count("/")
        target = "../" * (2 + depth) + f"blobs/{etag}"
        if link.is_symlink():
            link.unlink()
        os.symlink(target, link)
        links.append(link)
    (repo / "refs" / "main").write_bytes(commit.encode())  # exactly 40 hex, no newline
    return links


def write_cachedir_tag(hub: Path) -> None:
    hub.mkdir(parents=True, exist_ok=True)
    (hub / "CACHEDIR.TAG").write_bytes(
        b"Signature: 8a477f597d28d172789f06886806bc55\n"
        b"# This file is a cache directory tag created by huggingface_hub.\n"
        b"# For information about cache directory tags, see:\n"
        b"#\thttps://bford.info/cachedir/\n"
    )


def write_ollama_model(models: Path, model: str, tag: str, layers: list[tuple[str, bytes]],
                       config: dict) -> Path:
    """Write blobs and the manifest of one Ollama model. layers: (mediaType, bytes)."""
    blobs = models / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = sha256_hex(data)
        p = blobs / f"sha256-{digest}"
        if not p.exists():
            p.write_bytes(data)
        return digest

    layer_entries = []
    diff_ids = []
    for media_type, data in layers:
        d = put(data)
        layer_entries.append({"mediaType": media_type, "digest": f"sha256:{d}", "size": len(data)})
        diff_ids.append(f"sha256:{d}")
    config = dict(config)
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    cd = put(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": f"sha256:{cd}",
            "size": len(config_bytes),
        },
        "layers": layer_entries,
    }
    mpath = models / "manifests" / "registry.ollama.ai" / "library" / model / tag
    mpath.parent.mkdir(parents=True, exist_ok=True)
    mpath.write_bytes(json.dumps(manifest, separators=(",", ":")).encode())
    return mpath


# --------------------------------------------------------------------------------------------
# safetensors and GGUF


def safetensors_bytes(tensors: Iterable[tuple[str, np.ndarray]], metadata: dict | None) -> bytes:
    """Serialize tensors in exactly the given order (like MLX's own writer, unlike the
    safetensors package, which sorts). Header padded with spaces to 8 bytes."""
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    payloads = []
    off = 0
    dtypes = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32",
              np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8", np.dtype(np.int64): "I64"}
    for name, arr in tensors:
        arr = np.ascontiguousarray(arr)
        b = arr.tobytes()
        header[name] = {"dtype": dtypes[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [off, off + len(b)]}
        payloads.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(payloads)


def safetensors_package_bytes(tensors: dict[str, np.ndarray], metadata: dict | None) -> bytes:
    """Serialize with the safetensors package (what transformers' save_pretrained does)."""
    from safetensors.numpy import save

    return save(tensors, metadata=metadata)


def safetensors_ranges(data: bytes) -> list[tuple[int, int]] | None:
    """(start, end) absolute byte ranges of the tensor payloads, or None if not safetensors."""
    if len(data) < 10:
        return None
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > len(data) - 8 or n < 2 or data[8:9] != b"{":
        return None
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        return None
    base = 8 + n
    out = []
    for k, v in header.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        out.append((base + s, base + e))
    return out


def gguf_ranges(path: Path) -> list[tuple[int, int]] | None:
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            return None
    from gguf import GGUFReader

    r = GGUFReader(path)
    return [(int(t.data_offset), int(t.data_offset) + int(t.n_bytes)) for t in r.tensors]


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Row permutation llama.cpp's convert_hf_to_gguf.py applies to Q and K."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


# --------------------------------------------------------------------------------------------
# the model


@dataclass
class Dims:
    hidden: int = 600          # 600 * 2 bytes = 1200: rows are not 32-byte multiples
    n_head: int = 10
    n_kv_head: int = 2
    intermediate: int = 1601
    vocab: int = 2501
    layers: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_head


def odd(n: float) -> int:
    n = max(3, int(round(n)))
    return n if n % 2 else n + 1


def dims_for_scale(scale: float) -> Dims:
    d = Dims()
    d.vocab = odd(d.vocab * scale)
    d.intermediate = odd(d.intermediate * scale)
    return d


def base_tensors(d: Dims, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """HF llama tensor names, in the order transformers would create them."""

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    def norm():
        return (1.0 + rng.standard_normal(d.hidden, dtype=np.float32) * 0.05).astype(np.float16)

    kv = d.n_kv_head * d.head_dim
    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": w(d.vocab, d.hidden)}
    for i in range(d.layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = w(d.hidden, d.hidden)
        t[p + "self_attn.k_proj.weight"] = w(kv, d.hidden)
        t[p + "self_attn.v_proj.weight"] = w(kv, d.hidden)
        t[p + "self_attn.o_proj.weight"] = w(d.hidden, d.hidden)
        t[p + "mlp.gate_proj.weight"] = w(d.intermediate, d.hidden)
        t[p + "mlp.up_proj.weight"] = w(d.intermediate, d.hidden)
        t[p + "mlp.down_proj.weight"] = w(d.hidden, d.intermediate)
        t[p + "input_layernorm.weight"] = norm()
        t[p + "post_attention_layernorm.weight"] = norm()
    t["model.norm.weight"] = norm()
    t["lm_head.weight"] = w(d.vocab, d.hidden)
    return t


def finetune_tensors(base: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[dict, list]:
    """Every third tensor (in name order, so large and tiny ones alike) gets an update."""
    out = dict(base)
    changed = []
    for i, name in enumerate(sorted(base)):
        if i % 3 == 1:
            a = base[name].astype(np.float32)
            delta = rng.standard_normal(a.shape, dtype=np.float32) * (np.abs(a).mean() * 0.1 + 1e-3)
            out[name] = (a + delta).astype(np.float16)
            changed.append(name)
    return out, changed


def hf_config(d: Dims, name_or_path: str, extra: dict | None = None) -> dict:
    c = {
        "_name_or_path": name_or_path,
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": d.hidden,
        "intermediate_size": d.intermediate,
        "max_position_embeddings": 2048,
        "model_type": "llama",
        "num_attention_heads": d.n_head,
        "num_hidden_layers": d.layers,
        "num_key_value_heads": d.n_kv_head,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.46.0",
        "use_cache": True,
        "vocab_size": d.vocab,
    }
    if extra:
        c.update(extra)
    return c


def vocab_tokens(n: int, rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    toks = ["<unk>", "<s>", "</s>"]
    seen = set(toks)
    while len(toks) < n:
        k = int(rng.integers(1, 9))
        t = ("\u2581" if rng.random() < 0.5 else "") + "".join(rng.choice(letters, k))
        if t not in seen:
            seen.add(t)
            toks.append(t)
    return toks


def tokenizer_json(tokens: list[str]) -> bytes:
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, t in enumerate(tokens[:3])
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first"},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "fuse_unk": True,
                  "byte_fallback": True, "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": []},
    }
    return json_bytes(tok)


def shard_split(tensors: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """Split in creation order into n shards of roughly equal byte size (like save_pretrained)."""
    total = sum(a.nbytes for a in tensors.values())
    shards: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    acc = 0
    for name, a in tensors.items():
        idx = min(n - 1, acc * n // total)
        shards[idx][name] = a
        acc += a.nbytes
    return shards


def sharded_safetensors_files(tensors: dict[str, np.ndarray], metadata: dict) -> dict[str, bytes]:
    shards = shard_split(tensors, 2)
    files: dict[str, bytes] = {}
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        files[fname] = safetensors_package_bytes(shard, metadata)
        for name in shard:
            weight_map[name] = fname
    total = sum(a.nbytes for a in tensors.values())
    index = {"metadata": {"total_size": total},
             "weight_map": {k: weight_map[k] for k in sorted(weight_map)}}
    files["model.safetensors.index.json"] = json_bytes(index)
    return files


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in GGUF_NAMES:
        return GGUF_NAMES[hf_name]
    _, _, i, rest = hf_name.split(".", 3)
    return f"blk.{i}.{GGUF_NAMES[rest]}"


def write_gguf(path: Path, tensors: dict[str, np.ndarray], d: Dims, tokens: list[str],
               name: str) -> None:
    """An F16 GGUF the way convert_hf_to_gguf.py makes one: Q/K row-permuted, norms F32,
    everything else the same bytes as the safetensors."""
    import logging

    import gguf

    logging.getLogger("gguf").setLevel(logging.WARNING)
    w = gguf.GGUFWriter(path, "llama")
    w.add_type("model")
    w.add_name(name)
    w.add_size_label("mini")
    w.add_context_length(2048)
    w.add_embedding_length(d.hidden)
    w.add_block_count(d.layers)
    w.add_feed_forward_length(d.intermediate)
    w.add_head_count(d.n_head)
    w.add_head_count_kv(d.n_kv_head)
    w.add_rope_dimension_count(d.head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1)  # MOSTLY_F16
    w.add_vocab_size(d.vocab)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores([float(-i) for i in range(len(tokens))])
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_quantization_version(2)
    for hf_name, a in tensors.items():
        g = gguf_name(hf_name)
        if a.ndim == 1:
            a = a.astype(np.float32)
        elif hf_name.endswith("q_proj.weight"):
            a = llama_permute(a, d.n_head)
        elif hf_name.endswith("k_proj.weight"):
            a = llama_permute(a, d.n_kv_head)
        w.add_tensor(g, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --------------------------------------------------------------------------------------------
# the corpus


@dataclass
class Corpus:
    root: Path
    scale: float
    seed: int
    hf_repos: dict[str, dict] = field(default_factory=dict)
    ollama_models: list[dict] = field(default_factory=list)


def build(outdir: str | os.PathLike, scale: float = 1.0, seed: int = DEFAULT_SEED) -> dict:
    """Build the corpus under outdir (which must be empty or absent); return corpus.json's dict."""
    root = Path(outdir)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    d = dims_for_scale(scale)

    hub = root / HF_DIR
    write_cachedir_tag(hub)

    tokens = vocab_tokens(d.vocab, rng)
    tok_json = tokenizer_json(tokens)
    tok_config = json_bytes({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
                             "eos_token": "</s>", "unk_token": "<unk>",
                             "model_max_length": 2048, "tokenizer_class": "LlamaTokenizer"})
    gen_config = json_bytes({"bos_token_id": 1, "eos_token_id": 2,
                             "transformers_version": "4.46.0"})
    gitattributes = (b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
                     b"*.gguf filter=lfs diff=lfs merge=lfs -text\n")

    def config(name_or_path, extra=None):
        return json_bytes(hf_config(d, name_or_path, extra))

    repos: dict[str, dict] = {}

    # (a) base: two shards written by the safetensors package.
    base = base_tensors(d, rng)
    files = {".gitattributes": gitattributes, "config.json": config(BASE_REPO),
             "generation_config.json": gen_config, "tokenizer.json": tok_json,
             "tokenizer_config.json": tok_config}
    files.update(sharded_safetensors_files(base, {"format": "pt"}))
    repos[BASE_REPO] = files

    # (b) fine-tune: same names, a third of the tensors changed, re-saved the same way.
    ft, changed = finetune_tensors(base, rng)
    files = {".gitattributes": gitattributes,
             "config.json": config(FINETUNE_REPO, {"_name_or_path": BASE_REPO}),
             "generation_config.json": gen_config, "tokenizer.json": tok_json,
             "tokenizer_config.json": tok_config,
             "README.md": b"---\nbase_model: " + BASE_REPO.encode() + b"\n---\n# fine-tune\n"}
    files.update(sharded_safetensors_files(ft, {"format": "pt"}))
    repos[FINETUNE_REPO] = files

    # (c) MLX copy: one shard, tensors in another order than the package's name order (grouped by
    # kind, as a converter iterating its own dict would), written by our own writer.
    order = sorted(base, key=lambda n: (n.split(".")[-2:], n))
    mlx_st = safetensors_bytes([(n, base[n]) for n in order], {"format": "mlx"})
    repos[MLX_REPO] = {
        "config.json": config(MLX_REPO),
        "model.safetensors": mlx_st,
        "model.safetensors.index.json": json_bytes(
            {"metadata": {"total_size": sum(a.nbytes for a in base.values())},
             "weight_map": {n: "model.safetensors" for n in sorted(base)}}),
        "tokenizer.json": tok_json,
        "tokenizer_config.json": tok_config,
        "README.md": b"# llama-mini-mlx\nConverted to MLX format from " + BASE_REPO.encode() + b"\n",
    }

    # (d) GGUF F16 of the base, in its own repo.
    tmp = root / ".gguf.tmp"
    write_gguf(tmp, base, d, tokens, "llama-mini")
    gguf_data = tmp.read_bytes()
    tmp.unlink()
    repos[GGUF_REPO] = {
        ".gitattributes": gitattributes,
        "README.md": b"# llama-mini GGUF\nF16 conversion of " + BASE_REPO.encode() + b"\n",
        GGUF_FILE: gguf_data,
    }

    commits = {}
    for repo_id, files in repos.items():
        commit = fake_commit(repo_id, seed)
        commits[repo_id] = commit
        write_hf_repo(hub, repo_id, files, commit)

    # Ollama: the same GGUF bytes as model layer, plus template, params and config blobs.
    models = root / OLLAMA_DIR
    template = b"{{ if .System }}<s>[INST] <<SYS>>{{ .System }}<</SYS>>\n\n{{ end }}{{ .Prompt }} [/INST]"
    params = json.dumps({"stop": ["[INST]", "[/INST]", "</s>"]}).encode()
    config_blob = {"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
                   "model_type": "mini", "file_type": "F16", "architecture": "amd64",
                   "os": "linux"}
    mpath = write_ollama_model(
        models, OLLAMA_MODEL, OLLAMA_TAG,
        [("application/vnd.ollama.image.model", gguf_data),
         ("application/vnd.ollama.image.template", template),
         ("application/vnd.ollama.image.params", params)],
        config_blob)

    info = describe(root)
    info.update({
        "seed": seed,
        "scale": scale,
        "dims": d.__dict__,
        "hf_dir": HF_DIR,
        "ollama_dir": OLLAMA_DIR,
        "hf_repos": [
            {"repo_id": r, "folder": "models--" + r.replace("/", "--"), "commit": commits[r],
             "files": sorted(repos[r])}
            for r in repos
        ],
        "ollama_models": [
            {"name": f"{OLLAMA_MODEL}:{OLLAMA_TAG}", "model": OLLAMA_MODEL, "tag": OLLAMA_TAG,
             "manifest": str(mpath.relative_to(root))}
        ],
        "finetune_changed_tensors": changed,
        "base_tensor_count": len(base),
    })
    (root / "corpus.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def ns_path(relpath: str) -> str:
    """Namespace path (what `mlxfs cat` takes) of a path relative to the corpus root."""
    if relpath == HF_DIR or relpath.startswith(HF_DIR + "/"):
        return NS_HF + relpath[len(HF_DIR):]
    if relpath == OLLAMA_DIR or relpath.startswith(OLLAMA_DIR + "/"):
        return NS_OLLAMA + relpath[len(OLLAMA_DIR):]
    raise ValueError(f"{relpath} is in neither tree")


def describe(root: Path) -> dict:
    """Walk the corpus trees as written and compute logical size and the dedup optimum."""
    root = Path(root)
    files = []
    symlinks = []
    distinct_files: dict[str, int] = {}       # sha256 -> non-tensor bytes of that content
    distinct_payloads: dict[str, int] = {}    # sha256 of payload -> length
    logical = 0
    for top in (HF_DIR, OLLAMA_DIR):
        for dirpath, dirnames, filenames in os.walk(root / top):
            dirnames.sort()
            for fn in sorted(filenames + [dn for dn in dirnames if (Path(dirpath) / dn).is_symlink()]):
                p = Path(dirpath) / fn
                rel = str(p.relative_to(root))
                if p.is_symlink():
                    target = os.readlink(p)
                    resolved = p.resolve()
                    symlinks.append({"path": rel, "nspath": ns_path(rel), "target": target,
                                     "resolves_to": str(resolved.relative_to(root.resolve()))})
                    continue
                data = p.read_bytes()
                h = sha256_hex(data)
                ranges = safetensors_ranges(data)
                kind = "safetensors" if ranges is not None else "other"
                if ranges is None:
                    ranges = gguf_ranges(p)
                    kind = "gguf" if ranges is not None else "other"
                ranges = ranges or []
                payload = 0
                for s, e in ranges:
                    ph = sha256_hex(data[s:e])
                    distinct_payloads[ph] = e - s
                    payload += e - s
                distinct_files[h] = len(data) - payload
                logical += len(data)
                files.append({"path": rel, "nspath": ns_path(rel), "size": len(data),
                              "sha256": h, "kind": kind, "tensors": len(ranges)})
    file_level = sum(f["size"] for f in {f["sha256"]: f for f in files}.values())
    tensor_bytes = sum(distinct_payloads.values())
    other_bytes = sum(distinct_files.values())
    optimum = tensor_bytes + other_bytes
    return {
        "optimum_bytes": optimum,
        "logical_bytes": logical,
        "file_level_dedup_bytes": file_level,
        "distinct_tensor_payload_bytes": tensor_bytes,
        "distinct_tensor_payloads": len(distinct_payloads),
        "non_tensor_bytes": other_bytes,
        "files": files,
        "symlinks": symlinks,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiplies the vocabulary and FFN dimensions, which hold most bytes "
                         "(default 1: ~105 MB of files; 0.1: ~26 MB)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args(argv)
    if args.scale <= 0:
        ap.error("--scale must be > 0")
    try:
        info = build(args.outdir, args.scale, args.seed)
    except FileExistsError as e:
        print(f"corpus.py: {e}", file=sys.stderr)
        return 2
    lo, fl, op = info["logical_bytes"], info["file_level_dedup_bytes"], info["optimum_bytes"]
    print(f"files:            {len(info['files'])} (+{len(info['symlinks'])} symlinks)")
    print(f"logical bytes:    {lo}")
    print(f"file-level dedup: {fl} (saves {100 * (1 - fl / lo):.1f}%)")
    print(f"optimum:          {op} (saves {100 * (1 - op / lo):.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
