"""Grades that end on a plateau vs the searched fixed curriculum (issue 34, part 1's measurement).

`ed_plateau` is the ED search's best curriculum that has fragment grades (searched.py's
`ed_curriculum`: its lr, T, alpha, teacher signal, order, heads, restart; the search's best overall
has none, so nothing could switch) with `curriculum.switch: plateau`: the early grades may take up
to MAXIMA of the 32 epochs and end once the validation accuracy on their classes has not improved
by more than MIN_DELTA for PATIENCE epochs; the complete student takes the rest. It runs on the
confirmation's seeds, which vary data.seed too, so each seed compares with that seed's
`ed_curriculum` (the fixed curriculum), `kd_searched` and `scratch`.

Every run is in-process and resumable per seed, in lanes, as benchmarks/searched.py's; `--report`
writes aggregate.json and table.md from the committed files.

    .venv/bin/python benchmarks/plateau.py --work runs/searched   # (twice, for two lanes)
    .venv/bin/python benchmarks/plateau.py --report
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import searched  # noqa: E402  (benchmarks/ is not a package)
from curve import COPIED, claim, mean_std  # noqa: E402

RESULTS = searched.REPO / "benchmarks" / "results" / "plateau"
MAXIMA = [0.375, 0.375, 0.25]   # each early grade's largest share of the 32 epochs
PATIENCE = 2
MIN_DELTA = 0.005               # half a point of validation accuracy
COMPARED = ("ed_curriculum", "ed_searched", "kd_searched", "scratch")   # searched.py's rows on the same seeds


def experiment(seed: int, work: Path):
    """ed_curriculum's experiment of this seed, its grades switched on a plateau."""
    exp = searched.experiment("ed_curriculum", seed, searched.RESULTS, work)
    return exp.with_overrides(["name=ed_plateau", "output.name=ed_plateau", f"curriculum.grade_fractions={MAXIMA}",
                               "curriculum.switch=plateau", f"curriculum.patience={PATIENCE}",
                               f"curriculum.min_delta={MIN_DELTA}"]).validate()


def run_jobs(args) -> None:
    from raydistill.pipeline.local import run
    for seed in args.seeds:
        dest = args.results / f"e{searched.EPOCHS}" / f"seed{seed}" / "ed_plateau"
        if (dest / "summary.json").is_file() or not claim(args.work / "claims" / f"plateau-seed{seed}"):
            continue
        started = time.perf_counter()
        result = run(experiment(seed, args.work))
        dest.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            shutil.copy2(Path(result.run_dir) / name, dest / name)
        print(f"seed {seed} ed_plateau: {time.perf_counter() - started:.0f} s", flush=True)


def aggregate(results: Path) -> dict:
    """ed_plateau per seed (test, val, the epochs each grade took) beside searched.py's rows."""
    runs = []
    for path in sorted(results.glob(f"e{searched.EPOCHS}/seed*/ed_plateau/summary.json")):
        (summary,) = json.loads(path.read_text())["methods"].values()
        runs.append((int(path.parts[-3][4:]), summary))
    mean, std = mean_std([s["final_test_acc"] for _, s in runs]) if runs else (None, None)
    rows = {"ed_plateau": {"seeds": [seed for seed, _ in runs], "runs": [s["final_test_acc"] for _, s in runs],
                           "val": [s["final_val_acc"] for _, s in runs], "mean": mean, "std": std,
                           "grade_epochs": [[g["epochs"] for g in s["grades"]] for _, s in runs],
                           "train_images": [s["train_images"] for _, s in runs]}}
    confirmed = searched.aggregate(searched.RESULTS)["variants"]
    rows.update({v: {k: confirmed[v][k] for k in ("seeds", "runs", "val", "mean", "std", "grade_epochs",
                                                 "train_images")} for v in COMPARED if v in confirmed})
    return {"epochs": searched.EPOCHS, "maxima": MAXIMA, "patience": PATIENCE, "min_delta": MIN_DELTA,
            "variants": rows}


def table_markdown(agg: dict) -> str:
    lines = ["| method | grade epochs (per seed) | test top-1 % (mean ± std) | per seed (data seed = seed) | "
             "val top-1 % (mean) |", "|---|---|---:|---|---:|"]
    for v, r in agg["variants"].items():
        epochs = r["grade_epochs"]
        shown = " · ".join("/".join(map(str, e)) for e in epochs) if epochs and isinstance(epochs[0], list) \
            else "/".join(map(str, epochs))
        lines.append(f"| `{v}` | {shown} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | "
                     f"{' / '.join(f'{100 * a:.2f}' for a in r['runs'])} | {100 * sum(r['val']) / len(r['val']):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=list(searched.SEEDS))
    p.add_argument("--work", type=Path, default=Path("runs/searched"))
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only write aggregate.json and table.md")
    args = p.parse_args(argv)
    args.work = args.work.resolve()
    import torch
    torch.set_num_threads(args.threads)
    if args.report:
        searched.write_report(args.results, aggregate(args.results), table_markdown)
        return 0
    run_jobs(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
