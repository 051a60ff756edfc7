#!/usr/bin/env python3
"""Cross-check the reference token ids against llama.cpp's tokenizer.

Two independent tokenizers for the same GGUF should give the same ids: the reference one of
reference.py (transformers with SmolLM2's tokenizer.json pre-tokenizer restored) and llama.cpp's
(`llama-tokenize`, pre-tokenizer `smollm`). This compares them on the first --chars characters of
the evaluation text and on the text of tests/reference/tokens.json (which includes non-ASCII numeric
characters, where transformers' unpatched GGUF tokenizer differs), and reports the first
disagreement, if any. Exit status 1 on any mismatch.

llama-tokenize is not part of this repository: it builds from the llama.cpp sources vendored in the
llama-cpp-python source package on PyPI (see the README's reference section).

Usage:
  python3 scripts/reference/compare_llamacpp_tokens.py --llama-tokenize /path/to/bin/llama-tokenize
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402  (same directory)


def llama_ids(binary: Path, model: Path, text: str) -> list[int]:
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="", suffix=".txt", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        # -f reads the file verbatim; --no-escape keeps "\n" literal; no BOS (the GGUF says
        # add_bos_token=false, --no-bos makes it explicit); special-token text is plain text.
        out = subprocess.run(
            [str(binary), "-m", str(model), "-f", path, "--ids", "--no-escape", "--no-bos",
             "--no-parse-special", "--log-disable"],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        Path(path).unlink()
    return json.loads(out.strip().splitlines()[-1])


def compare(name: str, a: list[int], b: list[int]) -> bool:
    if a == b:
        print(f"{name}: identical ({len(a)} ids)")
        return True
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    print(f"{name}: DIFFER (reference {len(a)} ids, llama.cpp {len(b)} ids); first difference at "
          f"index {first}: reference {a[first:first + 8]} vs llama.cpp {b[first:first + 8]}")
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-tokenize", type=Path, required=True, help="llama.cpp's llama-tokenize binary")
    ap.add_argument("--model", type=Path, default=reference.DEFAULT_MODEL)
    ap.add_argument("--eval", type=Path, default=reference.DEFAULT_EVAL)
    ap.add_argument("--tokens-json", type=Path, default=reference.DEFAULT_OUT / "tokens.json")
    ap.add_argument("--chars", type=int, default=100_000, help="prefix of the evaluation text (0: all)")
    args = ap.parse_args()

    tok, unpatched, _ = reference.load_tokenizer(args.model)
    text = args.eval.read_text(encoding="utf-8")
    if args.chars:
        text = text[: args.chars]
    ok = compare(f"evaluation text, first {len(text)} chars", reference.encode(tok, text),
                 llama_ids(args.llama_tokenize, args.model, text))
    if args.tokens_json.is_file():
        data = json.loads(args.tokens_json.read_text(encoding="utf-8"))
        lids = llama_ids(args.llama_tokenize, args.model, data["text"])
        ok &= compare("tokens.json text vs stored ids", data["ids"], lids)
        ok &= compare("tokens.json text, recomputed", reference.encode(tok, data["text"]), lids)
        compare("tokens.json text, transformers WITHOUT the Digits step (expected to differ)",
                reference.encode(unpatched, data["text"]), lids)
        for i, case in enumerate(data["cases"]):
            ok &= compare(f"tokens.json case {i}", case["ids"], llama_ids(args.llama_tokenize, args.model, case["text"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
