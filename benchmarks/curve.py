"""Does ED help? The budget curve on CIFAR-10 with the committed strong teachers (issue 25).

Every (budget, seed, variant) is one in-process run (`raydistill.pipeline.stages.run`) of the shipped
`cifar10` experiment (resnet8 student on the first 1,000 training images per class: 900 train +
100 validation), loading the committed teachers of `benchmarks/teachers/cifar10/` (resnet20, full
training set) and replaying cached soft labels with as many augmentation draws as the largest
budget's epochs (epoch e uses draw e mod draws: only ed_equal_images at the largest budget, which
runs more epochs than that, repeats draws). Students run in bf16 autocast,
like the teachers, and are tested at the last epoch of each grade only (`test_every_epoch: false`:
the summaries report nothing else; validation runs every epoch). Variants at a budget of B epochs:

  scratch, kd, multi_teacher  B epochs of the complete student (cosine lr 0.05, mixed batches)
  ed                    the best curriculum known from the ablation and the Optuna search: mixed
                        passes, grade epochs weighted to the complete network [B/8, B/8, 6B/8]
  ed_equal_images       ed with its last grade extended so it sees as many images as a baseline
                        (`curriculum.equal_images`)
  ed_paper              the paper's proportion: grades of 62.5 / 12.5 / 25 % of the epochs
                        (switches at 150 and 180 of 240), step lr x0.1 at 62.5 / 75 / 87.5 % (the
                        paper's 150/180/210), sequential passes, lr 0.05
  kd+dkd, ed+dkd, multi_teacher+dkd   the paper's claim "ED + X beats X" with X = DKD (DKD's
                        warm-up scaled: 20 of 240 epochs)

Each run's summary.json, metrics.json and config.yaml go to --results/e<B>/seed<S>/<variant>/; a
run whose summary is there is not run again (resume per (budget, seed, variant)). Lanes: start the
same command in several processes; each claims the next unclaimed run (a claim file with its pid;
a dead lane's claim is taken over). `--report` writes aggregate.json, table.md and curve.png.

    bash benchmarks/results/ed_evidence/commands.sh     # the committed results
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEACHERS = REPO / "benchmarks" / "teachers" / "cifar10"
COPIED = ("metrics.json", "summary.json", "config.yaml")
CURVE_VARIANTS = ("scratch", "kd", "multi_teacher", "ed", "ed_equal_images", "ed_paper")
CLAIM_VARIANTS = ("kd+dkd", "ed+dkd", "multi_teacher+dkd")
GAP_VARIANTS = ("kd", "multi_teacher", "ed", "ed_equal_images", "ed_paper")


def weighted_epochs(budget: int) -> list:
    """[B/8, B/8, 6B/8]: the ablation's and the search's best shape ([1, 1, 6] at 8 epochs)."""
    first = max(1, budget // 8)
    return [first, first, budget - 2 * first]


def paper_epochs(budget: int) -> list:
    """62.5 / 12.5 / 25 % of the epochs per grade (the paper's switches at 150 and 180 of 240)."""
    first, second = round(budget * 0.625), max(1, round(budget * 0.125))
    return [first, second, budget - first - second]


def variant_overrides(variant: str, budget: int) -> list:
    """Experiment overrides of one variant at one budget (on top of the shipped `cifar10`)."""
    base, _, loss = variant.partition("+")
    method = "ed" if base.startswith("ed") else base
    entry = f"{method}+{loss}" if loss else method
    out = [f"methods=[{entry}]", "curriculum.pass_mode=mixed", f"curriculum.grade_epochs={weighted_epochs(budget)}",
           f"distill.dkd.warmup={max(1, round(budget * 20 / 240))}"]
    if base == "ed_equal_images":
        out.append("curriculum.equal_images=true")
    if base == "ed_paper":
        out += ["curriculum.pass_mode=sequential", f"curriculum.grade_epochs={paper_epochs(budget)}",
                "optimizer.schedule=step", "optimizer.lr=0.05",
                f"optimizer.milestones={[round(budget * f) for f in (0.625, 0.75, 0.875)]}"]
    return out


def experiment(budget: int, seed: int, variant: str, work: Path, data_dir: Path, draws: int,
               teachers: Path = TEACHERS, extra: tuple = ()):
    from raydistill.config import Experiment
    checkpoints = {p.stem: str(p.resolve()) for p in sorted(teachers.glob("*.pt"))}
    overrides = [f"name=e{budget}-seed{seed}", f"seed={seed}", "precision=bf16", "test_every_epoch=false",
                 f"data.train_path={data_dir / 'train.parquet'}", f"data.test_path={data_dir / 'test.parquet'}",
                 f"teachers.checkpoints={json.dumps(checkpoints)}", "teachers.soft_labels=cache",
                 f"teachers.cache_draws={draws}", f"teachers.cache_dir={work / 'softlabels'}",
                 f"data.cache_dir={work / 'decoded'}", f"output.dir={work / f'e{budget}' / f'seed{seed}'}",
                 f"output.name={variant}", *variant_overrides(variant, budget), *extra]
    return Experiment.load("cifar10").with_overrides(overrides).validate()


def jobs(budgets: list, seeds: list, extra_seeds_at_largest: list, claims: bool) -> list:
    """(budget, seed, variant) in the order that gives a usable result soonest: the whole curve
    for each seed (budgets ascending), then the ED + X vs X rows at the largest budget, then the
    extra seeds there."""
    largest = max(budgets)
    out = [(b, s, v) for s in seeds for b in sorted(budgets) for v in CURVE_VARIANTS]
    if claims:
        out += [(largest, s, v) for s in seeds + extra_seeds_at_largest for v in CLAIM_VARIANTS]
    out += [(largest, s, v) for s in extra_seeds_at_largest for v in CURVE_VARIANTS]
    return out


def claim(path: Path) -> bool:
    """Create `path` exclusively with this pid; take over a claim whose process is gone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(path.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):
            path.unlink(missing_ok=True)
            return claim(path)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def prepare_caches(args) -> None:
    """Build the soft-label caches of the given variants' teachers (kd: the 10-class teacher;
    multi_teacher: the three group teachers, which every ed variant shares) before the lanes
    start, so no two lanes build the same key; two keys can be built by two processes at once."""
    from raydistill.pipeline.prepare import pick_device, start_run
    from raydistill.pipeline.stages import prepare_teachers
    from raydistill.softlabels import cache_root, ensure_soft_label_cache
    for variant in args.prepare:
        exp = experiment(max(args.budgets), 0, variant, args.work, args.data, args.draws, args.teachers,
                         args.set).with_overrides([f"output.dir={args.work / 'prepare'}", f"output.name={variant}"])
        data, out = start_run(exp, print)
        teachers, _ = prepare_teachers(exp, data, out, pick_device(exp), print)
        ensure_soft_label_cache(exp, data, teachers, root=cache_root(exp), log=print)


def run_jobs(todo: list, args) -> None:
    from raydistill.pipeline.local import run
    for budget, seed, variant in todo:
        dest = args.results / f"e{budget}" / f"seed{seed}" / variant
        if (dest / "summary.json").is_file() or not claim(args.work / "claims" / f"e{budget}-seed{seed}-{variant}"):
            continue
        started = time.perf_counter()
        result = run(experiment(budget, seed, variant, args.work, args.data, args.draws, args.teachers, args.set))
        dest.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            shutil.copy2(Path(result.run_dir) / name, dest / name)
        print(f"e{budget} seed {seed} {variant}: {time.perf_counter() - started:.0f} s", flush=True)


# ---- the report ------------------------------------------------------------------------------

def mean_std(values: list) -> tuple:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(results: Path, teachers: Path = TEACHERS) -> dict:
    """{"budgets": {B: {variant: {mean, std, runs, seeds, epochs, train_images, train_flops}}},
    "teachers": teachers.json} from every committed run."""
    out: dict = {}
    for path in sorted(results.glob("e*/seed*/*/summary.json")):
        budget, seed, variant = int(path.parts[-4][1:]), int(path.parts[-3][4:]), path.parts[-2]
        (summary,) = json.loads(path.read_text())["methods"].values()
        out.setdefault(budget, {}).setdefault(variant, []).append((seed, summary))
    budgets = {}
    for b in sorted(out):
        rows = {}
        for v in [*CURVE_VARIANTS, *CLAIM_VARIANTS]:
            if v not in out[b]:
                continue
            runs = sorted(out[b][v], key=lambda r: r[0])
            mean, std = mean_std([s["final_test_acc"] for _, s in runs])
            first = runs[0][1]
            rows[v] = {"mean": mean, "std": std, "runs": [s["final_test_acc"] for _, s in runs],
                       "val": [s["final_val_acc"] for _, s in runs], "seeds": [seed for seed, _ in runs],
                       "epochs": first["epochs"], "train_images": first["train_images"],
                       "train_flops": first["train_flops"],
                       "grade_epochs": [g["epochs"] for g in first["grades"]]}
        budgets[b] = rows
    return {"budgets": budgets, "teachers": json.loads((teachers / "teachers.json").read_text())}


def table_markdown(agg: dict) -> str:
    """One table for the whole curve: accuracy and budget (images seen, student training FLOPs,
    both relative to `scratch` at the same budget) per variant and budget."""
    lines = ["| budget | method | grade epochs | test top-1 % (mean ± std) | per seed | images seen | "
             "vs baseline images | student train TFLOP | vs baseline FLOPs |",
             "|---:|---|---|---:|---|---:|---:|---:|---:|"]
    for b, rows in agg["budgets"].items():
        ref = rows.get("scratch")
        for v, r in rows.items():
            rel_img = f"{r['train_images'] / ref['train_images']:.3f}" if ref else "n/a"
            rel_flop = f"{r['train_flops'] / ref['train_flops']:.3f}" if ref else "n/a"
            per_seed = " / ".join(f"{100 * a:.2f}" for a in r["runs"])
            grades = "/".join(str(e) for e in r["grade_epochs"])
            lines.append(f"| {b} | `{v}` | {grades} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | {per_seed} | "
                         f"{r['train_images']:,} | {rel_img} | {r['train_flops'] / 1e12:.1f} | {rel_flop} |")
    lines += ["", "Difference of the mean test top-1 (points) to `scratch` and to `kd` at the same budget:", "",
              "| budget | " + " | ".join(f"`{v}` − scratch" for v in GAP_VARIANTS) + " | `ed` − `kd` |",
              "|---:|" + "---:|" * (len(GAP_VARIANTS) + 1)]
    for b, rows in agg["budgets"].items():
        if "scratch" not in rows or "kd" not in rows:
            continue
        gaps = [f"{100 * (rows[v]['mean'] - rows['scratch']['mean']):+.2f}" if v in rows else "–"
                for v in GAP_VARIANTS]
        ed_kd = f"{100 * (rows['ed']['mean'] - rows['kd']['mean']):+.2f}" if "ed" in rows else "–"
        lines.append(f"| {b} | " + " | ".join(gaps) + f" | {ed_kd} |")
    lines += ["", "| teacher | arch | classes | train images | epochs | test top-1 % on its classes | sha256 |",
              "|---|---|---:|---:|---:|---:|---|"]
    for key, t in agg["teachers"].items():
        lines.append(f"| `{key}` | {t['arch']} | {len(t['classes'])} | {t['train_images']:,} | {t['epochs']} | "
                     f"{100 * t['test_acc']:.2f} | `{t['sha256'][:12]}` |")
    return "\n".join(lines)


def plot(agg: dict, path: Path) -> None:
    """Test top-1 vs epochs per variant of the curve, mean ± std over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in CURVE_VARIANTS:
        points = [(b, r[v]) for b, r in agg["budgets"].items() if v in r]
        if points:
            xs = [b for b, _ in points]
            ax.errorbar(xs, [100 * r["mean"] for _, r in points], yerr=[100 * r["std"] for _, r in points],
                        marker="o", capsize=3, label=v)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(agg["budgets"]), [str(b) for b in sorted(agg["budgets"])])
    ax.set_xlabel("student epochs (budget)")
    ax.set_ylabel("CIFAR-10 test top-1 % (last epoch)")
    ax.set_title("resnet8 student, 1,000 images/class; resnet20 teachers on the full set")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--extra-seeds-at-largest", type=int, nargs="*", default=[2])
    p.add_argument("--no-claims", action="store_true", help="skip the ED + X vs X rows")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifar10")
    p.add_argument("--work", type=Path, default=Path("/tmp/raydistill-curve"))
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "ed_evidence")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--teachers", type=Path, default=TEACHERS, help="directory of <key>.pt teacher checkpoints")
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for every run (a smoke run: "
                   "data.limit_per_class=50)")
    p.add_argument("--prepare", nargs="*", choices=["kd", "multi_teacher"], default=None,
                   help="only build the soft-label caches of these variants' teachers (default: both)")
    p.add_argument("--report", action="store_true", help="only write aggregate.json, table.md, curve.png")
    args = p.parse_args(argv)
    args.draws = max(args.budgets)
    args.work = args.work.resolve()
    import torch
    torch.set_num_threads(args.threads)
    if args.report:
        agg = aggregate(args.results, args.teachers)
        (args.results / "aggregate.json").write_text(json.dumps(agg, indent=2) + "\n")
        (args.results / "table.md").write_text(table_markdown(agg) + "\n")
        plot(agg, args.results / "curve.png")
        print(table_markdown(agg))
        return 0
    if not (args.data / "train.parquet").is_file():
        print(f"curve: {args.data}/train.parquet not found (CIFAR-10 Parquet tables expected)", file=sys.stderr)
        return 2
    if args.prepare is not None:
        args.prepare = args.prepare or ["kd", "multi_teacher"]
        prepare_caches(args)
        return 0
    run_jobs(jobs(args.budgets, args.seeds, args.extra_seeds_at_largest, not args.no_claims), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
