"""Pretrained weights, offline: a torchvision weights name, a timm pretrained tag, or a local file.

Nothing is downloaded: a weights name must already be in its cache (torchvision's: the
torch.hub directory, under TORCH_HOME; timm's: the Hugging Face hub cache), so a missing file
fails when the config is validated, naming the file and the directory, not after hours of work.
The final classifier is never taken from the weights: the network gets a fresh one for its
own classes (what fine-tuning a pretrained classifier on new classes starts from).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch
from torch import nn

_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


class PretrainedError(ValueError):
    """Pretrained weights that cannot be found offline or do not fit the network."""


def _is_file_like(pretrained: str) -> bool:
    return "/" in pretrained or os.sep in pretrained or pretrained.endswith(_FILE_SUFFIXES) or Path(pretrained).exists()


def _hub_dirs() -> str:
    return (f"TORCH_HOME={os.environ.get('TORCH_HOME', '(unset)')}, torch.hub.get_dir()={torch.hub.get_dir()}")


def _check_file(path: str) -> None:
    if not Path(path).is_file():
        raise PretrainedError(f"file {path} not found (expected a local state_dict file, or a weights name)")


def torchvision_weights(tv_arch: str, pretrained: str):
    """The torchvision weights that `pretrained` names for `tv_arch` (``IMAGENET1K_V2``, ``DEFAULT``,
    ``ResNet50_Weights.IMAGENET1K_V2``), or None when it names none."""
    try:
        enum = _get_model_weights(tv_arch)
    except (ValueError, KeyError):
        return None
    key = pretrained.removeprefix(enum.__name__ + ".")
    try:
        return enum[key]
    except KeyError:
        return None


def torchvision_weights_file(weights) -> Path:
    """Where torch.hub keeps (and torchvision's `get_state_dict` looks for) a weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def check_torchvision_pretrained(tv_arch: str, pretrained: str) -> None:
    """Raise PretrainedError unless `pretrained` is a cached weights name or an existing file."""
    weights = torchvision_weights(tv_arch, pretrained)
    if weights is not None:
        path = torchvision_weights_file(weights)
        if not path.is_file():
            raise PretrainedError(
                f"weights {weights} of {tv_arch} need the file {path}, not found and not downloaded ({_hub_dirs()}); "
                f"fetch it once on a machine with network (python -c \"import torchvision; "
                f"torchvision.models.get_model('{tv_arch}', weights='{weights.name}')\") into that directory, "
                f"or give a local state_dict file")
        return
    if _is_file_like(pretrained):
        _check_file(pretrained)
        return
    names = list(_get_model_weights(tv_arch).__members__) if _has_weights(tv_arch) else []
    raise PretrainedError(f"{pretrained!r} is neither a torchvision weights name of {tv_arch} "
                          f"({', '.join(names) or 'none'}) nor a file")


def _get_model_weights(tv_arch: str):
    import torchvision  # here, not at module level: its import (~1.5 s, torch._dynamo) would slow every worker start
    return torchvision.models.get_model_weights(tv_arch)


def _has_weights(tv_arch: str) -> bool:
    try:
        _get_model_weights(tv_arch)
        return True
    except (ValueError, KeyError):
        return False


def read_state_dict(path: str) -> dict:
    """A state_dict from a torch file: a bare state_dict, or a dict holding one under ``state_dict``
    (``module.`` prefixes of DDP-saved files removed). Loaded with weights_only: no code runs."""
    _check_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled code, truncated, not a torch file
        raise PretrainedError(f"file {path}: not a readable torch state_dict ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedError(f"file {path}: expected a state_dict (names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def classifier_name(model: nn.Module) -> str:
    """The final classification layer: timm's `get_classifier()`, else the last nn.Linear."""
    target = model.get_classifier() if hasattr(model, "get_classifier") else None
    linears = [n for n, m in model.named_modules() if (m is target if target is not None else isinstance(m, nn.Linear))]
    if not linears:
        raise PretrainedError(f"{type(model).__name__}: no final nn.Linear classifier to replace")
    return linears[-1]


def load_backbone(model: nn.Module, state_dict: dict, source: str) -> None:
    """Load every weight but the final classifier's (it stays freshly initialised for the new classes)."""
    head = classifier_name(model) + "."
    kept = {k: v for k, v in state_dict.items() if not k.startswith(head)}
    try:
        missing, unexpected = model.load_state_dict(kept, strict=False)
    except RuntimeError as err:
        raise PretrainedError(f"{source}: weights do not fit {type(model).__name__} "
                              f"({str(err).splitlines()[-1].strip()})") from None
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise PretrainedError(f"{source}: not a state_dict of {type(model).__name__}: "
                              f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
                              f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}")


def load_torchvision_pretrained(model: nn.Module, tv_arch: str, pretrained: str) -> None:
    """Load `pretrained` (weights name or file) into torchvision model `model`, classifier excepted."""
    check_torchvision_pretrained(tv_arch, pretrained)
    weights = torchvision_weights(tv_arch, pretrained)
    state = weights.get_state_dict(progress=False) if weights is not None else read_state_dict(pretrained)
    load_backbone(model, state, f"{tv_arch} weights {pretrained}")


# ---- timm (optional extra raydistill[timm]) ---------------------------------------------------

def import_timm():
    try:
        import timm
    except ImportError:
        raise PretrainedError("timm is not installed (pip install 'raydistill[timm]')") from None
    return timm


def check_timm(name: str, pretrained: Optional[str]) -> None:
    """A known timm model; `pretrained` an existing file or a pretrained tag whose file is cached."""
    timm = import_timm()
    if not timm.is_model(name):
        raise PretrainedError(f"unknown timm model {name!r} (timm.list_models() lists them)")
    if pretrained is None:
        return
    if _is_file_like(pretrained):
        _check_file(pretrained)
        return
    cfg = timm.models.get_pretrained_cfg(f"{name}.{pretrained}")
    if cfg is None:
        raise PretrainedError(f"{pretrained!r} is neither a timm pretrained tag of {name} "
                              f"({', '.join(timm.list_pretrained(name + '.*')) or 'none'}) nor a file")
    if _timm_file(cfg) is None:
        from huggingface_hub.constants import HF_HUB_CACHE
        where = f"Hugging Face repo {cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url
        raise PretrainedError(f"timm weights {name}.{pretrained} ({where}) are not in the cache and are not "
                              f"downloaded (HF_HUB_CACHE={HF_HUB_CACHE}; {_hub_dirs()}); fetch them once on a "
                              f"machine with network (python -c \"import timm; "
                              f"timm.create_model('{name}.{pretrained}', pretrained=True)\"), "
                              f"or give a local state_dict file")


def _timm_file(cfg) -> Optional[str]:
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id.split("@")[0], filename)
            if isinstance(found, str):
                return found
        return None
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        return str(path) if path.is_file() else None
    return None


def timm_classifier(name: str, num_classes: int, pretrained: Optional[str] = None) -> nn.Module:
    """timm's model `name` with `num_classes` outputs, from a pretrained tag or file when given."""
    timm = import_timm()
    check_timm(name, pretrained)
    if pretrained is None or _is_file_like(pretrained):
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        if pretrained is not None:
            load_backbone(model, read_state_dict(pretrained), f"timm {name} weights {pretrained}")
        return model
    return timm.create_model(f"{name}.{pretrained}", pretrained=True, num_classes=num_classes,
                             pretrained_cfg_overlay={"file": _timm_file(timm.models.get_pretrained_cfg(
                                 f"{name}.{pretrained}"))})


# ---- input normalisation of pretrained weights ------------------------------------------------

def weights_normalization(arch: str, pretrained: Optional[str]) -> Optional[tuple[tuple, tuple]]:
    """(mean, std) of the input the pretrained weights were trained on, read from the weights' own
    metadata without any download: timm's `pretrained_cfg` for a timm tag, torchvision's
    `weights.transforms()` for a torchvision weights name (a staged ImageNet-style student's too).
    None without weights, for a local file (it carries no preprocessing) or a CIFAR network."""
    if pretrained is None or _is_file_like(pretrained):
        return None
    if arch.startswith("timm:"):
        name = arch.removeprefix("timm:")
        cfg = import_timm().models.get_pretrained_cfg(f"{name}.{pretrained}")
        if cfg is None or cfg.mean is None or cfg.std is None:
            return None
        return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
    weights = torchvision_weights(arch.removeprefix("tv:"), pretrained)
    if weights is None:
        return None
    transforms = weights.transforms()
    mean, std = getattr(transforms, "mean", None), getattr(transforms, "std", None)
    if mean is None or std is None:
        return None
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def input_normalization(section, data_mean, data_std) -> tuple[tuple, tuple]:
    """The (mean, std) a network of config `section` (`teachers` or `student`: arch, pretrained,
    normalize) is trained, served and saved with. `normalize`: `auto` (default) = the pretrained
    weights' own statistics when the weights record them (a network fine-tuned from weights expects
    their input scale; timm tags trained with mean = std = 0.5 see a 2x different input under
    ImageNet or data statistics), else the training data's; `data` = the data's always; or an
    explicit {mean: [r, g, b], std: [r, g, b]} (e.g. for a local weights file trained with other
    statistics)."""
    choice = getattr(section, "normalize", "auto")
    if isinstance(choice, dict):
        return tuple(float(v) for v in choice["mean"]), tuple(float(v) for v in choice["std"])
    if choice == "auto":
        found = weights_normalization(section.arch, section.pretrained)
        if found is not None:
            return found
    return tuple(float(v) for v in data_mean), tuple(float(v) for v in data_std)
