"""Draw ED's plan (fragments, teaching reference heads, grades, groups and teachers) as an SVG,
from the plan the trainer itself runs: `raydistill.distill.curriculum.plan_for("ed", ...)`.

docs/hooks.py calls it at build time for the shipped experiments named in FIGURES, so the figure
in "ED explained" is always the code's plan. Run as a script to write the files:
`python docs/gen_plan_figure.py [out_dir]`.
"""
from __future__ import annotations

import sys
from pathlib import Path

# shipped experiment -> number of classes of its source (the plan needs the class groups only)
FIGURES = {"default": None, "cifar100_paper": 100}

def plan_of(name: str, num_classes=None):
    """(experiment, its class groups, the ED plan the trainer builds for it)."""
    from raydistill.config import Experiment
    from raydistill.data.groups import groups_from_ratio, validate_groups
    from raydistill.distill.curriculum import plan_for
    exp = Experiment.load(name)
    classes = num_classes or exp.data.num_classes
    groups = (validate_groups(exp.data.groups, classes) if exp.data.groups is not None
              else groups_from_ratio(classes, exp.data.ratio))
    return exp, groups, plan_for("ed", exp, groups)


def _span(classes) -> str:
    classes = sorted(classes)
    if classes == list(range(classes[0], classes[-1] + 1)):
        return f"{classes[0]}–{classes[-1]}"
    return ", ".join(map(str, classes))


def plan_figure(name: str, num_classes=None):
    """A matplotlib Figure of experiment `name`'s ED plan: one row per grade."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch, Rectangle
    from raydistill.models import num_blocks
    exp, groups, plan = plan_of(name, num_classes)
    blocks = num_blocks(plan.arch)
    rows = len(plan.grades)
    head_x = 1.6 + (blocks + 1) * 0.8          # x of the head box, in block units
    width = head_x + 3.4 + 5.6
    fig = Figure(figsize=(max(10.0, width * 0.9), 1.25 + 1.15 * rows))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(-0.9, rows * 1.15 + 1.0)
    ax.axis("off")
    top = rows * 1.15 + 0.55
    ax.text(0.1, top + 0.2, f"{name}: ED plan of a {plan.arch} student ({blocks} blocks), {len(groups)} groups of "
            f"{'/'.join(str(len(g)) for g in groups)} classes, {plan.pass_mode} passes", fontsize=12, weight="bold")
    ax.text(0.1, top - 0.15, f"raydistill.distill.curriculum.plan_for('ed', ...): splits "
            f"{[g.split for g in plan.grades]}, head widths {exp.head_widths()}, order {exp.order()}, "
            f"grade epochs {[g.epochs for g in plan.grades]}", fontsize=9, color="#555")
    for row, grade in enumerate(plan.grades):
        y = (rows - 1 - row) * 1.15
        ax.text(0.1, y + 0.45, f"grade {grade.index + 1}", fontsize=11, weight="bold")
        first, last = grade.first_epoch + 1, grade.first_epoch + grade.epochs
        ax.text(0.1, y + 0.12, f"epoch {first}" if first == last else f"epochs {first}-{last}", fontsize=9,
                color="#555")
        previous = plan.grades[grade.index - 1].split if grade.index else 0
        for b in range(blocks + 1):           # stem + blocks; the fragment is stem + blocks[0:split]
            inside = b <= grade.split
            new = inside and (grade.index == 0 or (b > previous))
            fill = "#f6c85f" if new else ("#9dd9a5" if inside else "white")
            x = 1.6 + b * 0.8
            ax.add_patch(Rectangle((x, y + 0.2), 0.7, 0.5, facecolor=fill, edgecolor="#333" if inside else "#bbb",
                                   linestyle="-" if inside else "--"))
            ax.text(x + 0.35, y + 0.45, "stem" if b == 0 else str(b), ha="center", va="center",
                    fontsize=7 if b == 0 else 9, color="black" if inside else "#aaa")
        head = "native classifier" if grade.final else f"reference head (width {grade.head_width})"
        ax.add_patch(FancyBboxPatch((head_x, y + 0.2), 3.2, 0.5, boxstyle="round,pad=0.02",
                                    facecolor="#7fb3d5" if grade.final else "#d2b4de", edgecolor="#333"))
        ax.text(head_x + 1.6, y + 0.45, f"{head} -> {grade.num_classes} classes", ha="center", va="center",
                fontsize=9)
        for i, lesson in enumerate(grade.lessons):
            newest = i == len(grade.lessons) - 1
            ax.text(head_x + 3.5, y + 0.45 + 0.13 * (len(grade.lessons) - 1) - 0.26 * i,
                    f"{lesson.group}: classes {_span(lesson.classes)}, teacher {lesson.teacher}"
                    f" ({'joins' if newest else 'review'})", fontsize=9, va="center",
                    color="black" if newest else "#666")
        what = ("the complete student" if grade.final
                else f"a temporary head over the {grade.num_classes} classes taught so far")
        span = "block 1" if grade.split == 1 else f"blocks 1-{grade.split}"
        ax.text(1.6, y - 0.05, f"fragment: stem + {span}, {what}", fontsize=8, color="#555")
    legend = [("#f6c85f", "blocks added in this grade"), ("#9dd9a5", "carried over (copied by name and shape)"),
              ("white", "not built yet")]
    x = 0.1
    for fill, text in legend:
        ax.add_patch(Rectangle((x, -0.75), 0.3, 0.25, facecolor=fill, edgecolor="#333"))
        ax.text(x + 0.4, -0.62, text, fontsize=9, va="center")
        x += 0.8 + 0.11 * len(text)
    return fig


def plan_svg(name: str, num_classes=None) -> str:
    """The figure as SVG text, byte-stable for the same plan (no date, fixed ids)."""
    import io
    import matplotlib
    fig = plan_figure(name, num_classes)
    with matplotlib.rc_context({"svg.hashsalt": "raydistill", "svg.fonttype": "none"}):
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def figures() -> dict:
    """{file name: SVG text} for every experiment in FIGURES."""
    return {f"ed_plan_{name}.svg": plan_svg(name, classes) for name, classes in FIGURES.items()}


if __name__ == "__main__":
    target = Path(next((a for a in sys.argv[1:] if not a.startswith("--")), "."))
    target.mkdir(parents=True, exist_ok=True)
    for file, svg in figures().items():
        (target / file).write_text(svg)
        print(target / file)
        if "--png" in sys.argv:
            name = file[len("ed_plan_"):-len(".svg")]
            plan_figure(name, FIGURES[name]).savefig(target / file.replace(".svg", ".png"), dpi=90)
