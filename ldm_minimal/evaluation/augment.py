"""The judges' training augmentation: make real pictures look a little like generated ones, and vary them.

Generated pictures x = D(z) are a little soft and noisy, and a judge trained on clean renders only would charge
that to the diffusion model. So both judges (``ldm_minimal.evaluation.attributes``, ``.world_classifier``) see blur
and noise on part of each training batch (``augment_batch``), and are checked on blurred, noisy held-out pictures
(``blur_and_noise``). The emoji classifier, which must generalise from 1,726 training emoji to unseen ones, also gets
a random shift / zoom / flip (``random_affine``) and a mild colour jitter (``colour_jitter``; no hue change). The
shapes judge gets neither: a flip or shift moves the position it must read, and jitter blurs orange into yellow.

Images are (B, C, H, W) in [-1, 1]. The random functions draw from the ``generator`` they are given
(``blur_and_noise`` from its own, seeded), so a seeded run draws the same augmentation every time.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange, repeat


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Blur each image of x (B, C, H, W) with its own Gaussian of std sigma (B,) pixels (separable, edge-replicate)."""
    b, c, _, _ = x.shape
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)  # (k,)
    # G_sigma(d) = exp(-d^2 / (2 sigma^2)), normalised to sum 1 so flat regions (and colours) are unchanged
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma.float()[:, None].clamp_min(1e-3) ** 2))  # (B, k)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel = repeat(kernel, "b k -> (b c) 1 k", c=c).to(x.dtype)  # one depthwise filter per (image, channel)
    y = rearrange(x, "b c h w -> 1 (b c) h w")
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), kernel[:, :, None, :], groups=b * c)  # along W
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), kernel[:, :, :, None], groups=b * c)  # along H
    return rearrange(y, "1 (b c) h w -> b c h w", b=b)


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    p_blur: float = 0.5,
    max_sigma: float = 1.0,
    p_noise: float = 0.5,
    max_noise: float = 0.08,
) -> torch.Tensor:
    """Make real renders look a little like generated ones: mild blur and additive noise on part of the batch.

    x: (B, 3, H, W) in [-1, 1]. Per image: with probability p_blur a Gaussian blur with sigma ~ U(0.3, max_sigma)
    pixels; with probability p_noise Gaussian noise with std ~ U(0, max_noise) (in [-1, 1] units, 0.08 = 10 grey
    levels). No hue/saturation/brightness change: the colour names must stay separable.
    """
    b = x.shape[0]

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(x.device)

    blur = rand(b) < p_blur
    if blur.any():
        sigma = 0.3 + (max_sigma - 0.3) * rand(b)
        x = torch.where(blur[:, None, None, None], gaussian_blur(x, sigma), x)
    noisy = (rand(b) < p_noise).float() * max_noise * rand(b)  # (B,) std, 0 for clean images
    eps = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    return (x + noisy[:, None, None, None].to(x.dtype) * eps).clamp(-1.0, 1.0)


def blur_and_noise(sigma: float, noise_std: float, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The robustness check's degradation: every image blurred with ``sigma`` pixels plus Gaussian noise of std
    ``noise_std``, drawn from its own generator (seeded with ``seed``) across calls."""
    gen = torch.Generator().manual_seed(seed)

    def degrade(x: torch.Tensor) -> torch.Tensor:
        x = gaussian_blur(x, torch.full((x.shape[0],), sigma))
        return x + noise_std * torch.randn(x.shape, generator=gen).to(x.device, x.dtype)

    return degrade


def random_affine(x: torch.Tensor, generator: torch.Generator | None = None, max_shift: float = 2.0,
                  zoom: tuple[float, float] = (0.9, 1.1), p_flip: float = 0.5) -> torch.Tensor:
    """Per image: shift by up to ``max_shift`` pixels, zoom by a factor in ``zoom``, flip left-right with p_flip.

    x (B, C, H, W) in [-1, 1]; borders are extended (emoji sit on white, flags reach the edge). Bilinear.
    """
    b, _, h, w = x.shape

    def rand(n: int) -> torch.Tensor:
        return torch.rand(n, generator=generator)

    s = 1.0 / (zoom[0] + (zoom[1] - zoom[0]) * rand(b))  # grid scale = 1 / zoom
    flip = torch.where(rand(b) < p_flip, -1.0, 1.0)
    tx, ty = (2 * rand(b) - 1) * max_shift * 2 / w, (2 * rand(b) - 1) * max_shift * 2 / h  # pixels -> [-1, 1] units
    zeros = torch.zeros(b)
    # theta maps output coordinates to input coordinates: [[s * flip, 0, tx], [0, s, ty]]
    theta = torch.stack([torch.stack([s * flip, zeros, tx], 1), torch.stack([zeros, s, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.device, torch.float32), list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(x.dtype)


def colour_jitter(x: torch.Tensor, generator: torch.Generator | None = None, brightness: float = 0.1,
                  contrast: float = 0.15, saturation: float = 0.2) -> torch.Tensor:
    """Mild per-image brightness (+-), contrast and saturation (x) changes, in [-1, 1] units; no hue change."""
    b = x.shape[0]

    def rand(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(b, generator=generator)).to(x.device, x.dtype)[:, None, None, None]

    grey = repeat(x.mean(dim=1, keepdim=True), "b 1 h w -> b c h w", c=x.shape[1])  # (B, C, H, W)
    x = grey + rand(1 - saturation, 1 + saturation) * (x - grey)  # saturation: away from / towards grey
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + rand(1 - contrast, 1 + contrast) * (x - mean)  # contrast around the picture's mean
    x = x + rand(-brightness, brightness)  # brightness
    return x.clamp(-1.0, 1.0)
