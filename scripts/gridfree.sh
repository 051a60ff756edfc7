#!/usr/bin/env bash
# Build the grid-free variant of the real model (scripts/gridfree.py explains the transform) and
# check that it computes the same function as the GGUF:
#
#   1. a venv with numpy, safetensors and gguf from PyPI   ($VENV, default assets/.venv)
#   2. the GGUF as dense f32 HF safetensors + config.json + tokenizer.json, written by TenPak
#      itself: `tenpak pack --preset <keep f32 everywhere> --no-eval` then `tenpak unpack --dtype f32`
#      (TenPak undoes llama.cpp's q/k RoPE permutation)                ($WORK, default assets/gridfree-work)
#   3. scripts/gridfree.py: fold the RMSNorm weights, rotate the residual stream by a seeded random
#      orthogonal matrix, write $OUT (default assets/gridfree); it also reads the GGUF with the
#      `gguf` package and checks both readings agree, prints the grid check and runs a float64
#      numpy forward pass of both models
#   4. `tenpak eval` of the GGUF and of $OUT on $SAMPLES windows (default 8; 0 skips): the two
#      perplexities must agree within 1e-4 relative
#
# Needs target/release/tenpak (build it first; this script never runs cargo) and the GGUF from
# scripts/fetch-assets.sh. Heavy steps run under `nice -n 10`. Environment: GGUF, OUT, WORK, VENV,
# TENPAK, SEED (0), SAMPLES (8), WAIT_SECS (0: how long to wait for the GGUF and the binary to
# appear, e.g. while fetch-assets.sh or a build is still running).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GGUF="${GGUF:-$ROOT/assets/SmolLM2-135M-Instruct.Q4_1.gguf}"
OUT="${OUT:-$ROOT/assets/gridfree}"
WORK="${WORK:-$ROOT/assets/gridfree-work}"
VENV="${VENV:-$ROOT/assets/.venv}"
TENPAK="${TENPAK:-$ROOT/target/release/tenpak}"
SEED="${SEED:-0}"
SAMPLES="${SAMPLES:-8}"
WAIT_SECS="${WAIT_SECS:-0}"
# Versions used for the figures (numpy and gguf as in scripts/reference/requirements.txt).
PIP_PACKAGES=(numpy==2.4.6 safetensors==0.8.0 gguf==0.19.0)

die() { echo "gridfree: error: $*" >&2; exit 1; }
log() { echo "gridfree: $*" >&2; }

# Wait up to WAIT_SECS for file $1 (test $2: -f or -x) to appear.
wait_for() {
    local waited=0
    until test "$2" "$1"; do
        (( waited < WAIT_SECS )) || return 1
        (( waited == 0 )) && log "waiting for $1"
        sleep 10
        waited=$(( waited + 10 ))
    done
}

# fetch-assets.sh writes the GGUF under a temporary name and renames it, so existence is enough.
wait_for "$GGUF" -f || die "$GGUF not found (run scripts/fetch-assets.sh, or set GGUF)"
wait_for "$TENPAK" -x || die "$TENPAK not found (build it: cargo build --release -p tenpak, or set TENPAK)"

# --- 1. python packages --------------------------------------------------------------------------
command -v python3 >/dev/null || die "python3 not found"
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import numpy, safetensors.numpy, gguf" 2>/dev/null; then
    log "installing ${PIP_PACKAGES[*]} into $VENV"
    nice -n 10 "$PY" -m pip install --quiet "${PIP_PACKAGES[@]}" || die "pip install failed"
fi

# --- 2. the GGUF as dense f32 safetensors, through TenPak -----------------------------------------
mkdir -p "$WORK"
PRESET="$WORK/keep-f32.toml"
cat >"$PRESET" <<'EOF'
# Every tensor stored as f32 by the keep codec: a lossless artifact of the source, for unpacking.
name = "keep-f32"
description = "keep (f32) for every tensor; used by scripts/gridfree.sh"

[allocator]
id = "role_rules"

[codec]
codec = "keep"
dtype = "f32"

[roles.embedding]
codec = "keep"
dtype = "f32"

[roles.lm_head]
codec = "keep"
dtype = "f32"
EOF
log "tenpak pack (keep f32) -> $WORK/keep-f32.tenpak"
nice -n 10 "$TENPAK" pack "$GGUF" --preset "$PRESET" --no-eval --force -o "$WORK/keep-f32.tenpak" >"$WORK/pack.log" 2>&1 \
    || { cat "$WORK/pack.log" >&2; die "tenpak pack failed"; }
rm -rf "$WORK/dense"
log "tenpak unpack --dtype f32 -> $WORK/dense"
nice -n 10 "$TENPAK" unpack "$WORK/keep-f32.tenpak" -o "$WORK/dense" --dtype f32 >"$WORK/unpack.log" 2>&1 \
    || { cat "$WORK/unpack.log" >&2; die "tenpak unpack failed"; }
rm -rf "$WORK/keep-f32.tenpak"  # 0.5 GB; only the unpacked directory is read

# --- 3. the transform ---------------------------------------------------------------------------
log "scripts/gridfree.py -> $OUT (seed $SEED)"
nice -n 10 "$PY" "$ROOT/scripts/gridfree.py" --dense "$WORK/dense" --gguf "$GGUF" -o "$OUT" --seed "$SEED" --force

# --- 4. same perplexity -------------------------------------------------------------------------
if (( SAMPLES > 0 )); then
    ppl_of() {
        local out
        out="$(nice -n 10 "$TENPAK" eval "$1" --samples "$SAMPLES")" || die "tenpak eval $1 failed"
        echo "$out" | sed -n 's/^ppl  *//p'
    }
    log "tenpak eval --samples $SAMPLES (GGUF, then the variant)"
    PPL_SRC="$(ppl_of "$GGUF")"
    PPL_VAR="$(ppl_of "$OUT")"
    echo "ppl GGUF     $PPL_SRC"
    echo "ppl gridfree $PPL_VAR"
    "$PY" - "$PPL_SRC" "$PPL_VAR" <<'EOF' || die "perplexities differ by more than 1e-4 relative"
import sys
a, b = float(sys.argv[1]), float(sys.argv[2])
rel = abs(a - b) / a
print(f"relative difference {rel:.2e} (limit 1e-4)")
sys.exit(0 if rel <= 1e-4 else 1)
EOF
fi
log "done: $OUT"
