#!/usr/bin/env python3
"""Dump a GGUF file as llama.cpp's own Python reader (PyPI `gguf`) sees it, as one JSON object:
selected metadata, and per tensor its name, type, shape (outermost first), element count and the
sha256 of its values dequantized by `gguf.quants.dequantize` to float32 (row-major, as stored).

    python scripts/gguf_dump.py model.gguf > dump.json

The export tests compare these digests with TenPak's own reading of the same file.
"""
import hashlib
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field_value(reader, key):
    field = reader.get_field(key)
    if field is None:
        return None
    value = field.contents()
    if isinstance(value, list) and len(value) > 16:
        return {"len": len(value), "first": value[:4], "last": value[-2:]}
    return value


def main():
    reader = GGUFReader(sys.argv[1])
    arch = field_value(reader, "general.architecture")
    keys = [k for k in reader.fields if k.startswith(f"{arch}.") or k.startswith("tokenizer.ggml.") or k.startswith("general.")]
    metadata = {k: field_value(reader, k) for k in sorted(keys) if not k.startswith("GGUF.")}
    tensors = []
    for t in reader.tensors:
        values = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        shape = [int(d) for d in reversed(t.shape.tolist())]
        assert values.size == int(np.prod(shape)), (t.name, values.shape, shape)
        tensors.append({
            "name": t.name,
            "type": t.tensor_type.name,
            "shape": shape,
            "numel": int(values.size),
            "sha256": hashlib.sha256(values.tobytes()).hexdigest(),
        })
    json.dump({"metadata": metadata, "tensors": tensors}, sys.stdout, indent=1, default=str)


if __name__ == "__main__":
    main()
