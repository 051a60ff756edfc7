#!/usr/bin/env python3
"""Derive a grid-free variant of a Llama model: the same function, weights off any quantization grid.

Why: assets/SmolLM2-135M-Instruct.Q4_1.gguf stores its linears on a Q4_1 grid (4-bit levels per
block of 32 weights, the token embedding on a Q8_0 grid), so a quantizer with 32-aligned 4-bit
groups can rediscover the grid and look better than it is. This script rewrites the model so that
it computes exactly the same function (up to f32 rounding) with weights that lie on no grid:

1. fold every RMSNorm weight into the linears that read it (input_layernorm -> columns of
   q/k/v_proj, post_attention_layernorm -> columns of gate/up_proj, model.norm -> columns of
   lm_head) and set the norm weights to 1; the tied embedding therefore gets its own lm_head
   (tie_word_embeddings = false);
2. rotate the residual stream by a seeded random orthogonal Q (hidden x hidden, QR of a Gaussian
   matrix from numpy's default_rng(seed), columns sign-fixed so that diag(R) > 0), as in
   QuaRot/SliceGPT: embed' = embed Q, W_in' = W_in Q for q/k/v/gate/up and lm_head,
   W_out' = Q^T W_out for o_proj/down_proj (weights are [out, in], y = x W^T). An RMSNorm with
   unit weight commutes with an orthogonal rotation, so every block sees the rotated residual and
   produces the rotated update.

All arithmetic is float64; the output is f32 safetensors (model.safetensors) + config.json +
tokenizer.json + gridfree.json (seed, rotation checksum, sources, checks) in a new directory,
written beside the destination under a temporary name and renamed into place when complete.

Input (one of, or both):
  --dense DIR   a Hugging Face Llama directory (config.json, model.safetensors, tokenizer.json),
                e.g. `tenpak unpack` of a `keep`-f32 pack of the GGUF (scripts/gridfree.sh does
                this). Its weights are used when given.
  --gguf FILE   a llama.cpp GGUF, read with the `gguf` package: every tensor dequantized to f32,
                llama.cpp's q/k RoPE row permutation undone (as tenpak-model/src/gguf.rs
                does), names mapped to HF. With --dense too it is only cross-checked against the
                dense weights; alone, config.json is derived from its metadata and tokenizer.json
                must be given with --tokenizer.

Checks (printed and recorded in gridfree.json):
  - grid: per linear, the fraction of 32-weight blocks (along the input dimension, the GGUF block
    layout) whose values take at most 16 distinct levels, and the relative error of 4-bit
    round-to-nearest with min/max per 32-block; before (source) and after (variant);
  - function: a float64 numpy forward pass of source and variant on a few random token ids, max
    relative logit difference (--check-tokens 0 skips it).

Usage:
  python3 scripts/gridfree.py --dense assets/gridfree-work/dense --gguf assets/SmolLM2-135M-Instruct.Q4_1.gguf \
      -o assets/gridfree [--seed 0] [--force]
Requirements: numpy, safetensors, gguf (scripts/gridfree.sh installs them into assets/.venv).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "assets" / "gridfree"

IN_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
OUT_LINEARS = ("self_attn.o_proj", "mlp.down_proj")
ATTN_IN = IN_LINEARS[:3]
MLP_IN = IN_LINEARS[3:]
LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def log(msg: str) -> None:
    print(f"gridfree: {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- GGUF input ------------------------------------------------------------------------------

GGUF_SIMPLE = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
GGUF_PARTS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def gguf_hf_name(name: str) -> str:
    if name in GGUF_SIMPLE:
        return GGUF_SIMPLE[name]
    m = re.match(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$", name)
    if not m or m.group(2) not in GGUF_PARTS:
        raise SystemExit(f"gridfree: GGUF tensor '{name}' has no known Hugging Face Llama equivalent")
    return f"model.layers.{m.group(1)}.{GGUF_PARTS[m.group(2)]}.{m.group(3)}"


def unpermute_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (the inverse of convert_hf_to_gguf.py's
    `w.reshape(heads, 2, half, cols).swapaxes(1, 2)`): within each head, the GGUF row 2*j + i
    goes back to HF row i*half + j. Same as unpermute_rope_rows in tenpak-model/src/gguf.rs."""
    rows = w.shape[0]
    if rows % (2 * heads):
        raise SystemExit(f"gridfree: {rows} rows do not split into {heads} heads of pairs")
    half = rows // heads // 2
    rest = w.shape[1:]
    # GGUF layout: [heads, half, 2, ...] (row 2*j + i); HF layout: [heads, 2, half, ...].
    return np.ascontiguousarray(w.reshape(heads, half, 2, *rest).swapaxes(1, 2).reshape(rows, *rest))


def gguf_field(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def f32_decimal(v) -> float | None:
    """A GGUF f32 as the shortest decimal that round-trips it (1e-5 stays 1e-5, as TenPak does)."""
    return None if v is None else float(str(np.float32(v)))


def read_gguf(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """All tensors of a Llama GGUF as f32 arrays under HF names (q/k un-permuted), and an HF
    config derived from the metadata."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"gridfree: {path}: architecture '{arch}' is not llama")
    p = "llama."
    n_layers = int(gguf_field(reader, p + "block_count"))
    hidden = int(gguf_field(reader, p + "embedding_length"))
    n_heads = int(gguf_field(reader, p + "attention.head_count"))
    n_kv = int(gguf_field(reader, p + "attention.head_count_kv") or n_heads)
    names = {t.name for t in reader.tensors}
    vocab = gguf_field(reader, p + "vocab_size")
    if vocab is None:
        vocab = len(gguf_field(reader, "tokenizer.ggml.tokens"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(gguf_field(reader, p + "feed_forward_length")),
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": int(gguf_field(reader, p + "rope.dimension_count") or hidden // n_heads),
        "vocab_size": int(vocab),
        "hidden_act": "silu",
        "rms_norm_eps": f32_decimal(gguf_field(reader, p + "attention.layer_norm_rms_epsilon")),
        "rope_theta": f32_decimal(gguf_field(reader, p + "rope.freq_base")) or 10000.0,
        "rope_scaling": None,
        "max_position_embeddings": int(gguf_field(reader, p + "context_length") or 2048),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": gguf_field(reader, "tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    }
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        hf = gguf_hf_name(t.name)
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        # GGUF shapes are listed innermost first; numpy's dequantized array is [rows, cols].
        shape = tuple(int(d) for d in reversed(list(t.shape)))
        w = w.reshape(shape)
        if hf.endswith("self_attn.q_proj.weight") or hf.endswith("self_attn.q_proj.bias"):
            w = unpermute_rope_rows(w, n_heads)
        elif hf.endswith("self_attn.k_proj.weight") or hf.endswith("self_attn.k_proj.bias"):
            w = unpermute_rope_rows(w, n_kv)
        tensors[hf] = np.ascontiguousarray(w, dtype=np.float32)
    return tensors, config


# --- dense input -------------------------------------------------------------------------------

def read_dense(d: Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors.numpy import load_file

    config = json.loads((d / "config.json").read_text())
    index = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        for k, v in load_file(str(d / f)).items():
            tensors[k] = v.astype(np.float32, copy=False)
    return tensors, config


# --- the transform -----------------------------------------------------------------------------

def random_orthogonal(n: int, seed: int) -> np.ndarray:
    """Haar-random orthogonal matrix: QR of a standard Gaussian, columns sign-fixed (diag(R) > 0)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    q *= np.sign(np.diag(r))[None, :]
    return q


def check_layout(t: dict[str, np.ndarray], cfg: dict) -> None:
    if cfg.get("model_type", "llama") not in ("llama", "mistral", "qwen2"):
        raise SystemExit(f"gridfree: model_type {cfg.get('model_type')} is not a Llama-like model")
    h, n = cfg["hidden_size"], cfg["num_hidden_layers"]
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    for i in range(n):
        pre = f"model.layers.{i}."
        expected |= {pre + p + ".weight" for p in IN_LINEARS + OUT_LINEARS}
        expected |= {pre + "input_layernorm.weight", pre + "post_attention_layernorm.weight"}
    missing = expected - set(t)
    if missing:
        raise SystemExit(f"gridfree: missing tensors: {sorted(missing)[:5]} ...")
    allowed_extra = {"lm_head.weight"} | {f"model.layers.{i}.{p}.bias" for i in range(n) for p in IN_LINEARS + OUT_LINEARS}
    extra = set(t) - expected - allowed_extra
    if extra:
        raise SystemExit(f"gridfree: tensors this script does not know how to rotate: {sorted(extra)[:5]}")
    if t["model.embed_tokens.weight"].shape[1] != h:
        raise SystemExit("gridfree: embedding width differs from hidden_size")


def make_gridfree(t: dict[str, np.ndarray], cfg: dict, q: np.ndarray) -> dict[str, np.ndarray]:
    """Fold the norms and rotate the residual stream by q; float64 arithmetic, f32 results."""
    out: dict[str, np.ndarray] = {}
    f64 = lambda name: t[name].astype(np.float64)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    h = cfg["hidden_size"]
    ones = np.ones(h, dtype=np.float32)

    embed = f64("model.embed_tokens.weight")
    out["model.embed_tokens.weight"] = f32(embed @ q)
    head = f64("lm_head.weight") if ("lm_head.weight" in t and not cfg.get("tie_word_embeddings", False)) else embed
    del embed
    out["lm_head.weight"] = f32((head * f64("model.norm.weight")[None, :]) @ q)
    del head
    out["model.norm.weight"] = ones.copy()

    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        for norm, linears in (("input_layernorm", ATTN_IN), ("post_attention_layernorm", MLP_IN)):
            g = f64(pre + norm + ".weight")
            for p in linears:
                out[pre + p + ".weight"] = f32((f64(pre + p + ".weight") * g[None, :]) @ q)
                if pre + p + ".bias" in t:  # the output side of an input linear is not rotated
                    out[pre + p + ".bias"] = t[pre + p + ".bias"].astype(np.float32)
            out[pre + norm + ".weight"] = ones.copy()
        for p in OUT_LINEARS:
            out[pre + p + ".weight"] = f32(q.T @ f64(pre + p + ".weight"))
            if pre + p + ".bias" in t:  # y' = y Q
                out[pre + p + ".bias"] = f32(f64(pre + p + ".bias") @ q)
    return out


# --- checks ------------------------------------------------------------------------------------

def grid_stats(w: np.ndarray, block: int = 32, levels: int = 16) -> tuple[float, float, float]:
    """(fraction of `block`-weight blocks along rows with <= `levels` distinct values,
    relative error of 4-bit min/max round-to-nearest per block,
    fraction of blocks on a Q8_0-style grid: every w * 127 / max|w| within 1e-3 of an integer)."""
    rows, cols = w.shape
    b = w[:, : cols - cols % block].reshape(-1, block).astype(np.float64)
    s = np.sort(b, axis=1)
    distinct = 1 + (np.diff(s, axis=1) != 0).sum(axis=1)
    lo, hi = b.min(axis=1, keepdims=True), b.max(axis=1, keepdims=True)
    scale = np.where(hi > lo, (hi - lo) / 15.0, 1.0)
    deq = np.clip(np.round((b - lo) / scale), 0, 15) * scale + lo
    rel = float(np.sqrt(((deq - b) ** 2).sum() / max((b**2).sum(), 1e-300)))
    amax = np.abs(b).max(axis=1, keepdims=True)
    r8 = b * 127.0 / np.where(amax > 0, amax, 1.0)
    on8 = (np.abs(r8 - np.round(r8)) < 1e-3).all(axis=1)
    return float((distinct <= levels).mean()), rel, float(on8.mean())


def grid_report(src: dict, var: dict, names: list[str]) -> list[dict]:
    rows = []
    for n in names:
        f0, e0, g0 = grid_stats(src[n])
        f1, e1, g1 = grid_stats(var[n])
        rows.append({"tensor": n, "source_on_grid": f0, "variant_on_grid": f1, "source_rtn4_rel_err": e0, "variant_rtn4_rel_err": e1, "source_on_q8_grid": g0, "variant_on_q8_grid": g1})
    return rows


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def forward(t: dict[str, np.ndarray], cfg: dict, ids: np.ndarray) -> np.ndarray:
    """Float64 HF-Llama forward pass (RoPE 'rotate halves', GQA, SwiGLU); logits [len(ids), vocab]."""
    g = lambda n: t[n].astype(np.float64)
    b = lambda n: t[n].astype(np.float64) if n in t else 0.0
    eps, nh, nkv, hd = cfg["rms_norm_eps"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    seq = len(ids)
    x = g("model.embed_tokens.weight")[ids]
    inv = cfg.get("rope_theta", 10000.0) ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(seq, dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(v):  # v: [heads, seq, hd]
        half = hd // 2
        rot = np.concatenate([-v[..., half:], v[..., :half]], -1)
        return v * cos + rot * sin

    mask = np.triu(np.full((seq, seq), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        hN = rms_norm(x, g(pre + "input_layernorm.weight"), eps)
        lin = lambda p, inp: inp @ g(pre + p + ".weight").T + b(pre + p + ".bias")
        qh = rope(lin("self_attn.q_proj", hN).reshape(seq, nh, hd).transpose(1, 0, 2))
        kh = rope(lin("self_attn.k_proj", hN).reshape(seq, nkv, hd).transpose(1, 0, 2))
        vh = lin("self_attn.v_proj", hN).reshape(seq, nkv, hd).transpose(1, 0, 2)
        rep = nh // nkv
        kh, vh = np.repeat(kh, rep, 0), np.repeat(vh, rep, 0)
        s = qh @ kh.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        att = (s @ vh).transpose(1, 0, 2).reshape(seq, nh * hd)
        x = x + lin("self_attn.o_proj", att)
        hN = rms_norm(x, g(pre + "post_attention_layernorm.weight"), eps)
        gate = lin("mlp.gate_proj", hN)
        x = x + lin("mlp.down_proj", gate / (1 + np.exp(-gate)) * lin("mlp.up_proj", hN))
    x = rms_norm(x, g("model.norm.weight"), eps)
    head = "lm_head.weight" if ("lm_head.weight" in t and not cfg.get("tie_word_embeddings", False)) else "model.embed_tokens.weight"
    return x @ g(head).T


# --- main --------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", type=Path, help="HF Llama directory (config.json, model.safetensors, tokenizer.json)")
    ap.add_argument("--gguf", type=Path, help="llama.cpp GGUF (read directly; cross-checked when --dense is given)")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer.json to copy (default: the one in --dense)")
    ap.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random rotation (default 0)")
    ap.add_argument("--force", action="store_true", help="replace an existing output directory")
    ap.add_argument("--check-tokens", type=int, default=32, help="tokens for the numpy forward-pass check (0: skip)")
    args = ap.parse_args()
    started = time.time()

    if not args.dense and not args.gguf:
        ap.error("give --dense DIR and/or --gguf FILE")
    out: Path = args.output.resolve()
    if out.exists() and not args.force:
        ap.error(f"{out} exists (use --force to replace it)")

    record: dict = {"method": "fold RMSNorm weights into the linears, rotate the residual stream by a random orthogonal Q (QuaRot/SliceGPT)", "seed": args.seed, "sources": {}}
    gguf_tensors = None
    if args.gguf:
        log(f"reading {args.gguf}")
        gguf_tensors, gguf_cfg = read_gguf(args.gguf)
        record["sources"]["gguf"] = {"path": str(args.gguf), "sha256": sha256_file(args.gguf)}
    if args.dense:
        log(f"reading {args.dense}")
        src, cfg = read_dense(args.dense)
        record["sources"]["dense"] = {"path": str(args.dense), "model.safetensors sha256": sha256_file(args.dense / "model.safetensors")}
        if gguf_tensors is not None:
            # The two readings of the same model must agree: names, shapes, values.
            if set(gguf_tensors) != set(src):
                raise SystemExit(f"gridfree: GGUF and dense tensor names differ: {sorted(set(gguf_tensors) ^ set(src))[:6]}")
            worst = 0.0
            for k, v in src.items():
                if gguf_tensors[k].shape != v.shape:
                    raise SystemExit(f"gridfree: {k}: GGUF shape {gguf_tensors[k].shape}, dense {v.shape}")
                d = float(np.abs(gguf_tensors[k] - v).max() / max(np.abs(v).max(), 1e-30))
                worst = max(worst, d)
            for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size", "tie_word_embeddings"):
                if gguf_cfg[k] != cfg.get(k):
                    raise SystemExit(f"gridfree: config {k}: GGUF {gguf_cfg[k]}, dense {cfg.get(k)}")
            for k in ("rms_norm_eps", "rope_theta"):
                if abs(gguf_cfg[k] - cfg[k]) > 1e-6 * abs(cfg[k]):  # f32 metadata
                    raise SystemExit(f"gridfree: config {k}: GGUF {gguf_cfg[k]}, dense {cfg[k]}")
            log(f"GGUF (numpy dequantize + un-permute) vs dense: max |diff| / max |w| = {worst:.3g} over {len(src)} tensors")
            record["gguf_vs_dense_max_rel_diff"] = worst
            if worst > 1e-6:
                raise SystemExit("gridfree: the GGUF and the dense directory disagree")
            del gguf_tensors
    else:
        src, cfg = gguf_tensors, gguf_cfg
        del gguf_tensors
    tokenizer = args.tokenizer or (args.dense / "tokenizer.json" if args.dense else None)
    if tokenizer is None or not tokenizer.is_file():
        raise SystemExit("gridfree: no tokenizer.json (pass --dense DIR or --tokenizer FILE)")

    check_layout(src, cfg)
    h = cfg["hidden_size"]
    q = random_orthogonal(h, args.seed)
    ortho_err = float(np.abs(q.T @ q - np.eye(h)).max())
    record["rotation"] = {"n": h, "construction": "numpy.random.default_rng(seed).standard_normal((n, n)); Q, R = numpy.linalg.qr; Q *= sign(diag(R))", "float64_sha256": hashlib.sha256(q.astype("<f8").tobytes()).hexdigest(), "max_abs_QtQ_minus_I": ortho_err}
    log(f"rotation {h}x{h}, seed {args.seed}, max |Q^T Q - I| = {ortho_err:.2g}")

    var = make_gridfree(src, cfg, q)
    new_cfg = dict(cfg)
    new_cfg["tie_word_embeddings"] = False
    new_cfg["torch_dtype"] = "float32"

    # Grid check: the linears of a few blocks, the embedding and lm_head.
    n = cfg["num_hidden_layers"]
    names = [f"model.layers.{i}.{p}.weight" for i in sorted({0, n // 2, n - 1}) for p in IN_LINEARS + OUT_LINEARS]
    names.append("model.embed_tokens.weight")
    src_head = src["lm_head.weight"] if ("lm_head.weight" in src and not cfg.get("tie_word_embeddings")) else src["model.embed_tokens.weight"]
    grid = grid_report({**src, "lm_head.weight": src_head}, var, names + ["lm_head.weight"])
    record["grid_check"] = {"definition": "on_grid: fraction of 32-weight blocks along the input dimension with <= 16 distinct values; rtn4_rel_err: relative L2 error of 4-bit min/max round-to-nearest per 32-block; on_q8_grid: fraction of 32-blocks whose values times 127/max|w| are all within 1e-3 of integers (Q8_0)", "tensors": grid}
    print("grid check, per 32-weight block along the input dimension: <=16 levels (Q4 grid), on a Q8_0 grid, 4-bit RTN error")
    print(f"{'tensor':<40} {'Q4 src':>8} {'Q4 var':>8} {'Q8 src':>8} {'Q8 var':>8} {'rtn4 src':>9} {'rtn4 var':>9}")
    for r in grid:
        print(f"{r['tensor']:<40} {r['source_on_grid']:>8.2%} {r['variant_on_grid']:>8.2%} {r['source_on_q8_grid']:>8.2%} {r['variant_on_q8_grid']:>8.2%} {r['source_rtn4_rel_err']:>9.4f} {r['variant_rtn4_rel_err']:>9.4f}")

    if args.check_tokens > 0:
        ids = np.random.default_rng(1234).integers(0, cfg["vocab_size"], args.check_tokens)
        a, b = forward(src, cfg, ids), forward(var, new_cfg, ids)
        rel = float(np.abs(a - b).max() / np.abs(a).max())
        la = a - a.max(-1, keepdims=True)
        la -= np.log(np.exp(la).sum(-1, keepdims=True))
        lb = b - b.max(-1, keepdims=True)
        lb -= np.log(np.exp(lb).sum(-1, keepdims=True))
        dlp = float(np.abs(la - lb).max())
        log(f"numpy forward on {args.check_tokens} random tokens: max |logit diff| / max |logit| = {rel:.3g}, max |log-prob diff| = {dlp:.3g}")
        record["function_check"] = {"tokens": args.check_tokens, "max_rel_logit_diff": rel, "max_abs_logprob_diff": dlp}
        if rel > 1e-4:
            raise SystemExit("gridfree: the variant does not compute the same function")

    # Write beside the destination, then rename into place.
    from safetensors.numpy import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(var, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(new_cfg, indent=2) + "\n")
        shutil.copyfile(tokenizer, tmp / "tokenizer.json")
        if args.dense:
            for extra in ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json"):
                if (args.dense / extra).is_file():
                    shutil.copyfile(args.dense / extra, tmp / extra)
        record["output"] = {"model.safetensors sha256": sha256_file(tmp / "model.safetensors")}
        record["seconds"] = round(time.time() - started, 1)
        record["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        (tmp / "gridfree.json").write_text(json.dumps(record, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; safetensors may write 0600
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out} ({record['seconds']} s, peak RSS {record['peak_rss_mib']} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
