#!/usr/bin/env bash
# The rate table of BENCHMARKS.md: TenPak at 3 to 6 bits per weight on the linears, packed from
# the real model (and from its grid-free variant) and evaluated on 64 windows of 512 tokens of
# the held-out text, beside llama.cpp's quantizer with an importance matrix.
#
#   bash scripts/rates.sh                      # every config in scripts/rates/, the real model
#   MODEL=gridfree bash scripts/rates.sh r4.5  # one config, the grid-free variant
#   LLAMA_GGUF_DIR=/work/llamacpp/out bash scripts/rates.sh none
#                                              # only evaluate llama.cpp's GGUFs (made by
#                                              # scripts/llamacpp-rates.sh) with tenpak eval
#
# About 8 minutes per TenPak config on 2 cores (calibration on 32 windows, then baseline and
# compressed PPL on 64 windows), 2 minutes per GGUF. Artifacts and logs go to out/rates/
# (git-ignored). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p tenpak --bin tenpak >&2
case "${MODEL:-orig}" in
    orig) model=assets/SmolLM2-135M-Instruct.Q4_1.gguf ;;
    gridfree)
        model=assets/gridfree
        [[ -f $model/model.safetensors ]] || bash scripts/gridfree.sh >&2 ;;
    *) echo "error: MODEL must be orig or gridfree, got ${MODEL}" >&2; exit 2 ;;
esac
[[ -e $model ]] || { echo "error: $model is missing: run bash scripts/fetch-assets.sh" >&2; exit 1; }
configs=("$@")
if [[ ${#configs[@]} -eq 0 ]]; then
    configs=()
    for f in scripts/rates/*.toml; do configs+=("$(basename "$f" .toml)"); done
fi
[[ ${configs[0]} == none ]] && configs=()
bin=target/release/tenpak
out=out/rates
mkdir -p "$out"
tag=${MODEL:-orig}

for name in "${configs[@]}"; do
    toml=scripts/rates/$name.toml
    [[ -f $toml ]] || { echo "error: no config $toml" >&2; exit 1; }
    echo "== $tag $name" >&2
    /usr/bin/time -f "%e %M" -o "$out/$tag-$name.time" \
        "$bin" pack "$model" --preset "$toml" -o "$out/$tag-$name.tenpak" --force --tensors false > "$out/$tag-$name.log"
done

if [[ -n ${LLAMA_GGUF_DIR:-} ]]; then
    for gguf in "$LLAMA_GGUF_DIR"/*.gguf; do
        name=$(basename "$gguf" .gguf)
        [[ $name == *f32* ]] && continue
        echo "== llama.cpp $name" >&2
        "$bin" eval "$gguf" --samples 64 > "$out/llama-$name.eval"
    done
fi

python3 - "$out" "$tag" "${configs[@]}" <<'EOF'
import json, os, re, sys
out, tag, names = sys.argv[1], sys.argv[2], sys.argv[3:]
print("| model | config | bits/weight (linears) | PPL | Δ PPL | pack time | peak RSS |")
print("|---|---|---|---|---|---|---|")
for name in names:
    m = json.load(open(f"{out}/{tag}-{name}.tenpak/manifest.json"))
    t, e = m["totals"], m["evaluation"]
    seconds, rss_kb = open(f"{out}/{tag}-{name}.time").read().split()[-2:]
    print(f'| {tag} | {name} | {t["linear_bits_per_weight"]:.4f} | {e["compressed_ppl"]:.4f} | {e["delta_pct"]:+.2f} % '
          f'| {float(seconds):.0f} s | {int(rss_kb) / 1024:.0f} MiB |')
    print(f'baseline {e["baseline_ppl"]:.4f}; {e["protocol"]}', file=sys.stderr)
for f in sorted(os.listdir(out)):
    if f.startswith("llama-") and f.endswith(".eval"):
        text = open(f"{out}/{f}").read()
        ppl = re.search(r"PPL[^0-9]*([0-9.]+)", text) or re.search(r"perplexity[^0-9]*([0-9.]+)", text)
        print(f'| llama.cpp | {f[6:-5]} | (see scripts/llamacpp-rates.sh) | {ppl.group(1) if ppl else "?"} | | | |')
EOF
