#!/usr/bin/env python3
"""Where an artifact's loss sits: the relative output error each calibrated layer recorded
(`output_error` = tr(E G Eᵀ) / tr(W G Wᵀ) on the calibration activations), by role and by block,
and the worst layers. Reads only manifest.json; several artifacts print side by side.

    python3 scripts/layer-errors.py ARTIFACT [ARTIFACT ...] [--top 8]
"""
import argparse
import json
import re
import statistics


def load(path):
    manifest = json.load(open(f"{path}/manifest.json"))
    out = {}
    for t in manifest["tensors"]:
        err = t.get("params", {}).get("output_error")
        m = re.match(r"model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.weight$", t["name"])
        if err is not None and m:
            out[(int(m.group(1)), m.group(2))] = float(err)
    if not out:
        raise SystemExit(f"{path}: no layer records an output_error (a calibrated codec records it)")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    runs = [load(a) for a in args.artifacts]
    names = [a.rstrip("/").split("/")[-1] for a in args.artifacts]
    roles = sorted({r for run in runs for (_, r) in run})
    blocks = sorted({b for run in runs for (b, _) in run})
    print("| role | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(runs))
    for role in roles:
        cells = [f"{statistics.mean(v for (b, r), v in run.items() if r == role):.2e}" for run in runs]
        print(f"| {role} (mean over blocks) | " + " | ".join(cells) + " |")
    print()
    print("| blocks | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(runs))
    for lo in range(0, len(blocks), 5):
        span = [b for b in blocks[lo:lo + 5]]
        cells = [f"{statistics.mean(v for (b, r), v in run.items() if b in span):.2e}" for run in runs]
        print(f"| {span[0]}–{span[-1]} (mean over layers) | " + " | ".join(cells) + " |")
    for name, run in zip(names, runs):
        worst = sorted(run.items(), key=lambda kv: -kv[1])[: args.top]
        print(f"\n{name}: worst layers: " + ", ".join(f"{b}.{r} {v:.2e}" for (b, r), v in worst))


if __name__ == "__main__":
    main()
