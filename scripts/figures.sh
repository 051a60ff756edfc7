#!/usr/bin/env bash
# The README's figures table: every built-in calibrated preset (int4_awq), and int4_gptq /
# int4_residual / int4_rtn at the same group sizes, packed from the real model and evaluated on the held-out text.
#
#   bash scripts/figures.sh                  # all presets (about 15 min per calibrated preset here)
#   bash scripts/figures.sh balanced         # one preset
#   CALIB_WINDOWS=16 bash scripts/figures.sh # fewer calibration windows (quicker)
#
# Prints a Markdown table; artifacts and logs go to out/figures/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

presets=("$@")
[[ ${#presets[@]} -gt 0 ]] || presets=(quality balanced size)
model=assets/SmolLM2-135M-Instruct.Q4_1.gguf
[[ -f $model ]] || { echo "error: $model is missing: run bash scripts/fetch-assets.sh" >&2; exit 1; }
cargo build --release -p tenpak --bin tenpak >&2
bin=target/release/tenpak
out=out/figures
mkdir -p "$out"

rows=()
for preset in "${presets[@]}"; do
    for codec in int4_awq int4_gptq int4_residual int4_rtn; do
        name="$preset-$codec"
        toml="$out/$name.toml"
        if [[ $codec == int4_awq ]]; then
            cp "presets/$preset.toml" "$toml"
            [[ -z ${CALIB_WINDOWS:-} ]] || sed -i "/^\[calibration\]/,/^\[/ s/^windows = .*/windows = $CALIB_WINDOWS/" "$toml"
        else
            # Same group sizes, embedding and evaluation; no calibration and no AWQ-only parameters.
            python3 - "presets/$preset.toml" "$codec" > "$toml" <<'EOF'
import sys, tomllib
path, codec = sys.argv[1], sys.argv[2]
preset = tomllib.load(open(path, "rb"))
roles = preset.get("roles", {})
print(f'name = "{preset["name"]}-{codec}"')
print(f'[evaluation]\nwindows = {preset["evaluation"]["windows"]}\nctx = {preset["evaluation"]["ctx"]}')
if codec == "int4_gptq":  # needs the Gram matrix: same calibration text and windows
    cal = preset["calibration"]
    print(f'[calibration]\nwindows = {cal["windows"]}\nctx = {cal["ctx"]}')
print(f'[allocator]\nid = "{preset["allocator"]["id"]}"')
print(f'[codec]\ncodec = "{codec}"\ngroup_size = {preset["codec"].get("group_size", 128)}')
for role, table in roles.items():
    print(f'[roles.{role}]')
    for key, value in table.items():
        if key in ("group_size", "codec", "dtype", "per_row"):
            print(f'{key} = {value!r}'.replace("'", '"').replace("True", "true").replace("False", "false"))
EOF
        fi
        echo "== $name" >&2
        /usr/bin/time -f "%e %M" -o "$out/$name.time" \
            "$bin" pack "$model" --preset "$toml" -o "$out/$name.tenpak" --force --tensors false > "$out/$name.log"
        rows+=("$name")
    done
done

python3 - "$out" "${rows[@]}" <<'EOF'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
print("| preset / codec | bits/weight (all) | bits/weight (linears) | vs fp16 | PPL | Δ PPL | pack time | peak RSS |")
print("|---|---|---|---|---|---|---|---|")
for name in names:
    m = json.load(open(f"{out}/{name}.tenpak/manifest.json"))
    t, e = m["totals"], m["evaluation"]
    seconds, rss_kb = open(f"{out}/{name}.time").read().split()[-2:]
    print(f'| {name} | {t["bits_per_weight"]:.4f} | {t["linear_bits_per_weight"]:.4f} | {t["ratio_vs_fp16"]:.2f}x '
          f'| {e["compressed_ppl"]:.4f} | {e["delta_pct"]:+.2f} % | {float(seconds):.0f} s | {int(rss_kb) / 1024:.0f} MiB |')
print()
print("baseline PPL:", ", ".join(sorted({f'{json.load(open(f"{out}/{n}.tenpak/manifest.json"))["evaluation"]["baseline_ppl"]:.4f}' for n in names})))
print("protocol:", json.load(open(f"{out}/{names[0]}.tenpak/manifest.json"))["evaluation"]["protocol"])
EOF
