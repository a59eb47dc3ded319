"""Class groups for the ED curriculum: contiguous ranges from a ratio, or validated explicit lists."""
from __future__ import annotations

from typing import Sequence

from .imageset import DataError


def _parse_ratio(ratio) -> list[int]:
    try:
        if isinstance(ratio, str):
            terms = [t.strip() for t in ratio.strip().split(":")]
            parts = [int(t) for t in terms]
        else:
            parts = []
            for t in ratio:
                if isinstance(t, bool) or int(t) != t:
                    raise ValueError
                parts.append(int(t))
    except (TypeError, ValueError):
        raise DataError(f"group ratio {ratio!r} is not parsable; expected e.g. '1:1:1' or [1, 1, 1]") from None
    if not parts or any(p <= 0 for p in parts):
        raise DataError(f"group ratio {ratio!r} must consist of positive integers, e.g. '2:1:1'")
    return parts


def groups_from_ratio(num_classes: int, ratio: str | Sequence[int]) -> list[list[int]]:
    """Split 0..C-1 into contiguous groups: size_i = floor(C/sum)*ratio_i, last group takes the remainder."""
    parts = _parse_ratio(ratio)
    unit = int(num_classes) // sum(parts)
    sizes = [unit * p for p in parts[:-1]]
    sizes.append(int(num_classes) - sum(sizes))
    if any(s <= 0 for s in sizes):
        raise DataError(
            f"group ratio {ratio!r} with {num_classes} classes gives an empty group (sizes {sizes}); "
            f"need at least sum(ratio)={sum(parts)} classes"
        )
    groups, start = [], 0
    for s in sizes:
        groups.append(list(range(start, start + s)))
        start += s
    return check_group_sizes(groups)


def check_group_sizes(groups: list[list[int]]) -> list[list[int]]:
    """Every group needs 2+ classes: a one-class group's teacher has one logit, so its KD slice is a
    softmax over one value — zero loss, no gradient — and its CE teacher learns nothing."""
    small = [f"group {gi} {g}" for gi, g in enumerate(groups) if len(g) < 2]
    if small:
        raise DataError(f"{', '.join(small)}: expected at least 2 classes per group "
                        f"(a one-class group gives a one-logit KD slice: zero loss, no gradient)")
    return groups


def validate_groups(groups, num_classes: int) -> list[list[int]]:
    """Check explicit class lists are non-empty, disjoint, in range and cover 0..C-1."""
    if isinstance(groups, (str, bytes)) or not hasattr(groups, "__iter__"):
        raise DataError(f"groups must be a list of class-id lists, got {groups!r}")
    out: list[list[int]] = []
    seen: dict[int, int] = {}
    for gi, group in enumerate(groups):
        if isinstance(group, (str, bytes)) or not hasattr(group, "__iter__"):
            raise DataError(f"group {gi} must be a list of class ids, got {group!r}")
        ids = []
        for c in group:
            if isinstance(c, bool) or not isinstance(c, int) and not (hasattr(c, "__index__")):
                raise DataError(f"group {gi} contains non-integer class id {c!r}")
            c = int(c)
            if not 0 <= c < num_classes:
                raise DataError(f"group {gi} contains class id {c}, outside 0..{num_classes - 1}")
            if c in seen:
                raise DataError(f"group {gi} repeats class {c}, already in group {seen[c]}; groups must be disjoint")
            seen[c] = gi
            ids.append(c)
        if not ids:
            raise DataError(f"group {gi} is empty; every group needs at least one class")
        out.append(ids)
    if not out:
        raise DataError("groups is empty; expected at least one group")
    missing = sorted(set(range(num_classes)) - set(seen))
    if missing:
        raise DataError(f"groups do not cover classes {missing[:20]}{'...' if len(missing) > 20 else ''}; "
                        f"together they must cover 0..{num_classes - 1}")
    return check_group_sizes(out)
