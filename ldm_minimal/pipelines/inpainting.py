"""Inpainting (paper Sec. 4.5): fill the hole of an image, keeping the known pixels exactly.

- ``inpaint``: a model trained with the inpainting conditioner (the masked image's latent and the mask are
  concatenated to z_t) fills the hole; the result is composited in pixel space,
  x_out = (1 - m) * x + m * x_hat, so the known region is exactly the input (the decoder never touches it).
- ``inpaint_image``: the same with n seeded samples per image, for the ``inpaint`` command.
- ``inpaint_baseline``: the training-free baseline with an *unconditional* model: at every sampling step the known
  region of the latent is replaced by the forward-noised known latent q(z_t | z_0) (the samplers' ``inpaint``
  argument), then the same pixel composite. The paper's inpainting LDM is compared against such baselines.

Masks (the ldm_minimal.masks convention): (B, 1, H, W), (B, H, W) or (1, 1, H, W) (shared), values in [0, 1],
1 = hole (to generate), 0 = keep. Soft masks are binarised at 0.5 (the models are trained on binary masks).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ldm_minimal.latent_diffusion import LatentDiffusion
from ldm_minimal.masks import check_inpainting_mask, downsample_mask
from ldm_minimal.pipelines.sampling import (
    GenerationError,
    check_finite,
    check_sampling,
    on_device,
    require_conditioner,
    require_model,
    seeded_generator,
)

__all__ = ["inpaint", "inpaint_image", "inpaint_baseline", "latent_mask"]


def _binary_mask(mask: Tensor, image: Tensor) -> Tensor:
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


def _fill(ldm: LatentDiffusion, image: Tensor, m: Tensor, **sample_kwargs: Any) -> Tensor:
    """Checked image (B, 3, H, W) and binary mask (B, 1, H, W) on the model's device -> the composited result."""
    x_hat = ldm.sample({"image": image, "mask": m}, **sample_kwargs)  # (B, 3, H, W)
    return _composite(image, x_hat, m)


def inpaint(ldm: LatentDiffusion, image: Tensor, mask: Tensor, **sample_kwargs: Any) -> Tensor:
    """Fill the hole of ``image`` (B, 3, H, W) in [-1, 1] where ``mask`` is 1, with an inpainting LDM.

    The model sees the masked image's latent and the mask (concat conditioning) and samples x_hat; the result is
    (1 - m) * x + m * x_hat, so the known region is returned unchanged. ``sample_kwargs`` go to
    ``ldm.sample`` (sampler, steps, eta, guidance_scale, generator, progress, ...). Returns (B, 3, H, W).
    """
    require_conditioner(ldm, ("inpaint",), "inpaint()", hint="Train one with the 'shapes-inpaint' preset, or use "
                        "inpaint_baseline() with an unconditional model.")
    image = ldm.prepare_images(image)
    m = _binary_mask(mask, image)
    if "latent_size" in sample_kwargs:
        raise ValueError("inpaint() samples at the image's latent size; do not pass latent_size (resize the image).")
    return check_finite(_fill(ldm, image, m, **sample_kwargs), sample_kwargs.get("guidance_scale"))


def inpaint_image(
    ldm: LatentDiffusion,
    image: Tensor,
    mask: Tensor,
    n: int = 1,
    guidance: float = 1.0,
    steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """Inpainting (paper Sec. 4.5): n fillings of the hole (mask 1) of each image -> (B * n, 3, H, W), image-major.

    image (B, 3, H, W) in [-1, 1], mask (B or 1, 1, H, W). The known pixels are returned exactly (the composite
    (1 - m) * x + m * x_hat). Guidance scale s, DDIM/DDPM settings and the seed as in ``text_to_image``; CPU output.
    """
    require_conditioner(ldm, ("inpaint",), "inpaint_image")
    check_sampling(steps, n, eta, sampler)
    ldm = on_device(ldm, device)
    image = ldm.prepare_images(image)  # (B, 3, H, W) float32 on the model's device
    m = _binary_mask(mask, image)  # (B, 1, H, W)
    if not bool(m.any()):
        raise GenerationError("The mask has no hole (no value >= 0.5): mark the pixels to fill with 1 (white).")
    x = image.repeat_interleave(n, dim=0)  # (B * n, 3, H, W)
    out = _fill(ldm, x, m.repeat_interleave(n, dim=0), sampler=sampler, steps=steps, eta=eta,
                guidance_scale=float(guidance), generator=seeded_generator(seed), progress=progress)
    return check_finite(out.float().cpu(), guidance)


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
    require_model(ldm_uncond, "inpaint_baseline()")
    cond = ldm_uncond.conditioner
    if cond is not None and (cond.mode == "concat" or ldm_uncond.cfg.cond_drop_prob == 0):
        raise ValueError(
            f"inpaint_baseline() needs an unconditional model, or a conditional one trained with condition dropout "
            f"(its null condition is then an unconditional model); this one has conditioner="
            f"{ldm_uncond.cfg.conditioner!r} and cond_drop_prob={ldm_uncond.cfg.cond_drop_prob}. Use e.g. the "
            "'shapes-uncond' or 'shapes-t2i' preset, or inpaint() with an inpainting model."
        )
    image = ldm_uncond.prepare_images(image)
    m = _binary_mask(mask, image)
    if "latent_size" in sample_kwargs:
        raise ValueError("inpaint_baseline() samples at the image's latent size; do not pass latent_size.")
    z0 = ldm_uncond.encode(image, sample=encode_sample, generator=sample_kwargs.get("generator"))  # (B, C, h, w)
    m_lat = latent_mask(m, ldm_uncond.f)  # (B, 1, h, w)
    x_hat = ldm_uncond.sample(
        image.shape[0], latent_size=tuple(z0.shape[-2:]), inpaint={"z0": z0, "mask": m_lat}, **sample_kwargs
    )
    return _composite(image, x_hat, m)
