#!/usr/bin/env python3
"""Load a `tenpak export --format compressed-tensors` directory with transformers (CPU, through
the compressed-tensors package, decompressed: `run_compressed=False`) and print its perplexity by
TenPak's protocol (DESIGN.md): the text tokenized whole without special tokens, the first N
non-overlapping windows of CTX tokens, every position but the first of each window scored.

    python scripts/ct_transformers_check.py EXPORT_DIR TEXT [--windows 4] [--ctx 512]

Prints one JSON object: ppl, windows, tokens_scored, versions. Needs torch, transformers and
compressed-tensors (>= 0.13 for asymmetric zero points).
"""
import argparse
import json
import math

import compressed_tensors
import torch
import transformers
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM
from transformers.utils.quantization_config import CompressedTensorsConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    ids = tok.encode(open(args.text, encoding="utf-8").read(), add_special_tokens=False).ids
    model = AutoModelForCausalLM.from_pretrained(
        args.model,
        dtype=torch.float32,
        quantization_config=CompressedTensorsConfig(run_compressed=False),
    )
    model.eval()
    total, scored = 0.0, 0
    with torch.no_grad():
        for w in range(args.windows):
            window = torch.tensor([ids[w * args.ctx:(w + 1) * args.ctx]])
            logits = model(window).logits.float()
            logp = torch.log_softmax(logits[0, :-1], dim=-1)
            nll = -logp.gather(1, window[0, 1:].unsqueeze(1)).squeeze(1)
            total += float(nll.double().sum())
            scored += nll.numel()
    print(json.dumps({
        "ppl": math.exp(total / scored),
        "windows": args.windows,
        "tokens_scored": scored,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "compressed_tensors": compressed_tensors.__version__,
    }))


if __name__ == "__main__":
    main()
