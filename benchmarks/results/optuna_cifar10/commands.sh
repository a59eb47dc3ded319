#!/usr/bin/env bash
# The exact invocations that produced these files (2026-11-26, 2-core CPU machine, 1 torch thread per
# process), from the repository root, with runs/accuracy/teachers = the CIFAR-10 loss table's teachers
# (benchmarks/accuracy.py's pool: resnet20, 10 epochs, group0-2.pt and all.pt).
set -euo pipefail
export RAY_AUTH_MODE=disabled OMP_NUM_THREADS=1
# 1. The search: 16 Optuna trials (fifo, each runs its 8 epochs) + scratch/kd/multi_teacher once at seed 0
#    (19:40-20:15 UTC). Copied here: trials.parquet, best.yaml, baselines/, summary.txt (its printed comparison).
raydistill tune benchmarks/results/optuna_cifar10/space.yaml --output /tmp/opt
# 2. The best curriculum (best.yaml, chosen on validation) on 3 fresh seeds, next to the baselines at the same
#    8 epochs, resnet14 student, same teachers and cached 8-draw soft labels (in-process runs).
COMMON="--threads 1 --student resnet14 --seeds 1 2 3 --teachers-from runs/accuracy/teachers --results benchmarks/results/optuna_cifar10/rerun
        --set teachers.soft_labels=cache --set teachers.cache_dir=/tmp/opt/softlabels --set data.cache_dir=/tmp/opt/decoded"
python benchmarks/accuracy.py $COMMON --work /tmp/opt/rerun --methods scratch kd multi_teacher --set curriculum.splits=[2,4,6]
python benchmarks/accuracy.py $COMMON --work /tmp/opt/rerun_ed --methods ed \
    --set curriculum.splits=[2,5,6] --set curriculum.head_widths=32 --set curriculum.order=[2,0,1] \
    --set curriculum.grade_epochs=[1,2,5] --set curriculum.temperature=6.594418111466742 \
    --set curriculum.alpha=0.45979115896341416 --set optimizer.lr=0.1372381545464086
# (the ed seeds ran as three processes side by side, one --seeds value each; the aggregate is the last line:)
python benchmarks/accuracy.py $COMMON --work /tmp/opt/rerun --methods scratch kd multi_teacher ed
