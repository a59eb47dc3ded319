"""Can a searched curriculum beat KD? The 32-epoch confirmation of the two fair searches (issue 33).

The searches (`tune_spaces/curricula_ed_cifar10.yaml`, `tune_spaces/curricula_kd_cifar10.yaml`)
each export their best trial, chosen on validation, as `best.yaml`. This script re-runs, at 32 epochs
and on 3 seeds that vary both the student's seed and `data.seed` (the validation split and the
augmentation bank of the cached soft labels change with it):

  ed_searched             the ED search's best curriculum (its grade shares of 32 epochs)
  ed_searched_all_signal  the same curriculum on KD's signal (curriculum.all_teacher_weight: 1): the
                          curriculum's own effect against kd_searched, with the teacher signal equal
  kd_searched             the kd search's best lr, T and alpha
  ed_curriculum           the best ED trial that has a fragment grade (an early share above 0), chosen
                          on validation like the best: when the best curriculum is none, this is the
                          best curriculum that is one
  ed_curriculum_all_signal  that curriculum on KD's signal
  scratch                 the complete student alone (the shipped cifar10 settings)

Every run is in-process (`raydistill.pipeline.local.run`), resumable per (seed, variant): a run whose
summary is in --results is skipped; lanes (the same command in several processes) claim runs as
benchmarks/curve.py's do. `--report` writes aggregate.json, table.md and search.png (each search's
trials, validation accuracy vs trial, ED vs kd) from the committed files.

    bash benchmarks/results/searched_curricula/commands.sh
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curve import COPIED, claim, mean_std  # noqa: E402  (benchmarks/ is not a package)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "searched_curricula"
SEARCHES = {"ed": "curricula_ed_cifar10", "kd": "curricula_kd_cifar10"}
VARIANTS = ("ed_searched", "ed_searched_all_signal", "ed_curriculum", "ed_curriculum_all_signal", "kd_searched",
            "scratch")
EPOCHS = 32
SEEDS = (0, 1, 2)


def best_config(results: Path, search: str) -> dict:
    """The committed best.yaml of a search (copied from the search directory by commands.sh)."""
    from raydistill.config import load_yaml
    return load_yaml((results / f"search_{search}" / "best.yaml").read_text())


def experiment(variant: str, seed: int, results: Path, work: Path):
    """The experiment of one (variant, seed) at EPOCHS epochs: the search's best as exported, its
    trial bookkeeping (output, name) replaced, the budget scaled, seeds varied."""
    from raydistill.config import Experiment
    from raydistill.search.space import apply_values
    source = "kd" if variant in ("kd_searched", "scratch") else "ed"
    raw = best_config(results, source)
    exp = Experiment.from_dict(raw, source=f"{source} best.yaml")
    if variant.startswith("ed_curriculum"):   # the best trial's experiment with that trial's values instead
        exp = apply_values(exp, curriculum_trial(results))
    overrides = [f"name={variant}", f"seed={seed}", f"data.seed={seed}", f"curriculum.total_epochs={EPOCHS}",
                 f"output.dir={work / f'seed{seed}'}", f"output.name={variant}",
                 f"teachers.cache_dir={work / 'softlabels'}", f"data.cache_dir={work / 'decoded'}",
                 "tracking.tensorboard=false", "ray.cpus_per_worker=1"]   # one torch thread: one lane per core
    if variant.endswith("_all_signal"):
        overrides.append("curriculum.all_teacher_weight=1.0")
    if variant == "scratch":   # the shipped cifar10 student settings, not kd's searched ones
        shipped = Experiment.load("cifar10")
        overrides += ["methods=[scratch]", f"optimizer.lr={shipped.optimizer.lr}",
                      f"curriculum.alpha={shipped.curriculum.alpha}", f"curriculum.temperature={shipped.curriculum.temperature}"]
    return exp.with_overrides(overrides).validate()


# ---- the report ------------------------------------------------------------------------------

def trial_rows(path: Path) -> list:
    """Each row of a search's trials.parquet (raydistill.search.results.table_rows: searched list
    values decoded), in trial order."""
    import pandas as pd
    from raydistill.search.results import table_rows
    return sorted(table_rows(pd.read_parquet(path)), key=lambda r: r["trial"])


def search_trials(results: Path, search: str) -> list:
    """trial_rows of a search's committed trials.parquet."""
    return trial_rows(results / f"search_{search}" / "trials.parquet")


def epoch_reports(tuner_dir: Path) -> dict:
    """{trial: [every epoch report Tune kept in the trial's result.json, in order]} of a search's
    Tune directory (stopped trials' included)."""
    out = {}
    for path in sorted(tuner_dir.glob("trial-*/result.json")):
        reports = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.parent.name] = [r for r in reports if "val_acc" in r]
    return out


def curriculum_trial(results: Path) -> dict:
    """The searched values of the ED trial with the best validation accuracy among completed trials
    that have a fragment grade (some early share of the epochs above 0)."""
    from raydistill.search.results import best_row
    from raydistill.search.space import load_space
    space = load_space(REPO / "tune_spaces" / f"{SEARCHES['ed']}.yaml")
    rows = [r for r in search_trials(results, "ed") if any(f > 0 for f in r["curriculum.grade_fractions"][:-1])]
    best = best_row(rows)
    return {d.path: best[d.path] for d in space.dimensions}


def collect(search_out: Path, results: Path) -> None:
    """search_<s>/trial_epochs.json from Tune's per-trial result.json (every epoch a trial reported,
    stopped trials included): each epoch's grade and validation accuracy (seen classes, and all
    classes: what ASHA compared), which the trials.parquet row (last epoch, seen classes) does not keep."""
    for search, name in SEARCHES.items():
        epochs = {trial: [{k: r[k] for k in ("epoch", "grade", "val_acc", "val_acc_all_classes")} for r in reports]
                  for trial, reports in epoch_reports(search_out / name / "tuner").items()}
        (results / f"search_{search}" / "trial_epochs.json").write_text(json.dumps(epochs, indent=1) + "\n")


def search_cost(results: Path) -> dict:
    """Per search: trials, trials that ran every epoch, epochs trained, and the trials' summed wall
    time (one CPU each: CPU-hours) from trials.parquet."""
    cost = {}
    for search in SEARCHES:
        trials = search_trials(results, search)
        cost[search] = {"trials": len(trials), "completed": sum(t["stop_reason"] == "completed" for t in trials),
                        "epochs": sum(int(t["epochs_run"]) for t in trials),
                        "cpu_hours": round(sum(float(t["wall_s"]) for t in trials) / 3600, 2)}
    return cost


def aggregate(results: Path) -> dict:
    runs: dict = {}
    for path in sorted(results.glob(f"e{EPOCHS}/seed*/*/summary.json")):
        seed, variant = int(path.parts[-3][4:]), path.parts[-2]
        (summary,) = json.loads(path.read_text())["methods"].values()
        runs.setdefault(variant, []).append((seed, summary))
    rows = {}
    for v in VARIANTS:
        if v not in runs:
            continue
        done = sorted(runs[v], key=lambda r: r[0])
        mean, std = mean_std([s["final_test_acc"] for _, s in done])
        first = done[0][1]
        rows[v] = {"mean": mean, "std": std, "runs": [s["final_test_acc"] for _, s in done],
                   "val": [s["final_val_acc"] for _, s in done], "seeds": [seed for seed, _ in done],
                   "epochs": first["epochs"], "train_images": first["train_images"],
                   "train_flops": first["train_flops"], "grade_epochs": [g["epochs"] for g in first["grades"]]}
    best = {k: best_config(results, k) for k in SEARCHES}
    return {"epochs": EPOCHS, "variants": rows, "search_cost": search_cost(results),
            "best": {k: {"curriculum": b["curriculum"], "optimizer": {"lr": b["optimizer"]["lr"],
                                                                    "restart_per_grade": b["optimizer"]["restart_per_grade"]}}
                     for k, b in best.items()}}


def table_markdown(agg: dict) -> str:
    lines = ["| method | grade epochs | test top-1 % (mean ± std) | per seed (data seed = seed) | val top-1 % (mean) | "
             "images seen | student train TFLOP |", "|---|---|---:|---|---:|---:|---:|"]
    for v, r in agg["variants"].items():
        per_seed = " / ".join(f"{100 * a:.2f}" for a in r["runs"])
        val = 100 * sum(r["val"]) / len(r["val"])
        lines.append(f"| `{v}` | {'/'.join(str(e) for e in r['grade_epochs'])} | {100 * r['mean']:.2f} ± "
                     f"{100 * r['std']:.2f} | {per_seed} | {val:.2f} | {r['train_images']:,} | "
                     f"{r['train_flops'] / 1e12:.1f} |")
    return "\n".join(lines)


def plot(results: Path, path: Path) -> None:
    """Each trial's validation accuracy over all classes at the last epoch it ran, vs trial (creation
    order), ED and kd; filled: the trial ran all its epochs, hollow: ASHA stopped it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for search, marker in (("ed", "o"), ("kd", "s")):
        epochs = json.loads((results / f"search_{search}" / "trial_epochs.json").read_text())
        colour = f"C{0 if search == 'ed' else 1}"
        for done in (False, True):
            shown = [t for t in search_trials(results, search)
                     if (t["stop_reason"] == "completed") == done and epochs.get(t["trial"])]
            ax.scatter([int(t["trial"].split("-")[1]) for t in shown],
                       [100 * epochs[t["trial"]][-1]["val_acc_all_classes"] for t in shown], marker=marker,
                       **({"color": colour} if done else {"facecolors": "none", "edgecolors": colour}),
                       label=f"{search}: {'all 16 epochs' if done else 'stopped by ASHA'}")
    ax.set_xlabel("trial (creation order)")
    ax.set_ylabel("validation top-1 %, all classes (last epoch run)")
    ax.set_title("curricula_ed_cifar10 vs curricula_kd_cifar10 (16-epoch trials)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(results: Path, agg: dict, table) -> None:
    """aggregate.json and table.md (`table(agg)`) in `results`; the table printed too."""
    (results / "aggregate.json").write_text(json.dumps(agg, indent=2) + "\n")
    (results / "table.md").write_text(table(agg) + "\n")
    print(table(agg))


def run_seeds(args, variants, experiment_of) -> None:
    """Each (seed, variant) run, experiment_of(variant, seed), not yet in args.results, seed by seed,
    each claimed so that lanes (the same command in several processes) share the work."""
    from raydistill.pipeline.local import run
    for seed in args.seeds:
        for variant in variants:
            dest = args.results / f"e{EPOCHS}" / f"seed{seed}" / variant
            if (dest / "summary.json").is_file() or not claim(args.work / "claims" / f"seed{seed}-{variant}"):
                continue
            started = time.perf_counter()
            result = run(experiment_of(variant, seed))
            dest.mkdir(parents=True, exist_ok=True)
            for name in COPIED:
                shutil.copy2(Path(result.run_dir) / name, dest / name)
            print(f"seed {seed} {variant}: {time.perf_counter() - started:.0f} s", flush=True)


def seed_runs(results: Path, variant: str) -> dict:
    """One variant's committed runs in results/e<EPOCHS>/seed*/<variant>/ (benchmarks/plateau.py's and
    pbt.py's rows): seeds, test and val per seed, mean ± std, each seed's grade epochs and images."""
    runs = []
    for path in sorted(results.glob(f"e{EPOCHS}/seed*/{variant}/summary.json")):
        (summary,) = json.loads(path.read_text())["methods"].values()
        runs.append((int(path.parts[-3][4:]), summary))
    mean, std = mean_std([s["final_test_acc"] for _, s in runs]) if runs else (None, None)
    return {"seeds": [seed for seed, _ in runs], "runs": [s["final_test_acc"] for _, s in runs],
            "val": [s["final_val_acc"] for _, s in runs], "mean": mean, "std": std,
            "grade_epochs": [[g["epochs"] for g in s["grades"]] for _, s in runs],
            "train_images": [s["train_images"] for _, s in runs]}


def confirmed_rows(variants) -> dict:
    """This confirmation's rows of `variants`, in seed_runs' fields, to set beside another's."""
    confirmed = aggregate(RESULTS)["variants"]
    return {v: {k: confirmed[v][k] for k in ("seeds", "runs", "val", "mean", "std", "grade_epochs", "train_images")}
            for v in variants if v in confirmed}


def variants_markdown(rows: dict) -> str:
    """seed_runs/confirmed_rows rows as a table: grade epochs per seed where they differ by seed."""
    lines = ["| method | grade epochs (per seed) | test top-1 % (mean ± std) | per seed (data seed = seed) | "
             "val top-1 % (mean) |", "|---|---|---:|---|---:|"]
    for v, r in rows.items():
        epochs = r["grade_epochs"]
        shown = " · ".join("/".join(map(str, e)) for e in epochs) if epochs and isinstance(epochs[0], list) \
            else "/".join(map(str, epochs))
        lines.append(f"| `{v}` | {shown} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | "
                     f"{' / '.join(f'{100 * a:.2f}' for a in r['runs'])} | {100 * sum(r['val']) / len(r['val']):.2f} |")
    return "\n".join(lines)


def lane_arguments(doc: str, results: Path, report_help: str, collect_help: str = None, variants=None):
    """The command line of this script and its siblings (plateau.py, pbt.py): seeds, lanes' work
    directory, results, threads, --report and (where there is one) --collect."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    if variants:
        p.add_argument("--variants", nargs="+", choices=variants, default=list(variants))
    p.add_argument("--work", type=Path, default=Path("runs/searched"))
    p.add_argument("--results", type=Path, default=results)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help=report_help)
    if collect_help:
        p.add_argument("--collect", type=Path, metavar="SEARCH_OUT", help=collect_help)
    return p


def main(argv=None) -> int:
    args = lane_arguments(__doc__, RESULTS, "only write aggregate.json, table.md, search.png",
                          "only write search_<s>/trial_epochs.json from the searches' directory (tune --output)",
                          VARIANTS).parse_args(argv)
    args.work = args.work.resolve()
    if args.collect:
        collect(args.collect, args.results)
        return 0
    import torch
    torch.set_num_threads(args.threads)
    if args.report:
        write_report(args.results, aggregate(args.results), table_markdown)
        plot(args.results, args.results / "search.png")
        return 0
    run_seeds(args, args.variants, lambda variant, seed: experiment(variant, seed, args.results, args.work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
