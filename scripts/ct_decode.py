#!/usr/bin/env python3
"""Decode a compressed-tensors "pack-quantized" checkpoint to a dense Hugging Face directory,
with numpy only, following the compressed-tensors library's own rules (pack_quantized.py:
`unpack_from_int32`; forward.py: `_dequantize`), written independently of TenPak's exporter:

    python scripts/ct_decode.py PACKED_DIR DENSE_DIR

For each `P.weight_packed` (int32 [out, in/8], nibble i of word j = column 8j+i, stored q+8),
`P.weight_zero_point` (int32 [ceil(out/8), groups], packed the same way along rows, zp+8),
`P.weight_scale` ([out, groups]) and `P.weight_shape`: W = (q - zp) * scale, computed in the
scale's dtype, written as `P.weight` (float32). Every other tensor is copied as float32; config.json
loses its quantization_config. The export tests load the result with TenPak and compare.
"""
import json
import os
import shutil
import struct
import sys

import numpy as np

DTYPES = {"F16": np.float16, "BF16": None, "F32": np.float32, "I32": np.int32, "I64": np.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        raw = data[8 + n + s:8 + n + e]
        if info["dtype"] == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype("<u4") << 16).view("<f4")
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(DTYPES[info["dtype"]]).newbyteorder("<"))
        out[name] = arr.reshape(info["shape"])
    return out


def unpack_nibbles(words, count, axis):
    """int32 words -> signed 4-bit values (nibble - 8), unpacked along `axis` and cropped to count."""
    u = words.astype("<i4").view("<u4")
    nib = np.stack([(u >> (4 * i)) & 0xF for i in range(8)], axis=-1)  # [..., words, 8]
    if axis == 1:
        vals = nib.reshape(u.shape[0], u.shape[1] * 8)[:, :count]
    else:  # along rows: transpose, unpack, transpose back
        t = np.stack([(u.T >> (4 * i)) & 0xF for i in range(8)], axis=-1).reshape(u.shape[1], u.shape[0] * 8)
        vals = t[:, :count].T
    return vals.astype(np.int32) - 8


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    tensors = read_safetensors(os.path.join(src, "model.safetensors"))
    config = json.load(open(os.path.join(src, "config.json")))
    qc = config.pop("quantization_config")
    weights = qc["config_groups"]["group_0"]["weights"]
    assert qc["format"] == "pack-quantized" and weights["num_bits"] == 4 and weights["strategy"] == "group"
    g = weights["group_size"]
    dense = {}
    for name, arr in tensors.items():
        if name.endswith(".weight_packed"):
            p = name[: -len(".weight_packed")]
            out, inp = (int(v) for v in tensors[p + ".weight_shape"])
            q = unpack_nibbles(arr, inp, axis=1)
            scale = tensors[p + ".weight_scale"]
            zp = unpack_nibbles(tensors[p + ".weight_zero_point"], out, axis=0) if not weights["symmetric"] else np.zeros_like(scale, dtype=np.int32)
            cols = np.arange(inp) // g
            dt = scale.dtype.type
            w = (q.astype(dt) - zp[:, cols].astype(dt)) * scale[:, cols]
            dense[p + ".weight"] = w.astype(np.float32)
        elif name.endswith((".weight_scale", ".weight_zero_point", ".weight_shape")):
            continue
        else:
            dense[name] = arr.astype(np.float32)
    os.makedirs(dst, exist_ok=True)
    write_safetensors(os.path.join(dst, "model.safetensors"), dense)
    config["torch_dtype"] = "float32"
    json.dump(config, open(os.path.join(dst, "config.json"), "w"), indent=1)
    if os.path.exists(os.path.join(src, "tokenizer.json")):
        shutil.copy(os.path.join(src, "tokenizer.json"), os.path.join(dst, "tokenizer.json"))


if __name__ == "__main__":
    main()
