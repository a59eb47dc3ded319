"""The default run's printed numbers (issue 26 item 15): what README.md and the docs show is the
committed run in benchmarks/results/default_run/ (its summary reprinted by `raydistill report`),
and `raydistill run` with no arguments, exactly as a user types it, prints those numbers again
(marker slow: it trains four teachers and four students, a few minutes on 2 cores)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "default_run"
PAGES = [REPO / "README.md", REPO / "docs" / "getting-started.md", REPO / "docs" / "results" / "default-run.md"]


def committed_table() -> str:
    return (RESULTS / "printed.txt").read_text().rstrip("\n")


def test_shown_default_run_table_is_the_committed_run(capsys):
    from raydistill.cli import main
    from raydistill.config import Experiment
    assert main(["report", str(RESULTS)]) == 0
    table = capsys.readouterr().out.rstrip("\n")
    assert table == committed_table()
    for page in PAGES:
        assert f"```\n{table}\n```" in page.read_text(), f"{page.relative_to(REPO)} does not show the committed table"
    # the committed run is the shipped default experiment, resolved, and reports its last epochs
    committed = Experiment.from_dict(yaml.safe_load((RESULTS / "config.yaml").read_text()))
    assert Path(committed.output.dir).name == "runs"          # ./runs, made absolute by the run
    assert committed.with_overrides(["output.dir=runs"]).to_dict() == Experiment.load("default").to_dict()
    summary = json.loads((RESULTS / "summary.json").read_text())
    history = json.loads((RESULTS / "metrics.json").read_text())["history"]
    assert list(summary["methods"]) == committed.methods
    assert set(summary["teachers"]) == {"group0", "group1", "group2", "all"}
    for method, m in summary["methods"].items():
        mine = [h for h in history if h["method"] == method]
        assert [h["epoch"] for h in mine] == list(range(1, m["epochs"] + 1)) and m["epochs"] == 6
        assert (m["final_test_acc"], m["final_val_acc"]) == (mine[-1]["test_acc"], mine[-1]["val_acc"])


def _numbers(printed: str) -> list:
    """The printed table's lines without the wall-time column: teachers, methods (test %, val %,
    params, epochs, images, TFLOP) and ED's per-grade rows. Worker log lines are dropped."""
    lines = [line for line in printed.splitlines() if not line.startswith("(") and "RayTrainWorker" not in line]
    start = max(i for i, line in enumerate(lines) if line.startswith("teachers (test top-1"))
    out = []
    for line in lines[start:]:
        if re.match(r"^(ed|scratch|kd|multi_teacher)\s+\d", line):
            line = line.rsplit(None, 1)[0]          # wall s differs from run to run
        if line.strip():
            out.append(line.rstrip())
    return out


@pytest.mark.slow
def test_default_run_prints_the_committed_numbers(tmp_path):
    """`raydistill run`, no arguments, in an empty directory (so ./runs/default is new): the same
    accuracies, to the two decimals printed, as the committed run."""
    script = Path(sys.executable).parent / "raydistill"
    command = [str(script), "run"] if script.is_file() else [sys.executable, "-m", "raydistill.cli", "run"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "runs" / "default" / "summary.json").is_file()
    assert _numbers(proc.stdout) == _numbers(committed_table())
