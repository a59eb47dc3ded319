#!/usr/bin/env bash
# The exact invocations that produced these files (2026-11-26, 12:14-13:45 UTC, 2-core CPU machine
# shared with other work; each process ran 1 torch thread). TEACHERS holds all.pt: the resnet20
# 10-class teacher trained earlier by `benchmarks/accuracy.py` at this budget (seed 0); the three
# group teachers were trained by the first `multi_teacher` run below and reused from --work/teachers.
# The bank is seeded by data.seed, so every seed's cache is the same; the seed directories' caches
# were linked to one another (softlabels/<key>) so each key was built once.
set -euo pipefail
TEACHERS=${TEACHERS:?a directory with all.pt}
COMMON="--threads 1 --teachers-from $TEACHERS --work /tmp/acc --results benchmarks/results/cifar10_losses --set teachers.soft_labels=cache"
.venv/bin/python benchmarks/accuracy.py --seeds 0 --methods multi_teacher ed ed+dkd ed+lskd multi_teacher+dkd multi_teacher+lskd $COMMON &
.venv/bin/python benchmarks/accuracy.py --seeds 1 --methods scratch kd kd+dkd kd+lskd $COMMON
.venv/bin/python benchmarks/accuracy.py --seeds 2 $COMMON &       # after the seed-1 process
wait
.venv/bin/python benchmarks/accuracy.py --seeds 0 1 $COMMON &     # the rest of seeds 0 and 1
.venv/bin/python benchmarks/accuracy.py --seeds 1 --methods ed+lskd $COMMON
wait
.venv/bin/python benchmarks/accuracy.py $COMMON                   # every run present: writes table.md
