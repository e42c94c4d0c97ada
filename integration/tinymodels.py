"""Tiny models for the client tests, generated on the spot (nothing is downloaded).

- make_tiny_llama(dir): a random llama built with mlx-lm's own model classes (hidden 64, 2 layers,
  vocab ~300) saved the way mlx-lm saves models: config.json, model.safetensors (or
  model-0000N-of-0000M.safetensors + model.safetensors.index.json when sharded), a byte-level BPE
  tokenizer.json trained with `tokenizers`, tokenizer_config.json and generation_config.json.
  `mlx_lm.load(dir)` loads it and `mlx_lm.generate` produces tokens. Needs mlx (`mlx[cpu]` on
  Linux), mlx-lm, tokenizers.
- make_big_safetensors_model(dir, size): a llama-named config.json + model.safetensors of about
  `size` bytes of random float16 written in a stream (numpy only; for the page-cache test).
- make_tiny_gguf(path): a tiny llama GGUF (F16 or Q8_0) with the `gguf` package, with the
  metadata llama.cpp and Ollama read (general.architecture=llama, general.file_type 1 = F16 or
  7 = Q8_0, llama.* hyper-parameters, a gpt2-style tokenizer vocabulary).

Also a command line, used by the tests to build models with the clients venv's Python:
    python tinymodels.py llama OUT_DIR [--seed N] [--shards N]
    python tinymodels.py gguf OUT.gguf [--type F16|Q8_0] [--hidden N] [--vocab N]
    python tinymodels.py big OUT_DIR --size BYTES
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
VOCAB = 300

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<unk>"]
BOS, EOS, UNK = SPECIAL_TOKENS

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A content-addressed store keeps each chunk once, whatever its name.",
    "Hello world! Models are big; deduplication makes them smaller on disk.",
    "mlxfs shows one model in the Hugging Face, Ollama, MLX and LM Studio layouts.",
    "Safetensors, GGUF and tokenizer files: 0123456789 + - * / = ( ) [ ] { }",
    "the and of to in is it that was for on are with as his they be at one have this",
]


# ------------------------------------------------------------------------------------------------
# Tokenizer


def make_tokenizer(vocab_size: int = VOCAB):
    """A byte-level BPE tokenizers.Tokenizer with about `vocab_size` tokens (256 bytes + specials +
    merges learned on a small built-in text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    return tok


def write_tokenizer(out: Path, vocab_size: int = VOCAB) -> int:
    """Write tokenizer.json + tokenizer_config.json; return the vocabulary size."""
    tok = make_tokenizer(vocab_size)
    tok.save(str(out / "tokenizer.json"))
    n = tok.get_vocab_size()
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                         "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK}, indent=2))
    return n


def token_ids(out: Path) -> tuple[int, int]:
    tok = json.loads((out / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    ids = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    ids.update({k: v for k, v in vocab.items() if k in SPECIAL_TOKENS})
    return ids[BOS], ids[EOS]


# ------------------------------------------------------------------------------------------------
# Tiny llama with mlx-lm's classes


def llama_config(vocab_size: int, bos: int, eos: int, hidden: int = HIDDEN,
                 layers: int = LAYERS) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": hidden * 2,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": hidden // HEADS,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab_size,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float16",
    }


def make_tiny_llama(out: str | Path, seed: int = 0, shards: int = 1,
                    vocab_size: int = VOCAB) -> dict:
    """Build and save the tiny llama; returns {"config": ..., "files": [...], "weights": {...}}
    where weights maps tensor names to shapes/dtypes."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.models import llama
    from mlx_lm.utils import save_config

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_vocab = write_tokenizer(out, vocab_size)
    bos, eos = token_ids(out)
    config = llama_config(n_vocab, bos, eos)

    mx.random.seed(seed)
    args = llama.ModelArgs.from_dict(config)
    model = llama.Model(args)
    # Default init of nn.Linear/Embedding is random already; scale it down so the logits are not
    # degenerate in float16, then store as float16 (numpy has no bfloat16: safetensors'
    # numpy framework must be able to read the files back).
    model.update(tree_map(lambda v: (v * 0.5).astype(mx.float16), model.parameters()))
    mx.eval(model.parameters())
    weights = dict(tree_flatten(model.parameters()))

    files = []
    names = sorted(weights)
    if shards <= 1:
        mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
        files.append("model.safetensors")
    else:
        per = (len(names) + shards - 1) // shards
        index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())},
                 "weight_map": {}}
        for i in range(shards):
            part = {k: weights[k] for k in names[i * per:(i + 1) * per]}
            fn = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            mx.save_safetensors(str(out / fn), part, metadata={"format": "mlx"})
            files.append(fn)
            for k in part:
                index["weight_map"][k] = fn
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        files.append("model.safetensors.index.json")
    save_config(dict(config), config_path=out / "config.json")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": bos, "eos_token_id": eos, "do_sample": False}, indent=2))
    (out / "README.md").write_text("---\nlibrary_name: mlx\ntags: [mlx, test]\n---\n"
                                   "# tiny-llama\nRandom weights, made by mlxfs's tests.\n")
    return {
        "config": config,
        "files": sorted(p.name for p in out.iterdir()),
        "weights": {k: [list(v.shape), str(v.dtype)] for k, v in weights.items()},
    }


# ------------------------------------------------------------------------------------------------
# A big safetensors model, streamed (no mlx needed)


def make_big_safetensors_model(out: str | Path, size: int, seed: int = 1,
                               hidden: int = 4096) -> dict:
    """config.json + model.safetensors of about `size` bytes of random float16 in llama tensor
    names (embed_tokens and lm_head share the bytes budget). Written in 8 MiB pieces."""
    import numpy as np

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    row = hidden * 2
    rows_total = max(2, size // row)
    vocab = rows_total // 2
    tensors = [
        ("lm_head.weight", [vocab, hidden]),
        ("model.embed_tokens.weight", [vocab, hidden]),
        ("model.norm.weight", [hidden]),
    ]
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape in tensors:
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    rng = np.random.default_rng(seed)
    piece = 8 << 20
    path = out / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        left = off
        while left > 0:
            n = min(piece, left)
            a = rng.standard_normal(n // 2, dtype=np.float32).astype(np.float16)
            f.write(a.tobytes())
            left -= n
    cfg = llama_config(vocab, 1, 2, hidden=hidden, layers=0)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return {"config": cfg, "files": ["config.json", "model.safetensors"],
            "size": path.stat().st_size}


# ------------------------------------------------------------------------------------------------
# GGUF


GGUF_FILE_TYPES = {"F16": 1, "Q8_0": 7}


def make_tiny_gguf(path: str | Path, qtype: str = "F16", hidden: int = HIDDEN,
                   layers: int = LAYERS, vocab: int = VOCAB, seed: int = 0) -> dict:
    """A llama-architecture GGUF with random weights; returns {"tensors": {name: sha256 of the
    stored bytes}, "file_type": n}. Norms are F32, the rest F16 or Q8_0 (like llama.cpp)."""
    import hashlib

    import gguf
    import numpy as np

    if qtype not in GGUF_FILE_TYPES:
        raise ValueError(f"qtype {qtype!r} not in {sorted(GGUF_FILE_TYPES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ffn = hidden * 2
    head_dim = hidden // HEADS
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(path.stem)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_file_type(GGUF_FILE_TYPES[qtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(2048)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    # gpt2-style byte-level vocabulary: 256 byte tokens, then made-up merges' results, specials.
    tokens = [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"tok{i}" for i in range(vocab - 256 - len(SPECIAL_TOKENS))]
    tokens += SPECIAL_TOKENS
    assert len(tokens) == vocab, (len(tokens), vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * (vocab - len(SPECIAL_TOKENS))
                      + [gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS))
    w.add_token_merges([])
    w.add_bos_token_id(vocab - 3)
    w.add_eos_token_id(vocab - 2)

    def mat(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.05)

    specs: list[tuple[str, np.ndarray, bool]] = [("token_embd.weight", mat(vocab, hidden), True)]
    for i in range(layers):
        specs += [
            (f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32), False),
            (f"blk.{i}.attn_q.weight", mat(hidden, hidden), True),
            (f"blk.{i}.attn_k.weight", mat(KV_HEADS * head_dim, hidden), True),
            (f"blk.{i}.attn_v.weight", mat(KV_HEADS * head_dim, hidden), True),
            (f"blk.{i}.attn_output.weight", mat(hidden, hidden), True),
            (f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32), False),
            (f"blk.{i}.ffn_gate.weight", mat(ffn, hidden), True),
            (f"blk.{i}.ffn_up.weight", mat(ffn, hidden), True),
            (f"blk.{i}.ffn_down.weight", mat(hidden, ffn), True),
        ]
    specs += [("output_norm.weight", np.ones(hidden, np.float32), False),
              ("output.weight", mat(vocab, hidden), True)]

    stored: dict[str, str] = {}
    for name, a, big in specs:
        if not big:
            data, raw_dtype = a.astype(np.float32), None
        elif qtype == "F16":
            data, raw_dtype = a.astype(np.float16), None
        else:
            data = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            raw_dtype = gguf.GGMLQuantizationType.Q8_0
        stored[name] = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
        if raw_dtype is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"tensors": stored, "file_type": GGUF_FILE_TYPES[qtype], "size": path.stat().st_size}


# ------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("llama")
    a.add_argument("out")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--shards", type=int, default=1)
    g = sub.add_parser("gguf")
    g.add_argument("out")
    g.add_argument("--type", default="F16", choices=sorted(GGUF_FILE_TYPES))
    g.add_argument("--hidden", type=int, default=HIDDEN)
    g.add_argument("--layers", type=int, default=LAYERS)
    g.add_argument("--vocab", type=int, default=VOCAB)
    g.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("big")
    b.add_argument("out")
    b.add_argument("--size", type=int, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "llama":
        info = make_tiny_llama(args.out, seed=args.seed, shards=args.shards)
    elif args.cmd == "gguf":
        info = make_tiny_gguf(args.out, args.type, hidden=args.hidden, layers=args.layers,
                              vocab=args.vocab, seed=args.seed)
    else:
        info = make_big_safetensors_model(args.out, args.size)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
