"""Wall time of the 4-trial smoke search (`raydistill tune smoke`, tune_spaces/smoke.yaml) with this
checkout and, for comparison, with another checkout of the package (e.g. the commit before the run
engine of issue 28: each one-worker trial a full TorchTrainer fit), alternating, in fresh output
directories, each `raydistill tune` a process of its own (Ray start-up included).

    git worktree add /tmp/before 68f3389
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_time.py --before /tmp/before --repeats 2

Writes `search_time.json` and `table.md` to --results (default benchmarks/results/search_time).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_search(tree: Path, work: Path, log) -> float:
    """One smoke search with the package of `tree` (its directory first on PYTHONPATH): wall seconds."""
    out = Path(tempfile.mkdtemp(dir=work))
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "raydistill.cli", "tune", str(tree / "tune_spaces" / "smoke.yaml"),
           "--output", str(out)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    log.write(f"$ PYTHONPATH={tree} {' '.join(cmd)}\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}\n")
    if proc.returncode != 0:
        sys.exit(f"search_time: search failed (exit {proc.returncode}) with {tree}:\n{proc.stderr[-3000:]}")
    return round(wall, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True, help="a checkout to compare with (its package is used)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--results", type=Path, default=REPO / "benchmarks/results/search_time")
    args = p.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    walls = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="raydistill-search-time-") as work, \
            open(args.results / "runs.log", "w") as log:
        for _ in range(args.repeats):   # alternating, so a load change hits both alike
            walls["before"].append(run_search(args.before.resolve(), Path(work), log))
            walls["after"].append(run_search(REPO, Path(work), log))
            print(walls, flush=True)
    before, after = statistics.median(walls["before"]), statistics.median(walls["after"])
    rev = subprocess.run(["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    text = ("| package | runs (wall s) | median s | ratio |\n|---|---|---:|---:|\n"
            f"| before ({rev or args.before}) | {', '.join(map(str, walls['before']))} | {before:.1f} | 1.00 |\n"
            f"| this checkout | {', '.join(map(str, walls['after']))} | {after:.1f} | {after / before:.2f} |\n")
    print(text)
    (args.results / "table.md").write_text(text)
    (args.results / "search_time.json").write_text(json.dumps(
        {"command": " ".join(["benchmarks/search_time.py"] + sys.argv[1:]), "before": rev, "walls": walls,
         "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None},
        indent=1))


if __name__ == "__main__":
    main()
