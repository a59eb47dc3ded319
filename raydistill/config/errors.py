"""The one error a configuration raises, and the check that words it."""
from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration problem, with the dotted field path in the message."""


def need(ok: bool, path: str, expected: str, value: Any) -> None:
    """Raise `<path>: expected <expected>, got <value!r>` unless `ok`. Every check is worded this way,
    and docs/gen_config_reference.py reads these calls to list what each field is checked for."""
    if not ok:
        raise ConfigError(f"{path}: expected {expected}, got {value!r}")
