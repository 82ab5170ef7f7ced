"""What a latent diffusion model is made of: its config, the course's presets, and the first stage a config names.

A ``LatentDiffusionConfig`` (paper Sec. 3-4, App. E) names the four pieces ``LatentDiffusion`` builds: the first
stage (E, D), the UNet epsilon_theta, the conditioner tau_theta and the diffusion schedule, plus the training
choices that travel with the model (condition dropout for classifier-free guidance, the training resolution and
the latent scale factor). It is plain data: a checkpoint stores ``to_dict()`` and rebuilds it with ``from_dict``.

``LDM_PRESETS`` holds the course's models at CPU size on shapes-32 (one per conditioning mode of the paper);
``ldm_config(name, **overrides)`` copies one. ``build_first_stage`` turns a config's ``first_stage`` (an
autoencoder preset, "identity" or a checkpoint path) into the module.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ldm_minimal.autoencoder import AUTOENCODER_PRESETS, IdentityFirstStage, build_autoencoder, load_autoencoder
from ldm_minimal.diffusion import DiffusionConfig, diffusion_config
from ldm_minimal.utils import unknown_name_error

__all__ = ["LatentDiffusionConfig", "LDM_PRESETS", "ldm_config", "build_first_stage"]


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
    conditioner / conditioner_kwargs: a ``build_conditioner`` name (a key of ``conditioning.CONDITIONERS``: "class",
        "text-joint", "text-frozen", "layout", "semantic", "lowres", "inpaint") or None for an unconditional model.
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
# The first stage a config names
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
        model, _ = load_autoencoder(path)
        return model
    raise ValueError(
        f"Unknown first stage {spec!r}: give 'identity', an autoencoder preset "
        f"({', '.join(sorted(AUTOENCODER_PRESETS))}) or the path of a .safetensors autoencoder checkpoint "
        "(train one with `python -m ldm_minimal train ae --out runs/ae`)."
    )
