"""CIFAR-10 accuracy benchmark: every method (and method+loss combination) over several seeds.

Reports the mean ± std (over seeds) of each method's LAST-epoch test top-1 — nothing is selected
on test data — and the teachers' own test accuracy on their classes.

The default table is the loss comparison: `scratch`; `kd`, `multi_teacher`, `ed`, each with the
distillation losses kd (Hinton), dkd (decoupled KD) and lskd (logit standardization):
`kd`, `kd+dkd`, `kd+lskd`, `multi_teacher`, …, `ed+lskd` (--methods picks others).
The experiment is the shipped `cifar10` one (raydistill/experiments/cifar10.yaml); its budget,
sized for 2 CPU cores:
  data      ../shared/data/cifar10 (Parquet), the first 1000 training images per class
            (900 train + 100 validation per class after the stratified split), the full 10k test set
  teachers  resnet20, 10 epochs, cosine lr 0.05, batch 128: three group teachers (classes 0-2,
            3-5, 6-9) for ed/multi_teacher and one 10-class teacher for kd. Each is trained ONCE
            (in the first run that needs it, seeded like every run's teachers) and loaded by every
            later run through `teachers.checkpoints`; --teachers-from loads them from a directory
            of <key>.pt files instead. So the spread over seeds is the students' spread.
  students  resnet8, 8 epochs, cosine lr 0.05, batch 128; ed grades end at blocks 1/2/3 after
            2/2/4 epochs, reference heads 64 wide; ed and multi_teacher use `mixed` batches
            (the paper's `sequential` passes collapse at short budgets, see README); T = 4,
            α = 0.3; the losses' parameters are the experiment's `distill` section.

Each (seed, method) is one in-process run (`raydistill.pipeline.stages.run`) in --work/seed<S>/<method>;
its metrics.json, metrics.parquet, summary.json and config.yaml are copied to
--results/seed<S>/<method>/, and `table.md` and `aggregate.json` are written from every result
there. A (seed, method) whose summary already exists in --results is not re-run, so an
interrupted benchmark resumes per seed and per method. (The committed `cifar10` results predate
this and hold one run per seed with every method: --results/seed<S>/summary.json; both layouts
are read.)

    .venv/bin/python benchmarks/accuracy.py                          # 3 seeds x 10 methods -> results/cifar10_losses
    .venv/bin/python benchmarks/accuracy.py --teachers-from runs/accuracy/teachers
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("metrics.json", "metrics.parquet", "summary.json", "config.yaml")
METHOD_ORDER = ("scratch", "kd", "multi_teacher", "ed")          # the committed cifar10 results
LOSS_METHODS = ("scratch",) + tuple(m if loss == "kd" else f"{m}+{loss}"
                                    for m in ("kd", "multi_teacher", "ed") for loss in ("kd", "dkd", "lskd"))


def experiment(seed: int, method: str, work: Path, data_dir: Path, teacher_paths: dict | None, args):
    """The shipped `cifar10` experiment for one method, with this seed, data location and teachers."""
    from raydistill.config import Experiment
    overrides = [f"name=seed{seed}", f"seed={seed}", f"methods=[{method}]",
                 f"data.train_path={data_dir / 'train.parquet'}", f"data.test_path={data_dir / 'test.parquet'}",
                 f"data.limit_per_class={args.per_class}", f"teachers.arch={args.teacher}",
                 f"teachers.epochs={args.teacher_epochs}", f"student.arch={args.student}",
                 f"curriculum.grade_epochs={list(args.grade_epochs)}", f"output.dir={work / f'seed{seed}'}",
                 f"output.name={method}", *args.set]
    if teacher_paths:
        overrides.append(f"teachers.checkpoints={json.dumps(teacher_paths)}")
    return Experiment.load("cifar10").with_overrides(overrides).validate()


def mean_std(values: list) -> tuple:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(summaries: dict) -> dict:
    """{method: {"mean", "std", "runs": [...]}, "teachers": {...}} from {seed: summary}, methods in
    the loss table's order (then any others by name)."""
    seeds = sorted(summaries)
    methods = {}
    found = {m for s in seeds for m in summaries[s]["methods"]}
    for m in [m for m in LOSS_METHODS if m in found] + sorted(found - set(LOSS_METHODS)):
        accs = [summaries[s]["methods"][m]["final_test_acc"] for s in seeds if m in summaries[s]["methods"]]
        if accs:
            mean, std = mean_std(accs)
            methods[m] = {"mean": mean, "std": std, "runs": accs,
                          "params": summaries[seeds[0]]["methods"][m]["params"],
                          "epochs": summaries[seeds[0]]["methods"][m]["epochs"]}
    return {"seeds": seeds, "methods": methods, "teachers": summaries[seeds[0]]["teachers"]}


def table_markdown(agg: dict) -> str:
    """The README table (also written to table.md); tests check the README against the files."""
    seeds = agg["seeds"]
    lines = [f"| method | test top-1 % (mean ± std, {len(seeds)} seeds) | per seed | params | epochs |",
             "|---|---:|---|---:|---:|"]
    for m, r in agg["methods"].items():
        per_seed = " / ".join(f"{100 * a:.2f}" for a in r["runs"])
        lines.append(f"| `{m}` | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | {per_seed} | "
                     f"{r['params']:,} | {r['epochs']} |")
    lines += ["", "| teacher | arch | classes | test top-1 % on its classes |", "|---|---|---:|---:|"]
    for key, t in agg["teachers"].items():
        lines.append(f"| `{key}` | {t['arch']} | {t['classes']} | {100 * t['test_acc']:.2f} |")
    return "\n".join(lines)


def load_summaries(results: Path) -> dict:
    """{seed: {"methods", "teachers"}} from seed<S>/summary.json (one run with every method) and
    seed<S>/<method>/summary.json (one run per method), merged per seed."""
    out = {}
    for path in sorted(results.glob("seed*/summary.json")):
        out[int(path.parent.name.removeprefix("seed"))] = json.loads(path.read_text())
    for path in sorted(results.glob("seed*/*/summary.json")):
        one = json.loads(path.read_text())
        merged = out.setdefault(int(path.parent.parent.name.removeprefix("seed")), {"methods": {}, "teachers": {}})
        merged["methods"].update(one["methods"])
        merged["teachers"].update(one["teachers"])
    return out


def teacher_pool(pool: Path, given: dict) -> dict:
    """Teacher checkpoints for the next run: every one trained or loaded so far, --teachers-from first."""
    return {**{p.stem: str(p.resolve()) for p in sorted(pool.glob("*.pt"))}, **given}


def keep_teachers(run_dir: Path, pool: Path) -> None:
    """Add the run's teachers (trained or loaded) to the pool, so no later run trains them again."""
    pool.mkdir(parents=True, exist_ok=True)
    for path in sorted((run_dir / "teachers").glob("*.pt")):
        if not (pool / path.name).exists():
            shutil.copy2(path, pool / path.name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifar10")
    p.add_argument("--per-class", type=int, default=1000, help="training images per class (before the val split)")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--grade-epochs", type=int, nargs=3, default=[2, 2, 4])
    p.add_argument("--methods", nargs="+", default=list(LOSS_METHODS),
                   help="methods and method+loss entries (default: scratch; kd, multi_teacher, ed x kd, dkd, lskd)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="extra experiment override for every run (repeatable), e.g. distill.dkd.beta=2")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "accuracy")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "cifar10_losses")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--teachers-from", type=Path, default=None,
                   help="a directory of teacher checkpoints (<key>.pt) to load for every seed instead of "
                        "training them; keys missing there are trained once, in the first run that needs them")
    args = p.parse_args(argv)

    import torch
    from raydistill.pipeline.local import run
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.data / "train.parquet").is_file():
        print(f"accuracy benchmark: {args.data}/train.parquet not found (CIFAR-10 Parquet tables expected)",
              file=sys.stderr)
        return 2
    args.results.mkdir(parents=True, exist_ok=True)
    given = ({p.stem: str(p.resolve()) for p in sorted(args.teachers_from.glob("*.pt"))}
             if args.teachers_from else {})
    pool = args.work / "teachers"
    for seed in args.seeds:
        for method in args.methods:
            dest = args.results / f"seed{seed}" / method
            if (dest / "summary.json").is_file():
                print(f"seed {seed} {method}: already in {dest}, skipped", flush=True)
                continue
            started = time.perf_counter()
            result = run(experiment(seed, method, args.work, args.data, teacher_pool(pool, given) or None, args))
            keep_teachers(result.run_dir, pool)
            dest.mkdir(parents=True, exist_ok=True)
            for name in COPIED:
                shutil.copy2(result.run_dir / name, dest / name)
            print(f"seed {seed} {method}: {time.perf_counter() - started:.0f} s", flush=True)

    agg = aggregate({s: v for s, v in load_summaries(args.results).items() if s in args.seeds})
    agg["methods"] = {m: r for m, r in agg["methods"].items() if m in args.methods}
    (args.results / "aggregate.json").write_text(json.dumps(agg, indent=2))
    table = table_markdown(agg)
    (args.results / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
