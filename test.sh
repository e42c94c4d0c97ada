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

SYSTEM_PACKAGES=(fuse3 pkg-config)
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

section "python venv: $VENV"
if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV"; then
        # Debian's own python3 needs python3-venv for ensurepip
        rm -rf "$VENV"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        python3 -m venv "$VENV"
    fi
fi
want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/pip" install --disable-pip-version-check -q -r "$REQUIREMENTS"
    echo "$want" >"$VENV/.requirements.sha256"
fi
"$VENV/bin/python" --version

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

section "all tests passed"
