"""Command line: `raydistill run | validate | tune | experiments`."""
from __future__ import annotations

import argparse
import sys

from raydistill.config import ConfigError, Experiment, shipped_experiments
from raydistill.search.space import BASELINES, SCHEDULERS, SEARCHERS


def load_config(config: str) -> Experiment:
    """A YAML path, a shipped experiment's name, or a YAML file behind a storage URI (a search's
    best.yaml in s3://…)."""
    from raydistill import storage
    if not storage.is_uri(config):
        return Experiment.load(config)
    store, name = storage.split(config)
    try:
        text = store.read_text(name)
    except (OSError, ConfigError) as err:
        raise ConfigError(f"config file {config}: cannot be read ({err})") from None
    return Experiment.from_yaml_text(text, source=config)


def _load(args) -> Experiment:
    exp = load_config(args.config)
    overrides = list(args.set or [])
    if getattr(args, "methods", None):
        overrides.append(f"methods=[{','.join(args.methods)}]")
    if getattr(args, "output", None):
        overrides.append(f"output.dir={args.output}")
    if getattr(args, "workers", None):
        overrides.append(f"ray.workers={args.workers}")
    if getattr(args, "address", None):
        overrides.append(f"ray.address={args.address}")
    if getattr(args, "teachers_mode", None):
        overrides.append(f"ray.teachers={args.teachers_mode}")
    if getattr(args, "soft_labels", None):
        overrides.append(f"teachers.soft_labels={args.soft_labels}")
    return exp.with_overrides(overrides).validate()


def cmd_run(args) -> int:
    """Exit 1 when training stops (diverged, or workers failed past ray.max_failures); 2 for bad input."""
    exp = _load(args)
    from raydistill.distill.engine import NonFiniteLossError
    from raydistill.distributed.trainer import RunInterrupted
    try:
        if args.backend == "local":
            from raydistill.pipeline.local import run
            run(exp)
        else:
            from raydistill.distributed.trainer import run_distributed
            run_distributed(exp)
    except (RunInterrupted, NonFiniteLossError) as err:
        print(f"raydistill: {err}", file=sys.stderr)
        return 1
    return 0


def run_device(exp: Experiment, backend: str) -> tuple[str, str]:
    """(device type `run --backend <backend>` trains the students on here, how it was chosen)."""
    if backend == "local":
        import torch
        from raydistill.pipeline.prepare import pick_device
        device = pick_device(exp).type
        if exp.device != "auto":
            return device, f"device {exp.device}"
        found = "a CUDA device found" if torch.cuda.is_available() else "no CUDA device on this machine"
        return device, f"device auto: {found}"
    return ("cuda" if exp.ray.use_gpu else "cpu"), f"ray.use_gpu {str(exp.ray.use_gpu).lower()}"


def cmd_validate(args) -> int:
    """The checks `run` makes before training, for the same backend on this machine (device and
    precision included: fp16 where the run would train on the CPU is the same error), then the data."""
    exp = _load(args)
    device, why = run_device(exp, args.backend)
    exp.check_devices(device, args.backend)   # what `run` checks first
    if args.backend == "local" and exp.device == "cuda" and device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("raydistill: warning: device cuda, but torch sees no CUDA device on this machine: "
                  "`run --backend local` will fail here", file=sys.stderr)
    from raydistill.pipeline.prepare import prepare_data
    from raydistill.teachers import check_teacher_checkpoints
    data = prepare_data(exp)
    check_teacher_checkpoints(exp.teachers.checkpoints, data.groups, exp.teachers.arch)   # what `run` checks too
    print(f"{args.config}: valid; {data.num_classes} classes in groups of "
          f"{[len(g) for g in data.groups]}; train/val/test {len(data.train)}/{len(data.val)}/{len(data.test)}")
    print(f"run --backend {args.backend} here: students train on {device} ({why}), precision {exp.precision}")
    return 0


def cmd_report(args) -> int:
    from raydistill.pipeline.report_files import report_text
    print(report_text(args.run_dir))
    return 0


def cmd_submit(args) -> int:
    from raydistill.distributed.jobs import JobError, submit
    work = args.space if args.space else _load(args)
    try:
        handle = submit(work, args.job_address, storage=args.storage)
        print(handle.job_id, flush=True)
        if args.wait:
            handle.wait(timeout=args.timeout)
            results = handle.results()
            print(results.summary() if args.space else results.table())
    except (JobError, TimeoutError) as err:
        print(f"raydistill: error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_tune(args) -> int:
    from raydistill.search.tuner import tune
    result = tune(args.space, samples=args.samples, scheduler=args.scheduler, max_concurrent=args.max_concurrent,
                  output=args.output, top=args.top, searcher=args.searcher, baselines=args.baselines)
    # a failed baselines run was reported in one line by `tune`; the search's results stand
    return 0 if result.best is not None and result.baseline_error is None else 1


def cmd_experiments(_args) -> int:
    print("\n".join(shipped_experiments()))
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="default",
                   help="experiment YAML (a path or a storage URI) or shipped experiment name "
                        "(see `raydistill experiments`)")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override a field, e.g. --set curriculum.temperature=2 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raydistill", description="Education Distillation on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train teachers, run ED and the baselines, print the results table")
    _add_config_args(p)
    p.add_argument("--methods", nargs="+", help="subset of: ed scratch kd multi_teacher, each but scratch optionally "
                   "with +loss (kd, dkd, lskd), e.g. ed+dkd")
    p.add_argument("--output", help="output directory (output.dir)")
    p.add_argument("--backend", choices=["ray", "local"], default="ray",
                   help="ray: one Ray Train run over the whole experiment (default; re-running resumes); "
                        "local: everything in this process")
    p.add_argument("--local", dest="backend", action="store_const", const="local", help="same as --backend local")
    p.add_argument("--workers", type=int, help="Ray Train workers (ray.workers)")
    p.add_argument("--address", help="join a running Ray cluster (ray.address) instead of starting a local one")
    p.add_argument("--teachers", dest="teachers_mode", choices=["local", "actors"],
                   help="serve teachers in each worker or as Ray actors (ray.teachers)")
    p.add_argument("--soft-labels", dest="soft_labels", choices=["online", "cache"],
                   help="online: teacher forward every step; cache: replay teacher logits stored once for a "
                        "fixed bank of augmentations (teachers.soft_labels)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("validate", help="check a config and its data without training")
    _add_config_args(p)
    p.add_argument("--backend", choices=["ray", "local"], default="ray",
                   help="check for `run --backend` this (default ray, as run): the device it trains on here")
    p.add_argument("--local", dest="backend", action="store_const", const="local", help="same as --backend local")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("report", help="reprint the results table of a finished run")
    p.add_argument("run_dir", help="a run directory, e.g. runs/default or s3://bucket/runs/default")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("submit", help="submit a run (or a curriculum search) to a Ray cluster as a Ray Job "
                                      "and print the job id")
    _add_config_args(p)
    p.add_argument("--space", help="submit this curriculum search (space file or tune_spaces/ name) instead of "
                                   "a run; --storage is then the search's output (a shared path or a URI)")
    p.add_argument("--address", dest="job_address", metavar="URL",
                   help="the cluster's Ray dashboard, e.g. http://<head>:8265 (default: $RAY_ADDRESS)")
    p.add_argument("--storage", help="where the run directory goes (output.dir): a shared path or a URI "
                                     "such as s3://bucket/runs")
    p.add_argument("--wait", action="store_true", help="wait for the job and print the results table")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("tune", help="search curricula with Ray Tune; re-running the same command resumes")
    p.add_argument("space", help="search space YAML path, or a name in tune_spaces/ (smoke, cifar10_short, ...)")
    p.add_argument("--samples", type=int, help="number of trials (distinct configurations; default: the space's)")
    p.add_argument("--searcher", choices=list(SEARCHERS),
                   help="random/grid: pre-drawn trials; optuna, hyperopt, bohb: Tune's model-based searchers "
                        "(default: the space's)")
    p.add_argument("--scheduler", choices=list(SCHEDULERS),
                   help="asha stops weak curricula early; hyperband goes with bohb (default: the space's)")
    p.add_argument("--baselines", nargs="*", choices=list(BASELINES),
                   help="also run these methods once at the trial budget with the search's teachers "
                        "(default: the space's baselines)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: the space's, else what the CPUs allow)")
    p.add_argument("--output", help="parent of the search directory: a path or a storage URI such as "
                        "s3://bucket/tune (default: the space's output, runs/tune)")
    p.add_argument("--top", type=int, default=5, help="print the best N trials (default 5)")
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("experiments", help="list the shipped example experiments")
    p.set_defaults(func=cmd_experiments)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from raydistill.data import DataError
    from raydistill.teachers import TeacherError
    from raydistill.distill.curriculum import CurriculumError
    from raydistill.pipeline.report_files import RunDirError
    try:
        return args.func(args)
    except (ConfigError, DataError, TeacherError, CurriculumError, RunDirError) as err:
        print(f"raydistill: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
