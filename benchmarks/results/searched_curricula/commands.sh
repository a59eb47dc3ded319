#!/usr/bin/env bash
# "Can a searched curriculum beat KD?" (docs/results/searched-curricula.md), re-run from the
# repository alone (run from the repository root; it loads the committed teachers of
# benchmarks/teachers/cifar10/). Each step resumes where it stopped when the command runs again:
# Tune restores a search from its directory, and benchmarks/searched.py skips every (seed, variant)
# whose summary is committed here. Two lanes of one torch thread on a 2-core machine.
set -euo pipefail
export RAY_AUTH_MODE=disabled
OUT=${SEARCH_OUT:-runs/tune}          # the searches' directories (trials, Tune state, caches)
HERE=benchmarks/results/searched_curricula
raydistill tune tune_spaces/curricula_ed_cifar10.yaml --output "$OUT"   # 24 ED trials, 2 at a time
raydistill tune tune_spaces/curricula_kd_cifar10.yaml --output "$OUT"   # 12 kd trials, 2 at a time
for search in ed kd; do                # what the page and the confirmation read
  mkdir -p "$HERE/search_$search"
  cp "$OUT/curricula_${search}_cifar10/trials.parquet" "$OUT/curricula_${search}_cifar10/best.yaml" \
     "$OUT/curricula_${search}_cifar10/space.json" "$HERE/search_$search/"
done
.venv/bin/python benchmarks/searched.py --collect "$OUT"   # each trial's per-epoch validation accuracy
SEARCHED=".venv/bin/python benchmarks/searched.py --work runs/searched"
$SEARCHED > /tmp/searched-lane0.log 2>&1 &   # 4 variants x 3 seeds at 32 epochs, two lanes
$SEARCHED > /tmp/searched-lane1.log 2>&1 &
wait
$SEARCHED --report                     # aggregate.json, table.md, search.png
