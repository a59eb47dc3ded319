"""data.loader stream: Ray Data pipelines feeding Ray Train workers (2 workers here).

Every training sample is seen exactly once per epoch across the workers, in both pass modes, with
counts that do not divide by the workers (padding); the batches of an epoch are memory mode's and
depend on (seed, epoch, pass) alone, not on what ran before (resume); streamed samples carry the
sample ids (and so the pixels and cached soft labels) of memory mode; no private Ray module is
used; and a whole run trains in stream mode."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_experiment
from test_decoded import parquet_experiment

REPO = Path(__file__).resolve().parents[1]
# images per class: 15/16/15/16/20/23 train after the 10 % val split, so the lessons (31, 31, 43),
# the mixed pass (105) and val (13) are odd over 2 workers; test 29
TRAIN_COUNTS = (17, 18, 17, 18, 22, 26)
TEST_COUNTS = (5, 4, 5, 6, 5, 4)


def write_uneven_parquet(path, counts, seed: int, row_group_size: int = 16) -> str:
    """A Parquet file of PNG images (img.bytes, label), `counts[c]` of class c, in row groups of
    `row_group_size` rows (a sample's row group is where the stream reads it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    rng = np.random.default_rng(seed)
    blobs, labels = [], []
    for c, n in enumerate(counts):
        for _ in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.clip(rng.normal(40 * c, 30, (32, 32, 3)), 0, 255).astype(np.uint8)).save(buf, format="PNG")
            blobs.append(buf.getvalue())
            labels.append(c)
    img = pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array([None] * len(blobs), pa.string())],
                                     names=["bytes", "path"])
    table = pa.table({"img": img, "label": pa.array(labels, pa.int64())})
    table = table.replace_schema_metadata({"label_names": json.dumps([f"c{i}" for i in range(len(counts))])})
    pq.write_table(table, path, row_group_size=row_group_size)
    return str(path)


def uneven_experiment(tmp_path, **overrides):
    return tiny_experiment(tmp_path / "runs", **{
        "data.source": "parquet", "data.train_path": write_uneven_parquet(tmp_path / "train.parquet", TRAIN_COUNTS, 0),
        "data.test_path": write_uneven_parquet(tmp_path / "test.parquet", TEST_COUNTS, 1), "methods": "[scratch]",
        "data.image_size": 32, "data.augment": "cifar", "data.loader": "stream",
        "curriculum.grade_epochs": "[1, 1, 1]", "optimizer.batch_size": 16, "teachers.batch_size": 16, **overrides})


def _record_passes(config: dict) -> None:
    """Ray Train loop: this rank's batches (sample ids, real count) of each pass of each
    "epoch/mode" of `config["plan"]`, as the engine iterates them, and the val labels it evaluates."""
    import ray.train
    from raydistill.config import Experiment
    from raydistill.distill.curriculum import plan_for
    from raydistill.distill.engine import TrainContext, epoch_passes
    from raydistill.distributed.data_transfer import unpack_data
    from raydistill.pipeline.prepare import student_settings

    exp = Experiment.from_dict(config["exp"])
    tc = ray.train.get_context()
    ctx = TrainContext(rank=tc.get_world_rank(), world_size=tc.get_world_size())
    data = unpack_data(config["packed"], ctx)
    s = student_settings(exp, data)
    grade = plan_for("ed", exp, data.groups).grades[-1]
    pixel_sums = torch.tensor(config["pixel_sums"])
    seen = {}
    for key in config["plan"]:
        epoch, mode = key.split("/")
        for p, batches in enumerate(epoch_passes(grade, mode, data.train, s, int(epoch), ctx)):
            got = []
            for index, images, labels, n in batches:
                assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
                assert torch.equal(labels, data.train.labels[index])
                assert torch.equal(images.sum((1, 2, 3)), pixel_sums[index])   # memory mode's pixels of these ids
                got.append([index.tolist(), n])
            assert not hasattr(batches, "__len__") or len(batches) == len(got)   # the step count known ahead
            seen.setdefault(f"{key}/{p}", []).append(got)   # a key run twice keeps both
    counts = torch.zeros(data.train.num_classes, dtype=torch.long)
    for _images, labels in data.val.eval_batches(8):
        counts += torch.bincount(labels, minlength=len(counts))
    seen["val"] = counts.tolist()
    Path(config["out"], f"{config['name']}-rank{ctx.rank}.json").write_text(json.dumps(seen))


def _fit_recording(exp, data, packed, tmp_path, name: str, plan: list, pixel_sums: list) -> list:
    """Per rank: {pass key: [batches per time it ran]} of one 2-worker fit running `plan`."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    TorchTrainer(_record_passes,
                 train_loop_config={"exp": exp.to_dict(), "packed": packed, "out": str(tmp_path), "name": name,
                                    "plan": plan, "pixel_sums": pixel_sums},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.25}),
                 run_config=RunConfig(storage_path=str(tmp_path / "ray"), name=name)).fit()
    return [json.loads((tmp_path / f"{name}-rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow   # Ray Train + Ray Data
def test_two_workers_see_every_sample_once_per_epoch_and_a_resumed_run_sees_the_same_batches(ray_session, tmp_path):
    """Odd pass counts over 2 workers (so shares are padded with real=False repeats): every sample
    of a pass exactly once per epoch across the ranks, padding trained on but not counted; each
    rank's batches are memory mode's for (seed, epoch, pass), the same when the pass runs again
    later in the process (a later stage) and in a fresh fit that starts at that epoch (a resume).
    Before: the pipeline's shuffle was reseeded per execution and blocks went to whichever worker
    asked first, so none of this held."""
    import sys
    from ray import cloudpickle
    from raydistill.distill.curriculum import plan_for
    from raydistill.distill.engine import grade_passes, shard_batches
    from raydistill.distributed.data_transfer import pack_data
    from raydistill.pipeline.prepare import prepare_data, student_settings
    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the loop below runs in Train workers

    exp = uneven_experiment(tmp_path, **{"curriculum.pass_mode": "sequential"})
    data = prepare_data(exp)
    memory = prepare_data(exp.with_overrides(["data.loader=memory"]))
    assert data.streaming and len(data.train) == 105 and len(data.val) == 13
    assert torch.equal(memory.train.labels, data.train.labels)
    packed = pack_data(data)
    pixel_sums = memory.train.images.sum((1, 2, 3)).tolist()
    full = _fit_recording(exp, data, packed, tmp_path, "full", ["0/sequential", "0/mixed", "1/mixed", "0/mixed"],
                          pixel_sums)
    resumed = _fit_recording(exp, data, packed, tmp_path, "resumed", ["1/mixed"], pixel_sums)

    for rank in range(2):
        assert full[rank]["0/mixed/0"][0] == full[rank]["0/mixed/0"][1]   # a later stage sees the same epoch 0
        assert resumed[rank]["1/mixed/0"] == full[rank]["1/mixed/0"]      # a resumed run sees the same epoch 1
        assert full[rank]["0/mixed/0"][0] != full[rank]["1/mixed/0"][0], "epochs are shuffled anew"
    s = student_settings(exp, data)
    grade = plan_for("ed", exp, data.groups).grades[-1]
    padded = 0
    for key in full[0]:
        if key == "val":
            continue
        epoch, mode, p = key.split("/")
        index = grade_passes(grade, data.train.labels, mode)[int(p)]
        assert len(index) % 2 == 1, key   # odd: the shares are padded
        real = [i for rank in range(2) for b, n in full[rank][key][0] for i in b[:n]]
        assert sorted(real) == sorted(index.tolist()), key   # each sample of the pass exactly once, nothing else
        padded += sum(len(b) - n for rank in range(2) for b, n in full[rank][key][0])
        for rank in range(2):
            expected = [[b.tolist(), n] for b, n in shard_batches(index, s.batch_size, s.seed, int(epoch), int(p), rank, 2)]
            assert full[rank][key][0] == expected, (key, rank)   # memory mode's batches
    assert padded > 0, "padding (real=False repeats) was exercised"
    val = [a + b for a, b in zip(full[0]["val"], full[1]["val"])]
    assert val == torch.bincount(data.val.labels, minlength=len(val)).tolist()   # every val sample counted once over the ranks


@pytest.mark.slow   # Ray Data
def test_a_pass_read_by_several_tasks_is_sorted_into_the_same_order(ray_session, tmp_path, monkeypatch):
    """A pass of more than READ_TASK_ROWS samples is read by several tasks (of row groups) whose
    blocks arrive in any order, then sorted by position; a smaller one is read by one task, whose
    rows come in order (no sort). Both yield the pass's samples, repeats included, in exactly the
    order asked for, with memory mode's pixels. (The Ray Train tests' passes are all one-task.)"""
    from raydistill.data import stream
    from raydistill.pipeline.prepare import prepare_data
    exp = uneven_experiment(tmp_path)
    data = prepare_data(exp)
    memory = prepare_data(exp.with_overrides(["data.loader=memory"]))
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(5))
    wanted = torch.cat([order, order[:7]])   # with padding's repeats
    # 64: two read tasks of four row groups each, the fewest that need the sort (each task is a block
    # of the all-to-all sort)
    for rows_per_task in (stream.READ_TASK_ROWS, 64):
        monkeypatch.setattr(stream, "READ_TASK_ROWS", rows_per_task)
        tasks = stream._rows_dataset(data.train, wanted.numpy())[1]
        assert tasks == 1 if rows_per_task > len(wanted) else tasks > 1
        batches = list(stream.pass_dataset(data.train, wanted.numpy()).iter_torch_batches(batch_size=16))
        ids = torch.cat([b["sample_id"] for b in batches])
        assert torch.equal(ids, wanted), rows_per_task
        assert torch.equal(torch.cat([b["image"] for b in batches]), memory.train.images[ids])


def test_no_private_ray_module_is_used():
    """Stream's stable sample ids come from public APIs (the file row, from pyarrow's row-group
    metadata); it imported `ray.data._internal...._compute_row_hashes`, which moves or vanishes
    between Ray releases."""
    private = re.compile(r"\bray(\.\w+)*\._(internal|private|raylet)\b|_compute_row_hashes|include_row_hash")
    offenders = [f"{path.relative_to(REPO)}:{i}" for path in sorted((REPO / "raydistill").rglob("*.py"))
                 for i, line in enumerate(path.read_text().splitlines(), 1) if private.search(line)]
    assert offenders == []


@pytest.mark.slow   # Ray Train + Ray Data
def test_streamed_samples_match_memory_mode_pixels_and_cached_soft_labels(ray_session, tmp_path):
    from raydistill.data.stream import pass_dataset
    from raydistill.models import build_model
    from raydistill.softlabels import ensure_soft_label_cache
    from raydistill.teachers import FrozenTeacher
    from raydistill.pipeline.prepare import prepare_data

    exp = parquet_experiment(tmp_path, **{"teachers.soft_labels": "cache", "teachers.cache_draws": 2})
    memory = prepare_data(exp)
    stream = prepare_data(exp.with_overrides(["data.loader=stream"]))
    assert torch.equal(stream.train.labels, memory.train.labels) and torch.equal(stream.val.labels, memory.val.labels)
    torch.manual_seed(0)
    model = build_model("resnet8", len(memory.groups[0]))
    model.class_ids.copy_(torch.tensor(memory.groups[0]))
    teacher = FrozenTeacher(model, memory.mean, memory.std)
    cache = ensure_soft_label_cache(exp, memory, {"group0": teacher}, root=tmp_path / "softlabels")
    client = cache.client()
    group = torch.nonzero(torch.isin(memory.train.labels, torch.tensor(memory.groups[0]))).flatten()
    order = group[torch.randperm(len(group), generator=torch.Generator().manual_seed(3))]
    batch = next(iter(pass_dataset(stream.train, order.numpy()).iter_torch_batches(batch_size=64)))
    ids = batch["sample_id"]
    assert torch.equal(ids, order[:64])                            # in the order asked for
    assert torch.equal(batch["image"], memory.train.images[ids])   # same sample id, same pixels
    for draw in range(2):
        draws = torch.full((len(ids),), draw, dtype=torch.long)
        streamed = client.replay.apply(batch["image"], ids, draws)
        cached = client.fetch(client.submit("group0", streamed, index=ids, draw=draws))
        # the cache holds, for (sample, draw), the logits of exactly the image the stream yields
        assert torch.allclose(cached.float(), teacher(streamed).float(), atol=2e-2, rtol=1e-2)


def test_loader_fields_are_validated_and_auto_says_what_it_chose(tmp_path):
    from raydistill.config import ConfigError
    from raydistill.data.stream import choose_loader
    from raydistill.pipeline.local import run

    exp = parquet_experiment(tmp_path)
    with pytest.raises(ConfigError, match="data.loader: expected one of"):
        exp.with_overrides(["data.loader=disk"]).validate()
    with pytest.raises(ConfigError, match="data.memory_fraction"):
        exp.with_overrides(["data.memory_fraction=0"]).validate()
    with pytest.raises(ConfigError, match="data.loader: stream needs the Ray backend"):
        run(exp.with_overrides(["data.loader=stream"]), progress=None)
    said = []
    auto = exp.with_overrides(["data.loader=auto", "data.memory_fraction=0.5"])
    # 120 decoded 32x32 images = 368,640 bytes: stream below 2x that per worker, memory above
    assert choose_loader(auto, said.append, memory=700_000) == "stream"
    assert choose_loader(auto, said.append, memory=800_000) == "memory"
    assert "auto: stream" in said[0] and "auto: memory" in said[1]
    builtin = tiny_experiment(tmp_path, **{"data.loader": "auto"})
    assert choose_loader(builtin, said.append, memory=1) == "memory" and "does not stream" in said[-1]



@pytest.mark.slow   # Ray Train + Ray Data
def test_a_run_trains_and_evaluates_from_streams_on_two_workers(ray_session, tmp_path):
    """The whole Ray backend in stream mode: a teacher stage (its test accuracy streamed too) and kd."""
    from raydistill.distributed.trainer import run_distributed
    exp = parquet_experiment(tmp_path, **{"data.loader": "stream", "methods": "[kd]", "teachers.epochs": 1,
                                          "ray.workers": 2, "ray.cpus_per_worker": 0.25})
    seen = []
    result = run_distributed(exp, progress=seen.append)
    history = [h for h in result.history if h["method"] == "kd"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(h["train_images"] == 108 for h in history)   # every training sample once per epoch, none padded
    assert all(0 <= h["val_acc"] <= 1 and 0 <= h["test_acc"] <= 1 for h in history)
    assert 0 <= result.teachers["all"]["test_acc"] <= 1
    assert not (tmp_path / "runs" / "decoded").exists(), "stream mode decodes nothing up front"
