#!/usr/bin/env bash
# Runs every test of mlxfs: formatting, clippy, the release build, the Rust tests and the
# Python integration tests (integration/, against target/release/mlxfs).
#
# Made for a fresh Debian 12 machine as root (CI) and for a developer's machine: system
# packages are installed only when missing, the venv in integration/.venv is reused while
# integration/requirements.txt is unchanged. Extra arguments go to pytest, e.g.
#   ./test.sh -k rm_and_gc
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

start=$SECONDS
section() { printf '\n===== [%4ds] %s =====\n' "$((SECONDS - start))" "$*"; }

SYSTEM_PACKAGES=(fuse3 pkg-config tmux util-linux btrfs-progs)
VENV=integration/.venv
REQUIREMENTS=integration/requirements.txt

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

section "system packages: ${SYSTEM_PACKAGES[*]}"
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
    echo "all installed"
fi

# make_venv DIR REQUIREMENTS: a venv at DIR with REQUIREMENTS installed, rebuilt only when the
# requirements change.
make_venv() {
    local venv=$1 requirements=$2
    section "python venv: $venv ($requirements)"
    if ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
        rm -rf "$venv"
        if ! python3 -m venv "$venv"; then
            # Debian's own python3 needs python3-venv for ensurepip
            rm -rf "$venv"
            as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
            python3 -m venv "$venv"
        fi
    fi
    local want
    want=$(sha256sum "$requirements" | cut -d' ' -f1)
    if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
        "$venv/bin/pip" install --disable-pip-version-check -q -r "$requirements"
        echo "$want" >"$venv/.requirements.sha256"
    fi
    "$venv/bin/python" --version
}
make_venv "$VENV" "$REQUIREMENTS"
# The real clients the view tests drive: huggingface_hub 2.x with mlx-lm, and huggingface_hub 0.36.
make_venv integration/.venv-clients integration/requirements-clients.txt
make_venv integration/.venv-hf036 integration/requirements-hf036.txt
export MLXFS_REQUIRE_CLIENTS=1

section "cargo fmt --check"
cargo fmt --all -- --check

# clippy runs on the release profile so that build scripts (bundled SQLite) run once for
# clippy, the build and the tests alike; `cargo test --release` reuses the release build of
# every dependency and of the workspace libraries.
section "cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings

section "cargo build --release"
cargo build --release --workspace

section "cargo test --release"
cargo test --release --workspace

section "integration tests (pytest)"
MLXFS_BIN=target/release/mlxfs "$VENV/bin/python" -m pytest -q integration "$@"
section "fuzz (fuzz/ci.sh: short seeded run of each target)"; bash fuzz/ci.sh

# The benchmark's quick mode: prints the ratios against the native disk; fails only on a gross
# regression (see bench/run and bench/baseline.json).
section "benchmark (bench/run --quick)"
bench/run --quick --no-build

section "all tests passed"
