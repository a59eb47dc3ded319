"""Experiment configuration: one tree of dataclasses, YAML in and out, validated before any work.

Every field has a default so a YAML file only names what differs. `Experiment.validate()` checks what
can be checked without touching data; errors name the dotted field path and what was expected, so a
typo in a long cluster run fails in the first second, not after the teachers trained.

One module per concern:
- `errors`: ConfigError, and `need`, the check every rule is worded with;
- `reading`: YAML text, mappings and `KEY=VALUE` overrides into the dataclasses (shape and types);
- one module per section: `data`, `networks` (teachers, student), `curriculum`, `distill` (with the
  `methods` names), `optimizer`, `placement` (ray), `output` (output, tracking);
- `experiment`: the top level, and the rules that span sections.

Where a check lives: a section's `check()` reads only its own fields. A rule that needs another
section's value spans sections and lives in `Experiment`, which sees them all (no section check is
handed other sections' values): methods against distill.loss, a top-k soft-label cache against the
methods' losses, the batch sizes against ray.workers, and curriculum's per-grade fields against data's
groups and the student's blocks. The grade budget (grade_epochs, or grade_fractions of total_epochs)
stays there whole, its count first, so a list of the wrong length is reported as that and not by one
of its values. `validate()` runs the own checks first, so these rules see well-formed sections.
Checks call the section by its initial (`d = self`), the name the config reference shows for a value
that depends on the experiment (`a directory for source {d.source}`).
"""
from raydistill.config.curriculum import PASS_MODES, CurriculumConfig
from raydistill.config.data import LOADERS, DataConfig
from raydistill.config.distill import (LOSSES, METHODS, DistillConfig, DKDLossConfig, KDLossConfig, LSKDLossConfig,
                                       split_method)
from raydistill.config.errors import ConfigError
from raydistill.config.experiment import Experiment, shipped_experiments
from raydistill.config.networks import CACHE_FORMATS, SOFT_LABELS, StudentConfig, TeachersConfig
from raydistill.config.optimizer import SCHEDULES, OptimizerConfig
from raydistill.config.output import (TRACKER_PACKAGES, WANDB_MODES, MLflowConfig, OutputConfig, TrackingConfig,
                                      WandbConfig)
from raydistill.config.placement import EXECUTORS, STAGE_MODES, TEACHER_MODES, RayConfig
from raydistill.config.reading import load_yaml

__all__ = [
    "CACHE_FORMATS", "EXECUTORS", "LOADERS", "LOSSES", "METHODS", "PASS_MODES", "SCHEDULES", "SOFT_LABELS",
    "STAGE_MODES", "TEACHER_MODES", "TRACKER_PACKAGES", "WANDB_MODES",
    "ConfigError", "CurriculumConfig", "DataConfig", "DistillConfig", "DKDLossConfig", "Experiment", "KDLossConfig",
    "LSKDLossConfig", "MLflowConfig", "OptimizerConfig", "OutputConfig", "RayConfig", "StudentConfig",
    "TeachersConfig", "TrackingConfig", "WandbConfig", "load_yaml", "shipped_experiments", "split_method",
]
