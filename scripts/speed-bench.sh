#!/usr/bin/env bash
# Speed against llama.cpp on the same machine, one tool right after the other (issue 14):
#
#   1. perplexity of the f32 model on the held-out text, 64 windows of 512 tokens, 2 threads:
#      `tenpak eval` (OpenBLAS, and again with TENPAK_MATMUL=candle) against
#      `llama-perplexity -c 512 --chunks 64 -b 512 -t 2`;
#   2. a calibrated pack on 32 windows of 512 calibration tokens, without evaluation:
#      `tenpak pack --preset balanced --no-eval` against `llama-imatrix --chunks 32 -t 2`
#      followed by `llama-quantize --imatrix … Q4_0 2`.
#
# Wall time and peak RSS by /usr/bin/time; a Markdown table on stdout, logs in out/speed/.
# Needs llama.cpp and the f32 GGUF: made by `STOP_AFTER=f32 bash scripts/llamacpp-rates.sh`
# (run here when missing; WORK as there, default ../llamacpp). Run it on an idle machine.
#
#   bash scripts/speed-bench.sh            # everything (about 10 minutes)
#   ONLY=eval bash scripts/speed-bench.sh  # only the perplexity rows (ONLY=pack: the pack rows)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
WORK="${WORK:-$(dirname "$ROOT")/llamacpp}"
ONLY="${ONLY:-all}"
THREADS=2
out=out/speed
mkdir -p "$out"

[[ -f assets/eval.txt && -f assets/calib.txt ]] || { echo "error: run bash scripts/fetch-assets.sh first" >&2; exit 1; }
F32="$WORK/smollm2-f32.gguf"
BIN="${LLAMA_CPP_DIR:+$LLAMA_CPP_DIR/bin}"
BIN="${BIN:-$WORK/build/bin}"
if [[ ! -f $F32 || ! -x $BIN/llama-perplexity ]]; then
    JOBS=2 STOP_AFTER=f32 WORK="$WORK" bash scripts/llamacpp-rates.sh >&2
fi
cargo build --release -p tenpak --bin tenpak >&2
tenpak=target/release/tenpak

# time_of NAME CMD...: run CMD with its output in $out/NAME.log; "$out/NAME.time" holds
# "wall_seconds peak_rss_kb".
time_of() {
    local name=$1
    shift
    echo "== $name" >&2
    /usr/bin/time -f "%e %M" -o "$out/$name.time" "$@" > "$out/$name.log" 2>&1 \
        || { echo "error: $name failed (see $out/$name.log)" >&2; exit 1; }
}

export RAYON_NUM_THREADS=$THREADS
if [[ $ONLY == all || $ONLY == eval ]]; then
    time_of tenpak-eval "$tenpak" eval "$F32" --text assets/eval.txt --samples 64 --ctx 512
    time_of tenpak-eval-candle env TENPAK_MATMUL=candle "$tenpak" eval "$F32" --text assets/eval.txt --samples 64 --ctx 512
    time_of llama-perplexity "$BIN/llama-perplexity" -m "$F32" -f assets/eval.txt -c 512 -b 512 --chunks 64 -t $THREADS
fi
if [[ $ONLY == all || $ONLY == pack ]]; then
    time_of tenpak-pack "$tenpak" pack "$F32" --preset balanced --calib assets/calib.txt --no-eval \
        --tensors false --force -o "$out/balanced.tenpak"
    time_of llama-imatrix "$BIN/llama-imatrix" -m "$F32" -f assets/calib.txt -c 512 -b 512 --chunks 32 \
        -t $THREADS -o "$out/imatrix.gguf"
    time_of llama-quantize "$BIN/llama-quantize" --imatrix "$out/imatrix.gguf" "$F32" "$out/q4_0.gguf" Q4_0 $THREADS
fi

python3 - "$out" "$ONLY" <<'EOF'
import os, re, sys
out, only = sys.argv[1], sys.argv[2]

def timed(name):
    wall, rss = open(os.path.join(out, name + ".time")).read().split()[-2:]
    return float(wall), int(rss) / 1024

def log(name):
    return open(os.path.join(out, name + ".log"), errors="replace").read()

def line(log_text, key):
    m = re.search(rf"^{key}\s+(.*)$", log_text, re.M)
    return m.group(1).strip() if m else "?"

print("| job | tool | wall | peak RSS | notes |")
print("|---|---|---:|---:|---|")
if only in ("all", "eval"):
    for name in ("tenpak-eval", "tenpak-eval-candle"):
        wall, rss = timed(name)
        text = log(name)
        print(f"| perplexity, 64 × 512 | `tenpak eval` ({line(text, 'matmul')}) | {wall:.1f} s | {rss:.0f} MiB | "
              f"PPL {line(text, 'ppl')}, {line(text, 'speed')} |")
    wall, rss = timed("llama-perplexity")
    text = log("llama-perplexity")
    final = re.search(r"Final estimate: PPL = ([0-9.]+)", text)
    print(f"| perplexity, 64 × 512 | `llama-perplexity -t 2 -b 512` | {wall:.1f} s | {rss:.0f} MiB | "
          f"PPL {final.group(1) if final else '?'} (its own protocol: second half of each window) |")
    print(f"| **ratio** | TenPak / llama.cpp | **{timed('tenpak-eval')[0] / wall:.2f}x** | | |")
if only in ("all", "pack"):
    wall, rss = timed("tenpak-pack")
    text = log("tenpak-pack")
    print(f"| calibrated pack, 32 × 512 calibration tokens | `tenpak pack --preset balanced --no-eval` | {wall:.1f} s | "
          f"{rss:.0f} MiB | {line(text, 'stages')} |")
    iw, irss = timed("llama-imatrix")
    qw, qrss = timed("llama-quantize")
    print(f"| | `llama-imatrix --chunks 32` | {iw:.1f} s | {irss:.0f} MiB | |")
    print(f"| | `llama-quantize --imatrix … Q4_0` | {qw:.1f} s | {qrss:.0f} MiB | |")
    print(f"| **ratio** | TenPak / (imatrix + quantize) | **{wall / (iw + qw):.2f}x** | | |")
EOF
