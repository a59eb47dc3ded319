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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import searched  # noqa: E402  (benchmarks/ is not a package)

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


def aggregate(results: Path) -> dict:
    """ed_plateau per seed (test, val, the epochs each grade took) beside searched.py's rows."""
    rows = {"ed_plateau": searched.seed_runs(results, "ed_plateau"), **searched.confirmed_rows(COMPARED)}
    return {"epochs": searched.EPOCHS, "maxima": MAXIMA, "patience": PATIENCE, "min_delta": MIN_DELTA,
            "variants": rows}


def table_markdown(agg: dict) -> str:
    return searched.variants_markdown(agg["variants"])


def main(argv=None) -> int:
    args = searched.lane_arguments(__doc__, RESULTS, "only write aggregate.json and table.md").parse_args(argv)
    args.work = args.work.resolve()
    import torch
    torch.set_num_threads(args.threads)
    if args.report:
        searched.write_report(args.results, aggregate(args.results), table_markdown)
        return 0
    searched.run_seeds(args, ["ed_plateau"], lambda _variant, seed: experiment(seed, args.work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
