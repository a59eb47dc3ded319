"""Tests for raydistill.data: groups, splits, augmentation, every source and its error messages."""
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from raydistill.data import (DataError, ImageSet, channel_stats, groups_from_ratio, load_dataset, make_synthetic,
                             normalize, random_crop_flip, train_val_split, validate_groups)

REAL_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def _png(rng, size=32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _toy(n_per_class=10, classes=3, seed=0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_per_class * classes, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.arange(classes).repeat(n_per_class)
    return ImageSet(images, labels, [f"c{i}" for i in range(classes)])


# --------------------------------------------------------------------------- groups
@pytest.mark.parametrize("c,ratio,sizes", [(100, "1:1:1", [33, 33, 34]), (100, "2:1:1", [50, 25, 25]),
                                           (10, "1:1:1", [3, 3, 4]), (10, [1, 1, 1], [3, 3, 4]), (30, "1", [30])])
def test_groups_from_ratio_sizes(c, ratio, sizes):
    groups = groups_from_ratio(c, ratio)
    assert [len(g) for g in groups] == sizes
    assert sum(groups, []) == list(range(c))


@pytest.mark.parametrize("ratio", ["1:0:1", "1:-1", "a:b", "", "1::1", [1, 0], [1.5, 1], []])
def test_groups_from_ratio_bad(ratio):
    with pytest.raises(DataError, match="ratio"):
        groups_from_ratio(10, ratio)


def test_groups_from_ratio_empty_group():
    with pytest.raises(DataError, match="empty group"):
        groups_from_ratio(2, "1:1:1")


def test_validate_groups():
    assert validate_groups([[0, 2], [1, 3]], 4) == [[0, 2], [1, 3]]
    cases = {"group 1 repeats class 1": [[0, 1], [1, 2, 3]], "group 1 contains class id 9": [[0, 1, 2, 3], [9]],
             "group 1 is empty": [[0, 1, 2, 3], []], "cover": [[0, 1], [2]]}
    for msg, groups in cases.items():
        with pytest.raises(DataError, match=msg):
            validate_groups(groups, 4)


def test_one_class_groups_are_rejected_by_name():
    with pytest.raises(DataError, match=r"group 1 \[2\]: expected at least 2 classes per group \(a one-class"):
        validate_groups([[0, 1], [2], [3, 4]], 5)
    with pytest.raises(DataError, match=r"group 0 \[0\], group 1 \[1\]: expected at least 2 classes"):
        groups_from_ratio(4, "1:1:2")


# --------------------------------------------------------------------------- imageset helpers
def test_train_val_split_stratified_deterministic():
    ds = _toy(n_per_class=10, classes=3)
    tr, va = train_val_split(ds, 0.2, seed=1)
    assert len(tr) == 24 and len(va) == 6
    assert torch.bincount(va.labels, minlength=3).tolist() == [2, 2, 2]
    tr2, va2 = train_val_split(ds, 0.2, seed=1)
    assert torch.equal(va.images, va2.images) and torch.equal(tr.labels, tr2.labels)
    flat = lambda s: {bytes(x.numpy().tobytes()) for x in s.images}  # noqa: E731
    assert not flat(tr) & flat(va) and len(flat(tr) | flat(va)) == 30
    _, va3 = train_val_split(ds, 0.2, seed=2)
    assert not torch.equal(va.images, va3.images)
    tr0, va0 = train_val_split(ds, 0.0, seed=1)
    assert len(tr0) == 30 and len(va0) == 0 and va0.images.shape[1:] == (3, 8, 8)
    with pytest.raises(DataError):
        train_val_split(ds, 1.0, seed=0)


def test_subset_of_classes_and_stats():
    ds = _toy()
    sub = ds.of_classes([0, 2])
    assert len(sub) == 20 and set(sub.labels.tolist()) == {0, 2} and sub.num_classes == 3
    mean, std = channel_stats(ds.images, chunk=7)
    x = ds.images.double() / 255
    assert np.allclose(mean, x.mean(dim=(0, 2, 3)).tolist(), atol=1e-6)
    assert np.allclose(std, x.std(dim=(0, 2, 3), unbiased=False).tolist(), atol=1e-6)
    z = normalize(ds.images, mean, std)
    assert z.dtype == torch.float32 and z.shape == ds.images.shape
    assert abs(z.mean().item()) < 1e-4


# --------------------------------------------------------------------------- augmentation
def test_random_crop_flip():
    ds = _toy(n_per_class=20)
    x = ds.images
    assert torch.equal(random_crop_flip(x, padding=0, flip=False), x)
    out = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == torch.uint8
    again = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    # replay the generator's draws and compare every sample with a manual slice of the padded image
    g = torch.Generator().manual_seed(3)
    offs = torch.randint(0, 9, (2, len(x)), generator=g)
    flips = torch.rand(len(x), generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    assert flips.any() and not flips.all()
    for i in range(len(x)):
        oy, ox = int(offs[0, i]), int(offs[1, i])
        ref = padded[i, :, oy:oy + 8, ox:ox + 8]
        if flips[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    only_flip = random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(o, s) or torch.equal(o, s.flip(-1)) for o, s in zip(only_flip, x))


# --------------------------------------------------------------------------- sources
def test_builtin():
    tr, te = load_dataset("builtin", num_classes=30, train_per_class=20, test_per_class=5, seed=0)
    assert len(tr) == 600 and len(te) == 150 and tr.num_classes == 30
    assert tr.images.shape == (600, 3, 32, 32) and tr.images.dtype == torch.uint8 and tr.images.is_contiguous()
    assert tr.labels.dtype == torch.int64 and int(tr.labels.min()) == 0 and int(tr.labels.max()) == 29
    assert tr.class_names[7] == "synthetic_07"
    tr2, _ = make_synthetic(num_classes=30, train_per_class=20, test_per_class=5, seed=0)
    assert torch.equal(tr.images, tr2.images)
    tr3, _ = make_synthetic(num_classes=30, train_per_class=20, test_per_class=5, seed=1)
    assert not torch.equal(tr.images, tr3.images)
    lim, _ = load_dataset("builtin", train_per_class=20, test_per_class=5, limit_per_class=3)
    assert torch.bincount(lim.labels).tolist() == [3] * 30


def test_unknown_source():
    with pytest.raises(DataError, match="imagefolder"):
        load_dataset("mnist")


def test_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                size = 40 if i == 0 else 32   # one image needs resizing
                (d / f"{i}.png").write_bytes(_png(rng, size))
    tr, te = load_dataset("imagefolder", root=tmp_path, size=32)
    assert tr.class_names == ["cat", "dog"] and len(tr) == 6 and len(te) == 4
    assert tr.images.shape == (6, 3, 32, 32) and tr.labels.tolist() == [0, 0, 0, 1, 1, 1]
    ref = np.array(Image.open(tmp_path / "train" / "cat" / "1.png").convert("RGB"))
    assert torch.equal(tr.images[1], torch.from_numpy(ref).permute(2, 0, 1))
    lim, _ = load_dataset("imagefolder", root=tmp_path, limit_per_class=1, size=32)
    assert len(lim) == 2
    (tmp_path / "test" / "bird").mkdir()
    (tmp_path / "test" / "bird" / "0.png").write_bytes(_png(rng))
    with pytest.raises(DataError, match="different classes"):
        load_dataset("imagefolder", root=tmp_path)


def _write_parquet(path, blobs, labels, names=("zero", "one", "two"), metadata=True):
    img = pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array([f"{i}.png" for i in range(len(blobs))])],
                                     names=["bytes", "path"])
    table = pa.table({"img": img, "label": pa.array(labels, pa.int64())})
    if metadata:
        table = table.replace_schema_metadata({"label_names": json.dumps(list(names))})
    pq.write_table(table, path)
    return path


def test_parquet(tmp_path):
    rng = np.random.default_rng(1)
    labels = [0, 1, 2, 0, 1, 2, 0]
    tr_p = _write_parquet(tmp_path / "train.parquet", [_png(rng) for _ in labels], labels)
    te_p = _write_parquet(tmp_path / "test.parquet", [_png(rng) for _ in range(3)], [2, 1, 0])
    tr, te = load_dataset("parquet", train_path=tr_p, test_path=te_p, size=32)
    assert tr.class_names == ["zero", "one", "two"] and len(tr) == 7 and len(te) == 3
    assert tr.labels.tolist() == labels and tr.images.shape == (7, 3, 32, 32)
    first = pq.read_table(tr_p).column("img")[0]["bytes"].as_py()
    assert torch.equal(tr.images[0], torch.from_numpy(np.array(Image.open(io.BytesIO(first)))).permute(2, 0, 1))
    lim, _ = load_dataset("parquet", train_path=tr_p, test_path=te_p, limit_per_class=1, size=32)
    assert lim.labels.tolist() == [0, 1, 2]
    assert torch.equal(lim.images, tr.images[:3])
    # no metadata -> str(i) names
    bare = _write_parquet(tmp_path / "bare.parquet", [_png(rng) for _ in range(2)], [0, 3], metadata=False)
    tr2, _ = load_dataset("parquet", train_path=bare, test_path=bare)
    assert tr2.class_names == ["0", "1", "2", "3"]


def test_parquet_errors(tmp_path):
    rng = np.random.default_rng(2)
    good = _write_parquet(tmp_path / "good.parquet", [_png(rng)] * 3, [0, 1, 2])
    with pytest.raises(DataError, match="missing.parquet"):
        load_dataset("parquet", train_path=tmp_path / "missing.parquet", test_path=good)
    pq.write_table(pa.table({"image": [b"x"], "label": [0]}), tmp_path / "cols.parquet")
    with pytest.raises(DataError, match=r"cols\.parquet.*img\.bytes.*label"):
        load_dataset("parquet", train_path=tmp_path / "cols.parquet", test_path=good)
    garbage = _write_parquet(tmp_path / "garbage.parquet", [_png(rng), _png(rng), b"not an image"], [0, 1, 2])
    with pytest.raises(DataError, match=r"garbage\.parquet.*row 2"):
        load_dataset("parquet", train_path=garbage, test_path=good)
    oor = _write_parquet(tmp_path / "oor.parquet", [_png(rng)] * 3, [0, 5, 1])
    with pytest.raises(DataError, match=r"oor\.parquet.*row 1.*label 5"):
        load_dataset("parquet", train_path=good, test_path=oor)
    neg = _write_parquet(tmp_path / "neg.parquet", [_png(rng)] * 2, [0, -1], metadata=False)
    with pytest.raises(DataError, match=r"neg\.parquet.*row 1"):
        load_dataset("parquet", train_path=neg, test_path=good)


def _fake_cifar10(root: Path, rng, per_batch=4):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in files:
        entry = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist()}
        (d / name).write_bytes(pickle.dumps(entry))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return d


def test_cifar10_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    with pytest.raises(DataError, match="download: true"):
        load_dataset("cifar10", root=tmp_path / "nothing")
    d = _fake_cifar10(tmp_path, np.random.default_rng(3))
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)   # fake files fail the md5 check
    tr, te = load_dataset("cifar10", root=tmp_path)
    assert len(tr) == 20 and len(te) == 4 and tr.num_classes == 10 and tr.class_names[0] == "airplane"
    raw = pickle.loads((d / "data_batch_1").read_bytes())
    assert torch.equal(tr.images[0], torch.from_numpy(raw["data"][0].reshape(3, 32, 32)))
    assert tr.labels[:4].tolist() == raw["labels"]


@pytest.mark.skipif(not REAL_CIFAR.is_dir(), reason=f"real CIFAR-10 parquet folder {REAL_CIFAR} is absent")
def test_real_cifar10_parquet():
    tr, te = load_dataset("parquet", train_path=REAL_CIFAR / "train.parquet", test_path=REAL_CIFAR / "test.parquet",
                          limit_per_class=5, num_classes=10, size=32)
    assert tr.num_classes == 10 and tr.class_names[0] == "airplane" and tr.class_names[-1] == "truck"
    assert torch.bincount(tr.labels).tolist() == [5] * 10
    assert len(te) == 10000 and te.images.shape == (10000, 3, 32, 32)
    assert 60 < tr.images.float().mean() < 190
