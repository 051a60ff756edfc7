#!/usr/bin/env python3
"""Where an artifact's perplexity loss comes from, measured: unpack it to f32, then for each part
of the model (a role across all blocks, or a range of blocks) put the original weights back in
that part only and score the result with `tenpak eval`. The PPL each part recovers is its share of
the loss (shares need not add up: errors interact).

    assets/.venv/bin/python scripts/loss-ablation.py ARTIFACT ORIGINAL_HF_DIR [--samples 64]

ORIGINAL_HF_DIR is the dense model the artifact was packed from (e.g. assets/gridfree, or the
real model unpacked with a `keep f32` preset). Needs numpy and safetensors (scripts/gridfree.sh's
venv has both) and target/release/tenpak. Work files go to out/ablation/ (git-ignored). Prints a
Markdown table.
"""
import argparse
import os
import re
import shutil
import subprocess

from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENPAK = os.path.join(ROOT, "target/release/tenpak")
ROLES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def ppl(model, samples):
    out = subprocess.run([TENPAK, "eval", model, "--samples", str(samples)], check=True, capture_output=True, text=True).stdout
    return float(re.search(r"^ppl\s+([0-9.]+)", out, re.M).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("original")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--block-span", type=int, default=5)
    args = ap.parse_args()
    work = os.path.join(ROOT, "out/ablation", os.path.basename(args.artifact.rstrip("/")))
    dense = os.path.join(work, "dense")
    if not os.path.isdir(dense):
        subprocess.run([TENPAK, "unpack", args.artifact, "-o", dense, "--dtype", "f32"], check=True, capture_output=True)
    quantized = {}
    for f in sorted(os.listdir(dense)):
        if f.endswith(".safetensors"):
            quantized.update(load_file(os.path.join(dense, f)))
    original = {}
    for f in sorted(os.listdir(args.original)):
        if f.endswith(".safetensors"):
            original.update(load_file(os.path.join(args.original, f)))
    blocks = sorted({int(m.group(1)) for n in quantized for m in [re.match(r"model\.layers\.(\d+)\.", n)] if m})
    parts = [(f"{r} (all blocks)", lambda n, r=r: f".{r}." in n) for r in ROLES]
    for lo in range(0, len(blocks), args.block_span):
        span = blocks[lo:lo + args.block_span]
        parts.append((f"blocks {span[0]}–{span[-1]} (all linears)",
                      lambda n, s=set(span): any(n.startswith(f"model.layers.{b}.") for b in s) and n.endswith("proj.weight")))
    base_q = ppl(dense, args.samples)
    base_o = ppl(args.original, args.samples)
    print(f"| restored to the original | PPL | recovered of the loss ({base_q:.4f} → {base_o:.4f}) |")
    print("|---|---|---|")
    print(f"| nothing (the artifact) | {base_q:.4f} | 0 % |")
    mixed = os.path.join(work, "mixed")
    for label, picks in parts:
        shutil.rmtree(mixed, ignore_errors=True)
        shutil.copytree(dense, mixed, ignore=shutil.ignore_patterns("*.safetensors"))
        tensors = {n: (original[n] if picks(n) else v) for n, v in quantized.items()}
        save_file(tensors, os.path.join(mixed, "model.safetensors"), metadata={"format": "pt"})
        p = ppl(mixed, args.samples)
        print(f"| {label} | {p:.4f} | {100 * (base_q - p) / (base_q - base_o):.0f} % |", flush=True)
    shutil.rmtree(mixed, ignore_errors=True)


if __name__ == "__main__":
    main()
