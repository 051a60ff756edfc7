#!/usr/bin/env python3
"""Write the grid-free model (scripts/gridfree.py, assets/gridfree) as an F32 GGUF for llama.cpp.

Why: to run llama.cpp's own quantizers (llama-imatrix + llama-quantize --imatrix) on weights that
are not already on a 4-bit grid, for a like-for-like comparison with TenPak on assets/gridfree.

What it does:
  - every KV pair of a template GGUF made by llama.cpp from the ORIGINAL model (default
    ../llamacpp/smollm2-f32.gguf: hyperparameters, tokenizer, chat template, ...) is copied
    unchanged, the way gguf's own scripts/gguf_new_metadata.py copies fields (architecture and
    GGUF.* virtual fields are written by GGUFWriter itself);
  - the tensors come from DIR/model.safetensors (f32, HF names), renamed to llama.cpp's names;
    attn_q / attn_k rows get llama.cpp's RoPE permutation (convert_hf_to_gguf.py
    LlamaModel.permute: reshape(n_head, 2, head_dim/2, in).swapaxes(1, 2)) with n_head for q and
    n_head_kv for k, as the HF safetensors are un-permuted; lm_head.weight (untied in the
    grid-free model) becomes output.weight; the norm weights (all 1 after folding) are copied.
  - --check (default on): the rotation acts on the residual dimension only, so Gram matrices
    along the other dimension are invariant. For every block it compares, in float64,
      attn_q/k/v, ffn_gate/up:   W' W'^T  with  (W diag(norm)) (W diag(norm))^T  of the template
      attn_output, ffn_down:     W'^T W'  with  W^T W
      token_embd, output:        the same on the first 512 rows (output = token_embd diag(output_norm))
    and reports the worst relative Frobenius error, plus the same for attn_q/k WITHOUT the
    permutation (must be large: that shows the permutation is needed and right).

Usage:
  /work/llamacpp/venv/bin/python scripts/gridfree-gguf.py [--dense assets/gridfree]
      [--template ../llamacpp/smollm2-f32.gguf] [-o ../llamacpp/gridfree-f32.gguf] [--no-check] [--force]
Requirements: numpy, gguf (no safetensors package needed: the file is read with numpy.memmap).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
import time
from pathlib import Path

import numpy as np
import gguf

REPO = Path(__file__).resolve().parents[1]
WORK = REPO.parent / "llamacpp"

HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")


def log(msg: str) -> None:
    print(f"gridfree-gguf: {msg}", file=sys.stderr, flush=True)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-mapped tensors of a safetensors file (F32/F64/F16/BF16 only)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    base = 8 + n
    dtypes = {"F32": np.float32, "F64": np.float64, "F16": np.float16}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        if info["dtype"] == "BF16":
            raw = np.memmap(path, dtype=np.uint16, mode="r", offset=base + b, shape=shape)
            out[name] = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            dt = dtypes[info["dtype"]]
            out[name] = np.memmap(path, dtype=dt, mode="r", offset=base + b, shape=shape) if e > b \
                else np.zeros(shape, dt)
    return out


def hf_to_gguf_name(name: str) -> str | None:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "lm_head.weight":
        return "output.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    m = LAYER_RE.match(name)
    if m and m.group(2) in HF_TO_GGUF:
        return f"blk.{m.group(1)}.{HF_TO_GGUF[m.group(2)]}.weight"
    return None


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (n_head already = n_head_kv for k)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(reader: gguf.GGUFReader, key: str):
    f = reader.get_field(key)
    return f.contents() if f is not None else None


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def check(out: dict[str, np.ndarray], tmpl: dict[str, np.ndarray], n_layer: int, n_head: int, n_head_kv: int) -> dict:
    f64 = lambda a: np.asarray(a, dtype=np.float64)
    worst: dict[str, float] = {}
    unperm_q = unperm_k = float("inf")

    def note(kind: str, e: float) -> None:
        worst[kind] = max(worst.get(kind, 0.0), e)

    for i in range(n_layer):
        p = f"blk.{i}."
        an = f64(tmpl[p + "attn_norm.weight"])
        fn = f64(tmpl[p + "ffn_norm.weight"])
        for kind, norm in (("attn_q", an), ("attn_k", an), ("attn_v", an), ("ffn_gate", fn), ("ffn_up", fn)):
            w = f64(out[p + kind + ".weight"])
            t = f64(tmpl[p + kind + ".weight"]) * norm[None, :]
            note(kind, rel(w @ w.T, t @ t.T))
            if kind in ("attn_q", "attn_k"):
                # the same HF tensor without llama.cpp's permutation: un-permute ours back
                nh = n_head if kind == "attn_q" else n_head_kv
                u = w.reshape(nh, w.shape[0] // nh // 2, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)
                assert np.array_equal(permute(u, nh), w)
                e = rel(u @ u.T, t @ t.T)
                if kind == "attn_q":
                    unperm_q = min(unperm_q, e)
                else:
                    unperm_k = min(unperm_k, e)
        for kind in ("attn_output", "ffn_down"):
            w = f64(out[p + kind + ".weight"])
            t = f64(tmpl[p + kind + ".weight"])
            note(kind, rel(w.T @ w, t.T @ t))
        for kind in ("attn_norm", "ffn_norm"):
            note(kind + " (max |w-1|)", float(np.max(np.abs(f64(out[p + kind + ".weight"]) - 1.0))))
    rows = 512
    e = f64(tmpl["token_embd.weight"][:rows])
    w = f64(out["token_embd.weight"][:rows])
    note("token_embd", rel(w @ w.T, e @ e.T))
    t = e * f64(tmpl["output_norm.weight"])[None, :]
    w = f64(out["output.weight"][:rows])
    note("output", rel(w @ w.T, t @ t.T))
    note("output_norm (max |w-1|)", float(np.max(np.abs(f64(out["output_norm.weight"]) - 1.0))))
    return {"max_rel_gram_err": worst, "without_permutation_min_rel_gram_err": {"attn_q": unperm_q, "attn_k": unperm_k}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dense", type=Path, default=REPO / "assets" / "gridfree")
    ap.add_argument("--template", type=Path, default=WORK / "smollm2-f32.gguf")
    ap.add_argument("-o", "--output", type=Path, default=WORK / "gridfree-f32.gguf")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()

    t0 = time.time()
    if args.output.exists() and not args.force:
        log(f"{args.output} exists (use --force)")
        return 1
    reader = gguf.GGUFReader(args.template, "r")
    arch = field(reader, gguf.Keys.General.ARCHITECTURE)
    if arch != "llama":
        log(f"template architecture is {arch!r}, expected 'llama'")
        return 1
    n_layer = int(field(reader, "llama.block_count"))
    n_head = int(field(reader, "llama.attention.head_count"))
    n_head_kv = int(field(reader, "llama.attention.head_count_kv"))
    n_embd = int(field(reader, "llama.embedding_length"))

    cfg = json.loads((args.dense / "config.json").read_text())
    for k, v in (("num_hidden_layers", n_layer), ("num_attention_heads", n_head),
                 ("num_key_value_heads", n_head_kv), ("hidden_size", n_embd)):
        if cfg[k] != v:
            log(f"config.json {k}={cfg[k]} but template says {v}")
            return 1

    st = read_safetensors(args.dense / "model.safetensors")
    out: dict[str, np.ndarray] = {}
    for name, arr in st.items():
        g = hf_to_gguf_name(name)
        if g is None:
            log(f"unmapped tensor {name}")
            return 1
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        if g.endswith(".attn_q.weight"):
            arr = permute(np.asarray(arr), n_head)
        elif g.endswith(".attn_k.weight"):
            arr = permute(np.asarray(arr), n_head_kv)
        out[g] = np.ascontiguousarray(arr)
    if "output.weight" not in out:
        log("no lm_head.weight in the dense model (expected untied)")
        return 1

    tmpl = {t.name: t.data for t in reader.tensors}
    for name, t in tmpl.items():
        if name not in out:
            log(f"template tensor {name} missing from the dense model")
            return 1
        if tuple(t.shape) != out[name].shape:
            log(f"{name}: shape {out[name].shape} vs template {tuple(t.shape)}")
            return 1
    extra = sorted(set(out) - set(tmpl))
    if extra != ["output.weight"]:
        log(f"unexpected extra tensors: {extra}")
        return 1

    report = {}
    if not args.no_check:
        report = check(out, tmpl, n_layer, n_head, n_head_kv)
        log("check: " + json.dumps(report, indent=1))
        bad = {k: v for k, v in report["max_rel_gram_err"].items() if v > 1e-5}
        if bad or min(report["without_permutation_min_rel_gram_err"].values()) < 1e-2:
            log(f"check FAILED: {bad}")
            return 1

    # Writing order: the template's, output.weight right after token_embd.weight.
    order = []
    for name in tmpl:
        order.append(name)
        if name == "token_embd.weight":
            order.append("output.weight")

    tmp = args.output.with_name(args.output.name + ".part")
    writer = gguf.GGUFWriter(tmp, arch=arch, endianess=reader.endianess)
    alignment = field(reader, gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = alignment
    n_kv = 0
    for f in reader.fields.values():
        # as gguf_new_metadata.py: skip virtual fields and the ones GGUFWriter writes itself
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue
        val_type = f.types[0]
        sub_type = f.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(f.name, f.contents(), val_type, sub_type=sub_type)
        n_kv += 1
    for name in order:
        a = out[name]
        writer.add_tensor_info(name, a.shape, a.dtype, a.nbytes, gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name in order:
        writer.write_tensor_data(out[name])
    writer.close()
    os.replace(tmp, args.output)
    log(f"wrote {args.output}: {n_kv} KV pairs copied from {args.template.name}, {len(order)} tensors "
        f"({os.path.getsize(args.output) / 2**20:.1f} MiB) in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
