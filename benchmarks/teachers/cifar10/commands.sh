#!/usr/bin/env bash
# Trains the committed CIFAR-10 teachers (run from the repository root): two lanes of one torch
# thread each, the 10-class teacher in one and the three group teachers in the other (45,000
# training images per epoch in each lane). The second lane starts once the first has decoded the
# data set (the decoded-shard cache of --work is then reused, not built twice).
set -euo pipefail
EXP=benchmarks/teachers/cifar10/experiment.yaml
.venv/bin/python benchmarks/teachers.py $EXP --keys all > /tmp/teachers-all.log 2>&1 &
sleep 45
.venv/bin/python benchmarks/teachers.py $EXP --keys group0 group1 group2 > /tmp/teachers-groups.log 2>&1 &
wait
