#!/usr/bin/env bash
# `tenpak export --format gguf` checked by llama.cpp itself, on the real model: for each config,
# pack (calibrated on assets/calib.txt), export to GGUF, then score
#   - the artifact with `tenpak eval` (TenPak's protocol, DESIGN.md),
#   - the GGUF with `tenpak eval` (same protocol: the cost of the export),
#   - the GGUF with `tenpak eval --protocol llama-cpp` and with llama.cpp's `llama-perplexity`
#     (second half of each window): the two must agree within 0.5 %,
# and print a table. Not part of CI (about 15 minutes on 2 cores).
#
# llama.cpp: $LLAMA_CPP_DIR/bin (default ../llamacpp/build/bin, what scripts/llamacpp-rates.sh
# builds from the PyPI sdist of llama-cpp-python). Environment: WINDOWS (64), THREADS (2), CONFIGS
# (rtn32 gptq32 balanced), OUT (out/export-check), FORCE=1 repacks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LLAMA_BIN="${LLAMA_CPP_DIR:-$(dirname "$ROOT")/llamacpp/build}/bin"
WINDOWS="${WINDOWS:-64}"
THREADS="${THREADS:-2}"
CONFIGS="${CONFIGS:-rtn32 gptq32 balanced}"
OUT="${OUT:-$ROOT/out/export-check}"
MODEL="$ROOT/assets/SmolLM2-135M-Instruct.Q4_1.gguf"
[[ -x "$LLAMA_BIN/llama-perplexity" ]] || { echo "export-check: no $LLAMA_BIN/llama-perplexity (run scripts/llamacpp-rates.sh or set LLAMA_CPP_DIR)" >&2; exit 1; }
cargo build --release -q -p tenpak
TENPAK="$ROOT/target/release/tenpak"
mkdir -p "$OUT"

preset_file() {
    local name=$1 file="$OUT/$1.toml"
    case "$name" in
        balanced) echo "$ROOT/presets/balanced.toml"; return ;;
        rtn32) printf 'name = "rtn32"\ndescription = "int4_rtn g32"\n[allocator]\nid = "role_rules"\n[codec]\ncodec = "int4_rtn"\ngroup_size = 32\n[roles.embedding]\ncodec = "int8"\n[roles.lm_head]\ncodec = "int8"\n' >"$file" ;;
        gptq32) printf 'name = "gptq32"\ndescription = "int4_gptq g32"\n[calibration]\ncalibrators = ["gram"]\nwindows = 32\nctx = 512\n[allocator]\nid = "role_rules"\n[codec]\ncodec = "int4_gptq"\ngroup_size = 32\n[roles.embedding]\ncodec = "int8"\n[roles.lm_head]\ncodec = "int8"\n' >"$file" ;;
        *) echo "export-check: unknown config $name" >&2; exit 1 ;;
    esac
    echo "$file"
}
ppl() { sed -n 's/^ppl *//p'; }

rows=()
for name in $CONFIGS; do
    art="$OUT/$name.tenpak" gguf="$OUT/$name.gguf"
    if [[ ! -d "$art" || "${FORCE:-0}" == 1 ]]; then
        echo "== pack $name" >&2
        "$TENPAK" pack "$MODEL" --preset "$(preset_file "$name")" -o "$art" --no-eval --force >"$OUT/$name.pack.log" 2>&1
    fi
    echo "== export $name" >&2
    "$TENPAK" export "$art" -o "$gguf" --force >"$OUT/$name.export.log"
    types=$(sed -n 's/^gguf types *//p' "$OUT/$name.export.log")
    bits=$(sed -n 's/^bits\/weight *\([0-9.]*\) on the linears.*artifact: \([0-9.]*\) .*/\2 → \1/p' "$OUT/$name.export.log")
    echo "== eval $name ($WINDOWS windows, 4 runs)" >&2
    a=$("$TENPAK" eval "$art" --samples "$WINDOWS" 2>/dev/null | ppl)
    g=$("$TENPAK" eval "$gguf" --samples "$WINDOWS" 2>/dev/null | ppl)
    t=$("$TENPAK" eval "$gguf" --samples "$WINDOWS" --protocol llama-cpp 2>/dev/null | ppl)
    l=$("$LLAMA_BIN/llama-perplexity" -m "$gguf" -f "$ROOT/assets/eval.txt" -c 512 -b 512 -t "$THREADS" --chunks "$WINDOWS" 2>&1 \
        | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
    d=$(python3 -c "print(f'{100 * ($l - $t) / $t:+.2f} %')")
    e=$(python3 -c "print(f'{100 * ($g - $a) / $a:+.2f} %')")
    rows+=("| $name | $types | $bits | $a | $g ($e) | $t | $l | $d |")
done
echo
echo "| config | GGUF types | bits/weight on linears (artifact → GGUF) | artifact PPL | GGUF PPL (export cost) | GGUF, tenpak eval --protocol llama-cpp | GGUF, llama-perplexity | llama.cpp vs TenPak |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
