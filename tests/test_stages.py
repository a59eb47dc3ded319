"""The stage graph (teachers → methods) and concurrent stages: one Ray Train fit per stage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import tiny_experiment

REPO = Path(__file__).resolve().parents[1]


def test_stage_graph_links_each_method_to_its_teachers(tmp_path):
    from raydistill.distributed.stages import stage_graph
    exp = tiny_experiment(tmp_path, methods="[scratch,kd,ed]")
    assert stage_graph(exp, 3) == {
        "teacher:group0": [], "teacher:group1": [], "teacher:group2": [], "teacher:all": [],
        "method:scratch": [], "method:kd": ["teacher:all"],
        "method:ed": ["teacher:group0", "teacher:group1", "teacher:group2"]}


def test_auto_mode_needs_room_for_two_stages(tmp_path):
    from raydistill.distributed.stages import choose_mode
    exp = tiny_experiment(tmp_path, **{"ray.stages": "auto", "ray.cpus_per_worker": 1, "ray.workers": 2})
    assert choose_mode(exp, 3) == "sequential" and choose_mode(exp, 4) == "concurrent"
    fixed = tiny_experiment(tmp_path, **{"ray.stages": "sequential", "ray.cpus_per_worker": 1})
    assert choose_mode(fixed, 64) == "sequential"


def _graph_run(graph, done, fail=()):
    """run_graph with launches that finish in launch order; returns the launch order."""
    from raydistill.distributed.stages import run_graph
    launched = []

    def launch(stage):
        launched.append(stage)
        return stage

    def wait(handles):
        first = handles[0]
        return {first: ({}, "boom") if first in fail else ({first: {"ok": True}}, None)}

    run_graph(graph, done, launch, wait, lambda _msg: None)
    return launched


def test_a_stage_starts_when_its_inputs_exist_and_a_failure_stops_only_its_dependants():
    from raydistill.distributed.stages import run_graph
    graph = {"teacher:a": [], "teacher:b": [], "method:x": ["teacher:a"], "method:y": ["teacher:b"],
             "method:z": []}
    launched = _graph_run(graph, {})
    assert launched[:3] == ["teacher:a", "teacher:b", "method:z"]      # independent stages first, together
    assert set(launched) == set(graph)
    assert _graph_run(graph, {"teacher:a": {}, "method:x": {}})[:2] == ["teacher:b", "method:z"]   # resumed
    launched = []
    with pytest.raises(RuntimeError, match=r"teacher:b: boom; method:y: not run \(needs a failed stage\)"):
        run_graph(graph, {}, lambda s: launched.append(s) or s,
                  lambda hs: {hs[0]: ({}, "boom") if hs[0] == "teacher:b" else ({hs[0]: {}}, None)},
                  lambda _msg: None)
    assert "method:x" in launched and "method:z" in launched and "method:y" not in launched


STAGES_SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        rcs = [subprocess.call([sys.executable, "-m", "raydistill.cli", "run", "--config", sys.argv[1],
                                "--address", cluster.address, "--set", f"ray.stages={mode}",
                                "--set", f"output.name={mode}"]) for mode in ("concurrent", "sequential")]
        print(json.dumps({"rcs": rcs}))
    finally:
        cluster.shutdown()
""")


@pytest.mark.cluster
def test_concurrent_stages_overlap_and_match_the_sequential_mode(tmp_path):
    """Cluster of 2 nodes x 2 CPUs: in concurrent mode the three teachers train at the same time
    (their intervals share a moment), and with one worker per stage, in-process teachers and the
    same threads per worker the accuracies equal the sequential mode's for the same seed."""
    exp = tiny_experiment(tmp_path, **{"teachers.epochs": 4, "curriculum.grade_epochs": "[1,1,1]",
                                       "ray.cpus_per_worker": 1, "ray.teachers": "local"})
    config = tmp_path / "stages.yaml"
    config.write_text(exp.to_yaml())
    proc = subprocess.run([sys.executable, "-c", STAGES_SCRIPT, str(config)], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert last.startswith("{") and json.loads(last)["rcs"] == [0, 0], proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stage teacher:group0: started" in proc.stdout and "rank 0 on node" in proc.stdout

    concurrent, sequential = tmp_path / "concurrent", tmp_path / "sequential"
    intervals = {}
    for log in sorted((concurrent / "epochs").glob("teacher-*.jsonl")):
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        intervals[lines[0]["stage"]] = (lines[0]["started"], lines[-1]["time"])
    assert sorted(intervals) == ["teacher:group0", "teacher:group1", "teacher:group2"]
    assert max(start for start, _ in intervals.values()) < min(end for _, end in intervals.values()), intervals
    assert sorted(p.name for p in (concurrent / "ray").iterdir()) == [
        "stage-method-ed", "stage-teacher-group0", "stage-teacher-group1", "stage-teacher-group2"]

    a = json.loads((concurrent / "summary.json").read_text())
    b = json.loads((sequential / "summary.json").read_text())
    assert a["methods"]["ed"]["final_test_acc"] == b["methods"]["ed"]["final_test_acc"]
    assert {k: t["test_acc"] for k, t in a["teachers"].items()} == {k: t["test_acc"] for k, t in b["teachers"].items()}
    history = lambda s: [(h["epoch"], h["test_acc"]) for h in json.loads((s / "metrics.json").read_text())["history"]]
    assert history(concurrent) == history(sequential)
