#!/bin/bash
# Sequential-pass ED with and without BatchNorm recalibration (curriculum.bn_recalibrate), next to
# mixed-batch ED, 3 seeds each (issue 16, item 4). A reduced CIFAR-10 budget (300 training images per
# class: 270 train + 30 val) so the 9 runs fit beside other work on 2 cores; teachers are the shipped
# cifar10 experiment's resnet20 teachers, trained once and loaded (--teachers-from).
# The three configurations ran side by side as 1-thread processes.
set -e
cd "$(dirname "$0")/../.."
# teachers: e.g. runs/cifar10/teachers from `raydistill run --local --config cifar10` (here trained at commit a180695)
T=${TEACHERS:-runs/cifar10/teachers}
run() {  # $1 results folder name, then --set overrides
  name=$1; shift
  .venv/bin/python benchmarks/accuracy.py --threads 1 --seeds 0 1 2 --methods ed --per-class 300 \
    --teachers-from "$T" --work runs/bn_recalibrate/$name --results benchmarks/results/bn_recalibrate/$name "$@"
}
run sequential --set curriculum.pass_mode=sequential --set curriculum.bn_recalibrate=false &
run sequential_recalibrated --set curriculum.pass_mode=sequential --set curriculum.bn_recalibrate=true &
run mixed --set curriculum.pass_mode=mixed --set curriculum.bn_recalibrate=false &
wait
