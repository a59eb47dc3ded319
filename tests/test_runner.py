"""The in-process runner end to end: every method, the run directory, and `raydistill report`."""
import json

import pyarrow.parquet as pq
import pytest
import torch

from conftest import saved_test_accuracy, tiny_experiment
from raydistill.cli import main
from raydistill.pipeline.local import run
from raydistill.pipeline.prepare import prepare_data


@pytest.mark.slow   # a whole local run of four methods with teachers
def test_local_run_writes_a_complete_run_directory(tmp_path, capsys):
    # what a run directory holds does not depend on how much it trained: 1 teacher epoch, 40 images a class
    exp = tiny_experiment(tmp_path, **{"methods": "[ed,scratch,kd,multi_teacher]", "teachers.epochs": 1,
                                       "curriculum.grade_epochs": "[1,1,1]", "data.train_per_class": 40,
                                       "data.test_per_class": 20})
    result = run(exp, progress=None)
    out = result.run_dir
    assert set(result.methods) == {"ed", "scratch", "kd", "multi_teacher"}
    assert set(result.teachers) == {"group0", "group1", "group2", "all"}
    for name in ("config.yaml", "metrics.json", "summary.json", "metrics.parquet", "curves.png"):
        assert (out / name).is_file(), name
    for method in result.methods:
        ckpt = torch.load(out / "checkpoints" / f"{method}.pt", weights_only=True)
        assert sorted(ckpt["class_ids"]) == list(range(6))
    table = pq.read_table(out / "metrics.parquet").to_pandas()
    assert len(table[table.method.isin(list(result.methods))]) == 4 * 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"] if h["method"] == "ed"] == [1, 2, 3]
    ed = result.methods["ed"]
    assert [g["classes"] for g in ed["grades"]] == [2, 4, 6]
    # every reported accuracy is the saved model's: evaluated again here from its checkpoint file
    data = prepare_data(exp)
    for method, summary in result.methods.items():
        assert saved_test_accuracy(out / "checkpoints" / f"{method}.pt", data) == summary["final_test_acc"], method
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == result.table().strip()


@pytest.mark.slow   # two whole local runs
def test_same_seed_same_weights(tmp_path):
    """One worker, in-process teachers: two runs with the same seed give bit-identical students."""
    overrides = {"methods": "[ed]", "teachers.epochs": 1, "curriculum.grade_epochs": "[1,1,1]",
                 "data.train_per_class": 40, "data.test_per_class": 20}
    runs = [run(tiny_experiment(tmp_path / str(i), **overrides), progress=None) for i in range(2)]
    a, b = (torch.load(r.run_dir / "checkpoints" / "ed.pt", weights_only=True)["state_dict"] for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
