"""How a Ray run that did not complete ends: interrupted (re-running resumes it) or diverged
(re-running repeats the divergence), with each concurrent stage's own outcome and advice."""
from __future__ import annotations

from typing import Optional

from raydistill.distill.engine import NonFiniteLossError
from raydistill.storage import RunDir


class RunInterrupted(RuntimeError):
    """The Ray Train run failed more often than `ray.max_failures`; re-running resumes it.
    `reason`: what failed, without the advice; `outcomes`: with concurrent stages, each stage's
    `StageOutcome` (pipeline.graph)."""

    def __init__(self, message: str, reason: str = "", outcomes: Optional[dict] = None):
        super().__init__(message)
        self.reason = reason or message
        self.outcomes = outcomes or {}


# what a stage whose loss went non-finite should change (re-running only repeats the divergence)
NON_FINITE_ADVICE = ("lower the learning rate (optimizer.lr for a method, teachers.lr for a teacher) or check its "
                     "inputs and teachers; re-running as it is diverges again")


def stages_error(outcomes: dict, out: RunDir) -> Exception:
    """The error of concurrent stages that did not all complete: one line per stage with its own
    advice (a diverged stage: change the learning rate; an interrupted one: re-run to resume it).
    NonFiniteLossError only when every failed stage diverged, else RunInterrupted (re-running
    helps the others); both carry `outcomes`."""
    from raydistill.pipeline.graph import FAILED, NON_FINITE, NOT_RUN, storage_name
    lines = []
    for stage, o in outcomes.items():
        if o.status == NON_FINITE:
            lines.append(f"{stage}: {o.message}; {NON_FINITE_ADVICE}")
        elif o.status == FAILED:
            lines.append(f"{stage}: failed ({o.message}); re-run the same command to resume it from its last "
                         f"epoch checkpoint in {out.child('ray').child(storage_name(stage))}")
        elif o.status == NOT_RUN:
            lines.append(f"{stage}: not run (needs {o.message})")
    message = ("stages did not complete:\n  " + "\n  ".join(lines)
               + f"\ncompleted stages are kept in {out}")
    if any(o.status == FAILED for o in outcomes.values()):
        return RunInterrupted(message, reason="; ".join(lines), outcomes=outcomes)
    err = NonFiniteLossError(message)
    err.outcomes = outcomes
    return err
