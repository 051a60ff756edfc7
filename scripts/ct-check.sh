#!/usr/bin/env bash
# `tenpak export --format compressed-tensors` checked by transformers itself, on the real model
# (or MODEL=...): pack with scripts/rates/ct32.toml (int4_awq g32 on integer zero points, the grid
# the format stores), export, then score
#   - the artifact with `tenpak eval` (TenPak's protocol, DESIGN.md),
#   - the export loaded by transformers + compressed-tensors (scripts/python-hf.sh's venv, CPU),
#     scored by the same protocol (scripts/ct_transformers_check.py),
# and print a table row. Not part of CI (the test suite runs the same check on 4 windows).
# Environment: WINDOWS (64), MODEL (assets/SmolLM2-135M-Instruct.Q4_1.gguf), OUT (out/ct-check),
# PRESET (scripts/rates/ct32.toml), FORCE=1 repacks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WINDOWS="${WINDOWS:-64}"
MODEL="${MODEL:-$ROOT/assets/SmolLM2-135M-Instruct.Q4_1.gguf}"
OUT="${OUT:-$ROOT/out/ct-check}"
PRESET="${PRESET:-$ROOT/scripts/rates/ct32.toml}"
cargo build --release -q -p tenpak
TENPAK="$ROOT/target/release/tenpak"
PYTHON="$(bash "$ROOT/scripts/python-hf.sh" | tail -n 1)"
mkdir -p "$OUT"
art="$OUT/ct32.tenpak" ct="$OUT/ct32-ct"
if [[ ! -d "$art" || "${FORCE:-0}" == 1 ]]; then
    echo "== pack $(basename "$MODEL") with $(basename "$PRESET")" >&2
    "$TENPAK" pack "$MODEL" --preset "$PRESET" --calib "$ROOT/assets/calib.txt" -o "$art" --no-eval --force >"$OUT/pack.log" 2>&1
fi
echo "== export" >&2
"$TENPAK" export "$art" --format compressed-tensors -o "$ct" --force | tee "$OUT/export.log" >&2
echo "== tenpak eval, $WINDOWS windows" >&2
ours=$("$TENPAK" eval "$art" --text "$ROOT/assets/eval.txt" --samples "$WINDOWS" 2>/dev/null | sed -n 's/^ppl *//p' | awk '{print $1}')
echo "== transformers, $WINDOWS windows" >&2
theirs=$("$PYTHON" "$ROOT/scripts/ct_transformers_check.py" "$ct" "$ROOT/assets/eval.txt" --windows "$WINDOWS" | tee "$OUT/transformers.json" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
bits=$(sed -n 's/^bits\/weight *\([0-9.]*\).*/\1/p' "$OUT/export.log")
echo
echo "| model | artifact, tenpak eval | export, transformers | difference | bits/weight |"
echo "|---|---|---|---|---|"
python3 -c "o, t = $ours, $theirs; print(f'| $(basename "$MODEL") | {o:.4f} | {t:.4f} | {100 * (t - o) / o:+.3f} % | $bits |')"
