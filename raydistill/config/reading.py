"""Reading a configuration: YAML text, mappings and `KEY=VALUE` overrides into the section dataclasses.

What can go wrong here is the shape of the input (bad YAML, an unknown key, a wrongly-typed value, an
override that names no field); whether a well-typed value makes sense is each section's `check`.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import fields, is_dataclass
from typing import Union, get_args, get_origin, get_type_hints

import yaml

from raydistill.config.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 base-60 integers, so `ratio: 1:1:1` stays the string '1:1:1'."""


def _construct_mapping(loader, node, deep=False):
    """A mapping that refuses a key given twice (PyYAML keeps the last one silently)."""
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))


def load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def parse_yaml(text: str, source: str):
    """YAML text read from `source`, or one ConfigError line: where, and what the parser expected."""
    try:
        return load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"config file {source}: not valid YAML{where}: {what}") from None


def build(cls, raw: dict, prefix: str):
    """Build a dataclass from a mapping, rejecting unknown keys and wrongly-typed values."""
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field (valid in {prefix.rstrip('.') or 'the top level'}: "
                          f"{', '.join(sorted(names))})")
    kwargs = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        value, hint, path = raw[f.name], hints[f.name], f"{prefix}{f.name}"
        section = optional_section(hint)
        if section is not None:   # an optional section: null (off) or a mapping
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a section (mapping) or null, got {value!r}")
            kwargs[f.name] = None if value is None else build(section, value, prefix=path + ".")
        elif is_dataclass(hint):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a section (mapping), got {value!r}")
            kwargs[f.name] = build(hint, value, prefix=path + ".")
        else:
            kwargs[f.name] = _check_type(value, hint, path)
    return cls(**kwargs)


def apply_overrides(cls, raw: dict, overrides: list[str]) -> dict:
    """`raw` (a `cls` as a mapping) with `a.b=value` strings applied, values parsed as YAML."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. curriculum.temperature=2")
        node = raw
        parts = key.strip().split(".")
        section = cls
        for depth, part in enumerate(parts[:-1]):
            hint = get_type_hints(section).get(part) if is_dataclass(section) else None
            section = optional_section(hint) or hint
            if node.get(part, 0) is None and optional_section(hint):   # a section that is off: on, defaults
                node[part] = dataclasses.asdict(section())
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth + 1])} is not a section")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override {item!r}: unknown field {key.strip()} "
                              f"(valid here: {', '.join(node)})")
        node[parts[-1]] = load_yaml(value)
    return raw


def optional_section(hint):
    """The dataclass of an `Optional[SomeConfig]` field, else None."""
    if get_origin(hint) is not Union:
        return None
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and is_dataclass(args[0]) else None


def _check_type(value, hint, path):
    allowed = get_args(hint) if get_origin(hint) is Union else (hint,)
    for t in allowed:
        if t is type(None) and value is None:
            return value
        t = get_origin(t) or t
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (str, bool, list, dict) and isinstance(value, t):
            return copy.deepcopy(value)
    if str in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. a ratio "2" read by YAML as a number
    names = " or ".join("null" if t is type(None) else getattr(get_origin(t) or t, "__name__", str(t))
                        for t in allowed)
    raise ConfigError(f"{path}: expected {names}, got {value!r}")
