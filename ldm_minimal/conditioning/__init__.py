"""tau_theta: the conditioning encoders of latent diffusion (Rombach et al., CVPR 2022, Sec. 3.3 and 4.3-4.5).

The paper conditions the denoiser epsilon_theta(z_t, t, y) on a signal y in one of three ways (a conditioner's
``mode``):

    crossattn   a domain-specific encoder tau_theta maps y to tokens tau_theta(y) in R^{M x d_tau}; the UNet's
                cross-attention layers read them (Sec. 3.3; objective Eq. 3).
    class       a class label y is embedded and added to the time embedding (the "adm" mode of the reference);
                the embedding table itself lives in the UNet.
    concat      a spatially aligned signal is resized to the latent size h x w = H/f x W/f and concatenated to z_t
                along the channels.

The conditioners, by the name ``build_conditioner`` and ``LatentDiffusionConfig.conditioner`` know them by:

    name          class                  mode       paper                                   module
    text-joint    JointTextConditioner   crossattn  text-to-image, LDM-KL-8-G (Sec. 4.3.1)  conditioning/text.py
    text-frozen   FrozenTextConditioner  crossattn  a frozen pretrained text encoder (the    conditioning/text.py
                                                    Stable Diffusion way; not in the paper)
    layout        LayoutConditioner      crossattn  layout-to-image (Sec. 4.3.1, App. D.3)  conditioning/spatial.py
    class         ClassConditioner       class      class-conditional ImageNet (Sec. 4.3.1,  conditioning/classes.py
                                                    Tab. 3)
    semantic      SemanticConditioner    concat     semantic synthesis (Sec. 4.3.2)         conditioning/spatial.py
    lowres        LowResConditioner      concat     super-resolution, tau = identity        conditioning/images.py
                                                    (Sec. 4.4)
    inpaint       InpaintConditioner     concat     inpainting: the masked image's latent   conditioning/images.py
                                                    and the mask (Sec. 4.5)

Every one is a ``Conditioner`` (conditioning/base.py) with one call signature: ``conditioner(batch,
first_stage=..., scale_factor=..., latent_size=..., image_size=...)`` reads what it needs from a batch dict (as
made by the data worlds' collate) and returns the UNet's keyword arguments ({"context", "context_mask"}, {"y"} or
{"concat"}). For classifier-free guidance (Ho & Salimans 2022; the paper's text-to-image samples, Sec. 4.3.1) each
one also has a null condition (the "unconditional" input, ``null_condition(batch_size, device, latent_size=...)``)
and ``drop``, which replaces some rows by it during training (condition dropout, p ~ 0.1, ldm_minimal/guidance.py).
The reference training code has no condition dropout; we add it.

Run ``python -m ldm_minimal.conditioning`` to re-train the shipped tokenizers (data/tokenizers/shapes.json, emoji.json).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ldm_minimal.conditioning.base import Conditioner
from ldm_minimal.conditioning.classes import ClassConditioner
from ldm_minimal.conditioning.images import InpaintConditioner, LowResConditioner
from ldm_minimal.conditioning.spatial import LayoutConditioner, SemanticConditioner
from ldm_minimal.conditioning.text import FrozenTextConditioner, JointTextConditioner, TextConditioner
from ldm_minimal.utils import unknown_name_error

__all__ = ["CONDITIONERS", "TEXT_CONDITIONERS", "build_conditioner"]

# the one list of conditioner names
CONDITIONERS: dict[str, type[Conditioner]] = {
    "class": ClassConditioner,
    "text-joint": JointTextConditioner,
    "text-frozen": FrozenTextConditioner,
    "layout": LayoutConditioner,
    "semantic": SemanticConditioner,
    "lowres": LowResConditioner,
    "inpaint": InpaintConditioner,
}
# the conditioners that read a prompt (batch["caption"])
TEXT_CONDITIONERS: tuple[str, ...] = tuple(name for name, cls in CONDITIONERS.items() if issubclass(cls, TextConditioner))


def build_conditioner(name: str, *, first_stage: nn.Module | None = None, **kwargs: Any) -> Conditioner:
    """A conditioner by name: class, text-joint, text-frozen, layout, semantic, lowres, inpaint.

    With ``first_stage``, what the conditioner takes from it (``Conditioner.first_stage_kwargs``, e.g. the
    inpainting conditioner's latent_channels) fills the arguments that ``kwargs`` does not give.
    """
    if name not in CONDITIONERS:
        raise unknown_name_error("conditioner", name, list(CONDITIONERS))
    cls = CONDITIONERS[name]
    derived = cls.first_stage_kwargs(first_stage) if first_stage is not None else {}
    return cls(**{**derived, **kwargs})
