"""The latent diffusion model: a frozen first stage, the UNet epsilon_theta, tau_theta and a schedule (Sec. 3-4).

Rombach et al. (CVPR 2022) split image synthesis in two: a perceptual compression model (E, D) trained once,
and a diffusion model trained on the latents z = E(x). With a condition y, the objective is Eq. (3):

    L_LDM = E_{E(x), y, eps ~ N(0, 1), t} [ || eps - epsilon_theta(z_t, t, tau_theta(y)) ||_2^2 ]

``LatentDiffusion`` ties the four pieces together and is the only object the training loop and the pipelines
need:

- ``first_stage`` (E, D), frozen: an ``AutoencoderKL``, a ``VQModel`` or ``IdentityFirstStage`` (f = 1, which turns
  this very class into the pixel-space DM the paper compares against).
- the latent scale factor (Sec. 4.3.2 / App. G, "we rescale the latents by the component-wise standard
  deviation"): ``scale_factor = 1 / std(z)`` of the first training batch, stored as a buffer (so it travels in
  the checkpoint) and applied symmetrically: ``encode`` returns ``scale_factor * z``, ``decode`` divides first.
  KL latents are *sampled* from the posterior in training (like the reference); VQ latents are the continuous
  pre-quantisation z (the quantiser is "absorbed into the decoder").
- ``unet`` (epsilon_theta) with in_channels = latent channels + concat channels, context_dim and num_classes
  derived from the conditioner, so that every conditioning mode of the paper is one config switch:
  crossattn (text, layout), class ("adm": an embedding added to the time embedding) and concat (semantic maps,
  the low-resolution image for super-resolution, the masked image + mask for inpainting).
- ``conditioner`` (tau_theta, may be None) and ``diffusion`` (the schedule and the objective).

Condition dropout (Ho & Salimans, 2021): during training each sample's condition is replaced by the conditioner's
null condition with probability ``cond_drop_prob`` (0.1), so the same network also learns the unconditional
epsilon_theta(z_t, t, null) that classifier-free guidance needs. The reference training code lacks this; we
have it.

Shapes: B batch, C latent channels, (H, W) image size, (h, w) = (H / f, W / f) latent size.
"""

from __future__ import annotations

import dataclasses
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm_minimal.autoencoder import AUTOENCODER_PRESETS, IdentityFirstStage, build_autoencoder
from ldm_minimal.diffusion import DiffusionConfig, GaussianDiffusion, diffusion_config
from ldm_minimal.samplers import SampleResult, ddim_sample, ddpm_sample
from ldm_minimal.unet import UNet, UNetConfig, unet_config
from ldm_minimal.utils import check_images, eval_mode, unknown_name_error

__all__ = [
    "LatentDiffusionConfig",
    "LDM_PRESETS",
    "ldm_config",
    "build_first_stage",
    "LatentDiffusion",
]

SAMPLERS = ("ddim", "ddpm")


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LatentDiffusionConfig:
    """What a latent diffusion model is made of (paper Sec. 3-4, App. E).

    first_stage: an autoencoder preset name (``AUTOENCODER_PRESETS``, randomly initialised: fine for tests, but a
        real run passes a trained checkpoint path or a loaded model), ``"identity"`` (f = 1, the pixel-space DM),
        or the path of a ``.safetensors`` autoencoder checkpoint.
    unet / unet_overrides: a UNet preset name and field overrides. in_channels, out_channels, context_dim and
        num_classes are derived from the first stage and the conditioner; do not set them by hand.
    conditioner / conditioner_kwargs: a ``build_conditioner`` name ("class", "text-joint", "text-frozen",
        "layout", "semantic", "lowres", "inpaint") or None for an unconditional model.
    diffusion: a ``DiffusionConfig`` or a diffusion preset name ("ldm", "sd").
    cond_drop_prob: probability of replacing a sample's condition by the null condition in training.
    image_size: the training resolution H = W (sampling defaults to it; larger latents give larger images).
    scale_factor: None = compute 1 / std(z) from the first training batch (the paper's rescaling); a number
        fixes it (Stable Diffusion hard-codes 0.18215; the pixel-space model uses 1.0, like DDPM on [-1, 1]).
    world: the shapes preset the model is meant to be trained on (the training CLI reads it; "single32" for the
        class-conditional model, whose labels exist only for single-object samples).
    """

    first_stage: str = "tiny-kl-f4"
    unet: str = "tiny"
    unet_overrides: dict[str, Any] = field(default_factory=dict)
    conditioner: str | None = None
    conditioner_kwargs: dict[str, Any] = field(default_factory=dict)
    diffusion: DiffusionConfig | str = "ldm"
    cond_drop_prob: float = 0.1
    image_size: int = 32
    scale_factor: float | None = None
    world: str = "shapes32"

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.cond_drop_prob) <= 1.0:
            raise ValueError(
                f"cond_drop_prob must be a probability in [0, 1], got {self.cond_drop_prob}. The paper-style value "
                "for classifier-free guidance is 0.1; use 0 to train without condition dropout."
            )
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(
                f"image_size must be a positive integer (the training resolution), got {self.image_size!r}."
            )
        if self.scale_factor is not None and not (math.isfinite(self.scale_factor) and self.scale_factor > 0):
            raise ValueError(
                f"scale_factor must be a positive number or None (= computed from data), got {self.scale_factor}."
            )
        derived = {"in_channels", "out_channels", "context_dim", "num_classes"} & set(self.unet_overrides)
        if derived:
            raise ValueError(
                f"unet_overrides sets {sorted(derived)}, which LatentDiffusion derives from the first stage and the "
                "conditioner (in = latent + concat channels, out = latent channels, context_dim and num_classes from "
                "the conditioner). Remove them; change the first stage or the conditioner instead."
            )

    def diffusion_cfg(self) -> DiffusionConfig:
        return diffusion_config(self.diffusion) if isinstance(self.diffusion, str) else self.diffusion

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (what a checkpoint stores); ``from_dict`` is the inverse."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatentDiffusionConfig":
        d = dict(d)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise _unknown_fields(unknown)
        if isinstance(d.get("diffusion"), Mapping):
            d["diffusion"] = DiffusionConfig(**d["diffusion"])
        return cls(**d)


def _unknown_fields(unknown: list[str]) -> ValueError:
    fields = sorted(f.name for f in dataclasses.fields(LatentDiffusionConfig))
    return ValueError(f"Unknown LatentDiffusionConfig field(s) {unknown}. Valid fields: {', '.join(fields)}.")


_NUM_SHAPE_CLASSES = 40  # ldm_minimal.data.shapes.NUM_CLASSES: 5 shapes x 8 colours (checked in the tests)
_NUM_SEMANTIC_LABELS = 6  # background + 5 shapes


def _preset(**kw: Any) -> LatentDiffusionConfig:
    return LatentDiffusionConfig(**kw)


# The course's models at CPU size on shapes-32, each with the tiny UNet and the tiny KL f = 4 first stage
# (8 x 8 x 3 latents). "shapes-sr": x4 super-resolution 8 x 8 -> 32 x 32; with f = 4 the low-resolution image
# has exactly the latent size, so tau is the identity (the paper's LDM-SR).
LDM_PRESETS: dict[str, LatentDiffusionConfig] = {
    "shapes-t2i": _preset(
        conditioner="text-joint",
        conditioner_kwargs=dict(tokenizer_path="shapes", width=64, layers=2, heads=4, max_length=32),
    ),
    # text-to-image on the emoji world (Unicode names as captions), with the tokenizer trained on those names
    "emoji-t2i": _preset(
        conditioner="text-joint",
        conditioner_kwargs=dict(tokenizer_path="emoji", width=64, layers=2, heads=4, max_length=32),
        world="emoji",
    ),
    "shapes-t2i-minilm": _preset(
        conditioner="text-frozen", conditioner_kwargs=dict(name_or_path="minilm", max_length=32)
    ),
    "shapes-class": _preset(
        conditioner="class", conditioner_kwargs=dict(num_classes=_NUM_SHAPE_CLASSES), world="single32"
    ),
    "shapes-layout": _preset(
        conditioner="layout", conditioner_kwargs=dict(num_classes=_NUM_SHAPE_CLASSES, width=64, max_objects=3)
    ),
    "shapes-semantic": _preset(conditioner="semantic", conditioner_kwargs=dict(num_labels=_NUM_SEMANTIC_LABELS)),
    "shapes-sr": _preset(conditioner="lowres", conditioner_kwargs=dict(scale=4)),
    "shapes-inpaint": _preset(conditioner="inpaint"),
    "shapes-uncond": _preset(),
    # the pixel-space DM (f = 1): the same code with the identity first stage, on [-1, 1] pixels like DDPM
    "shapes-pixel": _preset(first_stage="identity", scale_factor=1.0),
}


def ldm_config(name: str, **overrides: Any) -> LatentDiffusionConfig:
    """A copy of preset ``name`` (see ``LDM_PRESETS``) with fields replaced by ``overrides``."""
    if name not in LDM_PRESETS:
        raise unknown_name_error("latent diffusion preset", name, LDM_PRESETS)
    fields = {f.name for f in dataclasses.fields(LatentDiffusionConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise _unknown_fields(unknown)
    base = LDM_PRESETS[name]
    # deep-copy the mutable dicts so that a caller never edits the preset table
    copied = {k: dict(getattr(base, k)) for k in ("unet_overrides", "conditioner_kwargs")}
    return dataclasses.replace(base, **{**copied, **overrides})


# --------------------------------------------------------------------------------------------------------------
# The first stage
# --------------------------------------------------------------------------------------------------------------


def build_first_stage(spec: str) -> nn.Module:
    """An autoencoder preset name (random weights), ``"identity"`` (f = 1) or a checkpoint path -> first stage."""
    if not isinstance(spec, str):
        raise TypeError(
            f"first_stage must be a preset name, 'identity' or a checkpoint path, got {type(spec).__name__}."
        )
    if spec == "identity":
        return IdentityFirstStage(3)
    if spec in AUTOENCODER_PRESETS:
        return build_autoencoder(spec)
    path = Path(spec)
    if path.suffix == ".safetensors" or path.exists():
        from ldm_minimal.checkpoint import load_autoencoder

        model, _ = load_autoencoder(path)
        return model
    raise ValueError(
        f"Unknown first stage {spec!r}: give 'identity', an autoencoder preset "
        f"({', '.join(sorted(AUTOENCODER_PRESETS))}) or the path of a .safetensors autoencoder checkpoint "
        "(train one with `python -m ldm_minimal train-ae`)."
    )


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


def _pair(size: int | tuple[int, int] | torch.Size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


# --------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------


class LatentDiffusion(nn.Module):
    """A latent diffusion model (paper Sec. 3.2-3.3): frozen (E, D), epsilon_theta, tau_theta and the schedule.

    ``LatentDiffusion(cfg)`` builds everything from the config; pass ``first_stage=`` to use an already loaded
    (trained) autoencoder instead of ``cfg.first_stage``. Buffers: ``scale_factor`` (1.0 until set) and
    ``scale_factor_set``; both are saved in the state dict.
    """

    def __init__(
        self, cfg: LatentDiffusionConfig | str = "shapes-uncond", first_stage: nn.Module | None = None
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

        # ---- tau_theta
        self.conditioner: nn.Module | None = None
        if cfg.conditioner is not None:
            from ldm_minimal.conditioning import build_conditioner

            kwargs = dict(cfg.conditioner_kwargs)
            # what the conditioner needs to know about the first stage and the data, unless given explicitly
            if cfg.conditioner == "inpaint":
                kwargs.setdefault("latent_channels", self.latent_channels)
            self.conditioner = build_conditioner(cfg.conditioner, **kwargs)

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
    def _check_images(self, x: Tensor, name: str = "image") -> Tensor:
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
        x = self._check_images(images)
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
        x = self._check_images(x)
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
        """
        if self.conditioner is None:
            return {}
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"The conditions must be a batch dict (e.g. {{'caption': [...]}} or {{'class_id': tensor}}), got "
                f"{type(batch).__name__}."
            )
        cond = self._call_conditioner(self._batch_to_device(batch), None if latent_size is None else _pair(latent_size))
        cond = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in cond.items()}
        if latent_size is not None and "concat" in cond:
            cond["concat"] = self._resize_concat(cond["concat"], _pair(latent_size))
        return cond

    def _call_conditioner(self, batch: dict[str, Any], latent_size: tuple[int, int] | None) -> dict[str, Tensor]:
        assert self.conditioner is not None
        if self.cfg.conditioner == "layout":
            # boxes are in pixels of the image being made: normalise by its size
            if latent_size is not None:
                size = (latent_size[0] * self.f, latent_size[1] * self.f)
            elif isinstance(batch.get("image"), Tensor):
                size = tuple(batch["image"].shape[-2:])
            else:
                size = (self.cfg.image_size, self.cfg.image_size)
            return self.conditioner(batch, image_size=size)
        if self.cfg.conditioner == "inpaint":
            # the masked image's latent must live in the same (scaled) space as z
            return self.conditioner(batch, first_stage=self.first_stage, scale_factor=float(self.scale_factor))
        if self.conditioner.mode == "concat":
            # at latent size H / f, or at the requested latent size (semantic: area, low-res image: bicubic)
            if latent_size is not None:
                return self.conditioner(batch, first_stage=self.first_stage, latent_size=latent_size)
            return self.conditioner(batch, first_stage=self.first_stage)
        return self.conditioner(batch)

    @staticmethod
    def _resize_concat(c: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(c.shape[-2:]) == size:
            return c
        return F.interpolate(c, size=size, mode="nearest")

    def null_condition(self, batch_size: int, like: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The conditioner's null ("unconditional") condition for ``batch_size`` samples, shaped like ``like``."""
        if self.conditioner is None:
            return {}
        if self.conditioner.mode == "concat":
            size = tuple(like["concat"].shape[-2:]) if like is not None and "concat" in like else self.latent_size
            null = dict(self.conditioner.null_condition(batch_size, self.device, latent_size=size))
        else:
            null = dict(self.conditioner.null_condition(batch_size, self.device))
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
        gen_device = generator.device if generator is not None else torch.device("cpu")
        keep = (torch.rand(b, generator=generator, device=gen_device) >= p).to(self.device)  # (B,) bool
        if p <= 0 or bool(keep.all()):
            return dict(cond), keep
        return dict(self.conditioner.drop(dict(cond), keep)), keep

    def _prepare_training_batch(self, batch: Mapping[str, Any], generator: torch.Generator | None) -> dict[str, Any]:
        batch = self._batch_to_device(batch)
        if self.cfg.conditioner == "inpaint" and batch.get("mask") is None:
            # inpainting is trained on random holes (boxes and brush strokes), 1 = hole
            from ldm_minimal.masks import random_inpainting_mask

            x = batch["image"]
            mask = random_inpainting_mask((x.shape[0], 1, x.shape[-2], x.shape[-1]), generator=generator)
            batch["mask"] = mask.to(self.device, torch.float32)
        return batch

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
        condition, applies condition dropout, and returns (scalar loss, logs). All randomness (posterior sample,
        dropout, mask for inpainting, t, eps) comes from ``generator`` when given, in that order.
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
        size = None if latent_size is None else _pair(latent_size)
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
