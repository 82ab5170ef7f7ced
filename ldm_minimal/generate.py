"""Generation with trained latent diffusion models: the ``sample``, ``inpaint`` and ``upscale`` commands and the demo.

This module is the user-facing end of the course. It loads a checkpoint written by ``save_ldm`` and runs the
paper's three headline applications (Rombach et al., CVPR 2022):

    Sec. 4.3    conditional synthesis: text-to-image with classifier-free guidance
                eps_hat = eps_theta(z_t, t, null) + s * (eps_theta(z_t, t, tau_theta(y)) - eps_theta(z_t, t, null)),
                class-conditional and layout-to-image (App. D.3) models
    Sec. 4.4    super-resolution (LDM-SR): the low-resolution image is concatenated to z_t (tau = identity)
    Sec. 4.5    inpainting: the masked image's latent and the mask are concatenated to z_t; the known pixels are
                composited back, x_out = (1 - m) * x + m * x_hat

Library functions (tensors in [-1, 1], channels first):

    text_to_image(ldm, prompts, n_per_prompt, guidance, ...)   -> (len(prompts) * n, 3, H, W)
    class_to_image(ldm, classes, ...)                          classes: ints or names like "red circle"
    layout_to_image(ldm, layouts, ...)                         layouts: object lists with pixel bboxes, or captions
    unconditional_samples(ldm, n, ...)
    inpaint_image(ldm, image, mask, n, ...) / upscale_image(ldm_sr, lowres, n, ...)
    load_image(path, size) / load_mask(path, like)             files -> tensors, with clear errors

Reproducibility: every function draws all its noise from ``torch.Generator().manual_seed(seed)`` on the CPU (the
samplers move the draws to the model's device), so the same seed gives the same tensor, and the commands write
byte-identical PNGs.

Commands (registered on an argparse subparsers object by ``add_generation_commands``):

    python -m ldm_minimal sample  --prompt "a large red circle in the center" --n 4
    python -m ldm_minimal inpaint --image picture.png --mask hole.png
    python -m ldm_minimal upscale --image small.png

Each writes sample_000.png, ..., a grid (sample) or a panel (inpaint, upscale) and samples.json (checkpoint path and
sha256 prefix, the conditions, seed, guidance, steps, sampler, eta and which file is which), and refuses to replace
files already in --out unless --overwrite is given. ``run_demo`` makes the course's one-picture summary.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ldm_minimal import utils
from ldm_minimal.checkpoint import CheckpointError, load_ldm, sha256_of
from ldm_minimal.data.shapes import (
    COLOUR_NAMES,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapesConfig,
    class_id_for,
    parse_caption,
)
from ldm_minimal.utils import default_device, image_grid, save_image, to_uint8

__all__ = [
    "SHIPPED",
    "GenerationError",
    "shipped_checkpoint",
    "resolve_checkpoint",
    "text_to_image",
    "class_to_image",
    "layout_to_image",
    "layout_objects",
    "caption_box",
    "class_index",
    "unconditional_samples",
    "inpaint_image",
    "upscale_image",
    "load_image",
    "load_mask",
    "labeled_rows",
    "add_generation_commands",
    "run_demo",
    "DEMO_PROMPTS",
    "DEMO_EMOJI_PROMPTS",
]

# --------------------------------------------------------------------------------------------------------------
# Shipped checkpoints
# --------------------------------------------------------------------------------------------------------------

# file names under DATA_DIR / "checkpoints" (read at call time, so that LDM_MINIMAL_DATA and tests can move it)
SHIPPED: dict[str, str] = {
    "t2i": "shapes32-t2i.safetensors",
    "inpaint": "shapes32-inpaint.safetensors",
    "sr": "shapes32-sr.safetensors",
    "emoji": "emoji32-t2i.safetensors",
}
# the latent diffusion preset each shipped checkpoint was trained from (for the "how to train it" hints)
SHIPPED_PRESETS: dict[str, str] = {  # the --model of the training command that makes each shipped checkpoint
    "t2i": "shapes-t2i",
    "inpaint": "shapes-inpaint",
    "sr": "shapes-sr",
    "emoji": "emoji-t2i",
}
CHECKPOINT_DIR: Path | None = None  # None = utils.DATA_DIR / "checkpoints"

TEXT_CONDITIONERS = ("text-joint", "text-frozen")
# what `sample` needs for each conditioner (None = unconditional)
SAMPLE_FLAG: dict[str | None, str | None] = {
    "text-joint": "prompt",
    "text-frozen": "prompt",
    "class": "class",
    "layout": "layout",
    None: None,
}
# how to use the models that `sample` cannot drive
OTHER_COMMAND: dict[str, str] = {
    "inpaint": "it is an inpainting model: use `python -m ldm_minimal inpaint --image IMG --mask MASK --checkpoint ...`",
    "lowres": "it is a super-resolution model: use `python -m ldm_minimal upscale --image LOWRES --checkpoint ...`",
    "semantic": "it is a semantic-synthesis model: call LatentDiffusion.sample({'semantic': label_map}) from Python",
}


class GenerationError(ValueError):
    """Bad input to a generation function or command; the message names the problem and the fix."""


def checkpoint_dir() -> Path:
    """Where the shipped checkpoints live: DATA_DIR / "checkpoints" (DATA_DIR follows $LDM_MINIMAL_DATA)."""
    return CHECKPOINT_DIR if CHECKPOINT_DIR is not None else utils.DATA_DIR / "checkpoints"


def shipped_checkpoint(kind: str) -> Path:
    """The path of a shipped checkpoint: kind in SHIPPED ("t2i", "inpaint", "sr", "emoji"); it may not exist."""
    if kind not in SHIPPED:
        raise utils.unknown_name_error("shipped checkpoint", kind, SHIPPED)
    return checkpoint_dir() / SHIPPED[kind]


def resolve_checkpoint(path: str | Path | None, kind: str) -> Path:
    """``path`` if given, else the shipped checkpoint of ``kind``; a missing file raises FileNotFoundError saying
    which file is missing and how to get it."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"Checkpoint {p} does not exist. Check the path; a latent diffusion checkpoint is the .safetensors "
                "file written by save_ldm (the training run's output)."
            )
        return p
    p = shipped_checkpoint(kind)
    if not p.is_file():
        raise FileNotFoundError(
            f"The shipped {kind!r} checkpoint is missing: {p} does not exist. Restore it from the repository "
            f"(git checkout -- {p.name} in {p.parent}), train one (`python -m ldm_minimal train ldm --preset cpu "
            f"--model {SHIPPED_PRESETS[kind]} --first-stage <autoencoder> --out runs/x`, then `python -m ldm_minimal "
            f"export --run runs/x --to {p}`; data/checkpoints/MANIFEST.json has the exact commands), or pass "
            "--checkpoint PATH (Python: checkpoints={...})."
        )
    return p


# --------------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------------


def _conditioner(ldm: Any) -> str | None:
    return ldm.cfg.conditioner


def _require(ldm: Any, allowed: Sequence[str | None], task: str) -> None:
    """Raise a GenerationError when the model's conditioner is not one ``task`` can use."""
    from ldm_minimal.latent_diffusion import LatentDiffusion

    if not isinstance(ldm, LatentDiffusion):
        raise TypeError(f"{task} needs a LatentDiffusion model (load one with load_ldm), got {type(ldm).__name__}.")
    have = _conditioner(ldm)
    if have in allowed:
        return
    want = " or ".join("an unconditional model" if a is None else f"conditioner={a!r}" for a in allowed)
    use = _usage(have)
    raise GenerationError(f"{task} needs {want}, but this model has conditioner={have!r}: {use}.")


def _usage(conditioner: str | None) -> str:
    """How a model with this conditioner is used, in words."""
    if conditioner in OTHER_COMMAND:
        return OTHER_COMMAND[conditioner]
    flag = SAMPLE_FLAG.get(conditioner)
    if flag is None:
        return "it is unconditional: use unconditional_samples (CLI: `sample --n N`, no prompt/class/layout)"
    fn = {"prompt": "text_to_image", "class": "class_to_image", "layout": "layout_to_image"}[flag]
    return f"use {fn} (CLI: `sample --{flag} ...`)"


def _unit(ldm: Any) -> int:
    """Image sides must be multiples of f * UNet downsampling (encoder and UNet both halve the size)."""
    return int(ldm.f * ldm.unet.cfg.downsampling)


def _check_size(ldm: Any, size: int | None) -> int:
    """The output side in pixels (default: the training size), checked against f * UNet downsampling."""
    if size is None:
        return int(ldm.cfg.image_size)
    unit = _unit(ldm)
    if isinstance(size, bool) or not isinstance(size, int) or size < unit or size % unit:
        lo = max(unit, (int(size) // unit) * unit) if isinstance(size, (int, float)) and size > 0 else unit
        raise GenerationError(
            f"size={size!r} cannot be generated by this model: the image side must be a positive multiple of "
            f"f * UNet downsampling = {ldm.f} * {ldm.unet.cfg.downsampling} = {unit} (e.g. {lo} or {lo + unit}). "
            f"It was trained at {ldm.cfg.image_size}; larger sizes work because the UNet is convolutional."
        )
    return size


def _check_sampling(steps: int, n: int, eta: float, sampler: str) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise GenerationError(f"steps must be a positive integer (DDIM: 25-50 is typical), got {steps!r}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise GenerationError(f"The number of samples must be a positive integer, got {n!r}.")
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise GenerationError(f"eta must be a number >= 0 (0 = deterministic DDIM, 1 = DDPM-like noise), got {eta!r}.")
    if sampler not in ("ddim", "ddpm"):
        raise GenerationError(f"Unknown sampler {sampler!r}. Valid samplers: ddim, ddpm.")


def _place(ldm: Any, device: torch.device | str | None) -> Any:
    return ldm if device is None else ldm.to(torch.device(device))


def _generator(seed: int) -> torch.Generator:
    """A CPU generator: the samplers draw on it and move the noise, so a seed means the same on every device."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise GenerationError(f"seed must be an integer, got {seed!r}.")
    return torch.Generator().manual_seed(seed)


def _sample(
    ldm: Any,
    batch_or_n: dict[str, Any] | int,
    *,
    guidance: float,
    steps: int,
    sampler: str,
    eta: float,
    seed: int,
    size: int | None,
    progress: bool,
    n: int,
) -> Tensor:
    """ldm.sample with the checks and the seeded generator shared by every generation function -> CPU float32."""
    _check_sampling(steps, n, eta, sampler)
    side = _check_size(ldm, size)
    latent = (side // ldm.f, side // ldm.f)  # (h, w) = (H / f, W / f)
    x = ldm.sample(
        batch_or_n, sampler=sampler, steps=steps, eta=eta, guidance_scale=float(guidance),
        generator=_generator(seed), latent_size=latent, progress=progress,
    )  # (B, 3, H, W) in [-1, 1]
    return x.float().cpu()


def _as_list(items: Any, what: str, example: str) -> list:
    if isinstance(items, (str, bytes, int)) and not isinstance(items, bool):
        items = [items]
    items = list(items)
    if not items:
        raise GenerationError(f"Give at least one {what}, e.g. {example}.")
    return items


# --------------------------------------------------------------------------------------------------------------
# Sec. 4.3: conditional synthesis
# --------------------------------------------------------------------------------------------------------------


def text_to_image(
    ldm: Any,
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
    _require(ldm, TEXT_CONDITIONERS, "text_to_image")
    prompts = _as_list(prompts, "prompt", '["a large red circle in the center"]')
    bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
    if bad:
        raise GenerationError(f"Every prompt must be a non-empty string, got {bad[0]!r}.")
    ldm = _place(ldm, device)
    _check_sampling(steps, n_per_prompt, eta, sampler)
    captions = [p for p in prompts for _ in range(n_per_prompt)]  # prompt-major
    return _sample(ldm, {"caption": captions}, guidance=guidance, steps=steps, sampler=sampler, eta=eta, seed=seed,
                   size=size, progress=progress, n=n_per_prompt)


def class_index(ldm: Any, c: int | str) -> int:
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
    ldm: Any,
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
    _require(ldm, ("class",), "class_to_image")
    ids = [class_index(ldm, c) for c in _as_list(classes, "class", '["red circle"] or [0]')]
    ldm = _place(ldm, device)
    _check_sampling(steps, n_per_class, eta, sampler)
    y = torch.tensor([i for i in ids for _ in range(n_per_class)])  # (B,) class-major
    return _sample(ldm, {"class_id": y}, guidance=guidance, steps=steps, sampler=sampler, eta=eta, seed=seed,
                   size=size, progress=progress, n=n_per_class)


def _mean(r: tuple[float, float]) -> float:
    return (r[0] + r[1]) / 2


# object side as a fraction of the grid cell: the middle of the shapes world's ranges (small ~0.57, large ~0.89)
SIZE_FRACTION: dict[str, float] = {"small": _mean(ShapesConfig.small_range), "large": _mean(ShapesConfig.large_range)}


def caption_box(position: str, size: str, image_size: int) -> list[int]:
    """The pixel bbox [x0, y0, x1, y1] (x1, y1 exclusive) of a shapes object at ``position`` of the 3x3 grid.

    The box is centred in its grid cell, with side SIZE_FRACTION[size] * cell, rounded outwards like the shapes
    world's own bboxes.
    """
    if position not in POSITIONS:
        raise utils.unknown_name_error("position", position, POSITIONS)
    if size not in SIZE_FRACTION:
        raise utils.unknown_name_error("size", size, SIZES)
    row, col = divmod(POSITIONS.index(position), 3)
    cell = image_size / 3
    side = SIZE_FRACTION[size] * cell
    cx, cy = (col + 0.5) * cell, (row + 0.5) * cell  # the cell centre
    x0, y0 = cx - side / 2, cy - side / 2
    return [max(math.floor(x0), 0), max(math.floor(y0), 0),
            min(math.ceil(x0 + side), image_size), min(math.ceil(y0 + side), image_size)]


def layout_objects(layout: str | Sequence[dict], image_size: int) -> list[dict]:
    """A layout as the LayoutConditioner reads it: [{"shape", "colour", "bbox": [x0, y0, x1, y1] pixels}, ...].

    ``layout`` is a list of object dicts (shape + colour, or class_id; bbox in pixels of the image made, or a grid
    "position" and optional "size" from which the bbox is made), its JSON text, or a shapes caption
    ("a large red circle at the top left and a small blue star in the center").
    """
    if isinstance(layout, str):
        text = layout.strip()
        if text.startswith("["):
            try:
                layout = json.loads(text)
            except json.JSONDecodeError as e:
                raise GenerationError(
                    f"The layout {text[:60]!r} is not valid JSON ({e}). Give a JSON list such as "
                    '[{"shape": "circle", "colour": "red", "bbox": [2, 2, 12, 12]}] or a shapes caption.'
                ) from e
        else:
            try:
                layout = parse_caption(text)
            except ValueError as e:
                raise GenerationError(f"The layout is neither a JSON list of objects nor a shapes caption: {e}") from e
    if not isinstance(layout, (list, tuple)) or not layout:
        raise GenerationError(
            f"A layout is a non-empty list of objects, got {layout!r}. Example: "
            '[{"shape": "circle", "colour": "red", "bbox": [2, 2, 12, 12]}].'
        )
    out = []
    for obj in layout:
        if not isinstance(obj, dict):
            raise GenerationError(f"Each layout object must be a dict (shape, colour, bbox), got {obj!r}.")
        o = dict(obj)
        if "class_id" not in o and not ("shape" in o and "colour" in o):
            raise GenerationError(f"Layout object {obj!r} needs 'shape' and 'colour' (or 'class_id').")
        if "class_id" not in o:
            class_id_for(o["shape"], o["colour"])  # a clear error for unknown names
        if "bbox" not in o:
            if "position" not in o:
                raise GenerationError(
                    f"Layout object {obj!r} needs a 'bbox' [x0, y0, x1, y1] in pixels or a grid 'position' "
                    f"({', '.join(POSITIONS)})."
                )
            o["bbox"] = caption_box(o["position"], o.get("size", "large"), image_size)
        box = o["bbox"]
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise GenerationError(f"bbox must be [x0, y0, x1, y1] in pixels, got {box!r}.")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size):
            raise GenerationError(
                f"bbox {list(box)} is not a non-empty box inside the {image_size}x{image_size} image being made "
                f"(need 0 <= x0 < x1 <= {image_size} and 0 <= y0 < y1 <= {image_size})."
            )
        o["bbox"] = [v for v in box]
        out.append(o)
    return out


def layout_to_image(
    ldm: Any,
    layouts: Sequence[str | Sequence[dict]],
    n_per_layout: int = 1,
    guidance: float = 3.0,
    steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """Layout-to-image (paper Sec. 4.3.1, App. D.3): boxes with classes -> tau_theta tokens -> cross-attention.

    layouts: per image, a list of objects (see ``layout_objects``) or a shapes caption turned into centred grid
    boxes. Boxes are in pixels of the image being made (size, default the training size). Layout-major order.
    """
    _require(ldm, ("layout",), "layout_to_image")
    if isinstance(layouts, str) or (isinstance(layouts, (list, tuple)) and layouts and isinstance(layouts[0], dict)):
        layouts = [layouts]  # one layout given on its own
    side = _check_size(ldm, size)
    objs = [layout_objects(lay, side) for lay in _as_list(layouts, "layout", '["a large red circle in the center"]')]
    most = max(len(o) for o in objs)
    if most > ldm.conditioner.max_objects:
        raise GenerationError(
            f"A layout has {most} objects but this model takes at most {ldm.conditioner.max_objects} per image."
        )
    ldm = _place(ldm, device)
    _check_sampling(steps, n_per_layout, eta, sampler)
    texts = [json.dumps(o) for o in objs]
    batch = {"objects": [t for t in texts for _ in range(n_per_layout)]}  # layout-major
    return _sample(ldm, batch, guidance=guidance, steps=steps, sampler=sampler, eta=eta, seed=seed, size=size,
                   progress=progress, n=n_per_layout)


def unconditional_samples(
    ldm: Any,
    n: int = 4,
    steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """n samples of an unconditional LDM (paper Sec. 4.1): z_T ~ N(0, I) -> DDIM/DDPM -> D(z_0). (n, 3, H, W)."""
    _require(ldm, (None,), "unconditional_samples")
    ldm = _place(ldm, device)
    return _sample(ldm, n, guidance=1.0, steps=steps, sampler=sampler, eta=eta, seed=seed, size=size,
                   progress=progress, n=n)


# --------------------------------------------------------------------------------------------------------------
# Sec. 4.5 inpainting and Sec. 4.4 super-resolution, n samples of one input
# --------------------------------------------------------------------------------------------------------------


def inpaint_image(
    ldm: Any,
    image: Tensor,
    mask: Tensor,
    n: int = 1,
    guidance: float = 1.0,
    steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """Inpainting (paper Sec. 4.5): n fillings of the hole (mask 1) of each image -> (B * n, 3, H, W), image-major.

    image (B, 3, H, W) in [-1, 1], mask (B or 1, 1, H, W). The known pixels are returned exactly (the pipeline's
    composite (1 - m) * x + m * x_hat).
    """
    from ldm_minimal.masks import check_inpainting_mask
    from ldm_minimal.pipelines import inpaint

    _require(ldm, ("inpaint",), "inpaint_image")
    _check_sampling(steps, n, eta, sampler)
    ldm = _place(ldm, device)
    utils.check_images(image, channels=3, name="image")
    m = check_inpainting_mask(mask if mask.dtype != torch.bool else mask.float(), image).cpu()  # (B, 1, H, W)
    if not bool((m >= 0.5).any()):
        raise GenerationError("The mask has no hole (no value >= 0.5): mark the pixels to fill with 1 (white).")
    x = image.float().cpu().repeat_interleave(n, dim=0)  # (B * n, 3, H, W)
    m = m.repeat_interleave(n, dim=0)
    out = inpaint(ldm, x.to(ldm.device), m.to(ldm.device), sampler=sampler, steps=steps, eta=eta,
                  guidance_scale=float(guidance), generator=_generator(seed), progress=progress)
    return out.float().cpu()


def upscale_image(
    ldm_sr: Any,
    lowres: Tensor,
    n: int = 1,
    steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    guidance: float = 1.0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """x4 super-resolution (paper Sec. 4.4, LDM-SR): n samples per low-res image -> (B * n, 3, 4h, 4w), image-major."""
    from ldm_minimal.pipelines import upscale

    _require(ldm_sr, ("lowres",), "upscale_image")
    _check_sampling(steps, n, eta, sampler)
    ldm_sr = _place(ldm_sr, device)
    utils.check_images(lowres, channels=3, name="lowres")
    y = lowres.float().cpu().repeat_interleave(n, dim=0)  # (B * n, 3, h, w)
    out = upscale(ldm_sr, y.to(ldm_sr.device), sampler=sampler, steps=steps, eta=eta,
                  guidance_scale=float(guidance), generator=_generator(seed), progress=progress)
    return out.float().cpu()


# --------------------------------------------------------------------------------------------------------------
# Files in
# --------------------------------------------------------------------------------------------------------------


def _open_image(path: str | Path, what: str):
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"The {what} {p} does not exist. Check the path (PNG or JPEG).")
    try:
        im = Image.open(p)
        im.load()
    except (UnidentifiedImageError, OSError) as e:
        raise GenerationError(f"The {what} {p} is not an image file that PIL can read ({e}). Save it as PNG.") from e
    return im


def load_image(path: str | Path, size: int | tuple[int, int] | None = None) -> Tensor:
    """An image file -> (1, 3, H, W) float32 in [-1, 1]. Transparency is composited onto white.

    size: resize to size x size (or (H, W)) with bicubic filtering; None keeps the file's size.
    """
    from PIL import Image

    from ldm_minimal.data.torch_datasets import image_to_tensor

    im = _open_image(path, "image")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    im = im.convert("RGB")
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if h < 1 or w < 1:
            raise GenerationError(f"size must be positive, got {size!r}.")
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BICUBIC)
    return image_to_tensor(im)[None]  # (1, 3, H, W)


def load_mask(path: str | Path, like: Tensor | tuple[int, int]) -> Tensor:
    """A mask file -> (1, 1, H, W) float32 in {0, 1}: white (>= 0.5 after grey conversion) = the hole to fill.

    ``like`` is the image (…, H, W) the mask belongs to, or its (H, W). Raises a GenerationError for a mask of
    another size, a mask with no hole, or a picture that is not a black/white mask (many grey pixels).
    """
    im = _open_image(path, "mask")
    h, w = (int(like.shape[-2]), int(like.shape[-1])) if isinstance(like, Tensor) else (int(like[0]), int(like[1]))
    if im.size != (w, h):
        raise GenerationError(
            f"The mask {path} is {im.size[1]}x{im.size[0]} (HxW) but the image is {h}x{w}: draw the mask at the "
            f"image's size (or resize it to {w}x{h} with nearest-neighbour filtering, which keeps it black/white)."
        )
    v = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)  # (H, W) in [0, 1]
    m = (v >= 0.5).float()  # 1 = hole
    if not bool(m.any()):
        raise GenerationError(
            f"The mask {path} has no hole: every pixel is below 0.5 (dark). Paint the region to fill white (255) "
            "on black (0)."
        )
    # a black/white mask (maybe anti-aliased or JPEG-noisy at its edges) has few pixels far from both 0 and 1
    grey = float(((v > 0.06) & (v < 0.94)).float().mean())
    if grey > 0.2:
        raise GenerationError(
            f"The mask {path} does not look like a black/white mask: {grey:.0%} of its pixels are grey. Paint the "
            "hole white (255) on black (0); values are thresholded at 0.5 (128)."
        )
    return m[None, None]  # (1, 1, H, W)


# --------------------------------------------------------------------------------------------------------------
# Pictures out: labelled rows
# --------------------------------------------------------------------------------------------------------------


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, which has one size
        return ImageFont.load_default()


def _text_width(draw, text: str, font) -> float:
    return float(draw.textlength(text, font=font))


def labeled_rows(
    rows: Sequence[tuple[str, Tensor]],
    title: str | None = None,
    zoom: int = 4,
    label_width: int = 220,
    pad: int = 4,
    columns: int | None = None,
) -> np.ndarray:
    """A labelled picture: one row per (label, images (k, 3, h, w) in [-1, 1]), each image enlarged ``zoom`` times
    with nearest neighbours, the label (wrapped) on the left, an optional title on top. -> (H', W', 3) uint8."""
    from PIL import Image, ImageDraw

    font, title_font = _font(12), _font(14)
    h, w = (int(s) * zoom for s in rows[0][1].shape[-2:])
    ncol = columns or max(int(x.shape[0]) for _, x in rows)
    width = label_width + ncol * (w + pad) + pad
    title_h = 24 if title else 0
    height = title_h + len(rows) * (h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 4), title, fill=(0, 0, 0), font=title_font)
    for r, (label, x) in enumerate(rows):
        top = title_h + pad + r * (h + pad)
        # wrap the label to the label column
        chars = max(8, int((label_width - 2 * pad) / max(_text_width(draw, "abcdefghij", font) / 10, 1)))
        lines = textwrap.wrap(label, width=chars) or [""]
        line_h = 14
        y = top + max(0, (h - line_h * len(lines)) // 2)
        for line in lines:
            draw.text((pad, y), line, fill=(40, 40, 40), font=font)
            y += line_h
        big = x.detach().float().cpu()
        if zoom != 1:
            big = F.interpolate(big, scale_factor=zoom, mode="nearest")  # (k, 3, h * zoom, w * zoom)
        tiles = to_uint8(big)  # (k, H, W, 3)
        for c, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile), (label_width + pad + c * (w + pad), top))
    return np.asarray(canvas)


def _stack(pictures: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    """Stack (H_i, W_i, 3) uint8 pictures vertically on white, left-aligned."""
    width = max(p.shape[1] for p in pictures)
    height = sum(p.shape[0] for p in pictures) + gap * (len(pictures) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    y = 0
    for p in pictures:
        out[y : y + p.shape[0], : p.shape[1]] = p
        y += p.shape[0] + gap
    return out


# --------------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------------


def _cli(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the expected user errors into a one-line message and exit status 1 instead of a traceback."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (GenerationError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
            raise SystemExit(f"{args.command}: error: {e}") from e

    return run


def _device(name: str) -> torch.device:
    return default_device() if name in (None, "auto") else torch.device(name)


def _load(args: argparse.Namespace, kind: str) -> tuple[Any, dict, Path]:
    path = resolve_checkpoint(args.checkpoint, kind)
    ldm, meta = load_ldm(path, _device(args.device))
    return ldm, meta, path


def _refuse_overwrite(out: Path, names: Sequence[str], overwrite: bool) -> None:
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:4]) + (f" and {len(existing) - 4} more" if len(existing) > 4 else "")
        raise FileExistsError(
            f"{out} already holds {shown}, which this run would write. Refusing to overwrite: pass --overwrite "
            "to replace them, or choose another --out folder."
        )


def _write(out: Path, pictures: dict[str, np.ndarray], record: dict) -> list[Path]:
    """Write the PNGs and samples.json; print and return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [save_image(arr, out / name) for name, arr in pictures.items()]
    js = out / "samples.json"
    js.write_text(json.dumps(record, indent=2) + "\n")
    written.append(js)
    for p in written:
        print(p)
    return written


def _record(args: argparse.Namespace, path: Path, meta: dict, ldm: Any, **extra: Any) -> dict:
    # DDPM always runs all T steps of the schedule; --steps is DDIM's S
    steps = args.steps if args.sampler == "ddim" else int(ldm.diffusion.T)
    return {
        "command": args.command,
        "checkpoint": {"path": str(path), "sha256": sha256_of(path)[:16],
                       "conditioner": meta["config"]["ldm"].get("conditioner")},
        "seed": args.seed,
        "guidance": getattr(args, "guidance", 1.0),
        "steps": steps,
        "sampler": args.sampler,
        "eta": args.eta,
        **extra,
    }


def _sample_names(count: int) -> list[str]:
    return [f"sample_{i:03d}.png" for i in range(count)]


@_cli
def cmd_sample(args: argparse.Namespace) -> int:
    """`sample`: text-, class-, layout-conditional or unconditional samples from a checkpoint (Sec. 4.1, 4.3)."""
    ldm, meta, path = _load(args, "t2i")
    cond = meta["config"]["ldm"].get("conditioner")
    given = [flag for flag in ("prompt", "class", "layout") if getattr(args, flag)]
    if cond not in SAMPLE_FLAG:
        raise GenerationError(f"{path.name} has conditioner={cond!r}, which `sample` cannot drive: {_usage(cond)}.")
    want = SAMPLE_FLAG[cond]
    if len(given) > 1:
        raise GenerationError(f"Give only one of --prompt, --class and --layout (got --{' and --'.join(given)}).")
    if want is None and given:
        raise GenerationError(
            f"{path.name} is an unconditional model (conditioner=None): it takes no --{given[0]}. Use --n only."
        )
    if want is not None and given != [want]:
        got = f"--{given[0]}" if given else "no condition"
        raise GenerationError(
            f"{path.name} expects --{want} (its conditioner is {cond!r}), got {got}. Example: "
            + {"prompt": '--prompt "a large red circle in the center"', "class": '--class "red circle" or --class 0',
               "layout": '--layout "a large red circle at the top left"'}[want]
            + "."
        )
    conditions: list[str] = getattr(args, want) if want else ["unconditional"]
    n = args.n
    names = _sample_names(len(conditions) * n) + ["grid.png"]
    out = Path(args.out)
    _refuse_overwrite(out, names + ["samples.json"], args.overwrite)
    common = dict(steps=args.steps, sampler=args.sampler, eta=args.eta, seed=args.seed, size=args.size,
                  progress=args.progress)
    extra: dict[str, Any] = {}
    if want == "prompt":
        x = text_to_image(ldm, conditions, n, guidance=args.guidance, **common)
    elif want == "class":
        ids = [class_index(ldm, c) for c in conditions]
        extra["class_ids"] = ids
        x = class_to_image(ldm, ids, n, guidance=args.guidance, **common)
    elif want == "layout":
        side = _check_size(ldm, args.size)
        extra["objects"] = [layout_objects(c, side) for c in conditions]
        x = layout_to_image(ldm, extra["objects"], n, guidance=args.guidance, **common)
    else:
        args.guidance = 1.0  # no guidance without a condition
        x = unconditional_samples(ldm, n, **common)
    files = [{"file": name, want or "condition": conditions[i // n], "row": i // n, "sample": i % n}
             for i, name in enumerate(names[:-1])]
    pictures = {name: to_uint8(x[i : i + 1])[0] for i, name in enumerate(names[:-1])}
    pictures["grid.png"] = image_grid(x, nrow=n)  # one row per prompt / class / layout
    record = _record(args, path, meta, ldm, n=n, size=int(x.shape[-1]), **{want or "condition": conditions}, **extra,
                     grid="grid.png: one row per condition, in the order given", files=files)
    _write(out, pictures, record)
    return 0


@_cli
def cmd_inpaint(args: argparse.Namespace) -> int:
    """`inpaint`: fill the white region of --mask in --image with an inpainting LDM (Sec. 4.5)."""
    ldm, meta, path = _load(args, "inpaint")
    _require(ldm, ("inpaint",), "inpaint")
    image = load_image(args.image)  # (1, 3, H, W)
    mask = load_mask(args.mask, image)  # (1, 1, H, W)
    utils.check_images(image, channels=3, multiple_of=_unit(ldm), name=f"image {args.image}")
    names = _sample_names(args.n)
    out = Path(args.out)
    _refuse_overwrite(out, names + ["panel.png", "samples.json"], args.overwrite)
    x = inpaint_image(ldm, image, mask, n=args.n, guidance=args.guidance, steps=args.steps, sampler=args.sampler,
                      eta=args.eta, seed=args.seed, progress=args.progress)  # (n, 3, H, W)
    masked = (1 - mask) * image  # what the model sees: the hole at 0 (mid-grey)
    pictures = {name: to_uint8(x[i : i + 1])[0] for i, name in enumerate(names)}
    pictures["panel.png"] = image_grid(torch.cat([image, masked, x]), nrow=2 + args.n)
    record = _record(args, path, meta, ldm, image=str(args.image), mask=str(args.mask), n=args.n,
                     hole_fraction=round(float(mask.mean()), 4),
                     panel="panel.png: input | masked input | result(s)",
                     files=[{"file": nm, "sample": i} for i, nm in enumerate(names)])
    _write(out, pictures, record)
    return 0


@_cli
def cmd_upscale(args: argparse.Namespace) -> int:
    """`upscale`: x4 super-resolution of --image with LDM-SR (Sec. 4.4), next to nearest and bicubic."""
    from ldm_minimal.pipelines import _lowres_scale, bicubic_upscale

    ldm, meta, path = _load(args, "sr")
    _require(ldm, ("lowres",), "upscale")
    lowres = load_image(args.image)  # (1, 3, h, w)
    names = _sample_names(args.n)
    out = Path(args.out)
    _refuse_overwrite(out, names + ["panel.png", "samples.json"], args.overwrite)
    x = upscale_image(ldm, lowres, n=args.n, steps=args.steps, sampler=args.sampler, eta=args.eta, seed=args.seed,
                      progress=args.progress)  # (n, 3, 4h, 4w)
    s = _lowres_scale(ldm)
    nearest = F.interpolate(lowres, scale_factor=s, mode="nearest")
    pictures = {name: to_uint8(x[i : i + 1])[0] for i, name in enumerate(names)}
    pictures["panel.png"] = image_grid(torch.cat([nearest, bicubic_upscale(lowres, s), x]), nrow=2 + args.n)
    record = _record(args, path, meta, ldm, image=str(args.image), n=args.n, scale=s,
                     input_size=list(lowres.shape[-2:]), output_size=list(x.shape[-2:]),
                     panel="panel.png: low-res (nearest) | bicubic | LDM-SR sample(s)",
                     files=[{"file": nm, "sample": i} for i, nm in enumerate(names)])
    _write(out, pictures, record)
    return 0


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _common_args(p: argparse.ArgumentParser, kind: str, out: str, guidance: float | None) -> None:
    p.add_argument("--checkpoint", help=f"latent diffusion checkpoint (default: the shipped "
                                        f"{SHIPPED[kind]} in {checkpoint_dir()})")
    p.add_argument("--n", type=_positive_int, default=4, help="samples per condition / input (default 4)")
    if guidance is not None:
        p.add_argument("--guidance", type=float, default=guidance,
                       help=f"classifier-free guidance scale s (1 = none; default {guidance})")
    p.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps S (default 50; DDPM uses all T)")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim",
                   help="ddim (uses --steps, --eta) or ddpm (all T steps)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic given the seed)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same pictures (default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, ...")
    p.add_argument("--out", default=out, help=f"output folder (default {out})")
    p.add_argument("--overwrite", action="store_true", help="replace files of an earlier run in --out")
    p.add_argument("--progress", action="store_true", help="show a progress bar")


def add_generation_commands(subparsers: Any) -> None:
    """Register `sample`, `inpaint` and `upscale` on an argparse subparsers object (each with func=...)."""
    s = subparsers.add_parser(
        "sample", help="text-, class-, layout-conditional or unconditional samples from a checkpoint",
        description="Samples from a latent diffusion checkpoint. Text models take --prompt, class models --class, "
                    "layout models --layout, unconditional models only --n.",
    )
    s.add_argument("--prompt", action="append", help="a text prompt (repeat for several; one grid row each)")
    s.add_argument("--class", dest="class", action="append", help="a class: index or name like 'red circle'")
    s.add_argument("--layout", action="append",
                   help="a JSON list of objects {shape, colour, bbox: [x0, y0, x1, y1] pixels} or a shapes caption")
    s.add_argument("--size", type=int, help="output side in pixels (multiple of f * UNet downsampling)")
    _common_args(s, "t2i", "outputs/sample", guidance=3.0)
    s.set_defaults(func=cmd_sample, command="sample")

    i = subparsers.add_parser("inpaint", help="fill a masked region of an image (white in the mask = hole)")
    i.add_argument("--image", required=True, help="the image (its size must suit the model, e.g. 32x32)")
    i.add_argument("--mask", required=True, help="a black/white image of the same size; white = region to fill")
    _common_args(i, "inpaint", "outputs/inpaint", guidance=1.0)
    i.set_defaults(func=cmd_inpaint, command="inpaint")

    u = subparsers.add_parser("upscale", help="x4 super-resolution of a low-resolution image (LDM-SR)")
    u.add_argument("--image", required=True, help="the low-resolution image, e.g. 8x8 for a 32x32 result")
    _common_args(u, "sr", "outputs/upscale", guidance=None)
    u.set_defaults(func=cmd_upscale, command="upscale")


# --------------------------------------------------------------------------------------------------------------
# The demo: one picture of everything
# --------------------------------------------------------------------------------------------------------------

DEMO_PROMPTS: tuple[str, ...] = (  # single objects: what the shipped shapes32-t2i model was trained and judged on
    "a large red circle in the center",
    "a small blue star at the top left",
    "a large green triangle at the bottom right",
    "a large yellow heart on the left",
    "a small orange square at the top",
    "a large purple star on the right",
)
DEMO_EMOJI_PROMPTS: tuple[str, ...] = ("grinning face", "red heart", "pizza", "rocket")
DEMO_SAMPLES = 4  # samples per prompt, and held-out examples for inpainting and super-resolution


def _held_out(size: int, start: int, count: int) -> tuple[Tensor, list]:
    """Held-out shapes pictures (the test split's seed), (count, 3, size, size) in [-1, 1], and their samples."""
    from ldm_minimal.data import SHAPES_SPLITS
    from ldm_minimal.data.shapes import render_sample, shapes_preset
    from ldm_minimal.data.torch_datasets import image_to_tensor

    cfg = shapes_preset("shapes32", resolution=size, seed=SHAPES_SPLITS["test"])
    samples = [render_sample(start + i, cfg) for i in range(count)]
    return torch.stack([image_to_tensor(s.image) for s in samples]), samples


def _demo_paths(checkpoints: dict | None) -> dict[str, Path | None]:
    """The demo's checkpoints: given paths, else the shipped ones. emoji is optional: skipped when its shipped file
    is absent or when it is given as None."""
    given = dict(checkpoints or {})
    unknown = sorted(set(given) - set(SHIPPED))
    if unknown:
        raise GenerationError(f"Unknown demo checkpoint key(s) {unknown}; valid keys: {', '.join(SHIPPED)}.")
    paths: dict[str, Path | None] = {}
    for kind in SHIPPED:
        if kind != "emoji":
            paths[kind] = resolve_checkpoint(given.get(kind), kind)
        elif "emoji" in given:
            paths[kind] = None if given["emoji"] is None else resolve_checkpoint(given["emoji"], kind)
        else:
            p = shipped_checkpoint(kind)
            paths[kind] = p if p.is_file() else None
    return paths


def run_demo(
    out_dir: str | Path = "outputs/demo",
    checkpoints: dict[str, str | Path] | None = None,
    steps: int = 25,
    progress: bool = False,
    device: torch.device | str | None = None,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """The course in one picture: demo.png with text-to-image (Sec. 4.3), inpainting (Sec. 4.5), x4 super-
    resolution (Sec. 4.4) and, when its checkpoint exists, emoji text-to-image; plus t2i.png, inpaint.png,
    upscale.png (and emoji.png) for each part.

    checkpoints: {"t2i", "inpaint", "sr", "emoji"} -> path (default: the shipped ones; emoji is optional). DDIM with
    ``steps`` steps, eta 0, fixed seeds, so the picture is the same at every run (files in out_dir are replaced).
    num_threads: None leaves torch's thread setting alone; a number sets it for the demo only and restores it after
    (on a small CPU shared with other work, 1 thread avoids OpenMP contention and can be several times faster).
    Returns {"demo": path, "parts": {name: path}, "seconds": {part: wall s, "total": wall s, "cpu_total": CPU s},
    "checkpoints": {...}, "steps": steps}.
    """
    paths = _demo_paths(checkpoints)
    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        return _run_demo(Path(out_dir), paths, steps, progress, device)
    finally:
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)


def _run_demo(
    out: Path, paths: dict[str, Path | None], steps: int, progress: bool, device: torch.device | str | None
) -> dict[str, Any]:
    t_start, cpu_start = time.perf_counter(), time.process_time()
    dev = torch.device(device) if device is not None else default_device()
    out.mkdir(parents=True, exist_ok=True)
    k = DEMO_SAMPLES
    parts: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}

    # ---- Sec. 4.3: text-to-image, guidance s = 3, one row per prompt
    t0 = time.perf_counter()
    ldm, _ = load_ldm(paths["t2i"], dev)
    _require(ldm, TEXT_CONDITIONERS, "The demo's t2i checkpoint")
    x = text_to_image(ldm, list(DEMO_PROMPTS), k, guidance=3.0, steps=steps, seed=0, progress=progress)
    rows = [(p, x[i * k : (i + 1) * k]) for i, p in enumerate(DEMO_PROMPTS)]
    parts["t2i"] = labeled_rows(rows, f"Text-to-image (Sec. 4.3), classifier-free guidance s = 3, DDIM {steps} steps")
    seconds["t2i"] = time.perf_counter() - t0

    # ---- Sec. 4.5: inpainting a box around one object of held-out pictures
    from ldm_minimal.masks import box_mask
    from ldm_minimal.pipelines import inpaint

    t0 = time.perf_counter()
    ldm, _ = load_ldm(paths["inpaint"], dev)
    _require(ldm, ("inpaint",), "The demo's inpaint checkpoint")
    size = int(ldm.cfg.image_size)
    images, samples = _held_out(size, 0, k)
    masks = []
    for s in samples:  # a box around the first object, 2 px larger on each side
        x0, y0, x1, y1 = s.objects[0].bbox
        box = (max(x0 - 2, 0), max(y0 - 2, 0), min(x1 + 2, size), min(y1 + 2, size))
        masks.append(box_mask(size, box))
    mask = torch.cat(masks)  # (k, 1, H, W)
    filled = inpaint(ldm, images.to(ldm.device), mask.to(ldm.device), steps=steps, generator=_generator(0),
                     progress=progress).float().cpu()
    rows = [("input (held out)", images), ("masked input", (1 - mask) * images), ("LDM inpainting", filled)]
    parts["inpaint"] = labeled_rows(rows, f"Inpainting (Sec. 4.5): a box around one object, DDIM {steps} steps")
    seconds["inpaint"] = time.perf_counter() - t0

    # ---- Sec. 4.4: x4 super-resolution of held-out pictures
    from ldm_minimal.pipelines import _lowres_scale, bicubic_upscale, upscale

    t0 = time.perf_counter()
    ldm, _ = load_ldm(paths["sr"], dev)
    _require(ldm, ("lowres",), "The demo's sr checkpoint")
    size = int(ldm.cfg.image_size)
    scale = _lowres_scale(ldm)
    truth, _ = _held_out(size, 100, k)
    lowres = F.avg_pool2d(truth, scale)  # (k, 3, H / s, W / s): how the SR model's training inputs were made
    sr = upscale(ldm, lowres.to(ldm.device), steps=steps, generator=_generator(0), progress=progress).float().cpu()
    lo = size // scale
    rows = [(f"low-res {lo}x{lo} (nearest x{scale})", F.interpolate(lowres, scale_factor=scale, mode="nearest")),
            ("bicubic", bicubic_upscale(lowres, scale)), ("LDM-SR", sr), ("ground truth", truth)]
    parts["upscale"] = labeled_rows(rows, f"Super-resolution x{scale} (Sec. 4.4), DDIM {steps} steps")
    seconds["upscale"] = time.perf_counter() - t0

    # ---- emoji text-to-image, when that checkpoint exists
    if paths["emoji"] is not None:
        t0 = time.perf_counter()
        ldm, _ = load_ldm(paths["emoji"], dev)
        _require(ldm, TEXT_CONDITIONERS, "The demo's emoji checkpoint")
        x = text_to_image(ldm, list(DEMO_EMOJI_PROMPTS), k, guidance=3.0, steps=steps, seed=0, progress=progress)
        rows = [(p, x[i * k : (i + 1) * k]) for i, p in enumerate(DEMO_EMOJI_PROMPTS)]
        parts["emoji"] = labeled_rows(rows, f"Emoji text-to-image, guidance s = 3, DDIM {steps} steps")
        seconds["emoji"] = time.perf_counter() - t0

    written = {name: save_image(pic, out / f"{name}.png") for name, pic in parts.items()}
    demo = save_image(_stack(list(parts.values())), out / "demo.png")
    seconds["total"] = time.perf_counter() - t_start
    seconds["cpu_total"] = time.process_time() - cpu_start  # CPU time of all threads (less sensitive to load)
    return {
        "demo": demo,
        "parts": written,
        "seconds": {k_: round(v, 2) for k_, v in seconds.items()},
        "checkpoints": {k_: (str(v) if v is not None else None) for k_, v in paths.items()},
        "steps": steps,
    }
