"""Per-method summaries from per-epoch metrics, and the results table every run prints."""
from __future__ import annotations

import math


def method_summary(plan, history: list, params: int, wall_s: float, budget: dict | None = None) -> dict:
    """Last-epoch numbers only: nothing is selected on test data. `budget`: images seen and
    training FLOPs (`distill.budget.history_budget`). A grade's epochs are the ones it trained
    (with `curriculum.switch: plateau`, fewer than planned before the last, more in the last)."""
    mine = [h for h in history if h["method"] == plan.method]
    last = mine[-1]
    grades = []
    for g in plan.grades:
        rows = [h for h in mine if h["grade"] == g.index + 1]
        if rows:
            grades.append({"grade": g.index + 1, "blocks": g.split, "classes": g.num_classes, "epochs": len(rows),
                           "val_acc": rows[-1]["val_acc"], "test_acc": rows[-1]["test_acc"]})
    distils = plan.distils
    return {"final_test_acc": last["test_acc"], "final_val_acc": last["val_acc"], "params": params,
            "epochs": plan.total_epochs, "wall_s": wall_s, "grades": grades, "loss": plan.loss if distils else None,
            **(budget or {})}


def method_label(name: str, summary: dict) -> str:
    """The name a table shows: the method and its loss (`ed+dkd`) unless the loss is plain KD
    or the name already says it."""
    loss = summary.get("loss")
    return name if "+" in name or loss in (None, "kd") else f"{name}+{loss}"


def _pct(x) -> str:
    return "   n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:6.2f}"


def _count(x) -> str:
    return "-" if x is None else f"{x:,}"   # a summary written before budgets were recorded


def _tflop(x) -> str:
    """Student training TFLOP (forward + backward), 3 significant digits."""
    return "-" if x is None else f"{x / 1e12:.3g}"


def format_table(methods: dict, teachers: dict | None = None) -> str:
    lines = []
    if teachers:
        lines += ["teachers (test top-1 on their own classes):"]
        lines += [f"  {k:<8} {v['arch']:<11} {v['classes']:>4} classes  {_pct(v['test_acc'])}%"
                  for k, v in teachers.items()]
    w = max([14] + [len(method_label(name, m)) + 1 for name, m in methods.items()])   # multi_teacher+lskd
    lines += ["", f"{'method':<{w}}{'test top-1 %':>13}{'val top-1 %':>12}{'params':>10}{'epochs':>8}"
                  f"{'images':>11}{'TFLOP':>8}{'wall s':>9}"]
    for name, m in methods.items():
        lines.append(f"{method_label(name, m):<{w}}{_pct(m['final_test_acc']):>13}{_pct(m['final_val_acc']):>12}"
                     f"{m['params']:>10,}{m['epochs']:>8}{_count(m.get('train_images')):>11}"
                     f"{_tflop(m.get('train_flops')):>8}{m['wall_s']:>9.1f}")
    for name, m in methods.items():
        if len(m["grades"]) > 1:
            lines += ["", f"{name} per grade (last epoch of the grade, on the classes seen so far):",
                      f"  {'grade':>5}{'blocks':>8}{'classes':>9}{'epochs':>8}{'val %':>9}{'test %':>9}"]
            lines += [f"  {g['grade']:>5}{g['blocks']:>8}{g['classes']:>9}{g['epochs']:>8}"
                      f"{_pct(g['val_acc']):>9}{_pct(g['test_acc']):>9}" for g in m["grades"]]
    return "\n".join(lines)
