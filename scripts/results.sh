#!/usr/bin/env bash
# Reproduces the search results of docs/results.md: both bundled models, on edge-npu and mcu,
# with each strategy, default settings (fresh sensitivity cache under $OUT/cache).
#   QSLM_DATA_DIR=../shared/data bash scripts/results.sh        # ~25 min on 2 cores
set -euo pipefail
export QSLM_DATA_DIR=${QSLM_DATA_DIR:-../shared/data}
OUT=${OUT:-runs/results}
mkdir -p "$OUT"
dirs=()
for model in spikegpt-mini-wt2 spikegpt-mini-sst2; do
  for hw in edge-npu mcu; do
    for strategy in tiered ilp; do
      d="$OUT/$model-$hw-$strategy"
      # exit 2 = infeasible constraints: the report is still written and tabulated
      python -m qslm.search --hw "$hw" --model "$model" --strategy "$strategy" --out "$d" \
        --cache-dir "$OUT/cache" --no-progress || [ $? -eq 2 ]
      dirs+=("$d")
    done
  done
done
# The spike-driven encoder (issue 7): neuromorphic and edge-npu, tiered.
for hw in neuromorphic edge-npu; do
  d="$OUT/sdt-mini-sst2-$hw-tiered"
  python -m qslm.search --hw "$hw" --model sdt-mini-sst2 --task sst2 --max-acc-drop 1 --out "$d" \
    --cache-dir "$OUT/cache" --no-progress || [ $? -eq 2 ]
  dirs+=("$d")
done
python -m qslm.search.results "${dirs[@]}" | tee "$OUT/table.md"
