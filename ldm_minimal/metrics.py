"""Metrics for reconstructions and restorations (PSNR, SSIM, LPIPS, sharpness).

PSNR and SSIM come from torchmetrics (we never hand-write what a well-kept library does); LPIPS is ours
(``ldm_minimal.lpips``). Images are (B, C, H, W) in [-1, 1]; PSNR and SSIM are computed on [0, 1].
The paper reports these for its first stages in Table 8 (App. D.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, (B,). Data range 1 after mapping [-1, 1] -> [0, 1].

    Identical images have infinite PSNR; we cap at 100 dB so that averages over a batch stay finite.
    """
    a, b = (x.float().clamp(-1, 1) + 1) / 2, (y.float().clamp(-1, 1) + 1) / 2
    return peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3)).clamp(max=100.0)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5), (B,)."""
    a, b = (x.float().clamp(-1, 1) + 1) / 2, (y.float().clamp(-1, 1) + 1) / 2
    return structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")


def high_frequency_energy(x: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Spectral energy above ``cutoff`` cycles/pixel (Nyquist = 0.5), per image, (B,).

    A blurry reconstruction loses exactly this energy; the ratio of a model's value to the originals' value is
    a one-number sharpness score (1.0 = as sharp as the data, < 1 blurrier, > 1 noisier/over-sharpened).
    """
    x = x.float()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    spec = torch.fft.fft2(x).abs() ** 2  # (B, C, H, W)
    fy = torch.fft.fftfreq(x.shape[-2], device=x.device).abs()
    fx = torch.fft.fftfreq(x.shape[-1], device=x.device).abs()
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)  # (H, W) in cycles/pixel
    high = (radius > cutoff).to(spec.dtype)
    return (spec * high).sum(dim=(1, 2, 3)) / (x.shape[-2] * x.shape[-1])


def sharpness_ratio(x_hat: torch.Tensor, x: torch.Tensor, cutoff: float = 0.25) -> float:
    """High-frequency energy of reconstructions over that of the originals (summed over the batch)."""
    return float(high_frequency_energy(x_hat, cutoff).sum() / high_frequency_energy(x, cutoff).sum().clamp_min(1e-12))


@dataclass
class RunningMean:
    """Accumulates per-sample values over batches."""

    total: float = 0.0
    count: int = 0

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().float().flatten()
        self.total += float(values.sum())
        self.count += values.numel()

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)


@dataclass
class ReconstructionMetrics:
    """Collects PSNR, SSIM, LPIPS (optional) and the sharpness ratio over a stream of (x, x_hat) batches."""

    lpips: torch.nn.Module | None = None
    psnr: RunningMean = field(default_factory=RunningMean)
    ssim: RunningMean = field(default_factory=RunningMean)
    lpips_mean: RunningMean = field(default_factory=RunningMean)
    hf_model: float = 0.0
    hf_data: float = 0.0

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        x, x_hat = x.float(), x_hat.float().clamp(-1, 1)
        self.psnr.update(psnr(x_hat, x))
        self.ssim.update(ssim(x_hat, x))
        if self.lpips is not None:
            self.lpips_mean.update(self.lpips(x_hat, x))
        self.hf_model += float(high_frequency_energy(x_hat).sum())
        self.hf_data += float(high_frequency_energy(x).sum())

    def compute(self) -> dict[str, float]:
        out = {"psnr": self.psnr.mean, "ssim": self.ssim.mean, "sharpness": self.hf_model / max(self.hf_data, 1e-12)}
        if self.lpips is not None:
            out["lpips"] = self.lpips_mean.mean
        out["n"] = self.psnr.count
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else float("nan")) for k, v in out.items()}
