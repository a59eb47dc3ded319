#!/usr/bin/env bash
# The GPU check: on one GPU, in at most 8 minutes (a budget not yet verified on a GPU), print
#   1. the counts of the GPU-marked tests (DDP over nccl with one worker, teacher actors on a
#      fractional GPU, AMP steps, on-device augmentation equal to the host path, compiled step),
#   2. throughput (a)-(d) of benchmarks/throughput.py on the GPU,
#   3. the projected wall time of the paper's experiment (benchmarks/projection.py: 2 timed
#      epochs per grade of every stage on 100-class synthetic data of CIFAR-100's size),
#   4. a 2-trial search (the smoke space, FIFO) whose one-worker trials train in their own
#      process on half a GPU each (ray.use_gpu, ray.gpus_per_worker 0.5: both at once on one
#      GPU); on the CPU the same search without ray.use_gpu.
# Figures only: nothing is judged here. Logs of each part go to $GPU_CHECK_LOGS (default a
# temporary directory) and are printed only when a part fails.
#
#   benchmarks/gpu_check.sh                 # on a CUDA machine
#   benchmarks/gpu_check.sh --cpu-smoke     # the same script on the CPU with tiny sizes (< 2 minutes)
#
# PYTHON selects the interpreter (default: python); PRECISION the autocast dtype (default bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
PRECISION=${PRECISION:-bf16}
LOGS=${GPU_CHECK_LOGS:-$(mktemp -d)}
# its own local Ray instances, never a cluster already running on the machine
export RAY_ADDRESS=local RAY_AUTH_MODE=disabled PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ "${1:-}" == "--cpu-smoke" ]]; then
    DEVICE=cpu
    USE_GPU=0
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    THROUGHPUT=(--student resnet8 --teacher resnet8 --groups 2 --classes-per-group 2 --images-per-class 16
                --batch 16 --repeats 1 --cache-draws 2 --threads 1)
    PROJECTION=(--classes 6 --train-per-class 20 --test-per-class 10 --set student.arch=resnet8
                --set teachers.arch=resnet8 --set "curriculum.splits=[1,2,3]" --set teachers.batch_size=16
                --set optimizer.batch_size=16)
elif [[ $# -eq 0 ]]; then
    DEVICE=cuda
    USE_GPU=1
    THROUGHPUT=(--images-per-class 256 --repeats 2)
    PROJECTION=()
else
    echo "usage: $0 [--cpu-smoke]" >&2
    exit 2
fi

failed=0
part() {   # part NAME COMMAND...: run it, keep its log; on failure print the log's tail and go on
    local name=$1 rc=0; shift
    "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "$name: FAILED (exit $rc), log $LOGS/$name.log:" >&2
        tail -n 40 "$LOGS/$name.log" >&2
        failed=1
    fi
}

started=$SECONDS
echo "== GPU-marked tests ($DEVICE)"
part tests "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_path.py
tail -n 1 "$LOGS/tests.log"
echo "== throughput (a)-(d), $PRECISION on $DEVICE"
part throughput "$PY" benchmarks/throughput.py --only abcd --device "$DEVICE" --precision "$PRECISION" \
    "${THROUGHPUT[@]}"
grep -E '^(ED grade|\([abcd]\)|    cache build)' "$LOGS/throughput.log" || true
echo "== projected wall time, $PRECISION on $DEVICE"
part projection "$PY" benchmarks/projection.py --device "$DEVICE" --set "precision=$PRECISION" "${PROJECTION[@]}"
grep -E '^(projection|  |projected)' "$LOGS/projection.log" || true
echo "== 2-trial search, trials on $DEVICE"
"$PY" - "$LOGS/search_space.yaml" "$USE_GPU" <<'PYEOF'
import sys
import yaml
space = yaml.safe_load(open("tune_spaces/smoke.yaml"))
space["base"]["ray"] = {"use_gpu": sys.argv[2] == "1", "gpus_per_worker": 0.5, "cpus_per_worker": 1}
space.update(name="gpu_check_search", samples=2, scheduler="fifo", max_concurrent=2)
yaml.safe_dump(space, open(sys.argv[1], "w"))
PYEOF
rm -rf "$LOGS/search"   # a new search each time (a re-run in the same directory would only resume it)
part search "$PY" -m raydistill.cli tune "$LOGS/search_space.yaml" --output "$LOGS/search"
"$PY" - "$LOGS/search/gpu_check_search/trials.parquet" <<'PYEOF' || failed=1
import sys
import pandas as pd
try:
    table = pd.read_parquet(sys.argv[1])
except OSError as err:
    sys.exit(f"search: no trials table ({err})")
print(table[["trial", "val_acc", "stop_reason", "wall_s"]].to_string(index=False))
completed = int((table["stop_reason"] == "completed").sum())
print(f"search: {len(table)} trials, {completed} completed")
sys.exit(0 if completed == len(table) == 2 else 1)
PYEOF
echo "== gpu_check wall time: $((SECONDS - started)) s"
exit $failed
