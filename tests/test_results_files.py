"""The README's CIFAR-10 table is exactly what the committed benchmark files produce, and each
committed summary agrees with its own per-epoch metrics (last epoch, never a best epoch)."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "cifar10"
sys.path.insert(0, str(REPO / "benchmarks"))

import accuracy  # noqa: E402  (benchmarks/accuracy.py)


def test_readme_table_matches_committed_results():
    summaries = accuracy.load_summaries(RESULTS)
    assert sorted(summaries) == [0, 1, 2]
    table = accuracy.table_markdown(accuracy.aggregate(summaries))
    assert table in (REPO / "README.md").read_text()
    assert (RESULTS / "table.md").read_text().strip() == table


def test_summaries_report_the_last_epoch():
    for seed, summary in accuracy.load_summaries(RESULTS).items():
        history = json.loads((RESULTS / f"seed{seed}" / "metrics.json").read_text())["history"]
        assert set(summary["methods"]) == set(accuracy.METHOD_ORDER)
        for method, m in summary["methods"].items():
            mine = [h for h in history if h["method"] == method]
            assert [h["epoch"] for h in mine] == list(range(1, m["epochs"] + 1))
            assert m["final_test_acc"] == mine[-1]["test_acc"]
