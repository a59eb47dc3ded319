"""Submitting an experiment to a Ray cluster as a Ray Job, and following it.

`submit(experiment, address)` writes the resolved experiment to `experiment.yaml` in a fresh
temporary directory and submits a job whose runtime environment carries that directory
(`working_dir`) and the raydistill package itself (`py_modules`, the directory of the imported
package — works for regular and editable installs alike, and needs nothing installed on the
cluster beyond raydistill's dependencies). The job's entrypoint is

    python -m raydistill.cli run --config experiment.yaml --address auto

so the job driver joins the cluster it runs on and runs one Ray Train fit (`run_distributed`).

Outputs: the job writes to `storage` (when given) or `output.dir`. A relative local
`output.dir` is made absolute on the submitting machine; that is only readable back by
`JobHandle.results()` when the cluster shares that filesystem (a local cluster, NFS). For a
remote cluster give a URI (`s3://bucket/runs`): the run uploads its directory there
(`raydistill.storage`) and `results()` downloads the report files from it.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlparse

from raydistill import storage as _storage
from raydistill.config import Experiment
from raydistill.distributed.reachability import check_reachable

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
CONFIG_NAME = "experiment.yaml"
SPACE_NAME = "space.yaml"
CONNECT_TIMEOUT_S = 5.0


class JobError(RuntimeError):
    """The cluster could not be reached, or the job failed / was stopped (message has the log tail)."""


def dashboard_url(address: Optional[str]) -> str:
    """`http://host:8265` from `host:8265`, `http://host:8265/` or $RAY_ADDRESS when address is None."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise JobError("no cluster address: pass address='http://<head>:8265' (the Ray dashboard) "
                       "or set RAY_ADDRESS")
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = "http://" + address
    scheme = urlparse(address).scheme
    if scheme not in ("http", "https"):
        raise JobError(f"{address}: jobs are submitted to the Ray dashboard's HTTP address, e.g. "
                       f"http://<head>:8265, not a {scheme}:// address")
    return address


def _check_reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast (requests has no connect timeout in Ray's client) with the address in the message."""
    port = urlparse(url).port or (443 if urlparse(url).scheme == "https" else 80)
    try:
        check_reachable(url, "the Ray dashboard", f"is the cluster up (`ray up cluster.yaml`, or `ray start "
                        f"--head`) and is port {port} open?", timeout=timeout)
    except ConnectionError as err:
        raise JobError(str(err)) from None


def _client(url: str):
    from ray.job_submission import JobSubmissionClient
    _check_reachable(url)
    try:
        return JobSubmissionClient(url)
    except Exception as err:  # ConnectionError, RuntimeError (version check), AuthenticationError
        raise JobError(f"cannot submit to the Ray dashboard at {url}: {type(err).__name__}: {err}") from None


def _results(location: str):
    from raydistill.pipeline.report_files import load_run
    from raydistill.pipeline.results import RunResult
    summary, history = load_run(location)
    return RunResult(run_dir=_storage.located(location),
                     teachers=summary.get("teachers") or {}, methods=summary["methods"], history=history)


class JobHandle:
    """A submitted raydistill job: `status()`, `logs()`, `wait()`, `results()`."""

    def __init__(self, job_id: str, address: str, run_location: str, client=None, kind: str = "run"):
        self.job_id = job_id
        self.address = address
        self.run_location = run_location   # local path or URI of the run (or search) directory
        self.kind = kind                   # "run" or "search"
        self._client = client

    @property
    def client(self):
        if self._client is None:
            self._client = _client(self.address)
        return self._client

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r}, address={self.address!r}, run={self.run_location!r})"

    def status(self) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
        status = self.client.get_job_status(self.job_id)
        return getattr(status, "value", str(status))

    def logs(self) -> str:
        return self.client.get_job_logs(self.job_id)

    def stop(self) -> bool:
        return self.client.stop_job(self.job_id)

    def wait(self, timeout: Optional[float] = None, poll: float = 1.0) -> str:
        """Poll until the job ends; return "SUCCEEDED", raise JobError (with the log tail) if it
        FAILED or was STOPPED, TimeoutError if `timeout` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if status == "SUCCEEDED":
                return status
            if status in TERMINAL:
                info = self.client.get_job_info(self.job_id)
                tail = "\n".join(self.logs().splitlines()[-30:])
                raise JobError(f"job {self.job_id} {status} on {self.address}"
                               f"{': ' + info.message if getattr(info, 'message', None) else ''}\n"
                               f"--- last lines of the job log ---\n{tail}")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} still {status} after {timeout} s on {self.address}")
            time.sleep(poll)

    def results(self):
        """A run: RunResult (teachers, methods, history, run_dir) read back from the run's storage.
        A search: SearchResult (table of trials, best row, best.yaml) read from the search directory."""
        if self.kind == "search":
            from raydistill.search.tuner import load_search
            return load_search(self.run_location)
        return _results(self.run_location)


@dataclass
class JobSpec:
    """What a job ships and runs: one config file in its working_dir and the command that uses it."""
    kind: str           # "run" or "search"
    name: str
    filename: str
    text: str
    entrypoint: str
    location: str       # where results are read back (run directory, or search directory)


def _portable(exp: Experiment) -> Experiment:
    """Paths made absolute on this machine (the job runs in another directory); an unusable storage
    URI fails here, not on the cluster."""
    from raydistill.pipeline.prepare import with_absolute_paths
    if _storage.is_uri(exp.output.dir):
        _storage.filesystem(exp.output.dir)
    return with_absolute_paths(exp)


def experiment_job(experiment: Union[Experiment, str], storage: Optional[str] = None) -> JobSpec:
    exp = copy.deepcopy(experiment if isinstance(experiment, Experiment) else Experiment.load(experiment))
    if storage is not None:
        exp.output.dir = str(storage)
    exp = _portable(exp).validate()
    return JobSpec("run", exp.run_name(), CONFIG_NAME, exp.to_yaml(),
                   f"python -m raydistill.cli run --config {CONFIG_NAME} --address auto", _storage.run_location(exp))


def search_job(space, storage: Optional[str] = None) -> JobSpec:
    """A search ships as one self-contained space file (base experiment inlined, absolute paths);
    it writes to a storage URI or to a filesystem path every node and the submitting machine share."""
    import yaml
    from raydistill.search.space import load_space, space_to_dict
    space = copy.deepcopy(load_space(space))
    output = storage if storage is not None else space.output
    if _storage.is_uri(output):
        _storage.filesystem(output)   # an unusable URI fails here, not on the cluster
    space.output = _storage.absolute(output)
    space.base = _portable(space.base)
    space.base.ray.address = "auto"
    text = yaml.safe_dump(space_to_dict(space), sort_keys=False)
    return JobSpec("search", space.name, SPACE_NAME, text, f"python -m raydistill.cli tune {SPACE_NAME}",
                   _storage.join(space.output, space.name))


def is_search(work) -> bool:
    """A SearchSpace, a YAML file with a `search:` section, or the name of a space in tune_spaces/
    that is not also a shipped experiment."""
    from raydistill.config import load_yaml, shipped_experiments
    if isinstance(work, Experiment):
        return False
    if type(work).__name__ == "SearchSpace":
        return True
    path = Path(str(work))
    if path.is_file():
        raw = load_yaml(path.read_text())
        return isinstance(raw, dict) and "search" in raw
    if str(work) in shipped_experiments():
        return False
    from raydistill.search.space import SpaceError, find_space
    try:
        find_space(str(work))
        return True
    except SpaceError:
        return False


def submit(work, address: Optional[str] = None, *, storage: Optional[str] = None, wait: bool = False,
           timeout: Optional[float] = None, env_vars: Optional[dict] = None, job_id: Optional[str] = None) -> JobHandle:
    """Submit `work` as a Ray Job to the dashboard at `address` (`http://<head>:8265`; default
    $RAY_ADDRESS): an experiment (an Experiment, a YAML path or a shipped name), which runs like
    `raydistill run`, or a curriculum search (a SearchSpace, a space file or a name in tune_spaces/),
    which runs like `raydistill tune`. `storage` replaces output.dir (a shared path or, for runs, a
    URI such as `s3://bucket/runs`) or the search's output. Relative paths are resolved on this
    machine. With `wait=True` block until the job succeeds (JobError if it fails). `env_vars` are
    added to the job's environment."""
    import raydistill

    spec = search_job(work, storage) if is_search(work) else experiment_job(work, storage)
    url = dashboard_url(address)
    client = _client(url)

    job_id = job_id or f"raydistill-{spec.name}-{uuid.uuid4().hex[:8]}"
    staging = Path(tempfile.mkdtemp(prefix="raydistill-job-"))
    try:
        (staging / spec.filename).write_text(spec.text)
        runtime_env = {"working_dir": str(staging),
                       "py_modules": [str(Path(raydistill.__file__).resolve().parent)]}
        # a URI output: the job resolves it with this machine's storage settings (endpoint, keys)
        forwarded = {**(_storage.storage_env() if _storage.is_uri(spec.location) else {}), **(env_vars or {})}
        if forwarded:
            runtime_env["env_vars"] = {str(k): str(v) for k, v in forwarded.items()}
        try:
            client.submit_job(entrypoint=spec.entrypoint, submission_id=job_id, runtime_env=runtime_env,
                              metadata={"raydistill_kind": spec.kind, "raydistill_location": spec.location})
        except Exception as err:
            raise JobError(f"submitting to {url} failed: {type(err).__name__}: {err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)   # uploaded by submit_job
    handle = JobHandle(job_id, url, spec.location, client=client, kind=spec.kind)
    if wait:
        handle.wait(timeout=timeout)
    return handle
