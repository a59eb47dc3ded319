"""Architecture registry: every staged family in one place, name -> builders (complete net,
fragment, grade); and the door to unstaged tv:/timm: classifiers (teachers only).

Families: CIFAR ResNets and WRNs (resnet.py, wrn.py: our code, the CRD/RepDistiller definitions)
and ImageNet-style nets (torchvision_nets.py: torchvision's own models, sliced). Measured
parameter counts (count_parameters of build_model(arch, C), `_param_table()`):

    arch                family        blocks         C=10        C=100
    efficientnet_b0     torchvision       16    4,020,358    4,135,648
    mobilenet_v2        torchvision       17    2,236,682    2,351,972
    mobilenet_v3_large  torchvision       15    4,214,842    4,330,132
    mobilenet_v3_small  torchvision       11    1,528,106    1,620,356
    resnet101           torchvision       33   42,520,650   42,705,060
    resnet110           cifar             54    1,730,714    1,736,564
    resnet14            cifar              6      175,258      181,108
    resnet18            torchvision        8   11,181,642   11,227,812
    resnet20            cifar              9      272,474      278,324
    resnet32            cifar             15      466,906      472,756
    resnet32x4          cifar             15    7,410,730    7,433,860
    resnet34            torchvision       16   21,289,802   21,335,972
    resnet44            cifar             21      661,338      667,188
    resnet50            torchvision       16   23,528,522   23,712,932
    resnet56            cifar             27      855,770      861,620
    resnet8             cifar              3       78,042       83,892
    resnet8x4           cifar              3    1,210,410    1,233,540
    wide_resnet50_2     torchvision       16   66,854,730   67,039,140
    wrn_16_1            cifar              6      175,066      180,916
    wrn_16_2            cifar              6      691,674      703,284
    wrn_40_1            cifar             18      563,930      569,780
    wrn_40_2            cifar             18    2,243,546    2,255,156
"""
from __future__ import annotations

from typing import Optional

from . import resnet, wrn
from .classifiers import build_classifier, check_classifier, is_classifier_arch
from .pretrained import PretrainedError, load_torchvision_pretrained
from .staged import ReferenceHead, StagedModel
from .torchvision_nets import (TORCHVISION_STUDENTS, slice_torchvision, torchvision_block_channels,
                               torchvision_classifier)

# CIFAR families: name -> (block plan fn, parts fn, native head fn)
_CIFAR = {
    **{n: (resnet.resnet_block_plan, resnet.resnet_parts, resnet.resnet_head) for n in resnet.RESNET_SPECS},
    **{n: (wrn.wrn_block_plan, wrn.wrn_parts, wrn.wrn_head) for n in wrn.WRN_SPECS},
}

# every staged family: CIFAR nets (ours) and ImageNet-style nets (torchvision's, sliced)
ARCHITECTURES: list[str] = sorted([*_CIFAR, *TORCHVISION_STUDENTS])


def _check_staged(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}"
                         + (" (tv:/timm: classifiers are not staged: teachers only)" if is_classifier_arch(arch)
                            else ""))


def num_blocks(arch: str) -> int:
    """Number of growable blocks of the complete network (an unstaged tv:/timm: classifier: 1)."""
    if is_classifier_arch(arch):
        return 1
    return len(block_channels(arch))


def block_channels(arch: str) -> list[int]:
    """Output channels of each block (the in-width of a head placed after it)."""
    _check_staged(arch)
    if arch in TORCHVISION_STUDENTS:
        return list(torchvision_block_channels(arch))
    return [out for _, out, _ in _CIFAR[arch][0](arch)]


def check_arch(arch: str, pretrained: Optional[str] = None, staged: bool = True) -> None:
    """Raise ValueError unless `arch` can be built offline with `pretrained` weights. `staged=False`
    also admits unstaged tv:/timm: classifiers (teachers)."""
    if not staged and is_classifier_arch(arch):
        check_classifier(arch, pretrained)
        return
    _check_staged(arch)
    if pretrained is not None:
        if arch not in TORCHVISION_STUDENTS:
            raise PretrainedError(f"{arch} is a CIFAR network without pretrained weights; pretrained weights "
                                  f"need one of {list(TORCHVISION_STUDENTS)} or a tv:/timm: classifier")
        check_classifier("tv:" + arch, pretrained)


def _check_split(arch: str, split: int) -> None:
    n = num_blocks(arch)
    if not isinstance(split, int) or isinstance(split, bool) or not 1 <= split <= n:
        raise ValueError(f"split {split!r} out of range for {arch}: must be in 1..{n}")


def _parts(arch: str, split: int, num_classes: int, pretrained: Optional[str], native_head: bool):
    """(stem, first `split` blocks, native head or None). torchvision nets are built whole (their
    init, their pretrained weights) and sliced; CIFAR nets build only what is asked, in the
    reference's init order."""
    _check_split(arch, split)
    check_arch(arch, pretrained)
    if arch in TORCHVISION_STUDENTS:
        model = torchvision_classifier(arch, num_classes)
        if pretrained is not None:
            load_torchvision_pretrained(model, arch, pretrained)
        stem, blocks, head = slice_torchvision(model)
        return stem, blocks[:split], head
    _, parts, head = _CIFAR[arch]
    stem, blocks = parts(arch, split)
    return stem, blocks, head(arch, num_classes) if native_head else None


def build_model(arch: str, num_classes: int, pretrained: Optional[str] = None):
    """The complete network with its native head (``head.fc`` / ``head.bn`` / ``head.classifier``);
    for a tv:/timm: arch, the unstaged `Classifier`. `pretrained`: weights name or file (stem and
    blocks; the classifier is always new)."""
    if is_classifier_arch(arch):
        return build_classifier(arch, num_classes, pretrained)
    _check_staged(arch)
    stem, blocks, head = _parts(arch, num_blocks(arch), num_classes, pretrained, native_head=True)
    return StagedModel(stem, blocks, head, arch, num_classes)


def build_fragment(arch: str, split: int, num_classes: int, head_width: int = 64,
                   head_relu: bool = True, pretrained: Optional[str] = None) -> StagedModel:
    """First ``split`` blocks of ``arch`` topped by a ReferenceHead."""
    _check_staged(arch)
    stem, blocks, _ = _parts(arch, split, num_classes, pretrained, native_head=False)
    head = ReferenceHead(block_channels(arch)[split - 1], num_classes, head_width, head_relu)
    return StagedModel(stem, blocks, head, arch, num_classes)


def build_grade_model(arch: str, split: int, num_classes: int, head_width: int,
                      final: bool, head_relu: bool = True, pretrained: Optional[str] = None):
    """Model for one ED grade: a fragment, or (``final``) the complete native network. An unstaged
    classifier (a tv:/timm: teacher) is one block: only its complete network exists."""
    if not is_classifier_arch(arch):
        _check_staged(arch)
    _check_split(arch, split)
    if final:
        if split != num_blocks(arch):
            raise ValueError(f"final grade needs split == num_blocks({arch}) == "
                             f"{num_blocks(arch)}, got split {split}")
        return build_model(arch, num_classes, pretrained)
    if is_classifier_arch(arch):
        raise ValueError(f"{arch} is not staged: it has no fragments")
    return build_fragment(arch, split, num_classes, head_width, head_relu, pretrained)


def _param_table(classes=(10, 100)) -> str:
    """Table of measured counts (used to write this docstring; built on the meta device: no memory)."""
    import torch
    from .staged import count_parameters
    lines = [f"{'arch':<20}{'family':<13}{'blocks':>7}" + "".join(f"{f'C={c}':>13}" for c in classes)]
    with torch.device("meta"):
        for a in ARCHITECTURES:
            counts = "".join(f"{count_parameters(build_model(a, c)):>13,}" for c in classes)
            family = "torchvision" if a in TORCHVISION_STUDENTS else "cifar"
            lines.append(f"{a:<20}{family:<13}{num_blocks(a):>7}{counts}")
    return "\n".join(lines)
