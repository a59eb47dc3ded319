"""raydistill.storage: output.dir as a pyarrow filesystem URI (tested with file://, pyarrow's
LocalFileSystem; s3/gs go through the same calls)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_experiment

TESTS = Path(__file__).resolve().parent


class HalfWriter:
    """An output stream that dies half way through its first write, as a crashed writer does; leaving
    `with` closes the real stream, as pyarrow's does."""

    def __init__(self, stream, crash):
        self.stream, self.crash = stream, crash

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()

    def write(self, data):
        data = bytes(data)
        self.stream.write(data[: len(data) // 2])
        self.stream.flush()
        self.crash()


class Watched:
    """A real pyarrow filesystem, watched: records the paths opened for writing; `crash` makes every
    write die half way; `type_name` poses as another filesystem (hdfs, s3) to test which are staged."""

    def __init__(self, fs, crash=None, type_name=None):
        self._fs, self._crash, self.opened = fs, crash, []
        self.type_name = type_name or fs.type_name

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def open_output_stream(self, path, *args, **kwargs):
        self.opened.append(path)
        stream = self._fs.open_output_stream(path, *args, **kwargs)
        return HalfWriter(stream, self._crash) if self._crash else stream


def simulated_crash():
    raise OSError("simulated crash mid-write")


def checkpoint(seed: int) -> dict:
    """A teacher checkpoint (2 classes of resnet8) with weights drawn from `seed`."""
    from raydistill.models import build_model
    from raydistill.teachers.frozen import teacher_checkpoint
    torch.manual_seed(seed)
    model = build_model("resnet8", 2)
    model.class_ids.copy_(torch.tensor([0, 1]))
    return teacher_checkpoint(model, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def assert_resumes_with(location, expected: dict) -> None:
    """What a resume reads (saved_teachers + load_teacher) is the checkpoint `expected`."""
    from raydistill.teachers.frozen import load_teacher, saved_teachers
    found = saved_teachers(location, 1)
    assert list(found) == ["group0"]
    state = load_teacher(found["group0"], [0, 1]).model.state_dict()
    for name, value in expected["state_dict"].items():
        if value.is_floating_point() and name in state:
            assert torch.equal(state[name], value), name


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
    from raydistill.pipeline.prepare import check_output_dir
    with pytest.raises(ConfigError, match="output.dir"):
        check_output_dir(tiny_experiment("nosuchscheme://bucket/runs"))


def test_run_dir_reads_and_writes_the_same_on_any_filesystem(tmp_path):
    """The calls every artifact goes through, on a local path and on a file:// URI (the same
    pyarrow calls as s3://; the S3 case runs in test_cluster.py against a local S3 server)."""
    from raydistill.storage import RunDir
    for location in (str(tmp_path / "plain"), (tmp_path / "uri").as_uri()):
        run = RunDir(location)
        run.fs = watched = Watched(run.fs)
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
        # both are written atomically: every file under a hidden temporary name, then renamed
        staged = [Path(p).name for p in watched.opened]
        assert len(staged) >= 4 and all(n.startswith(".") and n.endswith(".tmp") for n in staged), staged
    assert not list(tmp_path.glob("**/*.tmp"))      # and every temporary name was renamed away


def test_staged_writes_follow_the_filesystem(tmp_path):
    """Filesystems that can rename (local, file://, hdfs://) get temp-then-rename; object stores,
    whose PUT is atomic and which have no cheap rename, get one direct write."""
    from raydistill.storage import RunDir
    for type_name, staged in (("local", True), ("hdfs", True), ("s3", False), ("gcs", False), ("abfs", False)):
        run = RunDir((tmp_path / type_name).as_uri())
        run.fs = watched = Watched(run.fs, type_name=type_name)
        run.write_text("t/a.txt", "x")
        assert run.read_text("t/a.txt") == "x"
        (opened,) = watched.opened
        assert (opened != run.path("t/a.txt")) == staged, (type_name, opened)


@pytest.mark.parametrize("kind", ["path", "file_uri"])
def test_a_write_that_crashes_midway_leaves_the_old_file(tmp_path, kind):
    """A checkpoint, a JSON file and a log line each crash half way through being written: the old
    file (or, for a new one, none) stays, the resume reads the last complete checkpoint, no
    temporary file is left, and the next write goes through."""
    from raydistill.storage import RunDir
    location = str(tmp_path / "run") if kind == "path" else (tmp_path / "run").as_uri()
    run = RunDir(location)
    first = checkpoint(0)
    run.save_torch("teachers/group0.pt", first)
    run.write_json("summary.json", {"epochs": 1})
    real = run.fs
    run.fs = Watched(real, crash=simulated_crash)
    with pytest.raises(OSError, match="simulated crash"):
        run.save_torch("teachers/group0.pt", checkpoint(1))
    with pytest.raises(OSError, match="simulated crash"):
        run.write_json("summary.json", {"epochs": 2})
    with pytest.raises(OSError, match="simulated crash"):
        run.append_line("epochs.jsonl", json.dumps({"epoch": 1}))
    assert_resumes_with(location, first)
    assert RunDir(location).read_json("summary.json") == {"epochs": 1}
    assert not RunDir(location).exists("epochs.jsonl")
    left = sorted(p.relative_to(tmp_path / "run").as_posix() for p in (tmp_path / "run").rglob("*") if p.is_file())
    assert left == ["summary.json", "teachers/group0.pt"]    # no temporary file, no half epochs.jsonl
    run.fs = real
    second = checkpoint(1)
    run.save_torch("teachers/group0.pt", second)
    assert_resumes_with(location, second)


def test_a_killed_writer_leaves_the_old_checkpoint(tmp_path):
    """A process killed half way through writing a teacher checkpoint to a file:// run directory
    (os._exit: no cleanup runs) leaves the previous checkpoint whole; the resume loads it and the
    leftover temporary file is neither mistaken for a teacher nor in the way of the next write."""
    from raydistill.storage import RunDir
    uri = (tmp_path / "run").as_uri()
    first = checkpoint(0)
    RunDir(uri).save_torch("teachers/group0.pt", first)
    script = (f"import os, sys; sys.path.insert(0, {str(TESTS)!r})\n"
              "from test_storage import Watched, checkpoint\n"
              "from raydistill.storage import RunDir\n"
              f"run = RunDir({uri!r})\n"
              "run.fs = Watched(run.fs, crash=lambda: os._exit(3))\n"
              "run.save_torch('teachers/group0.pt', checkpoint(1))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert_resumes_with(uri, first)
    second = checkpoint(2)
    RunDir(uri).save_torch("teachers/group0.pt", second)
    assert_resumes_with(uri, second)


def test_local_run_to_file_uri(tmp_path):
    """A whole (tiny, local-backend) run with output.dir=file://…: every file written straight
    into the URI's filesystem (no staging directory), read back from the URI."""
    from raydistill.pipeline.report_files import report_text
    from raydistill.pipeline.local import run
    from raydistill.pipeline.report_files import load_run
    from raydistill.storage import run_location
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
    from raydistill.pipeline.report_files import RunDirError
    from raydistill.pipeline.report_files import load_run
    uri = (tmp_path / "nothing").as_uri()
    with pytest.raises(RunDirError, match="no such run directory"):
        load_run(uri)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(RunDirError, match=str(tmp_path / "nothing")):
        load_run(uri)
