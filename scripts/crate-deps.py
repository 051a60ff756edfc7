#!/usr/bin/env python3
"""The workspace's layering, from `cargo metadata` (issue 25; DESIGN.md, "Workspace").

- Implementation crates (codecs/, calibrators/, allocators/) depend on tenpak-api and
  tenpak-quant only among TenPak's crates: never on another implementation, never on a host crate.
  Their dev-dependencies may not name a host crate either.
- No library crate depends on anyhow (the binary alone may).
- No crate holds more than about a third of the workspace's lines of Rust (tests included).

Prints what it checked; exits 1 naming every violation.

    python3 scripts/crate-deps.py
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPLEMENTATION_DIRS = ("codecs", "calibrators", "allocators")
ALLOWED = {"tenpak-api", "tenpak-quant"}
SHARE = 0.36  # "about a third"


def rust_lines(directory: Path) -> int:
    return sum(len(f.read_text().splitlines()) for f in directory.rglob("*.rs") if "target" not in f.parts)


def main():
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    members = {p["name"]: p for p in meta["packages"]}
    ours = {name for name in members if name.startswith("tenpak")}
    problems = []
    implementations = []
    for name, package in sorted(members.items()):
        manifest = Path(package["manifest_path"]).relative_to(ROOT)
        is_impl = manifest.parts[0] in IMPLEMENTATION_DIRS and name != "tenpak-quant"
        for dep in package["dependencies"]:
            kind = dep["kind"] or "normal"
            if is_impl and dep["name"] in ours and dep["name"] not in ALLOWED:
                problems.append(f"{name} ({manifest.parent}) depends on {dep['name']} ({kind})")
            if dep["name"] == "anyhow" and kind != "dev" and package["targets"] and any(
                "lib" in t["kind"] or "rlib" in t["kind"] for t in package["targets"]
            ):
                problems.append(f"{name} is a library and depends on anyhow")
        if is_impl:
            implementations.append(name)
    # Lines per crate, against the workspace's.
    crate_dirs = {name: Path(p["manifest_path"]).parent for name, p in members.items()}
    total = sum(rust_lines(d) for d in crate_dirs.values() if not any(
        d != other and other in d.parents for other in crate_dirs.values()
    ))
    largest = max(crate_dirs, key=lambda n: rust_lines(crate_dirs[n]))
    for name, directory in crate_dirs.items():
        own = rust_lines(directory) - sum(rust_lines(d) for d in crate_dirs.values() if directory in d.parents)
        if own > SHARE * total:
            problems.append(f"{name} holds {own} of the workspace's {total} lines of Rust ({100 * own / total:.0f} %)")
    for p in problems:
        print(f"crate-deps: {p}")
    if problems:
        sys.exit(1)
    print(
        f"crate-deps: {len(implementations)} implementation crates depend on {', '.join(sorted(ALLOWED))} only; "
        f"no library uses anyhow; the largest crate, {largest}, holds "
        f"{100 * (rust_lines(crate_dirs[largest]) - sum(rust_lines(d) for d in crate_dirs.values() if crate_dirs[largest] in d.parents)) / total:.0f} % "
        f"of {total} lines"
    )


if __name__ == "__main__":
    main()
