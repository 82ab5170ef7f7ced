"""Super-resolution (paper Sec. 4.4, LDM-SR): the low-resolution image is concatenated to z_t (tau = identity).

- ``upscale``: x4 super-resolution, (B, 3, h, w) -> (B, 3, 4h, 4w); ``upscale_image``: n seeded samples per image,
  for the ``upscale`` command.
- ``bicubic_upscale``: the usual training-free baseline.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ldm_minimal.latent_diffusion import LatentDiffusion
from ldm_minimal.pipelines.sampling import (
    check_finite,
    check_sampling,
    on_device,
    require_conditioner,
    seeded_generator,
    size_unit,
)
from ldm_minimal.utils import check_images

__all__ = ["lowres_scale", "upscale", "upscale_image", "bicubic_upscale"]


def lowres_scale(ldm: LatentDiffusion) -> int:
    """The upscaling factor s of a super-resolution model (its conditioner's ``scale``; 4 for LDM-SR x4)."""
    return int(getattr(ldm.conditioner, "scale", ldm.cfg.conditioner_kwargs.get("scale", 4)))


def _check_lowres(ldm_sr: LatentDiffusion, lowres: Tensor) -> Tensor:
    """Validate a low-resolution batch (B, 3, h, w) for this model -> float32 on the model's device."""
    s = lowres_scale(ldm_sr)
    check_images(lowres, channels=ldm_sr.image_channels, name="lowres")
    h, w = lowres.shape[-2:]
    unit = size_unit(ldm_sr)
    if (s * h) % unit or (s * w) % unit:
        train_lr = ldm_sr.cfg.image_size // s
        raise ValueError(
            f"lowres has size {h}x{w}, so the output would be {s * h}x{s * w}, which this model cannot produce: the "
            f"output sides must be multiples of f * UNet downsampling = {unit}, i.e. low-resolution sides multiples "
            f"of {max(1, unit // s)}. The model was trained on {train_lr}x{train_lr} inputs ({ldm_sr.cfg.image_size}x"
            f"{ldm_sr.cfg.image_size} outputs); resize or pad the low-resolution image."
        )
    return lowres.to(ldm_sr.device, torch.float32)


def _super_resolve(ldm_sr: LatentDiffusion, lowres: Tensor, **sample_kwargs: Any) -> Tensor:
    """Checked ``lowres`` (B, 3, h, w) on the model's device -> ldm.sample at the latent size (s h / f, s w / f)."""
    s = lowres_scale(ldm_sr)
    h, w = lowres.shape[-2:]
    latent = (s * h // ldm_sr.f, s * w // ldm_sr.f)
    return ldm_sr.sample({"lowres": lowres}, latent_size=latent, **sample_kwargs)  # (B, 3, s h, s w)


def upscale(ldm_sr: LatentDiffusion, lowres: Tensor, **sample_kwargs: Any) -> Tensor:
    """x4 super-resolution (LDM-SR): ``lowres`` (B, 3, h, w) in [-1, 1] -> (B, 3, 4h, 4w) in [-1, 1].

    The model was trained at image_size (low-res image_size / 4); because the UNet is convolutional, larger
    low-resolution inputs work too, as long as 4h and 4w are multiples of f times the UNet's downsampling.
    ``sample_kwargs`` go to ``ldm.sample`` (sampler, steps, eta, guidance_scale, generator, progress, ...).
    """
    require_conditioner(ldm_sr, ("lowres",), "upscale()", hint="Train one with the 'shapes-sr' preset; "
                        "bicubic_upscale() is the training-free baseline.")
    lowres = _check_lowres(ldm_sr, lowres)
    if "latent_size" in sample_kwargs:
        raise ValueError("upscale() derives the latent size from lowres (x4 / f); do not pass latent_size.")
    return check_finite(_super_resolve(ldm_sr, lowres, **sample_kwargs), sample_kwargs.get("guidance_scale"))


def upscale_image(
    ldm_sr: LatentDiffusion,
    lowres: Tensor,
    n: int = 1,
    steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    guidance: float = 1.0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """x4 super-resolution (paper Sec. 4.4, LDM-SR): n samples per low-res image -> (B * n, 3, 4h, 4w), image-major."""
    require_conditioner(ldm_sr, ("lowres",), "upscale_image")
    check_sampling(steps, n, eta, sampler)
    ldm_sr = on_device(ldm_sr, device)
    y = _check_lowres(ldm_sr, lowres).repeat_interleave(n, dim=0)  # (B * n, 3, h, w)
    out = _super_resolve(ldm_sr, y, sampler=sampler, steps=steps, eta=eta, guidance_scale=float(guidance),
                         generator=seeded_generator(seed), progress=progress)
    return check_finite(out.float().cpu(), guidance)


def bicubic_upscale(lowres: Tensor, scale: int = 4) -> Tensor:
    """The bicubic baseline: (B, 3, h, w) -> (B, 3, scale*h, scale*w), clamped to [-1, 1]."""
    check_images(lowres, name="lowres")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer (4 for x4 super-resolution), got {scale!r}.")
    up = F.interpolate(lowres.float(), scale_factor=scale, mode="bicubic", align_corners=False)
    return up.clamp(-1.0, 1.0)
