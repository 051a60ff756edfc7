#!/usr/bin/env bash
# Fuzz TenPak's loaders with cargo-fuzz (libFuzzer + AddressSanitizer), one target per untrusted
# input (fuzz/fuzz_targets/: gguf, gguf_tokenizer, safetensors, artifact, preset, codec_decode),
# and print executions and crashes per target.
#
#   bash scripts/fuzz.sh [--seconds N | --runs N] [--no-asan] [TARGET...]
#                                                        (default: --seconds 60, all, ASan)
#
# --no-asan builds without AddressSanitizer (overflow checks and debug assertions stay on) into
# fuzz/target-plain: 4 to 35 times the executions per second (BENCHMARKS.md), for the long runs.
# What it gives up: ASan's checks of unsafe code (the loaders under fuzz have none on these paths;
# a safe out-of-bounds index panics either way) and LeakSanitizer. libFuzzer's -malloc_limit_mb
# needs a sanitizer, so fuzz/src/lib.rs bounds every allocation at 512 MiB itself, in both
# builds. CI runs with ASan.
#
# cargo-fuzz needs nightly-only compiler flags (-Zsanitizer, sancov); this machine has only the
# stable toolchain, so they are unlocked with RUSTC_BOOTSTRAP=1 for this build alone. Seeds come
# from tenpak-pack/tests/fuzz_regressions.rs (tiny models of the real architecture, artifacts of
# every built-in preset; needs assets/, see scripts/fetch-assets.sh) and are minimised into
# fuzz/corpus/<target> with the fuzzer's own merge. A crash leaves its input in
# fuzz/artifacts/<target>/; the script then exits 1. Copy the input into
# tenpak-pack/tests/fuzz-regressions/<target>/ once fixed, where `cargo test` replays it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LIMIT=(-max_total_time=60)
LABEL="60 s"
TARGETS=()
ASAN=1
while (($#)); do
    case "$1" in
        --seconds) LIMIT=("-max_total_time=$2"); LABEL="$2 s"; shift 2 ;;
        --runs) LIMIT=("-runs=$2"); LABEL="$2 runs"; shift 2 ;;
        --no-asan) ASAN=0; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
ALL=(gguf gguf_tokenizer safetensors artifact preset codec_decode)
if ((${#TARGETS[@]} == 0)); then TARGETS=("${ALL[@]}"); fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo install cargo-fuzz" >&2
    cargo install cargo-fuzz --locked >&2
fi
if [[ ! -d fuzz/seeds ]]; then
    echo "fuzz.sh: building the seed corpus" >&2
    # --workspace, not -p: the features of a workspace build, so test.sh's build is reused.
    TENPAK_FUZZ_SEEDS="$ROOT/fuzz/seeds" cargo test --release --workspace --test pack \
        fuzz_regressions::fuzz_seeds_reach_the_code_they_are_for >&2
fi
# Only now: cargo fingerprints RUSTC_BOOTSTRAP, so the seed test above run with it set would
# rebuild the whole workspace (5-6 minutes here) instead of reusing test.sh's build.
export RUSTC_BOOTSTRAP=1
# Optimised, with overflow checks and debug assertions on (a size computed from a file that
# wraps around is the usual first step to an out-of-bounds access), under AddressSanitizer unless
# --no-asan.
BUILD=(--release --debug-assertions --sanitizer address)
if ((ASAN == 0)); then BUILD=(--release --debug-assertions --sanitizer none --target-dir fuzz/target-plain); fi
echo "fuzz.sh: building the fuzz targets (${BUILD[*]})" >&2
cargo fuzz build "${BUILD[@]}" >&2

# libFuzzer flags: 2 GiB RSS and 512 MiB per allocation are crashes (a loader must bound what a
# file makes it allocate); a single input running 10 s is a crash (a hang).
FLAGS=(-rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 -max_len=1048576)
status=0
REPORT="$(mktemp)"
printf '%-15s %-10s %12s %10s %8s  %s\n' target limit executions exec/s crashes "first crash" >"$REPORT"
for target in "${TARGETS[@]}"; do
    corpus="fuzz/corpus/$target"; crashes="fuzz/artifacts/$target"
    mkdir -p "$corpus" "$crashes"
    if [[ -z "$(ls -A "$corpus")" && -d "fuzz/seeds/$target" ]]; then
        cargo fuzz run "${BUILD[@]}" "$target" -- -merge=1 "$corpus" "fuzz/seeds/$target" >/dev/null 2>&1 || true
    fi
    log="fuzz/artifacts/$target.log"
    before="$(ls "$crashes" | wc -l)"
    cargo fuzz run "${BUILD[@]}" "$target" "$corpus" -- "${LIMIT[@]}" "${FLAGS[@]}" \
        -artifact_prefix="$crashes/" >"$log" 2>&1 || true
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
    speed="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
    after="$(ls "$crashes" | wc -l)"
    new=$((after - before))
    first="-"
    if ((new > 0)); then
        status=1
        first="$(ls -t "$crashes" | head -1)"
        echo "fuzz.sh: $target crashed; log $log, input $crashes/$first" >&2
        grep -m 3 -E "panicked|ERROR: |SUMMARY" "$log" >&2 || true
    fi
    printf '%-15s %-10s %12s %10s %8s  %s\n' "$target" "$LABEL" "${runs:-?}" "${speed:-?}" "$new" "$first" >>"$REPORT"
done
cat "$REPORT"
rm -f "$REPORT"
exit "$status"
