#!/usr/bin/env python3
"""Tests of scripts/gridfree.py on a tiny random Llama (numpy only, a second or two).

  python3 scripts/test_gridfree.py        (with numpy installed, e.g. assets/.venv/bin/python)
"""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gridfree  # noqa: E402

CFG = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 50,
    "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True,
}


def q4_1(w: np.ndarray) -> np.ndarray:
    """Round w onto a Q4_1-style grid: per 32-block along rows, 16 levels between min and max."""
    b = w.reshape(-1, 32)
    lo, hi = b.min(1, keepdims=True), b.max(1, keepdims=True)
    d = (hi - lo) / 15
    return (np.round((b - lo) / d) * d + lo).reshape(w.shape).astype(np.float32)


def tiny_model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, f, hd = CFG["hidden_size"], CFG["intermediate_size"], CFG["head_dim"]
    shapes = {
        "self_attn.q_proj": (CFG["num_attention_heads"] * hd, h), "self_attn.k_proj": (CFG["num_key_value_heads"] * hd, h),
        "self_attn.v_proj": (CFG["num_key_value_heads"] * hd, h), "self_attn.o_proj": (h, CFG["num_attention_heads"] * hd),
        "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f),
    }
    t = {"model.embed_tokens.weight": rng.standard_normal((CFG["vocab_size"], h)).astype(np.float32),
         "model.norm.weight": (1 + 0.3 * rng.standard_normal(h)).astype(np.float32)}
    for i in range(CFG["num_hidden_layers"]):
        for p, s in shapes.items():
            t[f"model.layers.{i}.{p}.weight"] = q4_1(0.2 * rng.standard_normal(s))
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[f"model.layers.{i}.{n}.weight"] = (1 + 0.3 * rng.standard_normal(h)).astype(np.float32)
    return t


class GridFree(unittest.TestCase):
    def test_unpermute_inverts_llama_cpp_permute(self):
        # convert_hf_to_gguf.py's LlamaModel.permute
        def permute(w, n_head):
            return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

        w = np.arange(24 * 5, dtype=np.float32).reshape(24, 5)
        for heads in (1, 2, 3, 6):
            np.testing.assert_array_equal(gridfree.unpermute_rope_rows(permute(w, heads), heads), w)

    def test_rotation_is_orthogonal_and_seeded(self):
        q = gridfree.random_orthogonal(64, 0)
        np.testing.assert_allclose(q.T @ q, np.eye(64), atol=1e-12)
        np.testing.assert_array_equal(q, gridfree.random_orthogonal(64, 0))
        self.assertFalse(np.allclose(q, gridfree.random_orthogonal(64, 1)))

    def test_same_function_off_grid(self):
        src = tiny_model()
        gridfree.check_layout(src, CFG)
        var = gridfree.make_gridfree(src, CFG, gridfree.random_orthogonal(CFG["hidden_size"], 0))
        cfg = dict(CFG, tie_word_embeddings=False)
        self.assertIn("lm_head.weight", var)
        ids = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8])
        a, b = gridfree.forward(src, CFG, ids), gridfree.forward(var, cfg, ids)
        self.assertLess(np.abs(a - b).max() / np.abs(a).max(), 1e-5)
        for i in range(CFG["num_hidden_layers"]):
            for n in ("input_layernorm", "post_attention_layernorm"):
                np.testing.assert_array_equal(var[f"model.layers.{i}.{n}.weight"], 1.0)
        for r in gridfree.grid_report(src, var, [n for n in src if n.endswith("proj.weight")]):
            self.assertEqual(r["source_on_grid"], 1.0, r["tensor"])
            self.assertEqual(r["variant_on_grid"], 0.0, r["tensor"])
            self.assertLess(r["source_rtn4_rel_err"], 1e-5)
            self.assertGreater(r["variant_rtn4_rel_err"], 1e-2)


if __name__ == "__main__":
    unittest.main()
