"""CIFAR-10 accuracy benchmark: scratch, kd, multi_teacher and ed over several seeds.

Reports the mean ± std (over seeds) of each method's LAST-epoch test top-1 — nothing is selected
on test data — and the teachers' own test accuracy on their classes.

The experiment is the shipped `cifar10` one (raydistill/experiments/cifar10.yaml); its budget,
sized for 2 CPU cores in well under an hour of compute:
  data      ../shared/data/cifar10 (Parquet), the first 1000 training images per class
            (900 train + 100 validation per class after the stratified split), the full 10k test set
  teachers  resnet20, 10 epochs, cosine lr 0.05, batch 128: three group teachers (classes 0-2,
            3-5, 6-9) for ed/multi_teacher and one 10-class teacher for kd. They are trained ONCE
            (in the first seed's run) and loaded by the other seeds through `teachers.checkpoints`,
            so the spread over seeds is the students' spread (init, shuffling, augmentation).
  students  resnet8, 8 epochs, cosine lr 0.05, batch 128; ed grades end at blocks 1/2/3 after
            2/2/4 epochs, reference heads 64 wide; ed and multi_teacher use `mixed` batches
            (the paper's `sequential` passes collapse at short budgets, see README).

Each seed is one in-process run (`raydistill.runner.run`) under --work (default runs/accuracy);
its metrics.json, metrics.parquet, summary.json and config.yaml are copied to --results
(default benchmarks/results/cifar10), together with `table.md` and `aggregate.json`. A seed
whose summary already exists in --results is not re-run, so an interrupted benchmark resumes.

    .venv/bin/python benchmarks/accuracy.py                 # 3 seeds, the budget above
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
METHOD_ORDER = ("scratch", "kd", "multi_teacher", "ed")


def experiment(seed: int, work: Path, data_dir: Path, teacher_paths: dict | None, args):
    """The shipped `cifar10` experiment with this seed, data location and (after the first seed) teachers."""
    from raydistill.config import Experiment
    overrides = [f"name=seed{seed}", f"seed={seed}", f"methods=[{','.join(METHOD_ORDER)}]",
                 f"data.train_path={data_dir / 'train.parquet'}", f"data.test_path={data_dir / 'test.parquet'}",
                 f"data.limit_per_class={args.per_class}", f"teachers.arch={args.teacher}",
                 f"teachers.epochs={args.teacher_epochs}", f"student.arch={args.student}",
                 f"curriculum.grade_epochs={list(args.grade_epochs)}", f"output.dir={work}"]
    if teacher_paths:
        overrides.append(f"teachers.checkpoints={json.dumps(teacher_paths)}")
    return Experiment.load("cifar10").with_overrides(overrides).validate()


def mean_std(values: list) -> tuple:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(summaries: dict) -> dict:
    """{method: {"mean", "std", "runs": [...]}, "teachers": {...}} from {seed: summary}."""
    seeds = sorted(summaries)
    methods = {}
    for m in METHOD_ORDER:
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
    out = {}
    for path in sorted(results.glob("seed*/summary.json")):
        out[int(path.parent.name.removeprefix("seed"))] = json.loads(path.read_text())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifar10")
    p.add_argument("--per-class", type=int, default=1000, help="training images per class (before the val split)")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--grade-epochs", type=int, nargs=3, default=[2, 2, 4])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "accuracy")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "cifar10")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--teachers-from", type=Path, default=None,
                   help="a directory of teacher checkpoints (<key>.pt) to load for every seed instead of "
                        "training them; keys missing there are trained in the first seed's run")
    args = p.parse_args(argv)

    import torch
    from raydistill.runner import run
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.data / "train.parquet").is_file():
        print(f"accuracy benchmark: {args.data}/train.parquet not found (CIFAR-10 Parquet tables expected)",
              file=sys.stderr)
        return 2
    args.results.mkdir(parents=True, exist_ok=True)
    given = ({p.stem: str(p.resolve()) for p in sorted(args.teachers_from.glob("*.pt"))}
             if args.teachers_from else {})
    teacher_paths = given or None
    for seed in args.seeds:
        done = args.results / f"seed{seed}" / "summary.json"
        first_dir = args.work / f"seed{args.seeds[0]}" / "teachers"
        if seed != args.seeds[0] and first_dir.is_dir():   # everything the first seed loaded or trained
            teacher_paths = {p.stem: str(p.resolve()) for p in sorted(first_dir.glob("*.pt"))}
        if done.is_file():
            print(f"seed {seed}: already in {done.parent}, skipped", flush=True)
            continue
        started = time.perf_counter()
        result = run(experiment(seed, args.work, args.data, teacher_paths, args))
        dest = args.results / f"seed{seed}"
        dest.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            shutil.copy2(result.run_dir / name, dest / name)
        print(f"seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)


    agg = aggregate({s: v for s, v in load_summaries(args.results).items() if s in args.seeds})
    (args.results / "aggregate.json").write_text(json.dumps(agg, indent=2))
    table = table_markdown(agg)
    (args.results / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
