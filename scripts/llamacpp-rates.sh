#!/usr/bin/env bash
# llama.cpp's own quantizations of the real model, with an importance matrix, at several rates, for
# comparison with TenPak:
#
#   1. llama.cpp binaries (llama-quantize, llama-imatrix, llama-perplexity): $LLAMA_CPP_DIR/bin if
#      set; else $WORK/build/bin if already built; else built here from the llama.cpp copy vendored
#      in the PyPI sdist llama-cpp-python==$LLAMA_CPP_PY_VERSION (default 0.3.36, pinned sha256;
#      llama.cpp commit 0c1e57098bba43ac29e6e3b677cdceebdd22334f), downloaded at run time with
#      `pip download` and built with CMake in $WORK (never inside this repository)
#   2. the GGUF dequantized to f32:  llama-quantize --allow-requantize GGUF f32.gguf F32
#   3. the importance matrix:        llama-imatrix on $CALIB, 128 chunks of 512 tokens
#   4. llama-quantize --imatrix of the f32 GGUF to each of $TYPES, in $WORK/out
#   5. a table: bits per weight on the block linears (the 7 projections of every block) and over
#      all tensors, and the ggml types the linears ended up in (read with the `gguf` package)
#   6. optional: `tenpak eval FILE --samples $SAMPLES` of the source GGUF and of every output, when
#      $TENPAK_BIN names an executable
#
# Steps whose output exists are skipped (FORCE=1 redoes 2-4). Heavy steps run under `nice -n 19`.
# Environment: GGUF, CALIB, EVAL_TEXT, WORK (default: ../llamacpp beside this repository), VENV,
# LLAMA_CPP_DIR, LLAMA_CPP_PY_VERSION, TYPES, THREADS (default 1), JOBS (build, default 1),
# CHUNKS (128), CTX (512), TENPAK_BIN, SAMPLES (64), FORCE, STOP_AFTER (`f32`: stop once the
# binaries and the f32 GGUF exist, as scripts/speed-bench.sh wants).
# Needs python3 with pip and venv; to build: cmake (3.14+) and a C++17 compiler.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GGUF="${GGUF:-$ROOT/assets/SmolLM2-135M-Instruct.Q4_1.gguf}"
CALIB="${CALIB:-$ROOT/assets/calib.txt}"
EVAL_TEXT="${EVAL_TEXT:-$ROOT/assets/eval.txt}"
WORK="${WORK:-$(dirname "$ROOT")/llamacpp}"
VENV="${VENV:-$WORK/venv}"
LLAMA_CPP_PY_VERSION="${LLAMA_CPP_PY_VERSION:-0.3.36}"
LLAMA_CPP_PY_SHA256_0_3_36="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
TYPES="${TYPES:-Q3_K_S Q3_K_M Q4_0 IQ4_NL Q4_K_S Q4_K_M Q5_K_M Q6_K}"
THREADS="${THREADS:-1}"
JOBS="${JOBS:-1}"
CHUNKS="${CHUNKS:-128}"
CTX="${CTX:-512}"
SAMPLES="${SAMPLES:-64}"
FORCE="${FORCE:-0}"
PIP_PACKAGES=(numpy==2.4.6 gguf==0.19.0)

die() { echo "llamacpp-rates: error: $*" >&2; exit 1; }
log() { echo "llamacpp-rates: $*" >&2; }

[[ -f "$GGUF" ]] || die "$GGUF not found (run scripts/fetch-assets.sh, or set GGUF)"
[[ -f "$CALIB" ]] || die "$CALIB not found (run scripts/fetch-assets.sh, or set CALIB)"
command -v python3 >/dev/null || die "python3 not found"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
case "$WORK/" in
    "$ROOT/"*) die "WORK=$WORK is inside the repository; llama.cpp must stay outside it" ;;
esac
OUT="$WORK/out"
mkdir -p "$OUT"

# --- 1. llama.cpp ------------------------------------------------------------------------------
if [[ -n "${LLAMA_CPP_DIR:-}" ]]; then
    BIN="$LLAMA_CPP_DIR/bin"
    [[ -x "$BIN/llama-quantize" && -x "$BIN/llama-imatrix" ]] \
        || die "LLAMA_CPP_DIR=$LLAMA_CPP_DIR: no bin/llama-quantize and bin/llama-imatrix there"
elif [[ -x "$WORK/build/bin/llama-quantize" && -x "$WORK/build/bin/llama-imatrix" ]]; then
    BIN="$WORK/build/bin"
else
    command -v cmake >/dev/null || die "cmake not found (Debian: apt-get install cmake)"
    command -v c++ >/dev/null || die "no C++ compiler (Debian: apt-get install build-essential)"
    SDIST="$WORK/src/llama_cpp_python-$LLAMA_CPP_PY_VERSION.tar.gz"
    if [[ ! -f "$SDIST" ]]; then
        log "downloading the llama-cpp-python==$LLAMA_CPP_PY_VERSION sdist from PyPI (about 75 MB)"
        # Only this package from source: `--no-binary :all:` would also build its build
        # dependencies (CMake itself) from source just to prepare metadata.
        python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
            --dest "$WORK/src" "llama-cpp-python==$LLAMA_CPP_PY_VERSION" \
            || die "pip download llama-cpp-python==$LLAMA_CPP_PY_VERSION failed"
        [[ -f "$SDIST" ]] || die "pip download did not produce $SDIST"
    fi
    if [[ "$LLAMA_CPP_PY_VERSION" == 0.3.36 ]]; then
        got="$(sha256sum "$SDIST" | cut -d' ' -f1)"
        [[ "$got" == "$LLAMA_CPP_PY_SHA256_0_3_36" ]] \
            || die "$SDIST: sha256 is $got, expected $LLAMA_CPP_PY_SHA256_0_3_36"
    fi
    SRC="$WORK/llama_cpp_python-$LLAMA_CPP_PY_VERSION/vendor/llama.cpp"
    if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
        log "unpacking $SDIST"
        tar -xzf "$SDIST" -C "$WORK"
        [[ -f "$SRC/CMakeLists.txt" ]] || die "no vendor/llama.cpp in $SDIST"
    fi
    log "building llama.cpp from $SRC in $WORK/build (-j$JOBS; takes 10-30 minutes)"
    nice -n 19 cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF >"$WORK/cmake-configure.log" 2>&1 \
        || die "cmake configure failed (see $WORK/cmake-configure.log)"
    nice -n 19 cmake --build "$WORK/build" -j"$JOBS" \
        --target llama-quantize llama-imatrix llama-perplexity >"$WORK/cmake-build.log" 2>&1 \
        || die "build failed (see $WORK/cmake-build.log)"
    BIN="$WORK/build/bin"
fi
log "llama.cpp binaries: $BIN ($("$BIN/llama-imatrix" --version 2>&1 | head -n1 || true))"

# --- python: gguf + numpy -----------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import numpy, gguf" 2>/dev/null; then
    log "installing ${PIP_PACKAGES[*]} into $VENV"
    "$PY" -m pip install --quiet "${PIP_PACKAGES[@]}" || die "pip install ${PIP_PACKAGES[*]} failed"
fi

# --- 2. f32 GGUF ------------------------------------------------------------------------------
F32="$WORK/smollm2-f32.gguf"
if [[ "$FORCE" == 1 || ! -f "$F32" ]]; then
    log "llama-quantize $GGUF -> $F32 (F32)"
    nice -n 19 "$BIN/llama-quantize" --allow-requantize "$GGUF" "$F32.part" F32 "$THREADS" \
        >"$WORK/f32.log" 2>&1 || die "llama-quantize F32 failed (see $WORK/f32.log)"
    mv "$F32.part" "$F32"
fi
# Every matrix must now be f32 (1-D norms are f32 in the source already).
"$PY" - "$F32" <<'EOF' || die "$F32 is not all f32"
import sys, gguf
bad = [(t.name, t.tensor_type.name) for t in gguf.GGUFReader(sys.argv[1]).tensors
       if t.tensor_type != gguf.GGMLQuantizationType.F32]
if bad:
    sys.exit(f"not f32: {bad[:5]}")
EOF

if [[ "${STOP_AFTER:-}" == f32 ]]; then
    log "binaries in $BIN, f32 model $F32 (STOP_AFTER=f32)"
    exit 0
fi

# --- 3. importance matrix -----------------------------------------------------------------------
IMATRIX="$WORK/imatrix.gguf"
if [[ "$FORCE" == 1 || ! -f "$IMATRIX" ]]; then
    log "llama-imatrix on $CALIB: $CHUNKS chunks of $CTX tokens, $THREADS thread(s)"
    start=$(date +%s)
    nice -n 19 "$BIN/llama-imatrix" -m "$F32" -f "$CALIB" -c "$CTX" --chunks "$CHUNKS" \
        -o "$IMATRIX.part.gguf" -t "$THREADS" >"$WORK/imatrix.log" 2>&1 \
        || die "llama-imatrix failed (see $WORK/imatrix.log)"
    mv "$IMATRIX.part.gguf" "$IMATRIX"
    log "imatrix: $(( $(date +%s) - start )) s; $(grep -m1 'Final estimate' "$WORK/imatrix.log" || true)"
fi

# --- 4. quantize -------------------------------------------------------------------------------
FILES=()
for type in $TYPES; do
    f="$OUT/smollm2-$type-imat.gguf"
    if [[ "$FORCE" == 1 || ! -f "$f" ]]; then
        log "llama-quantize --imatrix -> $f ($type)"
        nice -n 19 "$BIN/llama-quantize" --allow-requantize --imatrix "$IMATRIX" "$F32" "$f.part" \
            "$type" "$THREADS" >"$OUT/smollm2-$type-imat.log" 2>&1 \
            || die "llama-quantize $type failed (see $OUT/smollm2-$type-imat.log)"
        mv "$f.part" "$f"
    fi
    FILES+=("$f")
done

# --- 5. bits per weight -------------------------------------------------------------------------
"$PY" - "${FILES[@]}" <<'EOF' | tee "$OUT/rates.md"
import collections, os, re, sys
import gguf

LINEAR = re.compile(r"blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$")
print("| file | type | bits/weight (linears) | bits/weight (all) | MiB | types on linears | token_embd |")
print("|---|---|---:|---:|---:|---|---|")
for path in sys.argv[1:]:
    r = gguf.GGUFReader(path)
    lin_b = lin_n = all_b = all_n = 0
    kinds = collections.Counter()
    embd = "-"
    for t in r.tensors:
        nb, ne = int(t.n_bytes), int(t.n_elements)
        all_b += nb
        all_n += ne
        if LINEAR.search(t.name):
            lin_b += nb
            lin_n += ne
            kinds[t.tensor_type.name] += 1
        elif t.name == "token_embd.weight":
            embd = t.tensor_type.name
    n_lin = sum(kinds.values())
    if n_lin == 0:
        sys.exit(f"{path}: no block linears found")
    mix = ", ".join(f"{k}x{v}" for k, v in kinds.most_common())
    ftype = re.sub(r"^smollm2-(.*)-imat\.gguf$", r"\1", os.path.basename(path))
    print(f"| {os.path.basename(path)} | {ftype} | {8 * lin_b / lin_n:.4f} | {8 * all_b / all_n:.4f} | "
          f"{os.path.getsize(path) / 2**20:.2f} | {mix} ({n_lin} tensors) | {embd} |")
EOF
log "table written to $OUT/rates.md"

# --- 6. optional: TenPak's evaluation ----------------------------------------------------------
if [[ -n "${TENPAK_BIN:-}" ]]; then
    [[ -x "$TENPAK_BIN" ]] || die "TENPAK_BIN=$TENPAK_BIN is not an executable"
    [[ -f "$EVAL_TEXT" ]] || die "$EVAL_TEXT not found (set EVAL_TEXT)"
    ppl_of() {
        local out
        out="$(cd "$ROOT" && nice -n 19 "$TENPAK_BIN" eval "$1" --text "$EVAL_TEXT" --samples "$SAMPLES")" \
            || die "tenpak eval $1 failed"
        echo "$out" | sed -n 's/^ppl  *//p' | head -n1
    }
    log "tenpak eval --samples $SAMPLES (source GGUF first)"
    base="$(ppl_of "$GGUF")"
    {
        echo
        echo "tenpak eval --samples $SAMPLES on $(basename "$EVAL_TEXT")"
        echo
        echo "| file | ppl | vs source GGUF |"
        echo "|---|---:|---:|"
        echo "| $(basename "$GGUF") | $base | |"
        for f in "${FILES[@]}"; do
            p="$(ppl_of "$f")"
            echo "| $(basename "$f") | $p | $(python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{100 * (b / a - 1):+.2f} %')" "$base" "$p") |"
        done
    } | tee -a "$OUT/rates.md"
fi
log "done: $OUT"
