"""raydistill.storage: output.dir as a pyarrow filesystem URI (tested with file://, pyarrow's
LocalFileSystem; s3/gs go through the same calls)."""
from __future__ import annotations

import json

import pytest

from conftest import tiny_experiment


def test_is_uri():
    from raydistill.storage import is_uri
    assert is_uri("s3://bucket/runs") and is_uri("file:///tmp/x") and is_uri("gs://b")
    assert not is_uri("runs") and not is_uri("/abs/runs") and not is_uri("") and not is_uri(None)


def test_local_output_dir_untouched(tmp_path):
    from raydistill.storage import local_experiment, publish, run_location
    exp = tiny_experiment(tmp_path)
    assert local_experiment(exp) is exp
    assert publish(exp, tmp_path) is None
    assert run_location(exp) == str(tmp_path / "tiny")


def test_bad_uri_is_a_config_error(tmp_path):
    from raydistill.config import ConfigError
    from raydistill.storage import local_experiment
    with pytest.raises(ConfigError, match="output.dir"):
        local_experiment(tiny_experiment("nosuchscheme://bucket/runs"))


def test_local_run_to_file_uri(tmp_path, monkeypatch):
    """A whole (tiny, local-backend) run with output.dir=file://…: trained in the staging dir,
    uploaded at the end, read back from the URI."""
    from raydistill.runner import run
    from raydistill.storage import load_run, run_location
    monkeypatch.setenv("RAYDISTILL_STAGING_DIR", str(tmp_path / "staging"))
    uri = (tmp_path / "bucket" / "runs").as_uri()
    exp = tiny_experiment(uri, **{"teachers.epochs": 1, "curriculum.grade_epochs": "[1,1,1]",
                                  "data.train_per_class": 40, "data.test_per_class": 20})
    result = run(exp, progress=None)
    assert str(result.run_dir).startswith(str(tmp_path / "staging"))
    published = tmp_path / "bucket" / "runs" / "tiny"
    for name in ("config.yaml", "summary.json", "metrics.json", "metrics.parquet", "teachers/group0.pt",
                 "checkpoints/ed.pt"):
        assert (published / name).is_file(), name
    assert run_location(exp) == uri + "/tiny"
    summary, history = load_run(uri + "/tiny")
    assert summary == json.loads((published / "summary.json").read_text())
    assert summary["methods"]["ed"] == result.methods["ed"]
    assert len(history) == len(result.history)


def test_load_run_missing_uri(tmp_path):
    from raydistill.report_files import RunDirError
    from raydistill.storage import load_run
    uri = (tmp_path / "nothing").as_uri()
    with pytest.raises(RunDirError, match="no such run directory"):
        load_run(uri)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(RunDirError, match=str(tmp_path / "nothing")):
        load_run(uri)
