#!/usr/bin/env bash
# The default run over seeds and CPU kernels (issue 32 item 0, re-measured for issue 35's 2-minute
# default): how far its accuracies move, so that tests/test_default_run.py checks bands and claims
# that hold on every machine instead of one machine's two decimals.
#
# Machine: 2-core KVM guest, `lscpu`: AMD EPYC, CPU family 25 model 1 stepping 1 (Zen 3), AVX2 and
# no AVX-512; torch 2.14.1 (torch.backends.cpu.get_cpu_capability() = AVX2), torchvision 0.29.1,
# ray 2.60.0, no GPU. Measured 2026-12-07 at commit a71484e8a1e53c9eae2af77e2fe49b384199e616 (a `git archive` export, with the
# project's venv), two runs at a time (each run's stages use one torch thread: the numbers do not
# depend on what else runs; the `wall s` column does).
#
# Files: <kernels>-seed<N>.txt is the table `raydistill run` printed at its end (equal, checked, to
# `raydistill report` of its run directory):
#   native-seed<N>   torch's own choice on this CPU (AVX2 kernels), seed N;
#   default-seed<N>  ATEN_CPU_CAPABILITY=default: ATen's portable, non-vectorised kernels, standing in
#                    for a CPU whose kernels round differently (oneDNN's convolutions are not changed).
# native-seed0 is the committed run in ../ (printed.txt, summary.json, metrics.json, config.yaml,
# curves.png). summary.md is written by tests/test_default_run.py (spread_summary()) from these tables.
set -euo pipefail   # run from the repository root with the project's venv on PATH (source .venv/bin/activate)
REPO=$PWD
SRC=${SRC:-/tmp/defspread/src}
rm -rf "$SRC" && mkdir -p "$SRC" && git archive a71484e8a1e53c9eae2af77e2fe49b384199e616 | tar -x -C "$SRC"
run() {            # run NAME SEED [VAR=VALUE ...]: `raydistill run` in an empty directory
  local name=$1 seed=$2; shift 2
  local dir=/tmp/defspread/work/$name-seed$seed
  local args=(run); [ "$seed" = 0 ] || args+=(--set "seed=$seed")
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$dir" && env "$@" PYTHONPATH="$SRC" raydistill "${args[@]}" > stdout.txt)
  # the table: from the last heading, Ray's worker log lines (they name a pid) dropped
  awk '/^teachers \(test top-1/{buf=""; on=1} on{buf=buf $0 "\n"} END{printf "%s", buf}' "$dir/stdout.txt" \
    | grep -v 'pid=' | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' > "$REPO/benchmarks/results/default_run/spread/$name-seed$seed.txt"
  PYTHONPATH="$SRC" raydistill report "$dir/runs/default" \
    | cmp - "$REPO/benchmarks/results/default_run/spread/$name-seed$seed.txt"
}
rm -f benchmarks/results/default_run/spread/*-seed*.txt
run native 0 & run default 0 ATEN_CPU_CAPABILITY=default & wait
run native 1 & run default 1 ATEN_CPU_CAPABILITY=default & wait
run native 2 & run default 2 ATEN_CPU_CAPABILITY=default & wait
cp /tmp/defspread/work/native-seed0/runs/default/{summary.json,metrics.json,config.yaml,curves.png} \
   benchmarks/results/default_run/
cp benchmarks/results/default_run/spread/native-seed0.txt benchmarks/results/default_run/printed.txt
python -c "import sys; sys.path.insert(0, 'tests'); import test_default_run as t; print(t.spread_summary(), end='')" \
  > benchmarks/results/default_run/spread/summary.md
