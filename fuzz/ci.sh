#!/usr/bin/env bash
# Short, seeded fuzz run for CI (test.sh runs it after the Python integration tests).
#
# Builds the four cargo-fuzz targets and runs each for a fixed number of inputs with a fixed
# seed, starting from the checked-in seeds (copied to a scratch corpus, so nothing under
# fuzz/corpus changes). Exits non-zero when a target crashes; the crashing input is left in
# fuzz/artifacts/<target>/ and the reproducing command is printed. See fuzz/README.md.
#
#   FUZZ_RUNS=N bash fuzz/ci.sh    # N inputs per target (default 20000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

RUNS=${FUZZ_RUNS:-20000}
TARGETS=(safetensors_header gguf_header ollama_manifest status_request)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes nightly-only flags (-Cpasses=sancov-module, -Z...); the stable toolchain
# accepts them with RUSTC_BOOTSTRAP. No sanitizer (the targets are safe Rust) and an
# unoptimised build: on 2 cores it builds in about half the time of a release build, and
# 20000 inputs per target still take seconds. Debug assertions include overflow checks.
export RUSTC_BOOTSTRAP=1
BUILD=(--sanitizer none --dev --debug-assertions)

start=$SECONDS
cargo fuzz build "${BUILD[@]}"
echo "fuzz: built in $((SECONDS - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${TARGETS[@]}"; do
    mkdir -p "$scratch/$t" "artifacts/$t"
    cp corpus/"$t"/seed-* "$scratch/$t/"
    t0=$SECONDS
    if ! cargo fuzz run "${BUILD[@]}" "$t" "$scratch/$t" -- \
        -runs="$RUNS" -seed=1 -timeout=10 -dict="dict/$t.dict" \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>"$scratch/$t.log"; then
        tail -n 60 "$scratch/$t.log" >&2
        echo "fuzz: $t FAILED; reproduce with:" >&2
        echo "  cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${BUILD[*]} $t artifacts/$t/<crash-file>" >&2
        exit 1
    fi
    stats=$(grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec):' "$scratch/$t.log" \
        | tr '\n' ' ')
    echo "fuzz: $t ok in $((SECONDS - t0)) s ($stats)"
done
echo "fuzz: all targets passed in $((SECONDS - start)) s"
