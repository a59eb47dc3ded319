"""Generate the config reference (docs/reference/config.md at build time) from raydistill/config/.

Everything on the page is read from the code, so it cannot drift from it:
- fields, types and defaults: the dataclasses under `Experiment` (`dataclasses.fields`);
- the one-line meaning of a field: its comment where its dataclass is defined (the trailing `# ...`
  on the field's line, or the comment lines right above it);
- allowed values: the constant a `need(<field> in CONSTANT, "<path>", ...)` check compares against
  (and `raydistill.models.ARCHITECTURES` for the `arch` fields);
- what `validate()` checks: the "expected ..." text of every `need(...)` call naming the field, in
  the methods of each section's dataclass (its own checks) and of `Experiment` (the top level and
  the rules that span sections).

A field without a comment is an error (`MissingDescription`), so `mkdocs build` and the test
suite (tests/test_docs.py) fail until it has one.

Run as a script to print the page: `python docs/gen_config_reference.py`.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import re
import sys
import tokenize
from dataclasses import MISSING, dataclass, is_dataclass
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints


class MissingDescription(ValueError):
    """Config fields that have no description (no comment in raydistill/config/)."""


@dataclass
class Row:
    path: str              # dotted field path, e.g. curriculum.splits
    type: str              # e.g. "int | null"
    default: str           # YAML-ish rendering of the default
    allowed: str           # allowed values the code knows, or ""
    checked: str           # what validate() expects, or ""
    description: str       # the field's comment in raydistill/config/
    section: str           # top-level section ("" for top-level fields)


# ---- comments ----------------------------------------------------------------------------------

def field_comments(cls) -> dict:
    """{field name: its comment} for a dataclass, read from its source: the trailing comment on
    the field's line, else the comment lines directly above it (joined)."""
    source = _dedent("".join(inspect.getsourcelines(cls)[0]))
    tree = ast.parse(source)
    comments = {}      # line number (1-based, in `source`) -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.start[1], tok.string.lstrip("#").strip())
    class_node = tree.body[0]
    out = {}
    for node in class_node.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        text = ""
        if node.end_lineno in comments and not _is_comment_line(source, node.end_lineno):
            text = comments[node.end_lineno][1]     # the trailing comment on the field's (last) line
        if not text:                       # comment lines right above the field
            above, line = [], node.lineno - 1
            while line in comments and _is_comment_line(source, line):
                above.insert(0, comments[line][1])
                line -= 1
            text = " ".join(above)
        out[node.target.id] = text
    return out


def _dedent(source: str) -> str:
    import textwrap
    return textwrap.dedent(source)


def _is_comment_line(source: str, line: int) -> bool:
    return source.splitlines()[line - 1].strip().startswith("#")


# ---- what validate() checks --------------------------------------------------------------------

def validation_checks(experiment_cls) -> dict:
    """{dotted path: {"allowed": [values] or None, "expected": [texts]}} from every `need(...)` call in
    the methods of each section dataclass under `experiment_cls`, then of `experiment_cls` itself: a
    field's own checks come before the rules that relate it to other sections."""
    out: dict = {}
    for cls in [*_sections(experiment_cls), experiment_cls]:
        module = sys.modules[cls.__module__]
        class_node = ast.parse(_dedent(inspect.getsource(cls))).body[0]
        for func in class_node.body:
            if not isinstance(func, ast.FunctionDef):
                continue
            namespace = dict(vars(module))
            for node in ast.walk(func):        # names a check imports inside the method (PRESETS, SOURCES, ...)
                if isinstance(node, ast.ImportFrom) and node.module:
                    imported = importlib.import_module(node.module)
                    for alias in node.names:
                        if hasattr(imported, alias.name):
                            namespace[alias.asname or alias.name] = getattr(imported, alias.name)
            for call, loops in _need_calls(func):
                for path in _paths(call.args[1], loops):
                    entry = out.setdefault(path, {"allowed": None, "expected": []})
                    allowed = _allowed(call.args[0], namespace)
                    if allowed is not None and entry["allowed"] is None:
                        entry["allowed"] = allowed
                    text = _text(call.args[2], namespace) if len(call.args) > 2 else ""
                    if text and text not in entry["expected"]:
                        entry["expected"].append(text)
    return out


def _sections(cls) -> list:
    """The section dataclasses under `cls` (optional ones included), depth first in field order."""
    found = []
    for f in dataclasses.fields(cls):
        hint = get_type_hints(cls)[f.name]
        nested = hint if is_dataclass(hint) else _optional_section(hint)
        if nested is not None and nested not in found:
            found += [nested, *(s for s in _sections(nested) if s not in found)]
    return found


def _need_calls(func):
    """(call, enclosing for-loops) for every call of `need` in a function."""
    found = []

    def visit(node, loops):
        if isinstance(node, ast.For):
            loops = [*loops, node]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "need"
                and len(node.args) >= 2):
            found.append((node, loops))
        for child in ast.iter_child_nodes(node):
            visit(child, loops)
    visit(func, [])
    return found


def _paths(node, loops) -> list:
    """Dotted field paths a `need` call names: a string, an f-string over a loop variable, or the
    loop variable itself; `a.b/c` names a.b and a.c; `x[{i}]` names x."""
    texts = []
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        texts = [node.value]
    elif isinstance(node, (ast.JoinedStr, ast.Name)):
        for values in _loop_bindings(loops):
            try:
                texts.append(eval(compile(ast.Expression(node), "<need>", "eval"), {}, values))
            except Exception:
                continue
    paths = []
    for text in texts:
        text = re.sub(r"\[.*?\]", "", text)
        head, _, rest = text.partition("/")
        paths.append(head)
        if rest:
            prefix = head.rsplit(".", 1)[0]
            paths.extend(f"{prefix}.{name}" for name in rest.split("/"))
    return paths


def _loop_bindings(loops) -> list:
    """Every binding of the loop variables of for-loops over literal tuples/lists (one dict each)."""
    bindings = [{}]
    for loop in loops:
        if not isinstance(loop.iter, (ast.Tuple, ast.List)):
            continue
        new = []
        for element in loop.iter.elts:
            if isinstance(loop.target, ast.Name) and isinstance(element, ast.Constant):
                pairs = {loop.target.id: element.value}
            elif isinstance(loop.target, ast.Tuple) and isinstance(element, ast.Tuple):
                pairs = {t.id: e.value for t, e in zip(loop.target.elts, element.elts)
                         if isinstance(t, ast.Name) and isinstance(e, ast.Constant)}
            else:
                continue
            new.extend({**b, **pairs} for b in bindings)
        bindings = new or bindings
    return bindings


def _allowed(node, namespace) -> Optional[list]:
    """The constant a check compares the field against with `in` (first one found)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Compare) and len(sub.ops) == 1 and isinstance(sub.ops[0], ast.In):
            target = sub.comparators[0]
            if isinstance(target, ast.Name) and target.id.isupper() and target.id in namespace:
                return list(namespace[target.id])
            if isinstance(target, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in target.elts):
                return [e.value for e in target.elts]
    return None


def _text(node, namespace) -> str:
    """The 'expected ...' text of a check: a string, or an f-string whose parts are evaluated where
    they are constants of the module (an expression that needs the experiment stays `{expr}`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if not isinstance(node, ast.JoinedStr):
        return ""
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value))
            continue
        try:
            evaluated = eval(compile(ast.Expression(value.value), "<need>", "eval"), namespace)
            parts.append(format(evaluated, value.format_spec and _text(value.format_spec, namespace) or ""))
        except Exception:
            parts.append("{" + ast.unparse(value.value) + "}")
    return "".join(parts)


# ---- rows --------------------------------------------------------------------------------------

def _type_name(hint) -> str:
    if hint is type(None):
        return "null"
    origin = get_origin(hint)
    if origin is Union:
        return " | ".join(_type_name(a) for a in get_args(hint))
    if is_dataclass(hint):
        return "section"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(hint, "__name__", str(hint))


def _yaml(value: Any) -> str:
    import yaml
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _optional_section(hint):
    if get_origin(hint) is not Union:
        return None
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and is_dataclass(args[0]) else None


def _class_doc(cls) -> str:
    """A section's docstring without its leading `name`: (dataclasses invent one from the signature)."""
    doc = cls.__doc__ or ""
    if doc.startswith(cls.__name__ + "("):
        return ""
    return " ".join(re.sub(r"^`[\w.]+`:\s*", "", inspect.cleandoc(doc)).split())


def _arch_allowed(path: str) -> str:
    from raydistill.models import ARCHITECTURES
    names = ", ".join(f"`{a}`" for a in ARCHITECTURES)
    if path == "teachers.arch":
        return names + ", `tv:<torchvision model>`, `timm:<timm model>`"
    return names


def config_rows(experiment_cls=None, module=None) -> list:
    """One Row per field of `Experiment` and of every section under it (sections that default to
    null, like `tracking.mlflow`, included). Raises MissingDescription if any field has none."""
    if module is None:
        module = importlib.import_module("raydistill.config")
    if experiment_cls is None:
        experiment_cls = module.Experiment
    checks = validation_checks(experiment_cls)
    rows, missing = [], []

    def walk(cls, prefix: str, section: str):
        hints = get_type_hints(cls)
        comments = field_comments(cls)
        for f in dataclasses.fields(cls):
            path = prefix + f.name
            hint = hints[f.name]
            nested = hint if is_dataclass(hint) else _optional_section(hint)
            if f.default is not MISSING:
                default = f.default
            elif f.default_factory is not MISSING:
                default = f.default_factory()
            else:
                default = None
            description = comments.get(f.name, "")
            if nested is not None:      # a section: its docstring, then its field's comment
                description = " ".join(t for t in (_class_doc(nested), description) if t)
            if not description:
                missing.append(path)
            check = checks.get(path, {"allowed": None, "expected": []})
            if path.endswith(".arch") and path in ("teachers.arch", "student.arch"):
                allowed = _arch_allowed(path)
            elif check["allowed"] is not None:
                allowed = ", ".join(f"`{_yaml(v)}`" for v in check["allowed"])
            else:
                allowed = ""
            if nested is not None:
                rows.append(Row(path, "section" if is_dataclass(hint) else "section | null",
                                "null" if default is None else "(section)", "", "", description,
                                section or f.name))
                walk(nested, path + ".", section or f.name)
            else:
                rows.append(Row(path, _type_name(hint), _yaml(default), allowed,
                                "; ".join(check["expected"]), description, section))

    walk(experiment_cls, "", "")
    if missing:
        raise MissingDescription(
            "config fields without a description (add a `# comment` on the field's line in "
            f"raydistill/config/): {', '.join(missing)}")
    return rows


# ---- markdown ----------------------------------------------------------------------------------

def _cell(text: str) -> str:
    """A table cell: pipes escaped, and `<...>` outside code spans escaped so it is not read as HTML."""
    parts = text.replace("\n", " ").split("`")
    for i in range(0, len(parts), 2):          # even parts are outside code spans
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts).replace("|", "\\|")


def render(rows: Optional[list] = None) -> str:
    rows = config_rows() if rows is None else rows
    out = [
        "# Config reference",
        "",
        "<!-- Generated at build time by docs/gen_config_reference.py from raydistill/config.py: edit the "
        "dataclasses and their comments there, not this page. -->",
        "",
        "An experiment is one YAML file; every field has a default, so a file names only what differs. "
        "Override any field with `--set section.field=value` (the value is parsed as YAML). Everything "
        "is validated before any data is loaded or any cluster work starts, and errors name the field: "
        "`curriculum.splits: expected strictly increasing, got [2, 1, 3]`.",
        "",
        "This page is generated from the dataclasses in `raydistill/config.py` when the site is built: "
        "**type** and **default** from the dataclass fields, **meaning** from each field's comment, "
        "**allowed** from the constant `validate()` compares the field against, and **checked** from "
        "the text of `validate()`'s checks for the field (`{…}` marks a value that depends on the rest "
        "of the experiment).",
        "",
    ]
    by_section: dict = {}
    for row in rows:
        by_section.setdefault(row.section, []).append(row)
    for section, items in by_section.items():
        out.append(f"## `{section}`" if section else "## Top level")
        out.append("")
        out.append("| field | type | default | allowed | checked | meaning |")
        out.append("|---|---|---|---|---|---|")
        for r in items:
            out.append("| " + " | ".join([
                f"`{r.path}`", _cell(r.type), f"`{r.default}`", _cell(r.allowed),
                _cell(r.checked), _cell(r.description)]) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
