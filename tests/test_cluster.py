"""A real multi-node cluster against a local S3 server.

- S3: moto's server mode on 127.0.0.1; pyarrow reaches it through AWS_ENDPOINT_URL (+ keys), as a
  user's `s3://` output.dir would reach AWS.
- Head: `ray start --head --num-cpus=0` (like cluster.yaml's head: no CPU for training), with the
  dashboard (job API).
- Worker nodes: `ray start --address=<head>` inside a private mount namespace with a fresh tmpfs
  over /tmp (`unshare -m`), so they do not see the driver's files (pytest's tmp_path, any
  /tmp/raydistill-* directory): like a second machine, they share nothing with the driver but the
  network. What the node runs from (this venv, its Python, the checkout) is bound back when it lies
  under /tmp (a fresh clone in a temporary directory). A node's own output goes to a log that a
  node failing to join is reported with. Each node is stopped by killing exactly its processes
  (never `ray stop`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import tiny_experiment
from test_jobs import RAY_BIN, VENV_BIN, free_port, stop_head

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[1]
BUCKET = "bucket"


@pytest.fixture(scope="module")
def s3():
    """Environment variables that point pyarrow (and so raydistill) at a local S3 server with one bucket."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] is needed for the local S3 server")
    import logging
    from pyarrow import fs
    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # one log line per request otherwise
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    fs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="testing", secret_key="testing",
                    region="us-east-1", allow_bucket_creation=True).create_dir(BUCKET)
    yield env
    server.stop()


def node_environment() -> list:
    """What a worker node runs from: this venv, the Python it was made from, the checkout."""
    return [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent, REPO]


def private_tmp_script(command: str, keep=()) -> str:
    """sh script for `unshare -m --propagation private`: a fresh tmpfs over /tmp (the node sees none
    of the driver's temporary files), with each `keep` path that lies under /tmp bound back into it
    first (a checkout and venv cloned under /tmp: hidden, the node could not even start `ray`),
    then `command`. Each kept directory is opened before the tmpfs covers it and bound from that
    descriptor (/proc/self/fd/N; --no-canonicalize: mount must not re-resolve it by name)."""
    tmp = Path("/tmp").resolve()
    under = sorted({Path(p).resolve() for p in keep} - {tmp})
    under = [p for p in under if p.is_relative_to(tmp) and p.is_dir()]
    under = [p for p in under if not any(q != p and p.is_relative_to(q) for q in under)]   # outermost only
    assert len(under) <= 7, under   # sh redirects single-digit descriptors
    steps = [f"exec {3 + i}<{shlex.quote(str(p))}" for i, p in enumerate(under)]
    steps.append("mount -t tmpfs tmpfs /tmp")
    for i, p in enumerate(under):
        steps += [f"mkdir -p {shlex.quote(str(p))}",
                  f"mount --no-canonicalize --bind /proc/self/fd/{3 + i} {shlex.quote(str(p))}",
                  f"exec {3 + i}<&-"]
    return " && ".join(steps + [command])


class Nodes:
    """A head without CPUs and worker nodes that each have a filesystem of their own."""

    def __init__(self, env: dict):
        self.env = env
        self.temp_dir = tempfile.mkdtemp(prefix="rdc", dir="/tmp")   # short: unix socket paths live under it
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self.workers = {}   # node temp dir -> Popen

    def start_head(self) -> None:
        port, gcs = self.dashboard.rsplit(":", 1)[1], free_port()
        cmd = [str(RAY_BIN), "start", "--head", f"--port={gcs}", "--num-cpus=0", f"--temp-dir={self.temp_dir}",
               f"--dashboard-port={port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", "--disable-usage-stats"]
        started = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            pytest.fail(f"ray start --head failed:\n{started.stdout}\n{started.stderr}")
        self.address = f"127.0.0.1:{gcs}"
        self.wait_for(lambda: len(self.alive()) == 1, "the head's dashboard (State API)", timeout=60)
        (self.head,) = self.alive()

    def add_worker(self, cpus: int = 2, wait: bool = True) -> str:
        """Start a worker node in its own mount namespace (tmpfs over /tmp); returns its temp dir tag.
        wait=False: return at once, to start the node while the test goes on (then wait_to_join)."""
        tag = self.spawn(f"mkdir -p {{tag}} && exec {RAY_BIN} start --address={self.address} "
                         f"--num-cpus={cpus} --temp-dir={{tag}} --disable-usage-stats --block")
        if wait:
            self.wait_to_join(tag)
        return tag

    def spawn(self, command: str) -> str:
        """Run `command` ({tag}: the node's temp dir) as a node in a mount namespace of its own, its
        stdout and stderr in a log outside it; returns the tag."""
        tag = f"/tmp/rdw{uuid.uuid4().hex[:6]}"
        script = private_tmp_script(command.format(tag=tag), keep=node_environment())
        with open(self.log_of(tag), "wb") as log:
            self.workers[tag] = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                                 env=self.env, start_new_session=True, stdout=log,
                                                 stderr=subprocess.STDOUT)
        return tag

    def log_of(self, tag: str) -> Path:
        return Path(self.temp_dir) / f"{Path(tag).name}.log"

    def why_not_joined(self, tag: str) -> str:
        rc = self.workers[tag].poll()
        state = "still running" if rc is None else f"exited with {rc}"
        text = self.log_of(tag).read_text(errors="replace") if self.log_of(tag).exists() else ""
        return f"worker node {tag} {state}; its output:\n{text[-4000:] or '(none)'}"

    def wait_to_join(self, tag: str, timeout: float = 180) -> None:
        """Until the node's raylet is alive in the cluster; fails with the node's own output when it
        exits first or does not join in time."""
        proc = self.workers[tag]
        self.wait_for(lambda: proc.poll() is not None or self.node_id(tag) in self.alive(),
                      "the worker node to join", timeout, detail=lambda: self.why_not_joined(tag))
        if proc.poll() is not None:
            pytest.fail(f"the worker node did not join: {self.why_not_joined(tag)}")

    def node_id(self, tag: str):
        """The Ray node id of worker node `tag` (its raylet's --node_id), None before it starts."""
        import psutil
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            flags = [p for p in cmdline if p.startswith(("--node_id=", "--node-id="))]
            if flags and any(tag in part for part in cmdline):
                return flags[0].split("=", 1)[1]
        return None   # its raylet has not started (yet)

    def sees(self, tag: str, path: Path) -> bool:
        """Whether processes of worker node `tag` see `path` (checked inside its mount namespace)."""
        pid = self.workers[tag].pid
        return subprocess.run(["nsenter", "-t", str(pid), "-m", "test", "-e", str(path)]).returncode == 0

    def remove_worker(self, tag: str) -> None:
        proc = self.workers.pop(tag)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        stop_head(tag)   # anything of that node that left the process group

    def alive(self) -> list:
        """Node ids of the live nodes, from the head's State API (an HTTP request: a Python process
        connecting with ray.init took 1.3-3 s per look, several looks per node started)."""
        import urllib.request
        try:
            with urllib.request.urlopen(f"{self.dashboard}/api/v0/nodes?limit=10000", timeout=30) as reply:
                listed = json.load(reply)["data"]["result"]["result"]
        except (OSError, ValueError, KeyError):
            return []   # the dashboard is not serving yet
        return sorted(n["node_id"] for n in listed if n["state"] == "ALIVE")

    def wait_for(self, condition, what: str, timeout: float = 180, detail=None) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                return
            time.sleep(0.5)
        pytest.fail(f"timed out waiting for {what}" + (f": {detail()}" if detail else ""))

    def shutdown(self) -> None:
        for tag in list(self.workers):
            self.remove_worker(tag)
        stop_head(self.temp_dir)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def need_namespaces():
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("worker nodes with a filesystem of their own need root and unshare/nsenter (util-linux)")


@contextlib.contextmanager
def started_cluster(s3, workers: int = 0):
    """A head and `workers` worker nodes, shut down on exit."""
    need_namespaces()
    if not RAY_BIN.exists():
        pytest.skip(f"no ray binary at {RAY_BIN}")
    env = {**os.environ, **s3, "RAY_AUTH_MODE": "disabled", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
           # a removed node is declared dead after 3 failed health checks 0.5 s apart, not Ray's
           # default 5 x 3 s (the node-removal test waited on it twice: 111 -> 85 s). A killed
           # node's raylet refuses at once; a live one starved by a loaded machine still has 3 s
           # to answer each check (Ray's default: 10 s)
           "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "3000",
           "RAY_health_check_failure_threshold": "3",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cluster = Nodes(env)
    try:
        cluster.start_head()
        for _ in range(workers):
            cluster.add_worker()
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture
def nodes(s3):
    """A head alone, for a test that adds and removes worker nodes itself."""
    with started_cluster(s3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster(s3):
    """A head and one worker node, shared by the tests that neither add nor remove a node (a
    cluster started and stopped: ~9 s). Each names its own run, so none reads another's state."""
    with started_cluster(s3, workers=1) as cluster:
        yield cluster


@pytest.fixture
def bucket(s3, monkeypatch):
    """RunDir of the whole bucket, as the test (not the run) sees it."""
    from raydistill.storage import RunDir
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    return RunDir(f"s3://{BUCKET}")


def cluster_experiment(tmp_path, name: str, **overrides):
    exp = tiny_experiment(f"s3://{BUCKET}/runs", **{
        "name": name, "teachers.epochs": 1, "curriculum.grade_epochs": "[1,1,1]", "data.train_per_class": 40,
        "data.test_per_class": 20, "ray.cpus_per_worker": 1, **overrides})
    config = tmp_path / f"{name}.yaml"
    config.write_text(exp.to_yaml())
    return config


def raydistill(nodes, cwd: Path, *args, timeout: float = 420, wait: bool = True):
    cmd = [sys.executable, "-m", "raydistill.cli", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=nodes.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(cmd, cwd=cwd, env=nodes.env, capture_output=True, text=True, timeout=timeout)


def epoch_log(run) -> list:
    """Every epoch line of a run in storage: `epochs.jsonl` (one fit for the graph) and
    `epochs/<stage>.jsonl` (an executor per stage)."""
    names = (["epochs.jsonl"] if run.is_file("epochs.jsonl") else []) + \
        [f"epochs/{n}" for n in (run.listdir("epochs") if run.exists("epochs") else [])]
    return [json.loads(line) for name in names for line in run.read_text(name).splitlines()]


# the first cluster test: the shared `cluster`, started by the next one, does not idle beside its nodes
def test_node_removal_then_resume_from_the_bucket_with_empty_local_disks(nodes, bucket, tmp_path):
    """The worker node dies mid-run. With max_failures 0 the run stops; after deleting every local
    directory of the driver, the same command (max_failures 1) resumes from the bucket on a new
    node; that node is removed too, and the run goes on on a replacement. Every epoch once. The run
    is one Ray Train fit for the graph (`ray.executor: fit`): FailureConfig restarts its workers; a
    task's own restart is tested in tests/test_executors.py."""
    first = nodes.add_worker()
    # enough epochs (and images) that the resumed run is still training when its node is removed:
    # it is removed right after the resumed run's first epoch, the 2nd or 3rd of 8
    config = cluster_experiment(tmp_path, "removal", **{"curriculum.grade_epochs": "[2,2,4]",
                                                        "data.train_per_class": 150, "ray.executor": "fit"})
    run = bucket.child("runs/removal")
    workdir = tmp_path / "driver"
    workdir.mkdir()

    def ed_epochs() -> list:
        if not run.is_file("epochs.jsonl"):
            return []
        return [e["epoch"] for e in map(json.loads, run.read_text("epochs.jsonl").splitlines())
                if e["stage"] == "method:ed"]

    driver = raydistill(nodes, workdir, "run", "--config", str(config), "--address", nodes.address, wait=False)
    nodes.wait_for(lambda: len(ed_epochs()) >= 1 or driver.poll() is not None, "ed's first epoch", timeout=400)
    nodes.remove_worker(first)
    # the next node starts while the run stops: with max_failures 0 nothing is rescheduled on it
    second = nodes.add_worker(wait=False)
    out, _ = driver.communicate(timeout=300)
    assert driver.returncode != 0 and "re-run the same command to resume" in out, out[-3000:]
    stopped_at = len(ed_epochs())

    assert [p.name for p in workdir.iterdir()] == []   # the driver's only local directory: empty
    shutil.rmtree(workdir)
    workdir.mkdir()
    nodes.wait_to_join(second)
    driver = raydistill(nodes, workdir, "run", "--config", str(config), "--address", nodes.address,
                        "--set", "ray.max_failures=1", wait=False)
    nodes.wait_for(lambda: len(ed_epochs()) >= stopped_at + 1 or driver.poll() is not None,
                   "an epoch of the resumed run", timeout=400)
    nodes.remove_worker(second)
    nodes.add_worker()                                  # the replacement node
    out, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, out[-4000:]

    log = [json.loads(line) for line in run.read_text("epochs.jsonl").splitlines()]
    pairs = [(e["stage"], e["epoch"]) for e in log]
    assert len(pairs) == len(set(pairs)), f"an epoch was trained twice: {pairs}"
    assert set(ed_epochs()) <= set(range(1, 9))   # the log lists epochs whose checkpoint was stored
    assert len({e["node"] for e in log}) == 3           # the first node, its successor, the replacement
    history = run.read_json("metrics.json")["history"]
    assert [h["epoch"] for h in history] == list(range(1, 9))


def test_s3_run_on_two_nodes_that_share_no_disk(cluster, bucket, tmp_path, capsys):
    """The head offers no CPU, so every stage (a one-worker Ray task, the default executor) runs on
    the worker node, which cannot see the driver's disk: the run completes, every artifact is in the
    bucket, the driver's disk holds nothing of the run, and the run is read back from the URI."""
    (worker,) = cluster.workers
    assert not cluster.sees(worker, tmp_path) and cluster.sees(worker, REPO)   # its own /tmp, the same code
    config = cluster_experiment(tmp_path, "twonode", **{"teachers.soft_labels": "cache"})
    workdir = tmp_path / "driver"
    workdir.mkdir()
    proc = raydistill(cluster, workdir, "run", "--config", str(config), "--address", cluster.address)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    store = bucket.child("runs")
    run = store.child("twonode")
    for name in ("config.yaml", "summary.json", "metrics.json", "metrics.parquet", "curves.png",
                 "epochs/method-ed.jsonl", "teachers/group0.pt", "teachers/group2.pt", "checkpoints/ed.pt"):
        assert run.is_file(name), name
    stores = run.listdir("ray")   # each stage's checkpoint store, in the bucket
    assert "stage-method-ed" in stores and all(
        any(n.startswith("checkpoint_task-") for n in run.listdir(f"ray/{store}")) for store in stores), stores
    (cache,) = store.listdir("softlabels")
    assert store.is_file(f"softlabels/{cache}/meta.json")
    epochs = epoch_log(run)
    assert {e["node"] for e in epochs} == {cluster.node_id(worker)} != {cluster.head}   # trained on the worker node
    assert [p.name for p in workdir.iterdir()] == []                                     # nothing local

    from raydistill.pipeline.report_files import load_run
    summary, history = load_run(f"s3://{BUCKET}/runs/twonode")
    assert summary == run.read_json("summary.json") and len(history) == 3
    from raydistill.cli import main   # in this process: the bucket's settings are in its environment
    assert main(["report", f"s3://{BUCKET}/runs/twonode"]) == 0 and "ed" in capsys.readouterr().out


def test_submit_with_s3_storage_as_a_ray_job(cluster, bucket, tmp_path):
    """`raydistill submit --storage s3://…`: the job runs on the cluster, writes to the bucket, and
    the submitting command reads the results back from there."""
    config = cluster_experiment(tmp_path, "jobtiny")
    proc = raydistill(cluster, tmp_path, "submit", "--address", cluster.dashboard, "--config", str(config),
                      "--storage", f"s3://{BUCKET}/jobs", "--wait", "--timeout", "400")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id, table = proc.stdout.split("\n", 1)
    assert job_id.startswith("raydistill-jobtiny-") and "ed" in table
    run = bucket.child("jobs/jobtiny")
    assert run.read_json("summary.json")["methods"]["ed"]["final_test_acc"] >= 0
    assert run.is_file("checkpoints/ed.pt")


def test_a_node_keeps_an_environment_under_tmp_and_sees_none_of_the_drivers_files():
    """A checkout and venv cloned under /tmp (issue 26, item 13): the node's fresh /tmp must not
    hide them (the node could not start `ray`), and must still hide the driver's other files. The
    kept directory is the same one, not a copy: what the node writes there, the driver sees."""
    need_namespaces()
    env_dir = Path(tempfile.mkdtemp(prefix="rdenv", dir="/tmp"))     # like /tmp/<clone>/.venv
    driver_dir = Path(tempfile.mkdtemp(prefix="rddrv", dir="/tmp"))  # like pytest's tmp_path
    try:
        (env_dir / "bin").mkdir()
        (env_dir / "bin" / "python").write_text("#!/bin/sh\n")
        (driver_dir / "driver-only").write_text("x")
        script = private_tmp_script(f"test -e {env_dir}/bin/python && test ! -e {driver_dir}/driver-only "
                                    f"&& touch {env_dir}/from-node", keep=[env_dir / "bin", env_dir, Path("/usr")])
        proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert (env_dir / "from-node").exists()
        assert private_tmp_script("true").startswith("mount -t tmpfs tmpfs /tmp")   # nothing kept outside /tmp
    finally:
        shutil.rmtree(env_dir, ignore_errors=True)
        shutil.rmtree(driver_dir, ignore_errors=True)


def test_a_node_that_does_not_join_is_reported_with_its_own_output():
    """A node that dies before joining fails at once with its exit status and its stderr (not a
    bare timeout: its output used to go to /dev/null)."""
    need_namespaces()
    cluster = Nodes(dict(os.environ))
    try:
        tag = cluster.spawn("echo 'ray: command not found (venv hidden?)' >&2; exit 127")
        cluster.workers[tag].wait(timeout=60)   # no head here to ask: the node has ended before the check
        with pytest.raises(pytest.fail.Exception, match=r"(?s)exited with 127.*ray: command not found"):
            cluster.wait_to_join(tag, timeout=60)
    finally:
        cluster.shutdown()


def test_a_local_output_dir_that_a_node_cannot_see_fails_before_training(cluster, tmp_path):
    """`output.dir` on the driver's disk while every worker runs on a node with its own filesystem
    (issue 26, item 12): one error naming output.dir, that node and the two ways out, before any
    epoch is trained (it used to train, fail at the first checkpoint and advise a useless resume)."""
    (worker,) = cluster.workers
    exp = tiny_experiment(tmp_path / "runs", **{"name": "localout", "teachers.epochs": 1,
                                                 "curriculum.grade_epochs": "[1,1,1]", "data.train_per_class": 40,
                                                 "data.test_per_class": 20, "ray.cpus_per_worker": 1})
    config = tmp_path / "localout.yaml"
    config.write_text(exp.to_yaml())
    proc = raydistill(cluster, tmp_path, "run", "--config", str(config), "--address", cluster.address)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("raydistill: error:")]
    assert f"output.dir: {tmp_path / 'runs'}" in error and cluster.node_id(worker) in error, error
    assert "s3://" in error and "mount every node shares" in error, error
    run = tmp_path / "runs" / "localout"
    assert "worker(s), rank 0 on node" not in proc.stdout
    assert not (run / "epochs.jsonl").exists() and not (run / "epochs").exists() and not (run / "ray").exists()
    assert not list(run.glob(".raydistill-shared-*"))   # the marker is removed

    shared = Path(tempfile.mkdtemp(prefix=".rd-shared-", dir=REPO))   # the checkout: every node sees it
    try:
        assert cluster.sees(worker, shared)
        check = subprocess.run([sys.executable, "-c", SHARED_SCRIPT, cluster.address, str(shared), str(tmp_path)],
                               env=cluster.env, capture_output=True, text=True, timeout=600)
        lines = [line for line in check.stdout.splitlines() if line.startswith("{")]
        assert check.returncode == 0 and lines, check.stdout[-2000:] + check.stderr[-3000:]
        assert json.loads(lines[-1]) == {"shared": [], "driver_only": [cluster.node_id(worker)]}   # no false alarm
        assert list(shared.iterdir()) == []
    finally:
        shutil.rmtree(shared, ignore_errors=True)


SHARED_SCRIPT = """
import json, sys, ray
from raydistill.distributed.reachability import nodes_not_seeing, worker_nodes
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
nodes = worker_nodes()
print(json.dumps({key: [n["NodeID"] for n in nodes_not_seeing(path, nodes)]
                  for key, path in (("shared", sys.argv[2]), ("driver_only", sys.argv[3]))}))
"""
