#!/usr/bin/env bash
# The tokenizer TenPak writes into a GGUF, checked by llama.cpp's own tokenizer (issue 26): for
# each source in $SOURCES (a GGUF file or a Hugging Face directory with tokenizer.json),
#   1. `tenpak pack SOURCE` with every tensor kept in f32, then `tenpak export --format gguf`;
#   2. llama.cpp's `llama-tokenize` on a long real text ($TEXT, default assets/eval.txt) with the
#      exported GGUF, BOS added or not as the file's metadata says;
#   3. the source's own tokenizer on the same text: `llama-tokenize` of the source GGUF, or for a
#      Hugging Face directory the `tokenizers` library on its tokenizer.json (special tokens added
#      as its post-processor says);
# and prints, per source, the `tokenizer.ggml.pre` and `add_bos_token` written, the id count and
# the first differing position (none when the two agree on every id).
# Not part of CI (llama.cpp is built by scripts/llamacpp-rates.sh; llama-tokenize is built here
# from the same tree). Environment: SOURCES (default: the real model's GGUF), TEXT,
# LLAMA_CPP_DIR (default ../llamacpp/build), OUT (out/gguf-tokenizer-check).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD="${LLAMA_CPP_DIR:-$(dirname "$ROOT")/llamacpp/build}"
SOURCES="${SOURCES:-$ROOT/assets/SmolLM2-135M-Instruct.Q4_1.gguf}"
TEXT="${TEXT:-$ROOT/assets/eval.txt}"
OUT="${OUT:-$ROOT/out/gguf-tokenizer-check}"
die() { echo "gguf-tokenizer-check: $*" >&2; exit 1; }
[[ -d "$BUILD" ]] || die "no llama.cpp build in $BUILD (run scripts/llamacpp-rates.sh or set LLAMA_CPP_DIR)"
if [[ ! -x "$BUILD/bin/llama-tokenize" ]]; then
    cmake --build "$BUILD" --target llama-tokenize -j 2 >"$OUT.build.log" 2>&1 || die "building llama-tokenize failed ($OUT.build.log)"
fi
cargo build --release -q -p tenpak
TENPAK="$ROOT/target/release/tenpak"
PYTHON="$(bash scripts/python-hf.sh | tail -1)"
mkdir -p "$OUT"
cat >"$OUT/f32.toml" <<'EOF'
name = "f32"
description = "every tensor kept in f32"
[allocator]
id = "role_rules"
[codec]
codec = "keep"
dtype = "f32"
EOF

# llama-tokenize's ids of $TEXT with a GGUF, one per line.
llama_ids() {
    "$BUILD/bin/llama-tokenize" -m "$1" -f "$TEXT" --ids --log-disable 2>/dev/null \
        | tr -d '[] ' | tr ',' '\n' | sed '/^$/d'
}

echo "| source | pre written | add_bos written | ids | first difference |"
echo "|---|---|---|---:|---|"
for source in $SOURCES; do
    name=$(basename "$source" .gguf)
    art="$OUT/$name.tenpak"
    gguf="$OUT/$name.gguf"
    "$TENPAK" pack "$source" --preset "$OUT/f32.toml" -o "$art" --no-eval --force >"$OUT/$name.pack.log" 2>&1 \
        || die "pack of $source failed ($OUT/$name.pack.log)"
    "$TENPAK" export "$art" -o "$gguf" --force >"$OUT/$name.export.log" 2>&1 \
        || die "export of $source failed ($OUT/$name.export.log)"
    llama_ids "$gguf" >"$OUT/$name.llama.ids"
    if [[ -f "$source" ]]; then
        llama_ids "$source" >"$OUT/$name.source.ids"
    else
        "$PYTHON" -c '
import sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
for i in tok.encode(open(sys.argv[2], encoding="utf-8").read()).ids:
    print(i)
' "$source/tokenizer.json" "$TEXT" >"$OUT/$name.source.ids"
    fi
    meta=$("$(bash scripts/python-gguf.sh | tail -1)" -c '
import sys
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
f = r.fields
pre = bytes(f["tokenizer.ggml.pre"].parts[-1]).decode()
bos = bool(f["tokenizer.ggml.add_bos_token"].parts[-1][0]) if "tokenizer.ggml.add_bos_token" in f else "unset"
print(pre, bos)
' "$gguf")
    n=$(wc -l <"$OUT/$name.source.ids")
    diff_at=$(cmp <(cat "$OUT/$name.llama.ids") <(cat "$OUT/$name.source.ids") 2>/dev/null | sed -n 's/.*line \([0-9]*\).*/id \1/p')
    if [[ -z "$diff_at" ]] && [[ $(wc -l <"$OUT/$name.llama.ids") != "$n" ]]; then
        diff_at="lengths $(wc -l <"$OUT/$name.llama.ids") vs $n"
    fi
    echo "| $name | ${meta% *} | ${meta#* } | $n | ${diff_at:-none} |"
done
