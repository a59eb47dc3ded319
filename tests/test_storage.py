"""raydistill.storage: output.dir as a pyarrow filesystem URI (tested with file://, pyarrow's
LocalFileSystem; s3/gs go through the same calls)."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_experiment


def test_is_uri():
    from raydistill.storage import is_uri
    assert is_uri("s3://bucket/runs") and is_uri("file:///tmp/x") and is_uri("gs://b")
    assert not is_uri("runs") and not is_uri("/abs/runs") and not is_uri("") and not is_uri(None)


def test_run_location(tmp_path):
    from raydistill.storage import run_location
    assert run_location(tiny_experiment(tmp_path)) == str(tmp_path / "tiny")
    assert run_location(tiny_experiment("s3://bucket/runs/")) == "s3://bucket/runs/tiny"


def test_bad_uri_is_a_config_error(tmp_path):
    from raydistill.config import ConfigError
    from raydistill.workspace import check_output_dir
    with pytest.raises(ConfigError, match="output.dir"):
        check_output_dir(tiny_experiment("nosuchscheme://bucket/runs"))


def test_run_dir_reads_and_writes_the_same_on_any_filesystem(tmp_path):
    """The calls every artifact goes through, on a local path and on a file:// URI (the same
    pyarrow calls as s3://; the S3 case runs in test_cluster.py against a local S3 server)."""
    from raydistill.storage import RunDir
    for location in (str(tmp_path / "plain"), (tmp_path / "uri").as_uri()):
        run = RunDir(location)
        run.write_json("a/b.json", {"x": 1})
        run.append_line("log.jsonl", "one")
        run.append_line("log.jsonl", "two")
        run.save_torch("t.pt", {"w": torch.ones(2)})
        assert run.read_json("a/b.json") == {"x": 1}
        assert run.read_text("log.jsonl") == "one\ntwo\n"
        assert run.load_torch("t.pt", weights_only=True)["w"].tolist() == [1.0, 1.0]
        assert run.listdir() == ["a", "log.jsonl", "t.pt"] and run.listdir("nothing") == []
        with run.local_folder("report") as folder:
            (folder / "c.txt").write_text("c")
        assert run.read_text("report/c.txt") == "c" and run.child("report").is_file("c.txt")
        run.delete("a")
        assert not run.exists("a")
    assert not list(tmp_path.glob("**/*.tmp"))


def test_local_run_to_file_uri(tmp_path):
    """A whole (tiny, local-backend) run with output.dir=file://…: every file written straight
    into the URI's filesystem (no staging directory), read back from the URI."""
    from raydistill.report_files import report_text
    from raydistill.runner import run
    from raydistill.storage import load_run, run_location
    uri = (tmp_path / "bucket" / "runs").as_uri()
    exp = tiny_experiment(uri, **{"teachers.epochs": 1, "curriculum.grade_epochs": "[1,1,1]",
                                  "data.train_per_class": 40, "data.test_per_class": 20})
    result = run(exp, progress=None)
    assert result.run_dir == uri + "/tiny"
    published = tmp_path / "bucket" / "runs" / "tiny"
    for name in ("config.yaml", "summary.json", "metrics.json", "metrics.parquet", "curves.png",
                 "teachers/group0.pt", "checkpoints/ed.pt"):
        assert (published / name).is_file(), name
    assert run_location(exp) == uri + "/tiny"
    summary, history = load_run(uri + "/tiny")
    assert summary == json.loads((published / "summary.json").read_text())
    assert summary["methods"]["ed"] == result.methods["ed"]
    assert len(history) == len(result.history)
    assert report_text(uri + "/tiny") == result.table()


def test_load_run_missing_uri(tmp_path):
    from raydistill.report_files import RunDirError
    from raydistill.storage import load_run
    uri = (tmp_path / "nothing").as_uri()
    with pytest.raises(RunDirError, match="no such run directory"):
        load_run(uri)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(RunDirError, match=str(tmp_path / "nothing")):
        load_run(uri)
