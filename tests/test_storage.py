"""raydistill.storage: output.dir as a pyarrow filesystem URI (tested with file://, pyarrow's
LocalFileSystem, and with s3:// against a local S3 server, moto's, where object stores differ)."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from conftest import tiny_experiment
from test_cluster import BUCKET, s3  # noqa: F401  (the local S3 server fixture)

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
    """A real pyarrow filesystem, watched: records the paths opened for writing and the moves and
    copies; `crash` makes every write die half way; `type_name` poses as another filesystem (hdfs,
    s3) to test how each is written."""

    def __init__(self, fs, crash=None, type_name=None):
        self._fs, self._crash, self.opened, self.placed = fs, crash, [], []
        self.type_name = type_name or fs.type_name

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def open_output_stream(self, path, *args, **kwargs):
        self.opened.append(path)
        stream = self._fs.open_output_stream(path, *args, **kwargs)
        return HalfWriter(stream, self._crash) if self._crash else stream

    def move(self, src, dest):
        self.placed.append(("move", src, dest))
        return self._fs.move(src, dest)

    def copy_file(self, src, dest):
        self.placed.append(("copy", src, dest))
        return self._fs.copy_file(src, dest)


def simulated_crash():
    raise OSError("simulated crash mid-write")


def simulated_ctrl_c():
    raise KeyboardInterrupt


@pytest.fixture
def s3_bucket(s3, monkeypatch):   # noqa: F811
    """`s3://<bucket>` on the local S3 server (moto's, a real HTTP server), reached the way a user's
    s3:// output.dir is: pyarrow reads AWS_ENDPOINT_URL and the keys from the environment."""
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    return f"s3://{BUCKET}"


def run_location(request, tmp_path, kind: str) -> str:
    """A fresh run directory: a plain path, a file:// URI, or an s3:// URI on the local S3 server."""
    if kind == "path":
        return str(tmp_path / "run")
    if kind == "file_uri":
        return (tmp_path / "run").as_uri()
    return f"{request.getfixturevalue('s3_bucket')}/{uuid.uuid4().hex[:8]}/run"


def stored_files(location) -> list:
    """Every file (object) under `location`, hidden temporary names included, listed by the storage."""
    from pyarrow import fs
    from raydistill.storage import RunDir
    run = RunDir(location)
    infos = run.fs.get_file_info(fs.FileSelector(run.root, recursive=True, allow_not_found=True))
    return sorted(i.path[len(run.root) + 1:] for i in infos if i.type == fs.FileType.File)


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


@pytest.mark.parametrize("kind", ["path", "file_uri", "s3"])
def test_run_dir_reads_and_writes_the_same_on_any_filesystem(request, tmp_path, kind):
    """The calls every artifact goes through, on a local path, a file:// URI and s3://."""
    from raydistill.storage import RunDir
    location = run_location(request, tmp_path, kind)
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
    # written atomically: every file under a hidden temporary name, then renamed or copied
    staged = [Path(p).name for p in watched.opened]
    assert len(staged) >= 4 and all(n.startswith(".") and n.endswith(".tmp") for n in staged), staged
    # and every temporary name is gone: what is stored is what was written, nothing else
    assert stored_files(location) == ["log.jsonl", "report/c.txt", "t.pt"]


def test_staged_writes_follow_the_filesystem(tmp_path):
    """Every filesystem is written under a temporary name first; filesystems that can rename (local,
    file://, hdfs://) then rename it, object stores (whose stream publishes even a failed write under
    the name it was opened with, and which have no rename) copy it into place, then delete it."""
    from raydistill.storage import RunDir
    for type_name, how in (("local", "move"), ("hdfs", "move"), ("s3", "copy"), ("gcs", "copy"), ("abfs", "copy")):
        run = RunDir((tmp_path / type_name).as_uri())
        run.fs = watched = Watched(run.fs, type_name=type_name)
        run.write_text("t/a.txt", "x")
        assert run.read_text("t/a.txt") == "x"
        (opened,) = watched.opened
        assert opened != run.path("t/a.txt") and Path(opened).name.endswith(".tmp"), (type_name, opened)
        assert watched.placed == [(how, opened, run.path("t/a.txt"))], type_name
        assert stored_files(run.location) == ["t/a.txt"], type_name


@pytest.mark.parametrize("kind", ["path", "file_uri", "s3"])
def test_a_write_that_crashes_midway_leaves_the_old_file(request, tmp_path, kind):
    """A checkpoint, a JSON file and a log line each crash half way through being written over an
    old file, and a new file too (Ctrl-C for the log line and config.yaml): the old file (or, for
    a new one, none) stays — on s3:// too, where closing the stream publishes the half object under
    the name it was opened with — the resume reads the last complete checkpoint, no temporary file
    is left, and the next write goes through."""
    from raydistill.storage import RunDir
    location = run_location(request, tmp_path, kind)
    run = RunDir(location)
    first = checkpoint(0)
    run.save_torch("teachers/group0.pt", first)
    run.write_json("summary.json", {"epochs": 1})
    run.append_line("epochs.jsonl", json.dumps({"epoch": 0}))
    real = run.fs
    run.fs = Watched(real, crash=simulated_crash)
    with pytest.raises(OSError, match="simulated crash"):
        run.save_torch("teachers/group0.pt", checkpoint(1))
    with pytest.raises(OSError, match="simulated crash"):
        run.write_json("summary.json", {"epochs": 2})
    run.fs = Watched(real, crash=simulated_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run.append_line("epochs.jsonl", json.dumps({"epoch": 1}))
    with pytest.raises(KeyboardInterrupt):
        run.write_text("config.yaml", "name: new\n")
    assert_resumes_with(location, first)
    assert RunDir(location).read_json("summary.json") == {"epochs": 1}
    assert RunDir(location).read_text("epochs.jsonl") == json.dumps({"epoch": 0}) + "\n"
    assert not RunDir(location).exists("config.yaml")
    # no temporary file, no half file
    assert stored_files(location) == ["epochs.jsonl", "summary.json", "teachers/group0.pt"]
    run.fs = real
    second = checkpoint(1)
    run.save_torch("teachers/group0.pt", second)
    assert_resumes_with(location, second)
    assert stored_files(location) == ["epochs.jsonl", "summary.json", "teachers/group0.pt"]


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


def test_local_run_to_file_uri(tmp_path, monkeypatch):
    """A whole (tiny, local-backend) run with output.dir=file://…: every artifact is written
    straight into the URI's filesystem while the run goes (no local staging directory that is
    uploaded at the end), read back from the URI. Observed, not inferred from the final files: each
    write through RunDir is recorded with what the URI already held, and so is each upload of a
    local folder, which only writers that take local paths alone use (the figures and the Parquet
    metrics table of the report, TensorBoard's event files), each from a temporary directory."""
    from raydistill.pipeline.report_files import report_text
    from raydistill.pipeline.local import run
    from raydistill.pipeline.report_files import load_run
    from raydistill.storage import RunDir, run_location
    uri = (tmp_path / "bucket" / "runs").as_uri()
    published = tmp_path / "bucket" / "runs" / "tiny"
    scratch = tmp_path / "tmp"      # every local temporary directory the run makes lies here
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    writes, uploads = [], []
    real_write, real_upload = RunDir._write, RunDir.upload

    def watched_write(self, name, fill):
        held = {p.relative_to(published).as_posix() for p in published.rglob("*") if p.is_file()}
        writes.append((self.location, name, held))
        return real_write(self, name, fill)

    def watched_upload(self, local_dir, name="", last=None):
        uploads.append((Path(local_dir), sorted(p.name for p in Path(local_dir).rglob("*") if p.is_file())))
        return real_upload(self, local_dir, name, last)

    monkeypatch.setattr(RunDir, "_write", watched_write)
    monkeypatch.setattr(RunDir, "upload", watched_upload)
    exp = tiny_experiment(uri, **{"teachers.epochs": 1, "curriculum.grade_epochs": "[1,1,1]",
                                  "data.train_per_class": 40, "data.test_per_class": 20})
    result = run(exp, progress=None)
    assert result.run_dir == uri + "/tiny"
    for name in ("config.yaml", "summary.json", "metrics.json", "metrics.parquet", "curves.png",
                 "teachers/group0.pt", "checkpoints/ed.pt"):
        assert (published / name).is_file(), name
    # straight into the URI: each artifact written by name through the run directory's RunDir ...
    direct = {f"{loc.removeprefix(uri + '/tiny').strip('/')}/{name}".lstrip("/"): held
              for loc, name, held in writes if loc.startswith(uri + "/tiny")}
    for name in ("config.yaml", "summary.json", "metrics.json", "teachers/group0.pt", "checkpoints/ed.pt"):
        assert name in direct, (name, sorted(direct))
    # ... as the run goes: the config and the teacher were there before the ED student was written,
    # and everything but the report files before the summary
    assert {"config.yaml", "teachers/group0.pt"} <= direct["checkpoints/ed.pt"]
    assert {"config.yaml", "teachers/group0.pt", "checkpoints/ed.pt", "metrics.json"} <= direct["summary.json"]
    # ... and no local folder uploaded but those of writers that only take local paths (the report
    # files, TensorBoard's event files), each a temporary directory, gone after the run
    uploaded = {name for _, files in uploads for name in files}
    assert all(folder.is_relative_to(scratch) and not folder.exists() for folder, _ in uploads), uploads
    assert "curves.png" in uploaded, uploaded
    assert uploaded <= {"curves.png", "metrics.parquet"} | {n for n in uploaded if n.startswith("events.out.tfevents")}
    assert not any(scratch.iterdir()), list(scratch.iterdir())
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
