#!/usr/bin/env python3
"""kill -9 at random points of `tenpak pack` and `tenpak unpack`, and check what is left.

    python3 scripts/crash-bench.py [--cycles 20] [--seed 1] [--preset fast]

For each phase it first runs the command once to the end (to time it), then `--cycles` times
starts it again and sends SIGKILL after a uniform random delay within that time. After every
kill it checks, and at the end prints, per phase:
  - corrupt: the output exists but is not complete (pack: `tenpak info` does not verify every
    shard's sha256; unpack: config.json, tokenizer.json or model.safetensors missing, or the
    safetensors header does not describe the file exactly): the goal is 0;
  - stale temps: temporary directories of killed runs that a later run left in place (each run
    removes those of dead processes before writing, so at most the last kill's may be there, and
    none after a run to the end): the goal is 0;
  - source changed: the input's sha256 differs from before the cycles: the goal is no.
Needs target/release/tenpak (cargo build --release) and assets/ (scripts/fetch-assets.sh).
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TENPAK = ROOT / "target" / "release" / "tenpak"
MODEL = ROOT / "assets" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tree_sha(path: Path) -> str:
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode())
        h.update(sha256(file).encode())
    return h.hexdigest()


def temporaries(parent: Path, name: str) -> list[Path]:
    return sorted(parent.glob(f".{name}.tmp-*"))


def pack_complete(out: Path) -> bool:
    info = subprocess.run([str(TENPAK), "info", str(out)], capture_output=True, text=True)
    return info.returncode == 0 and "verified (sha256)" in info.stdout


def unpack_complete(out: Path) -> bool:
    st = out / "model.safetensors"
    if not all((out / f).is_file() for f in ("config.json", "tokenizer.json")) or not st.is_file():
        return False
    try:
        json.loads((out / "config.json").read_text())
        with open(st, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        return st.stat().st_size == 8 + n + end
    except (ValueError, KeyError, struct.error, OSError):
        return False


def run_phase(name, command, out: Path, source: Path, complete, cycles, rng):
    parent, base = out.parent, out.name
    source_before = sha256(source) if source.is_file() else tree_sha(source)
    start = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    full = time.monotonic() - start
    assert complete(out), f"{name}: a run to the end did not leave a complete output"
    corrupt = stale = killed = finished = 0
    for _ in range(cycles):
        delay = rng.uniform(0.05, full)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
        else:
            finished += 1
        # A run that got as far as writing removed the temporaries of earlier killed runs: at
        # most the last one's may be there.
        stale += max(0, len(temporaries(parent, base)) - 1)
        if out.exists() and not complete(out):
            corrupt += 1
            print(f"  {name}: corrupt output after a kill at {delay:.2f} s", file=sys.stderr)
    # A run to the end leaves no temporary at all.
    subprocess.run(command, check=True, capture_output=True)
    stale += len(temporaries(parent, base))
    source_after = sha256(source) if source.is_file() else tree_sha(source)
    return {
        "phase": name,
        "full run s": f"{full:.1f}",
        "cycles": cycles,
        "killed": killed,
        "finished first": finished,
        "corrupt": corrupt,
        "stale temps": stale,
        "source changed": "yes" if source_after != source_before else "no",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "crash-bench")
    args = parser.parse_args()
    for needed in (TENPAK, MODEL):
        if not needed.exists():
            sys.exit(f"crash-bench: {needed} is missing (cargo build --release; scripts/fetch-assets.sh)")
    rng = random.Random(args.seed)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    packed = args.work / "model.tenpak"
    dense = args.work / "dense"
    rows = [
        run_phase("pack", [str(TENPAK), "pack", str(MODEL), "--preset", args.preset, "-o", str(packed), "--force"],
                  packed, MODEL, pack_complete, args.cycles, rng),
        run_phase("unpack", [str(TENPAK), "unpack", str(packed), "-o", str(dense), "--force"],
                  dense, packed, unpack_complete, args.cycles, rng),
    ]
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))
    bad = any(r["corrupt"] or r["stale temps"] or r["source changed"] == "yes" for r in rows)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
