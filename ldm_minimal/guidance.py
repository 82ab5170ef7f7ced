"""Classifier-free guidance (Ho & Salimans, 2021), as the paper uses it for its conditional samples (Sec. 4.3.1).

One network learns both the conditional eps_theta(z_t, t, y) and the unconditional eps_theta(z_t, t, null):

- training, condition dropout: each sample's condition is replaced by the conditioner's null condition with
  probability p (~0.1; ``condition_keep_mask``, ``drop_rows``). The reference training code has no condition
  dropout; we add it (``LatentDiffusion.drop_conditions``, ``Conditioner.drop``).
- sampling, the guided output: eps~ = eps_u + s (eps_c - eps_u) with guidance scale s (``guided_model_output``);
  s = 1 is the plain conditional model, s = 0 the unconditional one, s > 1 (e.g. 3-7) follows the condition
  harder. Both branches run as ONE network call on the batch [uncond; cond] (``merge_conditions``).

A condition is a dict of tensors passed to the network as keyword arguments, e.g. {"context": (B, L, D),
"context_mask": (B, L)}, {"y": (B,)} or {"concat": (B, C, h, w)}; its null condition has the same keys and shapes.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Mapping

import torch
from einops import rearrange

__all__ = [
    "condition_keep_mask",
    "check_keep_mask",
    "drop_rows",
    "check_guidance_scale",
    "merge_conditions",
    "guided_model_output",
]

ModelFn = Callable[..., torch.Tensor]
Cond = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------- training
def condition_keep_mask(
    batch_size: int, p_drop: float = 0.1, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """(B,) bool, True = keep the condition, False (probability p_drop) = replace it by the null condition.

    Drawn on the generator's device (the CPU by default, the same on every machine), then moved to ``device``.
    """
    if not 0.0 <= p_drop <= 1.0:
        raise ValueError(f"p_drop is a probability in [0, 1] (the paper's CFG models use ~0.1), got {p_drop}.")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    # keep_i = [u_i >= p_drop], u_i ~ U[0, 1): P(drop) = p_drop
    return (torch.rand(batch_size, generator=generator, device=gen_device) >= p_drop).to(device)


def check_keep_mask(cond: Cond, keep: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(B, keep as bool on the condition's device) for a condition dict and its keep mask; clear errors otherwise."""
    if not cond:
        raise ValueError("drop() got an empty condition dict; pass the output of this conditioner's forward().")
    first = next(iter(cond.values()))
    b = first.shape[0]
    if not isinstance(keep, torch.Tensor) or keep.shape != (b,):
        got = tuple(keep.shape) if isinstance(keep, torch.Tensor) else type(keep).__name__
        raise ValueError(
            f"keep must be a (B,) = ({b},) bool tensor (True = keep the condition), got {got}. "
            "Make one with condition_keep_mask(B, p_drop, generator)."
        )
    return b, keep.to(device=first.device, dtype=torch.bool)


def drop_rows(cond: Cond, null: Cond, keep: torch.Tensor, who: str = "the conditioner") -> dict[str, torch.Tensor]:
    """Condition dropout: rows where keep (B,) is False take the null condition's row, the others stay unchanged.

    The result has the keys, shapes and dtypes of ``cond``; ``null`` must hold every key of ``cond`` with the same
    shape (``who`` names its maker in the errors).
    """
    b = keep.shape[0]
    out = {}
    for k, v in cond.items():
        if k not in null:
            raise KeyError(f"drop() got key {k!r}, which {who} does not produce ({sorted(null)}).")
        n = null[k].to(device=v.device, dtype=v.dtype)
        if n.shape != v.shape:
            raise ValueError(
                f"The null condition's {k!r} has shape {tuple(n.shape)} but the condition's is {tuple(v.shape)}; "
                "pad/truncate the condition to this conditioner's fixed length."
            )
        rows = keep.view(b, *([1] * (v.ndim - 1)))
        # c_i <- c_i if keep_i else null_i
        out[k] = torch.where(rows, v, n)
    return out


# ---------------------------------------------------------------------------------------------- sampling
def check_guidance_scale(guidance_scale: float) -> float:
    """The guidance scale s as a float: a finite number >= 0 (TypeError / ValueError naming the fix otherwise)."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise TypeError(f"guidance_scale must be a number >= 0, got {type(guidance_scale).__name__}.")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(
            f"guidance_scale must be a finite number >= 0, got {guidance_scale}. Use 1.0 for the plain conditional "
            "model, 0.0 for the unconditional one, and values > 1 (e.g. 3-7) for stronger guidance."
        )
    return float(guidance_scale)


def merge_conditions(uncond: Cond, cond: Cond, batch: int) -> dict[str, Any]:
    """[uncond, cond] concatenated along dim 0, key by key. A batch-1 entry is broadcast to the batch."""
    if set(uncond) != set(cond):
        raise ValueError(
            f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}. Build the null "
            "condition with the same entries (e.g. the empty-prompt context for 'context', the null class for 'y')."
        )
    merged: dict[str, Any] = {}
    for key in cond:
        u, c = uncond[key], cond[key]
        if u is None and c is None:
            merged[key] = None
        elif isinstance(u, torch.Tensor) and isinstance(c, torch.Tensor):
            parts = []
            for which, v in (("uncond", u), ("cond", c)):
                if v.ndim == 0:
                    raise ValueError(f"{which}[{key!r}] is a 0-d tensor; conditions need a batch dimension (B, ...).")
                if v.shape[0] == 1 and batch > 1:
                    v = v.expand(batch, *v.shape[1:])
                if v.shape[0] != batch:
                    raise ValueError(
                        f"{which}[{key!r}] has batch size {v.shape[0]} but x has {batch}. Give one condition per "
                        "sample (or a batch of 1 to share it)."
                    )
                parts.append(v)
            if parts[0].shape[1:] != parts[1].shape[1:]:
                raise ValueError(
                    f"uncond[{key!r}] has shape {tuple(u.shape)} but cond[{key!r}] has {tuple(c.shape)}; apart from "
                    "the batch they must match (pad both token sequences to the same length)."
                )
            # (2B, ...) = [uncond; cond]
            merged[key] = torch.cat([parts[0], parts[1].to(parts[0].dtype)], dim=0)
        elif not isinstance(u, torch.Tensor) and not isinstance(c, torch.Tensor) and u == c:
            merged[key] = c  # a shared non-tensor option, passed through
        else:
            raise ValueError(
                f"cond[{key!r}] and uncond[{key!r}] must both be tensors (or both None / the same value), got "
                f"{type(c).__name__} and {type(u).__name__}."
            )
    return merged


def guided_model_output(
    model_fn: ModelFn,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Cond | None = None,
    uncond: Cond | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans, 2021, Eq. 6; LDM paper Sec. 4.3.1).

    eps~ = eps_theta(z_t, t, null) + s * (eps_theta(z_t, t, c) - eps_theta(z_t, t, null)); the same linear
    combination is applied to v outputs. x: (B, C, h, w), t: (B,). Network calls:
    s == 1 or uncond is None -> one conditional call; s == 0 -> one unconditional call; otherwise ONE batched
    call on [uncond, cond] of batch 2B. Returns (B, C, h, w) in at least float32.
    """
    s = check_guidance_scale(guidance_scale)
    cond = dict(cond or {})
    if uncond is None or s == 1.0:
        if uncond is None and s != 1.0 and cond:
            warnings.warn(
                f"guidance_scale={s} has no effect because uncond is None: pass the null condition as uncond "
                "to use classifier-free guidance.",
                stacklevel=3,
            )
        return model_fn(x, t, **cond)
    if s == 0.0:
        return model_fn(x, t, **dict(uncond))
    both = merge_conditions(uncond, cond, x.shape[0])
    # one network evaluation for both branches: (2B, C, h, w)
    out = model_fn(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), **both)
    if out.dtype in (torch.float16, torch.bfloat16):
        out = out.float()
    out_u, out_c = rearrange(out, "(two b) ... -> two b ...", two=2)
    # eps~ = eps_u + s * (eps_c - eps_u)
    return out_u + s * (out_c - out_u)
