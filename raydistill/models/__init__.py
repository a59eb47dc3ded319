"""Staged architectures for Education Distillation (stem + blocks + head): CIFAR nets and
torchvision's ImageNet-style nets; and any tv:/timm: classifier as an unstaged teacher."""
from .classifiers import Classifier, is_classifier_arch
from .pretrained import PretrainedError
from .registry import (
    ARCHITECTURES,
    block_channels,
    build_fragment,
    build_grade_model,
    build_model,
    check_arch,
    num_blocks,
)
from .staged import ReferenceHead, StagedModel, carry_over, count_parameters
from .torchvision_nets import TORCHVISION_STUDENTS

__all__ = [
    "ARCHITECTURES",
    "TORCHVISION_STUDENTS",
    "build_model",
    "build_fragment",
    "build_grade_model",
    "check_arch",
    "num_blocks",
    "block_channels",
    "carry_over",
    "count_parameters",
    "is_classifier_arch",
    "Classifier",
    "PretrainedError",
    "StagedModel",
    "ReferenceHead",
]
