#!/usr/bin/env bash
# The "Does ED help?" curve (benchmarks/curve.py), re-run from the repository alone: it loads the
# committed teachers of benchmarks/teachers/cifar10/ (retrain them with
# benchmarks/teachers/cifar10/commands.sh). Run from the repository root. Two lanes of one torch
# thread each on the 2-core machine; every finished (budget, seed, variant) is kept in this folder
# and skipped when the command runs again.
set -euo pipefail
CURVE=".venv/bin/python benchmarks/curve.py --work /tmp/raydistill-curve"
$CURVE --prepare kd &               # the two soft-label caches (32 draws), built once before the lanes
$CURVE --prepare multi_teacher &
wait
$CURVE > /tmp/curve-lane0.log 2>&1 &
$CURVE > /tmp/curve-lane1.log 2>&1 &
wait
$CURVE --report                     # aggregate.json, table.md, curve.png
