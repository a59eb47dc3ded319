"""Image size and augmentation presets: decoding keeps the pixels the crops need, the presets give
the right shapes, value ranges and per-sample crops, evaluation is the same centre crop for all."""
import io
from dataclasses import replace

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
    from raydistill.pipeline.prepare import prepare_data, student_settings
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


class _CentreReader(torch.nn.Module):
    """Predicts from the mean brightness of whatever it is given: class 1 above mid-grey. On
    `_ring_images` it is right on the centre 32 x 32 crop and wrong on anything else, and it
    records the input sides it saw."""

    def __init__(self):
        super().__init__()
        self.arch, self.seen = "centre-reader", []
        self.register_buffer("class_ids", torch.arange(2))
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        m = x.float().mean((1, 2, 3))
        return torch.stack([-m, m], 1) * self.weight


def _ring_images(side: int, n: int = 8):
    """uint8 images of `side` px whose centre 32 x 32 says their class (class 0: 100, below
    mid-grey; class 1: 160, above) and whose ring around it says the
    other (255 around class 0, 0 around class 1): any view but the centre crop flips the mean."""
    labels = torch.arange(n) % 2
    images = torch.where(labels.view(-1, 1, 1, 1) == 1, 0, 255).to(torch.uint8).expand(n, 3, side, side).clone()
    top = int(round((side - 32) / 2.0))         # where torchvision's center_crop starts
    images[:, :, top:top + 32, top:top + 32] = torch.where(labels == 1, 160, 100).to(torch.uint8).view(-1, 1, 1, 1)
    return images, labels


def test_eval_centre_crop_is_deterministic_and_shared_by_every_method():
    """`evaluate` sees the centre image_size crop of larger stored images, every time: with a model
    that reads the centre, the accuracy is 1 on that view and 0 on the uncropped (or a shifted) one."""
    from raydistill.distill.engine import TrainContext, TrainSettings, evaluate
    from raydistill.data import ImageSet
    g = torch.Generator().manual_seed(3)
    noise = torch.randint(0, 256, (12, 3, 40, 40), dtype=torch.uint8, generator=g)
    assert torch.equal(center_crop(noise, 32), noise[:, :, 4:36, 4:36])
    images, labels = _ring_images(40)
    data = ImageSet(images, labels, ["a", "b"])
    model = _CentreReader()
    s = TrainSettings(augment="imagenet", image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert [evaluate(model, data, [0, 1], s, TrainContext(channels_last=False)) for _ in range(2)] == [1.0, 1.0]
    assert set(model.seen) == {(32, 32)}
    cropped = ImageSet(center_crop(data.images, 32), data.labels, data.class_names)
    assert evaluate(model, cropped, [0, 1], replace(s, image_size=None), TrainContext(channels_last=False)) == 1.0
    # the same model on the uncropped view, or on a crop 4 px off centre, gets every image wrong
    assert evaluate(model, data, [0, 1], replace(s, image_size=None), TrainContext(channels_last=False)) == 0.0
    shifted = ImageSet(data.images[:, :, :32, :32].contiguous(), data.labels, data.class_names)
    assert evaluate(model, shifted, [0, 1], replace(s, image_size=None), TrainContext(channels_last=False)) < 1.0


def test_streamed_teacher_accuracy_is_on_the_centre_crop(monkeypatch, tmp_path):
    """The teacher accuracy `pipeline.stages.teacher_stage` reports on a streamed test split (images arrive
    as decoded: 37 px for image_size 32 with the imagenet preset) is on the same centre crop as the
    engine's `evaluate`, not on the uncropped images."""
    import numpy as np
    from raydistill.pipeline import stages as runner
    from raydistill.data.stream import StreamSplit
    from raydistill.teachers import FrozenTeacher
    from raydistill.pipeline.prepare import PreparedData
    side = decoded_size(32, "imagenet")
    assert side == 37
    images, labels = _ring_images(side)
    test = StreamSplit("test", "unused.parquet", np.zeros(len(labels), dtype=np.uint64), labels, ["a", "b"], side)
    monkeypatch.setattr(StreamSplit, "eval_batches", lambda self, batch_size: iter([(images, labels)]))
    model = _CentreReader()
    monkeypatch.setattr(runner, "load_teacher", lambda *a, **k: FrozenTeacher(
        model, (0.5,) * 3, (0.5,) * 3, fold_bn=False, channels_last=False))
    exp = Experiment.from_dict({"data": {"image_size": 32, "augment": "imagenet", "ratio": "1:1"},
                                "teachers": {"checkpoints": {"all": str(tmp_path / "unused.pt")}}})
    data = PreparedData(test, test, test, [[0], [1]], [0.5] * 3, [0.5] * 3)
    _, info = runner.teacher_stage(exp, data, None, "all", "cpu", lambda _m: None, write=False)
    assert set(model.seen) == {(32, 32)}
    assert info["test_acc"] == 1.0


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
    from raydistill.pipeline.prepare import config_changes
    older = Experiment.from_dict({"data": {"augment": True}})          # a run directory from before presets
    assert config_changes(older, Experiment()) == []
    assert config_changes(older, Experiment.from_dict({"data": {"augment": "cifar", "image_size": 32}})) == []
    changed = config_changes(older, Experiment.from_dict({"data": {"image_size": 64}}))
    assert changed == ["data.image_size: 32 -> 64"]
