"""Architecture registry: name -> staged builders (complete net, fragment, grade).

Measured parameter counts (count_parameters of build_model(arch, C)):

    arch         blocks        C=10       C=100
    resnet110        54   1,730,714   1,736,564
    resnet14          6     175,258     181,108
    resnet20          9     272,474     278,324
    resnet32         15     466,906     472,756
    resnet32x4       15   7,410,730   7,433,860
    resnet44         21     661,338     667,188
    resnet56         27     855,770     861,620
    resnet8           3      78,042      83,892
    resnet8x4         3   1,210,410   1,233,540
    wrn_16_1          6     175,066     180,916
    wrn_16_2          6     691,674     703,284
    wrn_40_1         18     563,930     569,780
    wrn_40_2         18   2,243,546   2,255,156
"""
from __future__ import annotations


from . import resnet, wrn
from .staged import ReferenceHead, StagedModel

# name -> (block plan fn, parts fn, native head fn)
_FAMILIES = {
    **{n: (resnet.resnet_block_plan, resnet.resnet_parts, resnet.resnet_head) for n in resnet.RESNET_SPECS},
    **{n: (wrn.wrn_block_plan, wrn.wrn_parts, wrn.wrn_head) for n in wrn.WRN_SPECS},
}

ARCHITECTURES: list[str] = sorted(_FAMILIES)


def _family(arch: str):
    try:
        return _FAMILIES[arch]
    except (KeyError, TypeError):
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}") from None


def num_blocks(arch: str) -> int:
    """Number of growable blocks of the complete network."""
    return len(_family(arch)[0](arch))


def block_channels(arch: str) -> list[int]:
    """Output channels of each block (the in-width of a head placed after it)."""
    return [out for _, out, _ in _family(arch)[0](arch)]


def _check_split(arch: str, split: int) -> None:
    n = num_blocks(arch)
    if not isinstance(split, int) or isinstance(split, bool) or not 1 <= split <= n:
        raise ValueError(f"split {split!r} out of range for {arch}: must be in 1..{n}")


def build_model(arch: str, num_classes: int) -> StagedModel:
    """The complete network with its native head (``head.fc`` / ``head.bn``)."""
    _, parts, head = _family(arch)
    stem, blocks = parts(arch, num_blocks(arch))
    return StagedModel(stem, blocks, head(arch, num_classes), arch, num_classes)


def build_fragment(arch: str, split: int, num_classes: int, head_width: int = 64,
                   head_relu: bool = True) -> StagedModel:
    """First ``split`` blocks of ``arch`` topped by a ReferenceHead."""
    _, parts, _ = _family(arch)
    _check_split(arch, split)
    stem, blocks = parts(arch, split)
    head = ReferenceHead(block_channels(arch)[split - 1], num_classes, head_width, head_relu)
    return StagedModel(stem, blocks, head, arch, num_classes)


def build_grade_model(arch: str, split: int, num_classes: int, head_width: int,
                      final: bool, head_relu: bool = True) -> StagedModel:
    """Model for one ED grade: a fragment, or (``final``) the complete native network."""
    _family(arch)
    _check_split(arch, split)
    if final:
        if split != num_blocks(arch):
            raise ValueError(f"final grade needs split == num_blocks({arch}) == "
                             f"{num_blocks(arch)}, got split {split}")
        return build_model(arch, num_classes)
    return build_fragment(arch, split, num_classes, head_width, head_relu)


def _param_table(classes=(10, 100)) -> str:
    """Markdown-ish table of measured counts (used to write this docstring)."""
    from .staged import count_parameters
    lines = [f"{'arch':<12}{'blocks':>7}" + "".join(f"{f'C={c}':>12}" for c in classes)]
    for a in ARCHITECTURES:
        counts = "".join(f"{count_parameters(build_model(a, c)):>12,}" for c in classes)
        lines.append(f"{a:<12}{num_blocks(a):>7}{counts}")
    return "\n".join(lines)
