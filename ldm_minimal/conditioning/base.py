"""The interface of every conditioning encoder tau_theta (paper Sec. 3.3): a batch dict -> the UNet's keyword arguments.

One call signature for all of them: ``conditioner(batch, first_stage=..., scale_factor=..., latent_size=...,
image_size=...)``. The keyword arguments are the ``ConditionInputs``: what some conditioners need to know about
the model and the image being made besides the batch; each reads what it needs and ignores the rest, so a caller
(``LatentDiffusion``) passes all of them and never asks which conditioner it holds. A subclass implements
``encode(batch, inputs)`` and ``null_condition(batch_size, device, latent_size=...)``; the base class provides
condition dropout (``drop``, Ho & Salimans 2022) and ``training_batch`` (what a conditioner adds to a training
batch; the inpainting conditioner draws the random holes it is trained on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn

from ldm_minimal.guidance import check_keep_mask, drop_rows

__all__ = ["MODES", "ConditionInputs", "Conditioner", "ConcatConditioner", "batch_value", "pair", "module_device"]

MODES = ("crossattn", "class", "concat")


# ----------------------------------------------------------------------------------------------------------------
# Small helpers


def batch_value(batch: dict, key: str, who: str, hint: str = "") -> Any:
    """batch[key], with errors that name the conditioner (``who``), the keys the batch has and ``hint``."""
    if not isinstance(batch, dict):
        raise TypeError(f"{who} expects a batch dict (as made by the data worlds' collate), got {type(batch).__name__}.")
    if key not in batch:
        raise KeyError(
            f"{who} reads batch[{key!r}], but the batch only has keys {sorted(batch)}. {hint}".strip()
        )
    return batch[key]


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    """A size as (h, w): an int s means (s, s)."""
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def module_device(module: nn.Module) -> torch.device | None:
    """The device of a module's first parameter (or buffer); None for a module without tensors."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return None


# ----------------------------------------------------------------------------------------------------------------
# The interface


@dataclass(frozen=True)
class ConditionInputs:
    """What a conditioner may need besides the batch (every field optional; each conditioner reads its own).

    first_stage   the frozen autoencoder (attributes f, latent_channels, encode_latent): semantic maps and low-res
                  images are resized to its latent size H / f; inpainting encodes the masked image with it.
    scale_factor  the latent scale of the model (a float or a 0-d tensor): inpainting scales the masked image's
                  latent like z.
    latent_size   (h, w) or an int: the latent being made, when it is not H / f of the batch's images (sampling
                  beyond the training resolution).
    image_size    (H, W) or an int: the pixels of the image being made; layout boxes are normalised by it.
    """

    first_stage: nn.Module | None = None
    scale_factor: float | torch.Tensor | None = None
    latent_size: int | Sequence[int] | None = None
    image_size: int | Sequence[int] | None = None


class Conditioner(nn.Module):
    """Base class of every tau_theta: batch dict -> UNet keyword arguments (paper Sec. 3.3).

    mode        "crossattn" -> {"context": (B, L, D), "context_mask": (B, L) bool, True = real token}
                "class"     -> {"y": (B,) long}
                "concat"    -> {"concat": (B, C_c, h, w)} at latent resolution h = H / f
    trainable   True when its parameters are trained jointly with the UNet.
    """

    mode: str = ""
    trainable: bool = False

    def forward(
        self,
        batch: dict,
        *,
        first_stage: nn.Module | None = None,
        scale_factor: float | torch.Tensor | None = None,
        latent_size: int | Sequence[int] | None = None,
        image_size: int | Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """tau_theta(y): the UNet keyword arguments for the conditions in ``batch``; see ``ConditionInputs``."""
        return self.encode(batch, ConditionInputs(first_stage, scale_factor, latent_size, image_size))

    def encode(self, batch: dict, inputs: ConditionInputs) -> dict[str, torch.Tensor]:
        """What a conditioner implements: batch + inputs -> the UNet keyword arguments of its mode."""
        raise NotImplementedError

    def null_condition(
        self, batch_size: int, device: torch.device | str | None = None, *, latent_size: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """The unconditional input for classifier-free guidance, with the same keys as forward's output.

        latent_size (h, w) is the size of a concat condition; the other modes ignore it.
        """
        raise NotImplementedError

    def drop(self, cond: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """Condition dropout: rows where keep (B,) is False are replaced by the null condition.

        The result has the same keys, shapes and dtypes as ``cond``; rows where keep is True are unchanged.
        """
        b, keep = check_keep_mask(cond, keep)
        device = next(iter(cond.values())).device
        latent_size = tuple(cond["concat"].shape[-2:]) if "concat" in cond else None
        null = self.null_condition(b, device, latent_size=latent_size)
        return drop_rows(cond, null, keep, who=type(self).__name__)

    def training_batch(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        """The batch a training step conditions on: what this conditioner adds to a data batch (default: nothing)."""
        return batch

    @classmethod
    def first_stage_kwargs(cls, first_stage: nn.Module) -> dict[str, Any]:
        """Constructor arguments this conditioner takes from the first stage unless they are given (default: none)."""
        return {}

    def latent_hw(self, h: int, w: int, inputs: ConditionInputs) -> tuple[int, int]:
        """The latent size h x w = H / f x W / f of an H x W image: from inputs.latent_size, else inputs.first_stage.f,
        else the size the conditioner was built with."""
        if inputs.latent_size is not None:
            return pair(inputs.latent_size)
        if inputs.first_stage is not None:
            f = int(getattr(inputs.first_stage, "f"))
            if h % f or w % f:
                raise ValueError(
                    f"The images are {h}x{w}, which is not divisible by the first stage's f={f}; resize or crop "
                    f"to a multiple of {f}."
                )
            return h // f, w // f
        if getattr(self, "latent_size", None) is not None:
            return pair(self.latent_size)
        raise ValueError(
            f"{type(self).__name__} needs the latent size h x w = H/f x W/f: pass first_stage= (an autoencoder with "
            f"attribute f) or latent_size=(h, w) to this call, or build it with latent_size=(h, w)."
        )


class ConcatConditioner(Conditioner):
    """A spatially aligned condition, concatenated to z_t on the channels: {"concat": (B, concat_channels, h, w)}.

    Its null condition is zeros at the latent size (semantic maps, low-resolution images, masked images).
    """

    mode = "concat"
    concat_channels: int = 0

    def null_condition(
        self, batch_size: int, device: torch.device | str | None = None, *, latent_size: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        h, w = self.latent_hw(0, 0, ConditionInputs(latent_size=latent_size))
        # null: c = 0, (B, C_c, h, w)
        return {"concat": torch.zeros(batch_size, self.concat_channels, h, w, device=device)}
