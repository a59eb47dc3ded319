"""Built-in synthetic dataset: seeded, file-free, and hard enough that capacity and distillation matter.

Classes come in families of `family_size` that share perturbed copies of two parts (shape type, position,
colour, texture), plus one class-specific part. Samples add translation, part jitter and dropout, colour
jitter, a textured background, a distractor part from another class and occluders, so classes overlap
and a teacher's soft labels carry real within-family similarity ("dark knowledge").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .imageset import ImageSet

SIZE = 32
_PARTS = 3          # parts per class: 2 family-shared, 1 class-specific
_TYPES = 3          # 0 soft ellipse, 1 striped (Gabor-like) patch, 2 ring
_CHUNK = 1024       # samples rendered per pass (bounds memory, keeps tensors cache-friendlier)


def _u(g, shape, lo, hi):
    return torch.rand(shape, generator=g) * (hi - lo) + lo


def _prototypes(num_classes: int, family_size: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-class part parameters [C,P,...]; family parts are a shared base plus a class perturbation."""
    n_fam = math.ceil(num_classes / family_size)
    fam = torch.arange(num_classes) % n_fam  # interleaved: every contiguous class range mixes families
    base = {
        "cx": _u(g, (n_fam, _PARTS), 8, 24), "cy": _u(g, (n_fam, _PARTS), 8, 24),
        "sx": _u(g, (n_fam, _PARTS), 3.5, 8), "sy": _u(g, (n_fam, _PARTS), 3.5, 8),
        "ang": _u(g, (n_fam, _PARTS), 0, math.pi), "freq": _u(g, (n_fam, _PARTS), 0.12, 0.35),
        "col": torch.rand((n_fam, _PARTS, 3), generator=g),
        "typ": torch.randint(0, _TYPES, (n_fam, _PARTS), generator=g),
        "bg": torch.rand((n_fam, 3), generator=g),
    }
    p = {k: v[fam].clone() for k, v in base.items()}
    shape = (num_classes, _PARTS)
    p["cx"] += torch.randn(shape, generator=g) * 3.0
    p["cy"] += torch.randn(shape, generator=g) * 3.0
    p["sx"] *= torch.exp(torch.randn(shape, generator=g) * 0.2)
    p["sy"] *= torch.exp(torch.randn(shape, generator=g) * 0.2)
    p["ang"] += torch.randn(shape, generator=g) * 0.35
    p["freq"] *= torch.exp(torch.randn(shape, generator=g) * 0.2)
    p["col"] = (p["col"] + torch.randn((num_classes, _PARTS, 3), generator=g) * 0.25).clamp(0, 1)
    # the last part is class-specific: drawn afresh for every class
    last = _PARTS - 1
    p["cx"][:, last] = _u(g, num_classes, 7, 25)
    p["cy"][:, last] = _u(g, num_classes, 7, 25)
    p["sx"][:, last] = _u(g, num_classes, 3, 7)
    p["sy"][:, last] = _u(g, num_classes, 3, 7)
    p["ang"][:, last] = _u(g, num_classes, 0, math.pi)
    p["freq"][:, last] = _u(g, num_classes, 0.12, 0.35)
    p["col"][:, last] = torch.rand((num_classes, 3), generator=g)
    p["typ"][:, last] = torch.randint(0, _TYPES, (num_classes,), generator=g)
    return p


def _masks(cx, cy, sx, sy, ang, freq, phase, typ) -> torch.Tensor:
    """Soft masks [M,H,W] for M parts (all inputs [M]); rotation/scale folded into [M,W] rows for speed."""
    coords = torch.arange(SIZE, dtype=torch.float32) + 0.5
    dx, dy = coords - cx[:, None], coords - cy[:, None]            # [M,S]
    ca, sa = torch.cos(ang)[:, None], torch.sin(ang)[:, None]
    un = (dx * (ca / sx[:, None]))[:, None, :] + (dy * (sa / sx[:, None]))[:, :, None]   # u/sx  [M,S,S]
    vn = (dy * (ca / sy[:, None]))[:, :, None] - (dx * (sa / sy[:, None]))[:, None, :]   # v/sy
    r = vn.square_().addcmul_(un, un).sqrt_()
    out = torch.empty_like(r)
    for t in range(_TYPES):
        idx = torch.nonzero(typ == t).flatten()
        if not len(idx):
            continue
        rt = r[idx]
        if t == 2:      # ring
            m = rt.sub_(0.75).mul_(1 / 0.22).square_().neg_().exp_()
        else:           # soft ellipse, optionally striped along u
            m = rt.mul_(-6.0).add_(6.0).sigmoid_()
            if t == 1:
                k = (2 * math.pi * freq[idx] * sx[idx]).view(-1, 1, 1)
                m.mul_(torch.addcmul(phase[idx].view(-1, 1, 1), un[idx], k).cos_().mul_(0.5).add_(0.5))
        out[idx] = m
    return out


def _render(p: dict[str, torch.Tensor], labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Draw one sample per label: jittered class parts + distractor + occluder over a noisy background."""
    n, c = len(labels), p["cx"].shape[0]
    # background: family colour blended with a random one, low-frequency blotches
    bg = 0.5 * p["bg"][labels] + 0.5 * torch.rand((n, 3), generator=g)
    low = F.interpolate(torch.randn((n, 3, 5, 5), generator=g), size=(SIZE, SIZE), mode="bilinear",
                        align_corners=False)
    img = low.mul_(0.10).add_(bg.view(n, 3, 1, 1))

    # parts: the class's own (jittered, sometimes dropped) plus one distractor part from another class
    other = (labels + torch.randint(1, c, (n,), generator=g)) % c
    which = torch.randint(0, _PARTS, (n,), generator=g)
    sel = lambda key: torch.cat([p[key][labels], p[key][other, which].unsqueeze(1)], dim=1)  # noqa: E731
    m = _PARTS + 1
    shift_x, shift_y = _u(g, (n, 1), -4, 4), _u(g, (n, 1), -4, 4)
    cx = sel("cx") + shift_x + torch.randn((n, m), generator=g) * 1.2
    cy = sel("cy") + shift_y + torch.randn((n, m), generator=g) * 1.2
    cx[:, -1] = _u(g, n, 4, 28)   # distractor lands anywhere
    cy[:, -1] = _u(g, n, 4, 28)
    scale = torch.exp(torch.randn((n, m), generator=g) * 0.15)
    sx = sel("sx") * scale * torch.exp(torch.randn((n, m), generator=g) * 0.1)
    sy = sel("sy") * scale * torch.exp(torch.randn((n, m), generator=g) * 0.1)
    ang = sel("ang") + torch.randn((n, m), generator=g) * 0.25
    freq = sel("freq") * torch.exp(torch.randn((n, m), generator=g) * 0.1)
    phase = _u(g, (n, m), 0, 2 * math.pi)
    col = (sel("col") + torch.randn((n, m, 3), generator=g) * 0.1).clamp(0, 1)
    alpha = _u(g, (n, m), 0.75, 1.0)
    alpha[:, :_PARTS] *= (torch.rand((n, _PARTS), generator=g) > 0.1).float()       # part dropout
    alpha[:, -1] *= (torch.rand(n, generator=g) < 0.5).float() * 0.85                # distractor
    masks = _masks(cx.flatten(), cy.flatten(), sx.flatten(), sy.flatten(), ang.flatten(), freq.flatten(),
                   phase.flatten(), sel("typ").flatten()).view(n, m, 1, SIZE, SIZE)
    col = col.view(n, m, 3, 1, 1)
    # distractor goes under or over the class parts at random (alpha-compositing via lerp)
    on_top = (torch.rand(n, generator=g) < 0.5).float()
    img.lerp_(col[:, -1], masks[:, -1] * (alpha[:, -1] * (1 - on_top)).view(n, 1, 1, 1))
    for k in range(_PARTS):
        img.lerp_(col[:, k], masks[:, k].mul_(alpha[:, k].view(n, 1, 1, 1)))
    img.lerp_(col[:, -1], masks[:, -1].mul_((alpha[:, -1] * on_top).view(n, 1, 1, 1)))

    # occluder: a flat random rectangle on ~30% of samples
    coords = torch.arange(SIZE).view(1, SIZE)
    x0, y0 = torch.randint(0, SIZE - 6, (n, 1), generator=g), torch.randint(0, SIZE - 6, (n, 1), generator=g)
    w, h = torch.randint(5, 12, (n, 1), generator=g), torch.randint(5, 12, (n, 1), generator=g)
    box = (((coords >= x0) & (coords < x0 + w)).view(n, 1, SIZE) & ((coords >= y0) & (coords < y0 + h)).view(n, SIZE, 1))
    box &= (torch.rand(n, generator=g) < 0.3).view(n, 1, 1)
    img.lerp_(torch.rand((n, 3, 1, 1), generator=g), box.unsqueeze(1).float())

    # photometric jitter (contrast, brightness, per-channel gain) folded into one affine, then sensor noise
    contrast = _u(g, (n, 1, 1, 1), 0.7, 1.3)
    bright = torch.randn((n, 1, 1, 1), generator=g) * 0.07
    gain = 1 + torch.randn((n, 3, 1, 1), generator=g) * 0.06
    img.mul_(contrast * gain).add_((0.5 - 0.5 * contrast + bright) * gain)
    img.add_(torch.randn(img.shape, generator=g), alpha=0.05)
    return img.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def make_synthetic(num_classes: int = 30, train_per_class: int = 200, test_per_class: int = 50, seed: int = 0,
                   family_size: int = 5) -> tuple[ImageSet, ImageSet]:
    """(train, test) ImageSets; same class prototypes, independent sample streams per split."""
    if num_classes < 2 or train_per_class < 1 or test_per_class < 0:
        from .imageset import DataError

        raise DataError(f"make_synthetic needs num_classes >= 2, train_per_class >= 1, test_per_class >= 0; "
                        f"got {num_classes}, {train_per_class}, {test_per_class}")
    protos = _prototypes(num_classes, family_size, torch.Generator().manual_seed(int(seed)))
    names = [f"synthetic_{i:02d}" for i in range(num_classes)]
    out = []
    for split, per in ((1, train_per_class), (2, test_per_class)):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + split)
        labels = torch.arange(num_classes).repeat_interleave(per)
        # render in chunks to bound peak memory for large requests
        chunks = [_render(protos, labels[i : i + _CHUNK], g) for i in range(0, len(labels), _CHUNK)]
        images = torch.cat(chunks) if chunks else torch.zeros(0, 3, SIZE, SIZE, dtype=torch.uint8)
        out.append(ImageSet(images, labels, names))
    return out[0], out[1]
