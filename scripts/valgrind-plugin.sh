#!/usr/bin/env bash
# Run the plugin boundary under valgrind memcheck: loading libraries, checking versions, making
# codec, calibrator and allocator instances, encode/decode/size_bits/validate, observe/finish and
# plan (with the host's probe called back from inside the plugin) through the C ABI, releasing
# every handle, panics caught inside a plugin, malformed results refused by the host. It runs the
# tenpak-plugins `plugins` test binary (which also builds the plugin libraries) with memcheck;
# any invalid read/write, use of uninitialised memory or definite leak fails the script.
#
#   bash scripts/valgrind-plugin.sh [TEST-NAME-FILTER...]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "valgrind is not installed (Debian/Ubuntu: apt-get install valgrind)" >&2
    exit 2
fi

cargo build --release -p tenpak-codec-nf4 -p tenpak-calibrator-absmax -p tenpak-alloc-error-cap \
    -p tenpak-test-faulty-plugin -p tenpak-test-future-abi-plugin -p tenpak-test-old-abi-plugin
test_bin=$(cargo test --release -p tenpak-plugins --test plugins --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*/plugins-[^"]*"' | tail -n 1 | sed 's/^"executable":"//; s/"$//')
if [[ -z "$test_bin" || ! -x "$test_bin" ]]; then
    echo "could not find the tenpak-plugins plugins test binary" >&2
    exit 1
fi

# Panics inside the faulty plugin print their message; backtraces would only add noise here.
export RUST_BACKTRACE=0
valgrind \
    --tool=memcheck \
    --error-exitcode=99 \
    --leak-check=full \
    --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect \
    --track-origins=yes \
    "$test_bin" --test-threads=1 "$@"
echo "valgrind: the plugin boundary is clean"
