#!/usr/bin/env bash
# The GPU check: on one GPU, in at most 8 minutes (a budget not yet verified on a GPU), print
#   1. the counts of the GPU-marked tests (DDP over nccl with one worker, teacher actors on a
#      fractional GPU, AMP steps, on-device augmentation equal to the host path, compiled step),
#   2. throughput (a)-(d) of benchmarks/throughput.py on the GPU,
#   3. the projected wall time of the paper's experiment (benchmarks/projection.py: 2 timed
#      epochs per grade of every stage on 100-class synthetic data of CIFAR-100's size).
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
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    THROUGHPUT=(--student resnet8 --teacher resnet8 --groups 2 --classes-per-group 2 --images-per-class 16
                --batch 16 --repeats 1 --cache-draws 2 --threads 1)
    PROJECTION=(--classes 6 --train-per-class 20 --test-per-class 10 --set student.arch=resnet8
                --set teachers.arch=resnet8 --set "curriculum.splits=[1,2,3]" --set teachers.batch_size=16
                --set optimizer.batch_size=16)
elif [[ $# -eq 0 ]]; then
    DEVICE=cuda
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
echo "== gpu_check wall time: $((SECONDS - started)) s"
exit $failed
