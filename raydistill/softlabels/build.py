"""Computing the cache: every teacher's logits for every bank draw of the samples it teaches.

Teacher p is only ever asked about samples of its own classes, so that is all that is computed
and stored (the `all` teacher of `kd` covers every sample). The work is split into (teacher,
chunk of samples) pieces. When Ray is initialised and the cluster has room for one piece with
the teacher actors' resources (`ray.teacher_cpus/teacher_gpus/teacher_resources`), the pieces run
as parallel Ray tasks; otherwise (the `--local` backend, or a single Ray Train worker that holds
every core of the machine) they run in this process with the frozen teachers. Either way the
teacher is a `FrozenTeacher` prepared for inference (BatchNorm folded, channels_last), which
changes the logits by far less than float16 rounding.
"""
from __future__ import annotations

import sys
from typing import Optional

import numpy as np
import torch

from raydistill.softlabels.bank import AugmentationBank
from raydistill.softlabels.store import TeacherLabels, concat, encode

CHUNK = 1024        # samples per piece of work (x draws forwards)
BATCH = 256         # images per teacher forward


def teacher_samples(classes, labels: torch.Tensor) -> torch.Tensor:
    """Ascending training-set positions of the samples whose label is one of `classes`."""
    return torch.nonzero(torch.isin(labels, torch.as_tensor(list(classes)))).flatten()


@torch.inference_mode()
def compute_logits(teacher, images: torch.Tensor, bank: AugmentationBank) -> torch.Tensor:
    """float32 [n, A, C]: the teacher's logits for every draw of `bank` (made for these n images)."""
    n, out = len(images), []
    for start in range(0, n, BATCH):
        index = torch.arange(start, min(start + BATCH, n))
        per_draw = []
        for a in range(bank.num_draws):
            x = bank.apply(images[index], index, torch.full((len(index),), a, dtype=torch.long))
            per_draw.append(teacher(x))
        out.append(torch.stack(per_draw, dim=1))
    return torch.cat(out)


def _piece(teacher, images, samples: torch.Tensor, bank: AugmentationBank, fmt: str, topk: int,
           temperature: float) -> TeacherLabels:
    sub = bank.subset(samples)
    return encode(samples, compute_logits(teacher, images[samples], sub), fmt, topk, temperature)


def _task(blob: bytes, images: np.ndarray, samples: np.ndarray, sub: AugmentationBank,
          fmt: str, topk: int, temperature: float, threads: int, device: str,
          precision: str = "fp32") -> TeacherLabels:
    """One piece in a Ray task: the teacher arrives as checkpoint bytes, the images as numpy."""
    from raydistill.distributed.teacher_actors import teacher_from_bytes
    torch.set_num_threads(threads)
    teacher = teacher_from_bytes(blob, device, precision=precision)
    samples = torch.from_numpy(samples)
    return encode(samples, compute_logits(teacher, torch.from_numpy(images[samples.numpy()]), sub), fmt, topk,
                  temperature)


def ray_task_options(cpus: float, gpus: float, resources: Optional[dict]) -> Optional[dict]:
    """Ray task options for building, or None to build in this process: Ray is not initialised,
    or the cluster has no room for even one task right now (tasks would wait forever)."""
    if "ray" not in sys.modules:            # never import Ray for the in-process backend
        return None
    import ray
    if not ray.is_initialized():
        return None
    need = {"CPU": cpus, "GPU": gpus, **(resources or {})}
    free = ray.available_resources()
    if any(amount > 0 and free.get(name, 0.0) < amount for name, amount in need.items()):
        return None
    return {"num_cpus": cpus, "num_gpus": gpus, "resources": dict(resources or {})}


def build_labels(teachers: dict, images: torch.Tensor, labels: torch.Tensor, bank: AugmentationBank, fmt: str,
                 topk: int, ray_options: Optional[dict] = None, temperature: float = 1.0) -> dict:
    """{teacher key: TeacherLabels} for every teacher in `teachers` ({key: FrozenTeacher});
    `temperature`: the KD temperature a topk cache keeps the tail mass exact at."""
    pieces = {key: torch.split(teacher_samples(t.class_ids, labels), CHUNK) for key, t in teachers.items()}
    if ray_options is None:
        return {key: concat([_piece(t, images, s, bank, fmt, topk, temperature) for s in pieces[key]])
                for key, t in teachers.items()}
    import ray
    from raydistill.distributed.teacher_actors import teacher_bytes
    task = ray.remote(_task).options(**ray_options)
    threads = max(1, int(round(ray_options["num_cpus"])))
    device = "cuda" if ray_options["num_gpus"] > 0 else "cpu"
    images_ref = ray.put(images.numpy())
    refs = {}
    for key, t in teachers.items():
        blob = ray.put(teacher_bytes(t))
        refs[key] = [task.remote(blob, images_ref, s.numpy(), bank.subset(s),
                                 fmt, topk, temperature, threads, device, t.amp.name) for s in pieces[key]]
    return {key: concat(ray.get(r)) for key, r in refs.items()}
