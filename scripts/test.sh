#!/usr/bin/env bash
# The test command: install what is missing, fetch the real model and texts, run every test.
# Tests that need the real model read it from assets/ and fail loudly if it is absent.
set -euo pipefail
# Each phase's wall time, printed at the end (CI must stay under 45 minutes).
PHASES=()
phase_start=$SECONDS
phase() { PHASES+=("$(printf '%-28s %5d s' "$1" $((SECONDS - phase_start)))"); phase_start=$SECONDS; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/install-deps.sh
source "$ROOT/scripts/install-deps.sh"
bash scripts/fetch-assets.sh
phase "install and fetch"
# The house's layering (issue 25): no module imports one that imports it back, implementation
# crates know tenpak-api and tenpak-quant only, no library uses anyhow, no crate is a third of
# the code.
layering_status=0
python3 scripts/module-cycles.py 2>&1 || layering_status=$?
python3 scripts/crate-deps.py 2>&1 || layering_status=$?
cargo_status=0
cargo test --release --workspace --no-fail-fast 2>&1 || cargo_status=$?
phase "cargo test (build and run)"
# The runtime's tests again on candle's matrix products (the kernel of a machine without
# OpenBLAS), against the same reference forward and reference figures. `--workspace` (not `-p`):
# the same dependency features as the run above, so nothing is built again. Generation is left
# out: its tests check the decoding loop and the cache, which the matmul does not change.
TENPAK_MATMUL=candle cargo test --release --workspace --test model runtime:: -- --skip generation 2>&1 || cargo_status=$?
phase "runtime tests on candle"
# Every fuzz target for 12 s (cargo-fuzz, libFuzzer + AddressSanitizer): a new crash fails the
# run. Long runs: scripts/fuzz.sh --seconds 600 (BENCHMARKS.md).
fuzz_status=0
bash scripts/fuzz.sh --seconds 12 2>&1 || fuzz_status=$?
phase "fuzz (build and run)"
# The Studio page in headless Chromium (run even when the cargo tests failed): installs chromium and
# playwright-core, builds target/release/tenpak if it is missing, prints `N passed, N failed`.
browser_status=0
{ bash scripts/install-browser.sh && node tests/browser/studio.test.mjs; } 2>&1 || browser_status=$?
phase "browser"
printf 'test.sh: %s\n' "${PHASES[@]}" "$(printf '%-28s %5d s' total "$SECONDS")"
if ((layering_status != 0)); then echo "test.sh: the layering check failed (exit $layering_status)" >&2; fi
if ((cargo_status != 0)); then echo "test.sh: cargo test failed (exit $cargo_status)" >&2; fi
if ((browser_status != 0)); then echo "test.sh: the browser test failed (exit $browser_status)" >&2; fi
if ((fuzz_status != 0)); then echo "test.sh: fuzzing found a crash (exit $fuzz_status)" >&2; fi
if ((layering_status != 0)); then exit "$layering_status"; fi
if ((cargo_status != 0)); then exit "$cargo_status"; fi
if ((fuzz_status != 0)); then exit "$fuzz_status"; fi
exit "$browser_status"
