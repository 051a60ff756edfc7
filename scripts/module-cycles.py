#!/usr/bin/env python3
"""Module import circles in the workspace's crates (issue 25: the pack flow runs one way).

For every crate (a directory with Cargo.toml and src/lib.rs or src/main.rs), each source file is
mapped to its module path, and every path it names (`use crate::a::b`, `crate::a::f()`,
`super::x`, `self::x`) becomes an edge between modules. The graph is checked among siblings at
every level: the top-level modules of a crate, and the submodules of each module. An edge from
module `a/x` to `b/y` counts as `a -> b` at the top level; an edge from a child to its own
ancestor (`super::` up to the parent) is the parent's business and is not a circle.

Prints every strongly connected component of more than one module and exits 1 if there is one;
prints the number of modules and edges checked otherwise.

    python3 scripts/module-cycles.py [CRATE_DIR ...]   (default: every workspace crate)
"""

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PATH_RE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
# `use crate::{a, b::c}` and `use super::{x, y}`: the braces' first names are modules too.
GROUP_RE = re.compile(r"\b(crate|super|self)::\{([^}]*)\}")
LINE_COMMENT = re.compile(r"//.*?$", re.M)
BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)
STRING = re.compile(r'"(?:\\.|[^"\\])*"')


def crates():
    for cargo in sorted(ROOT.glob("**/Cargo.toml")):
        rel = cargo.parent.relative_to(ROOT)
        if any(part in ("target", "node_modules", ".git") or part.startswith("target") for part in rel.parts):
            continue
        if (cargo.parent / "src" / "lib.rs").exists() or (cargo.parent / "src" / "main.rs").exists():
            yield cargo.parent


def module_of(src: Path, file: Path):
    """Module path of `file` under `src`, as a tuple (() is the crate root)."""
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("lib", "main") and len(parts) == 1:
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts and parts[0] == "bin":
        return None  # each src/bin file is a crate of its own
    return tuple(parts)


def strip(text):
    text = BLOCK_COMMENT.sub("", text)
    text = LINE_COMMENT.sub("", text)
    return STRING.sub('""', text)


def references(module, text, modules):
    """Modules that `module`'s text names, as tuples that exist in `modules`."""
    out = set()
    spans = []
    for m in GROUP_RE.finditer(text):
        for item in m.group(2).split(","):
            item = item.strip().split(" as ")[0].strip()
            if item and item not in ("self", "*"):
                spans.append((m.group(1), "::" + item))
    for m in PATH_RE.finditer(text):
        spans.append((m.group(1), m.group(2)))
    for anchor, rest in spans:
        names = [n for n in rest.split("::") if n]
        if anchor == "crate":
            base = ()
        elif anchor == "super":
            base = module[:-1]
            while names and names[0] == "super":
                base = base[:-1]
                names = names[1:]
        else:
            base = module
        path = base
        target = None
        for name in names:
            if path + (name,) in modules:
                path = path + (name,)
                target = path
            else:
                break
        if target is not None and target != module:
            out.add(target)
    return out


def components(nodes, edges):
    """Strongly connected components (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def check(crate_dir: Path):
    src = crate_dir / "src"
    files = {}
    for file in src.rglob("*.rs"):
        module = module_of(src, file)
        if module is not None:
            files[module] = strip(file.read_text())
    modules = set(files)
    # Inline `mod name {` blocks are part of their file's module; not tracked separately.
    edges = set()
    for module, text in files.items():
        for target in references(module, text, modules):
            edges.add((module, target))
    circles = []
    checked = 0
    # At every level: the children of `parent`, an edge between two of them lifted from any
    # descendants (a/x -> b/y is a -> b); edges to an ancestor are not sibling edges.
    for parent in sorted(modules):
        children = sorted(m for m in modules if len(m) == len(parent) + 1 and m[: len(parent)] == parent)
        if len(children) < 2:
            continue
        graph = {}
        for a, b in edges:
            if a[: len(parent)] != parent or b[: len(parent)] != parent:
                continue
            if len(a) <= len(parent) or len(b) <= len(parent):
                continue
            ca, cb = a[: len(parent) + 1], b[: len(parent) + 1]
            if ca != cb:
                graph.setdefault(ca, set()).add(cb)
                checked += 1
        for comp in components(children, graph):
            if len(comp) > 1:
                circles.append((parent, comp, graph))
    return len(modules), checked, circles


def main():
    dirs = [Path(a).resolve() for a in sys.argv[1:]] or list(crates())
    failed = False
    total_modules = total_edges = 0
    for crate_dir in dirs:
        n, e, circles = check(crate_dir)
        total_modules += n
        total_edges += e
        name = crate_dir.relative_to(ROOT) if crate_dir.is_relative_to(ROOT) else crate_dir
        for parent, comp, graph in circles:
            failed = True
            where = "::".join(("crate",) + parent)
            names = sorted("::".join(m) for m in comp)
            print(f"{name}: a circle among the modules of {where}: {', '.join(names)}")
            members = set(comp)
            for a in sorted(members):
                for b in sorted(graph.get(a, ())):
                    if b in members:
                        print(f"    {'::'.join(a)} -> {'::'.join(b)}")
    if failed:
        sys.exit(1)
    print(f"module-cycles: no circle among {total_modules} modules of {len(dirs)} crates ({total_edges} sibling edges)")


if __name__ == "__main__":
    main()
