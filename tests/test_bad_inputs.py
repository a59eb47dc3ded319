"""The bad-input catalogue (issue #8, part 1): every malformed input fails in the pre-flight path
(`Experiment.validate`, `workspace.prepare_data`, `workspace.check_output_dir`, `load_teacher`, or the
CLI, which maps these errors to exit code 2) with ONE message naming the field, file or row and what
was expected. Nothing here trains or starts Ray.

Elsewhere: an unreachable dashboard for `submit` (tests/test_jobs.py), invalid search spaces
(tests/test_tune.py), a non-finite loss mid-run (tests/test_distributed.py).
"""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import tiny_experiment
from raydistill.cli import main
from raydistill.config import ConfigError, Experiment
from raydistill.data import DataError
from raydistill.models import build_model
from raydistill.teachers import TeacherError, load_teacher, save_teacher
from raydistill.pipeline.prepare import check_output_dir, prepare_data


def _exp(tmp_path, **overrides) -> Experiment:
    """The tiny builtin experiment, shrunk further (20 train images per class) so prepare_data is instant."""
    small = {"data.train_per_class": 20, "data.test_per_class": 5, "optimizer.batch_size": 8,
             "teachers.batch_size": 8}
    return tiny_experiment(tmp_path / "runs", **{**small, **overrides})


def _invalid(tmp_path, match, **overrides):
    with pytest.raises(ConfigError, match=match):
        _exp(tmp_path, **overrides).validate()


# ---------------------------------------------------------------- config files and fields
def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndata: {source: builtin\n  ratio: [1, 2\n")
    with pytest.raises(ConfigError, match=r"config file .*broken\.yaml: not valid YAML"):
        Experiment.from_yaml(path)


def test_unknown_key_names_the_dotted_path(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("curriculum:\n  temprature: 2\n")
    with pytest.raises(ConfigError, match=r"curriculum\.temprature: unknown field \(valid in curriculum: .*temperature"):
        Experiment.from_yaml(path)
    with pytest.raises(ConfigError, match=r"unknown field data\.ratoi"):
        _exp(tmp_path).with_overrides(["data.ratoi=1:1"])


def test_wrong_type(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("optimizer:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"optimizer\.lr: expected float, got 'fast'"):
        Experiment.from_yaml(path)
    with pytest.raises(ConfigError, match=r"teachers\.epochs: expected int, got 'ten'"):
        _exp(tmp_path, **{"teachers.epochs": "ten"})


@pytest.mark.parametrize("epochs", [0, -3])
def test_teacher_epochs_not_positive(tmp_path, epochs):
    _invalid(tmp_path, rf"teachers\.epochs: expected a positive integer, got {epochs}", **{"teachers.epochs": epochs})


def test_grade_epochs_not_positive(tmp_path):
    # an early grade may have 0 epochs (no such fragment grade); the complete student's may not
    _invalid(tmp_path, r"curriculum\.grade_epochs\[2\]: expected a positive integer \(the complete student's grade\), "
             r"got 0", **{"curriculum.grade_epochs": "[2, 2, 0]"})
    _invalid(tmp_path, r"curriculum\.grade_epochs\[1\]: expected a non-negative integer", **{"curriculum.grade_epochs": "[2, -1, 2]"})


def test_splits_out_of_range(tmp_path):
    _invalid(tmp_path, r"curriculum\.splits\[2\]: expected a block index in 1\.\.3 \(resnet8 has 3 blocks\), got 5",
             **{"curriculum.splits": "[1, 2, 5]"})


def test_splits_not_increasing(tmp_path):
    _invalid(tmp_path, r"curriculum\.splits: expected strictly increasing, got \[2, 1, 3\]",
             **{"curriculum.splits": "[2, 1, 3]"})


def test_stage_mode_and_teacher_workers(tmp_path):
    _invalid(tmp_path, r"ray\.stages: expected one of \['sequential', 'concurrent', 'auto'\], got 'parallel'",
             **{"ray.stages": "parallel"})
    _invalid(tmp_path, r"ray\.teacher_workers: expected a positive integer, got 0", **{"ray.teacher_workers": 0})


def test_splits_wrong_count(tmp_path):
    _invalid(tmp_path, r"curriculum\.splits: expected 3 split points \(one per grade\), got \[1, 3\]",
             **{"curriculum.splits": "[1, 3]"})


def test_ratio_term_count_must_match_grades(tmp_path):
    # the number of groups comes from the ratio: 2 terms but 3 splits / grade epochs
    _invalid(tmp_path, r"curriculum\.splits: expected 2 split points", **{"data.ratio": "1:1"})


@pytest.mark.parametrize("ratio", ["1:0:1", "1:-1:1"])
def test_ratio_term_not_positive(tmp_path, ratio):
    _invalid(tmp_path, r"data\.ratio: expected positive integers like 1:1:1", **{"data.ratio": ratio})


def test_ratio_unparsable(tmp_path):
    _invalid(tmp_path, r"data\.ratio: expected integers separated by ':' like 1:1:1, got 'one:two:three'",
             **{"data.ratio": "one:two:three"})


def test_order_not_a_permutation(tmp_path):
    _invalid(tmp_path, r"curriculum\.order: expected a permutation of \[0, 1, 2\], got \[0, 0, 2\]",
             **{"curriculum.order": "[0, 0, 2]"})


def test_unknown_method(tmp_path):
    _invalid(tmp_path, r"methods: expected each one of \['ed', 'scratch', 'kd', 'multi_teacher'\], or method\+loss "
             r"with a loss in \['kd', 'dkd', 'lskd'\] \(e\.g\. ed\+dkd\), got 'distill'", methods="[ed, distill]")


def test_unknown_loss(tmp_path):
    _invalid(tmp_path, r"distill\.loss: expected one of \['kd', 'dkd', 'lskd'\], got 'hinton'", **{"distill.loss": "hinton"})
    _invalid(tmp_path, r"methods: expected each one of .* got 'ed\+hinton'", methods="[ed+hinton]")


@pytest.mark.parametrize("field, value, expected", [
    ("dkd.beta", -1, "a non-negative number"), ("dkd.alpha", -0.5, "a non-negative number"),
    ("dkd.warmup", -2, "a non-negative integer"), ("lskd.temperature", 0, "a positive number or null"),
    ("kd.temperature", -4, "a positive number or null")])
def test_bad_loss_parameter(tmp_path, field, value, expected):
    _invalid(tmp_path, rf"distill\.{field}: expected {expected}.*got {float(value) if field != 'dkd.warmup' else value}",
             **{f"distill.{field}": value})


def test_loss_on_scratch_or_twice(tmp_path):
    _invalid(tmp_path, r"methods: expected scratch without a loss \(it trains with CE only\), got 'scratch\+dkd'",
             methods="[scratch+dkd]")
    _invalid(tmp_path, r"methods: expected no duplicates \(an entry without \+loss uses distill\.loss: kd\), "
             r"got \['ed', 'ed\+kd'\]", methods="[ed, ed+kd]")


def test_dkd_with_topk_soft_labels(tmp_path):
    """DKD's target-class term needs the teacher's exact target logit, which top-k may not hold."""
    _invalid(tmp_path, r"teachers\.cache_format: expected float16 when a method distils with dkd \(ed\+dkd\): .*"
             r"got 'topk'", methods="[ed+dkd]", **{"teachers.soft_labels": "cache", "teachers.cache_format": "topk"})
    _exp(tmp_path, methods="[ed+lskd]", **{"teachers.soft_labels": "cache"}).validate()   # float16: every logit


_TOPK = {"teachers.soft_labels": "cache", "teachers.cache_format": "topk"}


def test_topk_soft_labels_refused_for_every_loss_not_run_at_the_cache_temperature(tmp_path):
    """A top-k cache is exact (in softmax mass) at curriculum.temperature on raw logits only, so
    lskd (z-scored logits at its own temperature) and kd at another temperature are refused, in one
    error naming teachers.cache_format and the loss; kd at the cache's temperature is served."""
    _invalid(tmp_path, r"teachers\.cache_format: expected float16 when a method distils with lskd "
             r"\(ed\+lskd\): LSKD z-scores .*got 'topk'", methods="[ed+lskd]", **_TOPK)
    _invalid(tmp_path, r"teachers\.cache_format: expected float16 when a method distils with lskd \(kd\): .*got 'topk'",
             methods="[kd, scratch]", **{"distill.loss": "lskd", **_TOPK})
    _invalid(tmp_path, r"teachers\.cache_format: expected float16 when a method distils with kd \(ed, kd\): "
             r"distill\.kd\.temperature 2\.0 is not curriculum\.temperature 4\.0.*got 'topk'",
             methods="[ed, kd, scratch]", **{"distill.kd.temperature": 2, **_TOPK})
    # every offending loss in the one message
    _invalid(tmp_path, r"with dkd \(ed\+dkd\): .*; float16 when a method distils with lskd \(multi_teacher\+lskd\)",
             methods="[ed+dkd, multi_teacher+lskd, kd]", **_TOPK)
    for ok in ({}, {"distill.kd.temperature": 4}, {"distill.kd.temperature": 2, "curriculum.temperature": 2}):
        _exp(tmp_path, methods="[ed, kd, scratch]", **{**ok, **_TOPK}).validate()
    _exp(tmp_path, methods="[scratch]", **{"distill.loss": "lskd", **_TOPK}).validate()   # scratch reads no labels


def test_topk_soft_labels_with_lskd_refused_by_the_cli_before_any_work(tmp_path, capsys):
    """`raydistill run` stops in its config check (exit 2, one line), before data, Ray or a run directory."""
    import ray
    rc = main(["run", "--output", str(tmp_path / "runs"), "--methods", "ed+lskd", "--soft-labels", "cache",
               "--set", "teachers.cache_format=topk"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("raydistill: error: teachers.cache_format: expected float16 when a method "
                                      "distils with lskd (ed+lskd)")
    assert len(err.strip().splitlines()) == 1
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()


def test_val_fraction_one(tmp_path):
    _invalid(tmp_path, r"data\.val_fraction: expected a number in \[0, 1\), got 1\.0", **{"data.val_fraction": 1.0})


# ---------------------------------------------------------------- class groups (need the class count: prepare_data)
def test_ratio_with_too_few_classes(tmp_path):
    exp = _exp(tmp_path, **{"data.ratio": "4:4", "curriculum.splits": "[1, 3]", "curriculum.grade_epochs": "[2, 2]"})
    exp.validate()
    with pytest.raises(DataError, match=r"data\.ratio: group ratio '4:4' with 6 classes gives an empty group"):
        prepare_data(exp)


@pytest.mark.parametrize("groups, match", [
    ("[[0, 1], [1, 2, 3], [4, 5]]", r"data\.groups: group 1 repeats class 1, already in group 0; groups must be disjoint"),
    ("[[0, 1], [2, 3], [4, 9]]", r"data\.groups: group 2 contains class id 9, outside 0\.\.5"),
    ("[[0, 1, 2], [], [3, 4, 5]]", r"data\.groups: group 1 is empty; every group needs at least one class"),
    ("[[0, 1], [2, 3], [4]]", r"data\.groups: groups do not cover classes \[5\]; together they must cover 0\.\.5"),
])
def test_explicit_groups(tmp_path, groups, match):
    exp = _exp(tmp_path, **{"data.groups": groups}).validate()
    with pytest.raises(DataError, match=match):
        prepare_data(exp)


def test_one_class_group_is_named(tmp_path):
    exp = _exp(tmp_path, **{"data.groups": "[[0, 1, 2], [3], [4, 5]]"}).validate()
    with pytest.raises(DataError, match=r"data\.groups: group 1 \[3\]: expected at least 2 classes per group"):
        prepare_data(exp)


def test_yaml_with_a_duplicated_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: x\noptimizer:\n  lr: 0.1\n  batch_size: 8\n  lr: 0.5\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: not valid YAML at line 5, column 3: duplicate key 'lr' "
                                          r"\(first at line 3\)"):
        Experiment.from_yaml(path)


@pytest.mark.parametrize("field", ["optimizer.batch_size", "teachers.batch_size"])
def test_batch_size_larger_than_a_group(tmp_path, field):
    # 6 classes x 20, 10% held out, groups of 2 classes: ~36 training samples per group
    exp = _exp(tmp_path, **{field: 100}).validate()
    with pytest.raises(ConfigError, match=rf"{field}: expected at most \d+ \(the training samples in class group 0"):
        prepare_data(exp)


# ---------------------------------------------------------------- datasets
def _png(rng) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path, blobs, labels, names=("a", "b", "c")):
    img = pa.StructArray.from_arrays([pa.array(blobs, pa.binary())], names=["bytes"])
    table = pa.table({"img": img, "label": pa.array(labels, pa.int64())})
    pq.write_table(table.replace_schema_metadata({"label_names": json.dumps(list(names))}), path)
    return path


def _parquet_exp(tmp_path, train, test):
    return _exp(tmp_path, **{"data.source": "parquet", "data.train_path": str(train), "data.test_path": str(test),
                             "optimizer.batch_size": 2, "teachers.batch_size": 2,
                             "data.val_fraction": 0.0}).validate()


@pytest.fixture
def good_parquet(tmp_path):
    rng = np.random.default_rng(0)
    return _parquet(tmp_path / "good.parquet", [_png(rng) for _ in range(6)], [0, 1, 2, 0, 1, 2])


def test_empty_parquet_table_has_no_rows(tmp_path, good_parquet):
    empty = _parquet(tmp_path / "empty.parquet", [], [])
    exp = _parquet_exp(tmp_path, empty, good_parquet)
    with pytest.raises(DataError, match=r"empty\.parquet' has no rows; expected at least one image per class"):
        prepare_data(exp)


def test_missing_parquet_file(tmp_path, good_parquet):
    exp = _parquet_exp(tmp_path, tmp_path / "missing.parquet", good_parquet)
    with pytest.raises(DataError, match=r"parquet file '.*missing\.parquet' does not exist; expected an existing"):
        prepare_data(exp)


def test_parquet_without_expected_columns(tmp_path, good_parquet):
    pq.write_table(pa.table({"image": [b"x"], "target": [0]}), tmp_path / "cols.parquet")
    exp = _parquet_exp(tmp_path, tmp_path / "cols.parquet", good_parquet)
    with pytest.raises(DataError, match=r"cols\.parquet' lacks the expected columns `img\.bytes` .* and `label`; "
                                        r"found columns \['image', 'target'\]"):
        prepare_data(exp)


def test_undecodable_image_bytes_names_the_row(tmp_path, good_parquet):
    rng = np.random.default_rng(1)
    bad = _parquet(tmp_path / "garbage.parquet", [_png(rng), _png(rng), b"not an image", _png(rng)], [0, 1, 2, 0])
    exp = _parquet_exp(tmp_path, bad, good_parquet)
    with pytest.raises(DataError, match=r"garbage\.parquet' row 2: cannot decode image bytes"):
        prepare_data(exp)


def test_label_out_of_range_names_the_row(tmp_path, good_parquet):
    rng = np.random.default_rng(2)
    oor = _parquet(tmp_path / "oor.parquet", [_png(rng) for _ in range(4)], [0, 1, 7, 2])
    exp = _parquet_exp(tmp_path, good_parquet, oor)
    with pytest.raises(DataError, match=r"oor\.parquet' row 2: label 7 out of range, expected 0\.\.2"):
        prepare_data(exp)


def test_missing_cifar_root(tmp_path):
    exp = _exp(tmp_path, **{"data.source": "cifar10", "data.root": str(tmp_path / "nothing")}).validate()
    with pytest.raises(DataError, match=r"cifar10: dataset not found or corrupted under root '.*nothing' "
                                        r"\(expected cifar-10-batches-py/ there\)"):
        prepare_data(exp)


def test_cifar_without_root(tmp_path):
    _invalid(tmp_path, r"data\.root: expected a directory for source cifar10, got None", **{"data.source": "cifar10"})


# ---------------------------------------------------------------- output directory
def test_output_dir_under_a_regular_file(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    exp = tiny_experiment(blocker / "runs").validate()
    with pytest.raises(ConfigError, match=r"output\.dir: cannot create run directory .*a_file/runs/tiny"):
        check_output_dir(exp)


# ---------------------------------------------------------------- cache directories
@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("field, under, expected", [
    ("data.cache_dir", "", "{root} is a file, expected a directory"),
    ("data.cache_dir", "cache", "{root}/cache lies under {root}, which is a file, not a directory"),
    ("teachers.cache_dir", "", "{root} is a file, expected a directory"),
    ("output.dir", "runs", "{root}/runs lies under {root}, which is a file, not a directory"),
])
def test_cache_dir_that_cannot_be_one_is_named_before_any_work(tmp_path, capsys, monkeypatch, good_parquet,
                                                             command, field, under, expected):
    """A cache root that is a file, or lies under one (data.cache_dir: the decoded shards of this
    parquet source; teachers.cache_dir: soft labels; output.dir, under which both default): one line
    naming the field from `validate` and from `run`, before the data is decoded or Ray started —
    not a FileExistsError traceback from the first cache lock."""
    _no_ray(monkeypatch)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    path = tmp_path / "exp.yaml"
    path.write_text(_parquet_exp(tmp_path, good_parquet, good_parquet).to_yaml())
    target = blocker / under if under else blocker
    err = _cli(capsys, command, "--config", str(path), "--set", f"{field}={target}")
    assert f"{field}: {expected.format(root=blocker)}" in err
    assert not (tmp_path / "runs").exists() and blocker.read_text() == "not a directory"


def _read_only_cli(tmp_path, read_only, *argv):
    """`raydistill *argv` in a subprocess that sees directory `read_only` on a read-only mount (its
    own mount namespace: `unshare -m`), so even root cannot write there; (exit code, stderr)."""
    import os
    import shutil
    import subprocess
    import sys
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a read-only mount")
    ro = str(read_only)
    cli = " ".join(f"'{a}'" for a in [sys.executable, "-m", "raydistill.cli", *argv])
    script = f"mount --bind '{ro}' '{ro}' && mount -o remount,bind,ro '{ro}' && exec {cli}"
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"})
    if proc.returncode != 2 and "mount" in proc.stderr and "raydistill" not in proc.stderr:
        pytest.skip(f"cannot make a read-only mount here: {proc.stderr.strip()}")
    return proc.returncode, proc.stderr


def test_cache_dir_that_cannot_be_created_is_named_before_any_work(tmp_path, good_parquet):
    """data.cache_dir to be made inside a read-only directory: one line naming data.cache_dir (exit 2),
    not a PermissionError/OSError traceback from the decoded-shard lock."""
    locked = tmp_path / "locked"
    locked.mkdir()
    path = tmp_path / "exp.yaml"
    path.write_text(_parquet_exp(tmp_path, good_parquet, good_parquet).to_yaml())
    code, err = _read_only_cli(tmp_path, locked, "validate", "--config", str(path),
                               "--set", f"data.cache_dir={locked / 'cache'}")
    assert code == 2 and err.count("\n") == 1, err
    assert f"raydistill: error: data.cache_dir: cannot create {locked / 'cache'}: {locked} is not writable" in err


def test_read_only_cache_dir_without_the_cache_is_one_line(tmp_path, good_parquet):
    """An existing read-only data.cache_dir may hold complete caches (read without a lock), so it is
    accepted up front; when the cache is missing and has to be built there, the lock says so in one
    line naming the directory (exit 2), not an OSError traceback."""
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    path = tmp_path / "exp.yaml"
    path.write_text(_parquet_exp(tmp_path, good_parquet, good_parquet).to_yaml())
    code, err = _read_only_cli(tmp_path, shared, "validate", "--config", str(path),
                               "--set", f"data.cache_dir={shared}")
    assert code == 2 and err.count("\n") == 1, err
    assert f"raydistill: error: cache directory {shared}: cannot build cache " in err
    assert "Read-only file system" in err


# ---------------------------------------------------------------- teacher checkpoints
def _teacher(path, arch="resnet8", classes=2):
    save_teacher(path, build_model(arch, classes), mean=[0.5] * 3, std=[0.25] * 3)
    return path


def test_teacher_for_the_wrong_classes(tmp_path):
    path = _teacher(tmp_path / "t.pt", classes=2)
    with pytest.raises(TeacherError, match=r"t\.pt: trained for 2 classes \[0, 1\], expected 3 classes \[0, 1, 2\]"):
        load_teacher(path, [0, 1, 2])


def test_teacher_of_the_wrong_architecture(tmp_path):
    path = _teacher(tmp_path / "t.pt", arch="resnet20")
    with pytest.raises(TeacherError, match=r"t\.pt: architecture 'resnet20', expected 'resnet8'"):
        load_teacher(path, [0, 1], expected_arch="resnet8")


def test_teacher_weights_of_another_architecture(tmp_path):
    path = _teacher(tmp_path / "t.pt", arch="resnet20")
    ckpt = torch.load(path, weights_only=True)
    ckpt["arch"] = "resnet8"  # header says resnet8, weights are resnet20's
    torch.save(ckpt, path)
    with pytest.raises(TeacherError, match=r"t\.pt: weights do not fit resnet8 with 2 classes"):
        load_teacher(path, [0, 1])


def test_truncated_teacher_checkpoint(tmp_path):
    path = _teacher(tmp_path / "t.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(TeacherError, match=r"t\.pt: cannot be read, expected a file written by save_teacher"):
        load_teacher(path, [0, 1])


class _Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_teacher_checkpoint_holding_code_is_refused_in_one_line(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"arch": "resnet8", "payload": _Payload()}, path)   # a pickled instance of a class: code
    with pytest.raises(TeacherError) as err:
        load_teacher(path, [0, 1])
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)
    assert "t.pt: holds Python objects beyond tensors and plain values (pickled code), refused" in str(err.value)


def test_cli_validate_checks_teacher_checkpoints_like_run(tmp_path, capsys):
    """`validate` rejects a teachers.checkpoints file that `run` would reject (here: wrong classes)."""
    path = tmp_path / "exp.yaml"
    teacher = _teacher(tmp_path / "t.pt", classes=3)      # group0 of the tiny set has 2 classes
    path.write_text(_exp(tmp_path).with_overrides([f"teachers.checkpoints={{group0: {teacher}}}"]).to_yaml())
    err = _cli(capsys, "validate", "--config", str(path))
    assert "t.pt: trained for 3 classes [0, 1, 2], expected 2 classes [0, 1]" in err


def test_resumed_run_with_a_teacher_of_other_classes_is_refused_before_ray(tmp_path, monkeypatch):
    """A run directory's teachers/group0.pt (reloaded on resume) that serves other classes than the
    run's group 0, or is another architecture, stops the Ray backend before Ray starts."""
    import raydistill.distributed.trainer as trainer

    class Started(Exception):
        pass

    def no_ray(*_a, **_k):
        raise Started
    monkeypatch.setattr(trainer, "init_ray", no_ray)
    exp = _exp(tmp_path)
    with pytest.raises(Started):
        trainer.run_distributed(exp, progress=None)                 # first attempt: the run directory exists
    teachers = tmp_path / "runs" / "tiny" / "teachers"
    model = build_model("resnet8", 2)
    model.class_ids.copy_(torch.tensor([2, 3]))                       # group 1's classes
    save_teacher(teachers / "group0.pt", model, [0.5] * 3, [0.25] * 3)
    with pytest.raises(TeacherError, match=r"group0\.pt: trained for 2 classes \[2, 3\], expected 2 classes \[0, 1\]"):
        trainer.run_distributed(exp, progress=None)
    _teacher(teachers / "group0.pt", arch="resnet20")
    with pytest.raises(TeacherError, match=r"group0\.pt: architecture 'resnet20', expected 'resnet8'"):
        trainer.run_distributed(exp, progress=None)
    (teachers / "group0.pt").unlink()
    with pytest.raises(Started):
        trainer.run_distributed(exp, progress=None)


def test_missing_teacher_checkpoint(tmp_path):
    with pytest.raises(TeacherError, match=r"nope\.pt: file not found"):
        load_teacher(tmp_path / "nope.pt")


# ---------------------------------------------------------------- the command line: exit 2, one message
def _cli(capsys, *argv) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("raydistill: error: ") and err.count("\n") == 1, err  # one line
    return err


def test_cli_missing_config(tmp_path, capsys):
    err = _cli(capsys, "run", "--config", str(tmp_path / "missing.yaml"))
    assert "missing.yaml: not found" in err


def test_cli_set_without_equals(capsys):
    err = _cli(capsys, "run", "--set", "nonsense")
    assert "override 'nonsense': expected KEY=VALUE" in err


def test_cli_bad_yaml(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("data: [unclosed\n")
    err = _cli(capsys, "validate", "--config", str(path))
    assert "broken.yaml: not valid YAML at line 2, column 1: expected ',' or ']'" in err


def test_cli_data_error_before_ray(tmp_path, capsys, monkeypatch):
    """A data problem in `run` (Ray backend) is reported before Ray is started."""
    import raydistill.distributed.trainer as trainer

    def no_ray(*_a, **_k):
        raise AssertionError("Ray was started before the input was checked")

    monkeypatch.setattr(trainer, "init_ray", no_ray)
    path = tmp_path / "exp.yaml"
    path.write_text(_exp(tmp_path).to_yaml())
    err = _cli(capsys, "run", "--config", str(path), "--set", "data.source=parquet",
               "--set", f"data.train_path={tmp_path / 'missing.parquet'}",
               "--set", f"data.test_path={tmp_path / 'missing.parquet'}")
    assert "missing.parquet' does not exist" in err
    assert not (tmp_path / "runs" / "tiny").exists()


def test_cli_invalid_field_exit_code(tmp_path, capsys):
    err = _cli(capsys, "validate", "--set", "teachers.epochs=0")
    assert "teachers.epochs: expected a positive integer, got 0" in err


def test_cli_bad_loss_parameter_before_ray(tmp_path, capsys, monkeypatch):
    _no_ray(monkeypatch)
    err = _cli(capsys, "run", "--methods", "ed+dkd", "--set", "distill.dkd.beta=-1", "--output", str(tmp_path))
    assert "distill.dkd.beta: expected a non-negative number, got -1.0" in err
    err = _cli(capsys, "run", "--methods", "ed+hinton", "--output", str(tmp_path))
    assert "got 'ed+hinton'" in err
    assert not any(tmp_path.iterdir())


def _no_ray(monkeypatch):
    import raydistill.distributed.trainer as trainer

    def no_ray(*_a, **_k):
        raise AssertionError("Ray was started before the input was checked")
    monkeypatch.setattr(trainer, "init_ray", no_ray)


def test_cli_unreachable_ray_address(tmp_path, capsys, monkeypatch):
    """`run --address` to a port nobody listens on: exit 2 within seconds, naming ray.address and the address."""
    import socket
    import time
    _no_ray(monkeypatch)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "exp.yaml"
    path.write_text(_exp(tmp_path).to_yaml())
    started = time.monotonic()
    err = _cli(capsys, "run", "--config", str(path), "--address", f"127.0.0.1:{port}")
    assert time.monotonic() - started < 15
    assert f"ray.address: cannot reach 127.0.0.1:{port}" in err
    assert not (tmp_path / "runs" / "tiny").exists()


def test_cli_resume_with_changed_config_is_refused(tmp_path, capsys, monkeypatch):
    """A run directory holding a run is only resumed with the same training config; the message lists
    every changed field, and the directory's config.yaml is left as it was."""
    from raydistill.pipeline.prepare import start_run
    _no_ray(monkeypatch)
    exp = _exp(tmp_path)
    _, out = start_run(exp)
    before = out.read_text("config.yaml")
    path = tmp_path / "exp.yaml"
    path.write_text(exp.to_yaml())
    err = _cli(capsys, "run", "--config", str(path), "--set", "curriculum.temperature=2",
               "--set", "optimizer.lr=0.1", "--set", "ray.max_failures=3")
    assert "already holds a run with a different config" in err
    assert "curriculum.temperature: 4.0 -> 2.0" in err and "optimizer.lr: 0.05 -> 0.1" in err
    assert "max_failures" not in err        # how a run executes may change on resume
    assert out.read_text("config.yaml") == before


def test_invalid_search_space_names_the_file_and_dimension(tmp_path, capsys):
    """An order of the wrong length in a search space: exit 2 from `raydistill tune`, naming the space
    file and the dimension (the full set of invalid spaces is in tests/test_tune.py)."""
    path = tmp_path / "bad_space.yaml"
    path.write_text("base: {data: {source: builtin, num_classes: 6}, student: {arch: resnet8}}\n"
                    "search:\n  curriculum.order: {choice: [[0, 1]]}\n")
    err = _cli(capsys, "tune", str(path))
    assert "bad_space.yaml: search.curriculum.order: candidate [0, 1] is invalid" in err
    assert "expected a permutation of [0, 1, 2]" in err


@pytest.mark.parametrize("backend", ["ray", "local"])
def test_cli_validate_refuses_fp16_where_run_does(tmp_path, capsys, monkeypatch, backend):
    """On a machine without CUDA, `validate` refuses precision fp16 exactly as `run` does for the same
    backend (same exit code, same one line), before loading data; neither starts any work."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = tmp_path / "exp.yaml"
    path.write_text(_exp(tmp_path).with_overrides(["precision=fp16"]).to_yaml())
    assert Experiment.load(str(path)).device == "auto"
    argv = ["--config", str(path)] + (["--backend", "local"] if backend == "local" else [])   # ray: the default
    validate_err = _cli(capsys, "validate", *argv)
    run_err = _cli(capsys, "run", *argv)
    assert validate_err == run_err
    field = "ray.use_gpu" if backend == "ray" else r"device auto \(no CUDA device on this machine\)"
    assert re.match(rf"raydistill: error: precision: expected fp32 or bf16 when {field} puts the work on cpu "
                    r"\(fp16 needs a CUDA device\), got 'fp16'", validate_err), validate_err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("cuda", [False, True])
def test_cli_validate_says_which_device_the_run_uses_here(tmp_path, capsys, monkeypatch, cuda):
    """With device auto, `validate` names the device `run` will train on here and why; with a CUDA
    device (simulated), fp16 is accepted for the local backend, which would use it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    path = tmp_path / "exp.yaml"
    path.write_text(_exp(tmp_path).with_overrides([f"precision={'fp16' if cuda else 'fp32'}"]).to_yaml())
    assert main(["validate", "--config", str(path), "--local"]) == 0
    out = capsys.readouterr().out
    found = "a CUDA device found" if cuda else "no CUDA device on this machine"
    assert (f"run --backend local here: students train on {'cuda' if cuda else 'cpu'} (device auto: {found}), "
            f"precision {'fp16' if cuda else 'fp32'}") in out
    assert main(["validate", "--config", str(path), "--set", "precision=fp32"]) == 0
    out = capsys.readouterr().out
    assert "run --backend ray here: students train on cpu (ray.use_gpu false), precision fp32" in out
