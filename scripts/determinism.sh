#!/usr/bin/env bash
# Reproducibility check (issue 13): packs the real model with one preset three times, twice with
# 2 threads and once with 1 (RAYON_NUM_THREADS), and prints each run's wall time, the sha256 of its
# weight shards and its recorded perplexity. Every row must show the same digest and figures.
#   bash scripts/determinism.sh [preset]      (default balanced; about 12 minutes on 2 cores)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PRESET="${1:-balanced}"
OUT="out/determinism"
mkdir -p "$OUT"
cargo build --release --bin tenpak >/dev/null
echo "| threads | run | seconds | shards sha256 (first 16) | recorded perplexity |"
echo "|---|---|---|---|---|"
for run in "2 a" "2 b" "1 c"; do
    set -- $run
    start=$(date +%s)
    RAYON_NUM_THREADS=$1 ./target/release/tenpak pack assets/SmolLM2-135M-Instruct.Q4_1.gguf --preset "$PRESET" \
        -o "$OUT/$2.tenpak" --force --calib assets/calib.txt --eval assets/eval.txt --tensors false \
        > "$OUT/$2.txt" 2>/dev/null
    seconds=$(($(date +%s) - start))
    digest=$(cat "$OUT/$2.tenpak"/weights/*.safetensors | sha256sum | cut -c1-16)
    ppl=$(grep '^perplexity' "$OUT/$2.txt" | sed 's/^perplexity *//')
    echo "| $1 | $2 | $seconds | $digest | $ppl |"
done
