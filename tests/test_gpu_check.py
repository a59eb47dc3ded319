"""`benchmarks/gpu_check.sh --cpu-smoke`: the GPU check script still runs, on the CPU, with tiny
sizes, and prints every figure it prints on a GPU (about 50 s on the 2-core dev machine, plus the
2-trial search)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow   # runs benchmarks/gpu_check.sh in a subprocess
def test_gpu_check_cpu_smoke_prints_every_figure(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable, "GPU_CHECK_LOGS": str(tmp_path)})
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^\d+ skipped, \d+ deselected", out, re.M), out   # no CUDA here: the gpu tests skip
    for mode in "abcd":
        rate = re.search(rf"^\({mode}\) .*?([\d.]+) img/s$", out, re.M)
        assert rate and float(rate.group(1)) > 0, (mode, out)
    stages = re.findall(r"^  (teacher \w+|method \w+) .*->\s+(\d+) s$", out, re.M)
    assert [s for s, _ in stages] == ["teacher group0", "teacher group1", "teacher group2", "teacher all",
                                      "method ed", "method scratch", "method kd", "method multi_teacher"]
    total = re.search(r"^projected wall time of cifar100_paper: (\d+) s", out, re.M)
    assert total and int(total.group(1)) >= sum(int(s) for _, s in stages) - len(stages)
    assert re.search(r"^search: 2 trials, 2 completed$", out, re.M), out   # on a GPU: half a GPU per trial
