"""Fixtures for the mlxfs integration tests: the binary, throw-away stores, the corpus.

Environment:
  MLXFS_BIN             the mlxfs binary (default: <repo>/target/release/mlxfs)
  MLXFS_CORPUS_SCALE    --scale of the generated corpus (default 1: ~105 MB)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

import corpus as corpus_mod
from mlxfs_helpers import Mlxfs

REPO_ROOT = Path(__file__).resolve().parent.parent


def _binary() -> Path:
    env = os.environ.get("MLXFS_BIN")
    if not env:
        return REPO_ROOT / "target" / "release" / "mlxfs"
    p = Path(env)
    if not p.is_absolute() and not p.exists():
        p = REPO_ROOT / p  # relative to the repo root when not relative to the cwd
    return p.resolve()


@pytest.fixture(scope="session")
def mlxfs_bin() -> Path:
    b = _binary()
    if not (b.is_file() and os.access(b, os.X_OK)):
        pytest.fail(f"mlxfs binary not found at {b}: run `cargo build --release` or set MLXFS_BIN")
    return b


@pytest.fixture(scope="session")
def base_env(tmp_path_factory) -> dict[str, str]:
    """Environment for every mlxfs call: HOME and XDG dirs in a sandbox, no MLXFS_STORE, so a
    command that ignores --store cannot touch the real user's store."""
    home = tmp_path_factory.mktemp("home")
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
    (home / "run").mkdir(mode=0o700)
    return env


@pytest.fixture
def make_store(tmp_path, mlxfs_bin, base_env):
    """make_store(name="store") -> Mlxfs on a not-yet-existing store directory in tmp_path."""

    def make(name: str = "store") -> Mlxfs:
        return Mlxfs(mlxfs_bin, tmp_path / name, base_env)

    return make


@dataclass
class Corpus:
    root: Path
    info: dict

    @property
    def hf(self) -> Path:
        return self.root / corpus_mod.HF_DIR

    @property
    def ollama(self) -> Path:
        return self.root / corpus_mod.OLLAMA_DIR

    @property
    def optimum(self) -> int:
        return self.info["optimum_bytes"]

    @property
    def logical(self) -> int:
        return self.info["logical_bytes"]

    def nspaths(self) -> set[str]:
        return {f["nspath"] for f in self.info["files"]} | {s["nspath"] for s in self.info["symlinks"]}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    scale = float(os.environ.get("MLXFS_CORPUS_SCALE", "1"))
    root = tmp_path_factory.mktemp("corpus")
    info = corpus_mod.build(root, scale=scale)
    print(f"\ncorpus: {root} logical={info['logical_bytes']} optimum={info['optimum_bytes']}")
    return Corpus(root, info)


@dataclass
class Imported:
    m: Mlxfs
    result: dict  # the JSON summary of the import


@pytest.fixture(scope="session")
def imported(tmp_path_factory, mlxfs_bin, base_env, corpus) -> Imported:
    """One store with the whole corpus imported; tests using it must leave its namespace as is."""
    m = Mlxfs(mlxfs_bin, tmp_path_factory.mktemp("imported") / "store", base_env)
    return Imported(m, m.import_(corpus.hf, corpus.ollama))
