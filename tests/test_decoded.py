"""Decode once: the decoded set of a data configuration is stored as shards and every later run,
and a Tune trial, loads them (the decode log in the store counts every decode)."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_experiment

from raydistill.data.decoded import DECODE_LOG, decoded_key, load_decoded
from raydistill.data.sources import load_dataset


def write_png_parquet(path, per_class: int, classes: int, seed: int) -> str:
    """A Parquet file of real PNG images (img.bytes, label) with label names in its metadata."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    blobs, labels = [], []
    for c in range(classes):
        for _ in range(per_class):
            pixels = np.clip(rng.normal(40 * c, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            blobs.append(buf.getvalue())
            labels.append(c)
    img = pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array([None] * len(blobs), pa.string())],
                                     names=["bytes", "path"])
    table = pa.table({"img": img, "label": pa.array(labels, pa.int64())})
    table = table.replace_schema_metadata({"label_names": json.dumps([f"c{i}" for i in range(classes)])})
    pq.write_table(table, path)
    return str(path)


def parquet_experiment(tmp_path, **overrides):
    train = write_png_parquet(tmp_path / "train.parquet", 20, 6, 0)
    test = write_png_parquet(tmp_path / "test.parquet", 5, 6, 1)
    return tiny_experiment(tmp_path / "runs", **{
        "data.source": "parquet", "data.train_path": train, "data.test_path": test, "methods": "[scratch]",
        "data.image_size": 32, "data.augment": "cifar",   # 32 px tables (a Parquet source would default to 224)
        "curriculum.grade_epochs": "[1, 1, 1]", "optimizer.batch_size": 16, "teachers.batch_size": 16,
        **overrides})


def decodes(root) -> list:
    path = root / DECODE_LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_shards_equal_a_fresh_decode_and_key_follows_the_files(tmp_path):
    exp = parquet_experiment(tmp_path)
    d = exp.data
    fresh = load_dataset("parquet", train_path=d.train_path, test_path=d.test_path, size=32)
    seen = []
    first = load_decoded(exp, lambda: fresh, seen.append)
    again = load_decoded(exp, lambda: pytest.fail("decoded again"), seen.append)
    for a, b in zip(fresh, again):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.class_names == b.class_names
    assert "stored as shards" in seen[0] and "loaded" in seen[1]
    key = decoded_key(d, 32)[0]
    write_png_parquet(d.train_path, 20, 6, 7)   # new file content (size or mtime): another key
    assert decoded_key(d, 32)[0] != key
    assert first[0].images.shape == (120, 3, 32, 32)


@pytest.mark.slow   # starts Ray (session instance), Ray Train
def test_second_run_and_a_tune_trial_do_not_decode_again(ray_session, tmp_path):
    from raydistill.distributed.trainer import run_distributed
    from raydistill.pipeline.local import run
    from raydistill.search.trainable import trial_experiment
    from raydistill.search.tuner import shared_decoded_store

    search_dir = tmp_path / "search"
    base = shared_decoded_store(parquet_experiment(tmp_path), search_dir)
    store = search_dir / "decoded"
    first, second = [], []
    run(base.with_overrides(["output.name=first"]), progress=first.append)
    assert len(decodes(store)) == 1 and any("stored as shards" in line for line in first), first
    run(base.with_overrides(["output.name=second"]), progress=second.append)
    assert len(decodes(store)) == 1 and any("decoded shards loaded" in line for line in second), second

    trial = trial_experiment(base.to_dict(), {}, {}, str(search_dir / "trials"), 0, 1.0)
    seen = []
    result = run_distributed(trial.with_overrides(["methods=[scratch]"]), progress=seen.append)
    assert result.methods["scratch"]["epochs"] == 3
    assert len(decodes(store)) == 1 and any("decoded shards loaded" in line for line in seen), seen


def test_key_is_the_same_for_a_relative_and_an_absolute_path(tmp_path, monkeypatch):
    """A search's driver decodes with the config's relative paths, its trials run with absolute ones
    (workspace.with_absolute_paths): both must find the same shards."""
    import copy
    exp = parquet_experiment(tmp_path)
    monkeypatch.chdir(tmp_path)
    relative = copy.deepcopy(exp.data)
    relative.train_path, relative.test_path = "train.parquet", "./test.parquet"
    assert decoded_key(relative, 32)[0] == decoded_key(exp.data, 32)[0]


@pytest.mark.slow   # starts Ray (session instance), Ray Train
def test_decoding_inside_a_placement_group_does_not_need_its_cpus(ray_session):
    """A Tune trial's driver runs in a placement group whose bundle holds 0.01 CPU and captures
    child tasks: decoding there must not submit 1-CPU tasks into it (it used to fail with
    "Cannot schedule _decode_chunk with the placement group")."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    from raydistill.data.parallel import decode_many

    def decode(blob, where):
        return torch.full((3, 2, 2), blob[0], dtype=torch.uint8)

    @ray.remote(num_cpus=0.01)
    def in_group(items):
        return decode_many(items, [f"item {i}" for i in range(len(items))], decode, (3, 2, 2))

    group = placement_group([{"CPU": 0.01}])
    ray.get(group.ready())
    try:
        items = [bytes([i]) for i in range(40)]
        out = ray.get(in_group.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            group, placement_group_capture_child_tasks=True)).remote(items), timeout=120)
        assert out.shape == (40, 3, 2, 2) and out[:, 0, 0, 0].tolist() == list(range(40))
    finally:
        remove_placement_group(group)
