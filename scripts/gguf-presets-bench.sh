#!/usr/bin/env bash
# TenPak's llama.cpp presets against llama-quantize --imatrix, both scored by llama.cpp itself
# (issue 26's GGUF table). For each file type in $TYPES (default q4_0 q3_k_m q4_k_m):
#   - llama.cpp: scripts/llamacpp-rates.sh's `llama-quantize --imatrix` file of the f32 GGUF, the
#     importance matrix from the same $CHUNKS x 512 calibration tokens TenPak calibrates on
#     (CHUNKS=32 to match the presets' 32 windows);
#   - TenPak: `tenpak pack SOURCE --preset TYPE --calib calib.txt --no-eval`, then
#     `tenpak export --format gguf` (every tensor copied from the artifact's blocks);
#   - both: stock `llama-perplexity` on the evaluation text, 64 windows of 512, with
#     `--kl-divergence` against the source model's logits (out/kld-check/llama-base.kld, written
#     by scripts/kld-check.sh, or here if missing).
# Prints one markdown table: file size, PPL and its change, mean / 99th-percentile KLD, same top,
# and TenPak's pack wall time and peak RSS. Not part of CI (about 4 minutes per type on 2 cores).
# Environment: TYPES, WINDOWS (64), THREADS (2), MODEL (the source TenPak packs), BASE_MODEL (the
# GGUF llama.cpp's base logits come from; default MODEL), BASE (the base logits file),
# LLAMA_CPP_DIR, LLAMA_OUT (where llamacpp-rates.sh wrote its files), OUT (out/gguf-presets).
# The grid-free variant:
#   WORK=../llamacpp-gf GGUF=../llamacpp/gridfree-f32.gguf TYPES="Q4_0 Q3_K_M Q4_K_M" CHUNKS=32 \
#       LLAMA_CPP_DIR=../llamacpp/build scripts/llamacpp-rates.sh
#   MODEL=assets/gridfree BASE_MODEL=../llamacpp/gridfree-f32.gguf LLAMA_OUT=../llamacpp-gf/out \
#       BASE=out/gguf-presets-gf/base.kld OUT=out/gguf-presets-gf scripts/gguf-presets-bench.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="$(dirname "$ROOT")/llamacpp"
LLAMA_BIN="${LLAMA_CPP_DIR:-$WORK/build}/bin"
LLAMA_OUT="${LLAMA_OUT:-$WORK/out}"
TYPES="${TYPES:-q4_0 q3_k_m q4_k_m}"
WINDOWS="${WINDOWS:-64}"
THREADS="${THREADS:-2}"
MODEL="${MODEL:-$ROOT/assets/SmolLM2-135M-Instruct.Q4_1.gguf}"
OUT="${OUT:-$ROOT/out/gguf-presets}"
BASE="${BASE:-$ROOT/out/kld-check/llama-base.kld}"
BASE_MODEL="${BASE_MODEL:-$MODEL}"
TEXT="$ROOT/assets/eval.txt"
die() { echo "gguf-presets-bench: $*" >&2; exit 1; }
[[ -x "$LLAMA_BIN/llama-perplexity" ]] || die "no llama-perplexity in $LLAMA_BIN (run scripts/llamacpp-rates.sh)"
cargo build --release -q -p tenpak
TENPAK="$ROOT/target/release/tenpak"
mkdir -p "$OUT" "$(dirname "$BASE")"
llama() { "$LLAMA_BIN/llama-perplexity" -c 512 -b 512 -t "$THREADS" --chunks "$WINDOWS" -f "$TEXT" "$@" 2>&1; }
[[ -f "$BASE" ]] || llama -m "$BASE_MODEL" --kl-divergence-base "$BASE" >"$OUT/base.log"
field() { sed -n "s/^$1 *\([0-9.]*\).*/\1/p" | head -1; }

echo "| file type | file | MiB | PPL | vs source | mean KLD | 99 % KLD | same top | pack |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---|"
src_ppl=""
for type in $TYPES; do
    upper=$(echo "$type" | tr a-z A-Z)
    theirs="$LLAMA_OUT/smollm2-$upper-imat.gguf"
    [[ -f "$theirs" ]] || die "$theirs missing: run TYPES=\"$upper\" CHUNKS=32 scripts/llamacpp-rates.sh"
    ours="$OUT/$type.gguf"
    if [[ ! -f "$ours" ]]; then
        /usr/bin/time -f "%e s, %M KB" -o "$OUT/$type.time" \
            "$TENPAK" pack "$MODEL" --preset "$type" --calib "$ROOT/assets/calib.txt" \
            -o "$OUT/$type.tenpak" --no-eval --force >"$OUT/$type.pack.log" 2>&1
        "$TENPAK" export "$OUT/$type.tenpak" -o "$ours" --force >"$OUT/$type.export.log"
    fi
    for side in llama tenpak; do
        file=$theirs; [[ $side == tenpak ]] && file=$ours
        log="$OUT/$type.$side.kld.log"
        [[ -f "$log" ]] || llama -m "$file" --kl-divergence-base "$BASE" --kl-divergence >"$log"
        ppl=$(sed -n 's/^Mean PPL(Q) *: *\([0-9.]*\).*/\1/p' "$log")
        base_ppl=$(sed -n 's/^Mean PPL(base) *: *\([0-9.]*\).*/\1/p' "$log")
        kld=$(sed -n 's/^Mean    KLD: *\([0-9.]*\).*/\1/p' "$log")
        k99=$(sed -n 's/^99.0%   KLD: *\([0-9.]*\).*/\1/p' "$log")
        top=$(sed -n 's/^Same top p: *\([0-9.]*\).*/\1/p' "$log")
        mib=$(python3 -c "import os; print(f'{os.path.getsize(\"$file\") / 2**20:.2f}')")
        delta=$(python3 -c "print(f'{100 * ($ppl - $base_ppl) / $base_ppl:+.2f} %')")
        pack="llama-imatrix + llama-quantize"
        [[ $side == tenpak ]] && pack="tenpak pack $(cat "$OUT/$type.time" 2>/dev/null || echo '?')"
        echo "| $upper | $side | $mib | $ppl | $delta | $kld | $k99 | $top % | $pack |"
    done
done
