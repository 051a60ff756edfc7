#!/usr/bin/env python3
"""Tiny random checkpoints of each architecture TenPak runs, written by transformers, with
transformers' greedy `generate` on a few prompts: the reference of the runtime test
`greedy_generation_matches_transformers_on_tiny_random_models` (tenpak-model/tests/runtime.rs).

    python scripts/reference/tiny_generate.py OUT_DIR      (Python from scripts/python-hf.sh)

For each case, OUT_DIR/<case>/ holds config.json and model.safetensors (f32, save_pretrained),
and OUT_DIR/generate.json the prompts' ids, the new ids and the smallest gap between the two
largest logits over the steps. Weights are seeded; a seed whose greedy path comes within 1e-3 of
a tie is skipped for the next, so that a last-bit difference in f32 sums cannot flip a token and
the comparison is of the models, not of rounding.
"""
import json
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 512
MAX_NEW = 24
MIN_GAP = 1e-3


def common(eos: int) -> dict:
    return dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        initializer_range=0.25,
        bos_token_id=1,
        eos_token_id=eos,
        torch_dtype="float32",
    )


# (case, config class, model class, extra configuration)
CASES = [
    ("llama", LlamaConfig, LlamaForCausalLM, dict(rope_theta=10000.0, tie_word_embeddings=False)),
    (
        "llama3_rope_tied",
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            rope_theta=500000.0,
            tie_word_embeddings=True,
            rope_scaling=dict(
                rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64
            ),
        ),
    ),
    ("mistral", MistralConfig, MistralForCausalLM, dict(rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False)),
    ("qwen2_tied", Qwen2Config, Qwen2ForCausalLM, dict(rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False)),
]


def greedy(model, prompt: list[int], eos: int) -> tuple[list[int], float]:
    """transformers' greedy generate, and the smallest top-2 logit gap along its path."""
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        max_new_tokens=MAX_NEW,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos,
        output_scores=True,
        return_dict_in_generate=True,
    )
    new = out.sequences[0, len(prompt):].tolist()
    top2 = [s[0].topk(2).values for s in out.scores]
    gap = min(float(t[0] - t[1]) for t in top2)
    return new, gap


def main() -> int:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    record = {
        "tool": f"transformers {__import__('transformers').__version__} torch {torch.__version__}",
        "how": "scripts/reference/tiny_generate.py; transformers generate, greedy, f32, stops at eos (included) or after max_new_tokens",
        "max_new_tokens": MAX_NEW,
        "cases": [],
    }
    for k, (case, config_class, model_class, extra) in enumerate(CASES):
        for seed in range(100):
            torch.manual_seed(seed)
            prompts = [torch.randint(3, VOCAB, (n,)).tolist() for n in (7, 19)]
            # The EOS is a token the first prompt's greedy path reaches (found by a first run
            # without one), so one case stops at EOS and the other, most likely, at the length.
            config = config_class(**common(eos=0), **extra)
            torch.manual_seed(1000 * (k + 1) + seed)
            model = model_class(config).eval()
            with torch.no_grad():
                first, _ = greedy(model, prompts[0], eos=0)
            if len(first) < 6:
                continue
            eos = first[5]
            model.config.eos_token_id = eos
            model.generation_config.eos_token_id = eos
            results, worst = [], float("inf")
            with torch.no_grad():
                for prompt in prompts:
                    new, gap = greedy(model, prompt, eos)
                    results.append({"prompt_ids": prompt, "new_ids": new})
                    worst = min(worst, gap)
            if worst < MIN_GAP:
                continue
            model.save_pretrained(out_dir / case, safe_serialization=True)
            record["cases"].append({"case": case, "seed": seed, "eos_token_id": eos, "min_top2_gap": worst, "prompts": results})
            break
        else:
            raise SystemExit(f"{case}: no seed below 100 keeps every greedy step {MIN_GAP} from a tie")
    (out_dir / "generate.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
