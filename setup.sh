#!/usr/bin/env bash
# Sets up and starts mlxfs with its defaults on a fresh Debian/Ubuntu machine:
# installs FUSE and a Rust toolchain if missing, builds mlxfs, installs it to /usr/local/bin,
# mounts ~/.mlx-cache (store in ~/.local/share/mlxfs), and adopts the existing Hugging Face
# and Ollama caches it finds. Run it again at any time: every step is idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v fusermount3 >/dev/null 2>&1; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 pkg-config build-essential curl
fi
if ! command -v cargo >/dev/null 2>&1; then
    [ -f "$HOME/.cargo/env" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

cargo build --release --locked -p mlxfs
as_root install -m 0755 target/release/mlxfs /usr/local/bin/mlxfs

mountpoint="$HOME/.mlx-cache"
if mountpoint -q "$mountpoint" 2>/dev/null; then
    echo "mlxfs is already mounted at $mountpoint"
else
    # Adopt what the tools already downloaded (the originals are only read), then mount.
    for cache in "${HF_HUB_CACHE:-$HOME/.cache/huggingface/hub}" "${OLLAMA_MODELS:-$HOME/.ollama/models}"; do
        if [ -d "$cache" ]; then
            mlxfs import "$cache" || [ $? -eq 3 ] # 3: some entries were skipped and reported
        fi
    done
    mlxfs mount --daemon "$mountpoint"
fi

mlxfs status
cat <<MSG

mlxfs is mounted at $mountpoint. Point your tools at it:
  export HF_HUB_CACHE=$mountpoint/huggingface/hub
  export OLLAMA_MODELS=$mountpoint/ollama/models OLLAMA_NOPRUNE=1
  mlx_lm.generate --model $mountpoint/mlx/<org>/<name> ...
MSG
