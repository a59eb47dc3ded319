#!/bin/bash
# How the committed CIFAR-10 results were made (2026-11-26, the 2-core development machine, shared
# with other jobs, so no wall times are reported). Equivalent to the single command
#     .venv/bin/python benchmarks/accuracy.py
# but split into 1-thread processes that ran side by side (two torch threads per process collapse
# when another process holds a core).
set -e
cd "$(dirname "$0")/../../.."
PY=.venv/bin/python
W=runs/accuracy
# 1. The three group teachers (resnet20, 10 epochs) were trained by a first start of
#    `$PY benchmarks/accuracy.py` with these same settings, stopped after the group teachers
#    (its `all` teacher had not started); their files were copied to runs/accuracy/pretrained/.
# 2. Seed 0 loads them and trains the 10-class `all` teacher (for kd):
$PY benchmarks/accuracy.py --threads 1 --seeds 0 --teachers-from $W/pretrained
# 3. Seeds 1 and 2 load all four teachers from seed 0's run (they ran in parallel with seed 0's students):
$PY benchmarks/accuracy.py --threads 1 --seeds 1 --teachers-from $W/seed0/teachers
$PY benchmarks/accuracy.py --threads 1 --seeds 2 --teachers-from $W/seed0/teachers
# 4. The table (table.md, aggregate.json) from the three seeds' summaries:
$PY benchmarks/accuracy.py --seeds 0 1 2
