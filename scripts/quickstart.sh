#!/usr/bin/env bash
# Fresh Debian machine -> a packed SmolLM2-135M artifact, in one command.
#
# Installs the system packages the build needs (as root, or through sudo), the Rust toolchain if
# cargo is missing, fetches the real model and texts (scripts/fetch-assets.sh), builds TenPak in
# release mode, packs the model with the `balanced` preset (calibrated on assets/calib.txt, baseline
# and compressed perplexity measured on the held-out assets/eval.txt; about 6 minutes on 2 cores)
# and shows the result. PRESET=fast is the calibration-free alternative (about 1 minute).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/install-deps.sh
source "$ROOT/scripts/install-deps.sh"

bash scripts/fetch-assets.sh
cargo build --release --bin tenpak
PRESET="${PRESET:-balanced}"
OUT="${TENPAK_OUT:-out/smollm2-$PRESET.tenpak}"
./target/release/tenpak pack assets/SmolLM2-135M-Instruct.Q4_1.gguf --preset "$PRESET" -o "$OUT" --force \
    --calib assets/calib.txt --eval assets/eval.txt
./target/release/tenpak info "$OUT"
