"""Sampling from a trained latent diffusion model: DDPM, DDIM, classifier-free guidance, inpainting baseline.

The paper samples its LDMs with DDIM (Song et al., 2021) using far fewer steps than the T = 1000 of training,
conditions them with classifier-free guidance (Ho & Salimans, 2021; paper Sec. 4.3.1; the guided output
eps_u + s (eps_c - eps_u) is ldm_minimal/guidance.py) and compares its inpainting LDM (Sec. 4.5) with specialised
inpainting models (Tab. 7); the training-free baseline here is the course's own, simpler one. ``SAMPLERS`` names the samplers and
``check_sampling`` is the check of the settings a user picks (sampler, steps, eta).

Conventions shared by both samplers
- ``model_fn(x_t, t, **cond) -> eps_theta or v_theta`` with x_t: (B, C, h, w) and t: (B,) long on x's device.
- A condition is a dict of tensors passed to the model as keyword arguments, e.g. ``{"context": (B, L, D),
  "context_mask": (B, L), "y": (B,), "concat": (B, C, h, w)}``; the unconditional ("null") condition is a dict
  with the same keys.
- Randomness: every draw is made with ``generator`` on the generator's device (a CPU generator by default), in
  float32, then moved and cast to x's device and dtype, so a seed gives the same noise on every device and in
  every dtype. Order of draws: x_T (unless given); the inpainting start noise; then per step the sampler's noise
  (DDPM: for t > 0; DDIM: every step when eta > 0, none when eta = 0) followed by the inpainting noise.
- Coefficients are computed per step as float64 Python numbers; x keeps the dtype of x_T (float32 by default),
  and a bf16 network output under autocast is cast up before it is used.
- No clipping of the predicted z_0 (latents are not bounded); ``clip_x0=True`` clamps it to [-1, 1] for
  pixel-space models.
- ``return_trajectory=True`` returns, per step, (t, x_t, x0_pred) on the CPU: x_t is the state the network saw
  at timestep t and x0_pred its (guided) estimate of the clean latent.

Deliberate differences from the references (each is tested in tests/test_samplers.py)
- S = T works. CompVis' DDIM and diffusers' DDIMScheduler(steps_offset=1) index alpha_bar[T] there and crash;
  we drop the offset at S = T (timesteps 0..T-1), which is diffusers with steps_offset=0.
- DDIM always takes exactly S steps (CompVis' range(0, T, T // S) takes more when S does not divide T).
- Like the reference, DDIM's last step goes to alpha_bar_0, not to clean data (alpha_bar = 1) as DDPM's does;
  hence DDIM at S = T, eta = 1 repeats DDPM step for step except that its final step (t = 0) is an identity.
- Noise is drawn in float32 whatever x's dtype (diffusers draws in the model's dtype).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from tqdm.auto import tqdm

from ldm_minimal.diffusion import GaussianDiffusion
from ldm_minimal.guidance import check_guidance_scale, guided_model_output
from ldm_minimal.utils import min_max, unknown_name_error

__all__ = [
    "SAMPLERS",
    "SampleResult",
    "check_eta",
    "check_sampling",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
]

SAMPLERS = ("ddim", "ddpm")  # the one list of sampler names

ModelFn = Callable[..., torch.Tensor]
Cond = Mapping[str, Any]


@dataclass
class SampleResult:
    """What a sampler returns. samples: (B, C, h, w) on the sampling device.

    trajectory: per step (t, x_t, x0_pred), both (B, C, h, w) on the CPU, when requested, else None.
    timesteps: the timesteps visited, in sampling order (descending).
    """

    samples: torch.Tensor
    trajectory: list[tuple[int, torch.Tensor, torch.Tensor]] | None = None
    timesteps: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- sampling settings
def check_sampling(sampler: str, steps: int, eta: float) -> None:
    """The check of the sampling settings a user chooses (the CLI's --sampler, --steps and --eta; the pipelines).

    sampler: one of SAMPLERS. steps: a positive integer (DDIM's S; ``ddim_timesteps`` also checks S <= T against
    the schedule; DDPM ignores it and walks all T steps). eta: a finite number >= 0; DDIM, whose sigma goes from
    deterministic (0) to DDPM's posterior variance (1), takes eta <= 1 (``check_eta``, which ``ddim_sample`` applies
    itself); DDPM ignores it. Raises a ValueError whose message names the fix.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer (DDIM: 25-50 is typical), got {steps!r}.")
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a number >= 0 (0 = deterministic DDIM, 1 = DDPM-like noise), got {eta!r}.")
    if sampler not in SAMPLERS:
        raise unknown_name_error("sampler", sampler, SAMPLERS)
    if sampler == "ddim":
        check_eta(eta)


# ---------------------------------------------------------------------------------------------- shared set-up
def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """N(0, I) drawn in float32 on the generator's device (CPU by default), then moved to device/dtype."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
    return z.to(device=device, dtype=dtype)


def _resolve_device(device, x_T, cond, inpaint, diffusion: GaussianDiffusion) -> torch.device:
    if device is not None:
        return torch.device(device)
    if x_T is not None:
        return x_T.device
    for v in (cond or {}).values():
        if isinstance(v, torch.Tensor):
            return v.device
    if isinstance(inpaint, Mapping) and isinstance(inpaint.get("z0"), torch.Tensor):
        return inpaint["z0"].device
    return diffusion.betas.device


def _initial_noise(shape, x_T, generator, device) -> torch.Tensor:
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor):
            raise TypeError(f"x_T must be a tensor, got {type(x_T).__name__}.")
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)}; pass one of them or make them agree.")
        if not x_T.is_floating_point():
            raise TypeError(f"x_T must be a floating-point tensor, got dtype {x_T.dtype}.")
        return x_T.to(device)
    if shape is None:
        raise ValueError("Give the latent shape (B, C, h, w) as shape=..., or a starting noise x_T.")
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be a positive (B, C, h, w) tuple, got {shape}.")
    return _randn(shape, generator, device, torch.float32)


class _InpaintBaseline:
    """The training-free inpainting baseline: keep the known region on the forward-noised known latent.

    Before the first step (at the starting level) and after every step that lands on noise level t_prev,
    x <- mask * x + (1 - mask) * q_sample(z0, t_prev, eps) with fresh noise eps; after the last step the known
    region is z0 exactly. mask: (B, 1, h, w), 1 = hole (generate), 0 = keep. (A soft mask in [0, 1] blends.)
    This is the course's baseline for the paper's inpainting LDM (Sec. 4.5; the paper compares with trained models, Tab. 7): the model never sees the
    known region as a condition, so the seam is often visible.
    """

    def __init__(self, inpaint: Mapping[str, torch.Tensor], x: torch.Tensor, diffusion: GaussianDiffusion):
        if not isinstance(inpaint, Mapping) or "z0" not in inpaint or "mask" not in inpaint:
            raise ValueError(
                "inpaint must be a dict(z0=known latent (B, C, h, w), mask=(B, 1, h, w) with 1 = hole, 0 = keep)."
            )
        z0, mask = inpaint["z0"], inpaint["mask"]
        if tuple(z0.shape) != tuple(x.shape):
            raise ValueError(f"inpaint['z0'] has shape {tuple(z0.shape)} but the samples have {tuple(x.shape)}; they must match.")
        if mask.ndim != x.ndim or mask.shape[0] not in (1, x.shape[0]) or mask.shape[1] not in (1, x.shape[1]) \
                or tuple(mask.shape[2:]) != tuple(x.shape[2:]):
            raise ValueError(
                f"inpaint['mask'] has shape {tuple(mask.shape)}; expected (B, 1, h, w) = ({x.shape[0]}, 1, "
                f"{', '.join(map(str, x.shape[2:]))}) at latent resolution (resize the pixel mask with "
                "F.interpolate(mask, size=(h, w), mode='nearest'))."
            )
        mask = mask.to(device=x.device, dtype=x.dtype)
        lo, hi = min_max(mask)
        if lo < 0 or hi > 1:
            raise ValueError("inpaint['mask'] must hold values in [0, 1] (1 = hole to generate, 0 = keep).")
        self.z0 = z0.to(device=x.device, dtype=x.dtype)
        self.mask = mask
        self.diffusion = diffusion

    def apply(self, x: torch.Tensor, t: int | None, generator: torch.Generator | None) -> torch.Tensor:
        """Replace the known region by z0 noised to level t (t=None: clean, the end of sampling)."""
        if t is None:
            known = self.z0
        else:
            known = self.diffusion.q_sample(self.z0, t, _randn(tuple(x.shape), generator, x.device, x.dtype))
        # x = m * x_generated + (1 - m) * q_sample(z0, t)
        return self.mask * x + (1 - self.mask) * known


def _model_call(model_fn, x, t: int, cond, uncond, guidance_scale) -> torch.Tensor:
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)  # (B,)
    return guided_model_output(model_fn, x, t_batch, cond, uncond, guidance_scale)


# ---------------------------------------------------------------------------------------------- DDPM
@torch.no_grad()
def ddpm_sample(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...] | None,
    *,
    cond: Cond | None = None,
    uncond: Cond | None = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    x_T: torch.Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = True,
    inpaint: Mapping[str, torch.Tensor] | None = None,
    clip_x0: bool = False,
) -> SampleResult:
    """Ancestral sampling (Ho et al., 2020, Alg. 2) through all T steps t = T-1, ..., 0.

    Each step draws z_{t-1} ~ N(mu~_t(z_t, z0_hat), beta~_t I) with the posterior of DDPM Eq. (7) written with
    the predicted z0_hat and the "fixed_small" variance beta~_t; no noise is added at t = 0, so the result is
    the final z0_hat. Agrees with diffusers' DDPMScheduler(variance_type="fixed_small", clip_sample=False) on the
    same schedule, model and noise (tests/test_samplers.py).
    """
    check_guidance_scale(guidance_scale)
    device = _resolve_device(device, x_T, cond, inpaint, diffusion)
    x = _initial_noise(shape, x_T, generator, device)
    T = diffusion.T
    painter = _InpaintBaseline(inpaint, x, diffusion) if inpaint is not None else None
    if painter is not None:
        x = painter.apply(x, T - 1, generator)
    trajectory: list[tuple[int, torch.Tensor, torch.Tensor]] | None = [] if return_trajectory else None
    timesteps = list(range(T - 1, -1, -1))

    for t in tqdm(timesteps, desc="DDPM", disable=not progress):
        out = _model_call(model_fn, x, t, cond, uncond, guidance_scale)
        x0 = diffusion.predict_x0(x, t, out)  # (B, C, h, w)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        if trajectory is not None:
            trajectory.append((t, x.detach().cpu(), x0.detach().cpu()))
        abar = diffusion.alpha_bar(t)
        abar_prev = diffusion.alpha_bar(t - 1)  # 1 at t = 0
        beta = float(diffusion.betas64[t])
        # mu~_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) z0_hat + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) z_t
        coef_x0 = math.sqrt(abar_prev) * beta / (1 - abar)
        coef_xt = math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)
        mean = coef_x0 * x0 + coef_xt * x.to(x0.dtype)
        if t > 0:
            # beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
            var = (1 - abar_prev) / (1 - abar) * beta
            # z_{t-1} = mu~_t + sqrt(beta~_t) * noise
            x_next = mean + math.sqrt(var) * _randn(tuple(x.shape), generator, x.device, mean.dtype)
        else:
            x_next = mean
        x = x_next.to(x.dtype)
        if painter is not None:
            x = painter.apply(x, t - 1 if t > 0 else None, generator)
    return SampleResult(samples=x, trajectory=trajectory, timesteps=timesteps)


# ---------------------------------------------------------------------------------------------- DDIM
def ddim_timesteps(T: int, steps: int) -> list[int]:
    """The S = ``steps`` DDIM timesteps, ascending: "leading" uniform spacing with offset 1.

    c = T // S and tau_i = i * c + 1 for i = 0 .. S-1 (S = 50, T = 1000: 1, 21, ..., 981), like the CompVis
    sampler and diffusers' DDIMScheduler(timestep_spacing="leading", steps_offset=1).

    Two documented choices:
    - Exactly S steps, like diffusers. (CompVis uses range(0, T, c), which gives MORE than S steps when S does
      not divide T, e.g. 4 steps for S = 3.)
    - The offset is dropped when it would push the last timestep to T (out of range). With c = T // S that
      happens only for S = T, where CompVis and diffusers(steps_offset=1) both index alpha_bar[T] and crash;
      we use 0, 1, ..., T-1 instead, which is exactly diffusers with steps_offset=0.
    """
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an integer number of DDIM steps, got {type(steps).__name__}.")
    if not 1 <= steps <= T:
        raise ValueError(
            f"DDIM steps S={steps} is out of range: choose 1 <= S <= T={T} (e.g. 50; S=T uses every timestep)."
        )
    c = T // steps
    offset = 1 if (steps - 1) * c + 1 <= T - 1 else 0
    return [i * c + offset for i in range(steps)]


def check_eta(eta: float) -> float:
    """DDIM's eta as a float in [0, 1]: 0 = deterministic, 1 = DDPM's posterior variance (TypeError / ValueError)."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta):
        raise TypeError(f"eta must be a number in [0, 1], got {eta!r}.")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(
            f"eta={eta} is outside [0, 1]: use eta=0 for deterministic DDIM, eta=1 for DDPM-like stochastic "
            "sampling, or a value in between."
        )
    return float(eta)


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...] | None,
    *,
    steps: int = 50,
    eta: float = 0.0,
    cond: Cond | None = None,
    uncond: Cond | None = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    x_T: torch.Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = True,
    inpaint: Mapping[str, torch.Tensor] | None = None,
    clip_x0: bool = False,
) -> SampleResult:
    """DDIM (Song et al., 2021, Eq. 12) on S = ``steps`` timesteps from ``ddim_timesteps`` (1 <= S <= T).

    With a = alpha_bar_t and a' = alpha_bar of the next (smaller) timestep, and for the last step a' = alpha_bar_0
    (the reference's choice: sampling stops at the first noise level, not at alpha_bar = 1):
        z0_hat = (z_t - sqrt(1 - a) eps) / sqrt(a)
        sigma  = eta * sqrt((1 - a') / (1 - a) * (1 - a / a'))
        z_prev = sqrt(a') z0_hat + sqrt(1 - a' - sigma^2) eps + sigma * noise.
    eta = 0 is deterministic given x_T; eta = 1 with S = T takes DDPM's steps (its posterior variance), see
    tests/test_samplers.py. Agrees with diffusers' DDIMScheduler(beta_schedule="scaled_linear", steps_offset=1,
    set_alpha_to_one=False, clip_sample=False, timestep_spacing="leading") for S < T, and with the same
    scheduler but steps_offset=0 for S = T (where steps_offset=1 crashes in diffusers).
    With clip_x0, z0_hat is clamped but eps is kept as predicted (diffusers' default behaviour).
    """
    check_guidance_scale(guidance_scale)
    eta = check_eta(eta)
    ts = ddim_timesteps(diffusion.T, steps)  # ascending
    device = _resolve_device(device, x_T, cond, inpaint, diffusion)
    x = _initial_noise(shape, x_T, generator, device)
    painter = _InpaintBaseline(inpaint, x, diffusion) if inpaint is not None else None
    if painter is not None:
        x = painter.apply(x, ts[-1], generator)
    trajectory: list[tuple[int, torch.Tensor, torch.Tensor]] | None = [] if return_trajectory else None
    # (t, t_prev) pairs in sampling order; the last step goes to alpha_bar_0 (t_prev index 0)
    pairs = [(ts[i], ts[i - 1] if i > 0 else 0) for i in range(len(ts) - 1, -1, -1)]

    for t, t_prev in tqdm(pairs, desc=f"DDIM S={steps}", disable=not progress):
        out = _model_call(model_fn, x, t, cond, uncond, guidance_scale)
        x0 = diffusion.predict_x0(x, t, out)  # (B, C, h, w)
        eps = diffusion.predict_eps(x, t, out)  # (B, C, h, w)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        if trajectory is not None:
            trajectory.append((t, x.detach().cpu(), x0.detach().cpu()))
        a, a_prev = diffusion.alpha_bar(t), diffusion.alpha_bar(t_prev)
        # DDIM Eq. (16): sigma_t(eta) = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a')
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        # DDIM Eq. (12): z_prev = sqrt(a') z0_hat + sqrt(1 - a' - sigma^2) eps + sigma * noise
        x_next = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if eta > 0:
            x_next = x_next + sigma * _randn(tuple(x.shape), generator, x.device, x_next.dtype)
        x = x_next.to(x.dtype)
        if painter is not None:
            is_last = t == ts[0]
            x = painter.apply(x, None if is_last else t_prev, generator)
    return SampleResult(samples=x, trajectory=trajectory, timesteps=ts[::-1])
