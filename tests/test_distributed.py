"""The Ray backend: the Ray Train driver, teacher actors, checkpoint/resume, multi-node placement.

Ray runs once per session (`ray_session`); the two-node `ray.cluster_utils.Cluster` test runs in
a subprocess so it never shares that instance. Tests of the pieces that need no Ray come first.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import saved_test_accuracy, tiny_experiment

REPO = Path(__file__).resolve().parents[1]


# ---- no Ray --------------------------------------------------------------------------------

def test_fold_batchnorm_keeps_outputs():
    from raydistill.models import build_model
    from raydistill.teachers import FrozenTeacher
    from raydistill.teachers.serving import fold_batchnorm
    torch.manual_seed(0)
    model = build_model("resnet14", 5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    plain = FrozenTeacher(model, (0.5,) * 3, (0.25,) * 3, fold_bn=False, channels_last=False)
    fast = FrozenTeacher(model, (0.5,) * 3, (0.25,) * 3)   # the default: folded, channels_last
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.net.modules())
    assert fast.model is model and fast.model.state_dict().keys() == plain.model.state_dict().keys()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fold_batchnorm(model).modules())
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    ref, got = plain(x), fast(x)
    assert torch.allclose(ref, got, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "original left unchanged"


def test_teacher_actor_class_without_ray(tiny_data):
    from raydistill.distributed.teacher_actors import TeacherActor, teacher_bytes
    from raydistill.models import build_model
    from raydistill.teachers import FrozenTeacher
    model = build_model("resnet8", 2)
    model.class_ids.copy_(torch.tensor([2, 3]))
    teacher = FrozenTeacher(model, tiny_data.mean, tiny_data.std)
    actor = TeacherActor(teacher_bytes(teacher), threads=1)
    images = tiny_data.train.images[:16]
    out = actor.logits(images.numpy())
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (16, 2)
    assert np.allclose(out, teacher(images).numpy(), atol=1e-4)
    assert actor.class_ids() == [2, 3]


def test_stages_progress_and_data_packing(tiny_data, tmp_path):
    from raydistill.distributed.data_transfer import pack_data, unpack_data
    from raydistill.pipeline.graph import run_stages
    from raydistill.pipeline.results import result_from_progress
    exp = tiny_experiment(tmp_path, methods="[ed,kd,scratch]")
    assert run_stages(exp, 3) == ["teacher:group0", "teacher:group1", "teacher:group2", "teacher:all",
                                  "method:ed", "method:kd", "method:scratch"]
    assert run_stages(tiny_experiment(tmp_path, methods="[kd+dkd,scratch]"), 3) == [
        "teacher:all", "method:kd+dkd", "method:scratch"]
    back = unpack_data(pack_data(tiny_data))
    assert torch.equal(back.train.images, tiny_data.train.images) and back.groups == tiny_data.groups
    completed = {"teacher:group0": {"info": {"test_acc": 0.5}},
                 "method:kd": {"history": [{"method": "kd", "epoch": 1}], "summary": {"final_test_acc": 0.2}},
                 "method:ed": {"history": [{"method": "ed", "epoch": 1}], "summary": {"final_test_acc": 0.3}}}
    from raydistill.storage import RunDir
    result = result_from_progress(exp, RunDir(tmp_path), completed)
    assert list(result.methods) == ["ed", "kd"] and list(result.teachers) == ["group0"]
    assert [h["method"] for h in result.history] == ["ed", "kd"]


def test_cli_flags_become_overrides(tmp_path):
    from raydistill.cli import _load, build_parser
    args = build_parser().parse_args(["run", "--workers", "2", "--address", "ray://h:10001",
                                      "--teachers", "actors", "--output", str(tmp_path)])
    exp = _load(args)
    assert (exp.ray.workers, exp.ray.address, exp.ray.teachers, args.backend) == (2, "ray://h:10001", "actors", "ray")
    assert build_parser().parse_args(["run", "--local"]).backend == "local"


# ---- Ray -----------------------------------------------------------------------------------

def _epochs_log(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]


def _shape(obj):
    """Keys and value types of a nested structure, values ignored."""
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shape(obj[0])] if obj else []
    return "number" if isinstance(obj, (int, float)) else type(obj).__name__


# for runs whose accuracy nothing asserts (which epochs ran, what a stop kept, the files' shape):
# 20 images per class leave every epoch a few batches, so such a run costs its start-ups, not its training
FEW_IMAGES = {"data.train_per_class": 20, "data.test_per_class": 10}


@pytest.mark.slow   # Ray Train
def test_interrupted_run_resumes_without_redoing_epochs(ray_session, tmp_path):
    from raydistill.distributed.trainer import RunInterrupted, run_distributed
    settings = {**FEW_IMAGES, "teachers.epochs": 2, "ray.executor": "fit"}   # one fit for the graph
    exp = tiny_experiment(tmp_path, **settings)
    # a worker dies after the first epoch of grade 2 and max_failures is 0: the run stops
    with pytest.raises(RunInterrupted):
        run_distributed(exp, progress=None, fail_once_at=("method:ed", 3))
    run_dir = tmp_path / "tiny"
    stopped = _epochs_log(run_dir)
    assert [e["epoch"] for e in stopped if e["stage"] == "method:ed"] == [1, 2, 3]
    # rank 0's live TensorBoard files (raydistill.pipeline.tracking) hold every epoch up to the stop, before any end-of-run write
    assert _tensorboard_steps(run_dir / "tensorboard" / "ed") == [1, 2, 3]
    # re-running resumes; a second worker death (at epoch 5) is recovered inside the run by max_failures
    exp = tiny_experiment(tmp_path, **settings, **{"ray.max_failures": 1})
    result = run_distributed(exp, progress=None, fail_once_at=("method:ed", 5))

    log = _epochs_log(run_dir)
    pairs = [(e["stage"], e["epoch"]) for e in log]
    assert len(pairs) == len(set(pairs)), f"an epoch was trained twice: {pairs}"
    assert [e for s, e in pairs if s == "method:ed"] == [1, 2, 3, 4, 5, 6]
    assert [e for s, e in pairs if s == "teacher:group0"] == [1, 2]
    assert len({e["attempt"] for e in log}) == 3           # first run, resumed run, restart after the kill
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in saved["history"]] == [1, 2, 3, 4, 5, 6]
    assert set(result.teachers) == {"group0", "group1", "group2"}


def _tensorboard_steps(log_dir) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [s.step for s in acc.Scalars("accuracy/test")]


CLUSTER_SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {"teacher_node": 3}, "include_dashboard": False})
    student = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        rc = subprocess.call([sys.executable, "-m", "raydistill.cli", "run", "--config", sys.argv[1],
                              "--address", cluster.address, "--workers", "2", "--teachers", "actors",
                              "--set", "ray.teacher_cpus=0", "--set", "ray.teacher_resources={teacher_node: 1}"])
        print(json.dumps({"rc": rc, "head": cluster.head_node.node_id, "student": student.node_id}))
    finally:
        cluster.shutdown()
""")


@pytest.mark.slow   # a two-node ray.cluster_utils.Cluster in a subprocess
def test_ed_with_two_workers_and_teacher_actors_on_two_nodes(tmp_path):
    """ED as two DDP workers on a student node, the teachers as actors on a teacher node (head:
    no CPU, a `teacher_node` resource), through `raydistill run --address`: placed where asked,
    learning (above 1.5x chance), the run directory shaped as the local backend's, and the saved
    student scoring exactly the reported accuracy. (Was two tests, one on the session's single
    node, at 103 + 65 s: the cluster run checks both for one start-up.)"""
    from raydistill.pipeline.local import run
    overrides = {"curriculum.grade_epochs": "[2,2,4]", "teachers.epochs": 4, "optimizer.batch_size": 16,
                 "teachers.batch_size": 16}
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_experiment(tmp_path / "ray", **overrides).to_yaml())
    proc = subprocess.run([sys.executable, "-c", CLUSTER_SCRIPT, str(config)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert last.startswith("{"), proc.stdout[-2000:] + proc.stderr[-3000:]
    info = json.loads(last)
    assert info["rc"] == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "ray" / "tiny"
    placement = json.loads((run_dir / "placement.json").read_text())
    assert placement["workers"] == [info["student"]] * 2
    assert set(placement["teachers"]) == {"group0", "group1", "group2"}
    assert set(placement["teachers"].values()) == {info["head"]}

    # the local backend, for the structure only (shortest possible run)
    local = run(tiny_experiment(tmp_path / "local", **FEW_IMAGES, **{"curriculum.grade_epochs": "[1,1,1]",
                                                                    "teachers.epochs": 1}), progress=None).run_dir
    for name in ("metrics.json", "summary.json", "config.yaml", "checkpoints/ed.pt", "teachers/group0.pt",
                 "teachers/group2.pt"):
        assert (run_dir / name).is_file(), name
        assert (local / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"teachers", "methods", "history"}
    assert _shape(metrics) == _shape(json.loads((local / "metrics.json").read_text()))
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, 9))
    assert [h["grade"] for h in metrics["history"]] == [1] * 2 + [2] * 2 + [3] * 4
    chance = 1 / 6
    assert metrics["methods"]["ed"]["final_test_acc"] > 1.5 * chance
    ckpt = torch.load(run_dir / "checkpoints" / "ed.pt", weights_only=True)
    assert ckpt["arch"] == "resnet8"
    # one model: the saved checkpoint, evaluated in this process, scores exactly the reported accuracy
    from raydistill.pipeline.prepare import prepare_data
    assert saved_test_accuracy(run_dir / "checkpoints" / "ed.pt", prepare_data(tiny_experiment(tmp_path))) \
        == metrics["methods"]["ed"]["final_test_acc"]


def _teacher_files(tmp_path, exp, poisoned: str) -> dict:
    """Untrained teacher checkpoints for every group; `poisoned`'s weights are NaN (a corrupted file)."""
    from raydistill.models import build_model
    from raydistill.teachers import save_teacher
    from raydistill.pipeline.prepare import prepare_data
    data = prepare_data(exp)
    paths = {}
    for p, classes in enumerate(data.groups):
        model = build_model(exp.teachers.arch, len(classes))
        model.class_ids.copy_(torch.tensor(classes))
        if f"group{p}" == poisoned:
            with torch.no_grad():
                for param in model.parameters():
                    param.fill_(float("nan"))
        paths[f"group{p}"] = str(tmp_path / f"group{p}.pt")
        save_teacher(paths[f"group{p}"], model, data.mean, data.std)
    return paths


@pytest.mark.slow   # Ray Train
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(ray_session, tmp_path):
    """A teacher with NaN weights makes ED's loss non-finite in its first epoch: the run stops (no
    restart, although max_failures allows one) naming method, grade and epoch; the completed
    `scratch` stage, its checkpoint and its metrics are kept and stay the latest Ray checkpoint."""
    from raydistill.distill.engine import NonFiniteLossError
    from raydistill.distributed.trainer import run_distributed
    from raydistill.pipeline.checkpoints import latest_progress
    from raydistill.storage import RunDir
    exp = tiny_experiment(tmp_path, **FEW_IMAGES, **{"methods": "[scratch,ed]", "curriculum.grade_epochs": "[1,1,1]",
                                                     "ray.max_failures": 1,
                                                     "ray.executor": "fit"})   # one fit for the graph
    exp = exp.with_overrides([f"teachers.checkpoints={json.dumps(_teacher_files(tmp_path, exp, 'group0'))}"])
    with pytest.raises(NonFiniteLossError, match=r"ed: non-finite loss .* in grade 1, epoch 1"):
        run_distributed(exp, progress=None)
    run_dir = tmp_path / "tiny"
    state = latest_progress(None, RunDir(run_dir / "ray" / "train"))
    assert (state["stage"], state["train_state"]["epoch"]) == ("method:scratch", 3)   # the last good epoch
    assert "ed: non-finite loss" in state["aborted"]   # the stop travels in the checkpoint, no side file
    assert "method:ed" not in state["completed"]
    assert torch.load(run_dir / "checkpoints" / "scratch.pt", weights_only=True)["arch"] == "resnet8"
    assert not (run_dir / "checkpoints" / "ed.pt").exists()
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert [h["method"] for h in saved["history"]] == ["scratch"] * 3
    assert len({e["attempt"] for e in _epochs_log(run_dir)}) == 1          # not restarted
    assert not list(run_dir.glob("aborted*"))
