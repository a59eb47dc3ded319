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
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlparse

from raydistill import storage as _storage
from raydistill.config import Experiment

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
CONFIG_NAME = "experiment.yaml"
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
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, socket.timeout) else (err.strerror or str(err))
        raise JobError(f"cannot reach the Ray dashboard at {url} ({reason}); is the cluster up "
                       f"(`ray up cluster.yaml`, or `ray start --head`) and is port {port} open?") from None


def _client(url: str):
    from ray.job_submission import JobSubmissionClient
    _check_reachable(url)
    try:
        return JobSubmissionClient(url)
    except Exception as err:  # ConnectionError, RuntimeError (version check), AuthenticationError
        raise JobError(f"cannot submit to the Ray dashboard at {url}: {type(err).__name__}: {err}") from None


def _results(location: str):
    from raydistill.runner import RunResult
    summary, history = _storage.load_run(location)
    return RunResult(run_dir=Path(location) if not _storage.is_uri(location) else location,
                     teachers=summary.get("teachers") or {}, methods=summary["methods"], history=history)


class JobHandle:
    """A submitted raydistill job: `status()`, `logs()`, `wait()`, `results()`."""

    def __init__(self, job_id: str, address: str, run_location: str, client=None):
        self.job_id = job_id
        self.address = address
        self.run_location = run_location   # local path or URI of the run directory
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
        """RunResult (teachers, methods, history, run_dir) read back from the run's storage."""
        return _results(self.run_location)


def submit(experiment: Union[Experiment, str], address: Optional[str] = None, *, storage: Optional[str] = None,
           wait: bool = False, timeout: Optional[float] = None, env_vars: Optional[dict] = None,
           job_id: Optional[str] = None) -> JobHandle:
    """Submit `experiment` (an Experiment, a YAML path or a shipped name) as a Ray Job to the
    dashboard at `address` (`http://<head>:8265`; default $RAY_ADDRESS). `storage` replaces
    `output.dir` (a shared path or a URI such as `s3://bucket/runs`). With `wait=True` block until
    the job succeeds (JobError if it fails). `env_vars` are added to the job's environment."""
    import raydistill

    exp = copy.deepcopy(experiment if isinstance(experiment, Experiment) else Experiment.load(experiment))
    if storage is not None:
        exp.output.dir = str(storage)
    if not _storage.is_uri(exp.output.dir):
        exp.output.dir = str(Path(exp.output.dir).expanduser().resolve())
    else:
        _storage.filesystem(exp.output.dir)   # an unusable URI fails here, not on the cluster
    exp.validate()
    url = dashboard_url(address)
    client = _client(url)

    job_id = job_id or f"raydistill-{exp.run_name()}-{uuid.uuid4().hex[:8]}"
    staging = Path(tempfile.mkdtemp(prefix="raydistill-job-"))
    try:
        (staging / CONFIG_NAME).write_text(exp.to_yaml())
        runtime_env = {"working_dir": str(staging),
                       "py_modules": [str(Path(raydistill.__file__).resolve().parent)]}
        if env_vars:
            runtime_env["env_vars"] = {str(k): str(v) for k, v in env_vars.items()}
        try:
            client.submit_job(entrypoint=f"python -m raydistill.cli run --config {CONFIG_NAME} --address auto",
                              submission_id=job_id, runtime_env=runtime_env,
                              metadata={"raydistill_run": _storage.run_location(exp)})
        except Exception as err:
            raise JobError(f"submitting to {url} failed: {type(err).__name__}: {err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)   # uploaded by submit_job
    handle = JobHandle(job_id, url, _storage.run_location(exp), client=client)
    if wait:
        handle.wait(timeout=timeout)
    return handle
