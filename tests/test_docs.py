"""The documentation site (issue 27): it builds with `mkdocs build --strict` (broken links, missing
pages and anchors fail), the config reference is generated from the config dataclasses and lists
every field with a description, the ED figure is the code's own plan, the API page covers the
package's public names, and every command the pages show parses with the CLI's own parser (and
the getting-started ones are run by some test)."""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
sys.path.insert(0, str(DOCS))

import gen_config_reference  # noqa: E402  (docs/gen_config_reference.py)
import gen_plan_figure  # noqa: E402  (docs/gen_plan_figure.py)


def experiment_field_paths() -> list:
    """Every dotted field path of Experiment and its nested sections (optional sections included),
    from dataclasses.fields."""
    from raydistill.config import Experiment
    paths = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            paths.append(prefix + f.name)
            hint = hints[f.name]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            nested = hint if dataclasses.is_dataclass(hint) else (
                args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None)
            if nested is not None:
                walk(nested, prefix + f.name + ".")
    walk(Experiment, "")
    return paths


def test_config_reference_lists_every_field_of_experiment_with_a_description():
    rows = gen_config_reference.config_rows()
    expected = experiment_field_paths()
    assert [r.path for r in rows] == expected
    assert all(r.description.strip() for r in rows)
    page = gen_config_reference.render()
    for path in expected:
        assert f"| `{path}` |" in page, path
    # nested sections that default to null are listed with their fields too
    assert {"tracking.mlflow.tracking_uri", "tracking.wandb.mode", "distill.dkd.beta"} <= set(expected)


def test_config_reference_types_defaults_and_allowed_values_come_from_the_code():
    from raydistill import config
    from raydistill.models import ARCHITECTURES
    rows = {r.path: r for r in gen_config_reference.config_rows()}
    defaults = config.Experiment()
    assert rows["curriculum.temperature"].default == str(defaults.curriculum.temperature)
    assert rows["optimizer.batch_size"].default == str(defaults.optimizer.batch_size)
    assert rows["data.image_size"].type == "int | null"
    for path, values in {"data.loader": config.LOADERS, "curriculum.pass_mode": config.PASS_MODES,
                         "optimizer.schedule": config.SCHEDULES, "ray.stages": config.STAGE_MODES,
                         "distill.loss": config.LOSSES, "teachers.cache_format": config.CACHE_FORMATS,
                         "tracking.wandb.mode": config.WANDB_MODES, "methods": config.METHODS}.items():
        assert rows[path].allowed == ", ".join(f"`{v}`" for v in values), path
    assert all(f"`{a}`" in rows["student.arch"].allowed for a in ARCHITECTURES)
    # what validate() checks, in its own words
    assert "strictly increasing" in rows["curriculum.splits"].checked
    assert rows["data.val_fraction"].checked == ("a number in [0, 1); a validation split (above 0) with "
                                                 "curriculum.switch: plateau (grades end on validation accuracy)")
    assert rows["curriculum.switch"].allowed == "`fixed`, `plateau`"
    assert "at least 2 samples per worker" in rows["teachers.batch_size"].checked


def test_config_reference_fails_when_a_field_has_no_description(tmp_path):
    source = textwrap.dedent('''
        from dataclasses import dataclass, field


        @dataclass
        class Section:
            """`section`: a section."""
            described: int = 1          # has a comment
            bare: int = 2


        @dataclass
        class Experiment:
            # the comment above a field counts too
            name: str = "x"
            section: Section = field(default_factory=Section)
        ''')
    path = tmp_path / "fake_config_for_docs.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fake_config_for_docs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_config_for_docs"] = module
    try:
        spec.loader.exec_module(module)
        with pytest.raises(gen_config_reference.MissingDescription, match=r"section\.bare") as err:
            gen_config_reference.config_rows(module.Experiment, module)
        assert "section.described" not in str(err.value) and ": name" not in str(err.value)
        path.write_text(source.replace("bare: int = 2", "bare: int = 2              # now described"))
        spec.loader.exec_module(module)
        rows = gen_config_reference.config_rows(module.Experiment, module)
        assert {r.path: r.description for r in rows} == {
            "name": "the comment above a field counts too", "section": "a section.",
            "section.described": "has a comment", "section.bare": "now described"}
    finally:
        del sys.modules["fake_config_for_docs"]


def test_ed_figure_is_the_plan_the_trainer_runs():
    from raydistill.config import Experiment
    from raydistill.data.groups import groups_from_ratio
    from raydistill.distill.curriculum import plan_for
    exp = Experiment.load("default")
    plan = plan_for("ed", exp, groups_from_ratio(exp.data.num_classes, exp.data.ratio))
    svg = gen_plan_figure.plan_svg("default")
    assert svg == gen_plan_figure.plan_svg("default")            # byte-stable across builds
    for grade in plan.grades:
        head = ("native classifier" if grade.final else f"reference head (width {grade.head_width})")
        assert f"{head} -&gt; {grade.num_classes} classes" in svg
        for lesson in grade.lessons:
            assert f"{lesson.group}: classes {gen_plan_figure._span(lesson.classes)}, teacher {lesson.teacher}" in svg
    assert set(gen_plan_figure.figures()) == {"ed_plan_default.svg", "ed_plan_cifar100_paper.svg"}


def test_api_page_documents_every_public_name():
    import raydistill
    page = (DOCS / "reference" / "api.md").read_text()
    for name in raydistill.__all__:
        if name != "__version__":
            assert f"::: raydistill.{name}\n" in page, name


def shown_commands(page: Path) -> list:
    """The `raydistill ...` lines of a page's bash blocks, comments stripped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        block = re.sub(r"\\\n\s*", " ", block)            # continuation lines
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("raydistill "):
                    commands.append(part)
    return commands


# getting-started commands that a slow test runs (the rest run in test_getting_started_commands_run)
RUN_ELSEWHERE = {
    "raydistill run": ("tests/test_default_run.py", "test_default_run_prints_the_committed_numbers"),
    "raydistill tune smoke": ("tests/test_tune.py", "test_smoke_search_trains_teachers_once_and_exports_a_runnable_best"),
}


def test_every_command_on_the_pages_parses():
    from raydistill.cli import build_parser
    parser = build_parser()
    pages = [DOCS / "getting-started.md", DOCS / "reference" / "commands.md", REPO / "README.md",
             *sorted((DOCS / "guides").glob("*.md"))]
    seen = 0
    for page in pages:
        for command in shown_commands(page):
            args = [a for a in shlex.split(command.replace("…", "x"))[1:]]
            try:
                parser.parse_args(args)
            except SystemExit:
                pytest.fail(f"{page.relative_to(REPO)}: `{command}` does not parse")
            seen += 1
    assert seen >= 20


def test_getting_started_commands_run(capsys):
    """Each command on the getting-started page is exercised: the cheap ones here, the default run
    and the smoke search by the tests named in RUN_ELSEWHERE."""
    from raydistill.cli import main
    commands = shown_commands(DOCS / "getting-started.md")
    assert "raydistill run" in commands
    for command in commands:
        if command in RUN_ELSEWHERE:
            path, test = RUN_ELSEWHERE[command]
            assert f"def {test}(" in (REPO / path).read_text(), (command, path, test)
            continue
        args = shlex.split(command)[1:]
        if args[0] == "report":          # the committed default run stands in for runs/default
            args = ["report", str(REPO / "benchmarks" / "results" / "default_run")]
        assert main(args) == 0, command
        assert capsys.readouterr().out.strip(), command


@pytest.mark.slow   # mkdocs in a subprocess (about 10 s): the generator tests above stay in the fast tier
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_mkdocs_build_strict(tmp_path):
    """The site builds with --strict: a broken link, a missing page or anchor, a config field
    without a description or a docstring mkdocstrings cannot render fails it."""
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(site)], cwd=REPO, capture_output=True, text=True,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config_page = (site / "reference" / "config" / "index.html").read_text()
    assert all(f"<code>{path}</code>" in config_page for path in experiment_field_paths())
    assert (site / "assets" / "ed_plan_default.svg").is_file()
    assert (site / "benchmarks" / "results" / "ed_evidence" / "curve.png").is_file()
    assert 'id="raydistill.Experiment"' in (site / "reference" / "api" / "index.html").read_text()


def test_the_experiment_shown_for_your_own_data_is_valid():
    import yaml
    from raydistill.config import Experiment
    blocks = re.findall(r"```yaml\n(.*?)```", (DOCS / "guides" / "your-data.md").read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        Experiment.from_dict(yaml.safe_load(block)).validate()
