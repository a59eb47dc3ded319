"""Cache directories under concurrency and behind a storage URI (issue 26, items 5 and 6):
- the completion marker (meta.json) is published after every shard it lists;
- a node's half mirror is detected and downloaded again (the local S3 server of test_cluster);
- two processes building the same key at once: one builds, the other waits and reuses it, and a
  complete directory is never replaced.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from test_cluster import BUCKET, s3  # noqa: F401  (the local S3 server fixture)
from test_decoded import decodes, parquet_experiment
from test_soft_label_cache import cache_exp, random_teachers, small  # noqa: F401  (fixture)

TESTS = Path(__file__).resolve().parent


def complete(directory: Path) -> bool:
    """Every file meta.json lists (soft labels: `files`; decoded: the shards) is there."""
    meta = json.loads((directory / "meta.json").read_text())
    if "files" in meta:
        names = [info["file"] for info in meta["files"].values()]
    else:
        names = [s for split in ("train", "test") for s in meta[split]["shards"] + [f"{split}-labels.npy"]]
    return all((directory / n).is_file() for n in names)


# ---- the marker is published last ------------------------------------------------------------

class _Put(io.BytesIO):
    """One object being uploaded: it appears, whole, when closed (as an S3 PUT does)."""

    def __init__(self, store: "ObjectStore", path: str):
        super().__init__()
        self.store, self.path = store, path

    def close(self):
        if not self.closed:
            self.store.put(self.path, self.getvalue())
        super().close()


class ObjectStore(pafs.FileSystemHandler):
    """A local directory behaving as an object store (objects appear whole when their upload or
    server-side copy ends; shards take 0.3 s to upload, the small meta.json none), recording what
    was already stored each time a meta.json appeared."""

    def __init__(self):
        self.local, self.lock, self.markers = pafs.LocalFileSystem(), threading.Lock(), []

    def put(self, path: str, data: bytes) -> None:
        if "meta.json" not in path.rsplit("/", 1)[1]:
            time.sleep(0.3)
        self.stored(path, data)

    def stored(self, path: str, data: bytes) -> None:
        with self.lock:
            parent = Path(path).parent
            parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)
            if path.rsplit("/", 1)[1] == "meta.json":
                self.markers.append((json.loads(data), sorted(p.name for p in parent.iterdir())))

    def get_type_name(self):
        return "objectstore"

    def normalize_path(self, path):
        return path

    def equals(self, other):
        return self is other

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        raise NotImplementedError("an object store has no rename")

    def copy_file(self, src, dest):
        self.stored(dest, Path(src).read_bytes())

    def open_input_stream(self, path):
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        import pyarrow as pa
        return pa.PythonFile(_Put(self, path), mode="w")

    def open_append_stream(self, path, metadata):
        raise NotImplementedError


def test_marker_is_published_after_every_shard(small, tmp_path, monkeypatch):
    """ensure_soft_label_cache with a URI root, onto an object store whose shards upload slowly:
    when meta.json appeared, every shard it lists was stored already."""
    import raydistill.storage as storage
    from raydistill.softlabels import ensure_soft_label_cache
    store = ObjectStore()
    bucket = tmp_path / "bucket"
    monkeypatch.setattr(storage, "filesystem", lambda uri: (pafs.PyFileSystem(store),
                                                            str(bucket) + uri.split("objectstore://bucket", 1)[1]))
    monkeypatch.setenv("RAYDISTILL_CACHE_MIRROR", str(tmp_path / "mirror"))
    cache = ensure_soft_label_cache(cache_exp(tmp_path), small, random_teachers(small),
                                    root="objectstore://bucket/softlabels")
    ((meta, stored),) = store.markers
    assert meta["key"] == cache.key and len(meta["files"]) == 3
    assert {info["file"] for info in meta["files"].values()} <= set(stored), stored
    assert complete(bucket / "softlabels" / cache.directory.name)


# ---- mirrors behind a URI are checked, and repaired -------------------------------------------

def s3_env(s3, monkeypatch, node: Path) -> str:   # noqa: F811
    """Point this process at the local S3 server as node `node` (its own mirror directory); returns
    a fresh root in the bucket."""
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RAYDISTILL_CACHE_MIRROR", str(node))
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"


def test_a_half_soft_label_mirror_is_downloaded_again(s3, small, tmp_path, monkeypatch):  # noqa: F811
    """Node a builds and publishes the cache. Node b's mirror lost a shard (what a mirror taken
    while meta.json had landed before the shards looked like): it is detected and downloaded
    again, and loads. A stored copy that lost a shard is not mirrored, and the next build repairs it."""
    from raydistill.softlabels import ensure_soft_label_cache, load_soft_label_cache, local_cache_dir
    from raydistill.storage import RunDir
    root = s3_env(s3, monkeypatch, tmp_path / "node-a") + "/softlabels"
    exp, teachers = cache_exp(tmp_path), random_teachers(small)
    built = ensure_soft_label_cache(exp, small, teachers, root=root)
    name = built.directory.name
    monkeypatch.setenv("RAYDISTILL_CACHE_MIRROR", str(tmp_path / "node-b"))
    mirror = local_cache_dir(root, name)
    (mirror / "group1.parquet").unlink()
    assert local_cache_dir(root, name) == mirror and complete(mirror)
    loaded = load_soft_label_cache(mirror)
    assert loaded.key == built.key
    for key in teachers:
        assert torch.equal(loaded.labels[key].values, built.labels[key].values)

    RunDir(root).delete(f"{name}/group2.parquet")         # the stored copy loses a shard
    monkeypatch.setenv("RAYDISTILL_CACHE_MIRROR", str(tmp_path / "node-c"))
    with pytest.raises(FileNotFoundError, match=f"{root}/{name}/meta.json lists group2.parquet, which is missing"):
        load_soft_label_cache(local_cache_dir(root, name))   # a reader: one error naming the stored file
    logs = []
    again = ensure_soft_label_cache(exp, small, teachers, root=root, log=logs.append)   # a builder: repairs it
    assert any("is incomplete" in line for line in logs) and any("building cache" in line for line in logs)
    assert again.key == built.key and again.build_seconds is not None
    assert RunDir(root).is_file(f"{name}/group2.parquet")


def test_a_half_decoded_mirror_is_downloaded_again(s3, tmp_path, monkeypatch):  # noqa: F811
    """The decoded shards behind an s3:// output.dir: a node whose mirror lost a shard downloads
    it again instead of failing (or decoding again)."""
    from raydistill.data.decoded import decoded_root, load_decoded
    from raydistill.data.sources import load_dataset
    root = s3_env(s3, monkeypatch, tmp_path / "node-a")
    exp = parquet_experiment(tmp_path, **{"output.dir": root})
    d = exp.data
    fresh = load_dataset("parquet", train_path=d.train_path, test_path=d.test_path, size=32)
    load_decoded(exp, lambda: fresh)
    monkeypatch.setenv("RAYDISTILL_CACHE_MIRROR", str(tmp_path / "node-b"))
    first = load_decoded(exp, lambda: pytest.fail("decoded again"))
    (mirror,) = [p for p in (tmp_path / "node-b").glob("*/*") if p.is_dir() and not p.name.startswith(".")]
    (mirror / "train-00000.npy").unlink()
    seen = []
    again = load_decoded(exp, lambda: pytest.fail("decoded again"), seen.append)
    assert any("decoded shards loaded" in line for line in seen) and complete(mirror)
    for a, b, c in zip(fresh, first, again):
        assert torch.equal(a.images, b.images) and torch.equal(a.images, c.images)
    assert decoded_root(exp) == root + "/decoded"


# ---- one builder per key ----------------------------------------------------------------------

BARRIER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
gate = Path({gate!r})
(gate / f"ready-{{sys.argv[1]}}").touch()
deadline = time.time() + 600
while len(list(gate.glob("ready-*"))) < 2 and time.time() < deadline:   # both builders start together
    time.sleep(0.01)
"""


def race(script: str, tmp_path: Path) -> list:
    """Run `script` (after the barrier) in two processes at once; their last stdout lines, as JSON."""
    gate = tmp_path / "gate"
    gate.mkdir()
    code = BARRIER.format(tests=str(TESTS), gate=str(gate)) + script
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for i in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


DECODE = """
from raydistill.config import Experiment
from raydistill.data.decoded import load_decoded
from raydistill.data.sources import load_dataset
exp = Experiment.from_dict(json.loads(Path({config!r}).read_text()))
d = exp.data

def decode():
    time.sleep(2)   # a decode long enough for the other builder to arrive meanwhile
    return load_dataset("parquet", train_path=d.train_path, test_path=d.test_path, size=32)

log = []
train, test = load_decoded(exp, decode, log.append)
print(json.dumps({{"log": log, "sums": [int(train.images.sum()), int(test.images.sum())]}}))
"""


@pytest.mark.slow   # two builder processes
def test_two_processes_decode_a_key_once(tmp_path):
    exp = parquet_experiment(tmp_path)
    config = tmp_path / "exp.json"
    config.write_text(json.dumps(exp.to_dict()))
    results = race(DECODE.format(config=str(config)), tmp_path)
    store = tmp_path / "runs" / "decoded"
    assert len(decodes(store)) == 1, decodes(store)
    logs = [r["log"] for r in results]
    built = [log for log in logs if any("stored as shards" in line for line in log)]
    waited = [log for log in logs if any("waiting to reuse it" in line for line in log)]
    assert len(built) == 1 and len(waited) == 1, logs
    assert any("decoded shards loaded" in line for line in waited[0])
    assert results[0]["sums"] == results[1]["sums"]
    (directory,) = [p for p in store.iterdir() if p.is_dir()]
    assert complete(directory) and not [p for p in store.iterdir() if p.name.startswith(f".{directory.name}-")]


SOFT_LABELS = """
import raydistill.softlabels.cache as cache_module
from dataclasses import replace
from conftest import tiny_experiment
from test_soft_label_cache import cache_exp, random_teachers
from raydistill.softlabels import ensure_soft_label_cache
from raydistill.pipeline.prepare import prepare_data
import torch
data = prepare_data(tiny_experiment("/tmp/unused"))
keep = torch.cat([torch.nonzero(data.train.labels == c).flatten()[:20] for c in range(6)]).sort().values
small = replace(data, train=data.train.subset(keep))
build = cache_module.build_labels

def slow_build(*args, **kwargs):
    time.sleep(2)   # a build long enough for the other builder to arrive meanwhile
    return build(*args, **kwargs)

cache_module.build_labels = slow_build
log = []
cache = ensure_soft_label_cache(cache_exp({out!r}), small, random_teachers(small), root={root!r}, log=log.append)
print(json.dumps({{"log": log, "key": cache.key, "directory": str(cache.directory),
                  "sums": {{k: float(v.values.float().sum()) for k, v in cache.labels.items()}}}}))
"""


@pytest.mark.slow   # two builder processes
def test_two_processes_build_a_soft_label_key_once(tmp_path):
    root = tmp_path / "softlabels"
    results = race(SOFT_LABELS.format(out=str(tmp_path / "runs"), root=str(root)), tmp_path)
    logs = [r["log"] for r in results]
    built = [log for log in logs if any("building cache" in line for line in log)]
    waited = [log for log in logs if any("waiting to reuse it" in line for line in log)]
    assert len(built) == 1 and len(waited) == 1, logs
    assert any(line.endswith("loaded") for line in waited[0])
    assert results[0]["key"] == results[1]["key"] and results[0]["sums"] == results[1]["sums"]
    assert results[0]["directory"] == results[1]["directory"]
    (directory,) = [p for p in root.iterdir() if not p.name.startswith(".")]
    assert complete(directory) and not [p for p in root.iterdir() if ".tmp-" in p.name]


def test_a_complete_directory_is_never_replaced(tmp_path):
    """A builder that did not take the lock (or lost the race) finds a complete directory: it keeps
    it, files and all, and discards its own copy."""
    from raydistill.data import ImageSet
    from raydistill.data.decoded import read_decoded, write_decoded
    from raydistill.softlabels import store
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    data = ImageSet(images, torch.tensor([0, 1, 0, 1]), ["a", "b"])
    directory = tmp_path / "decoded" / "k"
    write_decoded(directory, "k", {}, data, data, 1.0)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()}
    other = ImageSet(images.flip(0), data.labels, data.class_names)
    write_decoded(directory, "k", {}, other, other, 1.0)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()} == before
    assert torch.equal(read_decoded(directory, "k")[0].images, images)
    assert [p.name for p in directory.parent.iterdir()] == ["k"]

    labels = {"group0": store.encode(torch.arange(4), torch.randn(4, 2, 3), "float16", 1)}
    cache = tmp_path / "softlabels" / "k"
    components = {"bank": {"draws": 2}}
    store.write_cache(cache, "k", components, labels, 1.0)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.iterdir()}
    store.write_cache(cache, "k", components,
                      {"group0": store.encode(torch.arange(4), torch.randn(4, 2, 3), "float16", 1)}, 2.0)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.iterdir()} == before
    assert np.allclose(store.read_labels(cache, store.read_meta(cache))["group0"].values.float().numpy(),
                       labels["group0"].values.float().numpy())


def test_a_lock_where_no_cache_can_be_built_is_one_config_error(tmp_path):
    """build_lock under a file (a cache root that is not a directory): a ConfigError naming the
    directory, which the CLI prints as one line, not a FileExistsError/NotADirectoryError traceback."""
    from raydistill.config import ConfigError
    from raydistill.storage.cachedirs import build_lock
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for directory in (blocker / "key", blocker / "sub" / "key"):
        with pytest.raises(ConfigError, match=rf"cache directory {directory.parent}: cannot build cache key there"):
            with build_lock(directory):
                pass
    assert blocker.read_text() == "x"
