#!/usr/bin/env bash
# Time and peak memory at real model sizes, on synthetic checkpoints (random weights of real
# shapes, scripts/synthetic-checkpoint.py; no model hub here): for each shape, `pack --preset
# fast` and `eval` of the source, and a calibrated `pack --preset balanced` of the qwen2-1.5b
# widths with only BALANCED_BLOCKS of its 28 blocks (the pipeline holds one block at a time, so
# its peak memory does not depend on the block count, and its time grows by one block's per
# block; the whole 28 blocks take over an hour on 2 cores), each under /usr/bin/time -v. Prints a
# table of wall time and peak RSS. Not part of CI (about 25 minutes on 2 cores, 20 GB of disk).
#
# Environment: SHAPES (default "qwen2-1.5b llama-7b"), WORK (out/synthetic), EVAL_WINDOWS (2), BALANCED_BLOCKS (4),
# KEEP=1 keeps the artifacts (they are removed after measuring, to save disk).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SHAPES="${SHAPES:-qwen2-1.5b llama-7b}"
WORK="${WORK:-$ROOT/out/synthetic}"
EVAL_WINDOWS="${EVAL_WINDOWS:-2}"
BALANCED_BLOCKS="${BALANCED_BLOCKS:-4}"
PY="$(bash "$ROOT/scripts/python-gguf.sh" | tail -1)"   # a Python with numpy
cargo build --release -q -p tenpak
TENPAK="$ROOT/target/release/tenpak"
mkdir -p "$WORK"

rows=()
measure() {  # label, log file, command...
    local label=$1 log=$2
    shift 2
    echo "== $label" >&2
    if /usr/bin/time -v "$@" >"$log" 2>&1; then status=ok; else status="FAILED (see $log)"; fi
    local wall rss
    wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$log")
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$log")
    rows+=("| $label | $wall | $(python3 -c "print(f'{$rss / 1048576:.2f}')") GiB | $status |")
}

for shape in $SHAPES; do
    model="$WORK/$shape"
    if [[ ! -f "$model/model.safetensors.index.json" ]]; then
        echo "== generate $shape" >&2
        "$PY" "$ROOT/scripts/synthetic-checkpoint.py" "$shape" "$model"
    fi
    size=$(du -sh "$model" | cut -f1)
    measure "$shape ($size bf16): pack --preset fast" "$WORK/$shape.fast.log" \
        "$TENPAK" pack "$model" --preset fast -o "$WORK/$shape.fast.tenpak" --no-eval --force
    if [[ "$shape" != llama-7b ]]; then
        short="$WORK/$shape-${BALANCED_BLOCKS}blocks"
        if [[ ! -f "$short/model.safetensors.index.json" ]]; then
            "$PY" "$ROOT/scripts/synthetic-checkpoint.py" "$shape" "$short" --blocks "$BALANCED_BLOCKS"
        fi
        measure "$shape widths, $BALANCED_BLOCKS blocks: pack --preset balanced (32 calibration windows)" "$WORK/$shape.balanced.log" \
            "$TENPAK" pack "$short" --preset balanced -o "$WORK/$shape.balanced.tenpak" --no-eval --force
    fi
    measure "$shape: eval, $EVAL_WINDOWS windows of 512" "$WORK/$shape.eval.log" \
        "$TENPAK" eval "$model" --samples "$EVAL_WINDOWS"
    [[ "${KEEP:-0}" == 1 ]] || rm -rf "$WORK/$shape.fast.tenpak" "$WORK/$shape.balanced.tenpak"
done
echo
echo "| job | wall (h:mm:ss) | peak RSS | |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
