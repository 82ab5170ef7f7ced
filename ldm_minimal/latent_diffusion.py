"""The latent diffusion model: a frozen first stage, the UNet epsilon_theta, tau_theta and a schedule (Sec. 3-4).

Rombach et al. (CVPR 2022) split image synthesis in two: a perceptual compression model (E, D) trained once,
and a diffusion model trained on the latents z = E(x). With a condition y, the objective is Eq. (3):

    L_LDM = E_{E(x), y, eps ~ N(0, 1), t} [ || eps - epsilon_theta(z_t, t, tau_theta(y)) ||_2^2 ]

``LatentDiffusion`` ties the four pieces together and is the only object the training loop and the pipelines
need:

- ``first_stage`` (E, D), frozen: an ``AutoencoderKL``, a ``VQModel`` or ``IdentityFirstStage`` (f = 1, which turns
  this very class into the pixel-space DM the paper compares against).
- the latent scale factor (Sec. 4.3.2 / App. G: a rescaled latent, "scaled by the component-wise standard
  deviation"): ``scale_factor = 1 / std(z)`` of the first training batch, stored as a buffer (so it travels in
  the checkpoint) and applied symmetrically: ``encode`` returns ``scale_factor * z``, ``decode`` divides first.
  KL latents are *sampled* from the posterior in training (like the reference); VQ latents are the continuous
  pre-quantisation z (the quantiser is "absorbed into the decoder").
- ``unet`` (epsilon_theta) with in_channels = latent channels + concat channels, context_dim and num_classes
  derived from the conditioner, so that every conditioning mode of the paper is one config switch:
  crossattn (text, layout), class ("adm": an embedding added to the time embedding) and concat (semantic maps,
  the low-resolution image for super-resolution, the masked image + mask for inpainting).
- ``conditioner`` (tau_theta, may be None) and ``diffusion`` (the schedule and the objective).

What it is built from (``LatentDiffusionConfig``, the presets ``LDM_PRESETS``, ``ldm_config``) is
ldm_minimal/latent_diffusion_config.py; ``save_ldm`` / ``load_ldm`` (one self-contained file) are
ldm_minimal/latent_diffusion_io.py.

Condition dropout (Ho & Salimans, 2021): during training each sample's condition is replaced by the conditioner's
null condition with probability ``cond_drop_prob`` (0.1), so the same network also learns the unconditional
epsilon_theta(z_t, t, null) that classifier-free guidance needs (ldm_minimal/guidance.py). The reference
training code lacks this; we have it.

Shapes: B batch, C latent channels, (H, W) image size, (h, w) = (H / f, W / f) latent size.
"""

from __future__ import annotations

import math
import types
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm_minimal.conditioning import CONDITIONERS, build_conditioner
from ldm_minimal.conditioning.base import Conditioner, pair
from ldm_minimal.diffusion import GaussianDiffusion
from ldm_minimal.guidance import condition_keep_mask
from ldm_minimal.latent_diffusion_config import LatentDiffusionConfig, build_first_stage, ldm_config
from ldm_minimal.samplers import SAMPLERS, SampleResult, ddim_sample, ddpm_sample
from ldm_minimal.unet import UNet, UNetConfig, unet_config
from ldm_minimal.utils import check_images, eval_mode, unknown_name_error

__all__ = ["LatentDiffusion", "freeze"]


# --------------------------------------------------------------------------------------------------------------
# The first stage
# --------------------------------------------------------------------------------------------------------------


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replaces ``train`` on the frozen first stage: it stays in eval mode whatever its owner does."""
    return self


def freeze(module: nn.Module) -> nn.Module:
    """Freeze a module for good: eval mode, no gradients, and a ``train()`` that does nothing.

    The last point matters for a VQ first stage: in training mode its quantiser updates usage statistics and
    restarts "dead" codes, which must never happen while a diffusion model is trained on top of it.
    """
    module.eval()
    module.requires_grad_(False)
    module.train = types.MethodType(_frozen_train, module)  # type: ignore[method-assign]
    return module


def _image_channels(first_stage: nn.Module) -> int:
    cfg = getattr(first_stage, "cfg", None)
    return int(getattr(cfg, "in_channels", first_stage.latent_channels))


def _batch_size_of(cond: Mapping[str, Any]) -> int | None:
    for v in cond.values():
        if isinstance(v, Tensor) and v.ndim >= 1:
            return int(v.shape[0])
    return None


# --------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------


class LatentDiffusion(nn.Module):
    """A latent diffusion model (paper Sec. 3.2-3.3): frozen (E, D), epsilon_theta, tau_theta and the schedule.

    ``LatentDiffusion(cfg)`` builds everything from the config; pass ``first_stage=`` to use an already loaded
    (trained) autoencoder instead of ``cfg.first_stage``, and ``conditioner=`` an already built tau_theta of the kind
    ``cfg.conditioner`` names (e.g. a frozen pretrained text encoder loaded once). Buffers: ``scale_factor`` (1.0 until set) and
    ``scale_factor_set``; both are saved in the state dict.
    """

    def __init__(
        self, cfg: LatentDiffusionConfig | str = "shapes-uncond", first_stage: nn.Module | None = None,
        conditioner: Conditioner | None = None,
    ) -> None:
        super().__init__()
        if isinstance(cfg, str):
            cfg = ldm_config(cfg)
        if not isinstance(cfg, LatentDiffusionConfig):
            raise TypeError(f"cfg must be a LatentDiffusionConfig or a preset name, got {type(cfg).__name__}.")
        self.cfg = cfg

        # ---- the first stage (E, D): frozen for good
        fs = first_stage if first_stage is not None else build_first_stage(cfg.first_stage)
        for attr in ("f", "latent_channels", "encode_latent", "decode_latent"):
            if not hasattr(fs, attr):
                raise TypeError(
                    f"first_stage {type(fs).__name__} lacks {attr!r}; a first stage needs f, latent_channels, "
                    "encode_latent(x) and decode_latent(z) (AutoencoderKL, VQModel or IdentityFirstStage)."
                )
        self.first_stage = freeze(fs)
        self.f: int = int(fs.f)
        self.latent_channels: int = int(fs.latent_channels)
        self.image_channels: int = _image_channels(fs)

        # ---- tau_theta; what it needs to know about the first stage comes from it, unless given explicitly
        self.conditioner: Conditioner | None = conditioner
        if conditioner is not None and not isinstance(conditioner, CONDITIONERS.get(cfg.conditioner, ())):
            raise TypeError(f"conditioner is a {type(conditioner).__name__}, but cfg.conditioner={cfg.conditioner!r} "
                            "names another kind; pass one built by build_conditioner(cfg.conditioner, ...).")
        if cfg.conditioner is not None and conditioner is None:
            self.conditioner = build_conditioner(cfg.conditioner, first_stage=fs, **cfg.conditioner_kwargs)

        # ---- epsilon_theta, with its in/out channels, context width and class count derived
        self.unet = UNet(self._unet_config())
        self.diffusion = GaussianDiffusion(cfg.diffusion_cfg())

        # ---- the latent scale factor (component-wise std rescaling), stored with the model
        self.register_buffer("scale_factor", torch.tensor(1.0 if cfg.scale_factor is None else float(cfg.scale_factor)))
        self.register_buffer("scale_factor_set", torch.tensor(cfg.scale_factor is not None))

        unit = self.f * self.unet.cfg.downsampling
        if cfg.image_size % unit:
            raise ValueError(
                f"image_size={cfg.image_size} cannot be encoded and denoised: it must be divisible by f * UNet "
                f"downsampling = {self.f} * {self.unet.cfg.downsampling} = {unit}. Use e.g. "
                f"image_size={max(unit, cfg.image_size // unit * unit)}, or a UNet with fewer levels."
            )

    # ------------------------------------------------------------------ construction helpers
    @property
    def concat_channels(self) -> int:
        c = self.conditioner
        return int(getattr(c, "concat_channels", 0) or 0) if c is not None and c.mode == "concat" else 0

    def _unet_config(self) -> UNetConfig:
        c = self.conditioner
        derived: dict[str, Any] = {
            "in_channels": self.latent_channels + self.concat_channels,
            "out_channels": self.latent_channels,
            "context_dim": None,
            "num_classes": None,
        }
        if c is not None and c.mode == "crossattn":
            derived["context_dim"] = int(c.context_dim)
        if c is not None and c.mode == "class":
            derived["num_classes"] = int(c.num_classes)
        return unet_config(self.cfg.unet, **{**self.cfg.unet_overrides, **derived})

    @property
    def device(self) -> torch.device:
        return self.scale_factor.device

    @property
    def latent_size(self) -> tuple[int, int]:
        """The training latent size (h, w) = image_size / f."""
        s = self.cfg.image_size // self.f
        return s, s

    def train(self, mode: bool = True) -> "LatentDiffusion":
        """Train mode for epsilon_theta and trainable conditioners only; frozen parts stay in eval mode."""
        super().train(mode)
        self.first_stage.eval()
        if self.conditioner is not None and not getattr(self.conditioner, "trainable", True):
            self.conditioner.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimiser updates: epsilon_theta, plus tau_theta when it is trained jointly."""
        params = list(self.unet.parameters())
        if self.conditioner is not None and getattr(self.conditioner, "trainable", False):
            params += [p for p in self.conditioner.parameters() if p.requires_grad]
        return params

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts per part (first stage, conditioner, unet) and the trainable total."""
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        return {
            "first_stage": count(self.first_stage),
            "conditioner": count(self.conditioner),
            "unet": count(self.unet),
            "trainable": sum(p.numel() for p in self.trainable_parameters()),
        }

    # ------------------------------------------------------------------ input checks
    def prepare_images(self, x: Tensor, name: str = "image") -> Tensor:
        """Check a batch of images for this model (channels, sides divisible by f * UNet downsampling; clear errors
        naming the fix) and return it as float32 on the model's device."""
        check_images(x, channels=self.image_channels, multiple_of=self.f, name=name)
        h, w = x.shape[-2:]
        self._check_latent_size(h // self.f, w // self.f, what=f"{name} of size {h}x{w}")
        return x.to(self.device, torch.float32)

    def _check_latent_size(self, h: int, w: int, what: str | None = None) -> None:
        d = self.unet.cfg.downsampling
        if h < 1 or w < 1 or h % d or w % d:
            unit = self.f * d
            what = f"{what} gives a {h}x{w} latent" if what else f"latent size {h}x{w}"
            raise ValueError(
                f"{what}, but the UNet needs latent sides divisible by {d} (image sides "
                f"divisible by f * {d} = {self.f} * {d} = {unit}). Use image sizes that are multiples of {unit} "
                f"(latent sizes that are multiples of {d}), e.g. {max(unit, h * self.f // unit * unit)}x"
                f"{max(unit, w * self.f // unit * unit)} pixels."
            )

    # ------------------------------------------------------------------ the latent space
    @torch.no_grad()
    def set_scale_factor_from(self, images: Tensor, generator: torch.Generator | None = None) -> float:
        """scale_factor = 1 / std(z) over the (posterior-sampled, for KL) latents of ``images``. Returns it.

        The paper rescales the latents by their component-wise standard deviation so that z has unit variance
        and the noise schedule means the same thing for every first stage (the reference's ``scale_by_std``).
        """
        x = self.prepare_images(images)
        z = self.first_stage.encode_latent(x, sample=True, generator=generator).float()  # (B, C, h, w)
        if z.numel() < 2:
            raise ValueError("Need more than one latent value to estimate a standard deviation: pass a batch.")
        std = float(z.flatten().std())
        if not math.isfinite(std) or std < 1e-8:
            raise ValueError(
                f"The latents of this batch have std {std:g}, so 1 / std is not usable. Use a batch of varied real "
                "images (not a constant batch), or fix the scale with LatentDiffusionConfig(scale_factor=...)."
            )
        # scale_factor = 1 / std(z)   (so that scale_factor * z has unit variance)
        self.scale_factor.fill_(1.0 / std)
        self.scale_factor_set.fill_(True)
        return 1.0 / std

    @torch.no_grad()
    def encode(self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> scaled latents z = scale_factor * E(x): (B, C, H/f, W/f), float32."""
        x = self.prepare_images(x)
        z = self.first_stage.encode_latent(x, sample=sample, generator=generator).float()  # E(x): (B, C, h, w)
        # z = scale_factor * E(x)
        return self.scale_factor * z

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents (B, C, h, w) -> images D(z / scale_factor): (B, 3, h*f, w*f), float32 (not clamped)."""
        if not isinstance(z, Tensor) or z.ndim != 4 or z.shape[1] != self.latent_channels:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(
                f"decode expects latents (B, {self.latent_channels}, h, w), got {shape}. Encode images first."
            )
        # x_hat = D(z / scale_factor)
        return self.first_stage.decode_latent(z.float() / self.scale_factor).float()

    # ------------------------------------------------------------------ conditions
    def _batch_to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def condition(
        self, batch: Mapping[str, Any], latent_size: int | tuple[int, int] | None = None
    ) -> dict[str, Tensor]:
        """tau_theta(y): the UNet keyword arguments for the conditions in ``batch`` ({} when unconditional).

        Concat conditions come at the latent size of the batch's inputs; with ``latent_size`` given they are made
        at that size (a larger latent samples beyond the training resolution): semantic maps and low-resolution
        images are resampled by their conditioner, anything else (the inpainting latent and mask) is resized with
        nearest neighbours, which keeps masks binary. Layout boxes are normalised by the size of the image made.
        The conditioner gets every ``ConditionInputs`` field and reads what it needs: the first stage (latent size
        H / f; the inpainting conditioner encodes the masked image with it into the space of z, scaled by
        ``scale_factor``), the latent size and the size in pixels of the image being made.
        """
        if self.conditioner is None:
            return {}
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"The conditions must be a batch dict (e.g. {{'caption': [...]}} or {{'class_id': tensor}}), got "
                f"{type(batch).__name__}."
            )
        size = None if latent_size is None else pair(latent_size)
        batch = self._batch_to_device(batch)
        cond = self.conditioner(
            batch, first_stage=self.first_stage, scale_factor=self.scale_factor, latent_size=size,
            image_size=self._image_size(batch, size),
        )
        cond = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in cond.items()}
        if size is not None and "concat" in cond:
            cond["concat"] = self._resize_concat(cond["concat"], size)
        return cond

    def _image_size(self, batch: Mapping[str, Any], latent_size: tuple[int, int] | None) -> tuple[int, int]:
        """The size (H, W) in pixels of the image being made: latent_size * f, else the batch's images, else the
        training size."""
        if latent_size is not None:
            return latent_size[0] * self.f, latent_size[1] * self.f
        if isinstance(batch.get("image"), Tensor):
            return tuple(batch["image"].shape[-2:])
        return self.cfg.image_size, self.cfg.image_size

    @staticmethod
    def _resize_concat(c: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(c.shape[-2:]) == size:
            return c
        return F.interpolate(c, size=size, mode="nearest")

    def null_condition(self, batch_size: int, like: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The conditioner's null ("unconditional") condition for ``batch_size`` samples, shaped like ``like``."""
        if self.conditioner is None:
            return {}
        # a concat condition's null has the latent size of ``like`` (or the training one); other modes ignore it
        size = tuple(like["concat"].shape[-2:]) if like is not None and "concat" in like else self.latent_size
        null = self.conditioner.null_condition(batch_size, self.device, latent_size=size)
        return {k: v.to(self.device) for k, v in null.items()}

    def drop_conditions(
        self, cond: Mapping[str, Tensor], generator: torch.Generator | None = None, p: float | None = None
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Condition dropout for classifier-free guidance: each row is replaced by the null condition w.p. p.

        Returns (the condition, keep (B,) bool: True where the real condition was kept). p defaults to
        cfg.cond_drop_prob; the draw uses ``generator`` (on its device, the CPU by default).
        """
        b = _batch_size_of(cond)
        p = self.cfg.cond_drop_prob if p is None else float(p)
        if self.conditioner is None or b is None:
            return dict(cond), torch.ones(b or 0, dtype=torch.bool, device=self.device)
        keep = condition_keep_mask(b, p, generator, self.device)  # (B,) bool
        if p <= 0 or bool(keep.all()):
            return dict(cond), keep
        return dict(self.conditioner.drop(dict(cond), keep)), keep

    def _prepare_training_batch(self, batch: Mapping[str, Any], generator: torch.Generator | None) -> dict[str, Any]:
        """The batch on the model's device, plus what the conditioner adds for training (inpainting: random holes)."""
        batch = self._batch_to_device(batch)
        return self.conditioner.training_batch(batch, generator) if self.conditioner is not None else batch

    # ------------------------------------------------------------------ epsilon_theta
    def model_fn(self, x: Tensor, t: Tensor, concat: Tensor | None = None, **cond: Any) -> Tensor:
        """epsilon_theta(z_t, t, c) for the samplers and the objective: concat conditions join z_t on channels.

        x: (B, C, h, w); t: (B,); concat: (B, C_c, h, w) or None; cond: context/context_mask/y keyword arguments.
        """
        if concat is not None:
            if concat.shape[0] != x.shape[0] or tuple(concat.shape[-2:]) != tuple(x.shape[-2:]):
                raise ValueError(
                    f"The concat condition has shape {tuple(concat.shape)} but z_t has {tuple(x.shape)}: batch and "
                    "spatial size must match. Build conditions with condition(batch, latent_size=z_t.shape[-2:])."
                )
            # UNet input [z_t, c] on channels: (B, C + C_c, h, w)
            x = torch.cat([x, concat.to(x.dtype)], dim=1)
        return self.unet(x, t, **cond)

    # ------------------------------------------------------------------ training
    def training_loss(
        self,
        batch: Mapping[str, Any],
        generator: torch.Generator | None = None,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """L_LDM (Eq. 2, Eq. 3 with a condition) on a batch dict with "image" (B, 3, H, W) in [-1, 1].

        Sets the scale factor from this batch if it is not set yet, encodes (a posterior sample for KL), builds the
        condition, applies condition dropout, and returns (scalar loss, logs). All randomness comes from
        ``generator`` when given, in this order: the conditioner's training draws (inpainting: the random hole),
        the scale factor's posterior sample (first batch only), the posterior sample, dropout, t, eps.
        """
        if not isinstance(batch, Mapping) or "image" not in batch:
            raise ValueError(
                "training_loss needs a batch dict with 'image' (B, 3, H, W) in [-1, 1] plus the conditions "
                "(e.g. from ldm_minimal.data.collate)."
            )
        batch = self._prepare_training_batch(batch, generator)
        x = batch["image"]
        if not bool(self.scale_factor_set):
            self.set_scale_factor_from(x, generator)
        z0 = self.encode(x, sample=True, generator=generator)  # (B, C, h, w), scaled
        cond = self.condition(batch, latent_size=z0.shape[-2:])
        cond, keep = self.drop_conditions(cond, generator)
        # Eq. (3): L_LDM = E_{E(x), y, eps, t} || eps - epsilon_theta(z_t, t, tau_theta(y)) ||^2
        loss = self.diffusion.training_losses(self.model_fn, z0, t=t, noise=noise, generator=generator, **cond)
        logs = {
            "loss": float(loss.detach()),
            "scale_factor": float(self.scale_factor),
            "cond_kept": float(keep.float().mean()) if keep.numel() else 1.0,
        }
        return loss, logs

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        batch_or_n: Mapping[str, Any] | int,
        *,
        sampler: str = "ddim",
        steps: int = 50,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        latent_size: int | tuple[int, int] | None = None,
        return_trajectory: bool = False,
        progress: bool = True,
        x_T: Tensor | None = None,
        inpaint: Mapping[str, Tensor] | None = None,
    ) -> Tensor | tuple[Tensor, SampleResult]:
        """Generate images (B, 3, h*f, w*f) in [-1, 1] (and the sampler's SampleResult if return_trajectory).

        batch_or_n: a batch of conditions ({"caption": [...]}, {"class_id": (B,)}, {"image", "mask"} for
        inpainting, {"lowres": ...} for super-resolution, ...) or an int n (unconditional model; for a
        conditional one, n samples from the null condition). guidance_scale s: classifier-free guidance
        eps_u + s (eps_c - eps_u) with the conditioner's null condition (s = 1: plain conditional model).
        latent_size: default image_size / f, or the latent size of concat inputs; a larger value samples
        beyond the training resolution (the UNet is convolutional). inpaint: the samplers' training-free
        baseline, dict(z0=scaled known latent, mask=(B, 1, h, w), 1 = hole).
        """
        if sampler not in SAMPLERS:
            raise unknown_name_error("sampler", sampler, SAMPLERS)
        # ---- conditions and batch size
        size = None if latent_size is None else pair(latent_size)
        if isinstance(batch_or_n, bool) or not isinstance(batch_or_n, (int, Mapping)):
            raise TypeError(
                "sample() takes a batch of conditions (dict) or a number of samples (int), got "
                f"{type(batch_or_n).__name__}."
            )
        with eval_mode(self):
            if isinstance(batch_or_n, int):
                n = batch_or_n
                if n < 1:
                    raise ValueError(f"The number of samples must be >= 1, got {n}.")
                if self.conditioner is not None and self.conditioner.mode == "concat":
                    raise ValueError(
                        f"This model is conditioned by concatenation ({self.cfg.conditioner}) and needs its inputs: "
                        "pass a batch dict (e.g. {'image': x, 'mask': m} for inpainting, {'lowres': y} for "
                        "super-resolution, {'semantic': s} for semantic synthesis) instead of a number."
                    )
                cond = self.null_condition(n)
            else:
                if self.conditioner is None:
                    raise ValueError("This model is unconditional: call sample(n) with the number of images to draw.")
                cond = self.condition(batch_or_n, latent_size=size)
                n = _batch_size_of(cond) or 0
                if n < 1:
                    raise ValueError("Could not tell the batch size from the conditions: is the batch empty?")
            if size is None:
                size = tuple(cond["concat"].shape[-2:]) if "concat" in cond else self.latent_size
            self._check_latent_size(*size)
            if "concat" in cond:
                cond["concat"] = self._resize_concat(cond["concat"], size)
            uncond = None
            if self.conditioner is not None and guidance_scale != 1.0:
                uncond = self.null_condition(n, like=cond)
            shape = (n, self.latent_channels, *size)
            kwargs: dict[str, Any] = dict(
                cond=cond or None, uncond=uncond, guidance_scale=guidance_scale, generator=generator,
                device=self.device, x_T=x_T, return_trajectory=return_trajectory, progress=progress, inpaint=inpaint,
            )
            if sampler == "ddim":
                result = ddim_sample(self.model_fn, self.diffusion, shape, steps=steps, eta=eta, **kwargs)
            else:
                result = ddpm_sample(self.model_fn, self.diffusion, shape, **kwargs)
            images = self.decode(result.samples).clamp(-1.0, 1.0)  # (B, 3, h*f, w*f)
        return (images, result) if return_trajectory else images
