#!/usr/bin/env bash
# Fresh Debian machine -> a packed SmolLM2-135M artifact, in one command.
#
# Installs the system packages the build needs (as root, or through sudo), the Rust toolchain if
# cargo is missing, fetches the real model and texts (scripts/fetch-assets.sh), builds TenPak in
# release mode, packs the model with the `fast` preset and shows the result.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/install-deps.sh
source "$ROOT/scripts/install-deps.sh"

bash scripts/fetch-assets.sh
cargo build --release --bin tenpak
OUT="${TENPAK_OUT:-out/smollm2-fast.tenpak}"
./target/release/tenpak pack assets/SmolLM2-135M-Instruct.Q4_1.gguf --preset fast -o "$OUT" --force
./target/release/tenpak info "$OUT"
