"""Where run directories live: a local directory (the default) or a pyarrow filesystem URI.

`output.dir` may be a plain path (`runs`, `/mnt/shared/runs`) or a URI that
`pyarrow.fs.FileSystem.from_uri` understands (`s3://bucket/runs`, `gs://bucket/runs`,
`hdfs://…`, `file:///mnt/nfs/runs`). For a URI the run is written to a local *staging*
directory (training code only ever sees local paths) and `publish` copies the finished run
directory to `<uri>/<run name>` with `pyarrow.fs.copy_files`; `load_run` reads a run back from
either kind of location (a URI is downloaded to a temporary directory first).

The staging directory is deterministic per (URI, run name) — `$RAYDISTILL_STAGING_DIR` or
`<tmp>/raydistill-staging/<hash>` — so re-running the same command on the same machine resumes.
Resuming on a *different* machine from what was uploaded is not implemented.
"""
from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from raydistill.config import ConfigError, Experiment

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location) -> bool:
    """True for `scheme://…` (s3, gs, hdfs, file, …); False for plain local paths."""
    return bool(location) and bool(_URI.match(str(location)))


def filesystem(uri: str):
    """(pyarrow FileSystem, path inside it) of a URI; ConfigError naming output.dir if unusable."""
    from pyarrow import fs
    try:
        return fs.FileSystem.from_uri(uri)
    except Exception as err:  # ArrowInvalid (unknown scheme), ArrowNotImplemented (not built in), ...
        raise ConfigError(f"output.dir: cannot use storage URI {uri!r} ({type(err).__name__}: {err})") from None


def run_location(exp: Experiment) -> str:
    """Where the run directory of `exp` ends up: `<uri>/<name>` or the local path."""
    if is_uri(exp.output.dir):
        return exp.output.dir.rstrip("/") + "/" + exp.run_name()
    return str(Path(exp.output.dir).expanduser() / exp.run_name())


def staging_root(uri: str) -> Path:
    base = os.environ.get("RAYDISTILL_STAGING_DIR") or os.path.join(tempfile.gettempdir(), "raydistill-staging")
    return Path(base) / hashlib.sha1(uri.encode()).hexdigest()[:12]


def local_experiment(exp: Experiment) -> Experiment:
    """`exp` itself when output.dir is local; otherwise a copy whose output.dir is the local staging
    directory of that URI (the URI is checked here, before any training)."""
    if not is_uri(exp.output.dir):
        return exp
    filesystem(exp.output.dir)
    staged = copy.deepcopy(exp)
    staged.output.dir = str(staging_root(exp.output.dir.rstrip("/")))
    return staged


def publish(exp: Experiment, run_dir) -> Optional[str]:
    """Copy the local run directory to `<output.dir>/<run name>` when output.dir is a URI.
    Returns the destination URI, or None for a local output.dir (nothing to do)."""
    if not is_uri(exp.output.dir):
        return None
    from pyarrow import fs
    dest = run_location(exp)
    dest_fs, dest_path = filesystem(dest)
    dest_fs.create_dir(dest_path, recursive=True)
    fs.copy_files(str(Path(run_dir).resolve()), dest_path, source_filesystem=fs.LocalFileSystem(),
                  destination_filesystem=dest_fs)
    return dest


REPORT_FILES = ("summary.json", "metrics.json", "metrics.parquet")


def download(location: str, dest, only: Optional[tuple] = None) -> Path:
    """Copy the run directory at URI `location` (or only the files named in `only`, those that
    exist) into the local directory `dest`; returns dest."""
    from pyarrow import fs
    src_fs, src_path = filesystem(location)
    info = src_fs.get_file_info(src_path)
    if info.type != fs.FileType.Directory:
        from raydistill.report_files import RunDirError
        raise RunDirError(f"{location}: no such run directory")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    local = fs.LocalFileSystem()
    if only is None:
        fs.copy_files(src_path, str(dest.resolve()), source_filesystem=src_fs, destination_filesystem=local)
        return dest
    for name in only:
        path = f"{src_path.rstrip('/')}/{name}"
        if src_fs.get_file_info(path).type == fs.FileType.File:
            fs.copy_files(path, str((dest / name).resolve()), source_filesystem=src_fs, destination_filesystem=local)
    return dest


def load_run(location) -> tuple:
    """`report_files.load_run` for a local run directory or a run directory URI: (summary, history)."""
    from raydistill.report_files import RunDirError, load_run as load_local
    if not is_uri(location):
        return load_local(location)
    tmp = tempfile.mkdtemp(prefix="raydistill-run-")
    try:
        return load_local(download(str(location), tmp, only=REPORT_FILES))
    except RunDirError as err:  # name the URI, not the temporary copy
        raise RunDirError(str(err).replace(str(Path(tmp)), str(location).rstrip("/"))) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
