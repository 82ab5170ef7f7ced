"""The diffusion process in latent space: noise schedules, q(z_t | z_0) and the training objective.

Latent Diffusion (Rombach et al., CVPR 2022, Sec. 3.2) runs an ordinary DDPM (Ho et al., 2020) on the latent
z = E(x) of a frozen autoencoder instead of on pixels. Everything in this file is therefore the plain DDPM
machinery, written for a tensor z of any shape (B, C, h, w):

- a variance schedule beta_1 .. beta_T (T = 1000) and its running product alpha_bar_t = prod_s (1 - beta_s);
- the forward process q(z_t | z_0) = N(sqrt(alpha_bar_t) z_0, (1 - alpha_bar_t) I), sampled in closed form;
- the objective of Eq. (2) of the paper,  L_LDM = E_{E(x), eps ~ N(0, I), t} || eps - eps_theta(z_t, t) ||^2,
  with t ~ U{0, ..., T-1}, optionally with an L1 distance, and optionally with the "v" target
  (Salimans & Ho, 2022) instead of eps.

Indexing convention: timesteps are 0-based like in all reference code. ``alpha_bar[0]`` is the first noise level
(the paper's t = 1) and ``alpha_bar[T - 1]`` the last; "clean data" has no index (alpha_bar = 1).

Precision: the schedule is computed in float64. The module keeps float32 *buffers* (so it can follow a model onto
any device, MPS included) and a float64 CPU copy that the samplers use for their per-step scalar coefficients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn as nn

from ldm_minimal.utils import min_max, unknown_name_error

__all__ = [
    "BETA_SCHEDULES",
    "DIFFUSION_PRESETS",
    "DiffusionConfig",
    "GaussianDiffusion",
    "diffusion_config",
    "make_beta_schedule",
]

BETA_SCHEDULES = ("scaled_linear", "linear", "cosine")
PARAMETERIZATIONS = ("eps", "v")
LOSS_TYPES = ("mse", "l1")


def make_beta_schedule(
    name: str, T: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.0195, cosine_s: float = 8e-3
) -> torch.Tensor:
    """The variance schedule beta_1 .. beta_T as a float64 tensor of shape (T,), always on the CPU (so that the
    schedule is the same under any ambient device context, e.g. the meta device a checkpoint's shapes are checked on).

    - ``"scaled_linear"``: linear in sqrt(beta), the LDM default (alpha_bar_T = 1.42e-4 for 0.0015 .. 0.0195).
      NOTE the names: the CompVis reference calls this one ``"linear"`` and calls plain linear ``"sqrt_linear"``
      (the names are swapped there). We use diffusers' names, which describe what the schedules do.
    - ``"linear"``: plain linspace(beta_start, beta_end) (Ho et al., 2020, with 1e-4 .. 0.02).
    - ``"cosine"``: Nichol & Dhariwal (2021), alpha_bar(t) = cos^2(((t / T + s) / (1 + s)) pi / 2) with s = 8e-3,
      betas clipped at 0.999. beta_start and beta_end are ignored.
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T (the number of diffusion steps) must be a positive integer, got {T!r}. The paper uses T=1000.")
    if name in ("scaled_linear", "linear"):
        if not (0.0 < beta_start <= beta_end < 1.0):
            raise ValueError(
                f"Need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}. "
                "The LDM default is beta_start=0.0015, beta_end=0.0195."
            )
    if name == "scaled_linear":
        # beta_t = (sqrt(b_start) + (t / (T-1)) (sqrt(b_end) - sqrt(b_start)))^2
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64, device="cpu") ** 2
    elif name == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64, device="cpu")
    elif name == "cosine":
        steps = torch.arange(T + 1, dtype=torch.float64, device="cpu") / T  # (T+1,) = t / T for t = 0..T
        # alpha_bar(t) = cos^2( (t/T + s) / (1 + s) * pi / 2 )
        alpha_bar = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        # beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped so that the last steps stay finite
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(min=0.0, max=0.999)
    else:
        raise unknown_name_error("beta schedule", name, BETA_SCHEDULES)
    return betas


@dataclass
class DiffusionConfig:
    """Settings of the latent diffusion process (paper Sec. 3.2; App. E: T=1000, a 'linear' schedule; 0.0015..0.0195 from the reference configs, e.g. cin256-v2.yaml)."""

    T: int = 1000
    schedule: str = "scaled_linear"  # "scaled_linear" | "linear" | "cosine"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    parameterization: str = "eps"  # what the network predicts: "eps" (the paper) | "v"
    loss_type: str = "mse"  # "mse" (Eq. 2) | "l1"

    def __post_init__(self) -> None:
        if self.schedule not in BETA_SCHEDULES:
            raise unknown_name_error("beta schedule", self.schedule, BETA_SCHEDULES)
        if self.parameterization not in PARAMETERIZATIONS:
            raise unknown_name_error("parameterization", self.parameterization, PARAMETERIZATIONS)
        if self.loss_type not in LOSS_TYPES:
            raise unknown_name_error("loss type", self.loss_type, LOSS_TYPES)


DIFFUSION_PRESETS: dict[str, DiffusionConfig] = {
    # The LDM paper's models (alpha_bar_T = 1.42e-4).
    "ldm": DiffusionConfig(),
    # Stable Diffusion v1's milder schedule (alpha_bar_T = 4.66e-3).
    "sd": DiffusionConfig(beta_start=0.00085, beta_end=0.012),
}


def diffusion_config(name: str, **overrides: Any) -> DiffusionConfig:
    """Look up a preset by name ("ldm", "sd"); keyword arguments override single fields."""
    if name not in DIFFUSION_PRESETS:
        raise unknown_name_error("diffusion preset", name, DIFFUSION_PRESETS)
    return replace(DIFFUSION_PRESETS[name], **overrides)


class GaussianDiffusion(nn.Module):
    """DDPM's forward process and training loss, applied to latents z (paper Sec. 3.2, Eq. 2).

    Holds no learnable parameters: only the schedule. ``model_fn(z_t, t, **cond)`` is the denoising network
    eps_theta (or v_theta); it is passed in, not owned, so the same object serves any UNet.

    Every ``t`` argument is either a (B,) integer tensor (on any device) or a Python int (the same step for the
    whole batch; the coefficients then come from the float64 schedule, which the samplers rely on).
    """

    def __init__(self, cfg: DiffusionConfig | str = "ldm") -> None:
        super().__init__()
        if isinstance(cfg, str):
            cfg = diffusion_config(cfg)
        self.cfg = cfg
        self.T = cfg.T
        self.parameterization = cfg.parameterization

        betas = make_beta_schedule(cfg.schedule, cfg.T, cfg.beta_start, cfg.beta_end)  # (T,) float64
        alphas = 1.0 - betas
        # alpha_bar_t = prod_{s <= t} (1 - beta_s)
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        # alpha_bar_{t-1}, with alpha_bar_{-1} = 1 (clean data) before the first step
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64, device="cpu"), alphas_cumprod[:-1]])
        # DDPM Eq. (7): the posterior q(z_{t-1} | z_t, z_0) = N(mu~_t, beta~_t I) with
        # beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t   ("fixed_small" variance)
        posterior_variance = (1 - alphas_cumprod_prev) / (1 - alphas_cumprod) * betas
        # mu~_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) z_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) z_t
        posterior_mean_coef1 = alphas_cumprod_prev.sqrt() * betas / (1 - alphas_cumprod)
        posterior_mean_coef2 = alphas.sqrt() * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)

        # float64 copies on the CPU (plain attributes: .to(device) leaves them alone) for exact scalar coefficients
        self.betas64 = betas
        self.alphas_cumprod64 = alphas_cumprod

        tables = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_mean_coef1": posterior_mean_coef1,
            "posterior_mean_coef2": posterior_mean_coef2,
        }
        # Derived from the config, so not saved in checkpoints (persistent=False).
        for name, table in tables.items():
            self.register_buffer(name, table.to(torch.float32), persistent=False)

    # ------------------------------------------------------------------ helpers
    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"T={c.T}, schedule={c.schedule!r}, beta=({c.beta_start}, {c.beta_end}), "
            f"parameterization={c.parameterization!r}, loss={c.loss_type!r}"
        )

    def _check_t(self, t: torch.Tensor | int, batch: int) -> None:
        if isinstance(t, int):
            if not 0 <= t < self.T:
                raise ValueError(f"Timestep t={t} is out of range: use an integer in [0, {self.T - 1}] (T={self.T}).")
            return
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(
                "t must be a Python int or an integer tensor of shape (B,) (e.g. torch.randint(0, T, (B,))), "
                f"got {type(t).__name__}{'' if not isinstance(t, torch.Tensor) else ' of dtype ' + str(t.dtype)}."
            )
        if t.ndim != 1 or t.shape[0] != batch:
            raise ValueError(
                f"t must have shape (B,) = ({batch},), one timestep per sample, got shape {tuple(t.shape)}. "
                f"Use torch.full(({batch},), t) for a shared timestep."
            )
        # Values are checked on the CPU only: reading a GPU tensor here would stall the device at every step, and
        # there the table lookup (gather) rejects an out-of-range index itself.
        lo, hi = min_max(t) if t.numel() and t.device.type == "cpu" else (0, 0)
        if lo < 0 or hi >= self.T:
            raise ValueError(f"Timesteps must lie in [0, {self.T - 1}] (T={self.T}), got values in [{lo:g}, {hi:g}].")

    def _extract(self, name: str, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor | float:
        """Table ``name`` at timesteps t, shaped to broadcast against x: (B, 1, ..., 1), on x's device.

        For a Python int t, a Python float computed from the float64 schedule.
        """
        self._check_t(t, x.shape[0])
        if isinstance(t, int):
            return float(self._table64(name)[t])
        table = getattr(self, name).to(x.device)  # (T,)
        out = table.gather(0, t.to(device=x.device, dtype=torch.long))  # (B,)
        return out.reshape(x.shape[0], *([1] * (x.ndim - 1)))  # (B, 1, ..., 1)

    def _table64(self, name: str) -> torch.Tensor:
        abar, betas = self.alphas_cumprod64, self.betas64
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64, device="cpu"), abar[:-1]])
        if name == "alphas_cumprod":
            return abar
        if name == "sqrt_alphas_cumprod":
            return abar.sqrt()
        if name == "sqrt_one_minus_alphas_cumprod":
            return (1 - abar).sqrt()
        if name == "betas":
            return betas
        if name == "alphas_cumprod_prev":
            return abar_prev
        raise KeyError(name)

    def alpha_bar(self, t: int) -> float:
        """alpha_bar_t as a float64 Python number (t in 0..T-1; t = -1 means clean data, alpha_bar = 1)."""
        if t == -1:
            return 1.0
        self._check_t(int(t), 1)
        return float(self.alphas_cumprod64[int(t)])

    # ------------------------------------------------------------------ forward process
    def q_sample(self, z0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """Sample z_t ~ q(z_t | z_0) in closed form (DDPM Eq. 4). z0, noise: (B, C, h, w) -> (B, C, h, w)."""
        if noise.shape != z0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)} but z0 has {tuple(z0.shape)}; they must match.")
        sa = self._extract("sqrt_alphas_cumprod", t, z0)
        s1ma = self._extract("sqrt_one_minus_alphas_cumprod", t, z0)
        # z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps
        return sa * z0 + s1ma * noise.to(z0.dtype)

    def v_target(self, z0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """The "velocity" target of Salimans & Ho (2022): v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) z_0."""
        sa = self._extract("sqrt_alphas_cumprod", t, z0)
        s1ma = self._extract("sqrt_one_minus_alphas_cumprod", t, z0)
        # v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) z_0
        return sa * noise - s1ma * z0

    # ------------------------------------------------------------------ converting the network's output
    def _as_float(self, model_out: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        if model_out.shape != x_t.shape:
            raise ValueError(
                f"The model output has shape {tuple(model_out.shape)} but x_t has {tuple(x_t.shape)}: the network "
                f"must predict one value per latent element (out_channels = in latent channels)."
            )
        # bf16 outputs under autocast: do the arithmetic in x_t's (full) precision.
        dtype = x_t.dtype if x_t.dtype in (torch.float32, torch.float64) else torch.float32
        return model_out.to(dtype)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, model_out: torch.Tensor) -> torch.Tensor:
        """The network's estimate of z_0 from z_t (for either parameterization). Shapes (B, C, h, w)."""
        out = self._as_float(model_out, x_t)
        x = x_t.to(out.dtype)
        sa = self._extract("sqrt_alphas_cumprod", t, x)
        s1ma = self._extract("sqrt_one_minus_alphas_cumprod", t, x)
        if self.parameterization == "eps":
            # DDPM Eq. (15): z0_hat = (z_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t)
            return (x - s1ma * out) / sa
        # z0_hat = sqrt(alpha_bar_t) z_t - sqrt(1 - alpha_bar_t) v_theta
        return sa * x - s1ma * out

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor | int, model_out: torch.Tensor) -> torch.Tensor:
        """The network's estimate of the noise eps in z_t (for either parameterization). Shapes (B, C, h, w)."""
        out = self._as_float(model_out, x_t)
        if self.parameterization == "eps":
            return out
        x = x_t.to(out.dtype)
        sa = self._extract("sqrt_alphas_cumprod", t, x)
        s1ma = self._extract("sqrt_one_minus_alphas_cumprod", t, x)
        # eps_hat = sqrt(alpha_bar_t) v_theta + sqrt(1 - alpha_bar_t) z_t
        return sa * out + s1ma * x

    def predict_v(self, x_t: torch.Tensor, t: torch.Tensor | int, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """v from an (x0, eps) pair; the inverse of predict_x0/predict_eps for the "v" parameterization."""
        return self.v_target(x0, t, eps)

    # ------------------------------------------------------------------ the objective
    def training_losses(
        self,
        model_fn: Callable[..., torch.Tensor],
        z0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        """L_LDM of Eq. (2) as a scalar: the mean over the batch and every latent element.

        z0: (B, C, h, w) latents (already scaled by the scale factor). When not given, t ~ U{0..T-1} and
        eps ~ N(0, I) are drawn with ``generator`` on the generator's device (the CPU by default, so a seed gives
        the same draws on every device) and moved to z0's device. ``model_fn(z_t, t, **model_kwargs)`` returns
        eps_theta (or v_theta for parameterization "v").
        """
        if not isinstance(z0, torch.Tensor) or z0.ndim < 2:
            raise ValueError("z0 must be a latent batch tensor of shape (B, C, h, w).")
        b = z0.shape[0]
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if t is None:
            # t ~ U{0, ..., T-1}
            t = torch.randint(0, self.T, (b,), generator=generator, device=gen_device)
        t = t.to(z0.device)
        if noise is None:
            # eps ~ N(0, I)
            noise = torch.randn(z0.shape, generator=generator, device=gen_device, dtype=torch.float32)
        noise = noise.to(device=z0.device, dtype=z0.dtype)
        z_t = self.q_sample(z0, t, noise)  # (B, C, h, w)
        model_out = model_fn(z_t, t, **model_kwargs)
        if model_out.shape != z0.shape:
            raise ValueError(
                f"model_fn returned shape {tuple(model_out.shape)} for latents of shape {tuple(z0.shape)}; "
                "the denoiser must output one value per latent element."
            )
        target = noise if self.parameterization == "eps" else self.v_target(z0, t, noise)
        # Statistics in float32 even when the network ran in bf16 under autocast.
        diff = model_out.float() - target.float()
        if self.cfg.loss_type == "mse":
            # Eq. (2): || eps - eps_theta(z_t, t) ||_2^2, averaged
            return diff.pow(2).mean()
        # L1 variant used by some LDM configs: | eps - eps_theta(z_t, t) |, averaged
        return diff.abs().mean()
