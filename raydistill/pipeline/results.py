"""A run's results: `RunResult`, and the files every run ends with (metrics.json and summary.json,
then the report files), written the same way by every executor."""
from __future__ import annotations

from dataclasses import dataclass, field

from raydistill.config import Experiment
from raydistill.distill.curriculum import teachers_needed
from raydistill.pipeline.report_files import safe_dir_name, write_report_files
from raydistill.pipeline.summary import format_table
from raydistill.storage import RunDir


@dataclass
class RunResult:
    """What a run returns (every executor alike): its run directory, each teacher's and each
    method's summary, and every method's per-epoch history; `table()` is the table the run printed."""
    run_dir: object                                 # Path of a local run directory, or its URI (str)
    teachers: dict = field(default_factory=dict)   # key -> {"test_acc", "params", "classes", "source"}
    methods: dict = field(default_factory=dict)    # method -> summary (final_test_acc, params, ...)
    history: list = field(default_factory=list)    # per-epoch metrics of every method

    def table(self) -> str:
        return format_table(self.methods, self.teachers)


def write_metrics(out: RunDir, result: RunResult) -> None:
    out.write_json("metrics.json", {"teachers": result.teachers, "methods": result.methods,
                                    "history": result.history})


def finish_run(exp: Experiment, out: RunDir, result: RunResult, log) -> RunResult:
    write_metrics(out, result)
    summary = {"experiment": exp.name, "teachers": result.teachers, "methods": result.methods}
    out.write_json("summary.json", summary)
    with out.local_folder() as folder:   # matplotlib and TensorBoard write local files
        write_report_files(folder, result.history, summary)
        if out.local_path is None:   # the upload adds files: drop the live event files these replace
            for method in {row["method"] for row in result.history}:
                out.delete(f"tensorboard/{safe_dir_name(method)}")
    log(result.table())
    return result


def run_result(out: RunDir) -> RunResult:
    return RunResult(out.local_path or out.location)


def result_from_progress(exp: Experiment, out: RunDir, completed: dict) -> RunResult:
    """The RunResult (same structure as the local backend's) of the completed stages, teachers and
    methods in the order the run needs them (as a fresh in-process run lists them), whatever order
    the stores were listed or the stages completed in."""
    result = run_result(out)
    for key in teachers_needed(exp.methods, exp.num_groups(), exp.all_teacher_weights()):
        record = completed.get(f"teacher:{key}")
        if record is not None:
            result.teachers[key] = record["info"]
    for method in exp.methods:
        record = completed.get(f"method:{method}")
        if record is not None:
            result.methods[method] = record["summary"]
            result.history += record["history"]
    return result
