"""Wall time of the shipped `default` experiment on each executor of the stage graph (issue 28):
one Ray Train fit for the whole graph (`ray.executor: fit`, sequential: the engine before issue
28), a Ray Train fit per stage (`fit`, concurrent), a Ray task per one-worker stage one after
another (`auto`, sequential: the default) and as the graph allows (`auto`, concurrent), in two
settings, all in one invocation:

  cluster — a simulated 2-node cluster (`ray.cluster_utils.Cluster`: a head offering no CPU,
            like cluster.yaml's, and two worker nodes x 1 CPU); every run joins it with
            `--address`, so each Train worker gets 1 CPU (1 torch thread) in both modes.
  local   — this machine, a plain local Ray instance that each run starts itself. `sequential`
            runs as a user gets it (one worker with every core); `concurrent` with
            `ray.cpus_per_worker=1`, so two stages fit at once (with the default one-worker-gets-
            every-core sizing the stages could only run one after another).

Each run is `python -m raydistill.cli run --config default` in a fresh temporary output directory;
the wall time is that process's, end to end (Ray start-up on `local` included). Also printed:
what `ray.stages: auto` picks for each row's configuration (`choose_mode` on the cluster's CPUs).
Writes `stages.json` and `table.md` to --results.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stages.py                  # -> benchmarks/results/stages
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stages.py --quick --results /tmp/stages   # smoke check
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stages.py --settings cluster   # the simulated cluster only
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from raydistill.config import Experiment
from raydistill.pipeline.graph import choose_mode

REPO = Path(__file__).resolve().parents[1]
# a few seconds per run instead of minutes: tiny data, one epoch per stage
QUICK = ["data.num_classes=6", "data.train_per_class=20", "data.test_per_class=10", "teachers.epochs=1",
         "teachers.arch=resnet8", "curriculum.grade_epochs=[1,1,1]"]
# (setting, mode, extra overrides); the first row of a setting is what the others are compared with
RUNS = [("cluster", "sequential", ["ray.executor=fit"]), ("cluster", "concurrent", ["ray.executor=fit"]),
        ("cluster", "sequential", []), ("cluster", "concurrent", []),
        ("local", "sequential", ["ray.executor=fit"]), ("local", "sequential", []),
        ("local", "concurrent", ["ray.cpus_per_worker=1"])]


def executor(extra: list) -> str:
    return "fit" if "ray.executor=fit" in extra else "auto (task per one-worker stage)"


def start_cluster():
    """A head offering no CPU and two worker nodes x 1 CPU."""
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    return cluster


def auto_pick(overrides: list, cluster_cpus: float) -> str:
    exp = Experiment.load("default").with_overrides(overrides + ["ray.stages=auto"])
    return choose_mode(exp, cluster_cpus)


def run_once(overrides: list, work: Path, log) -> dict:
    """One `raydistill run` in a fresh output directory under `work`: its wall time and accuracies."""
    out = Path(tempfile.mkdtemp(dir=work))
    cmd = [sys.executable, "-m", "raydistill.cli", "run", "--config", "default", "--output", str(out)]
    for o in overrides:
        cmd += ["--set", o]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    log.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        sys.exit(f"stages: run failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "default" / "summary.json").read_text())
    return {"wall_s": round(wall, 1), "startup_s": stage_startups(out / "default"),
            "final_test_acc": {m: s["final_test_acc"] for m, s in summary["methods"].items()}}


def stage_startups(run_dir: Path) -> list:
    """Seconds from launching each executor (a task, a fit) to the first epoch of its first stage
    beginning (process start, imports, data from the object store, teachers loaded): each epoch log's
    first line, `started - launched`."""
    logs = [run_dir / "epochs.jsonl", *sorted((run_dir / "epochs").glob("*.jsonl"))]
    out = []
    for log in logs:
        if log.is_file():
            first = json.loads(log.read_text().splitlines()[0])
            if first.get("launched") and first.get("started"):
                out.append(round(first["started"] - first["launched"], 1))
    return out


def table(rows: list) -> str:
    lines = ["| setting | ray.stages | ray.executor | wall s | ratio to one fit | start-up per executor s "
             "(median, max) | `ray.stages: auto` picks |", "|---|---|---|---:|---:|---|---|"]
    for r in rows:
        ups = sorted(r["startup_s"])
        shown = f"{ups[len(ups) // 2]:.1f}, {ups[-1]:.1f} ({len(ups)})" if ups else "-"
        lines.append(f"| {r['setting']} | {r['mode']} | {r['executor']} | {r['wall_s']:.1f} | {r['ratio']:.2f} "
                     f"| {shown} | {r['auto']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke check")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks/results/stages")
    p.add_argument("--settings", nargs="+", choices=["cluster", "local"], default=["cluster", "local"],
                   help="which settings to run (default: both)")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # local clusters (Ray 2.60 enables token auth itself)
    sizes = QUICK if args.quick else []
    args.results.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="raydistill-stages-") as work, \
            open(args.results / "runs.log", "w") as log:
        work = Path(work)
        cluster = start_cluster() if "cluster" in args.settings else None
        try:
            cluster_cpus = 2.0
            for setting, mode, extra in RUNS:
                if setting != "cluster" or cluster is None:
                    continue
                overrides = sizes + extra + [f"ray.address={cluster.address}"]
                rows.append({"setting": "cluster: head 0 CPU + 2 nodes x 1 CPU", "mode": mode,
                             "executor": executor(extra), "overrides": extra, "auto": auto_pick(overrides, cluster_cpus),
                             **run_once(overrides + [f"ray.stages={mode}"], work, log)})
                print(rows[-1], flush=True)
        finally:
            if cluster is not None:
                cluster.shutdown()
        local_cpus = float(os.cpu_count() or 1)
        for setting, mode, extra in RUNS:
            if setting != "local" or setting not in args.settings:
                continue
            overrides = sizes + extra
            rows.append({"setting": f"local: {int(local_cpus)} cores", "mode": mode, "executor": executor(extra),
                         "overrides": extra,
                         "auto": auto_pick(overrides, local_cpus),
                         **run_once(overrides + [f"ray.stages={mode}"], work, log)})
            print(rows[-1], flush=True)
    for r in rows:
        base = next(b for b in rows if b["setting"] == r["setting"])   # one fit for the graph
        r["ratio"] = round(r["wall_s"] / base["wall_s"], 2)
    text = table(rows)
    print(text)
    (args.results / "table.md").write_text(text)
    (args.results / "stages.json").write_text(json.dumps(
        {"command": " ".join(["benchmarks/stages.py"] + sys.argv[1:]), "quick": args.quick,
         "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
