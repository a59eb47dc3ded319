"""Where run directories live: a local path (one machine, or a mount every node shares) or a
pyarrow filesystem URI (`s3://bucket/runs`, `gs://…`, `abfs://…`, `file:///mnt/nfs/runs`).

`RunDir` is a run directory on any of them. Every artifact of a run — config, teacher and
student checkpoints, metrics, the epochs log, report files, the soft-label cache — is written
through it by the process (node) that produced it, while the run goes, so nothing assumes the
driver and the Ray Train workers share a disk. Ray Train gets the same location as its
`storage_path` (with the pyarrow filesystem), so its checkpoints land there too and a run
resumes from the storage alone, on any machine.

For an `s3://` URI pyarrow reads the endpoint and credentials from the environment
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, …); `storage_env()` is what the driver forwards to Ray
workers and jobs so that they resolve the URI the same way.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from raydistill.config import ConfigError, Experiment

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# Environment variables that say how to reach (and sign into) a storage URI; forwarded, never logged.
STORAGE_ENV_PREFIXES = ("AWS_", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_")

# pyarrow filesystems whose rename replaces a file at once (local disks and mounts, `file://`,
# `hdfs://`). A crash mid-write must leave the old file, not half a new one, so every file is written
# under a temporary name first: renamed into place here; on object stores (s3, gs, abfs), whose
# streams publish what they hold when closed, even by an error, copied into place (server side).
RENAMING = ("local", "hdfs")


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


def join(location: str, name: str) -> str:
    """`location/name` for a local path or a URI."""
    if is_uri(location):
        return str(location).rstrip("/") + "/" + name
    return str(Path(location).expanduser() / name)


def absolute(location):
    """A local path made absolute (other processes run in other working directories); a URI, or
    nothing, as it is."""
    if not location or is_uri(location):
        return location
    return str(Path(location).expanduser().resolve())


def located(location):
    """A location as callers hold it: a Path for a local one, the URI (str) otherwise."""
    return location if is_uri(location) else Path(location)


def split(location) -> tuple:
    """(RunDir of the parent, file name) of a local path or a URI to a file."""
    location = str(location)
    if is_uri(location):
        parent, name = location.rstrip("/").rsplit("/", 1)
        return RunDir(parent), name
    path = Path(location).expanduser()
    return RunDir(path.parent), path.name


def run_location(exp: Experiment) -> str:
    """Where the run directory of `exp` lives: `<uri>/<name>` or the local path."""
    return join(exp.output.dir, exp.run_name())


def storage_env() -> dict:
    """The storage settings of this process's environment (endpoint, region, credentials), for the
    runtime_env of Ray workers and jobs, which must resolve `s3://…` exactly as the driver does."""
    return {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV_PREFIXES)}


class RunDir:
    """A directory on a local disk or a pyarrow filesystem, addressed by relative names
    (`teachers/group0.pt`). Writes are whole objects (a file is written under a temporary name, then
    renamed or copied into place), so neither a reader nor a crash ever leaves half a file or loses
    the old one; there is no append on object stores."""

    def __init__(self, location):
        from pyarrow import fs
        self.location = str(location)
        if is_uri(location):
            self.fs, root = filesystem(self.location)
        else:
            self.fs, root = fs.LocalFileSystem(), str(Path(location).expanduser().resolve())
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"RunDir({self.location!r})"

    def __str__(self) -> str:
        return self.location

    @property
    def storage_filesystem(self):
        """What Ray Train and Tune take as `storage_filesystem` beside `storage_path=self.root`: this
        filesystem behind a URI, None (their own local one) for a local directory."""
        return self.fs if self.local_path is None else None

    @property
    def local_path(self) -> Optional[Path]:
        """The directory as a local Path, or None when it lives behind a URI."""
        return None if is_uri(self.location) else Path(self.root)

    def child(self, name: str) -> "RunDir":
        return RunDir(join(self.location, name))

    def path(self, name: str = "") -> str:
        """The path of `name` inside the filesystem (what pyarrow calls take)."""
        return f"{self.root}/{name}" if name else self.root

    def exists(self, name: str = "") -> bool:
        from pyarrow import fs
        return self.fs.get_file_info(self.path(name)).type != fs.FileType.NotFound

    def is_file(self, name: str) -> bool:
        from pyarrow import fs
        return self.fs.get_file_info(self.path(name)).type == fs.FileType.File

    def listdir(self, name: str = "") -> list:
        """Names of the entries directly under `name` (empty when it does not exist)."""
        from pyarrow import fs
        infos = self.fs.get_file_info(fs.FileSelector(self.path(name), allow_not_found=True))
        return sorted(info.base_name for info in infos)

    def make(self) -> None:
        self.fs.create_dir(self.root, recursive=True)

    def read_bytes(self, name: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(name)) as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{join(self.location, name)}: not found") from None

    def size(self, name: str) -> Optional[int]:
        """Bytes of file `name`, None when it is not a file."""
        from pyarrow import fs
        info = self.fs.get_file_info(self.path(name))
        return info.size if info.type == fs.FileType.File else None

    def write_bytes(self, name: str, data: bytes) -> None:
        self._write(name, lambda f: f.write(data))

    def _write(self, name: str, fill) -> None:
        """Store `name` whole, `fill(stream)` writing its content under a hidden temporary name that
        then replaces it: renamed where the filesystem can rename (RENAMING); on an object store copied
        (a copy replaces the object at once) and the temporary object deleted. Never the real name
        first: closing an object store's stream publishes whatever was written, even after an error.
        If anything fails (an error, Ctrl-C) only the temporary name is removed: the old file, or
        none, stays."""
        path = self.path(name)
        parent, base = path.rsplit("/", 1)
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{base}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with self.fs.open_output_stream(tmp) as f:
                fill(f)
            if self.fs.type_name in RENAMING:
                self.fs.move(tmp, path)
                return
            self.fs.copy_file(tmp, path)
        except BaseException:
            self._discard(tmp)
            raise
        self._discard(tmp)

    def _discard(self, path: str) -> None:
        """Delete file `path` if it is there (a temporary name: nothing to report when it is not)."""
        try:
            self.fs.delete_file(path)
        except OSError:
            pass

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def read_json(self, name: str):
        return json.loads(self.read_text(name))

    def write_json(self, name: str, payload) -> None:
        self.write_text(name, json.dumps(payload, indent=2, default=float))

    def append_line(self, name: str, line: str) -> None:
        """Rewrite `name` with one more line (object stores have no append; logs here are small and
        have one writer)."""
        old = self.read_bytes(name) if self.is_file(name) else b""
        self.write_bytes(name, old + line.rstrip("\n").encode() + b"\n")

    def save_torch(self, name: str, obj) -> None:
        import torch
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        self.write_bytes(name, buffer.getvalue())

    def load_torch(self, name: str, **kwargs):
        import torch
        return torch.load(io.BytesIO(self.read_bytes(name)), **kwargs)

    def delete(self, name: str) -> None:
        from pyarrow import fs
        info = self.fs.get_file_info(self.path(name))
        if info.type == fs.FileType.Directory:
            self.fs.delete_dir(info.path)
        elif info.type == fs.FileType.File:
            self.fs.delete_file(info.path)

    def upload(self, local_dir, name: str = "", last: Optional[str] = None) -> None:
        """Copy the local directory `local_dir` to `name` (recursively), each file whole (see `_write`).
        `last`, a completion marker (relative name), is stored only after every other file is, so a
        reader that sees it sees them all (files otherwise land in any order: several at a time)."""
        local_dir = Path(local_dir)
        prefix = f"{name.rstrip('/')}/" if name else ""
        files = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())

        def put(rel: str) -> None:
            with open(local_dir / rel, "rb") as source:
                self._write(prefix + rel, lambda f: shutil.copyfileobj(source, f, 8 * 2 ** 20))

        self.fs.create_dir(self.path(name), recursive=True)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(put, [rel for rel in files if rel != last]))
        if last in files:
            put(last)

    def download(self, name: str, local_dir) -> Path:
        """Copy `name` (a directory) into the local directory `local_dir`; returns it."""
        from pyarrow import fs
        local_dir = Path(local_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        fs.copy_files(self.path(name), str(local_dir.resolve()), source_filesystem=self.fs,
                      destination_filesystem=fs.LocalFileSystem())
        return local_dir

    @contextmanager
    def local_folder(self, name: str = "") -> Iterator[Path]:
        """A local directory standing for `name`: the directory itself on a local disk; otherwise a
        temporary one whose contents are uploaded when the block ends (for writers such as
        matplotlib and TensorBoard that only take local paths)."""
        if self.local_path is not None:
            path = self.local_path / name if name else self.local_path
            path.mkdir(parents=True, exist_ok=True)
            yield path
            return
        tmp = Path(tempfile.mkdtemp(prefix="raydistill-upload-"))
        try:
            yield tmp
            self.upload(tmp, name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)




