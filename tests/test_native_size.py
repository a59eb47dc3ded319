"""`raydistill run --local` end to end on real photographs at their native size: Tiny-ImageNet at
64 px and Imagenette at 224 px (a few classes of the shared Parquet tables, original bytes, one
short epoch per grade). Skipped when ../shared is absent."""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import saved_test_accuracy
from raydistill.cli import main
from raydistill.config import Experiment
from raydistill.pipeline.prepare import prepare_data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = pytest.mark.slow   # whole local runs on real photographs (224 px on a CPU)


def few_classes(src: Path, dst: Path, classes: int, per_class: int) -> Path:
    """The first `per_class` rows of each of the first `classes` classes of a shared table, bytes
    unchanged, label names cut to those classes."""
    table = pq.read_table(src)
    keep = table.filter(pc.less(table.column("label"), classes))
    rows = []
    for c in range(classes):
        rows.extend(pc.indices_nonzero(pc.equal(keep.column("label"), c)).to_pylist()[:per_class])
    keep = keep.take(pa.array(sorted(rows)))
    meta = dict(table.schema.metadata)
    meta[b"label_names"] = json.dumps(json.loads(meta[b"label_names"])[:classes]).encode()
    pq.write_table(keep.replace_schema_metadata(meta), dst)
    return dst


def _run_native(tmp_path, name, folder, size, stored, train_per_class, test_per_class, capsys):
    if not (SHARED / folder / "train.parquet").is_file():
        pytest.skip(f"shared data {SHARED / folder} is absent")
    train = few_classes(SHARED / folder / "train.parquet", tmp_path / "train.parquet", 6, train_per_class)
    test = few_classes(SHARED / folder / "test.parquet", tmp_path / "test.parquet", 6, test_per_class)
    overrides = [f"data.train_path={train}", f"data.test_path={test}", "data.limit_per_class=null",
                 "data.val_fraction=0.25", "methods=[ed]", "teachers.epochs=1", "curriculum.grade_epochs=[1,1,1]",
                 "teachers.batch_size=8", "optimizer.batch_size=8", "curriculum.head_widths=16",
                 "teachers.arch=resnet8", "student.arch=resnet8"]
    args = ["run", "--config", name, "--local", "--output", str(tmp_path / "runs")]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    capsys.readouterr()
    exp = Experiment.load(name).with_overrides(overrides + [f"output.dir={tmp_path / 'runs'}"])
    data = prepare_data(exp)
    assert data.train.images.shape[1:] == (3, stored, stored)          # decoded once, with room to crop
    assert data.test.images.shape[1:] == (3, size, size)               # the evaluation view
    run_dir = tmp_path / "runs" / name
    summary = json.loads((run_dir / "summary.json").read_text())
    ed = summary["methods"]["ed"]
    assert [g["classes"] for g in ed["grades"]] == [2, 4, 6]
    assert saved_test_accuracy(run_dir / "checkpoints" / "ed.pt", data) == ed["final_test_acc"]
    return data


def test_tinyimagenet_at_64px(tmp_path, capsys):
    data = _run_native(tmp_path, "tinyimagenet", "tiny-imagenet-200", 64, 64, 12, 5, capsys)
    assert data.num_classes == 6 and len(data.test) == 30


def test_imagenette_at_224px(tmp_path, capsys):
    data = _run_native(tmp_path, "imagenette", "imagenette-224", 224, 256, 8, 3, capsys)
    assert data.train.class_names[0] == "n01440764" and data.num_classes == 6
