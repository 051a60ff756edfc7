#!/usr/bin/env bash
# The refactoring check: packs the real model with every built-in preset and with the measured
# budget and exact compressed-tensors configurations of scripts/rates/, exports each pack to GGUF
# and to compressed-tensors, and prints the sha256 of every pack's weight shards and of every
# export. A change that must not change results (a refactor) prints the same table before and
# after: run it with the old binary and the new one and diff the two outputs.
#
#   bash scripts/pack-digests.sh [TENPAK_BINARY] > digests.txt
#
# TENPAK_BINARY defaults to target/release/tenpak (built if missing). No evaluation is run (the
# shards do not depend on it); the measured presets measure from an empty probe cache, so the
# measuring pass runs in full. About 25 minutes on 2 cores.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${1:-target/release/tenpak}"
if [[ "$BIN" == target/release/tenpak && ! -x "$BIN" ]]; then
    cargo build --release --bin tenpak >&2
fi
MODEL=assets/SmolLM2-135M-Instruct.Q4_1.gguf
[[ -f "$MODEL" ]] || { echo "pack-digests: $MODEL is missing: run scripts/fetch-assets.sh" >&2; exit 1; }
OUT="$(mktemp -d "${TMPDIR:-/tmp}/tenpak-digests.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT
export TENPAK_CACHE_DIR="$OUT/cache"

presets=(fast balanced quality size budget scripts/rates/budget-fisher.toml scripts/rates/ct32.toml)
for preset in "${presets[@]}"; do
    name="$(basename "$preset" .toml)"
    art="$OUT/$name.tenpak"
    "$BIN" pack "$MODEL" --preset "$preset" -o "$art" --calib assets/calib.txt --no-eval \
        --tensors false >"$OUT/$name.pack.log" 2>&1 ||
        { echo "pack-digests: pack $preset failed:" >&2; tail -5 "$OUT/$name.pack.log" >&2; exit 1; }
    echo "$name shards $(cat "$art"/weights/*.safetensors | sha256sum | cut -d' ' -f1)"
    "$BIN" export "$art" --format gguf -o "$OUT/$name.gguf" >"$OUT/$name.gguf.log" 2>&1 ||
        { echo "pack-digests: GGUF export of $preset failed:" >&2; tail -5 "$OUT/$name.gguf.log" >&2; exit 1; }
    echo "$name gguf $(sha256sum <"$OUT/$name.gguf" | cut -d' ' -f1)"
    "$BIN" export "$art" --format compressed-tensors -o "$OUT/$name.ct" >"$OUT/$name.ct.log" 2>&1 ||
        { echo "pack-digests: compressed-tensors export of $preset failed:" >&2; tail -5 "$OUT/$name.ct.log" >&2; exit 1; }
    # Every file of the directory, in name order, with its name.
    echo "$name compressed-tensors $(cd "$OUT/$name.ct" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)"
done
