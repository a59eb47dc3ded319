"""Plots of the committed results (benchmarks/results/*), drawn at docs build time by docs/hooks.py
from the same files the results tables are tied to (tests/test_results_files.py), so a plot
cannot show other numbers than its table.

Run as a script to write them: `python docs/gen_results_plots.py [out_dir]`.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _methods(aggregate: Path) -> list:
    """(label, mean %, std %, per-run %) per method of an accuracy.py aggregate.json."""
    methods = json.loads(aggregate.read_text())["methods"]
    return [(name, 100 * m["mean"], 100 * m["std"], [100 * r for r in m["runs"]]) for name, m in methods.items()]


def _ablation(aggregate: Path) -> list:
    return [(r["variant"], r["test_acc"], r["test_acc_std"], r["test_acc_runs"])
            for r in json.loads(aggregate.read_text())]


def _bn_recalibrate(folder: Path) -> list:
    rows = []
    for name, label in (("sequential", "sequential"), ("sequential_recalibrated", "sequential + bn_recalibrate"),
                        ("mixed", "mixed")):
        (_, mean, std, runs), = _methods(folder / name / "aggregate.json")
        rows.append((label, mean, std, runs))
    return rows


def _default_run(folder: Path) -> list:
    summary = json.loads((folder / "summary.json").read_text())
    return [(name, 100 * m["final_test_acc"], 0.0, []) for name, m in summary["methods"].items()]


# plot file -> (title, rows)
PLOTS = {
    "cifar10_losses.svg": ("CIFAR-10, methods x losses (resnet8, 8 epochs, 3 seeds)",
                           lambda: _methods(RESULTS / "cifar10_losses" / "aggregate.json")),
    "ablation_cifar10.svg": ("CIFAR-10, ED ablation: one knob at a time (3 seeds)",
                             lambda: _ablation(RESULTS / "ablation_cifar10" / "aggregate.json")),
    "tinyimagenet.svg": ("Tiny-ImageNet at 32 px, 100 images/class, 8 epochs (3 seeds)",
                         lambda: _methods(RESULTS / "tinyimagenet" / "aggregate.json")),
    "optuna_rerun.svg": ("Best searched curriculum vs baselines, CIFAR-10, resnet14 (seeds 1-3)",
                         lambda: _methods(RESULTS / "optuna_cifar10" / "rerun" / "aggregate.json")),
    "bn_recalibrate.svg": ("CIFAR-10, 300 images/class: ED pass modes (3 seeds)",
                           lambda: _bn_recalibrate(RESULTS / "bn_recalibrate")),
    "default_run.svg": ("The default run (built-in synthetic data, one seed)",
                        lambda: _default_run(RESULTS / "default_run")),
}


def plot_svg(title: str, rows: list) -> str:
    """A horizontal bar chart (mean, std error bar, one dot per seed) as SVG text."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7.5, 1.2 + 0.38 * len(rows)))
    ax = fig.add_subplot()
    labels = [r[0] for r in rows][::-1]
    means = [r[1] for r in rows][::-1]
    stds = [r[2] for r in rows][::-1]
    ax.barh(range(len(rows)), means, xerr=stds, color="#7fb3d5", edgecolor="#333", capsize=3)
    for i, row in enumerate(rows[::-1]):
        ax.plot(row[3], [i] * len(row[3]), "o", color="#333", markersize=3)
        ax.text(row[1] + row[2] + 0.5, i, f"{row[1]:.2f}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), labels, fontsize=9)
    ax.set_xlabel("last-epoch test top-1 %", fontsize=9)
    ax.set_xlim(0, max(m + s for m, s in zip(means, stds)) * 1.15 + 1)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "raydistill", "svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return buffer.getvalue()


def plots() -> dict:
    """{file name: SVG text} for every plot whose committed files exist."""
    out = {}
    for name, (title, rows) in PLOTS.items():
        try:
            data = rows()
        except FileNotFoundError:
            continue
        out[name] = plot_svg(title, data)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    target.mkdir(parents=True, exist_ok=True)
    for file, svg in plots().items():
        (target / file).write_text(svg)
        print(target / file)
