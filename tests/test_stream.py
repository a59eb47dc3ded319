"""data.loader stream: Ray Data pipelines handed to Ray Train workers (2 workers here).

Every training sample is seen exactly once per epoch across the workers, in both pass modes; a
lesson's pass holds exactly its classes; streamed samples carry the sample ids (and so the pixels
and cached soft labels) of memory mode; and a whole run trains in stream mode."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_experiment
from test_decoded import parquet_experiment

EPOCHS = 2


def _record_passes(config: dict) -> None:
    """Ray Train loop: the real sample ids of each pass of each epoch, as the engine iterates them."""
    import ray.train
    from raydistill.config import Experiment
    from raydistill.distill.curriculum import plan_for
    from raydistill.distill.engine import TrainContext, epoch_passes
    from raydistill.distributed.trainer import unpack_data

    exp = Experiment.from_dict(config["exp"])
    tc = ray.train.get_context()
    ctx = TrainContext(rank=tc.get_world_rank(), world_size=tc.get_world_size())
    data = unpack_data(config["packed"], ctx)
    from raydistill.workspace import student_settings
    s = student_settings(exp, data)
    grade = plan_for("ed", exp, data.groups).grades[-1]
    seen = {}
    for epoch in range(EPOCHS):   # each pass is one execution of its pipeline: the second epoch only mixed
        for mode in ("sequential", "mixed") if epoch == 0 else ("mixed",):
            for p, batches in enumerate(epoch_passes(grade, mode, data.train, s, epoch, ctx)):
                ids = []
                for index, images, labels, n in batches:
                    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
                    ids += index[:n].tolist()
                seen[f"{epoch}/{mode}/{p}"] = ids
    Path(config["out"], f"rank{ctx.rank}.json").write_text(json.dumps(seen))


def test_two_workers_see_every_sample_once_per_epoch_in_both_pass_modes(ray_session, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from raydistill.distributed.trainer import fit_datasets, pack_data
    from raydistill.workspace import prepare_data

    import sys
    from ray import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the loop below runs in Train workers
    exp = parquet_experiment(tmp_path, **{"data.loader": "stream", "curriculum.pass_mode": "sequential"})
    data = prepare_data(exp)
    assert data.streaming and len(data.train) == 108
    packed = pack_data(data)
    TorchTrainer(_record_passes, train_loop_config={"exp": exp.to_dict(), "packed": packed, "out": str(tmp_path)},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.25}),
                 datasets=fit_datasets(exp, packed, 2),
                 run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="passes")).fit()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    labels = data.train.labels
    for key in ranks[0]:
        epoch, mode, p = key.split("/")
        ids = ranks[0][key] + ranks[1][key]
        assert len(ranks[0][key]) and len(ranks[1][key]), key
        classes = data.groups[int(p)] if mode == "sequential" else [c for g in data.groups for c in g]
        expected = torch.nonzero(torch.isin(labels, torch.tensor(classes))).flatten().tolist()
        assert sorted(ids) == expected, key   # each sample of the pass's classes exactly once, nothing else
    assert ranks[0]["0/mixed/0"] != ranks[0]["1/mixed/0"], "epochs are shuffled anew"


def test_streamed_samples_match_memory_mode_pixels_and_cached_soft_labels(ray_session, tmp_path):
    from raydistill.data.stream import split_dataset
    from raydistill.models import build_model
    from raydistill.softlabels import ensure_soft_label_cache
    from raydistill.teachers import FrozenTeacher
    from raydistill.workspace import prepare_data

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
    batch = next(iter(split_dataset(stream.train, memory.groups[0], 1, seed=3).iter_torch_batches(batch_size=64)))
    ids = batch["sample_id"]
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
    from raydistill.runner import run

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
