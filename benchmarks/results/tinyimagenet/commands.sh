#!/usr/bin/env bash
# The exact invocation that produced these files (2026-11-26, from 15:27 UTC, 2-core CPU machine shared
# with the other benchmarks; 1 torch thread). Budget: Tiny-ImageNet from ../shared/data/tiny-imagenet-200
# decoded at 32 px (data.image_size=32), the first 100 training images per class (90 train + 10
# validation), the full 10,000-image labelled val split as test; groups 1:1:1 = 66/66/68 classes;
# resnet20 teachers (10 epochs; three group teachers + one 200-class teacher, trained once in the
# first runs that need them); resnet8 student, 8 epochs, ED grades [2, 2, 4] at blocks 1/2/3,
# mixed passes, cached soft labels (8 draws), as the CIFAR-10 tables.
set -euo pipefail
.venv/bin/python benchmarks/accuracy.py --threads 1 --data ../shared/data/tiny-imagenet-200 --per-class 100 \
    --methods scratch kd multi_teacher ed --work /tmp/tiny/work --results benchmarks/results/tinyimagenet \
    --set data.image_size=32 --set teachers.soft_labels=cache --set teachers.cache_dir=/tmp/tiny/softlabels \
    --set data.cache_dir=/tmp/tiny/decoded
