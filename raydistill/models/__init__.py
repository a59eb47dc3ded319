"""Staged CIFAR architectures for Education Distillation (stem + blocks + head)."""
from .registry import (
    ARCHITECTURES,
    block_channels,
    build_fragment,
    build_grade_model,
    build_model,
    num_blocks,
)
from .staged import ReferenceHead, StagedModel, carry_over, count_parameters

__all__ = [
    "ARCHITECTURES",
    "build_model",
    "build_fragment",
    "build_grade_model",
    "num_blocks",
    "block_channels",
    "carry_over",
    "count_parameters",
    "StagedModel",
    "ReferenceHead",
]
