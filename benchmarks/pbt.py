"""Population Based Training over curricula vs the Optuna/ASHA search, and the best PBT schedule
replayed at 32 epochs (issue 34, part 2's measurement).

The population is `tune_spaces/pbt_cifar10.yaml`: 8 members of 16 epochs (128 trial-epochs) on the
committed CIFAR-10 teachers, synchronous PBT deciding every 2 epochs. It is compared with the ED
search of docs/results/searched-curricula.md (`curricula_ed_cifar10`, 24 Optuna/ASHA trials, 312
trial-epochs) cut to the same budget: its trials in creation order while their epochs add up to at
most the population's (the search as it stood when it had spent that much), and whole.

`pbt_replayed` is the best member's schedule (schedules/<trial>.yaml, exported by the search as
best.yaml), stretched to 32 epochs: every grade's epochs and every value's starting epoch doubled,
so each epoch of the 16-epoch schedule becomes two (the lr schedule's cosine spans the 32 epochs, as
in every 32-epoch run of searched.py). It runs on the confirmation's seeds, data.seed = seed, beside
searched.py's rows on the same seeds.

    .venv/bin/python benchmarks/pbt.py --collect /work/searches   # after `raydistill tune tune_spaces/pbt_cifar10.yaml`
    .venv/bin/python benchmarks/pbt.py --work runs/searched        # (twice, for two lanes)
    .venv/bin/python benchmarks/pbt.py --report
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import searched  # noqa: E402  (benchmarks/ is not a package)

RESULTS = searched.REPO / "benchmarks" / "results" / "pbt"
SEARCH = "pbt_cifar10"
STRETCH = searched.EPOCHS // 16          # 16-epoch schedule -> 32 epochs
COMPARED = ("ed_searched", "ed_curriculum", "kd_searched", "scratch")   # searched.py's rows on the same seeds
COMMITTED_TEACHERS = searched.REPO / "benchmarks" / "teachers" / "cifar10"
SEARCH_FILES = ("trials.parquet", "best.yaml", "space.json", "schedules.json")
EPOCH_FIELDS = ("epoch", "grade", "lr", "val_acc", "val_acc_all_classes", "time_this_iter_s")


# ---- the search's files ----------------------------------------------------------------------

def member_epochs(tuner_dir: Path) -> dict:
    """{trial: [{epoch, grade, lr, val_acc, val_acc_all_classes, time_this_iter_s, exploited}]} from
    Tune's result.json of each trial: what the member itself trained, epoch by epoch. `exploited`:
    the member's values changed before this epoch, i.e. it had just copied a better member's
    checkpoint and perturbed its values (PBT's exploit and explore; a plain pause and resume keeps
    them). schedules.json cannot say this: a member's lineage there is its donor's up to the exploit."""
    return {trial: [{**{k: r[k] for k in EPOCH_FIELDS}, "exploited": i > 0 and r["config"] != reports[i - 1]["config"]}
                    for i, r in enumerate(reports)]
            for trial, reports in searched.epoch_reports(tuner_dir).items()}


def collect(search_out: Path, results: Path) -> None:
    """search/: the population's trials.parquet, best.yaml, space.json, schedules.json and members.json
    (member_epochs); the ED search's per-epoch compute time (ed_epoch_seconds.json) for the cost
    comparison, from its Tune directory (searched.py committed its per-epoch accuracies only)."""
    dest = results / "search"
    dest.mkdir(parents=True, exist_ok=True)
    for name in SEARCH_FILES:
        shutil.copy2(search_out / SEARCH / name, dest / name)
    (dest / "members.json").write_text(json.dumps(member_epochs(search_out / SEARCH / "tuner"), indent=1) + "\n")
    ed = member_epochs(search_out / searched.SEARCHES["ed"] / "tuner")
    (dest / "ed_epoch_seconds.json").write_text(json.dumps(
        {t: [round(e["time_this_iter_s"], 3) for e in epochs] for t, epochs in ed.items()}, indent=1) + "\n")


def best_schedule(results: Path) -> dict:
    from raydistill.config import load_yaml
    return load_yaml((results / "search" / "best.yaml").read_text())


# ---- the replay ------------------------------------------------------------------------------

def stretched(raw: dict, factor: int) -> dict:
    """The schedule's experiment with every grade's epochs and every replay entry's start x factor."""
    raw = json.loads(json.dumps(raw))
    c = raw["curriculum"]
    c["grade_epochs"] = [factor * e for e in c["grade_epochs"]]
    c["replay"] = [{**entry, "from_epoch": factor * entry["from_epoch"]} for entry in c["replay"]]
    return raw


def experiment(seed: int, results: Path, work: Path):
    """pbt_replayed of this seed: the best schedule at 32 epochs, the committed teachers (the same
    weights the search copied), seeds varied as in searched.py."""
    from raydistill.config import Experiment
    raw = stretched(best_schedule(results), STRETCH)
    raw["teachers"]["checkpoints"] = {k: str(COMMITTED_TEACHERS / f"{k}.pt") for k in raw["teachers"]["checkpoints"]}
    exp = Experiment.from_dict(raw, source="pbt best.yaml")
    return exp.with_overrides([
        "name=pbt_replayed", f"seed={seed}", f"data.seed={seed}", f"output.dir={work / f'seed{seed}'}",
        "output.name=pbt_replayed", f"teachers.cache_dir={work / 'softlabels'}", f"data.cache_dir={work / 'decoded'}",
        "tracking.tensorboard=false", "ray.cpus_per_worker=1"]).validate()


# ---- the report ------------------------------------------------------------------------------

def search_comparison(results: Path) -> dict:
    """Per search: trials, trial-epochs, CPU-hours of epoch compute (the sum of every epoch's
    time_this_iter_s, one CPU per trial) and the best completed trial's validation accuracy (all
    classes at the last epoch; what each search selects on)."""
    from raydistill.search.results import best_row
    members = json.loads((results / "search" / "members.json").read_text())
    pop = searched.trial_rows(results / "search" / "trials.parquet")
    best = best_row(pop)
    out = {"pbt": {"trials": len(pop), "trial_epochs": sum(len(e) for e in members.values()),
                   "cpu_hours": round(sum(e["time_this_iter_s"] for m in members.values() for e in m) / 3600, 3),
                   "best_trial": best["trial"], "best_val": best["val_acc"]}}
    seconds = json.loads((results / "search" / "ed_epoch_seconds.json").read_text())
    ed = searched.search_trials(searched.RESULTS, "ed")
    budget = out["pbt"]["trial_epochs"]
    prefix, spent = [], 0
    for t in ed:   # creation order
        if spent + len(seconds[t["trial"]]) > budget:
            break
        prefix.append(t)
        spent += len(seconds[t["trial"]])
    for name, trials in (("asha_equal_epochs", prefix), ("asha_whole", ed)):
        b = best_row(trials)
        out[name] = {"trials": len(trials), "trial_epochs": sum(len(seconds[t["trial"]]) for t in trials),
                     "cpu_hours": round(sum(sum(seconds[t["trial"]]) for t in trials) / 3600, 3),
                     "best_trial": b["trial"], "best_val": b["val_acc"]}
    return out


def aggregate(results: Path) -> dict:
    rows = {"pbt_replayed": searched.seed_runs(results, "pbt_replayed"), **searched.confirmed_rows(COMPARED)}
    schedule = best_schedule(results)
    return {"epochs": searched.EPOCHS, "searches": search_comparison(results), "variants": rows,
            "best_schedule": {"grade_epochs_16": schedule["curriculum"]["grade_epochs"],
                              "replay_16": schedule["curriculum"]["replay"]}}


def table_markdown(agg: dict) -> str:
    names = {"pbt": "PBT, population of 8 (`pbt_cifar10`)",
             "asha_equal_epochs": "Optuna/ASHA (`curricula_ed_cifar10`), first trials to the same trial-epochs",
             "asha_whole": "Optuna/ASHA (`curricula_ed_cifar10`), whole search"}
    lines = ["| search | trials | trial-epochs | CPU-hours (trials' epoch times summed) | best trial | its validation top-1 % |",
             "|---|---:|---:|---:|---|---:|"]
    for key, s in agg["searches"].items():
        lines.append(f"| {names[key]} | {s['trials']} | {s['trial_epochs']} | {s['cpu_hours']:.2f} | "
                     f"{s['best_trial']} | {100 * s['best_val']:.2f} |")
    return "\n".join(lines + ["", f"{agg['epochs']} epochs:", "", searched.variants_markdown(agg["variants"])])


def plot(results: Path, path: Path) -> None:
    """The population over time: top, each member's validation accuracy over all classes per epoch;
    bottom, the grade each member trained in per epoch; a marker where a member exploited another."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    members = json.loads((results / "search" / "members.json").read_text())
    names = sorted(members)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for i, name in enumerate(names):
        epochs = members[name]
        top.plot([e["epoch"] for e in epochs], [100 * e["val_acc_all_classes"] for e in epochs], marker=".",
                 color=f"C{i}", label=name)
        exploited = [e for e in epochs if e["exploited"]]
        top.scatter([e["epoch"] for e in exploited], [100 * e["val_acc_all_classes"] for e in exploited],
                    marker="x", color=f"C{i}", s=60, zorder=3)
    top.set_ylabel("validation top-1 %, all classes")
    top.set_title("pbt_cifar10: 8 members, 16 epochs, a decision every 2 epochs\n"
                  "(x: the first epoch after the member copied a better one and perturbed its values)", fontsize=9)
    top.grid(alpha=0.3)
    top.legend(fontsize=7, ncol=4)
    last = max(e["epoch"] for m in members.values() for e in m)
    grid = [[float("nan")] * last for _ in names]
    for i, name in enumerate(names):
        for e in members[name]:
            grid[i][e["epoch"] - 1] = e["grade"]
    image = bottom.imshow(grid, aspect="auto", cmap=ListedColormap(["#c6dbef", "#6baed6", "#08519c"]), vmin=0.5,
                          vmax=3.5, extent=(0.5, last + 0.5, len(names) - 0.5, -0.5), interpolation="nearest")
    bottom.set_yticks(range(len(names)), names, fontsize=7)
    bottom.set_xlabel("epoch")
    bottom.set_ylabel("grade trained")
    fig.colorbar(image, ax=bottom, ticks=[1, 2, 3], label="grade", fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    args = searched.lane_arguments(__doc__, RESULTS, "only write aggregate.json, table.md, population.png",
                                   "only copy the population's files from the searches' directory (tune --output)"
                                   ).parse_args(argv)
    args.work = args.work.resolve()
    if args.collect:
        collect(args.collect, args.results)
        return 0
    import torch
    torch.set_num_threads(args.threads)
    if args.report:
        searched.write_report(args.results, aggregate(args.results), table_markdown)
        plot(args.results, args.results / "population.png")
        return 0
    searched.run_seeds(args, ["pbt_replayed"], lambda _variant, seed: experiment(seed, args.results, args.work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
