"""Image size and augmentation presets: decoding keeps the pixels the crops need, the presets give
the right shapes, value ranges and per-sample crops, evaluation is the same centre crop for all."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from raydistill.config import ConfigError, Experiment
from raydistill.data import (augment_batch, center_crop, decoded_size, load_dataset, random_resized_crop_flip,
                             resized_crop_flip)
from raydistill.data.augment import resized_crop_params
from raydistill.softlabels.bank import AugmentationBank


def _photo(rng, h, w) -> bytes:
    """A smooth (low-frequency) RGB photograph-like PNG of h x w."""
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _folder(root, rng, sizes=((300, 200), (180, 240), (224, 224)), classes=("a", "b")):
    for split in ("train", "test"):
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True)
            for i, (h, w) in enumerate(sizes):
                (d / f"{i}.png").write_bytes(_photo(rng, h, w))
    return root


def test_decoding_keeps_the_shorter_side_the_preset_needs(tmp_path):
    root = _folder(tmp_path, np.random.default_rng(0))
    assert decoded_size(224, "imagenet") == 256 and decoded_size(64, "imagenet") == 73
    assert decoded_size(64, "cifar") == 64 and decoded_size(224, "none") == 224
    train, _ = load_dataset("imagefolder", root=root, size=decoded_size(224, "imagenet"))
    assert train.images.shape == (6, 3, 256, 256) and train.images.dtype == torch.uint8
    # 300x200 portrait: shorter side (200) -> 256, aspect kept, the centre square of the result
    pil = Image.open(root / "train" / "a" / "0.png").convert("RGB")
    raw = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
    expected = TF.center_crop(TF.resize(raw, 256, antialias=True), [256, 256])
    assert torch.equal(train.images[0], expected)


def test_prepare_data_stores_train_squares_and_eval_centre_crops(tmp_path):
    from raydistill.workspace import prepare_data, student_settings
    root = _folder(tmp_path / "data", np.random.default_rng(1), sizes=((90, 120),) * 5, classes="abcd")
    exp = Experiment.from_dict({"data": {"source": "imagefolder", "root": str(root), "image_size": 64,
                                         "ratio": "1:1", "val_fraction": 0.2},
                                "teachers": {"batch_size": 2}, "optimizer": {"batch_size": 2},
                                "curriculum": {"splits": [1, 3]}}).validate()
    assert (exp.image_size(), exp.augment_preset()) == (64, "imagenet")   # the defaults of a photo source
    data = prepare_data(exp)
    assert data.train.images.shape[1:] == (3, 73, 73)
    assert data.val.images.shape[1:] == (3, 64, 64) and data.test.images.shape[1:] == (3, 64, 64)
    again = prepare_data(exp)
    assert torch.equal(again.test.images, data.test.images)             # deterministic evaluation view
    full, test = load_dataset("imagefolder", root=root, size=73)
    assert torch.equal(data.test.images, TF.center_crop(test.images, [64, 64]))
    s = student_settings(exp, data)
    assert (s.augment, s.image_size) == ("imagenet", 64)


def test_presets_give_shapes_ranges_and_per_sample_crops():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 73, 73), dtype=torch.uint8, generator=g)
    out = augment_batch(x, "imagenet", 64, torch.Generator().manual_seed(5))
    assert out.shape == (16, 3, 64, 64) and out.dtype == torch.uint8
    assert torch.equal(out, augment_batch(x, "imagenet", 64, torch.Generator().manual_seed(5)))
    boxes = resized_crop_params(16, 73, 73, torch.Generator().manual_seed(5))
    assert len({tuple(b) for b in boxes.tolist()}) == 16                  # every sample its own crop
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 73).all() and (left + w <= 73).all()
    area = (h * w).float() / 73 ** 2
    assert (area > 0.07).all() and (area <= 1).all()
    assert ((w / h).log().abs() <= np.log(4 / 3) + 0.1).all()
    assert augment_batch(x[:, :, :64, :64], "cifar", 64, g).shape == (16, 3, 64, 64)
    assert torch.equal(augment_batch(x, "none", 64, g), x[:, :, 4:68, 4:68])
    # through the engine's normalisation the values stay finite and in the uint8 range's image
    assert 0 <= int(out.min()) and int(out.max()) <= 255 and out.float().std() > 20


def test_resized_crop_is_torchvisions_crop_resize_and_flip():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (4, 3, 96, 96), dtype=torch.uint8, generator=g)
    same = torch.tensor([[3, 7, 64, 64], [0, 0, 64, 64], [32, 32, 64, 64], [10, 20, 64, 64]])
    flips = torch.tensor([False, True, False, True])
    out = resized_crop_flip(x, same, flips, 64)
    for i, (t, l, h, w) in enumerate(same.tolist()):     # a box of the output size is an exact crop
        ref = TF.crop(x[i], t, l, h, w)
        assert torch.equal(out[i], TF.horizontal_flip(ref) if flips[i] else ref)
    smooth = TF.resize(torch.randint(0, 256, (4, 3, 12, 12), dtype=torch.uint8, generator=g), [96, 96])
    boxes = torch.tensor([[5, 9, 80, 60], [0, 0, 96, 96], [40, 30, 30, 50], [12, 4, 70, 90]])
    out = resized_crop_flip(smooth, boxes, None, 64)
    for i, (t, l, h, w) in enumerate(boxes.tolist()):     # resized boxes: torchvision's resized_crop
        ref = TF.resized_crop(smooth[i], t, l, h, w, [64, 64], antialias=True)
        assert (out[i].float() - ref.float()).abs().mean() < 1.5
    assert random_resized_crop_flip(smooth[:0], 64).shape == (0, 3, 64, 64)


def test_eval_centre_crop_is_deterministic_and_shared_by_every_method():
    from raydistill.distill.engine import TrainContext, TrainSettings, evaluate
    from raydistill.data import ImageSet
    from raydistill.models import build_model
    g = torch.Generator().manual_seed(3)
    data = ImageSet(torch.randint(0, 256, (12, 3, 40, 40), dtype=torch.uint8, generator=g),
                    torch.arange(12) % 3, ["a", "b", "c"])
    assert torch.equal(center_crop(data.images, 32), data.images[:, :, 4:36, 4:36])
    model = build_model("resnet8", 3)
    s = TrainSettings(augment="imagenet", image_size=32)
    accuracies = {evaluate(model, data, [0, 1, 2], s, TrainContext()) for _ in range(2)}
    cropped = ImageSet(center_crop(data.images, 32), data.labels, data.class_names)
    accuracies.add(evaluate(model, cropped, [0, 1, 2], TrainSettings(augment="none"), TrainContext()))
    assert len(accuracies) == 1


def test_image_size_and_augment_defaults_and_errors():
    assert (Experiment().image_size(), Experiment().augment_preset()) == (32, "cifar")
    parquet = Experiment.from_dict({"data": {"source": "parquet", "train_path": "a", "test_path": "b"}})
    assert (parquet.image_size(), parquet.augment_preset()) == (224, "imagenet")
    assert Experiment.from_dict({"data": {"augment": False}}).augment_preset() == "none"   # older configs
    assert Experiment.from_dict({"data": {"augment": True}}).augment_preset() == "cifar"
    assert Experiment.load("cifar10").image_size() == 32 and Experiment.load("cifar10").augment_preset() == "cifar"
    with pytest.raises(ConfigError, match=r"data\.augment: expected one of \['cifar', 'imagenet', 'none'\]"):
        Experiment.from_dict({"data": {"augment": "randaugment"}}).validate()
    with pytest.raises(ConfigError, match=r"data\.image_size: expected an integer side in 8\.\.1024"):
        Experiment.from_dict({"data": {"image_size": 4}}).validate()
    with pytest.raises(ConfigError, match=r"data\.image_size: expected more than 8 pixels for augment cifar"):
        Experiment.from_dict({"data": {"image_size": 8}}).validate()


def test_soft_label_bank_replays_imagenet_crops():
    bank = AugmentationBank.make(6, 3, seed=4, preset="imagenet", size=64, source_size=73)
    assert bank.draws.shape == (6, 3, 5) and bank.params()["preset"] == "imagenet"
    again = AugmentationBank.from_params(bank.params())
    assert torch.equal(again.draws, bank.draws) and again.params() == bank.params()
    x = torch.randint(0, 256, (6, 3, 73, 73), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    index = torch.arange(6)
    out = bank.apply(x, index, torch.full((6,), 1, dtype=torch.long))
    d = bank.draws[:, 1].long()
    assert out.shape == (6, 3, 64, 64)
    assert torch.equal(out, resized_crop_flip(x, d[:, :4], d[:, 4].bool(), 64))
    assert len({tuple(b) for b in bank.draws[:, :, :4].reshape(-1, 4).tolist()}) == 18
    assert torch.equal(bank.subset(torch.tensor([4, 5])).draws, bank.draws[4:])
    # a cifar bank's parameters (and so its cache key) are those of banks made before presets existed
    assert set(AugmentationBank.make(6, 3).params()) == {"samples", "draws", "padding", "flip", "seed"}


def test_resume_compares_resolved_image_size_and_preset():
    from raydistill.workspace import config_changes
    older = Experiment.from_dict({"data": {"augment": True}})          # a run directory from before presets
    assert config_changes(older, Experiment()) == []
    assert config_changes(older, Experiment.from_dict({"data": {"augment": "cifar", "image_size": 32}})) == []
    changed = config_changes(older, Experiment.from_dict({"data": {"image_size": 64}}))
    assert changed == ["data.image_size: 32 -> 64"]
