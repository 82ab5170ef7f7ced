"""Layout-to-image (paper Sec. 4.3.1, App. D.3): object boxes with classes -> tau_theta tokens -> cross-attention.

A layout is a list of objects {"shape", "colour", "bbox": [x0, y0, x1, y1]} in pixels of the image being made, its
JSON text, or a shapes caption ("a large red circle at the top left and ..."), whose objects get a box centred in
their cell of the 3x3 grid (``caption_box``).
"""

from __future__ import annotations

import json
import math
from typing import Sequence

import torch
from torch import Tensor

from ldm_minimal.data.shapes import POSITIONS, SIZES, ShapesConfig, class_id_for, parse_caption
from ldm_minimal.latent_diffusion import LatentDiffusion
from ldm_minimal.pipelines.sampling import (
    GenerationError,
    check_sampling,
    check_size,
    condition_list,
    on_device,
    require_conditioner,
    seeded_sample,
)
from ldm_minimal.utils import unknown_name_error

__all__ = ["SIZE_FRACTION", "caption_box", "layout_objects", "layout_to_image"]


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
        raise unknown_name_error("position", position, POSITIONS)
    if size not in SIZE_FRACTION:
        raise unknown_name_error("size", size, SIZES)
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
    ldm: LatentDiffusion,
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
    require_conditioner(ldm, ("layout",), "layout_to_image")
    if isinstance(layouts, str) or (isinstance(layouts, (list, tuple)) and layouts and isinstance(layouts[0], dict)):
        layouts = [layouts]  # one layout given on its own
    side = check_size(ldm, size)
    layouts = condition_list(layouts, "layout", '["a large red circle in the center"]')
    objs = [layout_objects(lay, side) for lay in layouts]
    most = max(len(o) for o in objs)
    if most > ldm.conditioner.max_objects:
        raise GenerationError(
            f"A layout has {most} objects but this model takes at most {ldm.conditioner.max_objects} per image."
        )
    ldm = on_device(ldm, device)
    check_sampling(steps, n_per_layout, eta, sampler)
    texts = [json.dumps(o) for o in objs]
    batch = {"objects": [t for t in texts for _ in range(n_per_layout)]}  # layout-major
    return seeded_sample(ldm, batch, side=side, guidance=guidance, steps=steps, sampler=sampler, eta=eta, seed=seed,
                         progress=progress)
