#!/usr/bin/env bash
# Installs what building and testing TenPak needs on Debian: a C toolchain, pkg-config, python3
# with pip and npm (for scripts/fetch-assets.sh), OpenBLAS (the runtime's matrix products), DejaVu
# Sans (the text of `tenpak sweep`'s PNG),
# and Rust through rustup if cargo is missing.
# Sourced by quickstart.sh and test.sh; safe to run again.
set -euo pipefail
SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
need=()
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v python3 >/dev/null || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# venv: scripts/fetch-tasks.sh converts the task sets with pyarrow in a virtualenv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v npm >/dev/null || need+=(npm)
command -v curl >/dev/null || need+=(curl)
# OpenBLAS, which the runtime opens at run time for its matrix products (candle's otherwise).
[[ -e /usr/lib/x86_64-linux-gnu/libopenblas.so.0 || -e /usr/lib/aarch64-linux-gnu/libopenblas.so.0 ]] || need+=(libopenblas-dev)
# The font `tenpak sweep` draws its PNG's text with (TENPAK_FONT overrides the path).
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || need+=(fonts-dejavu-core)
if ((${#need[@]})); then
    echo "install-deps: apt-get install ${need[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if ! command -v cargo >/dev/null; then
    if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "install-deps: installing Rust with rustup"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi
