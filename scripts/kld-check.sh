#!/usr/bin/env bash
# KL divergence and same-top-token rate by `tenpak eval --base` against llama.cpp's own
# `llama-perplexity --kl-divergence`, on the same GGUF files of the real model (llama.cpp's
# protocol: second half of each 512-token window). For each candidate GGUF:
#   - llama.cpp: the base (the source GGUF) run once with --kl-divergence-base base.kld, then
#     each candidate with --kl-divergence;
#   - TenPak, lockstep: `tenpak eval CAND --base SOURCE --protocol llama-cpp` (both models run);
#   - TenPak, stored: `tenpak eval CAND --base base.kld --protocol llama-cpp` (llama.cpp's file);
# and, the other way round, llama.cpp comparing against a base file TenPak wrote
# (`tenpak eval SOURCE --save-base`). Prints a table with the relative differences; the goal is
# mean KLD and same-top % within 2 % relative. Not part of CI (about an hour on 2 cores: each
# candidate runs llama-perplexity twice over 64 windows and TenPak twice). Figures: BENCHMARKS.md.
#
# Candidates: llama-quantize (no importance matrix) of the f32 GGUF to $TYPES, and TenPak's
# `balanced` artifact exported to GGUF. llama.cpp binaries and the f32 GGUF as
# scripts/llamacpp-rates.sh builds them (STOP_AFTER=f32); $LLAMA_CPP_DIR overrides.
# Environment: WINDOWS (64), THREADS (2), TYPES (Q4_K_M Q3_K_M Q6_K), OUT (out/kld-check).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="$(dirname "$ROOT")/llamacpp"
LLAMA_BIN="${LLAMA_CPP_DIR:-$WORK/build}/bin"
F32="${F32:-$WORK/smollm2-f32.gguf}"
WINDOWS="${WINDOWS:-64}"
THREADS="${THREADS:-2}"
TYPES="${TYPES:-Q4_K_M Q3_K_M Q6_K}"
OUT="${OUT:-$ROOT/out/kld-check}"
MODEL="$ROOT/assets/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT="$ROOT/assets/eval.txt"
die() { echo "kld-check: $*" >&2; exit 1; }
[[ -x "$LLAMA_BIN/llama-perplexity" && -x "$LLAMA_BIN/llama-quantize" ]] \
    || die "no llama-perplexity/llama-quantize in $LLAMA_BIN (run STOP_AFTER=f32 scripts/llamacpp-rates.sh, or set LLAMA_CPP_DIR)"
[[ -f "$F32" ]] || die "$F32 not found (run STOP_AFTER=f32 scripts/llamacpp-rates.sh, or set F32)"
cargo build --release -q -p tenpak
TENPAK="$ROOT/target/release/tenpak"
mkdir -p "$OUT"

# llama.cpp's final statistics: "Mean    KLD:   0.012345 ±   0.000123", "Same top p: 91.234 ± 0.123 %".
llama_kld() { sed -n 's/^Mean    KLD: *\([0-9.]*\).*/\1/p'; }
llama_top() { sed -n 's/^Same top p: *\([0-9.]*\).*/\1/p'; }
llama_ppl() { sed -n 's/^Mean PPL(Q) *: *\([0-9.]*\).*/\1/p'; }
# TenPak's: "KL divergence mean 0.012345 ± ...", "same top      91.234 ± 0.123 % of tokens".
tenpak_kld() { sed -n 's/^KL divergence mean \([0-9.]*\).*/\1/p'; }
tenpak_top() { sed -n 's/^same top *\([0-9.]*\).*/\1/p'; }
tenpak_ppl() { sed -n 's/^perplexity .*compressed \([0-9.]*\),.*/\1/p'; }
rel() { python3 -c "print(f'{100 * ($1 - $2) / $2:+.2f} %')"; }
llama() { nice -n 5 "$LLAMA_BIN/llama-perplexity" -c 512 -b 512 -t "$THREADS" --chunks "$WINDOWS" "$@" 2>&1; }

candidates=()
for type in $TYPES; do
    file="$OUT/smollm2-$type.gguf"
    [[ -f "$file" ]] || "$LLAMA_BIN/llama-quantize" "$F32" "$file" "$type" "$THREADS" >"$OUT/quantize-$type.log" 2>&1 \
        || die "llama-quantize $type failed (see $OUT/quantize-$type.log)"
    candidates+=("$file")
done
if [[ ! -f "$OUT/balanced.gguf" ]]; then
    echo "== pack balanced, export to GGUF" >&2
    "$TENPAK" pack "$MODEL" --preset balanced -o "$OUT/balanced.tenpak" --no-eval --force >"$OUT/balanced.pack.log" 2>&1
    "$TENPAK" export "$OUT/balanced.tenpak" -o "$OUT/balanced.gguf" --force >"$OUT/balanced.export.log"
fi
candidates+=("$OUT/balanced.gguf")

echo "== llama.cpp base log-probabilities ($WINDOWS windows)" >&2
[[ -f "$OUT/llama-base.kld" ]] || llama -m "$MODEL" -f "$TEXT" --kl-divergence-base "$OUT/llama-base.kld" >"$OUT/llama-base.log"
echo "== TenPak base log-probabilities" >&2
[[ -f "$OUT/tenpak-base.kld" ]] || "$TENPAK" eval "$MODEL" --protocol llama-cpp --samples "$WINDOWS" --save-base "$OUT/tenpak-base.kld" \
    >"$OUT/tenpak-base.log" 2>/dev/null

rows=()
for file in "${candidates[@]}"; do
    name=$(basename "$file" .gguf)
    echo "== $name" >&2
    llama -m "$file" --kl-divergence-base "$OUT/llama-base.kld" --kl-divergence >"$OUT/$name.llama.log"
    llama -m "$file" --kl-divergence-base "$OUT/tenpak-base.kld" --kl-divergence >"$OUT/$name.llama-on-tenpak-base.log"
    "$TENPAK" eval "$file" --base "$MODEL" --protocol llama-cpp --samples "$WINDOWS" >"$OUT/$name.tenpak.log" 2>/dev/null
    "$TENPAK" eval "$file" --base "$OUT/llama-base.kld" --protocol llama-cpp --samples "$WINDOWS" >"$OUT/$name.tenpak-on-llama-base.log" 2>/dev/null
    lk=$(llama_kld <"$OUT/$name.llama.log") lt=$(llama_top <"$OUT/$name.llama.log") lp=$(llama_ppl <"$OUT/$name.llama.log")
    xk=$(llama_kld <"$OUT/$name.llama-on-tenpak-base.log")
    tk=$(tenpak_kld <"$OUT/$name.tenpak.log") tt=$(tenpak_top <"$OUT/$name.tenpak.log") tp=$(tenpak_ppl <"$OUT/$name.tenpak.log")
    sk=$(tenpak_kld <"$OUT/$name.tenpak-on-llama-base.log") st=$(tenpak_top <"$OUT/$name.tenpak-on-llama-base.log")
    [[ -n "$lk" && -n "$tk" && -n "$sk" && -n "$xk" ]] || die "$name: a figure is missing (see $OUT/$name.*.log)"
    rows+=("| $name | $lp / $tp | $lk | $tk ($(rel "$tk" "$lk")) | $sk ($(rel "$sk" "$lk")) | $xk ($(rel "$xk" "$lk")) | $lt | $tt ($(rel "$tt" "$lt")) | $st ($(rel "$st" "$lt")) |")
done
echo
echo "$WINDOWS windows of 512 tokens of assets/eval.txt, llama.cpp's protocol (second half of each window); base: $(basename "$MODEL")"
echo
echo "| candidate GGUF | PPL llama.cpp / TenPak | mean KLD, llama.cpp | TenPak lockstep | TenPak on llama.cpp's base file | llama.cpp on TenPak's base file | same top %, llama.cpp | TenPak lockstep | TenPak on llama.cpp's base file |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
