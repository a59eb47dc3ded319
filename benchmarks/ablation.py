"""ED ablation: which knob causes ED's gap at a short budget. Two designs:

one-at-a-time (default, the committed table): the shipped `cifar10` ED run (mixed passes, no BN
recalibration, one cosine schedule, grade epochs [2, 2, 4]) with ONE knob changed per variant
(VARIANTS), 3 student seeds each, run by benchmarks/accuracy.py in-process with the loss table's
teachers and soft-label bank; the base row is the loss table's `ed` runs (--base-results, the same
teachers, bank and code), so nothing is run twice. 5 variants x 3 seeds = 15 runs.

    python benchmarks/ablation.py --teachers-from runs/accuracy/teachers --threads 1 \
        --set teachers.soft_labels=cache                            # -> benchmarks/results/ablation_cifar10/
    python benchmarks/ablation.py --table-only                      # table.md from the committed runs

grid (--design grid): one Tune grid search (`searcher: grid`, `scheduler: fifo`: every trial runs
to its last epoch) over pass_mode x bn_recalibrate x restart_per_grade x grade-epoch split x
student seed (48 runs), then one table of mean ± std over seeds per combination.

The grid is a space file (tune_spaces/ablation_cifar10.yaml by default), so the trials are ordinary
`raydistill tune` trials: teachers trained once (from the base seed; the spread over seeds is the
students' spread), one Ray Train run per trial in <output>/<name>/trials/trial-NNN, resumable by
running the same command again. The search's trials.parquet is copied to --results with
`table.md` and `aggregate.json` (last-epoch accuracies; nothing is selected on test data).

    python benchmarks/ablation.py --design grid                     # 48 runs at the cifar10 budget (hours on 2 cores)
    python benchmarks/ablation.py --design grid --smoke             # the same grid on tiny built-in data, 1 seed: minutes
    python benchmarks/ablation.py --design grid --table-only --results benchmarks/results/ablation_grid
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED = "seed"
SMOKE = ["data.source=builtin", "data.num_classes=6", "data.train_per_class=40", "data.test_per_class=20",
         "data.limit_per_class=null", "data.val_fraction=0.2", "teachers.arch=resnet8", "teachers.epochs=1",
         "teachers.batch_size=32", "optimizer.batch_size=32"]
SMOKE_GRADE_EPOCHS = [[1, 1, 1], [2, 1, 1]]
# one knob changed at a time from the shipped cifar10 ED curriculum (raydistill/experiments/cifar10.yaml)
VARIANTS = {
    "pass_mode_sequential": ["curriculum.pass_mode=sequential"],
    "bn_recalibrate": ["curriculum.bn_recalibrate=true"],
    "restart_per_grade": ["optimizer.restart_per_grade=true"],
    "grade_epochs_4_2_2": ["curriculum.grade_epochs=[4,2,2]"],
    "grade_epochs_1_1_6": ["curriculum.grade_epochs=[1,1,6]"],
}
BASE_RESULTS = REPO / "benchmarks" / "results" / "cifar10_losses"
ONE_AT_A_TIME_RESULTS = REPO / "benchmarks" / "results" / "ablation_cifar10"


def _accuracy():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy
    return accuracy


def variant_rows(results: Path, base_results: Path) -> list:
    """One row per variant (base first): ed's last-epoch test/val accuracy per seed, mean ± std, and
    the change from the base in test accuracy."""
    accuracy = _accuracy()
    sources = {"base": base_results, **{name: results / name for name in VARIANTS}}
    rows = []
    for name, folder in sources.items():
        summaries = accuracy.load_summaries(folder)
        seeds = sorted(s for s in summaries if "ed" in summaries[s]["methods"])
        if not seeds:
            continue
        runs = [summaries[s]["methods"]["ed"] for s in seeds]
        row = {"variant": name, "change": "; ".join(VARIANTS.get(name, [])) or "none (the loss table's `ed`)",
               "seeds": seeds}
        for metric in ("test_acc", "val_acc"):
            values = [100 * r[f"final_{metric}"] for r in runs]
            mean, std = accuracy.mean_std(values)
            row[metric], row[f"{metric}_std"] = round(mean, 2), round(std, 2)
            row[f"{metric}_runs"] = [round(v, 2) for v in values]
        rows.append(row)
    base = next((r for r in rows if r["variant"] == "base"), None)
    for r in rows:
        r["delta_test"] = round(r["test_acc"] - base["test_acc"], 2) if base else None
    return rows


def variant_markdown(rows: list) -> str:
    lines = ["| variant | change from the shipped ED run | test top-1 % (mean ± std) | per seed | val % | Δ test |",
             "|---|---|---:|---|---:|---:|"]
    for r in rows:
        delta = "" if r["variant"] == "base" or r["delta_test"] is None else f"{r['delta_test']:+.2f}"
        lines.append(f"| `{r['variant']}` | {r['change']} | {r['test_acc']:.2f} ± {r['test_acc_std']:.2f} | "
                     f"{' / '.join(f'{v:.2f}' for v in r['test_acc_runs'])} | "
                     f"{r['val_acc']:.2f} ± {r['val_acc_std']:.2f} | {delta} |")
    return "\n".join(lines)


def write_variant_table(results: Path, base_results: Path) -> str:
    rows = variant_rows(results, base_results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "aggregate.json").write_text(json.dumps(rows, indent=1))
    text = variant_markdown(rows)
    (results / "table.md").write_text(text + "\n")
    return text


def run_variants(args) -> int:
    """Each variant through benchmarks/accuracy.py (in-process runs, resumable per seed); then the table."""
    accuracy = _accuracy()
    results = args.results or ONE_AT_A_TIME_RESULTS
    common = ["--methods", "ed", "--seeds", *map(str, args.seeds or [0, 1, 2])]
    for flag, value in (("--threads", args.threads), ("--teachers-from", args.teachers_from)):
        if value is not None:
            common += [flag, str(value)]
    common += [x for field in args.set for x in ("--set", field)]
    work = args.work or REPO / "runs" / "ablation"      # one work dir per variant: runs are resumed by directory
    if not (args.base_results / "seed0").exists():
        accuracy.main(common + ["--work", str(work / "base"), "--results", str(args.base_results)])
    for name, overrides in VARIANTS.items():
        accuracy.main(common + ["--work", str(work / name), "--results", str(results / name)]
                      + [x for o in overrides for x in ("--set", o)])
    print(write_variant_table(results, args.base_results))
    return 0


def ablation_space(args):
    """The space file with --set applied to its base and --seeds / --grade-epochs replacing those dimensions."""
    from raydistill.search.space import apply_values, load_space
    space = load_space(args.space)
    overrides = (SMOKE if args.smoke else []) + list(args.set)
    if overrides:
        space.base = space.base.with_overrides(overrides).validate()
    grade_epochs = SMOKE_GRADE_EPOCHS if args.smoke and not args.grade_epochs else args.grade_epochs
    seeds = [0] if args.smoke and not args.seeds else args.seeds
    for d in space.dimensions:
        if d.path == SEED and seeds:
            d.values = list(seeds)
        if d.path == "curriculum.grade_epochs" and grade_epochs:
            d.values = [list(g) for g in grade_epochs]
        for value in d.values or []:
            apply_values(space.base, {d.path: value}).validate()
    if args.smoke:
        space.name += "_smoke"
    if args.output:
        space.output = str(args.output)
    return space


def aggregate(trials) -> list:
    """One row per configuration (every searched column but the seed): mean ± std over seeds."""
    knobs = [c for c in trials.columns if c not in (SEED, "trial", "val_acc", "test_acc", "grade", "epochs_run",
                                                   "epochs_planned", "stop_reason", "wall_s")]
    done = trials[trials["stop_reason"] == "completed"]
    rows = []
    for key, group in done.groupby(knobs, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(knobs, key))
        for metric in ("test_acc", "val_acc"):
            values = [100 * v for v in group[metric]]
            row[metric] = round(statistics.mean(values), 2)
            row[f"{metric}_std"] = round(statistics.stdev(values), 2) if len(values) > 1 else None
        row["seeds"] = sorted(int(s) for s in group[SEED]) if SEED in group else []
        rows.append(row)
    return sorted(rows, key=lambda r: -r["test_acc"])


def markdown(rows: list, title: str) -> str:
    if not rows:
        return f"# {title}\n\nno completed trials\n"
    knobs = [k for k in rows[0] if k not in ("test_acc", "test_acc_std", "val_acc", "val_acc_std", "seeds")]
    short = [k.split(".")[-1] for k in knobs]
    lines = [f"# {title}", "", "Last-epoch accuracy (%), mean ± std over seeds; sorted by test accuracy.", "",
             "| " + " | ".join(short) + " | test | val | seeds |", "|" + "---|" * (len(knobs) + 3)]
    for r in rows:
        pm = lambda m: f"{r[m]:.2f}" + (f" ± {r[m + '_std']:.2f}" if r[m + "_std"] is not None else "")
        lines.append("| " + " | ".join(_shown(r[k]) for k in knobs) + f" | {pm('test_acc')} | {pm('val_acc')} | "
                     f"{','.join(map(str, r['seeds']))} |")
    return "\n".join(lines) + "\n"


def _shown(value) -> str:
    """A table cell: trials.parquet stores non-numeric searched values as JSON text."""
    try:
        value = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        pass
    return str(value).lower() if isinstance(value, bool) else str(value)


def write_table(results: Path, title: str) -> str:
    import pandas as pd
    rows = aggregate(pd.read_parquet(results / "trials.parquet"))
    (results / "aggregate.json").write_text(json.dumps(rows, indent=1))
    text = markdown(rows, title)
    (results / "table.md").write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--design", choices=["one-at-a-time", "grid"], default="one-at-a-time")
    p.add_argument("--base-results", type=Path, default=BASE_RESULTS,
                   help="one-at-a-time: the base runs (seed<S>/ed/summary.json); run there if absent")
    p.add_argument("--teachers-from", type=Path, help="one-at-a-time: teacher checkpoints (accuracy.py)")
    p.add_argument("--threads", type=int, help="one-at-a-time: torch threads per run")
    p.add_argument("--work", type=Path, help="one-at-a-time: parent of each variant's accuracy.py --work "
                                             "(default runs/ablation)")
    p.add_argument("--space", default="ablation_cifar10", help="grid: a grid space file or tune_spaces/ name")
    p.add_argument("--seeds", type=int, nargs="+", help="student seeds (replace the space's seed dimension)")
    p.add_argument("--grade-epochs", type=json.loads, nargs="+", metavar="[E1,E2,E3]",
                   help="grade-epoch splits (replace the space's curriculum.grade_epochs dimension)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a base field")
    p.add_argument("--smoke", action="store_true", help="tiny built-in data, 1 teacher epoch, 3-4 epoch splits")
    p.add_argument("--output", type=Path, help="parent of the search directory (default: the space's)")
    p.add_argument("--results", type=Path, help="where trials.parquet, table.md, aggregate.json go "
                                                "(default: ablation_cifar10 one-at-a-time, benchmarks/results/<space name>_grid for a grid)")
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--table-only", action="store_true", help="rebuild table.md from --results/trials.parquet")
    args = p.parse_args(argv)
    if args.design == "one-at-a-time":
        if args.table_only:
            print(write_variant_table(args.results or ONE_AT_A_TIME_RESULTS, args.base_results))
            return 0
        return run_variants(args)
    if args.table_only:
        print(write_table(args.results, args.results.name))
        return 0
    from raydistill.search.tuner import tune
    space = ablation_space(args)
    if space.searcher != "grid":
        print(f"ablation: {space.source}: expected searcher: grid, got {space.searcher}", file=sys.stderr)
        return 2
    result = tune(space, max_concurrent=args.max_concurrent)
    results = args.results or REPO / "benchmarks" / "results" / f"{space.name}_grid"
    results.mkdir(parents=True, exist_ok=True)
    shutil.copy(result.search_dir / "trials.parquet", results / "trials.parquet")
    print(write_table(results, space.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
