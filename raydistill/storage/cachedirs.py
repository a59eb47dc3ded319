"""Cache directories keyed by content (decoded shards, soft labels): when one is complete, one
builder per key, and node-local mirrors of a storage URI.

A directory is complete when its marker `meta.json` exists and every file the marker lists is there
with its recorded size; the marker is always written last (locally: the directory is renamed into
place; to a URI: uploaded after every other file), so a reader that sees it sees the files.

Builders of one key take the key's lock (`flock` on `.<name>.lock` beside the directory), so
concurrent stages or processes build a key once: the others wait, then find the complete directory
and reuse it; nothing complete is deleted. The kernel drops the lock of a builder that dies.
The lock is per machine (and per shared mount where flock works); on a URI two nodes may both
build, but each publishes its marker last and never over a complete copy.

A mirror of a URI is downloaded into a temporary directory and renamed into place only once
complete, and checked again before every use: a half copy (one that older code left) is
downloaded again, never trusted. A stored copy that is itself incomplete is an error for a reader
and is rebuilt (and published over) by a builder.

A local cache root that cannot hold caches (a file, under a file, not creatable) is a ConfigError
naming its config field before any work (`check_cache_roots`, called by `prepare_data`).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from raydistill.config import ConfigError
from raydistill.storage import RunDir, is_uri

META_FILE = "meta.json"


class IncompleteCacheError(FileNotFoundError):
    """A stored cache whose marker lists a file that is missing or of another size."""


def manifest(directory) -> dict:
    """{file name: bytes} of every file in `directory` but the marker: what a builder records in
    meta.json, so a reader can tell a complete directory from a partial copy."""
    return {p.name: p.stat().st_size for p in sorted(Path(directory).iterdir())
            if p.is_file() and p.name != META_FILE}


def listed_files(meta: dict) -> dict:
    """{file: bytes or None} a marker promises: its `manifest`, or for markers written before there
    was one, the soft-label cache's `files` or the decoded shards' `train`/`test` lists."""
    if "manifest" in meta:
        return dict(meta["manifest"])
    if "files" in meta:
        return {info["file"]: info.get("bytes") for info in meta["files"].values()}
    listed = {}
    for split in ("train", "test"):
        if split in meta:
            listed.update({shard: None for shard in meta[split]["shards"]})
            listed[f"{split}-labels.npy"] = None
    return listed


def incomplete(where, name: str = "") -> Optional[str]:
    """None when directory `name` of `where` (a RunDir, a local path or URI) is a complete cache;
    else why not, naming the file."""
    store = where if isinstance(where, RunDir) else RunDir(where)
    prefix = f"{name}/" if name else ""
    marker = f"{store.location.rstrip('/')}/{prefix}{META_FILE}"
    try:
        files = listed_files(json.loads(store.read_text(prefix + META_FILE)))
    except FileNotFoundError:
        return f"{marker}: not found"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{marker}: not a cache marker ({type(err).__name__}: {err})"
    for file, expected in sorted(files.items()):
        size = store.size(prefix + file)
        if size is None:
            return f"{marker} lists {file}, which is missing"
        if expected is not None and size != expected:
            return f"{marker} lists {file} with {expected} bytes, found {size}"
    return None


def unusable_root(location) -> Optional[str]:
    """Why the local cache root `location` cannot hold caches (it is a file, lies under one, or
    cannot be created), or None. A URI (mirrored under the temp dir) passes, and so does an existing
    directory even when read-only: it may hold complete caches, which are read without a lock."""
    if not location or is_uri(location):
        return None
    path = Path(location).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path:
        return None if path.is_dir() else f"{path} is a file, expected a directory"
    if not existing.is_dir():
        return f"{path} lies under {existing}, which is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot create {path}: {existing} is not writable"
    return None


def check_cache_roots(exp) -> None:
    """Before any work: data.cache_dir (decoded shards) and teachers.cache_dir (soft labels), and
    output.dir where either defaults under it, must be usable cache roots; ConfigError naming the
    field otherwise, rather than a traceback from the first cache lock (see `unusable_root`)."""
    roots = [(exp.data.cache_dir, "data.cache_dir"), (exp.teachers.cache_dir, "teachers.cache_dir")]
    if not (exp.data.cache_dir and exp.teachers.cache_dir):
        roots.append((exp.output.dir, "output.dir"))
    for location, field in roots:
        problem = unusable_root(location)
        if problem:
            raise ConfigError(f"{field}: {problem}")


class CacheDirError(ConfigError):
    """A cache that has to be built where it cannot be (the directory is read-only, or not one)."""


@contextmanager
def build_lock(directory, log: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """Hold the lock of cache directory `directory` (a local path) while building or repairing it;
    CacheDirError, one line naming the directory, when its parent cannot hold the lock."""
    directory = Path(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        handle = open(directory.parent / f".{directory.name}.lock", "a")
    except OSError as err:   # a file in the way, a read-only directory
        raise CacheDirError(f"cache directory {directory.parent}: cannot build cache {directory.name} there "
                            f"({type(err).__name__}: {err.strerror or err})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log:
                log(f"cache {directory}: another process is building it; waiting to reuse it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mirror_dir(root, name: str) -> Path:
    """The local directory of cache `name` under `root`: `root/name` for a local root; for a URI,
    this node's mirror of it (under $RAYDISTILL_CACHE_MIRROR or the temp dir)."""
    if not is_uri(root):
        return Path(root).expanduser() / name
    base = os.environ.get("RAYDISTILL_CACHE_MIRROR") or os.path.join(tempfile.gettempdir(), "raydistill-softlabels")
    return Path(base) / hashlib.sha1(str(root).rstrip("/").encode()).hexdigest()[:12] / name


def mirror(root, name: str, on_incomplete: Optional[Callable[[str], None]] = None) -> Path:
    """`mirror_dir`, downloaded again unless complete when the storage holds a complete copy. The
    caller holds the key's `build_lock`. A stored copy whose marker lists a missing file raises
    IncompleteCacheError, or for a builder (`on_incomplete`) is reported there and left to rebuild."""
    local = mirror_dir(root, name)
    if not is_uri(root) or incomplete(local) is None:
        return local
    remote = RunDir(root)
    if not remote.is_file(f"{name}/{META_FILE}"):   # nothing stored (yet)
        return local
    problem = incomplete(remote, name)
    if problem is not None:                          # a half upload: never trusted
        if on_incomplete is None:
            raise IncompleteCacheError(f"cache {remote.location.rstrip('/')}/{name} is incomplete: {problem}")
        on_incomplete(f"cache {remote.location.rstrip('/')}/{name} is incomplete ({problem}); rebuilding it")
        return local
    tmp = local.parent / f".{name}.download-{uuid.uuid4().hex[:8]}"
    try:
        remote.download(name, tmp)
        if incomplete(tmp) is None:
            shutil.rmtree(local, ignore_errors=True)
            tmp.rename(local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


def local_cache_dir(root, name: str, on_incomplete: Optional[Callable[[str], None]] = None) -> Path:
    """The local directory of cache `name` under `root` (see `mirror_dir`); for a URI the mirror is
    made complete first when the storage holds a complete copy (deleting it costs one download).
    `on_incomplete`: see `mirror`."""
    if not is_uri(root):
        return mirror_dir(root, name)
    with build_lock(mirror_dir(root, name)):
        return mirror(root, name, on_incomplete)


def publish(root, directory: Path) -> None:
    """Upload the complete local cache `directory` to the URI `root` as `<root>/<name>`, its marker
    last. Skipped when the storage already holds it complete (another node built the same key)."""
    remote, name = RunDir(root), Path(directory).name
    if incomplete(remote, name) is None:
        return
    if remote.is_file(f"{name}/{META_FILE}"):   # the marker of a half upload: take it down first
        remote.delete(f"{name}/{META_FILE}")
    remote.upload(directory, name, last=META_FILE)
