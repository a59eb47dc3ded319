"""The `curriculum` section: ED's grades (split points, heads, order, epochs) and the distillation mix.

Most of its fields hold one entry per grade, and a grade is one group of data's classes ending at a
block of the student: those are checked by `Experiment`, which sees all three sections.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from raydistill.config.errors import need

PASS_MODES = ("sequential", "mixed")
SWITCHES = ("fixed", "plateau")         # raydistill.distill.plateau
REPLAY_KEYS = ("from_epoch", "lr", "alpha", "temperature", "all_teacher_weight")   # raydistill.distill.replay


@dataclass
class CurriculumConfig:
    """`curriculum`: ED's grades (split points, heads, order, epochs) and the distillation mix."""
    splits: Optional[list] = None       # block index where each grade ends; last = all blocks
    head_widths: Union[int, list] = 64  # teaching reference head width (one, or one per grade but the last)
    head_relu: bool = True              # ReLU in the teaching reference head
    order: Optional[list] = None        # teacher-addition order: a permutation of group indices
    grade_epochs: Optional[list] = None # epochs per grade (0 before the last: no such grade); baselines train the sum
    # share of total_epochs per grade, instead of grade_epochs: sums to 1, the last above 0; an early share
    # of 0 leaves that fragment grade out (all early shares 0: no curriculum, the complete student throughout)
    grade_fractions: Optional[list] = None
    total_epochs: Optional[int] = None  # with grade_fractions: the fixed total the shares divide (whole epochs)
    pass_mode: str = "sequential"       # paper: one pass per group per epoch; or mixed batches
    temperature: float = 4.0            # KD temperature of every loss whose own block sets none
    alpha: Union[float, list] = 0.3     # weight of CE, (1 - alpha) the KD term's; one, or one per grade (baselines: the last)
    # ed's teacher signal: weight of the all-class teacher (kd's) on the logits of the classes seen so far,
    # against the group teachers' 1 - weight; 0: group teachers only (the paper), 1: the all-class teacher
    # only (ED's curriculum on KD's signal); one, or one per grade
    all_teacher_weight: Union[float, list] = 0.0
    carry_head_rows: bool = False       # copy old reference-head rows into the new head
    keep_momentum: bool = False         # keep SGD momentum of carried parameters at a grade switch
    bn_recalibrate: bool = False        # recompute BN statistics on a mixed pass of the grade before eval/save
    equal_images: bool = False          # ed: extend the last grade so ED sees as many images as a baseline
    # when a grade ends: fixed (its epochs) or plateau (its epochs are a maximum: it ends once the validation
    # accuracy on its classes has not improved by more than min_delta for patience epochs; the last grade takes
    # the epochs left, so the total is unchanged)
    switch: str = "fixed"
    patience: int = 2                   # plateau: epochs without improvement that end a grade
    min_delta: float = 0.0              # plateau: the improvement (validation accuracy, 0..1) that counts
    # ed's hyperparameters per epoch, as a schedule found by PBT exports it: a list of {from_epoch, and any of
    # lr (optimizer.lr, the schedule's base), alpha, temperature, all_teacher_weight}, each value holding from
    # that global epoch (0-based) until a later entry sets it; before the first entry the fields above hold
    replay: Optional[list] = None

    def check(self) -> None:
        """The fields that are not per grade (the per-grade ones are Experiment's: see the module)."""
        c = self
        need(c.pass_mode in PASS_MODES, "curriculum.pass_mode", f"one of {list(PASS_MODES)}", c.pass_mode)
        need(c.temperature > 0, "curriculum.temperature", "a positive number", c.temperature)
        need(c.switch in SWITCHES, "curriculum.switch", f"one of {list(SWITCHES)}", c.switch)
        need(isinstance(c.patience, int) and not isinstance(c.patience, bool) and c.patience >= 1,
             "curriculum.patience", "a positive integer (epochs)", c.patience)
        need(isinstance(c.min_delta, (int, float)) and not isinstance(c.min_delta, bool) and c.min_delta >= 0,
             "curriculum.min_delta", "a non-negative number (validation accuracy, 0..1)", c.min_delta)
        if c.replay is not None:
            self._check_replay()

    def _check_replay(self) -> None:
        """Entries in order of their first epoch, each value in its field's range; a replayed
        all_teacher_weight needs both teacher signals in every grade (the plan's teachers are fixed)."""
        c = self
        need(isinstance(c.replay, list) and len(c.replay) > 0, "curriculum.replay",
             "a non-empty list of {from_epoch, lr, alpha, temperature, all_teacher_weight} mappings", c.replay)
        last = -1
        for i, entry in enumerate(c.replay):
            where = f"curriculum.replay[{i}]"
            need(isinstance(entry, dict) and "from_epoch" in entry and set(entry) <= set(REPLAY_KEYS), where,
                 f"a mapping with from_epoch and any of {list(REPLAY_KEYS[1:])}", entry)
            e = entry["from_epoch"]
            need(isinstance(e, int) and not isinstance(e, bool) and e > last, f"{where}.from_epoch",
                 f"an integer epoch (0-based) above the previous entry's ({last})", e)
            last = e
            for key, ok, expected in (("lr", lambda v: v > 0, "a positive number"),
                                      ("alpha", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
                                      ("temperature", lambda v: v > 0, "a positive number"),
                                      ("all_teacher_weight", lambda v: 0 <= v <= 1, "a number in [0, 1]")):
                if key in entry:
                    v = entry[key]
                    need(isinstance(v, (int, float)) and not isinstance(v, bool) and ok(v), f"{where}.{key}",
                         expected, v)
        if any("all_teacher_weight" in entry for entry in c.replay):
            weights = c.all_teacher_weight if isinstance(c.all_teacher_weight, list) else [c.all_teacher_weight]
            need(all(isinstance(w, (int, float)) and 0 < w < 1 for w in weights), "curriculum.all_teacher_weight",
                 "weights strictly between 0 and 1 when curriculum.replay sets all_teacher_weight (every grade then "
                 "has both the group teachers and the all-class teacher, whose mix the replay changes)",
                 c.all_teacher_weight)
