"""The stage graph (teachers → methods) and concurrent stages: one Ray Train fit per stage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import tiny_experiment

REPO = Path(__file__).resolve().parents[1]


def test_stage_graph_links_each_method_to_its_teachers(tmp_path):
    from raydistill.pipeline.graph import stage_graph
    exp = tiny_experiment(tmp_path, methods="[scratch,kd,ed]")
    assert stage_graph(exp, 3) == {
        "teacher:group0": [], "teacher:group1": [], "teacher:group2": [], "teacher:all": [],
        "method:scratch": [], "method:kd": ["teacher:all"],
        "method:ed": ["teacher:group0", "teacher:group1", "teacher:group2"]}


def test_auto_mode_needs_room_for_two_stages(tmp_path):
    from raydistill.pipeline.graph import choose_mode
    exp = tiny_experiment(tmp_path, **{"ray.stages": "auto", "ray.cpus_per_worker": 1, "ray.workers": 2})
    assert choose_mode(exp, 3) == "sequential" and choose_mode(exp, 4) == "concurrent"
    fixed = tiny_experiment(tmp_path, **{"ray.stages": "sequential", "ray.cpus_per_worker": 1})
    assert choose_mode(fixed, 64) == "sequential"


def _graph_run(graph, done, fail=()):
    """run_graph with launches that finish in launch order; returns the launch order."""
    from raydistill.pipeline.graph import StageOutcome, run_graph
    launched = []

    def launch(stage):
        launched.append(stage)
        return stage

    def wait(handles):
        first = handles[0]
        return {first: StageOutcome.failed("boom") if first in fail else StageOutcome.ok({first: {"ok": True}})}

    run_graph(graph, done, launch, wait, lambda _msg: None)
    return launched


def test_a_stage_starts_when_its_inputs_exist_and_a_failure_stops_only_its_dependants():
    from raydistill.pipeline.graph import StageOutcome, run_graph
    graph = {"teacher:a": [], "teacher:b": [], "method:x": ["teacher:a"], "method:y": ["teacher:b"],
             "method:z": []}
    launched = _graph_run(graph, {})
    assert launched[:3] == ["teacher:a", "teacher:b", "method:z"]      # independent stages first, together
    assert set(launched) == set(graph)
    assert _graph_run(graph, {"teacher:a": {}, "method:x": {}})[:2] == ["teacher:b", "method:z"]   # resumed
    launched = []
    with pytest.raises(RuntimeError, match=r"teacher:b: boom; method:y: not run \(needs a failed stage\)"):
        run_graph(graph, {}, lambda s: launched.append(s) or s,
                  lambda hs: {hs[0]: StageOutcome.failed("boom") if hs[0] == "teacher:b"
                              else StageOutcome.ok({hs[0]: {}})},
                  lambda _msg: None)
    assert "method:x" in launched and "method:z" in launched and "method:y" not in launched


def test_of_the_stages_ready_together_the_longest_chain_of_work_starts_first(tmp_path):
    """The default run's graph: kd needs the all-class teacher (20 classes), ED and multi_teacher
    the group teachers (6/6/8 classes), scratch nothing; the all-class teacher is launched first
    and kd first of the methods it frees."""
    from raydistill.pipeline.graph import critical_paths, run_graph, stage_graph, stage_work, StageOutcome
    exp = tiny_experiment(tmp_path, **{"methods": "[ed,scratch,kd,multi_teacher]", "teachers.arch": "resnet14"})
    groups = [list(range(6)), list(range(6, 12)), list(range(12, 20))]
    flops = {"resnet14": 2.0, "resnet8": 1.0}
    graph = stage_graph(exp, len(groups))
    work = {s: stage_work(exp, s, groups, lambda arch, _classes: flops[arch]) for s in graph}
    assert work["teacher:all"] == exp.teachers.epochs * 20 * 2.0
    assert work["teacher:group2"] == exp.teachers.epochs * 8 * 2.0
    assert work["method:kd"] == exp.total_epochs() * 20 * 1.0
    paths = critical_paths(graph, work)
    assert paths["teacher:all"] == work["teacher:all"] + work["method:kd"]
    assert paths["teacher:group0"] == work["teacher:group0"] + max(work["method:ed"], work["method:multi_teacher"])
    assert paths["method:scratch"] == work["method:scratch"]
    launched = []
    run_graph(graph, {}, lambda s: launched.append(s) or s, lambda hs: {hs[0]: StageOutcome.ok({hs[0]: {}})},
              lambda _msg: None, priority=paths)
    assert launched[:5] == ["teacher:all", "teacher:group2", "teacher:group0", "teacher:group1", "method:scratch"]
    assert launched[5] == "method:kd"   # the all-class teacher ended first: its method is ready first


def test_each_stage_keeps_its_own_outcome_and_advice(tmp_path):
    """A diverged stage and an interrupted one at the same time (issue 26, item 9): each stage's
    outcome is its own type, so the run is not declared diverged as a whole (re-running helps the
    interrupted stage, whose resume advice stays), and an error text that merely mentions a
    non-finite loss does not make a stage diverged. Only all-diverged is a NonFiniteLossError."""
    from raydistill.distill.engine import NonFiniteLossError
    from raydistill.pipeline.graph import StageOutcome, StagesFailed, run_graph
    from raydistill.distributed.trainer import RunInterrupted, stages_error
    from raydistill.storage import RunDir
    graph = {"teacher:a": [], "method:y": [], "method:z": [], "method:x": ["teacher:a"]}
    ends = {"teacher:a": StageOutcome.non_finite("teacher:a: non-finite loss (nan on rank 0) in grade 1, epoch 1"),
            "method:y": StageOutcome.failed("TrainingFailedError: worker died after a non-finite loss warning"),
            "method:z": StageOutcome.ok({"method:z": {"summary": {}}})}
    with pytest.raises(StagesFailed) as caught:
        run_graph(graph, {}, lambda s: s, lambda hs: {hs[0]: ends[hs[0]]}, lambda _msg: None)
    outcomes = caught.value.outcomes
    assert {s: o.status for s, o in outcomes.items()} == {
        "teacher:a": "non_finite", "method:y": "failed", "method:z": "ok", "method:x": "not_run"}
    assert outcomes["method:x"].message == "teacher:a"

    err = stages_error(outcomes, RunDir(tmp_path))
    assert isinstance(err, RunInterrupted) and not isinstance(err, NonFiniteLossError)
    assert err.outcomes is outcomes
    lines = {line.split(":", 2)[1]: line for line in str(err).splitlines()[1:-1]}
    assert "lower the learning rate" in lines["a"] and "re-run the same command" not in lines["a"]
    assert "re-run the same command to resume it" in lines["y"] and "stage-method-y" in lines["y"]
    assert "lower the learning rate" not in lines["y"] and "not run (needs teacher:a)" in lines["x"]
    assert "z" not in lines

    diverged = {"teacher:a": ends["teacher:a"], "method:x": outcomes["method:x"]}
    err = stages_error(diverged, RunDir(tmp_path))
    assert isinstance(err, NonFiniteLossError) and err.outcomes is diverged


def _nan_teacher(tmp_path, exp, key: str) -> str:
    """A teacher checkpoint `key` whose weights are NaN: every loss that distils from it is non-finite."""
    from raydistill.models import build_model
    from raydistill.teachers import classes_of, save_teacher
    from raydistill.pipeline.prepare import prepare_data
    data = prepare_data(exp)
    classes = classes_of(key, data.groups)
    model = build_model(exp.teachers.arch, len(classes))
    model.class_ids.copy_(torch.tensor(classes))
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float("nan"))
    path = str(tmp_path / f"{key}.pt")
    save_teacher(path, model, data.mean, data.std)
    return path


@pytest.mark.slow   # Ray Train, concurrent stages
def test_concurrent_run_with_one_diverged_and_one_interrupted_stage(ray_session, tmp_path):
    """Real concurrent stages: `kd` distils from a NaN teacher (its loss is non-finite) while
    `scratch`'s rank 0 dies after epoch 1 with max_failures 0. The error carries each stage's
    outcome; the same command again resumes scratch to completion and reports only kd as diverged."""
    from raydistill.distill.engine import NonFiniteLossError
    from raydistill.distributed.trainer import RunInterrupted, run_distributed
    exp = tiny_experiment(tmp_path, **{"methods": "[scratch,kd]", "curriculum.grade_epochs": "[1,1,1]",
                                       "data.train_per_class": 40, "data.test_per_class": 20,
                                       "ray.stages": "concurrent", "ray.max_failures": 0,
                                       "ray.cpus_per_worker": 1, "ray.teachers": "local"})
    exp = exp.with_overrides([f"teachers.checkpoints={json.dumps({'all': _nan_teacher(tmp_path, exp, 'all')})}"])
    with pytest.raises(RunInterrupted) as caught:
        run_distributed(exp, progress=None, fail_once_at=("method:scratch", 1))
    outcomes = caught.value.outcomes
    assert {s: o.status for s, o in outcomes.items()} == {
        "teacher:all": "ok", "method:kd": "non_finite", "method:scratch": "failed"}, str(caught.value)
    assert "in grade 1, epoch 1" in outcomes["method:kd"].message

    with pytest.raises(NonFiniteLossError) as caught:   # scratch resumes and completes; kd diverges again
        run_distributed(exp, progress=None)
    assert {s: o.status for s, o in caught.value.outcomes.items()} == {
        "method:kd": "non_finite", "method:scratch": "ok"}, str(caught.value)
    epochs = [json.loads(line) for line in (tmp_path / "tiny" / "epochs" / "method-scratch.jsonl")
              .read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]   # resumed after epoch 1, none trained twice


STAGES_SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        # both runs at once (their start-ups and waits overlap): concurrent mode's teachers take 3 of
        # the 4 CPUs, sequential mode's one stage at a time the 4th
        runs = [subprocess.Popen([sys.executable, "-m", "raydistill.cli", "run", "--config", sys.argv[1],
                                  "--address", cluster.address, "--set", f"ray.stages={mode}",
                                  "--set", f"output.name={mode}"]) for mode in ("concurrent", "sequential")]
        print(json.dumps({"rcs": [run.wait() for run in runs]}))
    finally:
        cluster.shutdown()
""")


@pytest.mark.cluster
def test_concurrent_stages_overlap_and_match_the_sequential_mode(tmp_path):
    """Cluster of 2 nodes x 2 CPUs: in concurrent mode the three teachers are launched together
    (each before any of them ended) and train at the same time (teachers overlap; not necessarily all
    three at one moment: a node's first, cold task starts seconds after the others, longer than a
    tiny teacher trains), and with one worker per stage, in-process teachers and the same threads
    per worker the accuracies equal the sequential mode's for the same seed."""
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
        intervals[lines[0]["stage"]] = (lines[0]["launched"], lines[0]["started"], lines[-1]["time"])
    assert sorted(intervals) == ["teacher:group0", "teacher:group1", "teacher:group2"]
    assert max(launched for launched, _, _ in intervals.values()) < min(end for _, _, end in intervals.values()), \
        intervals
    overlapping = [(a, b) for a in intervals for b in intervals
                   if a < b and max(intervals[a][1], intervals[b][1]) < min(intervals[a][2], intervals[b][2])]
    assert overlapping, intervals
    assert sorted(p.name for p in (concurrent / "ray").iterdir()) == [
        "stage-method-ed", "stage-teacher-group0", "stage-teacher-group1", "stage-teacher-group2"]

    a = json.loads((concurrent / "summary.json").read_text())
    b = json.loads((sequential / "summary.json").read_text())
    assert a["methods"]["ed"]["final_test_acc"] == b["methods"]["ed"]["final_test_acc"]
    assert {k: t["test_acc"] for k, t in a["teachers"].items()} == {k: t["test_acc"] for k, t in b["teachers"].items()}
    history = lambda s: [(h["epoch"], h["test_acc"]) for h in json.loads((s / "metrics.json").read_text())["history"]]
    assert history(concurrent) == history(sequential)
