#!/usr/bin/env bash
# A Python with torch, transformers and compressed-tensors (PyPI) in a virtualenv under
# $TENPAK_HF_PY_DIR (default /tmp/tenpak-hf-py), for scripts/ct_transformers_check.py. torch from
# PyPI on Linux brings its CUDA wheels: about 5.6 GB on disk, a few minutes to download; it runs
# on the CPU here. Prints the interpreter's path as the last line. Safe to run again.
set -euo pipefail
DIR="${TENPAK_HF_PY_DIR:-/tmp/tenpak-hf-py}"
exec 9>"/tmp/tenpak-hf-py.lock"
flock 9
if ! "$DIR/venv/bin/python" -c 'import torch, transformers, compressed_tensors, tokenizers' 2>/dev/null; then
    echo "python-hf: pip install torch transformers compressed-tensors into $DIR/venv" >&2
    python3 -m venv "$DIR/venv"
    "$DIR/venv/bin/pip" install -q --disable-pip-version-check 'torch==2.15.0' 'transformers==5.25.0' \
        'compressed-tensors==0.20.1' 'numpy>=1.26' >&2
fi
echo "$DIR/venv/bin/python"
