#!/usr/bin/env bash
# The default run, exactly as the README's first command runs it: `raydistill run`, no arguments
# (the shipped `default` experiment, output in ./runs/default), on a clean export of the commit.
#
# Measured 2026-12-03, 11:45-12:02 UTC, at commit 68f33890eb4dfff89b9721501f05650da92e7cb4, on the
# 2-core development machine (AMD EPYC, no GPU; torch 2.14.1, torchvision 0.29.1, ray 2.60.0,
# numpy 2.4.6), in a `git archive` export of that commit with the project's venv:
#   wall 16 min 36 s (/usr/bin/time), load average 0.4 at the start and 5-10 during the run (other
#   engineers' test runs): the wall times in the table are not speed figures.
# The run directory's summary.json, metrics.json, config.yaml and curves.png are committed here;
# printed.txt is the table it printed at its end, equal to `raydistill report benchmarks/results/default_run`.
# tests/test_default_run.py ties README.md, docs/getting-started.md and docs/results/default-run.md to
# these files, and (marker slow) runs the command again and checks it prints the same accuracies.
set -euo pipefail
git archive 68f33890eb4dfff89b9721501f05650da92e7cb4 | tar -x -C "${WORK:-/tmp/defrun-src}"
cd "${WORK:-/tmp/defrun-src}"
PYTHONPATH=$PWD /usr/bin/time -v raydistill run
cp runs/default/{summary.json,metrics.json,config.yaml,curves.png} "$OLDPWD/benchmarks/results/default_run/"
