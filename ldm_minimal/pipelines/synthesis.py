"""Sampling from a text-, class-conditional or unconditional LDM (paper Sec. 4.2 and 4.3.1).

Conditional models are sampled with classifier-free guidance,

    eps_hat = eps_theta(z_t, t, null) + s * (eps_theta(z_t, t, tau_theta(y)) - eps_theta(z_t, t, null)),

with the guidance scale s (s = 1: the plain conditional model). Each function returns (len(conditions) * n, 3, H, W)
in [-1, 1] on the CPU, condition-major: rows [i * n, (i + 1) * n) belong to conditions[i].
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ldm_minimal.conditioning import TEXT_CONDITIONERS
from ldm_minimal.data.shapes import COLOUR_NAMES, SHAPES, class_id_for
from ldm_minimal.latent_diffusion import LatentDiffusion
from ldm_minimal.pipelines.sampling import (
    GenerationError,
    check_sampling,
    check_size,
    condition_list,
    on_device,
    require_conditioner,
    sample_conditions,
    seeded_sample,
)

__all__ = ["warn_unknown_words", "text_to_image", "class_index", "class_to_image", "unconditional_samples"]


def warn_unknown_words(ldm: LatentDiffusion, prompts: Sequence[str]) -> list[str]:
    """Warn (UserWarning) when a prompt has words the model's tokenizer maps to [UNK]: the model cannot read them,
    and a prompt made only of them is sampled as if unconditional. Returns the warning lines (empty: all known)."""
    unknown_words = getattr(ldm.conditioner, "unknown_words", None)
    if unknown_words is None:
        return []
    lines = []
    for p in dict.fromkeys(prompts):  # each distinct prompt once
        unknown = unknown_words(p)
        if not unknown:
            continue
        tok = ldm.conditioner.tokenizer
        every = all(i == tok.unk_token_id for i in tok(p, add_special_tokens=False)["input_ids"])
        are = "are" if len(unknown) > 1 else "is"
        what = ("has no word this model knows" if every else "has words this model does not know")
        then = ("so it is sampled as if unconditional (like the empty prompt)" if every else "so they are ignored")
        lines.append(f"The prompt {p!r} {what}: {', '.join(repr(w) for w in unknown)} {are} unknown to its tokenizer "
                     f"([UNK]), {then}. Use the model's words: {ldm.conditioner.vocabulary_hint()}.")
    for line in lines:
        warnings.warn(line, UserWarning, stacklevel=3)
    return lines


def text_to_image(
    ldm: LatentDiffusion,
    prompts: Sequence[str],
    n_per_prompt: int = 1,
    guidance: float = 3.0,
    steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """Text-to-image with classifier-free guidance (paper Sec. 4.3.1): (len(prompts) * n, 3, H, W) in [-1, 1].

    Samples are prompt-major: rows [i * n, (i + 1) * n) belong to prompts[i]. guidance is the scale s of
    eps_u + s * (eps_c - eps_u) (s = 1: the plain conditional model). size is the output side in pixels (a multiple
    of f * UNet downsampling; default the training size). The same seed gives the same tensor.
    """
    require_conditioner(ldm, TEXT_CONDITIONERS, "text_to_image")
    prompts = condition_list(prompts, "prompt", '["a large red circle in the center"]')
    bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
    if bad:
        raise GenerationError(f"Every prompt must be a non-empty string, got {bad[0]!r}.")
    ldm = on_device(ldm, device)
    check_sampling(steps, n_per_prompt, eta, sampler)
    side = check_size(ldm, size)
    warn_unknown_words(ldm, prompts)
    captions = [p for p in prompts for _ in range(n_per_prompt)]  # prompt-major
    return seeded_sample(ldm, {"caption": captions}, side=side, guidance=guidance, steps=steps, sampler=sampler,
                         eta=eta, seed=seed, progress=progress)


def class_index(ldm: LatentDiffusion, c: int | str) -> int:
    """A class given as an int, a digit string or a shapes name "<colour> <shape>" -> a checked class index."""
    num = int(ldm.conditioner.num_classes)
    if isinstance(c, str) and c.strip().lstrip("-").isdigit():
        c = int(c.strip())
    if isinstance(c, str):
        words = c.strip().lower().split()
        if len(words) != 2 or words[0] not in COLOUR_NAMES or words[1] not in SHAPES:
            raise GenerationError(
                f"Unknown class {c!r}. A class is an index 0..{num - 1} or a name '<colour> <shape>' such as "
                f"'red circle' (colours {', '.join(COLOUR_NAMES)}; shapes {', '.join(SHAPES)})."
            )
        c = class_id_for(words[1], words[0])
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= int(c) < num:
        raise GenerationError(f"Class {c!r} is out of range: this model has classes 0..{num - 1}.")
    return int(c)


def class_to_image(
    ldm: LatentDiffusion,
    classes: Sequence[int | str],
    n_per_class: int = 1,
    guidance: float = 3.0,
    steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """Class-conditional synthesis (paper Sec. 4.3.1, Tab. 3) with classifier-free guidance: (len * n, 3, H, W).

    classes: ints or shapes names like "red circle" (ldm_minimal.data.shapes.class_id_for). Class-major order.
    """
    require_conditioner(ldm, ("class",), "class_to_image")
    ids = [class_index(ldm, c) for c in condition_list(classes, "class", '["red circle"] or [0]')]
    ldm = on_device(ldm, device)
    check_sampling(steps, n_per_class, eta, sampler)
    side = check_size(ldm, size)
    y = torch.tensor([i for i in ids for _ in range(n_per_class)])  # (B,) class-major
    return seeded_sample(ldm, {"class_id": y}, side=side, guidance=guidance, steps=steps, sampler=sampler, eta=eta,
                         seed=seed, progress=progress)


def unconditional_samples(
    ldm: LatentDiffusion,
    n: int = 4,
    steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """n samples of an unconditional LDM (paper Sec. 4.2): z_T ~ N(0, I) -> DDIM/DDPM -> D(z_0). (n, 3, H, W)."""
    require_conditioner(ldm, (None,), "unconditional_samples")
    ldm = on_device(ldm, device)
    return sample_conditions(ldm, n, guidance=1.0, steps=steps, sampler=sampler, eta=eta, seed=seed, size=size,
                             progress=progress, n=n)
