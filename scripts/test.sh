#!/usr/bin/env bash
# The test command: install what is missing, fetch the real model and texts, run every test.
# Tests that need the real model read it from assets/ and fail loudly if it is absent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/install-deps.sh
source "$ROOT/scripts/install-deps.sh"
bash scripts/fetch-assets.sh
cargo test --release --workspace --no-fail-fast 2>&1
