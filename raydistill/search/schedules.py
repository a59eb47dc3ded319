"""The schedules a PBT search's trials followed, beside trials.parquet, and each one as an experiment
that replays it.

`schedules.json`: {trial: {"epochs": [{epoch, grade, lr (the epoch's), base_lr, alpha, temperature,
all_teacher_weight, val_acc, val_acc_all_classes}], "exploits": [{from, at_epoch, grade, ...}],
"grade_epochs", "values"}}: a trial's lineage, the epochs up to an exploit being the donor's.
`schedules/<trial>.yaml`: the trial's experiment as a fixed curriculum: `curriculum.grade_epochs` the
epochs each grade actually took, `curriculum.switch: fixed`, and `curriculum.replay` the lr
(schedule base), alpha, T (and the teacher mix, when PBT perturbed it) from the epoch each took
effect; `raydistill run --config` on it trains the same grade sequence with the same values, e.g.
on other seeds (`--set seed=1`).
"""
from __future__ import annotations

import json
from typing import Union

from raydistill.search.pbt import GRADE_SHARES
from raydistill.search.pbt_trial import SCHEDULE_FILE
from raydistill.search.space import SearchSpace, apply_values
from raydistill.search.trainable import trial_experiment
from raydistill.storage import RunDir, absolute, join

SCHEDULES_FILE = "schedules.json"
SCHEDULES_DIR = "schedules"
BUDGET_FIELDS = (GRADE_SHARES, "curriculum.grade_epochs", "curriculum.total_epochs")
REPLAYED = (("base_lr", "lr"), ("alpha", "alpha"), ("temperature", "temperature"))


def read_schedules(trials_dir, names: list) -> dict:
    """{trial: schedule} of every trial whose run directory holds one."""
    out = {}
    for name in names:
        run = RunDir(join(str(trials_dir), name))
        if run.is_file(SCHEDULE_FILE):
            out[name] = run.read_json(SCHEDULE_FILE)
    return out


def grade_epochs_followed(schedule: dict, num_grades: int) -> list:
    """Epochs each grade took (0 for a grade never entered)."""
    counts = [0] * num_grades
    for entry in schedule["epochs"]:
        counts[entry["grade"] - 1] += 1
    return counts


def replay_entries(schedule: dict, teacher_mix: bool) -> list:
    """`curriculum.replay` of a schedule: the first epoch's values, then each value where it changed."""
    pairs = REPLAYED + ((("all_teacher_weight", "all_teacher_weight"),) if teacher_mix else ())
    entries, current = [], {}
    for entry in sorted(schedule["epochs"], key=lambda e: e["epoch"]):
        changed = {key: entry[field] for field, key in pairs if current.get(key) != entry[field]}
        if changed:
            entries.append({"from_epoch": entry["epoch"] - 1, **changed})
            current.update(changed)
    return entries


def replay_experiment(space: SearchSpace, name: str, schedule: dict, values: dict, teachers: dict, search_dir,
                      cpus_per_worker: float):
    """The experiment that replays `schedule` (a trial's final `values` give the fields PBT kept)."""
    index = int(name.split("-")[1])
    # the grade budget is the schedule's (set below), whatever form the trial's values gave it in
    fixed = {k: v for k, v in values.items() if k not in BUDGET_FIELDS}
    exp = trial_experiment(space.base.to_dict(), fixed, teachers, absolute(str(search_dir)), index, cpus_per_worker)
    teacher_mix = space.pbt is not None and space.pbt.dimension("curriculum.all_teacher_weight") is not None
    entries = replay_entries(schedule, teacher_mix)
    exp = apply_values(exp, {"curriculum.grade_epochs": grade_epochs_followed(schedule, exp.num_groups()),
                             "curriculum.grade_fractions": None, "curriculum.total_epochs": None,
                             "curriculum.switch": "fixed", "curriculum.replay": entries,
                             "optimizer.lr": entries[0]["lr"], "name": f"{space.name}-{name}-replay",
                             "output.name": f"replay-{name}"}, source=f"{name} schedule")
    return exp.validate()


def export_schedules(space: SearchSpace, final_values: dict, teachers: dict, search_dir, trials_dir,
                     cpus_per_worker: float) -> dict:
    """schedules.json and schedules/<trial>.yaml (trials that trained their whole budget); returns
    {trial: path of its YAML}."""
    out = RunDir(search_dir)
    schedules = read_schedules(trials_dir, sorted(final_values))
    total = space.base.total_epochs()
    written = {}
    for name, schedule in schedules.items():
        values = final_values[name]
        schedule["values"] = json.loads(json.dumps(values))
        if len(schedule["epochs"]) != total:
            continue
        exp = replay_experiment(space, name, schedule, values, teachers, search_dir, cpus_per_worker)
        schedule["grade_epochs"] = exp.curriculum.grade_epochs
        rel = f"{SCHEDULES_DIR}/{name}.yaml"
        path = join(str(search_dir), rel)
        header = (f"# Schedule PBT trial {name} of search {space.name!r} followed ({len(schedule['exploits'])} "
                  f"exploit(s)), as a fixed curriculum.\n# Replay: raydistill run --config {path}\n")
        out.write_text(rel, header + exp.to_yaml())
        written[name] = path
    out.write_text(SCHEDULES_FILE, json.dumps(schedules, indent=1))
    return written


def copy_as_best(search_dir, best_trial: str, best_file: str) -> Union[str, None]:
    """best.yaml of a PBT search: the best trial's replayed schedule (its final values alone would
    not reproduce what it trained)."""
    out = RunDir(search_dir)
    rel = f"{SCHEDULES_DIR}/{best_trial}.yaml"
    if not out.is_file(rel):
        return None
    out.write_text(best_file, out.read_text(rel))
    return join(str(search_dir), best_file)
