"""Population Based Training over curricula (`scheduler: pbt`, issue 34 part 2) and the replayable
schedules it exports (`curriculum.replay`)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from raydistill.config import ConfigError
from test_tune import tiny_space


def pbt_space(**extra) -> dict:
    """test_tune's tiny base (2 groups, resnet8, 1+1 epochs of ed on tiny built-in data) at 2+2 epochs;
    a population of two."""
    base = copy.deepcopy(tiny_space()["base"])
    base["curriculum"]["grade_epochs"] = [2, 2]
    raw = {"name": "pbt", "base": base, "samples": 2, "max_concurrent": 2, "seed": 0, "scheduler": "pbt",
           "pbt": {"perturbation_interval": 1, "quantile_fraction": 0.5, "resample_probability": 0.0,
                   "synch": True,
                   "mutations": {"optimizer.lr": {"loguniform": [0.0001, 0.2]},
                                 "curriculum.temperature": {"uniform": [1.0, 8.0]}}}}
    raw.update(extra)
    return raw


# ---- no Ray ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path,spec,named", [
    ("curriculum.splits", {"choice": [[1, 3], [2, 3]]}, "pbt.mutations.curriculum.splits"),
    ("data.limit_per_class", {"choice": [10, 20]}, "pbt.mutations.data.limit_per_class"),
    ("curriculum.order", {"choice": [[0, 1], [1, 0]]}, "pbt.mutations.curriculum.order"),
    ("curriculum.all_teacher_weight", {"uniform": [0.0, 0.5]}, "pbt.mutations.curriculum.all_teacher_weight"),
    ("curriculum.patience", {"choice": [1, 2]}, "pbt.mutations.curriculum.patience"),
    ("curriculum.grade_fractions", {"uniform": [0.0, 1.0]}, "pbt.mutations.curriculum.grade_fractions"),
])
def test_a_mutation_that_cannot_change_mid_run_is_refused_in_one_line(path, spec, named):
    from raydistill.search.space import SpaceError, space_from_dict
    raw = pbt_space()
    raw["pbt"]["mutations"][path] = spec
    with pytest.raises(SpaceError) as err:
        space_from_dict(raw, source="s.yaml")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"s.yaml: {named}:"), message


def test_pbt_runs_with_random_or_grid_only_and_needs_its_block():
    from raydistill.search.space import SpaceError, space_from_dict
    for searcher in ("optuna", "hyperopt", "bohb"):
        raw = pbt_space(searcher=searcher)
        with pytest.raises(SpaceError, match=r"^s.yaml: searcher: scheduler pbt runs with searcher random or grid"):
            space_from_dict(raw, source="s.yaml")
    raw = pbt_space()
    del raw["pbt"]
    with pytest.raises(SpaceError, match=r"^s.yaml: pbt: expected a mapping with mutations"):
        space_from_dict(raw, source="s.yaml")
    with pytest.raises(SpaceError, match=r"^s.yaml: pbt: only with scheduler: pbt"):
        space_from_dict(pbt_space(scheduler="asha", search={"optimizer.lr": {"choice": [0.1]}}), source="s.yaml")


def test_the_mutations_draw_the_initial_population_from_the_seed():
    from raydistill.search.space import space_from_dict
    space = space_from_dict(pbt_space())
    assert [d.path for d in space.dimensions] == ["optimizer.lr", "curriculum.temperature"]
    first = space.candidates()
    assert first == space_from_dict(pbt_space()).candidates() and len(first) == 2
    assert all(0.0001 <= c["optimizer.lr"] <= 0.2 and 1 <= c["curriculum.temperature"] <= 8 for c in first)


def test_the_remaining_grade_budget_is_split_and_completed_grades_keep_theirs():
    from raydistill.search.pbt import rebudget, resolve_values, split_budget
    assert split_budget(10, [1, 1, 2], [1, 1, 1]) == [3, 2, 5]
    assert split_budget(16, [0.125, 0.125, 0.75], [1, 1, 1]) == [2, 2, 12]   # a plan's own split is kept
    # exploit after epoch 5 of [4, 4, 8]: grade 1 done (4), grade 2 has trained 1 epoch, 12 epochs left
    assert rebudget([4, 4, 8], 5, [1.0, 1.0, 1.0]) == [4, 6, 6]
    assert rebudget([4, 4, 8], 5, [1.0, 0.01, 1.0]) == [4, 1, 11]     # the current grade ends now
    assert rebudget([4, 4, 8], 12, [1.0, 5.0, 1.0]) == [4, 4, 8]      # in the last grade: nothing to split
    for weights in ([0.1, 0.1, 5], [5, 0.1, 0.1], [1, 2, 3]):
        epochs = rebudget([4, 4, 8], 6, weights)
        assert sum(epochs) == 16 and epochs[0] == 4 and epochs[1] >= 2 and min(epochs) >= 1
    values = resolve_values({"optimizer.lr": 0.1, "curriculum.grade_fractions": {"0": 0.01, "1": 0.99}}, 8)
    assert values["curriculum.grade_epochs"] == [1, 7] and values["curriculum.grade_fractions"] is None


def test_a_schedule_under_mutated_grade_shares_exports_from_a_base_given_in_fractions(tmp_path):
    """The shipped space's shape: the base's budget is curriculum.grade_fractions of total_epochs and
    PBT mutates the grade shares; a member's final values (resolved: grade_epochs, fractions null)
    export as a fixed curriculum of the epochs each grade took (the export of a real population
    failed here: the values' null fractions were dropped with the shares, leaving both forms set)."""
    from raydistill.search.pbt import GRADE_SHARES, resolve_values
    from raydistill.search.schedules import replay_experiment
    from raydistill.search.space import space_from_dict
    raw = pbt_space()
    raw["base"]["curriculum"].update(grade_epochs=None, total_epochs=4, grade_fractions=[0.5, 0.5])
    raw["pbt"]["mutations"][GRADE_SHARES] = {"uniform": [0.05, 1.0]}
    space = space_from_dict(raw)
    values = resolve_values({"optimizer.lr": 0.05, "curriculum.temperature": 3.0,
                             GRADE_SHARES: {"0": 0.2, "1": 0.9}}, 4)
    epochs = [{"epoch": e, "grade": g, "base_lr": lr, "alpha": 0.3, "temperature": 3.0, "all_teacher_weight": 0.0}
              for e, g, lr in ((1, 1, 0.05), (2, 2, 0.05), (3, 2, 0.02), (4, 2, 0.02))]
    exp = replay_experiment(space, "trial-001", {"epochs": epochs, "exploits": []}, values,
                            {"group0": "g0.pt", "group1": "g1.pt"}, tmp_path, 1.0)
    c = exp.curriculum
    assert (c.grade_epochs, c.grade_fractions, c.total_epochs, c.switch) == ([1, 3], None, None, "fixed")
    assert [e["from_epoch"] for e in c.replay] == [0, 2] and c.replay[1]["lr"] == 0.02


def test_replay_entries_are_validated_naming_the_field():
    from raydistill.config import Experiment
    ok = {"curriculum": {"replay": [{"from_epoch": 0, "lr": 0.1}, {"from_epoch": 2, "alpha": 0.5}]}}
    Experiment.from_dict(ok).validate()
    for replay, named in (([{"from_epoch": 1, "lr": 0.1}, {"from_epoch": 1, "lr": 0.2}], "curriculum.replay[1].from_epoch"),
                          ([{"from_epoch": 0, "lr": 0}], "curriculum.replay[0].lr"),
                          ([{"from_epoch": 0, "beta": 1}], "curriculum.replay[0]"),
                          ([{"from_epoch": 0, "all_teacher_weight": 0.5}], "curriculum.all_teacher_weight"),
                          ([], "curriculum.replay")):
        with pytest.raises(ConfigError) as err:
            Experiment.from_dict({"curriculum": {"replay": replay}}).validate()
        assert str(err.value).startswith(f"{named}: expected"), err.value


def test_replayed_values_hold_until_a_later_entry_sets_them():
    from raydistill.distill.curriculum import Grade
    from raydistill.distill.engine import TrainSettings
    from raydistill.distill.replay import at_epoch
    replay = ({"from_epoch": 1, "lr": 0.2, "alpha": 0.6}, {"from_epoch": 3, "temperature": 2.0})
    grade = Grade(0, 1, False, 16, 4, 0, (), alpha=0.3)
    s = TrainSettings(lr=0.05, temperature=4.0)
    assert at_epoch(s, grade, replay, 0) == (s, grade)
    s2, g2 = at_epoch(s, grade, replay, 2)
    assert (s2.lr, s2.temperature, g2.alpha) == (0.2, 4.0, 0.6)
    s3, g3 = at_epoch(s, grade, replay, 3)
    assert (s3.lr, s3.temperature, g3.alpha) == (0.2, 2.0, 0.6)


# ---- a population on Ray ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def pbt_teachers(tmp_path_factory) -> dict:
    from raydistill.search.space import space_from_dict
    from raydistill.search.teachers import prepare_search_teachers
    space = space_from_dict(pbt_space())
    return prepare_search_teachers(space.base, tmp_path_factory.mktemp("teachers"), lambda _m: None, methods=["ed"])


def _checkpoint_states(search_dir, trial: str) -> dict:
    """{epoch: train_state} of every Tune checkpoint a trial reported (the search's storage)."""
    out = {}
    for path in (search_dir / "tuner" / trial).glob("checkpoint_*/state.pt"):
        state = torch.load(path, weights_only=True)["train_state"]
        out[state["epoch"]] = state
    return out


@pytest.mark.slow   # Ray Tune search
def test_an_exploit_continues_in_the_donors_grade_with_its_weights_and_the_schedule_replays(
        ray_session, tmp_path, pbt_teachers):
    """Two members, one with a useless lr, one trial at a time: at the first decision (epoch 1,
    synchronous PBT) the worse copies the better's checkpoint and goes on in its grade with its weights; every member's schedule
    is written and its exported YAML replays the same grade sequence and per-epoch lr."""
    import pandas as pd
    from raydistill import Experiment
    from raydistill.pipeline.local import run as run_local
    from raydistill.search import tune
    from raydistill.search.pbt_trial import PLACED_STORE, model_checksum
    from raydistill.search.space import space_from_dict
    # one trial at a time (max_concurrent 1): the population must still exist whole and meet at each
    # decision, members paused and resumed from their checkpoints, not run one after another
    raw = pbt_space(output=str(tmp_path), max_concurrent=1, points_to_evaluate=[
        {"optimizer.lr": 0.1, "curriculum.temperature": 4.0}, {"optimizer.lr": 0.0001, "curriculum.temperature": 4.0}])
    raw["base"]["teachers"]["checkpoints"] = pbt_teachers
    result = tune(space_from_dict(raw), progress=None)
    search_dir = tmp_path / "pbt"
    schedules = json.loads((search_dir / "schedules.json").read_text())
    assert set(schedules) == {"trial-000", "trial-001"}
    exploits = [(name, e) for name, s in schedules.items() for e in s["exploits"]]
    assert exploits, schedules
    assert min(e["at_epoch"] for _, e in exploits) == 1, "the first decision (epoch 1) had both members"
    name, exploit = exploits[0]
    donor_states = _checkpoint_states(search_dir, exploit["from"])
    donor = donor_states[exploit["at_epoch"]]
    # the exploiter's run resumed from the donor's state: same weights, same grade, same history
    placed = next((search_dir / "trials" / name / "ray").glob(f"{PLACED_STORE}/checkpoint_*/state.pt"), None)
    if placed is not None:   # the last exploit's placement (an earlier one was replaced by a later)
        placed_state = torch.load(placed, weights_only=True)["train_state"]
        last = schedules[name]["exploits"][-1]
        assert model_checksum(placed_state["model"]) == last["model_checksum"]
    assert exploit["model_checksum"] == model_checksum(donor["model"])
    assert exploit["grade"] == donor["grade"] + 1
    epochs = {e["epoch"]: e for e in schedules[name]["epochs"]}
    donor_plan = exploit["grade_epochs"]
    grade_after = next(g for g in range(len(donor_plan)) if exploit["at_epoch"] < sum(donor_plan[:g + 1])) + 1
    assert epochs[exploit["at_epoch"] + 1]["grade"] == grade_after
    assert [h["val_acc"] for h in donor["history"]] == [epochs[h["epoch"]]["val_acc"] for h in donor["history"]]
    assert sorted(epochs) == [1, 2, 3, 4]
    table = pd.read_parquet(search_dir / "trials.parquet")
    assert list(table["trial"]) == ["trial-000", "trial-001"] and (table["stop_reason"] == "completed").all()
    assert result.best is not None and (search_dir / "best.yaml").is_file()

    # the exported schedule replays: same grade per epoch, same lr per epoch
    replay_path = search_dir / "schedules" / f"{name}.yaml"
    exp = Experiment.from_yaml(replay_path)
    assert exp.curriculum.switch == "fixed" and exp.curriculum.replay[0]["from_epoch"] == 0
    exp = exp.with_overrides([f"output.dir={tmp_path / 'replayed'}"])
    replayed = run_local(exp, progress=None)
    history = [h for h in replayed.history if h["method"] == "ed"]
    assert [h["grade"] for h in history] == [epochs[e]["grade"] for e in sorted(epochs)]
    assert [h["lr"] for h in history] == pytest.approx([epochs[e]["lr"] for e in sorted(epochs)])


def test_the_shipped_pbt_space_parses_into_a_population_of_8():
    from raydistill.search import load_space
    from raydistill.search.pbt import GRADE_SHARES, initial_shares, resolve_values
    space = load_space("pbt_cifar10")
    assert space.scheduler == "pbt" and space.samples == 8 and space.pbt.perturbation_interval == 2
    assert {d.path for d in space.pbt.mutations} == {"optimizer.lr", "curriculum.alpha", "curriculum.temperature",
                                                     "curriculum.all_teacher_weight", GRADE_SHARES}
    members = space.candidates()
    assert len(members) == 8
    for values in members:
        exp = space.experiment_for(values)
        assert exp.total_epochs() == 16
        shares = initial_shares(exp.grade_epochs())
        assert resolve_values({**values, GRADE_SHARES: shares}, 16)["curriculum.grade_epochs"] == [2, 2, 12]
