#!/usr/bin/env python3
"""Write a Hugging Face checkpoint of a real model's shapes filled with random weights, for
measuring TenPak's time and memory at sizes no model hub download is allowed for here.

    python3 scripts/synthetic-checkpoint.py qwen2-1.5b out/synthetic/qwen2-1.5b
    python3 scripts/synthetic-checkpoint.py llama-7b out/synthetic/llama-7b

Shapes (hidden, blocks, heads/kv heads, intermediate, vocabulary):
  qwen2-1.5b  1536, 28, 12/2, 8960, 151,936, q/k/v biases, tied embedding  (about 3.1 GB bf16)
  llama-7b    4096, 32, 32/32, 11008, 32,000, untied lm_head                 (about 13.5 GB bf16)
  tiny        64, 2, 4/2, 128, 512 (for the script's own test)

Weights are bf16 (`--dtype f16|f32` for others), uniform with the standard deviation of a
trained model's linears (about 0.02; norms around 1), from a seeded generator, written tensor by
tensor in 2 GiB-or-smaller shards with `model.safetensors.index.json`, so the script itself needs
little memory. The tokenizer is byte-level BPE over the 256 byte symbols only (no merges): every
id is valid for both vocabularies, and text costs one token per byte. Perplexity of such a model is
meaningless; time, memory and file sizes are what it is for.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

SHAPES = {
    "qwen2-1.5b": dict(model_type="qwen2", hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=32768),
    "llama-7b": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, intermediate_size=11008, vocab_size=32000, tie_word_embeddings=False,
                     rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=4096),
    "tiny": dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, vocab_size=512, tie_word_embeddings=False,
                 rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=2048),
}
SHARD_BYTES = 2 << 30
DTYPES = {"bf16": ("BF16", 2), "f16": ("F16", 2), "f32": ("F32", 4)}


def tensors(c):
    """(name, shape, kind) in HF order; kind is 'norm', 'bias' or 'weight'."""
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    d = h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    out = [("model.embed_tokens.weight", (v, h), "weight")]
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        out.append((f"{p}.input_layernorm.weight", (h,), "norm"))
        for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            out.append((f"{p}.self_attn.{name}.weight", (rows, h), "weight"))
            if c["model_type"] == "qwen2":
                out.append((f"{p}.self_attn.{name}.bias", (rows,), "bias"))
        out.append((f"{p}.self_attn.o_proj.weight", (h, q), "weight"))
        out.append((f"{p}.post_attention_layernorm.weight", (h,), "norm"))
        out.append((f"{p}.mlp.gate_proj.weight", (i, h), "weight"))
        out.append((f"{p}.mlp.up_proj.weight", (i, h), "weight"))
        out.append((f"{p}.mlp.down_proj.weight", (h, i), "weight"))
    out.append(("model.norm.weight", (h,), "norm"))
    if not c["tie_word_embeddings"]:
        out.append(("lm_head.weight", (v, h), "weight"))
    return out


def values(rng, n, kind):
    """n float32 values: uniform with std 0.02 (weights), 0.1 (biases), or 1 ± 0.1 (norms)."""
    u = rng.random(n, dtype=np.float32) * 2 - 1  # std 1/sqrt(3)
    if kind == "norm":
        return 1 + u * np.float32(0.1 * 3 ** 0.5)
    return u * np.float32((0.1 if kind == "bias" else 0.02) * 3 ** 0.5)


def encode(x, dtype):
    if dtype == "f32":
        return x.astype("<f4").tobytes()
    if dtype == "f16":
        return x.astype("<f2").tobytes()
    bits = x.astype("<f4").view("<u4")
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)  # round to nearest even
    return (rounded >> 16).astype("<u2").tobytes()


def byte_level_tokenizer():
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    vocab = {table[b]: b for b in range(256)}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blocks", type=int, help="only this many transformer blocks (same widths)")
    args = ap.parse_args()
    c = dict(SHAPES[args.shape])
    if args.blocks:
        c["num_hidden_layers"] = args.blocks
    st_dtype, size = DTYPES[args.dtype]
    os.makedirs(args.out, exist_ok=True)

    # Shards: consecutive tensors up to SHARD_BYTES each.
    shards, current, used = [], [], 0
    for name, shape, kind in tensors(c):
        n = int(np.prod(shape)) * size
        if current and used + n > SHARD_BYTES:
            shards.append(current)
            current, used = [], 0
        current.append((name, shape, kind))
        used += n
    shards.append(current)

    rng = np.random.default_rng(args.seed)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for name, shape, _ in shard:
            n = int(np.prod(shape)) * size
            header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[name] = file
        header["__metadata__"] = {"format": "pt"}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        tmp = os.path.join(args.out, f".{file}.tmp")
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for name, shape, kind in shard:
                n = int(np.prod(shape))
                for start in range(0, n, 1 << 24):
                    f.write(encode(values(rng, min(1 << 24, n - start), kind), args.dtype))
                print(f"{file}: {name} {list(shape)}", file=sys.stderr)
        os.replace(tmp, os.path.join(args.out, file))
        total += offset
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=1)
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    config = dict(c, architectures=["Qwen2ForCausalLM" if c["model_type"] == "qwen2" else "LlamaForCausalLM"],
                  head_dim=head_dim, hidden_act="silu", torch_dtype={"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[args.dtype],
                  bos_token_id=None, eos_token_id=None)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(args.out, "tokenizer.json"), "w") as f:
        json.dump(byte_level_tokenizer(), f)
    print(f"{args.out}: {len(weight_map)} tensors, {total / 2**30:.2f} GiB in {len(shards)} shards", file=sys.stderr)


if __name__ == "__main__":
    main()
