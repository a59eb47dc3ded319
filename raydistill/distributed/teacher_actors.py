"""Teachers as Ray actors: uint8 numpy batches in, float logits (numpy) out.

A `TeacherActor` holds one frozen teacher, prepared for inference like every `FrozenTeacher`
(BatchNorm folded, channels_last, `torch.inference_mode`), torch threads = the actor's CPUs.
`ActorTeachers` is the engine's `TeacherClient` for a set of actors: `submit` returns an
ObjectRef at once (the engine submits batch k+1 before training batch k, so the teacher runs on
its own core while the student steps), `fetch` is a zero-copy `ray.get` of a numpy array.
"""
from __future__ import annotations

import io
import warnings
from typing import Any, Optional

import numpy as np
import torch

from raydistill.teachers import FrozenTeacher, load_teacher


# ---- shipping a teacher through the object store (no Ray) ------------------------------------

def teacher_bytes(teacher: FrozenTeacher) -> bytes:
    """A teacher checkpoint (the `save_teacher` format) as bytes, to ship through the object store."""
    from raydistill.teachers import teacher_checkpoint
    buf = io.BytesIO()
    torch.save(teacher_checkpoint(teacher.model, teacher.mean, teacher.std), buf)
    return buf.getvalue()


def teacher_from_bytes(blob: bytes, device="cpu", **serving) -> FrozenTeacher:
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "teacher.pt"
        path.write_bytes(blob)
        return load_teacher(path, device=device, **serving)


# ---- the actor ------------------------------------------------------------------------------

class TeacherActor:
    """One frozen teacher behind a Ray actor. `source` is a checkpoint path or checkpoint bytes."""

    def __init__(self, source, threads: int = 1, device: str = "cpu", fold_bn: bool = True,
                 channels_last: bool = True, precision: str = "fp32", compile: bool = False):
        torch.set_num_threads(max(1, int(threads)))
        if device == "cuda" and not torch.cuda.is_available():
            device = "cpu"
        serving = {"fold_bn": fold_bn, "channels_last": channels_last, "precision": precision, "compile": compile}
        self.teacher = teacher_from_bytes(source, device, **serving) if isinstance(source, (bytes, bytearray)) \
            else load_teacher(source, device=device, **serving)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B,3,H,W] → float32 logits [B, classes of this teacher]."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # read-only object-store buffer; never written
            x = torch.from_numpy(images)
        return self.teacher(x).numpy()

    def class_ids(self) -> list:
        return self.teacher.class_ids

    def device(self) -> str:
        """Where this teacher computes (cuda:N on a (fractional) GPU)."""
        return str(self.teacher.device)

    def node_id(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()


def actor_options(cpus: float, gpus: float, resources: Optional[dict] = None, name: Optional[str] = None,
                  node_id: Optional[str] = None) -> dict:
    """Ray actor options of one teacher: `gpus` may be a fraction (0.25: four share a GPU); with
    `node_id` the actor is placed on that node (the student's) when it has room, elsewhere if not."""
    options = {"num_cpus": cpus, "num_gpus": gpus, "resources": dict(resources or {}), "max_restarts": 0}
    if name:
        options["name"] = name
    if node_id:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
    return options


def start_teacher_actors(sources: dict, cpus: float = 1.0, gpus: float = 0.0, resources: Optional[dict] = None,
                         name_prefix: Optional[str] = None, threads: Optional[int] = None,
                         node_id: Optional[str] = None, fold_bn: bool = True, channels_last: bool = True,
                         precision: str = "fp32", compile: bool = False) -> dict:
    """One actor per teacher key; `sources[key]` is a checkpoint path, bytes or an ObjectRef to bytes.
    Torch threads default to the actor's CPUs (at least 1). Returns {key: actor handle} once every
    actor has loaded its teacher."""
    import ray
    remote_cls = ray.remote(TeacherActor)
    threads = threads or max(1, int(round(cpus)))
    device = "cuda" if gpus > 0 else "cpu"
    actors = {}
    for key, source in sources.items():
        options = actor_options(cpus, gpus, resources, f"{name_prefix}{key}" if name_prefix else None, node_id)
        actors[key] = remote_cls.options(**options).remote(source, threads, device, fold_bn, channels_last,
                                                           precision, compile)
    ray.get([a.class_ids.remote() for a in actors.values()])   # fail here, not mid-epoch
    return actors


class ActorTeachers:
    """TeacherClient over teacher actors: submit → ObjectRef, fetch → ray.get → torch.from_numpy."""

    def __init__(self, actors: dict):
        self.actors = actors

    def submit(self, key: str, images: torch.Tensor) -> Any:
        return self.actors[key].logits.remote(images.cpu().numpy())   # from the GPU when the data lives there

    def fetch(self, handle: Any) -> torch.Tensor:
        import ray
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # zero-copy view of a read-only buffer
            return torch.from_numpy(ray.get(handle))

    def shutdown(self) -> None:
        import ray
        for actor in self.actors.values():
            ray.kill(actor)
        self.actors = {}
