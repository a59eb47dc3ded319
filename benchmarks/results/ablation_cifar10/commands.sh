#!/usr/bin/env bash
# The exact invocations that produced these files (2026-11-26, 15:17-17:00 UTC, 2-core CPU machine
# shared with the other benchmarks; 1 torch thread per process). The base row is the loss table's
# `ed` runs (benchmarks/results/cifar10_losses/seed<S>/ed): same budget, teachers, bank and code.
# runs/accuracy/teachers: the loss table's resnet20 teachers (benchmarks/accuracy.py's pool).
# Equivalent single command: python benchmarks/ablation.py --teachers-from runs/accuracy/teachers \
#   --threads 1 --set teachers.soft_labels=cache
set -euo pipefail
R=benchmarks/results/ablation_cifar10
COMMON="--threads 1 --methods ed --teachers-from runs/accuracy/teachers --set teachers.soft_labels=cache --set teachers.cache_dir=/tmp/abl/softlabels --set data.cache_dir=/tmp/abl/decoded"
.venv/bin/python benchmarks/accuracy.py $COMMON --work /tmp/abl/work --results $R/pass_mode_sequential --set curriculum.pass_mode=sequential
.venv/bin/python benchmarks/accuracy.py $COMMON --work /tmp/abl/work_bn --results $R/bn_recalibrate --set curriculum.bn_recalibrate=true
.venv/bin/python benchmarks/accuracy.py $COMMON --work /tmp/abl/work_ge --results $R/grade_epochs_4_2_2 --set "curriculum.grade_epochs=[4,2,2]"
.venv/bin/python benchmarks/accuracy.py $COMMON --work /tmp/abl/work_rs --results $R/restart_per_grade --set optimizer.restart_per_grade=true
.venv/bin/python benchmarks/accuracy.py $COMMON --work /tmp/abl/work_ge116 --results $R/grade_epochs_1_1_6 --set "curriculum.grade_epochs=[1,1,6]"
.venv/bin/python benchmarks/ablation.py --table-only
