"""Caltech-256 and Food-101 through torchvision's dataset classes, on small folders of their exact
layouts made here; the shipped caltech256/food101 experiments are validated against them."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from raydistill.data import DataError, load_dataset
from raydistill.config import Experiment


def _jpeg(rng, h=48, w=64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def caltech_folder(root, rng, classes=("ak47", "bat", "cake"), per_class=5):
    base = root / "caltech256" / "256_ObjectCategories"
    for c, name in enumerate(classes):
        d = base / f"{c + 1:03d}.{name}"
        d.mkdir(parents=True)
        for k in range(1, per_class + 1):
            (d / f"{c + 1:03d}_{k:04d}.jpg").write_bytes(_jpeg(rng))
    return root


def food_folder(root, rng, classes=("apple_pie", "baklava", "churros"), train=4, test=2):
    base = root / "food-101"
    (base / "meta").mkdir(parents=True)
    meta = {"train": {}, "test": {}}
    for name in classes:
        (base / "images" / name).mkdir(parents=True)
        for split, n in (("train", train), ("test", test)):
            ids = [f"{name}/{split}{i}" for i in range(n)]
            meta[split][name] = ids
            for image_id in ids:
                (base / "images" / f"{image_id}.jpg").write_bytes(_jpeg(rng))
    for split in ("train", "test"):
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta[split]))
    return root


def test_caltech256_split_and_decoding(tmp_path):
    root = caltech_folder(tmp_path, np.random.default_rng(0))
    train, test = load_dataset("caltech256", root=root, size=40)
    assert train.class_names == ["ak47", "bat", "cake"]
    assert torch.bincount(train.labels).tolist() == [4, 4, 4] and torch.bincount(test.labels).tolist() == [1, 1, 1]
    assert train.images.shape == (12, 3, 40, 40) and test.images.shape == (3, 3, 40, 40)
    capped, _ = load_dataset("caltech256", root=root, size=40, limit_per_class=2)
    assert torch.equal(capped.images, train.images[[0, 1, 4, 5, 8, 9]])


def test_food101_official_split(tmp_path):
    root = food_folder(tmp_path, np.random.default_rng(1))
    train, test = load_dataset("food101", root=root, size=32)
    assert train.class_names == ["apple_pie", "baklava", "churros"] and len(train) == 12 and len(test) == 6
    assert train.images.shape[1:] == (3, 32, 32)
    assert len(load_dataset("food101", root=root, size=32, limit_per_class=1)[0]) == 3


def test_missing_photo_sets_name_the_path(tmp_path):
    with pytest.raises(DataError, match=r"caltech256/256_ObjectCategories' not found under data\.root .*"
                                        r"data\.download: true"):
        load_dataset("caltech256", root=tmp_path / "none")
    with pytest.raises(DataError, match=r"food-101/meta' and '.*food-101/images' not found under data\.root"):
        load_dataset("food101", root=tmp_path / "none")
    assert not (tmp_path / "none").exists()                     # a mistyped root creates nothing
    root = caltech_folder(tmp_path / "gap", np.random.default_rng(2), per_class=3)
    (root / "caltech256" / "256_ObjectCategories" / "002.bat" / "002_0002.jpg").rename(
        root / "caltech256" / "256_ObjectCategories" / "002.bat" / "002_0009.jpg")
    with pytest.raises(DataError, match=r"002_0002\.jpg' is missing"):
        load_dataset("caltech256", root=root)


@pytest.mark.parametrize("name, make", [("caltech256", caltech_folder), ("food101", food_folder)])
def test_shipped_photo_experiments_validate_against_their_layout(tmp_path, name, make):
    from raydistill.pipeline.prepare import prepare_data
    root = make(tmp_path, np.random.default_rng(3), classes=tuple(f"c{i}" for i in range(6)))
    # the weights are checked offline by validate; this test is about the data, so they are left out
    exp = Experiment.load(name).with_overrides([
        f"data.root={root}", "teachers.pretrained=null", "teachers.batch_size=2", "optimizer.batch_size=2",
        "data.val_fraction=0"]).validate()
    assert (exp.image_size(), exp.augment_preset(), exp.data.download) == (224, "imagenet", False)
    data = prepare_data(exp)
    assert [len(g) for g in data.groups] == [2, 2, 2]
    assert data.train.images.shape[1:] == (3, 256, 256) and data.test.images.shape[1:] == (3, 224, 224)
