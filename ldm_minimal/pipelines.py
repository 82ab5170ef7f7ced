"""Image-to-image pipelines on a LatentDiffusion model: inpainting and x4 super-resolution (paper Sec. 4.4-4.5).

- ``inpaint``: a model trained with the inpainting conditioner (the masked image's latent and the mask are
  concatenated to z_t) fills the hole; the result is composited in pixel space,
  x_out = (1 - m) * x + m * x_hat, so the known region is exactly the input (the decoder never touches it).
- ``inpaint_baseline``: the training-free baseline with an *unconditional* model: at every sampling step the known
  region of the latent is replaced by the forward-noised known latent q(z_t | z_0) (the samplers' ``inpaint``
  argument), then the same pixel composite. The paper's inpainting LDM is compared against such baselines.
- ``upscale``: LDM-SR, conditioned on the low-resolution image concatenated to z_t (tau = identity); returns
  (B, 3, 4h, 4w). ``bicubic_upscale`` is the usual baseline.

Masks (the ldm_minimal.masks convention): (B, 1, H, W), (B, H, W) or (1, 1, H, W) (shared), values in [0, 1],
1 = hole (to generate), 0 = keep. Soft masks are binarised at 0.5 (the models are trained on binary masks).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ldm_minimal.latent_diffusion import LatentDiffusion
from ldm_minimal.masks import check_inpainting_mask, downsample_mask
from ldm_minimal.utils import check_images

__all__ = ["inpaint", "inpaint_baseline", "upscale", "bicubic_upscale", "latent_mask"]


# --------------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------------


def _check_model(ldm: Any, conditioner: str | None, task: str, hint: str) -> None:
    if not isinstance(ldm, LatentDiffusion):
        raise TypeError(f"{task} needs a LatentDiffusion model, got {type(ldm).__name__}.")
    have = ldm.cfg.conditioner
    if have != conditioner:
        want = "an unconditional model (conditioner=None)" if conditioner is None else f"conditioner={conditioner!r}"
        raise ValueError(
            f"{task} needs a model trained with {want}, but this one has conditioner={have!r}. {hint}"
        )


def _check_mask(mask: Tensor, image: Tensor) -> Tensor:
    """Validate a pixel mask against the image; return it binarised as (B, 1, H, W) float on the image's device."""
    if isinstance(mask, Tensor) and mask.dtype == torch.bool:
        mask = mask.float()
    m = check_inpainting_mask(mask, image)  # (B, 1, H, W) float, values checked to lie in [0, 1]
    # the models are trained on binary holes
    return (m >= 0.5).float()


def latent_mask(mask: Tensor, f: int) -> Tensor:
    """Pixel mask (B, 1, H, W) -> latent mask (B, 1, H/f, W/f): a latent cell is a hole if any of its pixels is."""
    return downsample_mask(mask, (mask.shape[-2] // f, mask.shape[-1] // f))


def _composite(image: Tensor, x_hat: Tensor, mask: Tensor) -> Tensor:
    # x_out = (1 - m) * x + m * x_hat: exactly the input where m = 0
    return (1 - mask) * image + mask * x_hat.to(image.dtype)


# --------------------------------------------------------------------------------------------------------------
# Inpainting
# --------------------------------------------------------------------------------------------------------------


def inpaint(ldm: LatentDiffusion, image: Tensor, mask: Tensor, **sample_kwargs: Any) -> Tensor:
    """Fill the hole of ``image`` (B, 3, H, W) in [-1, 1] where ``mask`` is 1, with an inpainting LDM.

    The model sees the masked image's latent and the mask (concat conditioning) and samples x_hat; the result is
    (1 - m) * x + m * x_hat, so the known region is returned unchanged. ``sample_kwargs`` go to
    ``ldm.sample`` (sampler, steps, eta, guidance_scale, generator, progress, ...). Returns (B, 3, H, W).
    """
    _check_model(ldm, "inpaint", "inpaint()", "Train one with the 'shapes-inpaint' preset, or use inpaint_baseline() "
                 "with an unconditional model.")
    image = ldm._check_images(image)
    m = _check_mask(mask, image)
    if "latent_size" in sample_kwargs:
        raise ValueError("inpaint() samples at the image's latent size; do not pass latent_size (resize the image).")
    x_hat = ldm.sample({"image": image, "mask": m}, **sample_kwargs)  # (B, 3, H, W)
    return _composite(image, x_hat, m)


def inpaint_baseline(
    ldm_uncond: LatentDiffusion, image: Tensor, mask: Tensor, *, encode_sample: bool = False, **sample_kwargs: Any
) -> Tensor:
    """The training-free inpainting baseline with an unconditional model (no inpainting training at all).

    A conditional model with a cross-attention or class condition also works: it samples from its null
    condition, which is the unconditional model that classifier-free guidance training trains alongside.
    z_0 = scale_factor * E(x) (the posterior mode unless ``encode_sample``); the latent mask marks a cell as a
    hole if any of its f x f pixels is one; the sampler replaces the known latent region by q(z_t | z_0) at every
    step (z_0 exactly at the end); then the pixel composite (1 - m) * x + m * x_hat. Returns (B, 3, H, W).
    """
    if not isinstance(ldm_uncond, LatentDiffusion):
        raise TypeError(f"inpaint_baseline() needs a LatentDiffusion model, got {type(ldm_uncond).__name__}.")
    cond = ldm_uncond.conditioner
    if cond is not None and (cond.mode == "concat" or ldm_uncond.cfg.cond_drop_prob == 0):
        raise ValueError(
            f"inpaint_baseline() needs an unconditional model, or a conditional one trained with condition dropout "
            f"(its null condition is then an unconditional model); this one has conditioner="
            f"{ldm_uncond.cfg.conditioner!r} and cond_drop_prob={ldm_uncond.cfg.cond_drop_prob}. Use e.g. the "
            "'shapes-uncond' or 'shapes-t2i' preset, or inpaint() with an inpainting model."
        )
    image = ldm_uncond._check_images(image)
    m = _check_mask(mask, image)
    if "latent_size" in sample_kwargs:
        raise ValueError("inpaint_baseline() samples at the image's latent size; do not pass latent_size.")
    z0 = ldm_uncond.encode(image, sample=encode_sample, generator=sample_kwargs.get("generator"))  # (B, C, h, w)
    m_lat = latent_mask(m, ldm_uncond.f)  # (B, 1, h, w)
    x_hat = ldm_uncond.sample(
        image.shape[0], latent_size=tuple(z0.shape[-2:]), inpaint={"z0": z0, "mask": m_lat}, **sample_kwargs
    )
    return _composite(image, x_hat, m)


# --------------------------------------------------------------------------------------------------------------
# Super-resolution
# --------------------------------------------------------------------------------------------------------------


def _lowres_scale(ldm: LatentDiffusion) -> int:
    return int(getattr(ldm.conditioner, "scale", ldm.cfg.conditioner_kwargs.get("scale", 4)))


def upscale(ldm_sr: LatentDiffusion, lowres: Tensor, **sample_kwargs: Any) -> Tensor:
    """x4 super-resolution (LDM-SR): ``lowres`` (B, 3, h, w) in [-1, 1] -> (B, 3, 4h, 4w) in [-1, 1].

    The model was trained at image_size (low-res image_size / 4); because the UNet is convolutional, larger
    low-resolution inputs work too, as long as 4h and 4w are multiples of f times the UNet's downsampling.
    """
    _check_model(ldm_sr, "lowres", "upscale()", "Train one with the 'shapes-sr' preset; bicubic_upscale() is the "
                 "training-free baseline.")
    s = _lowres_scale(ldm_sr)
    check_images(lowres, channels=ldm_sr.image_channels, name="lowres")
    h, w = lowres.shape[-2:]
    unit = ldm_sr.f * ldm_sr.unet.cfg.downsampling
    if (s * h) % unit or (s * w) % unit:
        train_lr = ldm_sr.cfg.image_size // s
        raise ValueError(
            f"lowres has size {h}x{w}, so the output would be {s * h}x{s * w}, which this model cannot produce: the "
            f"output sides must be multiples of f * UNet downsampling = {unit}, i.e. low-resolution sides multiples "
            f"of {max(1, unit // s)}. The model was trained on {train_lr}x{train_lr} inputs ({ldm_sr.cfg.image_size}x"
            f"{ldm_sr.cfg.image_size} outputs); resize or pad the low-resolution image."
        )
    if "latent_size" in sample_kwargs:
        raise ValueError("upscale() derives the latent size from lowres (x4 / f); do not pass latent_size.")
    lowres = lowres.to(ldm_sr.device, torch.float32)
    latent = (s * h // ldm_sr.f, s * w // ldm_sr.f)
    return ldm_sr.sample({"lowres": lowres}, latent_size=latent, **sample_kwargs)


def bicubic_upscale(lowres: Tensor, scale: int = 4) -> Tensor:
    """The bicubic baseline: (B, 3, h, w) -> (B, 3, scale*h, scale*w), clamped to [-1, 1]."""
    check_images(lowres, name="lowres")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer (4 for x4 super-resolution), got {scale!r}.")
    up = F.interpolate(lowres.float(), scale_factor=scale, mode="bicubic", align_corners=False)
    return up.clamp(-1.0, 1.0)
