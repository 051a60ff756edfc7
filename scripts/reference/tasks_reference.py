#!/usr/bin/env python3
"""Reference figures for TenPak's multiple-choice task evaluation, from lm-evaluation-harness itself.

Runs lm-eval-harness (HF backend, CPU, float32, batch size 1, 0-shot, --log_samples) on the real
model and on the first N items (default 40) of each file scripts/fetch-tasks.sh writes
(assets/tasks/{hellaswag,arc_easy,arc_challenge,piqa,winogrande}.jsonl), and writes what lm-eval
built and computed to tests/reference/tasks.json:

  {"tool", "model", "model_sha256", "how", "items_per_task",
   "tasks": {task: {"acc", "acc_norm" (null for winogrande),
                    "items": [{"id", "gold", "acc", "acc_norm",
                               "requests": [{"context", "continuation", "loglikelihood",
                                             "is_greedy"}, ...]}]}}}

The request strings are the arguments of lm-eval's logged samples, the loglikelihoods and is_greedy
flags its responses, the per-item acc/acc_norm its per-sample metrics (rechecked here from the
loglikelihoods with lm-eval's formulas: argmax, and argmax of ll / len(choice) in characters).

Tasks. lm-eval's own definitions of hellaswag, arc_easy, arc_challenge, piqa and winogrande
(lm_eval/tasks/{hellaswag,arc,piqa,winogrande}), copied into custom task YAMLs that read the local
JSONL (`dataset_path: json` with `data_files`) instead of the Hugging Face Hub: the same
doc_to_text / doc_to_target / doc_to_choice, hellaswag's utils.process_docs and winogrande's
partial-evaluation functions (copied verbatim into a module next to the YAMLs), the same metrics.
Only the task names (tenpak_*, so they do not clash with the built-in ones), the data source and
the split (every file is the `test` split here) differ.

Model. lm-eval's HF backend wants a Hugging Face model directory. This script builds one in a
temporary directory: the GGUF loaded by transformers (dequantized to float32, as reference.py
does) and saved with save_pretrained, plus the tokenizer TenPak uses: transformers' GGUF
tokenizer with SmolLM2's pre-tokenizer restored (reference.py's load_tokenizer) saved as a
PreTrainedTokenizerFast with the GGUF's special tokens and no BOS added (the GGUF says
add_bos_token false). Both are checked after saving: the saved model's logits equal the GGUF
model's, and the reloaded tokenizer adds nothing and splits digits.

Requirements: those of reference.py plus lm_eval[hf]==0.4.13 (the figures in tests/reference/
tasks.json were made with lm_eval 0.4.13, transformers 5.25.0, torch 2.15.0, tokenizers 0.23.3,
datasets 5.2.0). Runs on one CPU thread in a few minutes; nothing is downloaded (the Hub is kept
offline).

Usage (from the repository root, after scripts/fetch-assets.sh and scripts/fetch-tasks.sh):
  python3 scripts/reference/tasks_reference.py
  python3 scripts/reference/tasks_reference.py --items 10 --out /tmp/tasks.json --keep /tmp/tasks-run
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "assets" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TASKS = REPO / "assets" / "tasks"
DEFAULT_OUT = REPO / "tests" / "reference" / "tasks.json"
TASKS = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande")

# The task definitions of lm_eval 0.4.13 (lm_eval/tasks/...), with the data read from local JSONL.
# {name} is the custom task name, {data} the JSONL file.
# The parts every task shares: local JSONL as the test split, multiple choice; the metrics.
HEAD = """\
task: {name}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
"""
ACC = """\
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
ACC_NORM = """\
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
YAML = {
    # lm_eval/tasks/hellaswag/hellaswag.yaml
    "hellaswag": HEAD + """\
process_docs: !function tenpak_task_utils.hellaswag_process_docs
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "choices"
""" + ACC_NORM,
    # lm_eval/tasks/arc/arc_easy.yaml (arc_challenge.yaml includes it with another dataset_name)
    "arc": HEAD + """\
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
""" + ACC_NORM,
    # lm_eval/tasks/piqa/piqa.yaml
    "piqa": HEAD + """\
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{[sol1, sol2]}}}}"
""" + ACC_NORM,
    # lm_eval/tasks/winogrande/default.yaml
    "winogrande": HEAD + """\
doc_to_text: !function tenpak_task_utils.winogrande_doc_to_text
doc_to_target: !function tenpak_task_utils.winogrande_doc_to_target
doc_to_choice: !function tenpak_task_utils.winogrande_doc_to_choice
""" + ACC,
}

# lm_eval/tasks/hellaswag/utils.py and lm_eval/tasks/winogrande/preprocess_winogrande.py (0.4.13),
# verbatim but for the function names.
UTILS = r'''
import re

import datasets


# lm_eval/tasks/hellaswag/utils.py
def preprocess(text):
    text = text.strip()
    # NOTE: Brackets are artifacts of the WikiHow dataset portion of HellaSwag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    def _process_doc(doc):
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        out_doc = {
            "query": preprocess(doc["activity_label"] + ": " + ctx),
            "choices": [preprocess(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }
        return out_doc

    return dataset.map(_process_doc)


# lm_eval/tasks/winogrande/preprocess_winogrande.py
def winogrande_doc_to_text(doc):
    answer_to_num = {"1": 0, "2": 1}
    return answer_to_num[doc["answer"]]


def winogrande_doc_to_target(doc):
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def winogrande_doc_to_choice(doc):
    idx = doc["sentence"].index("_")
    options = [doc["option1"], doc["option2"]]
    return [doc["sentence"][:idx] + opt for opt in options]
'''


def log(msg: str) -> None:
    print(f"tasks_reference: {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_hf_dir(model_path: Path, out: Path) -> None:
    """A Hugging Face model directory for lm-eval: the GGUF in float32 and TenPak's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference import load_tokenizer  # the pre-tokenizer restoration, shared with reference.py

    gguf_tok = AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)
    patched, _, _ = load_tokenizer(model_path)
    if getattr(gguf_tok, "add_bos_token", False) or getattr(gguf_tok, "add_eos_token", False):
        raise SystemExit(f"{model_path}: the GGUF tokenizer adds BOS/EOS; this script expects not")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=patched,
        bos_token=gguf_tok.bos_token,
        eos_token=gguf_tok.eos_token,
        unk_token=gguf_tok.unk_token,
        pad_token=gguf_tok.pad_token,
        add_bos_token=False,
        add_eos_token=False,
    )
    tok.save_pretrained(str(out))

    model = AutoModelForCausalLM.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32
    )
    model.eval()
    # transformers dequantizes this GGUF to plain float32 Linear layers (its legacy GGUF path) but
    # still marks the model as GGUF-quantized, which save_pretrained refuses. So copy the weights
    # into a plain model of the same config; the logits check below shows nothing changed.
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.eval()
    plain.save_pretrained(str(out))

    # Checks: the directory's tokenizer (as lm-eval loads it) and model are the ones meant.
    tok2 = AutoTokenizer.from_pretrained(str(out))
    if (tok2.bos_token, tok2.bos_token_id, tok2.eos_token, tok2.eos_token_id) != (
        "<|im_start|>", 1, "<|im_end|>", 2
    ):
        raise SystemExit(f"saved tokenizer: unexpected special tokens {tok2.special_tokens_map}")
    probe = "Question: What is 12.5% of 2021?\nAnswer: x² + y³"
    want = patched.encode(probe, add_special_tokens=False).ids
    for got in (tok2(probe)["input_ids"], tok2.encode(probe)):
        if got != want:
            raise SystemExit(f"saved tokenizer: {got} != patched GGUF tokenizer's {want}")
    if tok2.encode(" ²") != [216, 19133]:
        raise SystemExit("saved tokenizer: the Digits pre-tokenizer step is missing")
    model2 = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    model2.eval()
    x = torch.tensor([want])
    with torch.no_grad():
        a = model(input_ids=x).logits
        b = model2(input_ids=x).logits
    if not torch.equal(a, b):
        raise SystemExit(f"saved model: logits differ from the GGUF model's by {(a - b).abs().max()}")
    log(f"HF directory {out}: {type(tok2).__name__}, {type(model2).__name__}, checks ok")


def write_tasks(task_dir: Path, data_dir: Path) -> dict[str, str]:
    """The custom task YAMLs and their utility module; returns task -> custom task name."""
    (task_dir / "tenpak_task_utils.py").write_text(UTILS, encoding="utf-8")
    names = {}
    for task in TASKS:
        data = data_dir / f"{task}.jsonl"
        if not data.is_file():
            raise SystemExit(f"{data}: missing (run scripts/fetch-tasks.sh)")
        name = f"tenpak_{task}"
        template = YAML["arc" if task.startswith("arc_") else task]
        (task_dir / f"{name}.yaml").write_text(
            template.format(name=name, data=json.dumps(str(data))), encoding="utf-8"
        )
        names[task] = name
    return names


def first_ids(path: Path, n: int) -> list[str]:
    ids = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(ids) == n:
                break
            ids.append(json.loads(line)["id"])
    return ids


def gold_of(task: str, doc: dict) -> int:
    """The gold index as lm-eval derives it (winogrande: doc_to_text; others: doc_to_target)."""
    if task == "winogrande":
        return {"1": 0, "2": 1}[doc["answer"]]
    if task.startswith("arc_"):
        return doc["choices"]["label"].index(doc["answerKey"])
    return int(doc["label"])


def collect(task: str, samples_path: Path, n: int, data_dir: Path) -> dict:
    import numpy as np

    samples = [json.loads(line) for line in open(samples_path, encoding="utf-8")]
    samples.sort(key=lambda s: s["doc_id"])
    ids = [s["doc"]["id"] for s in samples]
    if [s["doc_id"] for s in samples] != list(range(n)) or ids != first_ids(data_dir / f"{task}.jsonl", n):
        raise SystemExit(f"{samples_path}: not the first {n} items of {task}.jsonl")
    has_norm = task != "winogrande"
    items = []
    for s in samples:
        args = s["arguments"]
        requests = []
        for k in range(len(args)):
            a = args[f"gen_args_{k}"]
            [[ll, greedy]] = s["resps"][k]  # request k's response, as lm-eval logged it
            if not a["arg_1"].startswith(" "):
                raise SystemExit(f"{task} {s['doc']['id']}: continuation without the target delimiter")
            requests.append({
                "context": a["arg_0"],
                "continuation": a["arg_1"],
                "loglikelihood": float(ll),
                "is_greedy": greedy if isinstance(greedy, bool) else {"True": True, "False": False}[greedy],
            })
        gold = gold_of(task, s["doc"])
        lls = np.array([r["loglikelihood"] for r in requests])
        # lm-eval's process_results: choices are doc_to_choice (winogrande: the contexts).
        if task == "winogrande":
            choices = [r["context"] for r in requests]
        else:
            choices = [r["continuation"][1:] for r in requests]  # the " " target delimiter off
        acc = int(np.argmax(lls) == gold)
        acc_norm = int(np.argmax(lls / np.array([float(len(c)) for c in choices])) == gold)
        if acc != s["acc"] or (has_norm and acc_norm != s["acc_norm"]):
            raise SystemExit(f"{task} {s['doc']['id']}: lm-eval's acc/acc_norm differ from a recount")
        items.append({
            "id": s["doc"]["id"],
            "requests": requests,
            "gold": gold,
            "acc": acc,
            "acc_norm": acc_norm if has_norm else None,
        })
    return {
        "acc": sum(i["acc"] for i in items) / len(items),
        "acc_norm": sum(i["acc_norm"] for i in items) / len(items) if has_norm else None,
        "items": items,
    }


def versions() -> str:
    from importlib.metadata import version

    pkgs = ["lm_eval", "transformers", "torch", "tokenizers", "datasets", "gguf"]
    return "lm-evaluation-harness (HF backend): " + ", ".join(f"{p} {version(p)}" for p in pkgs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--tasks-dir", type=Path, default=DEFAULT_TASKS)
    ap.add_argument("--items", type=int, default=40, help="first N items of each task")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temporary one)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    model_path = args.model.resolve()
    data_dir = args.tasks_dir.resolve()
    if not model_path.is_file():
        raise SystemExit(f"{model_path}: missing (run scripts/fetch-assets.sh)")

    with tempfile.TemporaryDirectory(prefix="tenpak-tasks-") as tmp:
        work = args.keep.resolve() if args.keep else Path(tmp)
        hf_dir, task_dir, out_dir = work / "hf-model", work / "tasks", work / "lm-eval-out"
        for d in (hf_dir, task_dir, out_dir, work / "hf-home"):
            d.mkdir(parents=True, exist_ok=True)

        log(f"building the HF model directory from {model_path.name}")
        build_hf_dir(model_path, hf_dir)
        names = write_tasks(task_dir, data_dir)

        cmd = [
            "lm-eval", "run", "--model", "hf",
            "--model_args", f"pretrained={hf_dir},dtype=float32",
            "--include_path", str(task_dir),
            "--tasks", ",".join(names[t] for t in TASKS),
            "--num_fewshot", "0", "--limit", str(args.items), "--batch_size", "1",
            "--device", "cpu", "--log_samples", "--output_path", str(out_dir),
        ]
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
            HF_HOME=str(work / "hf-home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        log("running: " + shlex.join(cmd))
        t1 = time.time()
        # `python -m lm_eval` is the lm-eval console script, run with this interpreter.
        subprocess.run([sys.executable, "-m", "lm_eval", *cmd[1:]], env=env, cwd=work, check=True)
        log(f"lm-eval took {time.time() - t1:.0f} s")

        tasks = {}
        for task in TASKS:
            found = sorted(out_dir.rglob(f"samples_{names[task]}_*.jsonl"))
            if len(found) != 1:
                raise SystemExit(f"{out_dir}: expected one samples file for {names[task]}, found {found}")
            tasks[task] = collect(task, found[0], args.items, data_dir)
        results = sorted(out_dir.rglob("results_*.json"))
        if len(results) != 1:
            raise SystemExit(f"{out_dir}: expected one results file, found {results}")
        res = json.loads(results[0].read_text(encoding="utf-8"))["results"]
        for task in TASKS:
            r = res[names[task]]
            if abs(r["acc,none"] - tasks[task]["acc"]) > 1e-12 or (
                tasks[task]["acc_norm"] is not None
                and abs(r["acc_norm,none"] - tasks[task]["acc_norm"]) > 1e-12
            ):
                raise SystemExit(f"{task}: lm-eval's aggregate {r} differs from the items' mean")

    how = (
        f"python3 scripts/reference/tasks_reference.py --items {args.items}, which builds an HF "
        "directory HF_DIR from the GGUF and custom task YAMLs in TASK_DIR, then runs (one CPU "
        "thread, Hub offline): "
        + shlex.join(
            [c.replace(str(hf_dir), "HF_DIR").replace(str(task_dir), "TASK_DIR").replace(str(out_dir), "OUT_DIR")
             for c in cmd]
        )
    )
    doc = {
        "tool": versions(),
        "model": model_path.name,
        "model_sha256": sha256_file(model_path),
        "how": how,
        "items_per_task": args.items,
        "tasks": tasks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    for task in TASKS:
        t = tasks[task]
        norm = "-" if t["acc_norm"] is None else f"{t['acc_norm']:.4f}"
        log(f"{task:14s} acc {t['acc']:.4f}  acc_norm {norm}")
    log(f"wrote {args.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
