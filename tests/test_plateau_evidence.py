"""The plateau measurement (issue 34) is tied to committed files: each `ed_plateau` run switched
grades exactly where its own validation series and the plateau rule say, trained the 32-epoch budget,
and the table on docs/results/adaptive-curricula.md is what the committed runs give."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import plateau  # noqa: E402  (benchmarks/plateau.py)
import searched  # noqa: E402

PAGE = REPO / "docs" / "results" / "adaptive-curricula.md"


def _runs():
    return sorted(plateau.RESULTS.glob(f"e{searched.EPOCHS}/seed*/ed_plateau"))


def test_plateau_table_is_what_the_committed_runs_give():
    agg = json.loads(json.dumps(plateau.aggregate(plateau.RESULTS)))
    assert agg == json.loads((plateau.RESULTS / "aggregate.json").read_text())
    table = plateau.table_markdown(plateau.aggregate(plateau.RESULTS))
    assert (plateau.RESULTS / "table.md").read_text().strip() == table
    assert table in PAGE.read_text()
    assert agg["variants"]["ed_plateau"]["seeds"] == [0, 1, 2]


def test_each_run_switched_where_its_validation_series_and_the_rule_say():
    from raydistill.config import load_yaml
    from raydistill.distill.plateau import Plateau
    assert len(_runs()) == 3
    for run in _runs():
        seed = int(run.parts[-2][4:])
        config = load_yaml((run / "config.yaml").read_text())
        c = config["curriculum"]
        assert (c["switch"], c["patience"], c["min_delta"], c["grade_fractions"]) == \
            ("plateau", plateau.PATIENCE, plateau.MIN_DELTA, plateau.MAXIMA)
        assert config["seed"] == seed and config["data"]["seed"] == seed
        (name, summary), = json.loads((run / "summary.json").read_text())["methods"].items()
        history = [h for h in json.loads((run / "metrics.json").read_text())["history"] if h["method"] == name]
        taken = [g["epochs"] for g in summary["grades"]]
        assert sum(taken) == len(history) == searched.EPOCHS
        maxima = [round(f * searched.EPOCHS) for f in plateau.MAXIMA[:-1]]
        # replay the rule on the run's own validation accuracies (seen classes), grade by grade
        expected, start = [], 0
        for maximum in maxima:
            rule = Plateau(plateau.PATIENCE, plateau.MIN_DELTA)
            epochs = maximum
            for i, h in enumerate(history[start:start + maximum]):
                if i + 1 < maximum and rule.update(h["val_acc"]):
                    epochs = i + 1
                    break
            expected.append(epochs)
            start += epochs
        expected.append(searched.EPOCHS - start)
        assert taken == expected, (run, taken, expected)
        assert [h["grade"] for h in history] == [g + 1 for g, n in enumerate(taken) for _ in range(n)]
