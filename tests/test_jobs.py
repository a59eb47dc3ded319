"""Ray Job submission (raydistill.submit / `raydistill submit`) against a real local Ray head.

The head is a separate `ray start --head` (venv's `ray` binary) with its own --temp-dir and its own
ports. It is stopped by terminating exactly the processes of that head — those whose command line
names its temp dir (gcs_server, raylet, dashboard, agents, workers and the job supervisor all get
the session directory on their command line) — never with `ray stop`, which kills every Ray
process of the user on the machine, including an in-process `ray.init` of this test session or
another engineer's run.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import tiny_experiment

VENV_BIN = Path(sys.executable).parent
REPO_SPACES = Path(__file__).resolve().parents[1] / "tune_spaces"
RAY_BIN = VENV_BIN / "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head_processes(temp_dir: str) -> list:
    import psutil
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in (proc.info["cmdline"] or [])):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def stop_head(temp_dir: str) -> None:
    """Terminate the processes of the head started with --temp-dir=temp_dir (and their children)."""
    import psutil
    procs = head_processes(temp_dir)
    for proc in list(procs):
        try:
            procs += proc.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    procs = list({p.pid: p for p in procs if p.pid != os.getpid()}.values())
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=1)   # a test's cluster: no graceful shutdown to wait for
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def ray_head():
    """http://127.0.0.1:<port> of a fresh Ray head with the dashboard (job API), 2 CPUs."""
    if not RAY_BIN.exists():
        pytest.skip(f"no ray binary at {RAY_BIN}")
    temp_dir = tempfile.mkdtemp(prefix="rdj", dir="/tmp")   # short: Ray's unix sockets live under it
    dash = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1",
           # the job entrypoint runs `python -m raydistill.cli`: it must find this venv's python
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(RAY_BIN), "start", "--head", f"--port={free_port()}", f"--dashboard-port={dash}",
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={temp_dir}",
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", f"--node-manager-port={free_port()}",
           f"--object-manager-port={free_port()}", "--disable-usage-stats"]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            pytest.fail(f"ray start failed:\n{started.stdout}\n{started.stderr}")
        yield f"http://127.0.0.1:{dash}"
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def job_experiment(tmp_path):
    return tiny_experiment(tmp_path / "runs", **{
        "teachers.epochs": 1, "curriculum.grade_epochs": "[1,1,1]", "data.train_per_class": 40,
        "data.test_per_class": 20, "name": "jobtiny"})


@pytest.mark.slow
def test_submit_python_api(ray_head, tmp_path):
    from raydistill import submit
    from raydistill.pipeline.report_files import report_text
    exp = job_experiment(tmp_path)
    handle = submit(exp, ray_head)
    assert handle.job_id.startswith("raydistill-jobtiny-")
    assert handle.status() in ("PENDING", "RUNNING", "SUCCEEDED")
    assert handle.wait(timeout=240) == "SUCCEEDED", handle.logs()[-3000:]
    result = handle.results()
    assert list(result.methods) == ["ed"] and 0 <= result.methods["ed"]["final_test_acc"] <= 1
    assert sorted(result.teachers) == ["group0", "group1", "group2"]
    assert {row["method"] for row in result.history} >= {"ed"}
    assert Path(result.run_dir) == tmp_path / "runs" / "jobtiny"
    assert result.table() == report_text(result.run_dir)
    assert "ed" in handle.logs()


@pytest.mark.slow
def test_submit_cli_wait_with_uri_storage(ray_head, tmp_path, capsys):
    """`raydistill submit --wait` prints the job id and the table; storage is a file:// URI, so the
    run writes through pyarrow's filesystem calls (the s3:// case is in test_cluster.py)."""
    from raydistill.cli import main
    config = tmp_path / "exp.yaml"
    config.write_text(job_experiment(tmp_path / "unused").to_yaml())
    storage = (tmp_path / "shared").as_uri()
    rc = main(["submit", "--address", ray_head, "--config", str(config), "--set", "name=clitiny",
               "--storage", storage, "--wait", "--timeout", "240"])
    out = capsys.readouterr().out
    assert rc == 0, out
    job_id, table = out.split("\n", 1)
    assert job_id.startswith("raydistill-clitiny-")
    assert "ed" in table
    assert (tmp_path / "shared" / "clitiny" / "summary.json").is_file()
    from raydistill.pipeline.report_files import load_run
    summary, _ = load_run(storage + "/clitiny")
    assert list(summary["methods"]) == ["ed"]


def test_unreachable_address_fails_fast(tmp_path):
    from raydistill import submit
    from raydistill.distributed.jobs import JobError
    address = f"http://127.0.0.1:{free_port()}"   # nothing listens there
    started = time.monotonic()
    with pytest.raises(JobError) as err:
        submit(job_experiment(tmp_path), address)
    assert time.monotonic() - started < 15
    assert address in str(err.value)


def test_cli_submit_unreachable(tmp_path, capsys):
    from raydistill.cli import main
    address = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "exp.yaml"
    config.write_text(job_experiment(tmp_path).to_yaml())
    assert main(["submit", "--address", address, "--config", str(config)]) == 1
    assert address in capsys.readouterr().err


def test_address_forms():
    from raydistill.distributed.jobs import JobError, dashboard_url
    assert dashboard_url("head:8265") == "http://head:8265"
    assert dashboard_url("http://head:8265/") == "http://head:8265"
    with pytest.raises(JobError, match="ray://"):
        dashboard_url("ray://head:10001")


def test_a_search_ships_as_one_self_contained_space(tmp_path, monkeypatch):
    """submit() of a search sends one space file with the base inlined and absolute paths; loaded in
    the job's directory it samples exactly the trials the original space does."""
    from raydistill.distributed.jobs import is_search, search_job
    from raydistill.search.space import load_space, space_from_dict
    from raydistill.config import load_yaml
    assert is_search("smoke") and not is_search("default") and not is_search(job_experiment(tmp_path))
    spec = search_job("smoke", storage="relative/tune")
    assert spec.kind == "search" and spec.entrypoint == "python -m raydistill.cli tune space.yaml"
    assert spec.location == str(Path("relative/tune").resolve() / "smoke")
    monkeypatch.chdir(tmp_path)                      # the job runs elsewhere: nothing may depend on the cwd
    shipped = space_from_dict(load_yaml(spec.text), source="space.yaml", base_dir=tmp_path)
    original = load_space(REPO_SPACES / "smoke.yaml")
    assert shipped.candidates() == original.candidates()
    assert shipped.base.ray.address == "auto" and Path(shipped.output).is_absolute()
    uri = search_job("smoke", storage="file:///shared/tune")   # a URI is kept as it is, like a run's storage
    assert uri.location == "file:///shared/tune/smoke"
    assert space_from_dict(load_yaml(uri.text), source="space.yaml").output == "file:///shared/tune"
    with pytest.raises(Exception, match="output.dir: cannot use storage URI 'nosuchscheme://b/tune'"):
        search_job("smoke", storage="nosuchscheme://b/tune")


@pytest.mark.slow
def test_search_runs_as_a_job_end_to_end(ray_head, tmp_path, capsys):
    """`raydistill submit --space smoke --wait`: the search runs inside the job (teachers once, one
    Ray Train run per trial) and its files land in --storage; the trials table is printed."""
    import pandas as pd
    from raydistill.cli import main
    rc = main(["submit", "--address", ray_head, "--space", "smoke", "--storage", str(tmp_path / "tune"),
               "--wait", "--timeout", "400"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.startswith("raydistill-smoke-") and "trial-000" in out
    search_dir = tmp_path / "tune" / "smoke"
    trials = pd.read_parquet(search_dir / "trials.parquet")
    assert len(trials) == 4 and trials["trial"].nunique() == 4
    assert (search_dir / "best.yaml").is_file()
    assert sorted(p.name for p in (search_dir / "teachers").glob("*.pt")) == ["group0.pt", "group1.pt"]
