#!/usr/bin/env bash
# A Python with llama.cpp's own `gguf` package (PyPI gguf, which ships with llama.cpp as gguf-py)
# and numpy, in a virtualenv under $TENPAK_GGUF_PY_DIR (default /tmp/tenpak-gguf-py): the
# independent GGUF reader the export tests check TenPak's files with. Prints the interpreter's
# path as the last line. Safe to run again.
set -euo pipefail
DIR="${TENPAK_GGUF_PY_DIR:-/tmp/tenpak-gguf-py}"
exec 9>"/tmp/tenpak-gguf-py.lock"
flock 9
if ! "$DIR/venv/bin/python" -c 'import gguf, numpy' 2>/dev/null; then
    echo "python-gguf: pip install gguf into $DIR/venv" >&2
    python3 -m venv "$DIR/venv"
    "$DIR/venv/bin/pip" install -q --disable-pip-version-check 'gguf==0.19.0' 'numpy>=1.26' >&2
fi
echo "$DIR/venv/bin/python"
