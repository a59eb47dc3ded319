"""Train teachers once with the project's teacher stage and commit them as files every results
table loads (`teachers.checkpoints`): <out>/<key>.pt plus <out>/teachers.json with each one's
classes, test accuracy on its own classes (the full test split), validation accuracy, wall time,
threads and sha256, and the experiment that trained them.

Lanes: each process trains the `--keys` it is given (one torch thread each on a 2-core machine:
two processes of one thread beat one of two). A key whose checkpoint already exists in --out is
not trained again (resume per teacher).

    .venv/bin/python benchmarks/teachers.py benchmarks/teachers/cifar10/experiment.yaml --keys all
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record(out: Path, key: str, entry: dict) -> None:
    """Merge one teacher's entry into teachers.json (lanes write different keys; read-modify-write
    under a lock file so two lanes finishing together keep both)."""
    import fcntl
    with open(out / ".teachers.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = out / "teachers.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data[key] = entry
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(dict(sorted(data.items())), indent=2) + "\n")
        tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", help="experiment YAML whose teachers to train")
    ap.add_argument("--keys", nargs="+", required=True, help="teacher keys: group0 group1 ... all")
    ap.add_argument("--out", type=Path, default=None, help="default: the experiment file's folder")
    ap.add_argument("--work", type=Path, default=Path("/tmp/raydistill-teachers"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="experiment overrides (a smoke run: teachers.epochs=1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from raydistill.config import Experiment
    from raydistill.distill.engine import evaluate, TrainContext
    from raydistill.pipeline.prepare import pick_device, start_run
    from raydistill.pipeline.stages import teacher_stage
    from raydistill.pipeline.prepare import teacher_settings

    out = args.out or Path(args.experiment).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    exp = Experiment.load(args.experiment).with_overrides(
        [f"output.dir={args.work}", f"output.name={'-'.join(args.keys)}", *args.set]).validate()
    todo = [k for k in args.keys if not (out / f"{k}.pt").exists()]
    if not todo:
        print("every requested teacher is already in", out)
        return 0
    data, run_dir = start_run(exp, print)
    device = pick_device(exp)
    for key in todo:
        started = time.perf_counter()
        teacher, info = teacher_stage(exp, data, run_dir, key, device, print)
        seconds = time.perf_counter() - started
        classes = teacher.class_ids
        ctx = TrainContext(device=device, precision=exp.precision)
        val_acc = evaluate(teacher.model, data.val, classes, teacher_settings(exp, data), ctx)
        target = out / f"{key}.pt"
        shutil.copyfile(run_dir.local_path / "teachers" / f"{key}.pt", target)
        record(out, key, {"file": target.name, "sha256": sha256(target), "arch": info["arch"], "classes": classes,
                          "params": info["params"], "test_acc": info["test_acc"], "val_acc": val_acc,
                          "train_images": int(len(data.train.of_classes(classes))), "epochs": exp.teachers.epochs,
                          "seconds": round(seconds, 1), "threads": args.threads, "precision": exp.precision,
                          "torch": torch.__version__})
        print(f"{key}: test {info['test_acc']:.4f} val {val_acc:.4f} in {seconds:.0f} s -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
